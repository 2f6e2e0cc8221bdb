//! Fault injection (error answers, latency, dropped watches, 410s) and request counters.

use super::status::ApiError;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The error an injected fault answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAnswer {
    /// 409 Conflict.
    Conflict,
    /// 500 InternalError.
    Internal,
    /// 429 TooManyRequests with a `Retry-After` header.
    TooManyRequests {
        /// Seconds in `Retry-After`.
        retry_after_secs: u64,
    },
}

/// How often a fault fires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// The next `n` matching requests fail, then the fault is spent.
    Count(u32),
    /// This fraction (0.0–1.0) of matching requests fails, spread evenly and
    /// deterministically (0.5 fails every second request).
    Rate(f64),
}

#[derive(Debug)]
struct Rule {
    verb: String,
    resource: String,
    answer: FaultAnswer,
    limit: Limit,
    credit: f64,
}

/// Fault injection settings shared by every request handler. `"*"` matches any verb or
/// resource. Verbs: get, list, watch, create, update, patch, delete, deletecollection.
#[derive(Debug, Default)]
pub struct Faults {
    rules: Mutex<Vec<Rule>>,
    latency_ms: AtomicU64,
    drop_after_events: AtomicU64,
    drop_after_ms: AtomicU64,
    gone_next_watch: AtomicBool,
    allowed_namespaces: Mutex<Option<Vec<String>>>,
}

impl Faults {
    /// Makes matching requests fail with `answer`, `limit` times or at a rate.
    pub fn fail(&self, verb: &str, resource: &str, answer: FaultAnswer, limit: Limit) {
        self.lock().push(Rule {
            verb: verb.to_string(),
            resource: resource.to_string(),
            answer,
            limit,
            credit: 0.0,
        });
    }

    /// Adds this delay before every API request is answered (zero removes it).
    pub fn set_latency(&self, latency: Duration) {
        self.latency_ms
            .store(latency.as_millis() as u64, Ordering::Relaxed);
    }

    /// Watches started from now on end (cleanly, as a dropped connection) after `n` events.
    pub fn drop_watches_after_events(&self, n: u64) {
        self.drop_after_events.store(n, Ordering::Relaxed);
    }

    /// Watches started from now on end after `d`.
    pub fn drop_watches_after(&self, d: Duration) {
        self.drop_after_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// The next watch request is answered with a 410 Expired ERROR event (one time).
    pub fn gone_on_next_watch(&self) {
        self.gone_next_watch.store(true, Ordering::Relaxed);
    }

    /// Answers like namespaced RBAC: with `Some(list)`, every request outside those
    /// namespaces (cluster-scoped resources, cluster-wide lists and watches, other
    /// namespaces) gets 403 Forbidden. `None` lifts the restriction.
    pub fn restrict_to_namespaces(&self, namespaces: Option<Vec<String>>) {
        *self.allowed_namespaces.lock() = namespaces;
    }

    /// The 403 for a request outside the allowed namespaces, if restricted.
    pub(crate) fn check_scope(
        &self,
        verb: &str,
        resource: &super::resources::ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> Option<ApiError> {
        let allowed = self.allowed_namespaces.lock();
        let allowed = allowed.as_ref()?;
        let inside = resource.namespaced && ns.is_some_and(|ns| allowed.iter().any(|a| a == ns));
        (!inside).then(|| ApiError::forbidden(resource, verb, name, ns))
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.restrict_to_namespaces(None);
        self.lock().clear();
        self.latency_ms.store(0, Ordering::Relaxed);
        self.drop_after_events.store(0, Ordering::Relaxed);
        self.drop_after_ms.store(0, Ordering::Relaxed);
        self.gone_next_watch.store(false, Ordering::Relaxed);
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Vec<Rule>> {
        self.rules.lock()
    }

    pub(crate) fn latency(&self) -> Option<Duration> {
        let ms = self.latency_ms.load(Ordering::Relaxed);
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    pub(crate) fn watch_drop_after_events(&self) -> Option<u64> {
        let n = self.drop_after_events.load(Ordering::Relaxed);
        (n > 0).then_some(n)
    }

    pub(crate) fn watch_drop_after(&self) -> Option<Duration> {
        let ms = self.drop_after_ms.load(Ordering::Relaxed);
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    pub(crate) fn take_gone(&self) -> bool {
        self.gone_next_watch.swap(false, Ordering::Relaxed)
    }

    /// The injected error for this request, if a rule fires.
    pub(crate) fn check(
        &self,
        verb: &str,
        resource: &super::resources::ResourceType,
        name: &str,
    ) -> Option<ApiError> {
        let mut rules = self.lock();
        let mut fired = None;
        for (i, r) in rules.iter_mut().enumerate() {
            if (r.verb != "*" && r.verb != verb)
                || (r.resource != "*" && r.resource != resource.resource)
            {
                continue;
            }
            let fire = match &mut r.limit {
                Limit::Count(n) => {
                    if *n == 0 {
                        false
                    } else {
                        *n -= 1;
                        true
                    }
                }
                Limit::Rate(rate) => {
                    r.credit += rate.clamp(0.0, 1.0);
                    if r.credit >= 1.0 - 1e-9 {
                        r.credit -= 1.0;
                        true
                    } else {
                        false
                    }
                }
            };
            if fire {
                fired = Some((i, r.answer));
                break;
            }
        }
        let (i, answer) = fired?;
        if matches!(rules[i].limit, Limit::Count(0)) {
            rules.remove(i);
        }
        tracing::debug!(
            verb,
            resource = resource.resource,
            ?answer,
            "injected fault"
        );
        Some(match answer {
            FaultAnswer::Conflict => ApiError::conflict(resource, name),
            FaultAnswer::Internal => ApiError::internal(
                "an error on the server (injected) has prevented the request from succeeding",
            ),
            FaultAnswer::TooManyRequests { retry_after_secs } => {
                ApiError::too_many_requests(retry_after_secs)
            }
        })
    }
}

/// Requests served, per verb and resource (injected failures included).
#[derive(Debug, Default)]
pub struct Counters {
    counts: Mutex<BTreeMap<(String, String), u64>>,
}

const WRITE_VERBS: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

impl Counters {
    pub(crate) fn inc(&self, verb: &str, resource: &str) {
        *self
            .lock()
            .entry((verb.to_string(), resource.to_string()))
            .or_default() += 1;
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, BTreeMap<(String, String), u64>> {
        self.counts.lock()
    }

    /// Requests with this verb on this resource (plural name, e.g. `"deployments"`);
    /// `"*"` sums over all verbs or all resources.
    pub fn get(&self, verb: &str, resource: &str) -> u64 {
        self.lock()
            .iter()
            .filter(|((v, r), _)| (verb == "*" || v == verb) && (resource == "*" || r == resource))
            .map(|(_, n)| n)
            .sum()
    }

    /// Write requests (create, update, patch, delete, deletecollection) on all resources.
    pub fn writes(&self) -> u64 {
        WRITE_VERBS.iter().map(|v| self.get(v, "*")).sum()
    }

    /// Every count, keyed by (verb, resource).
    pub fn snapshot(&self) -> BTreeMap<(String, String), u64> {
        self.lock().clone()
    }

    /// Sets every count to zero.
    pub fn reset(&self) {
        self.lock().clear();
    }
}
