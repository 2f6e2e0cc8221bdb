//! Prometheus metrics of the proxy, all under the `ds_proxy_` prefix.

use super::classes::{ClassNames, UNPARSED};
use http::Method;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::fmt::Write as _;
use std::sync::OnceLock;

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

/// All metrics of one proxy and the registry that renders them.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    /// The `requests` counter of each (method, code), resolved on first use: the family's
    /// lookup hashes the labels and takes a lock on every request, this is one atomic load.
    request_counters: Box<[OnceLock<Counter>]>,
    duration: Histogram,
    upstream_errors: Family<ErrorLabels, Counter>,
    in_flight: Gauge,
    predictions: Family<ClassLabels, Counter>,
    /// Counters of the configured class names, resolved once so the hot path does not
    /// allocate a label string per prediction.
    named_classes: Vec<Counter>,
    unparsed: Counter,
    query_log_dropped: Counter,
    query_log_written: Counter,
}

impl Metrics {
    pub(crate) fn new(classes: &ClassNames) -> Self {
        let mut registry = Registry::with_prefix("ds_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by HTTP method and status code (499: client went away first)",
            requests.clone(),
        );
        let duration = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "request_duration_seconds",
            "Time from receiving a request to the end of its response body",
            duration.clone(),
        );
        let upstream_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Requests that got no answer from the model server, by kind (connect, timeout, other)",
            upstream_errors.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Requests received whose response has not finished yet",
            in_flight.clone(),
        );
        let predictions = Family::<ClassLabels, Counter>::default();
        registry.register(
            "predictions",
            "Predicted classes (argmax of TensorFlow-Serving answers); other answer shapes count as \"unparsed\"",
            predictions.clone(),
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
        let named_classes = (0..classes.len())
            .map(|i| {
                predictions.get_or_create_owned(&ClassLabels {
                    class: classes.name(i).into_owned(),
                })
            })
            .collect();
        let unparsed = predictions.get_or_create_owned(&ClassLabels {
            class: UNPARSED.to_owned(),
        });
        let request_counters = (0..METHODS * CACHED_CODES.len())
            .map(|_| OnceLock::new())
            .collect();
        Self {
            registry,
            requests,
            request_counters,
            duration,
            upstream_errors,
            in_flight,
            predictions,
            named_classes,
            unparsed,
            query_log_dropped,
            query_log_written,
        }
    }

    pub(crate) fn request_started(&self) {
        self.in_flight.inc();
    }

    pub(crate) fn request_finished(&self, method: MethodLabel, code: u16, seconds: f64) {
        self.in_flight.dec();
        let labels = || RequestLabels { method, code };
        if CACHED_CODES.contains(&code) {
            let slot = method.index() * CACHED_CODES.len() + usize::from(code - CACHED_CODES.start);
            self.request_counters[slot]
                .get_or_init(|| self.requests.get_or_create_owned(&labels()))
                .inc();
        } else {
            self.requests.get_or_create(&labels()).inc();
        }
        self.duration.observe(seconds);
    }

    pub(crate) fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors
            .get_or_create(&ErrorLabels { kind })
            .inc();
    }

    pub(crate) fn predicted(&self, index: usize, classes: &ClassNames) {
        match self.named_classes.get(index) {
            Some(counter) => {
                counter.inc();
            }
            None => {
                self.predictions
                    .get_or_create(&ClassLabels {
                        class: classes.name(index).into_owned(),
                    })
                    .inc();
            }
        }
    }

    pub(crate) fn unparsed(&self) {
        self.unparsed.inc();
    }

    pub(crate) fn query_log_dropped(&self) {
        self.query_log_dropped.inc();
    }

    pub(crate) fn query_log_written(&self, lines: u64) {
        self.query_log_written.inc_by(lines);
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
