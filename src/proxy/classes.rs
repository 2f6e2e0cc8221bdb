//! Predicted classes from TensorFlow-Serving answers (`{"predictions": [[scores…]]}` → argmax).

use serde::Deserialize;
use std::borrow::Cow;

/// The label used for answers whose shape is not a batch of score vectors.
pub const UNPARSED: &str = "unparsed";

/// The shape we understand: a batch of score vectors. Other top-level fields are ignored,
/// so an answer with extra metadata still counts.
#[derive(Deserialize)]
struct Answer {
    predictions: Vec<Vec<f64>>,
}

/// Parses a TensorFlow-Serving `predict` answer and returns the argmax of every row.
///
/// Returns `None` for any other shape (invalid JSON, missing `predictions`, rows that are
/// not lists of numbers, an empty row): the caller counts that as [`UNPARSED`], never as
/// an error. An empty batch yields an empty list (nothing was predicted).
pub fn predicted_indices(body: &[u8]) -> Option<Vec<usize>> {
    let answer: Answer = serde_json::from_slice(body).ok()?;
    answer.predictions.iter().map(|row| argmax(row)).collect()
}

/// Index of the highest score; the first one wins a tie, so the result is deterministic.
fn argmax(row: &[f64]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, &score) in row.iter().enumerate() {
        match best {
            Some((_, b)) if score <= b => {}
            _ => best = Some((i, score)),
        }
    }
    best.map(|(i, _)| i)
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
