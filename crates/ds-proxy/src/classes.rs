//! Predicted classes from model answers: TensorFlow-Serving/KServe v1
//! (`{"predictions": [[scores…]]}` → argmax) and the Open Inference Protocol v2
//! (`{"outputs": [{"shape": [rows, classes], "data": […]}]}` → argmax per row).

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

/// Which answers the proxy reads for predicted classes (`--protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Protocol {
    /// By the request path: answers to `POST /v2/models/NAME[/versions/V]/infer` are read
    /// as v2, answers to other `/v2/` paths (repository, load/unload) are not predictions,
    /// every other answer is read as v1.
    #[default]
    Auto,
    /// Every answer is read as v1 (`predictions`), whatever its path.
    V1,
    /// Only answers to v2 `infer` paths are read, as v2; `/readyz` asks
    /// `/v2/health/ready` unless `--ready-path` says otherwise.
    V2,
}

/// How the classes of one answer are counted, decided by [`Protocol::route`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// A v1 answer (`predictions`).
    V1,
    /// A v2 answer of the model named in the path.
    V2 { model: &'a str },
    /// Not an answer with predictions.
    Skip,
}

impl Protocol {
    /// How the answer to a POST is read. `v2_path` is the request path (and query) when it
    /// starts with `/v2/`, `None` otherwise: the request path keeps it only then, so other
    /// requests cost nothing more than before.
    pub(crate) fn route(self, v2_path: Option<&str>) -> Route<'_> {
        match (self, v2_path) {
            (Self::V1, _) => Route::V1,
            (Self::Auto, None) => Route::V1,
            (Self::V2, None) => Route::Skip,
            (Self::Auto | Self::V2, Some(path)) => {
                v2_infer_model(path).map_or(Route::Skip, |model| Route::V2 { model })
            }
        }
    }
}

/// The model named by a v2 inference path, `/v2/models/NAME[/versions/V]/infer` (with or
/// without a query); `None` for any other path.
pub(crate) fn v2_infer_model(path: &str) -> Option<&str> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let rest = path.strip_prefix("/v2/models/")?;
    let mut parts = rest.split('/');
    let model = parts.next().filter(|m| !m.is_empty())?;
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("infer"), None, None, None) => Some(model),
        (Some("versions"), Some(version), Some("infer"), None) if !version.is_empty() => {
            Some(model)
        }
        _ => None,
    }
}

/// One output tensor of a v2 answer: its name and the class of each row, or `None` when its
/// data are not something classes are read from (see [`v2_outputs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct V2Output {
    pub(crate) name: String,
    pub(crate) classes: Option<Vec<usize>>,
}

/// Parses an Open Inference Protocol v2 answer (`{"model_name": …, "outputs": [{"name",
/// "datatype", "shape", "data"}, …]}`) and reads the classes of every output:
///
/// - shape `[rows, classes]` (classes ≥ 2), numbers: the argmax of each row (the first of
///   equal scores), as v1 does;
/// - shape `[rows]` or `[rows, 1]`, an integer datatype (`INT*`, `UINT*`, or none given)
///   and non-negative integers: each value is the class (a model that answers labels);
/// - anything else is `None` for that output: strings (`BYTES`), booleans or nulls in
///   `data`, floats of shape `[rows]` (a score, not a class), other ranks, an empty row,
///   `data` that does not hold as many elements as `shape` says, or no `data` at all
///   (binary tensor data).
///
/// `data` may be flat (row-major) or nested, as the protocol allows. Returns `None` for
/// the answer as a whole when it is not JSON or has no `outputs` list.
pub(crate) fn v2_outputs(body: &[u8]) -> Option<Vec<V2Output>> {
    #[derive(Deserialize)]
    struct Answer2 {
        outputs: Vec<Tensor>,
    }
    let answer: Answer2 = serde_json::from_slice(body).ok()?;
    Some(
        answer
            .outputs
            .into_iter()
            .map(|t| V2Output {
                classes: t.classes(),
                name: t.name,
            })
            .collect(),
    )
}

/// The kind of a v2 `datatype`: only integer tensors hold labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Datatype {
    Integer,
    Other,
}

impl<'de> Deserialize<'de> for Datatype {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DatatypeVisitor;
        impl Visitor<'_> for DatatypeVisitor {
            type Value = Datatype;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a datatype name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Datatype, E> {
                Ok(if v.starts_with("INT") || v.starts_with("UINT") {
                    Datatype::Integer
                } else {
                    Datatype::Other
                })
            }
        }
        deserializer.deserialize_str(DatatypeVisitor)
    }
}

/// One element of `outputs`, read field by field so that `data` can be read row by row
/// when `shape` came first (as servers write it), without keeping the numbers.
struct Tensor {
    name: String,
    datatype: Option<Datatype>,
    shape: Option<Vec<u64>>,
    data: Option<Flat>,
}

impl Tensor {
    fn classes(&self) -> Option<Vec<usize>> {
        let shape = self.shape.as_deref()?;
        let data = self.data.as_ref()?;
        let elements = shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .and_then(|n| usize::try_from(n).ok())?;
        if data.non_numeric || data.count != elements {
            return None;
        }
        match *shape {
            [_] | [_, 1] => {
                if self.datatype == Some(Datatype::Other) {
                    return None;
                }
                match &data.sink {
                    Sink::Labels(Some(labels)) => Some(labels.clone()),
                    Sink::Buffer {
                        labels: true,
                        values,
                    } => {
                        // Non-negative integers, each below 2^53, so exact as f64.
                        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                        Some(values.iter().map(|&v| v as usize).collect())
                    }
                    _ => None,
                }
            }
            [0, _] => Some(Vec::new()),
            [_, width] if width >= 2 => match &data.sink {
                Sink::Argmax(argmax) => Some(argmax.rows.clone()),
                Sink::Buffer { values, .. } => {
                    let width = usize::try_from(width).ok()?;
                    values.chunks(width).map(argmax_of).collect()
                }
                _ => None,
            },
            _ => None,
        }
    }
}

/// The first index of the highest number.
fn argmax_of(row: &[f64]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, &score) in row.iter().enumerate() {
        match best {
            Some((_, b)) if score <= b => {}
            _ => best = Some((i, score)),
        }
    }
    best.map(|(i, _)| i)
}

impl<'de> Deserialize<'de> for Tensor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "lowercase")]
        enum Field {
            Name,
            Datatype,
            Shape,
            Data,
            #[serde(other)]
            Other,
        }
        struct TensorVisitor;
        impl<'de> Visitor<'de> for TensorVisitor {
            type Value = Tensor;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an output tensor")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Tensor, A::Error> {
                let mut tensor = Tensor {
                    name: String::new(),
                    datatype: None,
                    shape: None,
                    data: None,
                };
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Name => tensor.name = map.next_value()?,
                        Field::Datatype => tensor.datatype = Some(map.next_value()?),
                        Field::Shape => tensor.shape = Some(map.next_value()?),
                        Field::Data => {
                            let sink = Sink::for_shape(tensor.shape.as_deref());
                            let mut flat = Flat {
                                sink,
                                count: 0,
                                non_numeric: false,
                            };
                            map.next_value_seed(FlatSeed(&mut flat))?;
                            tensor.data = Some(flat);
                        }
                        Field::Other => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(tensor)
            }
        }
        deserializer.deserialize_map(TensorVisitor)
    }
}

/// The elements of `data`, in row-major order, as they are read.
struct Flat {
    sink: Sink,
    /// Elements read, of any kind.
    count: usize,
    /// An element was not a number (a string, boolean, null or object).
    non_numeric: bool,
}

/// What is kept of the elements, chosen by the shape read before `data`.
enum Sink {
    /// Shape `[rows, width]`, width ≥ 2: the argmax of each row as it completes.
    Argmax(RowArgmax),
    /// Shape `[rows]` or `[rows, 1]`: the values as labels; `None` once one is not a
    /// non-negative integer.
    Labels(Option<Vec<usize>>),
    /// A shape classes are not read from: only counted.
    Nothing,
    /// No shape yet: the numbers are kept for when it comes, and whether all were
    /// non-negative integers.
    Buffer { values: Vec<f64>, labels: bool },
}

struct RowArgmax {
    width: u64,
    at: u64,
    best: Option<(usize, f64)>,
    rows: Vec<usize>,
}

impl Sink {
    fn for_shape(shape: Option<&[u64]>) -> Self {
        match shape {
            None => Self::Buffer {
                values: Vec::new(),
                labels: true,
            },
            Some([_] | [_, 1]) => Self::Labels(Some(Vec::new())),
            Some(&[rows, width]) if width >= 2 => Self::Argmax(RowArgmax {
                width,
                at: 0,
                best: None,
                rows: Vec::with_capacity(usize::try_from(rows.min(1024)).unwrap_or(1)),
            }),
            Some(_) => Self::Nothing,
        }
    }
}

impl Flat {
    /// One number; `label` is its value when it is a non-negative JSON integer.
    fn number(&mut self, value: f64, label: Option<usize>) {
        self.count += 1;
        match &mut self.sink {
            Sink::Argmax(r) => {
                let i = usize::try_from(r.at).unwrap_or(usize::MAX);
                match r.best {
                    Some((_, b)) if value <= b => {}
                    _ => r.best = Some((i, value)),
                }
                r.at += 1;
                if r.at == r.width {
                    if let Some((i, _)) = r.best.take() {
                        r.rows.push(i);
                    }
                    r.at = 0;
                }
            }
            Sink::Labels(labels) => match (labels.as_mut(), label) {
                (Some(labels), Some(label)) => labels.push(label),
                _ => *labels = None,
            },
            Sink::Nothing => {}
            Sink::Buffer { values, labels } => {
                values.push(value);
                *labels &= label.is_some();
            }
        }
    }
}

/// Reads `data`: numbers into the [`Flat`], nested lists flattened, anything else marked.
struct FlatSeed<'a>(&'a mut Flat);

impl<'de> de::DeserializeSeed<'de> for FlatSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FlatSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tensor data")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        // Labels past 2^53 would not round-trip through f64: not a class anyone names.
        let label = usize::try_from(v).ok().filter(|&v| v < (1 << 53));
        #[allow(clippy::cast_precision_loss)] // a score's order survives the rounding
        self.0.number(v as f64, label);
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        #[allow(clippy::cast_precision_loss)]
        self.0.number(v as f64, None);
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.number(v, None);
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.0.count += 1;
        self.0.non_numeric = true;
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.visit_bool(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.visit_bool(false)
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map
            .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
            .is_some()
        {}
        self.visit_bool(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(FlatSeed(&mut *self.0))?.is_some() {}
        Ok(())
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

    fn v2(body: &str) -> Option<Vec<(String, Option<Vec<usize>>)>> {
        v2_outputs(body.as_bytes()).map(|o| o.into_iter().map(|o| (o.name, o.classes)).collect())
    }

    fn one(name: &str, classes: Option<Vec<usize>>) -> Option<Vec<(String, Option<Vec<usize>>)>> {
        Some(vec![(name.to_owned(), classes)])
    }

    #[test]
    fn v2_batch_of_rows_gives_one_argmax_per_row() {
        let body = r#"{"model_name": "iris", "model_version": "1", "id": "42",
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [3, 3],
                         "data": [0.1, 0.7, 0.2,  0.9, 0.05, 0.05,  0.2, 0.3, 0.5]}]}"#;
        assert_eq!(v2(body), one("probabilities", Some(vec![1, 0, 2])));
        // The same tensor nested by rows, and with `data` before `shape` (kept until the
        // shape is known): the same classes.
        let nested = r#"{"outputs": [{"name": "probabilities", "datatype": "FP32",
            "shape": [3, 3], "data": [[0.1, 0.7, 0.2], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]]}]}"#;
        assert_eq!(v2(nested), one("probabilities", Some(vec![1, 0, 2])));
        let data_first = r#"{"outputs": [{"data": [0.1, 0.7, 0.2, 0.9, 0.05, 0.05, 0.2, 0.3, 0.5],
            "name": "probabilities", "shape": [3, 3], "datatype": "FP32"}]}"#;
        assert_eq!(v2(data_first), one("probabilities", Some(vec![1, 0, 2])));
        // Ties pick the first index; an empty batch predicts nothing.
        assert_eq!(
            v2(
                r#"{"outputs": [{"name": "p", "datatype": "FP64", "shape": [1, 2], "data": [0.5, 0.5]}]}"#
            ),
            one("p", Some(vec![0]))
        );
        assert_eq!(
            v2(r#"{"outputs": [{"name": "p", "datatype": "FP32", "shape": [0, 3], "data": []}]}"#),
            one("p", Some(vec![]))
        );
    }

    #[test]
    fn v2_integer_outputs_of_one_column_are_labels() {
        for shape in ["[3]", "[3, 1]"] {
            let body = format!(
                r#"{{"outputs": [{{"name": "label", "datatype": "INT64", "shape": {shape}, "data": [2, 0, 2]}}]}}"#
            );
            assert_eq!(v2(&body), one("label", Some(vec![2, 0, 2])), "{shape}");
        }
        // Scores of one column are not classes; nor are negative or fractional labels.
        for (datatype, data) in [
            ("FP32", "[0.2, 0.9, 0.4]"),
            ("FP32", "[2, 0, 2]"),
            ("INT32", "[2, -1, 0]"),
            ("INT32", "[2, 1.5, 0]"),
        ] {
            let body = format!(
                r#"{{"outputs": [{{"name": "label", "datatype": "{datatype}", "shape": [3], "data": {data}}}]}}"#
            );
            assert_eq!(v2(&body), one("label", None), "{datatype} {data}");
        }
    }

    #[test]
    fn v2_several_outputs_are_each_read() {
        let body = r#"{"model_name": "iris", "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 2]},
            {"name": "probabilities", "datatype": "FP32", "shape": [2, 3],
             "data": [0.1, 0.8, 0.1, 0.1, 0.1, 0.8]},
            {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["versicolor", "virginica"]}]}"#;
        assert_eq!(
            v2(body),
            Some(vec![
                ("label".to_owned(), Some(vec![1, 2])),
                ("probabilities".to_owned(), Some(vec![1, 2])),
                ("text".to_owned(), None),
            ])
        );
    }

    #[test]
    fn v2_non_numeric_data_is_unparsed() {
        for data in [
            r#"["a", "b", "c", "d"]"#,
            "[0.1, null, 0.3, 0.4]",
            "[true, false, true, false]",
            r#"[0.1, {"x": 1}, 0.3, 0.4]"#,
        ] {
            let body = format!(
                r#"{{"outputs": [{{"name": "o", "datatype": "FP32", "shape": [2, 2], "data": {data}}}]}}"#
            );
            assert_eq!(v2(&body), one("o", None), "{data}");
        }
        // No data (binary tensor data in a separate part) and no shape: unparsed too.
        assert_eq!(
            v2(
                r#"{"outputs": [{"name": "o", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}]}"#
            ),
            one("o", None)
        );
        assert_eq!(
            v2(r#"{"outputs": [{"name": "o", "datatype": "FP32", "data": [0.1, 0.9]}]}"#),
            one("o", None)
        );
    }

    #[test]
    fn v2_shape_and_data_length_mismatch_is_unparsed() {
        for (shape, data) in [
            ("[2, 3]", "[0.1, 0.7, 0.2, 0.9, 0.05]"),
            ("[2, 3]", "[0.1, 0.7, 0.2, 0.9, 0.05, 0.05, 0.3]"),
            ("[3]", "[1, 2]"),
            ("[2, 0]", "[]"),
            ("[2, 2, 2]", "[1, 2, 3, 4, 5, 6, 7, 8]"),
            ("[]", "[1]"),
        ] {
            let body = format!(
                r#"{{"outputs": [{{"name": "o", "datatype": "INT32", "shape": {shape}, "data": {data}}}]}}"#
            );
            assert_eq!(v2(&body), one("o", None), "{shape} {data}");
        }
        // Not a v2 answer at all: no classes for the answer as a whole.
        for body in [
            r#"{"predictions": [[0.1, 0.9]]}"#,
            "not json",
            r#"{"outputs": {}}"#,
            "",
        ] {
            assert_eq!(v2(body), None, "{body}");
        }
    }

    #[test]
    fn v2_paths_name_the_model_with_or_without_a_version() {
        for (path, model) in [
            ("/v2/models/iris/infer", Some("iris")),
            ("/v2/models/iris/versions/3/infer", Some("iris")),
            ("/v2/models/iris/infer?trace=1", Some("iris")),
            ("/v2/models/iris", None),
            ("/v2/models/iris/ready", None),
            ("/v2/models//infer", None),
            ("/v2/models/iris/versions//infer", None),
            ("/v2/models/iris/infer/more", None),
            ("/v2/repository/models/iris/load", None),
            ("/v1/models/iris:predict", None),
        ] {
            assert_eq!(v2_infer_model(path), model, "{path}");
        }
        let infer = Some("/v2/models/iris/versions/2/infer");
        assert_eq!(Protocol::Auto.route(infer), Route::V2 { model: "iris" });
        assert_eq!(Protocol::V2.route(infer), Route::V2 { model: "iris" });
        assert_eq!(Protocol::V1.route(infer), Route::V1);
        let load = Some("/v2/repository/models/iris/load");
        assert_eq!(Protocol::Auto.route(load), Route::Skip);
        assert_eq!(Protocol::Auto.route(None), Route::V1);
        assert_eq!(Protocol::V2.route(None), Route::Skip);
    }

    #[test]
    fn names_fall_back_to_the_index() {
        let names = ClassNames::new(vec!["setosa".into(), "versicolor".into()]);
        assert_eq!(names.name(1), "versicolor");
        assert_eq!(names.name(7), "7");
    }
}
