//! Parsers for flag values: `KEY=VALUE` pairs (durations: `ds_core::duration`).

/// Parses `--env NAME=VALUE`; the value may be empty or contain `=`.
///
/// # Errors
/// When there is no `=` or the name is empty.
pub fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err("expected NAME=VALUE, e.g. --env MODEL_NAME=iris".to_string()),
    }
}

/// Parses `--label KEY=VALUE`.
///
/// # Errors
/// When there is no `=` or the key is empty.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err("expected KEY=VALUE, e.g. --label team=ml".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_pairs_split_at_the_first_equals() {
        assert_eq!(
            parse_env("A=b=c").unwrap(),
            ("A".to_string(), "b=c".to_string())
        );
        assert_eq!(parse_env("A=").unwrap(), ("A".to_string(), String::new()));
        assert!(parse_env("A").is_err());
        assert!(parse_env("=b").is_err());
        assert!(parse_label("team").is_err());
    }
}
