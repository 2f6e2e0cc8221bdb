//! Prometheus metrics of the proxy, all under the `ds_proxy_` prefix.

use super::classes::{ClassNames, UNPARSED, V2Output};
use http::Method;
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Status codes whose request counters are cached per method (all valid HTTP codes).
const CACHED_CODES: std::ops::Range<u16> = 100..600;
/// Number of [`MethodLabel`] variants.
const METHODS: usize = 8;

/// Latency buckets in seconds: fine-grained below 100 ms where a model answer usually lands,
/// then coarse up to the longest sensible timeout.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The HTTP method as a label; unknown methods collapse into `OTHER` so that a client
/// cannot grow the label set without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum MethodLabel {
    Get,
    Post,
    Put,
    Delete,
    Head,
    Options,
    Patch,
    Other,
}

impl MethodLabel {
    /// Every variant, in index order.
    const ALL: [Self; METHODS] = [
        Self::Get,
        Self::Post,
        Self::Put,
        Self::Delete,
        Self::Head,
        Self::Options,
        Self::Patch,
        Self::Other,
    ];

    pub(crate) fn of(method: &Method) -> Self {
        match *method {
            Method::GET => Self::Get,
            Method::POST => Self::Post,
            Method::PUT => Self::Put,
            Method::DELETE => Self::Delete,
            Method::HEAD => Self::Head,
            Method::OPTIONS => Self::Options,
            Method::PATCH => Self::Patch,
            _ => Self::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Head => "HEAD",
            Self::Options => "OPTIONS",
            Self::Patch => "PATCH",
            Self::Other => "OTHER",
        }
    }
}

impl EncodeLabelValue for MethodLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    method: MethodLabel,
    code: u16,
}

/// Why the proxy could not get an answer from the model server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum UpstreamErrorKind {
    /// The connection to the upstream could not be opened (refused, unreachable).
    Connect,
    /// No response headers within the request timeout.
    Timeout,
    /// The connection broke before a response arrived.
    Other,
}

impl UpstreamErrorKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }
}

impl EncodeLabelValue for UpstreamErrorKind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    kind: UpstreamErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ClassLabels {
    class: String,
}

/// The labels of a v2 answer's predictions: v1's `class` first, so a query by class alone
/// sums both protocols.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct V2ClassLabels {
    class: String,
    protocol: &'static str,
    model: String,
    output: String,
}

/// Distinct model names counted in v2 predictions; later ones are counted as [`OTHER`].
/// Only names the model server answered 2xx for get this far, so a client sending made-up
/// names cannot take the slots from the real models unless the server accepts them.
pub(crate) const MAX_MODELS: usize = 32;
/// Distinct output names counted in v2 predictions, over all models; later ones are
/// counted as [`OTHER`].
pub(crate) const MAX_OUTPUTS: usize = 8;
/// The label of the model or output names past their cap.
pub(crate) const OTHER: &str = "other";

/// Model and output names seen in v2 answers, up to their caps, shared by all workers so
/// that the caps bound what a scrape shows. Read on every v2 answer, written only when a
/// name is new.
#[derive(Debug, Default)]
struct Names {
    models: parking_lot::RwLock<Vec<Box<str>>>,
    outputs: parking_lot::RwLock<Vec<Box<str>>>,
}

/// The index of a name past its cap.
const OVER_CAP: u16 = u16::MAX;
/// The output index of an answer that could not be read at all (no output to name).
const NO_OUTPUT: u16 = u16::MAX - 1;

impl Names {
    fn index(list: &parking_lot::RwLock<Vec<Box<str>>>, cap: usize, name: &str) -> u16 {
        let find = |names: &[Box<str>]| names.iter().position(|n| **n == *name);
        if let Some(i) = find(&list.read()) {
            return u16::try_from(i).unwrap_or(OVER_CAP);
        }
        let mut names = list.write();
        // Another worker may have added it meanwhile.
        if let Some(i) = find(&names) {
            return u16::try_from(i).unwrap_or(OVER_CAP);
        }
        if names.len() >= cap {
            return OVER_CAP;
        }
        names.push(name.into());
        u16::try_from(names.len() - 1).unwrap_or(OVER_CAP)
    }

    fn name(list: &parking_lot::RwLock<Vec<Box<str>>>, index: u16) -> String {
        if index == NO_OUTPUT {
            return String::new();
        }
        list.read()
            .get(usize::from(index))
            .map_or_else(|| OTHER.to_owned(), |n| n.to_string())
    }
}

/// A v2 prediction count's key: model, output (indices into [`Names`]) and class (`None`:
/// unparsed).
type V2Key = (u16, u16, Option<usize>);

/// All metrics of one proxy and the registry that renders them.
///
/// What changes on every request (request counts, latencies, requests in flight, predicted
/// classes) is kept in one [`Shard`] per worker thread and summed when scraped: shared
/// counters and the histogram's lock, touched by both cores on every request, were cache
/// lines bouncing between them. The rest (errors, query-log counts) is rare enough to share.
pub(crate) struct Metrics {
    registry: Registry,
    upstream_errors: Family<ErrorLabels, Counter>,
    query_log_dropped: Counter,
    query_log_written: Counter,
    query_log_lost: Counter,
    shards: Arc<Shards>,
}

/// The per-worker shards and what they share, rendered by [`Shards::encode`] on a scrape.
#[derive(Debug)]
struct Shards {
    shards: Vec<Arc<Shard>>,
    /// Configured class names, in output order.
    class_names: Vec<String>,
    rare: Arc<Rare>,
    names: Arc<Names>,
}

/// Counts too rare for a slot of their own: status codes outside 100–599 and predicted
/// indices past the configured names.
#[derive(Debug, Default)]
struct Rare {
    requests: Mutex<BTreeMap<(usize, u16), u64>>,
    classes: Mutex<BTreeMap<String, u64>>,
}

/// The hot-path metrics of one worker thread. Only that thread writes them, so its atomic
/// operations never contend; a scrape reads them from another thread.
#[derive(Debug)]
pub(crate) struct Shard {
    /// Requests by method × status code 100–599.
    requests: Box<[AtomicU64]>,
    /// Latency observations per bucket (not cumulative); the last is above every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    duration_nanos: AtomicU64,
    in_flight: AtomicI64,
    /// Predictions of each configured class, then "unparsed".
    classes: Box<[AtomicU64]>,
    rare: Arc<Rare>,
    /// Predictions of v2 answers. Only this worker and a scrape lock it, so the lock is
    /// uncontended on the request path.
    v2: Mutex<HashMap<V2Key, u64>>,
    names: Arc<Names>,
}

fn lock<T>(mutex: &Mutex<T>) -> parking_lot::MutexGuard<'_, T> {
    mutex.lock()
}

impl Shard {
    fn new(classes: usize, rare: Arc<Rare>, names: Arc<Names>) -> Self {
        Self {
            requests: (0..METHODS * CACHED_CODES.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            duration_nanos: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            classes: (0..=classes).map(|_| AtomicU64::new(0)).collect(),
            rare,
            v2: Mutex::new(HashMap::new()),
            names,
        }
    }

    pub(crate) fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn request_finished(&self, method: MethodLabel, code: u16, latency: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if CACHED_CODES.contains(&code) {
            let slot = method.index() * CACHED_CODES.len() + usize::from(code - CACHED_CODES.start);
            self.requests[slot].fetch_add(1, Ordering::Relaxed);
        } else {
            *lock(&self.rare.requests)
                .entry((method.index(), code))
                .or_default() += 1;
        }
        let seconds = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.duration_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub(crate) fn predicted(&self, index: usize, classes: &ClassNames) {
        // The last slot is "unparsed": named classes are the ones before it.
        if index + 1 < self.classes.len() {
            self.classes[index].fetch_add(1, Ordering::Relaxed);
        } else {
            *lock(&self.rare.classes)
                .entry(classes.name(index).into_owned())
                .or_default() += 1;
        }
    }

    pub(crate) fn unparsed(&self) {
        if let Some(unparsed) = self.classes.last() {
            unparsed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a v2 answer of `model`: every row's class of every output, an output whose
    /// classes could not be read as one "unparsed" of that output, and an answer that could
    /// not be read at all (`None`) as one "unparsed" with an empty output name.
    pub(crate) fn predicted_v2(&self, model: &str, outputs: Option<&[V2Output]>) {
        let model = Names::index(&self.names.models, MAX_MODELS, model);
        let Some(outputs) = outputs else {
            *lock(&self.v2).entry((model, NO_OUTPUT, None)).or_default() += 1;
            return;
        };
        let keys: Vec<(u16, &V2Output)> = outputs
            .iter()
            .map(|o| (Names::index(&self.names.outputs, MAX_OUTPUTS, &o.name), o))
            .collect();
        let mut counts = lock(&self.v2);
        for (output, o) in keys {
            match &o.classes {
                Some(classes) => {
                    for &class in classes {
                        *counts.entry((model, output, Some(class))).or_default() += 1;
                    }
                }
                None => *counts.entry((model, output, None)).or_default() += 1,
            }
        }
    }
}

impl Shards {
    fn sum(&self, value: impl Fn(&Shard) -> u64) -> u64 {
        self.shards.iter().map(|s| value(s)).sum()
    }
}

impl Collector for Shards {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut family = encoder.encode_descriptor(
                "requests",
                "Requests answered, by HTTP method and status code (499: client went away first)",
                None,
                MetricType::Counter,
            )?;
            let rare = lock(&self.rare.requests).clone();
            for (m, method) in MethodLabel::ALL.iter().enumerate() {
                for code in CACHED_CODES {
                    let slot = m * CACHED_CODES.len() + usize::from(code - CACHED_CODES.start);
                    let count = self.sum(|s| s.requests[slot].load(Ordering::Relaxed));
                    if count > 0 {
                        let labels = RequestLabels {
                            method: *method,
                            code,
                        };
                        family
                            .encode_family(&labels)?
                            .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
                    }
                }
            }
            for ((m, code), count) in rare {
                let labels = RequestLabels {
                    method: MethodLabel::ALL[m],
                    code,
                };
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
            }
        }
        {
            let mut histogram = encoder.encode_descriptor(
                "request_duration_seconds",
                "Time from receiving a request to the end of its response body",
                None,
                MetricType::Histogram,
            )?;
            let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
                .iter()
                .copied()
                .chain(std::iter::once(f64::INFINITY))
                .enumerate()
                .map(|(i, bound)| (bound, self.sum(|s| s.buckets[i].load(Ordering::Relaxed))))
                .collect();
            let count = buckets.iter().map(|(_, n)| n).sum();
            #[allow(clippy::cast_precision_loss)] // a sum of nanoseconds, reported in seconds
            let seconds = self.sum(|s| s.duration_nanos.load(Ordering::Relaxed)) as f64 / 1e9;
            histogram.encode_histogram::<NoLabelSet>(seconds, count, &buckets, None)?;
        }
        {
            let mut gauge = encoder.encode_descriptor(
                "requests_in_flight",
                "Requests received whose response has not finished yet",
                None,
                MetricType::Gauge,
            )?;
            let in_flight: i64 = self
                .shards
                .iter()
                .map(|s| s.in_flight.load(Ordering::Relaxed))
                .sum();
            gauge.encode_gauge(&in_flight)?;
        }
        let mut family = encoder.encode_descriptor(
            "predictions",
            "Predicted classes: argmax of v1 (TensorFlow-Serving/KServe) `predictions` rows, labelled by class; of v2 (Open Inference Protocol) `outputs`, labelled by class, protocol, model and output; answers whose classes cannot be read count as \"unparsed\"",
            None,
            MetricType::Counter,
        )?;
        let names = self
            .class_names
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(UNPARSED));
        for (i, name) in names.enumerate() {
            let count = self.sum(|s| s.classes[i].load(Ordering::Relaxed));
            let labels = ClassLabels {
                class: name.to_owned(),
            };
            family
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
        }
        for (name, count) in lock(&self.rare.classes).iter() {
            let labels = ClassLabels {
                class: name.clone(),
            };
            family
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(count, None)?;
        }
        // v2 counts by name, summed over the shards, in a stable order.
        let mut v2: BTreeMap<V2Key, u64> = BTreeMap::new();
        for shard in &self.shards {
            for (key, count) in lock(&shard.v2).iter() {
                *v2.entry(*key).or_default() += count;
            }
        }
        let classes = ClassNames::new(self.class_names.clone());
        for ((model, output, class), count) in v2 {
            let labels = V2ClassLabels {
                class: class.map_or_else(|| UNPARSED.to_owned(), |i| classes.name(i).into_owned()),
                protocol: "v2",
                model: Names::name(&self.names.models, model),
                output: Names::name(&self.names.outputs, output),
            };
            family
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Metrics with one [`Shard`] per worker thread.
    pub(crate) fn new(classes: &ClassNames, workers: usize) -> Self {
        let mut registry = Registry::with_prefix("ds_proxy");
        let upstream_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Requests the model server failed, by kind: connect (no connection), timeout (the answer's head, or its body's next bytes, not within --timeout), other (the connection broke or the answer was invalid, before or during the answer)",
            upstream_errors.clone(),
        );
        let query_log_dropped = Counter::default();
        registry.register(
            "query_log_dropped",
            "Query-log lines dropped because the log queue was full",
            query_log_dropped.clone(),
        );
        let query_log_written = Counter::default();
        registry.register(
            "query_log_written",
            "Query-log lines written",
            query_log_written.clone(),
        );
        let query_log_lost = Counter::default();
        registry.register(
            "query_log_lost",
            "Query-log lines lost because writing them failed (disk full, closed output)",
            query_log_lost.clone(),
        );
        let rare = Arc::new(Rare::default());
        let names = Arc::new(Names::default());
        let shards = Arc::new(Shards {
            shards: (0..workers.max(1))
                .map(|_| Arc::new(Shard::new(classes.len(), rare.clone(), names.clone())))
                .collect(),
            class_names: (0..classes.len())
                .map(|i| classes.name(i).into_owned())
                .collect(),
            rare,
            names,
        });
        registry.register_collector(Box::new(shards.clone()));
        Self {
            registry,
            upstream_errors,
            query_log_dropped,
            query_log_written,
            query_log_lost,
            shards,
        }
    }

    /// The shard of worker `index`.
    pub(crate) fn shard(&self, index: usize) -> Arc<Shard> {
        self.shards.shards[index % self.shards.shards.len()].clone()
    }

    pub(crate) fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors
            .get_or_create(&ErrorLabels { kind })
            .inc();
    }

    pub(crate) fn query_log_dropped(&self) {
        self.query_log_dropped.inc();
    }

    pub(crate) fn query_log_written(&self, lines: u64) {
        self.query_log_written.inc_by(lines);
    }

    pub(crate) fn query_log_lost(&self, lines: u64) {
        self.query_log_lost.inc_by(lines);
    }

    /// Renders the OpenMetrics text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail; an error here would be a bug in an encoder.
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_add_up_on_a_scrape() {
        let classes = ClassNames::new(vec!["cat".into(), "dog".into()]);
        let metrics = Metrics::new(&classes, 2);
        let (a, b) = (metrics.shard(0), metrics.shard(1));
        for shard in [&a, &b, &a] {
            shard.request_started();
            shard.request_finished(MethodLabel::Post, 200, Duration::from_millis(2));
            shard.predicted(1, &classes);
        }
        b.request_started();
        b.request_finished(MethodLabel::Get, 799, Duration::from_secs(90));
        b.predicted(5, &classes);
        a.unparsed();
        a.request_started();
        let text = metrics.encode();
        for line in [
            "ds_proxy_requests_total{method=\"POST\",code=\"200\"} 3",
            "ds_proxy_requests_total{method=\"GET\",code=\"799\"} 1",
            "ds_proxy_request_duration_seconds_count 4",
            "ds_proxy_request_duration_seconds_bucket{le=\"0.0025\"} 3",
            "ds_proxy_request_duration_seconds_bucket{le=\"60.0\"} 3",
            "ds_proxy_request_duration_seconds_bucket{le=\"+Inf\"} 4",
            "ds_proxy_requests_in_flight 1",
            "ds_proxy_predictions_total{class=\"cat\"} 0",
            "ds_proxy_predictions_total{class=\"dog\"} 3",
            "ds_proxy_predictions_total{class=\"5\"} 1",
            "ds_proxy_predictions_total{class=\"unparsed\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("ds_proxy_request_duration_seconds_sum "))
            .and_then(|v| v.parse().ok())
            .expect("a sum");
        assert!((sum - 90.006).abs() < 1e-9, "{sum}");
        assert_eq!(
            text.matches("# TYPE ds_proxy_predictions counter").count(),
            1
        );
    }

    #[test]
    fn v2_counts_add_up_by_model_and_output_and_output_names_are_capped() {
        let classes = ClassNames::new(vec!["cat".into(), "dog".into()]);
        let metrics = Metrics::new(&classes, 2);
        let (a, b) = (metrics.shard(0), metrics.shard(1));
        let output = |name: &str, classes: Option<Vec<usize>>| V2Output {
            name: name.into(),
            classes,
        };
        let answer = [output("p", Some(vec![1, 1, 4])), output("text", None)];
        a.predicted_v2("pets", Some(&answer));
        b.predicted_v2("pets", Some(&answer));
        b.predicted_v2("pets", None);
        // Ten output names: the first 8 in all (`p` and `text` among them) get a label.
        let many: Vec<V2Output> = (0..8)
            .map(|i| output(&format!("o{i}"), Some(vec![0])))
            .collect();
        a.predicted_v2("zoo", Some(&many));
        let text = metrics.encode();
        for line in [
            r#"ds_proxy_predictions_total{class="dog",protocol="v2",model="pets",output="p"} 4"#,
            r#"ds_proxy_predictions_total{class="4",protocol="v2",model="pets",output="p"} 2"#,
            r#"ds_proxy_predictions_total{class="unparsed",protocol="v2",model="pets",output="text"} 2"#,
            r#"ds_proxy_predictions_total{class="unparsed",protocol="v2",model="pets",output=""} 1"#,
            r#"ds_proxy_predictions_total{class="cat",protocol="v2",model="zoo",output="o5"} 1"#,
            r#"ds_proxy_predictions_total{class="cat",protocol="v2",model="zoo",output="other"} 2"#,
            // The v1 series are untouched by v2 answers.
            r#"ds_proxy_predictions_total{class="dog"} 0"#,
            r#"ds_proxy_predictions_total{class="unparsed"} 0"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        assert!(!text.contains(r#"output="o6""#), "{text}");
    }
}
