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
    let answer: Answer = serde_json::from_slice(body).ok()?;
    Some(answer.predictions.0)
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
    fn names_fall_back_to_the_index() {
        let names = ClassNames::new(vec!["setosa".into(), "versicolor".into()]);
        assert_eq!(names.name(1), "versicolor");
        assert_eq!(names.name(7), "7");
    }
}
