//! The Pods of the agent's Deployments: a label-selected watch (the owner selector, as the
//! other watches) kept as a slim projection per deployment, and what they say about it.
//!
//! A Deployment's own status tells a bad image only through `ProgressDeadlineExceeded`,
//! ten minutes later and naming a ReplicaSet timeout. The pods say it at once: a container
//! waiting in `ImagePullBackOff` or `CrashLoopBackOff`, a pod the scheduler cannot place.
//! [`overlay`] puts that into the deployment's status: the pods, the first such reason in
//! one line, and phase Failed while the rollout has not completed.
//!
//! Each pod is reduced on receipt to a [`proto::PodStatus`] (name, phase, readiness,
//! restarts, per container its state with reason and message, the Unschedulable
//! message); its spec is never decoded.

use super::builders::DEPLOYMENT_ID_LABEL;
use ds_core::proto::{self, Phase};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use kube::api::Api;
use kube::core::NamespaceResourceScope;
use kube::runtime::watcher;
use parking_lot::RwLock;
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Most pods reported per deployment (by name): enough for `describe`, bounded for a
/// deployment of many replicas.
pub const MAX_PODS: usize = 20;

/// Longest message kept from a container state (kubelet messages can quote whole
/// registry answers).
const MAX_MESSAGE: usize = 300;

/// Waiting reasons after which the pod will not start by itself: a wrong image or
/// registry, a container that keeps crashing, a missing Secret or ConfigMap.
const FAILING_WAITING: &[&str] = &[
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// A Pod as the agent reads it: the metadata it uses and the status as JSON; the spec
/// (most of a pod) is skipped by the decoder.
#[derive(Debug, Clone)]
pub struct SlimPod {
    pub metadata: ObjectMeta,
    pub status: Value,
}

impl Resource for SlimPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl<'de> Deserialize<'de> for SlimPod {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            metadata: Meta,
            #[serde(default)]
            status: Value,
        }
        #[derive(Deserialize, Default)]
        #[serde(default, rename_all = "camelCase")]
        struct Meta {
            name: Option<String>,
            namespace: Option<String>,
            resource_version: Option<String>,
            labels: Option<BTreeMap<String, String>>,
            deletion_timestamp: Option<Time>,
        }
        let Raw {
            metadata: m,
            status,
        } = Raw::deserialize(d)?;
        Ok(Self {
            metadata: ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                resource_version: m.resource_version,
                labels: m.labels,
                deletion_timestamp: m.deletion_timestamp,
                ..Default::default()
            },
            status,
        })
    }
}

fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn cut(message: String) -> String {
    match message.char_indices().nth(MAX_MESSAGE) {
        None => message,
        Some((end, _)) => format!("{}…", &message[..end]),
    }
}

/// The slim projection of a pod's status.
pub fn project(name: &str, status: &Value) -> proto::PodStatus {
    let containers: Vec<proto::ContainerState> = status
        .get("containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            let restarts = c
                .get("restartCount")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0);
            let state = c.get("state").unwrap_or(&Value::Null);
            let last_terminated = c.pointer("/lastState/terminated");
            let (word, reason, message) = if let Some(w) = state.get("waiting") {
                let mut message = text(w, "message");
                // A crash loop's own message says only "back-off …": why it exited says more.
                if let Some(t) = last_terminated {
                    let why = text(t, "reason");
                    if !why.is_empty() {
                        let code = t.get("exitCode").and_then(Value::as_i64).unwrap_or(0);
                        message = format!("{message} (last exit: {why}, code {code})")
                            .trim_start()
                            .to_string();
                    }
                }
                ("waiting", text(w, "reason"), message)
            } else if let Some(t) = state.get("terminated") {
                ("terminated", text(t, "reason"), text(t, "message"))
            } else if state.get("running").is_some() {
                // Running again after a restart: the reason of the last termination.
                let (r, m) = last_terminated
                    .map(|t| (text(t, "reason"), text(t, "message")))
                    .unwrap_or_default();
                ("running", r, m)
            } else {
                ("", String::new(), String::new())
            };
            proto::ContainerState {
                name: text(c, "name"),
                ready: c.get("ready").and_then(Value::as_bool).unwrap_or(false),
                restarts,
                state: word.into(),
                reason,
                message: cut(message),
            }
        })
        .collect();
    let mut containers = containers;
    containers.extend(failed_init_containers(status));
    let unschedulable = status
        .get("conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| {
            text(c, "type") == "PodScheduled"
                && text(c, "status") == "False"
                && text(c, "reason") == "Unschedulable"
        })
        .map(|c| cut(text(c, "message")))
        .map(|m| {
            if m.is_empty() {
                "Unschedulable".into()
            } else {
                m
            }
        })
        .unwrap_or_default();
    proto::PodStatus {
        name: name.to_string(),
        phase: text(status, "phase"),
        ready: !containers.is_empty() && containers.iter().all(|c| c.ready),
        restarts: containers.iter().map(|c| c.restarts).sum(),
        containers,
        unschedulable,
    }
}

/// The name prefix of the init containers [`project`] reports (only failing ones).
const INIT_PREFIX: &str = "init:";

/// The init containers that failed (exited non-zero, or wait to be restarted after
/// that), with the reason and the termination message they left (`ds model-fetch`
/// writes its one-line reason there): while one fails the pod never starts.
fn failed_init_containers(status: &Value) -> Vec<proto::ContainerState> {
    let exit = |t: &Value| t.get("exitCode").and_then(Value::as_i64).unwrap_or(0);
    status
        .get("initContainerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let state = c.get("state").unwrap_or(&Value::Null);
            let (word, reason, t) = if let Some(t) = state.get("terminated") {
                ("terminated", text(t, "reason"), t)
            } else if let Some(w) = state.get("waiting") {
                let t = c.pointer("/lastState/terminated")?;
                ("waiting", text(w, "reason"), t)
            } else {
                return None;
            };
            let code = exit(t);
            if code == 0 {
                return None;
            }
            let why = text(t, "message");
            let why = why.trim();
            let message = if why.is_empty() {
                format!("exit code {code}")
            } else {
                format!("{why} (exit code {code})")
            };
            Some(proto::ContainerState {
                name: format!("{INIT_PREFIX}{}", text(c, "name")),
                ready: false,
                restarts: c
                    .get("restartCount")
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(0),
                state: word.into(),
                reason: if reason.is_empty() {
                    "Error".into()
                } else {
                    reason
                },
                message: cut(message),
            })
        })
        .collect()
}

/// Why `pod` will not become ready by itself, in one line; `None` if nothing says so.
pub fn failure(pod: &proto::PodStatus) -> Option<String> {
    let line = |reason: &str, message: &str| {
        if message.is_empty() {
            format!("{reason}: pod {}", pod.name)
        } else {
            format!("{reason}: pod {}: {message}", pod.name)
        }
    };
    if !pod.unschedulable.is_empty() {
        return Some(line("Unschedulable", &pod.unschedulable));
    }
    for c in &pod.containers {
        // Only failing init containers are reported, as kubectl shows them (Init:REASON).
        if let Some(name) = c.name.strip_prefix(INIT_PREFIX) {
            return Some(line(
                &format!("Init:{}", c.reason),
                &format!("init container {name}: {}", c.message),
            ));
        }
        if c.state == "waiting" && FAILING_WAITING.contains(&c.reason.as_str()) {
            return Some(line(&c.reason, &c.message));
        }
        // Killed for memory and restarted: it will be killed again.
        if c.reason == "OOMKilled" && c.restarts > 0 {
            let message = format!("container {} restarted {} times", c.name, c.restarts);
            return Some(line("OOMKilled", &message));
        }
    }
    None
}

/// Puts what `pods` say into `status`: the pods (at most [`MAX_PODS`]), the first failure
/// reason, and phase Failed when there is one while the rollout is still in progress (a
/// completed rollout stays Available: its replicas serve, the reason still shows).
/// `status` is as the reconciler computed it, or as last overlaid (see [`rebase`]).
pub fn overlay(status: &mut proto::DeploymentStatus, mut pods: Vec<proto::PodStatus>) {
    rebase(status);
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    pods.truncate(MAX_PODS);
    status.reason = pods.iter().find_map(failure).unwrap_or_default();
    if !status.reason.is_empty() && status.phase == Phase::Progressing as i32 {
        status.phase = Phase::Failed as i32;
    }
    status.pods = pods;
}

/// A deployment's status as the agent keeps it between reports: what its pods said
/// (reason, phase) but not the pods themselves, which the pod watch holds already; with
/// thousands of deployments a second copy of every pod cost megabytes.
/// [`KeptStatus::report`] puts the pods back when the status is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct KeptStatus {
    /// The status with [`overlay`] applied and its `pods` left empty.
    status: proto::DeploymentStatus,
    /// A fingerprint of the pods overlaid: a change of the pods alone is a change.
    pods: u64,
}

impl KeptStatus {
    /// `status` as the reconciler computed it (or as kept before), with what `pods` say.
    pub fn new(mut status: proto::DeploymentStatus, pods: Vec<proto::PodStatus>) -> Self {
        overlay(&mut status, pods);
        let pods = std::mem::take(&mut status.pods);
        Self {
            pods: fingerprint(pods.iter()),
            status,
        }
    }

    /// The same status with what `pods` say now.
    pub fn overlaid(&self, pods: Vec<proto::PodStatus>) -> Self {
        Self::new(self.status.clone(), pods)
    }

    /// The status to report, with `pods` (the deployment's pods now) in it.
    pub fn report(&self, pods: Vec<proto::PodStatus>) -> proto::DeploymentStatus {
        let mut s = self.status.clone();
        overlay(&mut s, pods);
        s
    }

    /// The deployment's ID.
    pub fn deployment_id(&self) -> &str {
        &self.status.deployment_id
    }

    /// A fingerprint of the status as it would be reported (its encoding hashed, through
    /// `buf`'s reused bytes), so the statuses already sent are remembered as one word each.
    pub fn fingerprint(&self, buf: &mut Vec<u8>) -> u64 {
        use prost::Message;
        use std::hash::{Hash, Hasher};
        buf.clear();
        // Encoding into a Vec cannot run out of space.
        let _ = self.status.encode(buf);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        buf.hash(&mut h);
        self.pods.hash(&mut h);
        h.finish()
    }
}

/// A fingerprint of pods by their encoding.
fn fingerprint<'a>(pods: impl Iterator<Item = &'a proto::PodStatus>) -> u64 {
    use prost::Message;
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in pods {
        p.encode_to_vec().hash(&mut h);
    }
    h.finish()
}

/// Undoes an earlier [`overlay`]: a status Failed by its pods alone (no error of its own)
/// was Progressing before.
fn rebase(status: &mut proto::DeploymentStatus) {
    if status.phase == Phase::Failed as i32
        && status.last_error.is_empty()
        && !status.reason.is_empty()
    {
        status.phase = Phase::Progressing as i32;
    }
    status.reason.clear();
    status.pods.clear();
}

/// A string of a kept pod: the words kubelets and our builders repeat in every pod (phases,
/// states, reasons, container names) point at one static copy, anything else is owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Text {
    Known(&'static str),
    Owned(Box<str>),
}

/// The words most pods repeat; each would otherwise take its own allocation per pod.
const KNOWN_WORDS: &[&str] = &[
    "",
    "model",
    "proxy",
    "model-fetch",
    "waiting",
    "running",
    "terminated",
    "Pending",
    "Running",
    "Succeeded",
    "Failed",
    "Unknown",
    "ContainerCreating",
    "PodInitializing",
    "Completed",
    "Error",
    "OOMKilled",
    "ImagePullBackOff",
    "ErrImagePull",
    "CrashLoopBackOff",
];

impl Text {
    fn new(s: String) -> Self {
        match KNOWN_WORDS.iter().find(|w| **w == s) {
            Some(w) => Self::Known(w),
            None => Self::Owned(s.into_boxed_str()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Self::Known(w) => w,
            Self::Owned(s) => s,
        }
    }
}

/// A [`proto::ContainerState`] as the map keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeptContainer {
    name: Text,
    ready: bool,
    restarts: u32,
    state: Text,
    reason: Text,
    message: Text,
}

/// A [`proto::PodStatus`] as the map keeps it: thousands of pods are held for as long as
/// they exist, so the common strings are shared and the containers sized exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeptPod {
    name: Box<str>,
    phase: Text,
    ready: bool,
    restarts: u32,
    containers: Box<[KeptContainer]>,
    unschedulable: Text,
}

impl From<proto::PodStatus> for KeptPod {
    fn from(p: proto::PodStatus) -> Self {
        Self {
            name: p.name.into_boxed_str(),
            phase: Text::new(p.phase),
            ready: p.ready,
            restarts: p.restarts,
            containers: p
                .containers
                .into_iter()
                .map(|c| KeptContainer {
                    name: Text::new(c.name),
                    ready: c.ready,
                    restarts: c.restarts,
                    state: Text::new(c.state),
                    reason: Text::new(c.reason),
                    message: Text::new(c.message),
                })
                .collect(),
            unschedulable: Text::new(p.unschedulable),
        }
    }
}

impl From<&KeptPod> for proto::PodStatus {
    fn from(p: &KeptPod) -> Self {
        Self {
            name: p.name.to_string(),
            phase: p.phase.as_str().to_string(),
            ready: p.ready,
            restarts: p.restarts,
            containers: p
                .containers
                .iter()
                .map(|c| proto::ContainerState {
                    name: c.name.as_str().to_string(),
                    ready: c.ready,
                    restarts: c.restarts,
                    state: c.state.as_str().to_string(),
                    reason: c.reason.as_str().to_string(),
                    message: c.message.as_str().to_string(),
                })
                .collect(),
            unschedulable: p.unschedulable.as_str().to_string(),
        }
    }
}

/// The pods of one namespace, by deployment ID. A deployment has a few pods: a Vec
/// searched by name costs far less than a map per deployment (a BTreeMap's first node
/// alone holds room for eleven).
type ByDeployment = HashMap<String, Vec<KeptPod>>;

/// The watched pods, by namespace.
type Map = HashMap<String, ByDeployment>;

/// The pods of the agent's deployments, as the watch last saw them.
#[derive(Clone, Default)]
pub struct Pods {
    map: Arc<RwLock<Map>>,
}

impl Pods {
    /// The pods of deployment `id` in `namespace` (in no particular order).
    pub fn of(&self, namespace: &str, id: &str) -> Vec<proto::PodStatus> {
        self.map
            .read()
            .get(namespace)
            .and_then(|deps| deps.get(id))
            .map(|pods| pods.iter().map(proto::PodStatus::from).collect())
            .unwrap_or_default()
    }
}

/// The deployment IDs whose pods changed.
pub type PodsTouched = mpsc::UnboundedSender<Arc<str>>;

fn keys(pod: &SlimPod) -> Option<(String, String, String)> {
    let m = &pod.metadata;
    let id = m.labels.as_ref()?.get(DEPLOYMENT_ID_LABEL)?.clone();
    Some((m.namespace.clone()?, id, m.name.clone()?))
}

fn put(map: &mut Map, pod: SlimPod) -> Option<String> {
    let (ns, id, name) = keys(&pod)?;
    let deps = map.entry(ns).or_default();
    if pod.metadata.deletion_timestamp.is_some() {
        // Terminating (an old ReplicaSet's, or scaled down): no longer the deployment's.
        remove(deps, &id, &name);
    } else {
        let slim = KeptPod::from(project(&name, &pod.status));
        let pods = deps.entry(id.clone()).or_default();
        match pods.iter_mut().find(|p| *p.name == *name) {
            Some(known) => *known = slim,
            None => {
                // Grown one at a time: a deployment's pods are few and long-lived.
                pods.reserve_exact(1);
                pods.push(slim);
            }
        }
    }
    Some(id)
}

fn remove(deps: &mut ByDeployment, id: &str, name: &str) {
    if let Some(pods) = deps.get_mut(id) {
        pods.retain(|p| *p.name != *name);
        if pods.is_empty() {
            deps.remove(id);
        }
    }
}

/// Watches the Pods matching `selector` in each of `namespaces` (or cluster-wide when
/// empty) into a [`Pods`]; the deployment IDs whose pods changed are sent on `touched`.
pub fn start_watch(
    client: &kube::Client,
    namespaces: &[String],
    selector: &str,
    touched: PodsTouched,
    relist: std::time::Duration,
    cancel: &CancellationToken,
) -> (Pods, tokio::task::JoinHandle<()>) {
    let pods = Pods::default();
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().cloned().map(Some).collect()
    };
    let streams: Vec<_> = scopes
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let api: Api<SlimPod> = match ns {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            let config = watcher::Config::default()
                .labels(selector)
                .page_size(super::cache::LIST_PAGE_SIZE);
            // Relisting as the owned objects' watches do (a cluster restarted empty).
            super::cache::relisting_watcher(api, config, relist)
                .map(move |e| (i, e))
                .boxed()
        })
        .collect();
    let map = pods.map.clone();
    let cancel = cancel.clone();
    let handle = tokio::spawn(async move {
        let mut stream = futures::stream::select_all(streams);
        // A relist of one scope fills a fresh map, swapped in for that scope when complete.
        let mut relists: Vec<Option<Map>> = vec![None; scopes.len()];
        loop {
            let next = tokio::select! {
                n = stream.next() => n,
                () = cancel.cancelled() => return,
            };
            let (i, event) = match next {
                Some((i, Ok(e))) => (i, e),
                Some((i, Err(error))) => {
                    warn!(%error, namespace = scopes[i].as_deref().unwrap_or("*"), "pod watch failed; retrying");
                    continue;
                }
                None => return,
            };
            match event {
                watcher::Event::Init => relists[i] = Some(Map::new()),
                watcher::Event::InitApply(p) => {
                    put(relists[i].get_or_insert_with(Map::new), p);
                }
                watcher::Event::InitDone => {
                    let fresh = relists[i].take().unwrap_or_default();
                    // Every deployment with pods before or after the list: its status may
                    // have changed meanwhile.
                    let mut ids: Vec<String> = fresh
                        .values()
                        .flat_map(|deps| deps.keys().cloned())
                        .collect();
                    let mut m = map.write();
                    let old: Map = match &scopes[i] {
                        None => std::mem::replace(&mut *m, fresh),
                        Some(ns) => {
                            let old = m.remove(ns.as_str());
                            m.extend(fresh);
                            old.map(|deps| (ns.clone(), deps)).into_iter().collect()
                        }
                    };
                    drop(m);
                    ids.extend(old.into_values().flat_map(ByDeployment::into_keys));
                    ids.sort_unstable();
                    ids.dedup();
                    for id in ids {
                        let _ = touched.send(Arc::from(id));
                    }
                }
                watcher::Event::Apply(p) => {
                    if let Some(id) = put(&mut map.write(), p) {
                        let _ = touched.send(Arc::from(id));
                    }
                }
                watcher::Event::Delete(p) => {
                    if let Some((ns, id, name)) = keys(&p) {
                        let mut m = map.write();
                        if let Some(deps) = m.get_mut(&ns) {
                            remove(deps, &id, &name);
                            if deps.is_empty() {
                                m.remove(&ns);
                            }
                        }
                        drop(m);
                        let _ = touched.send(Arc::from(id));
                    }
                }
            }
        }
    });
    (pods, handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pulling(image: &str) -> Value {
        json!({"phase": "Pending", "containerStatuses": [
            {"name": "model", "ready": false, "restartCount": 0,
             "state": {"waiting": {"reason": "ImagePullBackOff",
                "message": format!("Back-off pulling image \"{image}\"")}}},
            {"name": "proxy", "ready": true, "restartCount": 0,
             "state": {"running": {"startedAt": "2026-12-02T10:00:00Z"}}}]})
    }

    fn progressing() -> proto::DeploymentStatus {
        proto::DeploymentStatus {
            deployment_id: "d1".into(),
            phase: Phase::Progressing as i32,
            ..Default::default()
        }
    }

    #[test]
    fn a_kept_status_reports_what_its_pods_say_without_keeping_them() {
        let failing = project("iris-7c9-abcde", &pulling("nope:1"));
        let kept = KeptStatus::new(progressing(), vec![failing.clone()]);
        assert!(kept.status.pods.is_empty(), "the pods are not kept twice");
        assert_eq!(kept.status.phase, Phase::Failed as i32);
        // The report is the status overlaid with the pods, exactly as before.
        let mut expected = progressing();
        overlay(&mut expected, vec![failing.clone()]);
        assert_eq!(kept.report(vec![failing.clone()]), expected);
        // Overlaying again with the same pods changes nothing, fingerprint included.
        let mut buf = Vec::new();
        let again = kept.overlaid(vec![failing.clone()]);
        assert_eq!(again, kept);
        assert_eq!(again.fingerprint(&mut buf), kept.fingerprint(&mut buf));
        // A change of the pods alone (a restart counted) is a change to report.
        let mut restarted = failing;
        restarted.restarts = 1;
        let changed = kept.overlaid(vec![restarted.clone()]);
        assert_ne!(changed, kept);
        assert_ne!(changed.fingerprint(&mut buf), kept.fingerprint(&mut buf));
        assert_eq!(changed.report(vec![restarted]).pods[0].restarts, 1);
    }

    #[test]
    fn a_pull_failure_fails_a_rollout_in_progress_with_its_reason() {
        let pod = project("iris-7c9-abcde", &pulling("nope:1"));
        assert_eq!(pod.phase, "Pending");
        assert!(!pod.ready);
        assert_eq!(pod.containers.len(), 2);
        assert_eq!(pod.containers[0].state, "waiting");
        let mut s = progressing();
        overlay(&mut s, vec![pod]);
        assert_eq!(s.phase, Phase::Failed as i32);
        assert_eq!(
            s.reason,
            "ImagePullBackOff: pod iris-7c9-abcde: Back-off pulling image \"nope:1\""
        );
        assert_eq!(s.pods.len(), 1);
        // Recomputed once the pod is fine again: back to Progressing, no reason.
        let ok = project(
            "iris-7c9-abcde",
            &json!({"phase": "Running", "containerStatuses": [
                {"name": "model", "ready": true, "restartCount": 0, "state": {"running": {}}}]}),
        );
        overlay(&mut s, vec![ok]);
        assert_eq!(s.phase, Phase::Progressing as i32);
        assert_eq!(s.reason, "");
        assert!(s.pods[0].ready);
    }

    #[test]
    fn crash_loops_oom_kills_and_unschedulable_pods_are_failures() {
        let crash = project(
            "p1",
            &json!({"phase": "Running", "containerStatuses": [{"name": "model", "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container=model"}},
                "lastState": {"terminated": {"reason": "Error", "exitCode": 1}}}]}),
        );
        assert_eq!(crash.restarts, 4);
        let why = failure(&crash).expect("a crash loop fails");
        assert!(
            why.starts_with("CrashLoopBackOff: pod p1: back-off"),
            "{why}"
        );
        assert!(why.contains("last exit: Error, code 1"), "{why}");

        let oom = project(
            "p2",
            &json!({"phase": "Running", "containerStatuses": [{"name": "model", "restartCount": 2,
                "state": {"running": {}}, "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}),
        );
        assert_eq!(
            failure(&oom).as_deref(),
            Some("OOMKilled: pod p2: container model restarted 2 times")
        );

        let pending = project(
            "p3",
            &json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": "0/1 nodes are available: 1 Insufficient cpu."}]}),
        );
        assert_eq!(
            failure(&pending).as_deref(),
            Some("Unschedulable: pod p3: 0/1 nodes are available: 1 Insufficient cpu.")
        );

        // Starting up is not a failure.
        let creating = project(
            "p4",
            &json!({"phase": "Pending", "containerStatuses": [{"name": "model", "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}}]}),
        );
        assert_eq!(failure(&creating), None);
    }

    #[test]
    fn a_failed_model_fetch_init_container_fails_the_rollout_with_its_message() {
        let why = "model-fetch: sha256 mismatch for https://models.example.com/iris.onnx: want 00ab…, got 9f86…";
        let looping = project(
            "iris-7c9-abcde",
            &json!({"phase": "Pending",
                "initContainerStatuses": [{"name": "model-fetch", "ready": false, "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                    "lastState": {"terminated": {"reason": "Error", "exitCode": 1, "message": format!("{why}\n")}}}],
                "containerStatuses": [{"name": "model", "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": "PodInitializing"}}}]}),
        );
        assert!(!looping.ready);
        let mut s = progressing();
        overlay(&mut s, vec![looping]);
        assert_eq!(s.phase, Phase::Failed as i32);
        assert_eq!(
            s.reason,
            format!(
                "Init:CrashLoopBackOff: pod iris-7c9-abcde: init container model-fetch: {why} (exit code 1)"
            )
        );
        // The first failure, before any back-off: terminated with the message.
        let first = project(
            "p1",
            &json!({"phase": "Pending", "initContainerStatuses": [{"name": "model-fetch", "restartCount": 0,
                "state": {"terminated": {"reason": "Error", "exitCode": 2, "message": "model-fetch: s3://models/iris.onnx: 404 Not Found"}}}]}),
        );
        assert_eq!(
            failure(&first).as_deref(),
            Some(
                "Init:Error: pod p1: init container model-fetch: model-fetch: s3://models/iris.onnx: 404 Not Found (exit code 2)"
            )
        );
        // A finished (exit 0) or running download is not a failure.
        for state in [
            json!({"terminated": {"reason": "Completed", "exitCode": 0}}),
            json!({"running": {}}),
        ] {
            let ok = project(
                "p2",
                &json!({"phase": "Pending", "initContainerStatuses": [{"name": "model-fetch", "state": state}]}),
            );
            assert_eq!(failure(&ok), None);
            assert!(ok.containers.is_empty());
        }
    }

    #[test]
    fn errors_of_the_agent_and_completed_rollouts_keep_their_phase() {
        let bad = project("p1", &pulling("nope:1"));
        let mut s = progressing();
        s.phase = Phase::Available as i32;
        overlay(&mut s, vec![bad.clone()]);
        assert_eq!(s.phase, Phase::Available as i32, "its replicas serve");
        assert!(s.reason.starts_with("ImagePullBackOff"));
        let mut s = progressing();
        s.phase = Phase::Failed as i32;
        s.last_error = "name taken".into();
        overlay(&mut s, vec![bad]);
        overlay(&mut s, vec![]);
        assert_eq!(
            s.phase,
            Phase::Failed as i32,
            "the agent's own failure stays"
        );
    }

    #[test]
    fn pods_are_decoded_slim_and_bounded() {
        let pod: SlimPod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {DEPLOYMENT_ID_LABEL: "d1"},
                "managedFields": [{"manager": "kubelet"}]},
            "spec": {"containers": [{"name": "model", "image": "x"}]},
            "status": pulling("x"),
        }))
        .unwrap();
        assert!(pod.metadata.managed_fields.is_none());
        let mut map = Map::new();
        assert_eq!(put(&mut map, pod).as_deref(), Some("d1"));
        let pods = Pods {
            map: Arc::new(RwLock::new(map)),
        };
        // Kept compactly, given back as reported.
        assert_eq!(pods.of("ns", "d1"), [project("p", &pulling("x"))]);
        assert!(pods.of("other", "d1").is_empty());

        let many: Vec<_> = (0..50)
            .map(|i| project(&format!("p{i:02}"), &pulling("x")))
            .collect();
        let mut s = progressing();
        overlay(&mut s, many);
        assert_eq!(s.pods.len(), MAX_PODS);
        assert_eq!(s.pods[0].name, "p00");
    }
}
