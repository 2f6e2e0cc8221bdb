//! Predicted classes from TensorFlow-Serving answers (`{"predictions": [[scores…]]}` → argmax).

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// The label used for answers whose shape is not a batch of score vectors.
pub const UNPARSED: &str = "unparsed";

/// The shape we understand: a batch of score vectors. Other top-level fields are ignored,
/// so an answer with extra metadata still counts.
#[derive(Deserialize)]
struct Answer {
    predictions: Rows,
}

/// The argmax of every row, computed while parsing: no score vector is ever allocated,
/// which matters because this runs on every answer.
struct Rows(Vec<usize>);

impl<'de> Deserialize<'de> for Rows {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RowsVisitor;
        impl<'de> Visitor<'de> for RowsVisitor {
            type Value = Rows;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of score lists")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Rows, A::Error> {
                let mut rows = Vec::with_capacity(seq.size_hint().unwrap_or(1));
                while let Some(Argmax(i)) = seq.next_element()? {
                    rows.push(i);
                }
                Ok(Rows(rows))
            }
        }
        deserializer.deserialize_seq(RowsVisitor)
    }
}

/// Index of the highest score of one row; the first one wins a tie, so the result is
/// deterministic. An empty row is an error (nothing was predicted from it).
struct Argmax(usize);

impl<'de> Deserialize<'de> for Argmax {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ArgmaxVisitor;
        impl<'de> Visitor<'de> for ArgmaxVisitor {
            type Value = Argmax;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-empty list of numbers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Argmax, A::Error> {
                let mut best: Option<(usize, f64)> = None;
                let mut i = 0;
                while let Some(score) = seq.next_element::<f64>()? {
                    match best {
                        Some((_, b)) if score <= b => {}
                        _ => best = Some((i, score)),
                    }
                    i += 1;
                }
                best.map(|(i, _)| Argmax(i))
                    .ok_or_else(|| de::Error::invalid_length(0, &self))
            }
        }
        deserializer.deserialize_seq(ArgmaxVisitor)
    }
}

/// Parses a TensorFlow-Serving `predict` answer and returns the argmax of every row.
///
/// Returns `None` for any other shape (invalid JSON, missing `predictions`, rows that are
/// not lists of numbers, an empty row): the caller counts that as [`UNPARSED`], never as
/// an error. An empty batch yields an empty list (nothing was predicted).
pub fn predicted_indices(body: &[u8]) -> Option<Vec<usize>> {
    // Most answers are exactly `{"predictions": [[…], …]}`: a scanner for that one shape
    // costs a fraction of serde's generic path. Anything else, or anything it is unsure
    // of, goes to serde, so both give the same result for every input.
    if let Some(rows) = Scanner::new(body).predictions_only() {
        return Some(rows);
    }
    let answer: Answer = serde_json::from_slice(body).ok()?;
    Some(answer.predictions.0)
}

/// A scanner for answers whose only field is `predictions`, a list of non-empty lists of
/// JSON numbers. It returns `None` whenever the text is anything else (other fields,
/// escapes, invalid JSON), leaving the verdict to serde.
struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// Skips whitespace, then takes `byte` if it is next.
    fn eat(&mut self, byte: u8) -> bool {
        self.skip_ws();
        if self.bytes.get(self.at) == Some(&byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn predictions_only(mut self) -> Option<Vec<usize>> {
        const KEY: &[u8] = b"\"predictions\"";
        if !self.eat(b'{') {
            return None;
        }
        self.skip_ws();
        if !self.bytes[self.at..].starts_with(KEY) {
            return None;
        }
        self.at += KEY.len();
        if !self.eat(b':') || !self.eat(b'[') {
            return None;
        }
        let mut rows = Vec::with_capacity(1);
        if !self.eat(b']') {
            loop {
                rows.push(self.argmax_row()?);
                if self.eat(b']') {
                    break;
                }
                if !self.eat(b',') {
                    return None;
                }
            }
        }
        if !self.eat(b'}') {
            return None;
        }
        self.skip_ws();
        (self.at == self.bytes.len()).then_some(rows)
    }

    /// `[n, n, …]` (non-empty) → the index of its first highest number.
    fn argmax_row(&mut self) -> Option<usize> {
        if !self.eat(b'[') {
            return None;
        }
        let mut best: Option<(usize, f64)> = None;
        let mut i = 0;
        loop {
            self.skip_ws();
            let score = self.number()?;
            match best {
                Some((_, b)) if score <= b => {}
                _ => best = Some((i, score)),
            }
            i += 1;
            if self.eat(b']') {
                return best.map(|(i, _)| i);
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }

    /// A number in JSON's grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<f64> {
        let start = self.at;
        // Digits as an integer mantissa, for the exact fast path below.
        let mut mantissa: u64 = 0;
        let mut mantissa_digits = 0u32;
        let mut digits = |s: &mut Self, into_mantissa: bool| {
            let from = s.at;
            while let Some(&b) = s.bytes.get(s.at).filter(|b| b.is_ascii_digit()) {
                if into_mantissa && mantissa_digits < 19 {
                    mantissa = mantissa * 10 + u64::from(b - b'0');
                    if mantissa != 0 {
                        mantissa_digits += 1;
                    }
                } else if into_mantissa {
                    mantissa_digits = u32::MAX; // too many digits for the fast path
                }
                s.at += 1;
            }
            s.at - from
        };
        let negative = self.bytes.get(self.at) == Some(&b'-');
        if negative {
            self.at += 1;
        }
        let int_start = self.at;
        let int_digits = digits(self, true);
        if int_digits == 0 || (int_digits > 1 && self.bytes[int_start] == b'0') {
            return None;
        }
        let mut exponent: i64 = 0;
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            let fraction = digits(self, true);
            if fraction == 0 {
                return None;
            }
            exponent -= i64::try_from(fraction).ok()?;
        }
        let mut exact = true;
        if let Some(b'e' | b'E') = self.bytes.get(self.at) {
            self.at += 1;
            let sign = match self.bytes.get(self.at) {
                Some(b'-') => -1,
                Some(b'+') => 1,
                _ => 0,
            };
            if sign != 0 {
                self.at += 1;
            }
            let exp_start = self.at;
            if digits(self, false) == 0 {
                return None;
            }
            match std::str::from_utf8(&self.bytes[exp_start..self.at])
                .ok()
                .and_then(|t| t.parse::<i64>().ok())
            {
                Some(e) => exponent += if sign < 0 { -e } else { e },
                None => exact = false,
            }
        }
        // Clinger's fast path: a mantissa below 2^53 times a power of ten up to 10^22 is
        // one correctly rounded operation on exact values, the same f64 as a full parse.
        const POW10: [f64; 23] = [
            1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
            1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
        ];
        if exact && mantissa_digits <= 15 && (-22..=22).contains(&exponent) {
            #[allow(clippy::cast_precision_loss)] // below 10^15 < 2^53: exact
            let m = mantissa as f64;
            let power = POW10[usize::try_from(exponent.unsigned_abs()).ok()?];
            let value = if exponent < 0 { m / power } else { m * power };
            return Some(if negative { -value } else { value });
        }
        let text = std::str::from_utf8(&self.bytes[start..self.at]).ok()?;
        let value: f64 = text.parse().ok()?;
        // serde_json refuses numbers out of f64's range; leave those to it.
        value.is_finite().then_some(value)
    }
}

/// Class names by output index, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct ClassNames {
    names: Vec<String>,
}

impl ClassNames {
    /// Names in output order; an index past the end is reported by its number.
    pub fn new(names: Vec<String>) -> Self {
        Self { names }
    }

    /// How many names were configured.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when no names were configured.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The label for one output index: its configured name, else the index itself.
    pub fn name(&self, index: usize) -> Cow<'_, str> {
        match self.names.get(index) {
            Some(name) => Cow::Borrowed(name),
            None => Cow::Owned(index.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_of_scores_gives_one_argmax_per_row() {
        let body = br#"{"predictions": [[0.1, 0.7, 0.2], [0.9, 0.05, 0.05]]}"#;
        assert_eq!(predicted_indices(body), Some(vec![1, 0]));
    }

    #[test]
    fn integers_and_extra_fields_are_accepted() {
        let body = br#"{"model_version": "3", "predictions": [[0, 2, 1]]}"#;
        assert_eq!(predicted_indices(body), Some(vec![1]));
    }

    #[test]
    fn ties_pick_the_first_index() {
        assert_eq!(
            predicted_indices(br#"{"predictions": [[0.5, 0.5]]}"#),
            Some(vec![0])
        );
    }

    #[test]
    fn empty_batch_predicts_nothing() {
        assert_eq!(predicted_indices(br#"{"predictions": []}"#), Some(vec![]));
    }

    #[test]
    fn other_shapes_are_unparsed() {
        for body in [
            &br#"{"predictions": [0.1, 0.9]}"#[..],
            br#"{"predictions": [[]]}"#,
            br#"{"predictions": [{"scores": [0.1]}]}"#,
            br#"{"outputs": [[0.1, 0.9]]}"#,
            br#"{"predictions": [["a", "b"]]}"#,
            br#"[[0.1, 0.9]]"#,
            b"not json",
            b"",
        ] {
            assert_eq!(
                predicted_indices(body),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn the_fast_scanner_agrees_with_serde() {
        for body in [
            &br#"{"predictions": [[0.1, 0.7, 0.2], [0.9, 0.05, 0.05]]}"#[..],
            br#" { "predictions" : [ [ 1 , 2 ] ] } "#,
            br#"{"predictions":[[-0,-1e2,1E+2,3.5e-1]]}"#,
            br#"{"predictions": [[01, 2]]}"#,
            br#"{"predictions": [[1., 2]]}"#,
            br#"{"predictions": [[.5, 2]]}"#,
            br#"{"predictions": [[1e, 2]]}"#,
            br#"{"predictions": [[1, 2,]]}"#,
            br#"{"predictions": [[1, 2]],}"#,
            br#"{"predictions": [[1, 2]]} x"#,
            br#"{"predictions": [[1e400, 2]]}"#,
            br#"{"predictions": [[+1, 2]]}"#,
            br#"{"predictions": [[1, 2]], "predictions": [[2, 1]]}"#,
            br#"{"predictions": [[1, 2]]"#,
            br#"{"predictions": [[1, 2], []]}"#,
            br#"{"predictions": []}"#,
        ] {
            let text = String::from_utf8_lossy(body);
            let serde = serde_json::from_slice::<Answer>(body)
                .ok()
                .map(|a| a.predictions.0);
            if let Some(fast) = Scanner::new(body).predictions_only() {
                assert_eq!(Some(fast), serde, "{text}");
            }
            assert_eq!(predicted_indices(body), serde, "{text}");
        }
    }

    #[test]
    fn fast_numbers_equal_a_full_parse() {
        for text in [
            "0",
            "-0",
            "0.05",
            "0.9",
            "1e5",
            "1E+2",
            "-1e-2",
            "3.14159",
            "123456789012345",
            "1234567890123456789",
            "0.000000000000000000000001",
            "1e22",
            "1e23",
            "2.5e-22",
            "9007199254740993",
            "0.1",
            "0.30000000000000004",
        ] {
            let parsed = Scanner::new(text.as_bytes()).number();
            assert_eq!(parsed, text.parse::<f64>().ok(), "{text}");
        }
    }

    #[test]
    fn names_fall_back_to_the_index() {
        let names = ClassNames::new(vec!["setosa".into(), "versicolor".into()]);
        assert_eq!(names.name(1), "versicolor");
        assert_eq!(names.name(7), "7");
    }
}
