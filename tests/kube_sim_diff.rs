//! Differential test: the simulated API server (`ds_kube_sim`) against the real
//! kube-apiserver and kube-controller-manager of `real_kube`.
//!
//! Every step sends the same request — built by kube's own request builder
//! (`kube::core::Request`, what `kube::Api` uses) and sent through an unchanged
//! `kube::Client` — to the simulator and to the real server, each in a namespace of the same
//! random name, and compares what clients rely on: the HTTP status code, the `Status`
//! (reason, message, details) and the fields of the answer. Values that differ legitimately
//! (uids, timestamps, resourceVersion values, allocated IPs and ports) are masked by
//! [`normalize`]; everything else must be equal, and a difference is reported as a path-by-
//! path diff naming the step.
//!
//! Where the simulator knowingly differs (the list "What the simulator knowingly does not
//! do" in `crates/ds-kube-sim/src/lib.rs`), the step asserts the known difference explicitly
//! ([`Diff::known`]): it fails when either side changes, so the list stays true.

mod real_kube;

use ds_kube_sim::{SimCluster, SimConfig};
use futures::StreamExt;
use http_body_util::BodyExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kube::Resource;
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy, WatchParams,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bound for anything asynchronous (controllers, garbage collection) on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(60);

/// Where the known differences are listed.
const KNOWN_LIST: &str =
    "\"What the simulator knowingly does not do\" in crates/ds-kube-sim/src/lib.rs";

// === the two sides ===

/// One API server: a client and this test's namespace on it.
#[derive(Clone)]
struct Side {
    label: &'static str,
    client: kube::Client,
    ns: String,
    /// Values a step keeps for a later one (resourceVersions differ per side).
    vars: Arc<Mutex<HashMap<String, String>>>,
}

/// An HTTP answer: status code and JSON body (a string when the body is not JSON).
#[derive(Debug, Clone)]
struct Answer {
    code: u16,
    body: Value,
}

fn url<K: Resource<DynamicType = ()>>(ns: &str) -> kube::core::Request {
    kube::core::Request::new(K::url_path(&(), Some(ns)))
}

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("serializable")
}

impl Side {
    fn set(&self, key: &str, value: impl Into<String>) {
        self.vars
            .lock()
            .unwrap()
            .insert(key.to_string(), value.into());
    }

    fn var(&self, key: &str) -> String {
        self.vars
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("{}: no value {key:?} kept", self.label))
    }

    async fn send(&self, req: http::Request<Vec<u8>>) -> Answer {
        let what = format!("{} {}", req.method(), req.uri());
        let resp = self
            .client
            .send(req.map(kube::client::Body::from))
            .await
            .unwrap_or_else(|e| panic!("{}: {what}: {e}", self.label));
        let code = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{}: {what}: reading the body: {e}", self.label))
            .to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Answer { code, body }
    }

    async fn create<K: Resource<DynamicType = ()>>(&self, obj: &Value) -> Answer {
        self.create_in::<K>(&self.ns.clone(), obj).await
    }

    async fn create_in<K: Resource<DynamicType = ()>>(&self, ns: &str, obj: &Value) -> Answer {
        let req = url::<K>(ns)
            .create(&PostParams::default(), to_vec(obj))
            .unwrap();
        self.send(req).await
    }

    async fn get<K: Resource<DynamicType = ()>>(&self, name: &str) -> Answer {
        self.get_in::<K>(&self.ns.clone(), name).await
    }

    async fn get_in<K: Resource<DynamicType = ()>>(&self, ns: &str, name: &str) -> Answer {
        let req = url::<K>(ns).get(name, &Default::default()).unwrap();
        self.send(req).await
    }

    async fn list<K: Resource<DynamicType = ()>>(&self, lp: &ListParams) -> Answer {
        self.send(url::<K>(&self.ns).list(lp).unwrap()).await
    }

    async fn replace<K: Resource<DynamicType = ()>>(&self, name: &str, obj: &Value) -> Answer {
        let req = url::<K>(&self.ns)
            .replace(name, &PostParams::default(), to_vec(obj))
            .unwrap();
        self.send(req).await
    }

    async fn patch<K: Resource<DynamicType = ()>>(
        &self,
        name: &str,
        pp: &PatchParams,
        patch: &Patch<Value>,
    ) -> Answer {
        let req = url::<K>(&self.ns).patch(name, pp, patch).unwrap();
        self.send(req).await
    }

    async fn delete<K: Resource<DynamicType = ()>>(&self, name: &str, dp: &DeleteParams) -> Answer {
        self.send(url::<K>(&self.ns).delete(name, dp).unwrap())
            .await
    }

    /// A watch of `K` in this namespace: the events (`{type, object}`) until the server
    /// ends the stream (`timeoutSeconds`) or `max` arrived.
    async fn watch<K: Resource<DynamicType = ()>>(
        &self,
        wp: &WatchParams,
        rv: &str,
        max: usize,
    ) -> Vec<Value> {
        let mut req = url::<K>(&self.ns).watch(wp, rv).unwrap();
        req.headers_mut().insert(
            http::header::ACCEPT_ENCODING,
            http::HeaderValue::from_static("identity"),
        );
        let resp = self
            .client
            .send(req.map(kube::client::Body::from))
            .await
            .unwrap_or_else(|e| panic!("{}: watch: {e}", self.label));
        assert_eq!(resp.status().as_u16(), 200, "{}: watch answer", self.label);
        let mut stream = resp.into_body().into_data_stream();
        let mut buf = Vec::new();
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while events.len() < max {
            let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(c))) => c,
                _ => break,
            };
            buf.extend_from_slice(&chunk);
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                    events.push(v);
                }
            }
        }
        events
    }
}

impl Answer {
    /// The code and the whole body.
    fn full(&self) -> Value {
        json!({"code": self.code, "body": self.body})
    }

    /// The code and what a client reads of a `Status`.
    fn status(&self) -> Value {
        let b = &self.body;
        let mut details = b["details"].clone();
        // The real server lists apply conflicts in Go map order: compare them sorted.
        if let Some(causes) = details.get_mut("causes").and_then(Value::as_array_mut) {
            causes.sort_by_key(Value::to_string);
        }
        json!({"code": self.code, "kind": b["kind"], "status": b["status"],
            "reason": b["reason"], "message": b["message"], "details": details})
    }

    /// The code and some fields of the body, by JSON pointer (`null`: absent).
    fn pick(&self, ptrs: &[&str]) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("code".into(), json!(self.code));
        for p in ptrs {
            m.insert(
                (*p).to_string(),
                self.body.pointer(p).cloned().unwrap_or(Value::Null),
            );
        }
        Value::Object(m)
    }

    fn rv(&self) -> String {
        self.body
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    }

    /// Names of the items of a list answer, sorted.
    fn names(&self) -> Value {
        let mut names: Vec<String> = self.body["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i.pointer("/metadata/name")?.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        json!({"code": self.code, "names": names})
    }

    /// managedFields without times, in the server's order.
    fn managers(&self) -> Value {
        let mf = self
            .body
            .pointer("/metadata/managedFields")
            .cloned()
            .unwrap_or(json!([]));
        json!({"code": self.code, "managedFields": mf})
    }
}

// === normalisation and diff ===

/// Keys whose values legitimately differ between two servers: masked as `"<key>"` when
/// present (absence stays visible).
const VOLATILE: &[&str] = &[
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "time",
    "lastUpdateTime",
    "lastTransitionTime",
    "lastHeartbeatTime",
    "lastProbeTime",
    "startTime",
    "startedAt",
    "clusterIP",
    "clusterIPs",
    "nodePort",
    "podIP",
    "podIPs",
    "hostIP",
    "hostIPs",
];

/// Masks RFC 3339 timestamps (`2025-01-02T03:04:05Z`) inside strings (conflict messages).
fn mask_times(s: &str) -> String {
    let b = s.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd:ddZ";
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        let fits = b.len() - i >= shape.len()
            && shape.iter().zip(&b[i..]).all(|(p, c)| match p {
                b'd' => c.is_ascii_digit(),
                _ => p == c,
            });
        if fits {
            out.push_str("<time>");
            i += shape.len();
        } else {
            let ch = s[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| {
                    let masked = if VOLATILE.contains(&k.as_str()) && !x.is_null() {
                        match x {
                            Value::Array(a) => json!(vec![format!("<{k}>"); a.len()]),
                            _ => json!(format!("<{k}>")),
                        }
                    } else {
                        normalize(x)
                    };
                    (k.clone(), masked)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        // The ServiceAccount admission plugin names the token volume at random.
        Value::String(s) if s.starts_with("kube-api-access-") => json!("kube-api-access-<random>"),
        Value::String(s) => Value::String(mask_times(s)),
        other => other.clone(),
    }
}

fn short(v: Option<&Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(v) => {
            let s = v.to_string();
            if s.chars().count() > 400 {
                format!("{}…", s.chars().take(400).collect::<String>())
            } else {
                s
            }
        }
    }
}

/// Path-by-path differences of two normalised values.
fn diff(path: &str, sim: Option<&Value>, real: Option<&Value>, out: &mut Vec<String>) {
    match (sim, real) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                diff(&format!("{path}/{k}"), a.get(k), b.get(k), out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}/{i}"), Some(x), Some(y), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!(
            "  {}: sim {} | real {}",
            if path.is_empty() { "/" } else { path },
            short(a),
            short(b)
        )),
    }
}

// === the differential driver ===

/// Both sides of one test, and the differences found so far.
struct Diff {
    test: &'static str,
    sim: Side,
    real: Side,
    _cluster: SimCluster,
    failures: Vec<String>,
    steps: usize,
}

impl Diff {
    /// A fresh simulator and a namespace `PREFIX-<random>` on both servers.
    async fn new(test: &'static str) -> Diff {
        let kube = real_kube::shared();
        let prefix: String = test
            .chars()
            .filter(char::is_ascii_lowercase)
            .take(12)
            .collect();
        let ns = kube.namespace(&format!("diff-{prefix}")).await;
        let cluster = SimCluster::start(SimConfig {
            rollout_delay: Duration::from_millis(200),
            ..SimConfig::default()
        })
        .await
        .expect("simulator starts");
        let sim_client = cluster.client();
        let ns_obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        kube::Api::<Namespace>::all(sim_client.clone())
            .create(&PostParams::default(), &ns_obj)
            .await
            .expect("namespace in the simulator");
        let side = |label, client| Side {
            label,
            client,
            ns: ns.clone(),
            vars: Arc::default(),
        };
        Diff {
            test,
            sim: side("sim", sim_client),
            real: side("real", kube.client().await),
            _cluster: cluster,
            failures: Vec::new(),
            steps: 0,
        }
    }

    fn ns(&self) -> String {
        self.sim.ns.clone()
    }

    fn compare(&mut self, step: &str, sim: &Value, real: &Value) {
        self.steps += 1;
        let (a, b) = (normalize(sim), normalize(real));
        let mut lines = Vec::new();
        diff("", Some(&a), Some(&b), &mut lines);
        if !lines.is_empty() {
            let whole = |v: &Value| {
                let s = v.to_string();
                match s.char_indices().nth(3000) {
                    Some((i, _)) => format!("{}…", &s[..i]),
                    None => s,
                }
            };
            self.failures.push(format!(
                "step {step:?} differs (sim | real):\n{}\n  whole sim:  {}\n  whole real: {}",
                lines.join("\n"),
                whole(&a),
                whole(&b)
            ));
        }
    }

    /// Runs `f` on both sides (concurrently) and compares what it observed.
    async fn step<F, Fut>(&mut self, step: &str, f: F)
    where
        F: Fn(Side) -> Fut,
        Fut: Future<Output = Value>,
    {
        let (a, b) = tokio::join!(f(self.sim.clone()), f(self.real.clone()));
        self.compare(step, &a, &b);
    }

    /// Like [`Diff::step`] for asynchronous outcomes (controllers, garbage collection):
    /// each side is observed until `done` holds for it (or [`DEADLINE`]), then compared.
    async fn settle<F, Fut, D>(&mut self, step: &str, done: D, f: F)
    where
        F: Fn(Side) -> Fut,
        Fut: Future<Output = Value>,
        D: Fn(&Value) -> bool,
    {
        let observe = |s: Side| {
            let (f, done) = (&f, &done);
            async move {
                let start = tokio::time::Instant::now();
                loop {
                    let v = f(s.clone()).await;
                    if done(&v) || start.elapsed() > DEADLINE {
                        return v;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let (a, b) = tokio::join!(observe(self.sim.clone()), observe(self.real.clone()));
        self.compare(step, &a, &b);
    }

    /// A step where the simulator knowingly differs ([`KNOWN_LIST`]): each side must
    /// observe exactly what is expected of it.
    async fn known<F, Fut>(&mut self, step: &str, sim_expected: Value, real_expected: Value, f: F)
    where
        F: Fn(Side) -> Fut,
        Fut: Future<Output = Value>,
    {
        self.steps += 1;
        let (a, b) = tokio::join!(f(self.sim.clone()), f(self.real.clone()));
        for (label, got, want) in [("sim", a, sim_expected), ("real", b, real_expected)] {
            let (got, want) = (normalize(&got), normalize(&want));
            if got != want {
                let mut lines = Vec::new();
                diff("", Some(&got), Some(&want), &mut lines);
                self.failures.push(format!(
                    "known difference {step:?} changed on the {label} side (got | expected; \
                     update {KNOWN_LIST} and this step):\n{}",
                    lines
                        .join("\n")
                        .replace(": sim ", ": ")
                        .replace(" | real ", " | ")
                ));
            }
        }
    }

    /// Fails the test with every difference found.
    fn finish(self) {
        assert!(self.steps > 0, "{}: no step compared", self.test);
        assert!(
            self.failures.is_empty(),
            "{}: {} of {} steps differ between the simulator and the real API server:\n\n{}",
            self.test,
            self.failures.len(),
            self.steps,
            self.failures.join("\n\n")
        );
    }
}

// === objects ===

fn deployment(name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [
                    {"name": "main", "image": "nginx:1.27",
                        "ports": [{"containerPort": 8080}],
                        "env": [{"name": "A", "value": "1"}]},
                ]}
            }
        }
    })
}

fn configmap(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

// === the tests ===

#[tokio::test]
async fn create_get_and_server_defaults() {
    let mut d = Diff::new("create_get_and_server_defaults").await;
    let dep = &json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [
                    {"name": "main", "image": "nginx:1.27", "ports": [{"containerPort": 8080}]},
                    {"name": "latest", "image": "registry.example/tools/busybox"},
                    {"name": "tagged-latest", "image": "busybox:latest"},
                    {"name": "digest", "image": "busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000"},
                ]}
            }
        }
    });
    d.step("create Deployment: defaults", |s| async move {
        s.create::<Deployment>(dep).await.pick(&[
            "/metadata/generation",
            "/spec/replicas",
            "/spec/strategy",
            "/spec/revisionHistoryLimit",
            "/spec/progressDeadlineSeconds",
            "/spec/template/spec/terminationGracePeriodSeconds",
            "/spec/template/spec/dnsPolicy",
            "/spec/template/spec/restartPolicy",
            "/spec/template/spec/schedulerName",
            "/spec/template/spec/securityContext",
            "/spec/template/spec/containers/0/imagePullPolicy",
            "/spec/template/spec/containers/1/imagePullPolicy",
            "/spec/template/spec/containers/2/imagePullPolicy",
            "/spec/template/spec/containers/3/imagePullPolicy",
            "/spec/template/spec/containers/0/terminationMessagePath",
            "/spec/template/spec/containers/0/terminationMessagePolicy",
            "/spec/template/spec/containers/0/ports/0/protocol",
            "/spec/template/spec/containers/0/resources",
            "/status",
        ])
    })
    .await;
    d.step("create Deployment: the whole answer", |s| async move {
        let mut dep = dep.clone();
        dep["metadata"]["name"] = json!("web2");
        s.create::<Deployment>(&dep).await.full()
    })
    .await;
    d.step("get Deployment: the whole object", |s| async move {
        // Metadata and spec only: the controllers write status, annotations and their
        // managedFields entries at their own pace (KNOWN_LIST: controllers).
        let a = s.get::<Deployment>("web").await;
        let mut spec = a.body.clone();
        spec.as_object_mut().unwrap().remove("status");
        let meta = spec["metadata"].as_object_mut().unwrap();
        meta.remove("managedFields");
        meta.remove("annotations");
        json!({"code": a.code, "body": spec})
    })
    .await;

    let svc = &json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 80},
            {"name": "named", "port": 81, "targetPort": "http"},
        ]}
    });
    d.step("create Service: the whole answer", |s| async move {
        s.create::<Service>(svc).await.full()
    })
    .await;
    let np = &json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "np"},
        "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80}]}
    });
    d.step(
        "create NodePort Service: the whole answer",
        |s| async move { s.create::<Service>(np).await.full() },
    )
    .await;
    let headless = &json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "headless"},
        "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 80}]}
    });
    d.step(
        "create headless Service: the whole answer",
        |s| async move { s.create::<Service>(headless).await.full() },
    )
    .await;

    let cm = &configmap("plain", json!({"a": "b"}));
    d.step("create ConfigMap: the whole answer", |s| async move {
        s.create::<ConfigMap>(cm).await.full()
    })
    .await;
    d.step("get ConfigMap: the whole answer", |s| async move {
        s.get::<ConfigMap>("plain").await.full()
    })
    .await;
    d.step(
        "create ConfigMap again: 409 AlreadyExists",
        |s| async move { s.create::<ConfigMap>(cm).await.status() },
    )
    .await;
    d.step("get a missing ConfigMap: 404 NotFound", |s| async move {
        s.get::<ConfigMap>("absent").await.status()
    })
    .await;
    d.step("get a missing Deployment: 404 NotFound", |s| async move {
        s.get::<Deployment>("absent").await.status()
    })
    .await;
    d.step("patch a missing ConfigMap: 404 NotFound", |s| async move {
        s.patch::<ConfigMap>(
            "absent",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "w"}})),
        )
        .await
        .status()
    })
    .await;
    d.step("delete a missing ConfigMap: 404 NotFound", |s| async move {
        s.delete::<ConfigMap>("absent", &DeleteParams::default())
            .await
            .status()
    })
    .await;

    let missing = &format!("{}-missing", d.ns());
    d.step("get in a missing namespace: 404 NotFound", |s| async move {
        s.get_in::<ConfigMap>(missing, "x").await.status()
    })
    .await;
    d.step(
        "create in a missing namespace: 404 NotFound",
        |s| async move {
            s.create_in::<ConfigMap>(missing, &configmap("x", json!({})))
                .await
                .status()
        },
    )
    .await;
    d.step(
        "list in a missing namespace: an empty list",
        |s| async move {
            let a = s
                .send(
                    url::<ConfigMap>(missing)
                        .list(&ListParams::default())
                        .unwrap(),
                )
                .await;
            json!({"code": a.code, "kind": a.body["kind"], "items": a.body["items"]})
        },
    )
    .await;
    d.step("get a missing namespace: 404 NotFound", |s| async move {
        let req = kube::core::Request::new(Namespace::url_path(&(), None))
            .get(missing, &Default::default())
            .unwrap();
        s.send(req).await.status()
    })
    .await;

    // Replace with the current resourceVersion, then with the stale one.
    d.step(
        "replace ConfigMap with its resourceVersion",
        |s| async move {
            let cur = s.get::<ConfigMap>("plain").await;
            s.set("plain-rv", cur.rv());
            let mut next = cur.body.clone();
            next["data"]["k"] = json!("w");
            s.replace::<ConfigMap>("plain", &next).await.full()
        },
    )
    .await;
    d.step(
        "replace ConfigMap with a stale resourceVersion: 409 Conflict",
        |s| async move {
            let mut stale = configmap("plain", json!({"a": "b"}));
            stale["metadata"]["resourceVersion"] = json!(s.var("plain-rv"));
            stale["data"]["k"] = json!("x");
            s.replace::<ConfigMap>("plain", &stale).await.status()
        },
    )
    .await;
    d.step(
        "replace a missing ConfigMap: 404 NotFound",
        |s| async move {
            s.replace::<ConfigMap>("absent", &configmap("absent", json!({})))
                .await
                .status()
        },
    )
    .await;
    d.step("delete ConfigMap: the answer", |s| async move {
        s.delete::<ConfigMap>("plain", &DeleteParams::default())
            .await
            .full()
    })
    .await;
    // On a node the fake node does not run, so the real pod stays as created.
    let pod = &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"},
        "spec": {"nodeName": "elsewhere", "containers": [{"name": "main", "image": "nginx:1.27"}]}});
    d.step("create Pod: the whole answer", |s| async move {
        s.create::<Pod>(pod).await.full()
    })
    .await;
    d.step("delete Pod: the answer", |s| async move {
        let a = s.delete::<Pod>("bare", &DeleteParams::default()).await;
        a.pick(&[
            "/kind",
            "/metadata/deletionTimestamp",
            "/metadata/deletionGracePeriodSeconds",
        ])
    })
    .await;
    // Known: no kubelet in the simulator, so a pod on a node is gone at once instead of
    // Terminating for its grace period.
    d.known(
        "get Pod after its delete",
        json!({"code": 404, "deleting": false}),
        json!({"code": 200, "deleting": true}),
        |s| async move {
            let a = s.get::<Pod>("bare").await;
            json!({"code": a.code, "deleting": a.body.pointer("/metadata/deletionTimestamp").is_some()})
        },
    )
    .await;
    let ns_name = &format!("{}-second", d.ns());
    d.step("create Namespace: the whole answer", |s| async move {
        let req = kube::core::Request::new(Namespace::url_path(&(), None))
            .create(
                &PostParams::default(),
                to_vec(&json!({"metadata": {"name": ns_name}})),
            )
            .unwrap();
        s.send(req).await.full()
    })
    .await;
    d.step("delete Namespace: the answer", |s| async move {
        let req = kube::core::Request::new(Namespace::url_path(&(), None))
            .delete(ns_name, &DeleteParams::default())
            .unwrap();
        s.send(req).await.full()
    })
    .await;
    d.finish();
}

#[tokio::test]
async fn invalid_objects_answer_422() {
    let mut d = Diff::new("invalid_objects_answer_422").await;
    d.step("ConfigMap with an invalid name", |s| async move {
        s.create::<ConfigMap>(&configmap("Bad_Name", json!({})))
            .await
            .status()
    })
    .await;
    d.step("Service with an invalid name", |s| async move {
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web.dot"},
            "spec": {"ports": [{"port": 80}]}});
        s.create::<Service>(&svc).await.status()
    })
    .await;
    d.step("Service with an invalid label name", |s| async move {
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "Bad_Name"},
            "spec": {"ports": [{"port": 80}]}});
        s.create::<Service>(&svc).await.status()
    })
    .await;
    d.step("Namespace with an invalid name", |s| async move {
        let req = kube::core::Request::new(Namespace::url_path(&(), None))
            .create(
                &PostParams::default(),
                to_vec(&json!({"metadata": {"name": "a.b"}})),
            )
            .unwrap();
        s.send(req).await.status()
    })
    .await;
    d.step("ConfigMap with a name of 254 characters", |s| async move {
        s.create::<ConfigMap>(&configmap(&"a".repeat(254), json!({})))
            .await
            .status()
    })
    .await;
    d.step(
        "Service with a DNS-1035-invalid name (digit first)",
        |s| async move {
            let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1web"},
            "spec": {"ports": [{"port": 80}]}});
            s.create::<Service>(&svc).await.status()
        },
    )
    .await;
    d.step("Deployment with an invalid name", |s| async move {
        s.create::<Deployment>(&deployment("Web", 1)).await.status()
    })
    .await;
    d.step("ConfigMap without a name", |s| async move {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}});
        s.create::<ConfigMap>(&cm).await.status()
    })
    .await;
    d.step(
        "Deployment whose selector does not match the template",
        |s| async move {
            let mut dep = deployment("mismatch", 1);
            dep["spec"]["selector"]["matchLabels"]["app"] = json!("other");
            s.create::<Deployment>(&dep).await.status()
        },
    )
    .await;
    d.step(
        "Deployment with a container without image",
        |s| async move {
            let mut dep = deployment("noimage", 1);
            dep["spec"]["template"]["spec"]["containers"][0]
                .as_object_mut()
                .unwrap()
                .remove("image");
            s.create::<Deployment>(&dep).await.status()
        },
    )
    .await;
    d.step("Deployment with negative replicas", |s| async move {
        s.create::<Deployment>(&deployment("negative", -1))
            .await
            .status()
    })
    .await;
    d.step("Service with an out-of-range port", |s| async move {
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bigport"},
            "spec": {"ports": [{"port": 70000}]}});
        s.create::<Service>(&svc).await.status()
    })
    .await;
    d.step("a type error is 400 BadRequest", |s| async move {
        let mut dep = deployment("typed", 1);
        dep["spec"]["replicas"] = json!("two");
        let a = s.create::<Deployment>(&dep).await;
        json!({"code": a.code, "reason": a.body["reason"], "kind": a.body["kind"]})
    })
    .await;
    d.finish();
}

#[tokio::test]
async fn list_with_label_and_field_selectors() {
    let mut d = Diff::new("list_with_label_and_field_selectors").await;
    let objects = [
        ("a", json!({"set": "s", "app": "web", "tier": "front"})),
        ("b", json!({"set": "s", "app": "web", "tier": "back"})),
        ("c", json!({"set": "s", "app": "api"})),
        (
            "d",
            json!({"set": "s", "app": "api", "tier": "front", "canary": "true"}),
        ),
        ("e", json!({"set": "s"})),
    ];
    let objects = &objects;
    d.step("create five ConfigMaps", |s| async move {
        let mut codes = Vec::new();
        for (name, labels) in objects {
            codes.push(
                s.create::<ConfigMap>(&configmap(name, labels.clone()))
                    .await
                    .code,
            );
        }
        json!(codes)
    })
    .await;
    // Every selector also requires `set=s`: the real namespace holds kube-root-ca.crt (a
    // known difference, asserted below).
    for sel in [
        "set=s",
        "set=s,app=web",
        "set=s,app==web",
        "set=s,app!=web",
        "set=s,tier in (front,back)",
        "set=s,tier in (front)",
        "set=s,tier notin (front)",
        "set=s,!tier",
        "set=s,tier",
        "set=s,canary",
        "set=s,app=api,tier=front",
        "set=s,app in (web),tier!=back",
        "set=s,app notin (web,api)",
        "set = s, app in ( api )",
    ] {
        d.step(&format!("list labelSelector={sel:?}"), |s| async move {
            s.list::<ConfigMap>(&ListParams::default().labels(sel))
                .await
                .names()
        })
        .await;
    }
    for fields in [
        "metadata.name=c",
        "metadata.name!=c",
        "metadata.name==d",
        &format!("metadata.namespace={}", d.ns()),
    ] {
        let fields = &fields.to_string();
        d.step(
            &format!("list fieldSelector={fields:?} (with set=s)"),
            |s| async move {
                s.list::<ConfigMap>(&ListParams::default().labels("set=s").fields(fields))
                    .await
                    .names()
            },
        )
        .await;
    }
    d.step("list with label and field selector", |s| async move {
        s.list::<ConfigMap>(
            &ListParams::default()
                .labels("app=web")
                .fields("metadata.name=b"),
        )
        .await
        .names()
    })
    .await;
    d.step("list answer: kind, apiVersion, metadata", |s| async move {
        let a = s
            .list::<ConfigMap>(&ListParams::default().labels("set=s,app=api"))
            .await;
        json!({"code": a.code, "kind": a.body["kind"], "apiVersion": a.body["apiVersion"],
        "metadata": a.body["metadata"], "item kinds": a.body["items"].as_array().map(|i| {
            i.iter().map(|o| json!([o.get("kind"), o.get("apiVersion")])).collect::<Vec<_>>()
        })})
    })
    .await;
    d.step("list with an unknown field selector: 400", |s| async move {
        s.list::<ConfigMap>(&ListParams::default().fields("data.k=v"))
            .await
            .status()
    })
    .await;
    d.step(
        "list with a malformed label selector: 400",
        |s| async move {
            let a = s
                .list::<ConfigMap>(&ListParams::default().labels("app in web"))
                .await;
            json!({"code": a.code, "reason": a.body["reason"]})
        },
    )
    .await;
    // Known: the real namespace controller publishes kube-root-ca.crt in every namespace.
    d.known(
        "list ConfigMaps without selector: kube-root-ca.crt",
        json!({"code": 200, "names": ["a", "b", "c", "d", "e"]}),
        json!({"code": 200, "names": ["a", "b", "c", "d", "e", "kube-root-ca.crt"]}),
        |s| async move { s.list::<ConfigMap>(&ListParams::default()).await.names() },
    )
    .await;
    d.finish();
}

#[tokio::test]
async fn server_side_apply_two_managers_and_conflicts() {
    let mut d = Diff::new("server_side_apply_two_managers_and_conflicts").await;
    let cm = |data: Value, labels: Value| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "ssa", "labels": labels}, "data": data})
    };
    let alice = &cm(json!({"a": "1", "b": "2"}), json!({"owner": "alice"}));
    d.step(
        "apply by alice creates: 201 and managedFields",
        |s| async move {
            let a = s
                .patch::<ConfigMap>(
                    "ssa",
                    &PatchParams::apply("alice"),
                    &Patch::Apply(alice.clone()),
                )
                .await;
            json!({"answer": a.full()})
        },
    )
    .await;
    d.step(
        "apply by alice again changes nothing (same resourceVersion)",
        |s| async move {
            let before = s.get::<ConfigMap>("ssa").await.rv();
            let a = s
                .patch::<ConfigMap>(
                    "ssa",
                    &PatchParams::apply("alice"),
                    &Patch::Apply(alice.clone()),
                )
                .await;
            json!({"code": a.code, "same rv": a.rv() == before})
        },
    )
    .await;
    let bob_steals = &cm(json!({"a": "3"}), json!({}));
    d.step(
        "apply by bob of alice's field: 409 Conflict",
        |s| async move {
            s.patch::<ConfigMap>(
                "ssa",
                &PatchParams::apply("bob"),
                &Patch::Apply(bob_steals.clone()),
            )
            .await
            .status()
        },
    )
    .await;
    let bob_shares = &cm(json!({"a": "1", "c": "4"}), json!({"bob": "yes"}));
    d.step(
        "apply by bob with alice's value: shared, no conflict",
        |s| async move {
            s.patch::<ConfigMap>(
                "ssa",
                &PatchParams::apply("bob"),
                &Patch::Apply(bob_shares.clone()),
            )
            .await
            .managers()
        },
    )
    .await;
    d.step("apply by bob forced: 200, bob owns the field", |s| async move {
        let a = s
            .patch::<ConfigMap>(
                "ssa",
                &PatchParams::apply("bob").force(),
                &Patch::Apply(bob_steals.clone()),
            )
            .await;
        json!({"managed": a.managers(), "data": a.body["data"], "labels": a.body["metadata"]["labels"]})
    })
    .await;
    d.step(
        "merge patch by manager edit: an Update entry",
        |s| async move {
            let pp = PatchParams {
                field_manager: Some("edit".into()),
                ..Default::default()
            };
            let a = s
                .patch::<ConfigMap>("ssa", &pp, &Patch::Merge(json!({"data": {"b": "20"}})))
                .await;
            json!({"managed": a.managers(), "data": a.body["data"]})
        },
    )
    .await;
    d.step(
        "apply by alice of edit's field: 409 Conflict naming an Update manager",
        |s| async move {
            s.patch::<ConfigMap>(
                "ssa",
                &PatchParams::apply("alice"),
                &Patch::Apply(alice.clone()),
            )
            .await
            .status()
        },
    )
    .await;
    d.step("apply by alice dropping a field she alone owns removes it", |s| async move {
        let mine = cm(json!({"b": "20"}), json!({"owner": "alice"}));
        let a = s
            .patch::<ConfigMap>("ssa", &PatchParams::apply("alice"), &Patch::Apply(mine))
            .await;
        json!({"managed": a.managers(), "data": a.body["data"], "labels": a.body["metadata"]["labels"]})
    })
    .await;
    d.step("apply without fieldManager: 4xx", |s| async move {
        let req = url::<ConfigMap>(&s.ns)
            .patch(
                "ssa",
                &PatchParams::apply("x"),
                &Patch::Apply(alice.clone()),
            )
            .unwrap();
        // The same request without the fieldManager parameter.
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        parts.uri = path.parse().unwrap();
        s.send(http::Request::from_parts(parts, body))
            .await
            .status()
    })
    .await;

    // A Deployment: containers are a list keyed by name, so two managers' containers merge.
    let dep = &deployment("ssa-dep", 1);
    d.step("apply Deployment by alice", |s| async move {
        let a = s
            .patch::<Deployment>(
                "ssa-dep",
                &PatchParams::apply("alice"),
                &Patch::Apply(dep.clone()),
            )
            .await;
        json!({"code": a.code, "managed": a.body["metadata"]["managedFields"]})
    })
    .await;
    d.step(
        "apply Deployment by bob adds a container by name",
        |s| async move {
            let side = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "ssa-dep"},
            "spec": {"selector": {"matchLabels": {"app": "ssa-dep"}}, "template": {
                "metadata": {"labels": {"app": "ssa-dep"}},
                "spec": {"containers": [{"name": "side", "image": "busybox:1"}]}}}});
            let a = s
                .patch::<Deployment>("ssa-dep", &PatchParams::apply("bob"), &Patch::Apply(side))
                .await;
            // Only the appliers' entries: the controllers' writes (status, the revision
            // annotation) come at their own pace and leave no entry in the simulator
            // (KNOWN_LIST: controllers).
            let appliers: Vec<Value> = a.body["metadata"]["managedFields"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["operation"] == "Apply")
                .cloned()
                .collect();
            json!({"code": a.code, "containers": a.body["spec"]["template"]["spec"]["containers"],
            "appliers": appliers})
        },
    )
    .await;
    d.step(
        "apply Deployment by bob changing replicas: 409 Conflict",
        |s| async move {
            let mut dep = dep.clone();
            dep["spec"]["replicas"] = json!(3);
            s.patch::<Deployment>("ssa-dep", &PatchParams::apply("bob"), &Patch::Apply(dep))
                .await
                .status()
        },
    )
    .await;
    d.step(
        "apply Deployment by alice dropping a probe and resources removes them whole",
        |s| async move {
            let mut with = dep.clone();
            let main = &mut with["spec"]["template"]["spec"]["containers"][0];
            main["startupProbe"] =
                json!({"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 10});
            main["resources"] = json!({"limits": {"example.com/gpu": "1"},
                "requests": {"example.com/gpu": "1"}});
            let first = s
                .patch::<Deployment>("ssa-dep", &PatchParams::apply("alice"), &Patch::Apply(with))
                .await;
            let a = s
                .patch::<Deployment>(
                    "ssa-dep",
                    &PatchParams::apply("alice"),
                    &Patch::Apply(dep.clone()),
                )
                .await;
            let main = a.body["spec"]["template"]["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == "main")
                .cloned()
                .unwrap_or_default();
            json!({"codes": [first.code, a.code], "startupProbe": main.get("startupProbe"),
                "resources": main.get("resources")})
        },
    )
    .await;
    d.finish();
}

#[tokio::test]
async fn strategic_merge_json_and_merge_patch() {
    let mut d = Diff::new("strategic_merge_json_and_merge_patch").await;
    let containers = |a: &Answer| {
        json!({"code": a.code,
            "generation": a.body["metadata"]["generation"],
            "containers": a.body.pointer("/spec/template/spec/containers")})
    };
    let containers = &containers;
    d.step("create Deployment", |s| async move {
        let a = s.create::<Deployment>(&deployment("p", 1)).await;
        containers(&a)
    })
    .await;
    d.step(
        "strategic merge: containers merge by name, env by name",
        |s| async move {
            let p = json!({"spec": {"template": {"spec": {"containers": [
                {"name": "main", "image": "nginx:2", "env": [{"name": "B", "value": "2"}]},
                {"name": "side", "image": "busybox:1"}
            ]}}}});
            containers(
                &s.patch::<Deployment>("p", &PatchParams::default(), &Patch::Strategic(p))
                    .await,
            )
        },
    )
    .await;
    d.step(
        "strategic merge: ports merge by containerPort",
        |s| async move {
            let p = json!({"spec": {"template": {"spec": {"containers": [
                {"name": "main", "ports": [{"containerPort": 9090, "name": "metrics"}]}
            ]}}}});
            containers(
                &s.patch::<Deployment>("p", &PatchParams::default(), &Patch::Strategic(p))
                    .await,
            )
        },
    )
    .await;
    d.step(
        "strategic merge: $patch delete of a container",
        |s| async move {
            let p = json!({"spec": {"template": {"spec": {"containers": [
                {"name": "side", "$patch": "delete"}
            ]}}}});
            containers(
                &s.patch::<Deployment>("p", &PatchParams::default(), &Patch::Strategic(p))
                    .await,
            )
        },
    )
    .await;
    d.step(
        "strategic merge: $setElementOrder and null removes a map key",
        |s| async move {
            let p = json!({"metadata": {"labels": {"app": null, "x": "1"}},
            "spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "main"}],
                "containers": [{"name": "main", "env": [{"name": "A", "$patch": "delete"}]}]}}}});
            let a = s
                .patch::<Deployment>("p", &PatchParams::default(), &Patch::Strategic(p))
                .await;
            json!({"c": containers(&a), "labels": a.body["metadata"]["labels"]})
        },
    )
    .await;
    // Known: the real server answers an unknown `$patch` directive with a 500 without
    // reason; the simulator answers 400 BadRequest naming the directive.
    d.known(
        "strategic merge: an unknown $patch directive",
        json!({"code": 400, "reason": "BadRequest"}),
        json!({"code": 500, "reason": null}),
        |s| async move {
            let p = json!({"spec": {"template": {"spec": {"containers": [
                {"name": "main", "$patch": "frobnicate"}
            ]}}}});
            let a = s
                .patch::<Deployment>("p", &PatchParams::default(), &Patch::Strategic(p))
                .await;
            json!({"code": a.code, "reason": a.body["reason"]})
        },
    )
    .await;
    let jp =
        |v: Value| Patch::<Value>::Json(serde_json::from_value::<json_patch::Patch>(v).unwrap());
    let jp = &jp;
    d.step("JSON patch: test, replace, add", |s| async move {
        let p = jp(json!([
            {"op": "test", "path": "/spec/replicas", "value": 1},
            {"op": "replace", "path": "/spec/replicas", "value": 2},
            {"op": "add", "path": "/metadata/labels/added", "value": "yes"},
            {"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": {"name": "C", "value": "3"}},
        ]));
        let req = url::<Deployment>(&s.ns).patch("p", &PatchParams::default(), &p).unwrap();
        let a = s.send(req).await;
        json!({"c": containers(&a), "replicas": a.body["spec"]["replicas"],
            "labels": a.body["metadata"]["labels"]})
    })
    .await;
    d.step("JSON patch: a failing test op", |s| async move {
        let p = jp(json!([
            {"op": "test", "path": "/spec/replicas", "value": 99},
            {"op": "replace", "path": "/spec/replicas", "value": 5},
        ]));
        let req = url::<Deployment>(&s.ns)
            .patch("p", &PatchParams::default(), &p)
            .unwrap();
        s.send(req).await.status()
    })
    .await;
    d.step("JSON patch: remove of a missing path", |s| async move {
        let p = jp(json!([{"op": "remove", "path": "/metadata/labels/nope"}]));
        let req = url::<Deployment>(&s.ns)
            .patch("p", &PatchParams::default(), &p)
            .unwrap();
        s.send(req).await.status()
    })
    .await;
    d.step(
        "JSON patch: nothing changed after the failures",
        |s| async move {
            s.get::<Deployment>("p")
                .await
                .pick(&["/spec/replicas", "/metadata/generation"])
        },
    )
    .await;
    d.step(
        "merge patch: labels (null removes), replicas",
        |s| async move {
            let p =
                json!({"metadata": {"labels": {"added": null, "m": "1"}}, "spec": {"replicas": 3}});
            let a = s
                .patch::<Deployment>("p", &PatchParams::default(), &Patch::Merge(p))
                .await;
            a.pick(&["/metadata/labels", "/spec/replicas", "/metadata/generation"])
        },
    )
    .await;
    d.step(
        "merge patch: a list is replaced whole (and defaulted)",
        |s| async move {
            let p = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "only", "image": "nginx:3"}]}}}});
            containers(
                &s.patch::<Deployment>("p", &PatchParams::default(), &Patch::Merge(p))
                    .await,
            )
        },
    )
    .await;
    d.step(
        "merge patch: metadata only keeps the generation",
        |s| async move {
            let p = json!({"metadata": {"annotations": {"note": "x"}}});
            s.patch::<Deployment>("p", &PatchParams::default(), &Patch::Merge(p))
                .await
                .pick(&["/metadata/generation"])
        },
    )
    .await;
    d.step("merge patch changing the name: 4xx", |s| async move {
        let p = json!({"metadata": {"name": "renamed"}});
        s.patch::<Deployment>("p", &PatchParams::default(), &Patch::Merge(p))
            .await
            .status()
    })
    .await;
    d.finish();
}

/// `(type, name, data.k, watch label)` of watch events.
fn summary(events: &[Value]) -> Value {
    json!(
        events
            .iter()
            .map(|e| json!([
                e["type"],
                e["object"]["metadata"]["name"],
                e["object"]["data"]["k"],
                e["object"]["metadata"]["labels"]["watch"]
            ]))
            .collect::<Vec<_>>()
    )
}

#[tokio::test]
async fn watch_from_a_resource_version() {
    let mut d = Diff::new("watch_from_a_resource_version").await;
    d.step("writes after a list's resourceVersion", |s| async move {
        s.create::<ConfigMap>(&configmap("before", json!({"watch": "yes"})))
            .await;
        let list = s
            .list::<ConfigMap>(&ListParams::default().labels("watch"))
            .await;
        let rv = list.rv();
        s.set("rv", rv.clone());
        let mut rvs = Vec::new();
        let mut keep = |a: Answer| {
            rvs.push(a.rv());
            a.code
        };
        let codes = vec![
            keep(
                s.create::<ConfigMap>(&configmap("w1", json!({"watch": "yes"})))
                    .await,
            ),
            keep(
                s.patch::<ConfigMap>(
                    "w1",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"k": "2"}})),
                )
                .await,
            ),
            keep(
                s.create::<ConfigMap>(&configmap("w2", json!({"watch": "yes"})))
                    .await,
            ),
            // w1 leaves the selection.
            keep(
                s.patch::<ConfigMap>(
                    "w1",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"watch": "no"}}})),
                )
                .await,
            ),
            keep(s.delete::<ConfigMap>("w2", &DeleteParams::default()).await),
            // w1 comes back.
            keep(
                s.patch::<ConfigMap>(
                    "w1",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"watch": "yes"}}})),
                )
                .await,
            ),
        ];
        s.set("rvs", rvs.join(","));
        json!({"codes": codes, "list kind": list.body["kind"]})
    })
    .await;
    d.step(
        "watch from that resourceVersion: every event in order",
        |s| async move {
            let events = s
                .watch::<ConfigMap>(&WatchParams::default().timeout(3), &s.var("rv"), 6)
                .await;
            // The resourceVersion of each event is the one the write answered with.
            let rvs: Vec<String> = s.var("rvs").split(',').map(String::from).collect();
            let event_rvs: Vec<String> = events
                .iter()
                .map(|e| {
                    e["object"]["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or("")
                        .to_string()
                })
                .collect();
            json!({"events": summary(&events), "rvs are the writes'": event_rvs == rvs})
        },
    )
    .await;
    d.step(
        "watch with a label selector: objects enter and leave the selection",
        |s| async move {
            let events = s
                .watch::<ConfigMap>(
                    &WatchParams::default().labels("watch=yes").timeout(3),
                    &s.var("rv"),
                    6,
                )
                .await;
            summary(&events)
        },
    )
    .await;
    d.step("watch with a field selector", |s| async move {
        let events = s
            .watch::<ConfigMap>(
                &WatchParams::default().fields("metadata.name=w2").timeout(3),
                &s.var("rv"),
                2,
            )
            .await;
        summary(&events)
    })
    .await;
    d.step(
        "watch without resourceVersion: current objects as ADDED",
        |s| async move {
            let mut events = s
                .watch::<ConfigMap>(&WatchParams::default().labels("watch").timeout(2), "", 10)
                .await;
            events.sort_by_key(|e| e["object"]["metadata"]["name"].to_string());
            summary(&events)
        },
    )
    .await;
    d.step(
        "watch from a resourceVersion the server has not reached (a cluster reset): it waits, silently",
        |s| async move {
            let current: u64 = s
                .list::<ConfigMap>(&ListParams::default())
                .await
                .rv()
                .parse()
                .unwrap();
            let ahead = (current + 1_000_000).to_string();
            let events = s
                .watch::<ConfigMap>(&WatchParams::default().timeout(3), &ahead, 1)
                .await;
            summary(&events)
        },
    )
    .await;
    d.step("live watch: create, modify, delete", |s| async move {
        let rv = s
            .list::<ConfigMap>(&ListParams::default().labels("live"))
            .await
            .rv();
        let watcher = {
            let s = s.clone();
            async move {
                s.watch::<ConfigMap>(&WatchParams::default().labels("live").timeout(5), &rv, 3)
                    .await
            }
        };
        let writer = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            s.create::<ConfigMap>(&configmap("l1", json!({"live": "1"})))
                .await;
            s.patch::<ConfigMap>(
                "l1",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"k": "3"}})),
            )
            .await;
            s.delete::<ConfigMap>("l1", &DeleteParams::default()).await;
        };
        let (events, ()) = tokio::join!(watcher, writer);
        summary(&events)
    })
    .await;
    d.finish();
}

#[tokio::test]
async fn resource_versions() {
    let mut d = Diff::new("resource_versions").await;
    // Only what is guaranteed: a write that changes the object changes its
    // resourceVersion, one that changes nothing keeps it, a read answers the stored one. (That
    // they parse as increasing integers is true of both but promised by neither.)
    d.step("resourceVersion across writes", |s| async move {
        let c = s.create::<ConfigMap>(&configmap("rv", json!({}))).await.rv();
        let p = |v: Value| Patch::Merge(v);
        let changed = s
            .patch::<ConfigMap>("rv", &PatchParams::default(), &p(json!({"data": {"k": "2"}})))
            .await
            .rv();
        let same = s
            .patch::<ConfigMap>("rv", &PatchParams::default(), &p(json!({"data": {"k": "2"}})))
            .await
            .rv();
        let got = s.get::<ConfigMap>("rv").await.rv();
        let list = s.list::<ConfigMap>(&ListParams::default()).await.rv();
        let other = s.create::<ConfigMap>(&configmap("rv2", json!({}))).await.rv();
        let got_after = s.get::<ConfigMap>("rv").await.rv();
        json!({
            "change changes it": c != changed,
            "no-op keeps it": changed == same,
            "get answers the last write's": got == changed,
            "a list has one": !list.is_empty(),
            "another object's write changes the list's, not this object's": other != changed && got_after == changed,
        })
    })
    .await;
    d.finish();
}

/// What remains of Deployment `gc`: the Deployment (its status once it is there), its
/// ReplicaSets and pods (owners' kinds, deletion state, counts and status). The
/// ReplicaSet's name holds the pod-template-hash, which differs: it reads `<rs>`.
async fn remains(s: Side) -> Value {
    let dep = s.get::<Deployment>("gc").await;
    let owners = |o: &Value| {
        json!(
            o.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .map(|r| r.iter().map(|r| r["kind"].clone()).collect::<Vec<_>>())
                .unwrap_or_default()
        )
    };
    let rs = s
        .list::<ReplicaSet>(&ListParams::default().labels("app=gc"))
        .await;
    let pods = s.list::<Pod>(&ListParams::default().labels("app=gc")).await;
    let items = |a: &Answer, fields: &dyn Fn(&Value) -> Value| {
        a.body["items"]
            .as_array()
            .map(|i| {
                i.iter()
                    .map(|o| {
                        json!({"owners": owners(o),
                            "deleting": o.pointer("/metadata/deletionTimestamp").is_some(),
                            "fields": fields(o)})
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let rs_fields = |o: &Value| {
        let keys = |v: &Value| json!(v.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()));
        json!({"labels": keys(&o["metadata"]["labels"]),
            "annotations": o["metadata"]["annotations"],
            "selector keys": keys(&o["spec"]["selector"]["matchLabels"]),
            "replicas": o["spec"]["replicas"], "status": o["status"],
            "generation": o["metadata"]["generation"]})
    };
    let pod_fields = |o: &Value| json!({"phase": o["status"]["phase"]});
    let dep_view = if dep.code == 200 {
        json!({"code": dep.code, "finalizers": dep.body["metadata"]["finalizers"],
            "deleting": dep.body.pointer("/metadata/deletionTimestamp").is_some(),
            "revision": dep.body["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
            "status": dep.body["status"]})
    } else {
        json!({"code": dep.code})
    };
    let view = json!({
        "deployment": dep_view,
        "replicasets": {"code": rs.code, "items": items(&rs, &rs_fields)},
        "pods": {"code": pods.code, "items": items(&pods, &pod_fields)},
    });
    // Mask the ReplicaSet names (NAME-HASH) wherever they appear.
    let mut text = view.to_string();
    for item in rs.body["items"].as_array().into_iter().flatten() {
        if let Some(n) = item.pointer("/metadata/name").and_then(Value::as_str) {
            text = text.replace(n, "<rs>");
        }
    }
    serde_json::from_str(&text).unwrap()
}

fn count(v: &Value, what: &str) -> usize {
    v[what]["items"].as_array().map_or(0, Vec::len)
}

async fn delete_with(test: &'static str, policy: PropagationPolicy) {
    let mut d = Diff::new(test).await;
    d.step("create Deployment with two replicas", |s| async move {
        s.create::<Deployment>(&deployment("gc", 2))
            .await
            .code
            .into()
    })
    .await;
    d.settle(
        "its ReplicaSet and pods",
        |v| {
            count(v, "pods") == 2
                && count(v, "replicasets") == 1
                && v["deployment"]["status"]["availableReplicas"] == 2
                && v["pods"]["items"]
                    .as_array()
                    .is_some_and(|p| p.iter().all(|p| p["fields"]["phase"] == "Running"))
        },
        remains,
    )
    .await;
    let dp = &DeleteParams {
        propagation_policy: Some(policy.clone()),
        ..Default::default()
    };
    d.step(&format!("DELETE with propagationPolicy {policy:?}: the answer"), |s| async move {
        let a = s.delete::<Deployment>("gc", dp).await;
        let b = &a.body;
        if b["kind"] == "Status" {
            json!({"code": a.code, "kind": b["kind"], "status": b["status"], "details": b["details"]})
        } else {
            // The object marked for deletion (its status is the controller's business).
            json!({"code": a.code, "kind": b["kind"], "finalizers": b["metadata"]["finalizers"],
                "deleting": b.pointer("/metadata/deletionTimestamp").is_some()})
        }
    })
    .await;
    let done = move |v: &Value| {
        v["deployment"]["code"] == 404
            && match &policy {
                PropagationPolicy::Orphan => {
                    count(v, "replicasets") == 1
                        && v["replicasets"]["items"][0]["owners"] == json!([])
                }
                _ => count(v, "replicasets") == 0 && count(v, "pods") == 0,
            }
    };
    d.settle("what remains", done, remains).await;
    d.finish();
}

#[tokio::test]
async fn delete_background() {
    delete_with("delete_background", PropagationPolicy::Background).await;
}

#[tokio::test]
async fn delete_foreground() {
    delete_with("delete_foreground", PropagationPolicy::Foreground).await;
}

#[tokio::test]
async fn delete_orphan() {
    delete_with("delete_orphan", PropagationPolicy::Orphan).await;
}

/// The entries of `managers` in an answer's managedFields: manager, operation and whether
/// it owns `spec.replicas` (the controllers' own entries come at their pace; KNOWN_LIST).
fn replica_owners(a: &Answer, managers: &[&str]) -> Value {
    let entries: Vec<Value> = a.body["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| managers.iter().any(|m| e["manager"] == *m))
        .map(|e| {
            json!({"manager": e["manager"], "operation": e["operation"],
                "replicas": e["fieldsV1"]["f:spec"].get("f:replicas").is_some()})
        })
        .collect();
    json!({"code": a.code, "replicas": a.body["spec"]["replicas"], "owners": entries})
}

/// What the agent relies on to leave `spec.replicas` to an autoscaler (the handover of
/// server-side apply's "transferring ownership" recipe), and the autoscaler and disruption
/// budget objects it applies.
#[tokio::test]
async fn replica_count_handover_and_the_autoscaler_and_budget_kinds() {
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let mut d = Diff::new("replica_count_handover_and_the_autoscaler_and_budget_kinds").await;
    const WHO: &[&str] = &["owner", "handover", "scaler"];
    let with = &deployment("scaled", 3);
    let mut without = with.clone();
    without["spec"].as_object_mut().unwrap().remove("replicas");
    let without = &without;
    d.step("apply by owner with replicas 3", |s| async move {
        let a = s
            .patch::<Deployment>(
                "scaled",
                &PatchParams::apply("owner"),
                &Patch::Apply(with.clone()),
            )
            .await;
        replica_owners(&a, WHO)
    })
    .await;
    d.step(
        "apply of the same count by handover: shared, no conflict",
        |s| async move {
            let count = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "scaled"}, "spec": {"replicas": 3}});
            let a = s
                .patch::<Deployment>(
                    "scaled",
                    &PatchParams::apply("handover"),
                    &Patch::Apply(count),
                )
                .await;
            replica_owners(&a, WHO)
        },
    )
    .await;
    d.step(
        "apply by owner without replicas: the count stays, handover's alone",
        |s| async move {
            let a = s
                .patch::<Deployment>(
                    "scaled",
                    &PatchParams::apply("owner"),
                    &Patch::Apply(without.clone()),
                )
                .await;
            assert_eq!(
                a.body["spec"]["replicas"], 3,
                "{}: the handed-over count",
                s.label
            );
            replica_owners(&a, WHO)
        },
    )
    .await;
    d.step(
        "the scaler's update takes the count over from handover",
        |s| async move {
            let pp = PatchParams {
                field_manager: Some("scaler".into()),
                ..Default::default()
            };
            let a = s
                .patch::<Deployment>(
                    "scaled",
                    &pp,
                    &Patch::Merge(json!({"spec": {"replicas": 5}})),
                )
                .await;
            assert_eq!(a.body["spec"]["replicas"], 5, "{}", s.label);
            replica_owners(&a, WHO)
        },
    )
    .await;
    d.step(
        "owner's apply without replicas again leaves the scaler's count",
        |s| async move {
            let a = s
                .patch::<Deployment>(
                    "scaled",
                    &PatchParams::apply("owner"),
                    &Patch::Apply(without.clone()),
                )
                .await;
            replica_owners(&a, WHO)
        },
    )
    .await;
    d.step(
        "handover applying the old count now: 409 Conflict with the scaler",
        |s| async move {
            let count = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "scaled"}, "spec": {"replicas": 3}});
            let a = s
                .patch::<Deployment>(
                    "scaled",
                    &PatchParams::apply("handover"),
                    &Patch::Apply(count),
                )
                .await;
            assert_eq!(a.code, 409, "{}", s.label);
            a.status()
        },
    )
    .await;
    d.step(
        "owner's forced apply with replicas takes the count back",
        |s| async move {
            let a = s
                .patch::<Deployment>(
                    "scaled",
                    &PatchParams::apply("owner").force(),
                    &Patch::Apply(with.clone()),
                )
                .await;
            replica_owners(&a, WHO)
        },
    )
    .await;
    d.step(
        "apply an autoscaling/v2 HorizontalPodAutoscaler on a container's CPU",
        |s| async move {
            let hpa = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "scaled", "labels": {"app": "scaled"}},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "scaled"},
                "minReplicas": 2, "maxReplicas": 6,
                "metrics": [{"type": "ContainerResource", "containerResource": {
                    "name": "cpu", "container": "main",
                    "target": {"type": "Utilization", "averageUtilization": 60}}}]}});
            let a = s
                .patch::<HorizontalPodAutoscaler>(
                    "scaled",
                    &PatchParams::apply("owner"),
                    &Patch::Apply(hpa),
                )
                .await;
            assert_eq!(a.code, 201, "{}: {}", s.label, a.body);
            json!({"code": a.code, "spec": a.body["spec"]})
        },
    )
    .await;
    d.step(
        "apply a policy/v1 PodDisruptionBudget with maxUnavailable",
        |s| async move {
            let pdb = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "scaled", "labels": {"app": "scaled"}},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "scaled"}}}});
            let a = s
                .patch::<PodDisruptionBudget>(
                    "scaled",
                    &PatchParams::apply("owner"),
                    &Patch::Apply(pdb),
                )
                .await;
            assert_eq!(a.code, 201, "{}: {}", s.label, a.body);
            json!({"code": a.code, "spec": a.body["spec"]})
        },
    )
    .await;
    d.finish();
}
