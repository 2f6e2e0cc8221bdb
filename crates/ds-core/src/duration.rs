//! Durations in flags and environment variables, one syntax for every command: humantime's
//! (`250ms`, `30s`, `10m`, `1h30m`, `2d`), plus a bare number of seconds (`30`, `1.5`) and
//! a decimal with one unit (`1.5s`), which the flags accepted before.

use std::time::Duration;

/// Parses a duration.
///
/// # Errors
/// A message naming the text and giving examples.
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let bad = || format!("{text:?} is not a duration: use e.g. 250ms, 30s, 10m, 1h30m");
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| bad());
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(d);
    }
    // `1.5s`: a decimal number and one unit.
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(bad)?;
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(number * scale).map_err(|_| bad())
}

/// Formats a duration the way [`parse`] reads it back (`5m`, `1h30m`, `45s`, `250ms`).
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_syntax_the_commands_accept() {
        for (text, want) in [
            ("250ms", Duration::from_millis(250)),
            ("30s", Duration::from_secs(30)),
            ("1.5s", Duration::from_millis(1500)),
            ("2m", Duration::from_secs(120)),
            ("1h30m", Duration::from_secs(5400)),
            ("2d", Duration::from_secs(172_800)),
            ("90", Duration::from_secs(90)),
            ("0.5", Duration::from_millis(500)),
            (" 10m ", Duration::from_secs(600)),
        ] {
            assert_eq!(parse(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn text_that_is_no_duration_is_refused_with_examples() {
        for text in [
            "",
            "soon",
            "5x",
            "10x",
            "-3s",
            "-5s",
            "-1s",
            "1.5.5s",
            "s",
            "m",
            "ms10",
            "10 parsecs",
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains("30s"), "{text:?}: {err}");
        }
    }

    #[test]
    fn format_reads_back() {
        for d in [
            Duration::from_secs(45),
            Duration::from_secs(300),
            Duration::from_secs(5400),
            Duration::from_millis(250),
            Duration::from_secs(172_800),
            Duration::from_secs(3605),
        ] {
            assert_eq!(parse(&format(d)), Ok(d), "{}", format(d));
        }
        assert_eq!(format(Duration::from_secs(300)), "5m");
    }
}
