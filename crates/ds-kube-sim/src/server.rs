//! The HTTP front: routes Kubernetes API paths to the store, with the real server's semantics.

use super::defaults;
use super::discovery;
use super::faults::{Counters, Faults};
use super::patching;
use super::resources::{self, DEPLOYMENTS, PODS, RESOURCES, ResourceType};
use super::selector::{FieldSelector, LabelSelector};
use super::status::{self, ApiError, Cause};
use super::store::{self, Change, DeleteOptions, Deleted, Event, EventType, Propagation, Store};
use super::tables;
use super::validate;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Everything a request handler needs.
pub(crate) struct Shared {
    pub store: Store,
    pub faults: Faults,
    pub counters: Counters,
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub bookmark_interval: Duration,
    /// Next ClusterIP to hand out (host part in 10.96.0.0/12).
    pub next_ip: AtomicU32,
}

type Params = HashMap<String, String>;

/// Current time as the API server writes it.
pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

fn ok(v: &Value) -> Response {
    json_response(StatusCode::OK, v)
}

/// A resolved resource URL.
struct Target {
    rt: usize,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

enum Route {
    Json(Value),
    Resource(Target),
    NotFound,
}

fn route(path: &str, server: &str) -> Route {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let some = |v: Option<Value>| v.map_or(Route::NotFound, Route::Json);
    match segs.as_slice() {
        ["version"] => Route::Json(discovery::version()),
        ["api"] => Route::Json(discovery::api_versions(server)),
        ["apis"] => Route::Json(discovery::api_group_list()),
        ["api", v] => some(discovery::resource_list("", v)),
        ["apis", g] => some(discovery::api_group(g)),
        ["apis", g, v] => some(discovery::resource_list(g, v)),
        ["openapi", "v3"] => Route::Json(discovery::openapi_v3_index()),
        ["openapi", "v3", rest @ ..] => some(discovery::openapi_v3_doc(&rest.join("/"))),
        ["healthz" | "readyz" | "livez"] => Route::Json(json!("ok")),
        ["api", v, rest @ ..] => resource_route("", v, rest),
        ["apis", g, v, rest @ ..] => resource_route(g, v, rest),
        _ => Route::NotFound,
    }
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Route {
    let target = |res: &str, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        let Some(rt) = resources::find(group, version, res) else {
            return Route::NotFound;
        };
        if RESOURCES[rt].namespaced != ns.is_some() && !(ns.is_none() && name.is_none()) {
            return Route::NotFound;
        }
        Route::Resource(Target {
            rt,
            ns: ns.map(str::to_string),
            name: name.map(str::to_string),
            sub: sub.map(str::to_string),
        })
    };
    let is_namespaced_res =
        |r: &str| resources::find(group, version, r).is_some_and(|i| RESOURCES[i].namespaced);
    match rest {
        ["namespaces", ns, res, tail @ ..] if group.is_empty() || is_namespaced_res(res) => {
            if !is_namespaced_res(res) {
                // /api/v1/namespaces/{name}/{status|finalize}
                return match tail {
                    [] => target("namespaces", None, Some(ns), Some(res)),
                    _ => Route::NotFound,
                };
            }
            match tail {
                [] => target(res, Some(ns), None, None),
                [name] => target(res, Some(ns), Some(name), None),
                [name, sub] => target(res, Some(ns), Some(name), Some(sub)),
                _ => Route::NotFound,
            }
        }
        [res] => target(res, None, None, None),
        [res, name] => target(res, None, Some(name), None),
        [res, name, sub] => target(res, None, Some(name), Some(sub)),
        _ => Route::NotFound,
    }
}

fn parse_params(query: Option<&str>) -> Params {
    // form_urlencoded decodes `+` as a space (kube-rs encodes set-based selectors so).
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The axum fallback handler: every request lands here.
pub(crate) async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // Always read the body (DELETE carries DeleteOptions): an unread body corrupts the
    // kept-alive connection for the next request.
    let body = match axum::body::to_bytes(body, 256 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => return ApiError::bad_request(format!("reading the body: {e}")).into_response(),
    };
    let server = shared.addr.to_string();
    let target = match route(parts.uri.path(), &server) {
        Route::Json(v) => return ok(&v),
        Route::NotFound => return ApiError::no_route().into_response(),
        Route::Resource(t) => t,
    };
    let params = parse_params(parts.uri.query());
    let verb = match (&parts.method, &target.name) {
        (&Method::GET, Some(_)) => "get",
        (&Method::GET, None) => {
            if matches!(params.get("watch").map(String::as_str), Some("true" | "1")) {
                "watch"
            } else {
                "list"
            }
        }
        (&Method::POST, None) => "create",
        (&Method::PUT, Some(_)) => "update",
        (&Method::PATCH, Some(_)) => "patch",
        (&Method::DELETE, Some(_)) => "delete",
        (&Method::DELETE, None) => "deletecollection",
        _ => return ApiError::method_not_allowed().into_response(),
    };
    let r = &RESOURCES[target.rt];
    let counted = match &target.sub {
        Some(s) => format!("{}/{s}", r.resource),
        None => r.resource.to_string(),
    };
    shared.counters.inc(verb, &counted);
    if let Some(d) = shared.faults.latency() {
        tokio::time::sleep(d).await;
    }
    let name = target.name.clone().unwrap_or_default();
    if let Some(e) = shared
        .faults
        .check_scope(verb, r, target.ns.as_deref(), &name)
    {
        return e.into_response();
    }
    if let Some(e) = shared.faults.check(verb, r, &name) {
        return e.into_response();
    }
    tracing::debug!(verb, resource = r.resource, ns = ?target.ns, %name, "request");
    let as_table = tables::wants_table(
        parts
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    let result = match verb {
        "get" => get(&shared, &target, as_table),
        "list" => list(&shared, &target, &params, as_table),
        "watch" => return watch(shared.clone(), target, params, as_table),
        "create" => create(&shared, &target, &params, &parts.headers, &body),
        "update" => update(&shared, &target, &params, &parts.headers, &body),
        "patch" => patch(&shared, &target, &params, &parts.headers, &body),
        "delete" => delete(&shared, &target, &params, &body),
        _ => delete_collection(&shared, &target, &params, &body),
    };
    match result {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

fn ns_of(t: &Target) -> &str {
    t.ns.as_deref().unwrap_or("")
}

fn get(shared: &Shared, t: &Target, as_table: bool) -> Result<Response, ApiError> {
    let r = &RESOURCES[t.rt];
    let name = t.name.as_deref().unwrap_or("");
    let obj = shared
        .store
        .get(t.rt, ns_of(t), name)
        .ok_or_else(|| ApiError::not_found(r, name))?;
    match t.sub.as_deref() {
        None if as_table => {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or(Value::Null);
            Ok(ok(&tables::table(
                r.kind,
                std::iter::once(&*obj),
                json!({"resourceVersion": rv}),
            )))
        }
        None | Some("status") => Ok(ok(&obj)),
        Some("scale") if t.rt == DEPLOYMENTS => Ok(ok(&scale_of(&obj))),
        Some("log") if t.rt == PODS => {
            let text = format!("simulated log of pod {}/{name}\nstarted\n", ns_of(t));
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response())
        }
        Some(_) => Err(ApiError::no_route()),
    }
}

fn scale_of(obj: &Value) -> Value {
    let m = &obj["metadata"];
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
                     "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
                   "selector": selector_string(obj.pointer("/spec/selector/matchLabels"))}
    })
}

fn selector_string(labels: Option<&Value>) -> String {
    labels
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Fields a resource can be selected by beyond `metadata.name` and `metadata.namespace`
/// (the real server's field label conversions), or `None` for the default pair.
fn selectable_fields(r: &ResourceType) -> Option<&'static [&'static str]> {
    Some(match r.resource {
        "pods" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ],
        "events" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        "namespaces" => &["status.phase"],
        "secrets" => &["type"],
        "replicasets" => &["status.replicas"],
        _ => return None,
    })
}

fn selectors(
    r: &ResourceType,
    params: &Params,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let l = LabelSelector::parse(params.get("labelSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    let f = FieldSelector::parse(params.get("fieldSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    for field in f.fields() {
        if matches!(field.as_str(), "metadata.name" | "metadata.namespace") {
            continue;
        }
        match selectable_fields(r) {
            Some(extra) if extra.contains(&field.as_str()) => {}
            Some(_) => {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            None => {
                return Err(ApiError::bad_request(format!(
                    "\"{field}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
                )));
            }
        }
    }
    Ok((l, f))
}

fn encode_continue(key: &(String, String)) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}\u{0}{}", key.0, key.1))
}

fn decode_continue(token: &str) -> Result<(String, String), ApiError> {
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    let (a, b) = s.split_once('\u{0}').ok_or_else(bad)?;
    Ok((a.to_string(), b.to_string()))
}

fn list(
    shared: &Shared,
    t: &Target,
    params: &Params,
    as_table: bool,
) -> Result<Response, ApiError> {
    let r = &RESOURCES[t.rt];
    let (ls, fs) = selectors(r, params)?;
    let limit = params.get("limit").and_then(|l| l.parse::<usize>().ok());
    let after = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => Some(decode_continue(c)?),
        None => None,
    };
    let page = shared.store.list(
        t.rt,
        t.ns.as_deref(),
        |v| ls.matches(v) && fs.matches(v),
        limit,
        after,
    );
    let mut meta = json!({"resourceVersion": page.rv.to_string()});
    if let Some(next) = &page.next {
        meta["continue"] = json!(encode_continue(next));
    }
    if as_table {
        return Ok(ok(&tables::table(
            r.kind,
            page.items.iter().map(|v| &**v),
            meta,
        )));
    }
    // Serialized straight from the stored objects: building a Value of the whole list
    // would deep-copy every item.
    let body = ListBody {
        kind: format!("{}List", r.kind),
        api_version: r.api_version(),
        metadata: meta,
        items: Items(&page.items),
    };
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&body).unwrap_or_default(),
    )
        .into_response())
}

/// A list answer, serialized without copying its items.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ListBody<'a> {
    kind: String,
    api_version: String,
    metadata: Value,
    items: Items<'a>,
}

/// Stored objects as a JSON array.
struct Items<'a>(&'a [Arc<Value>]);

impl serde::Serialize for Items<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|v| Item(v)))
    }
}

/// A list item as the real server writes it: without `kind` and `apiVersion` (the list
/// names them once).
struct Item<'a>(&'a Value);

impl serde::Serialize for Item<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(m) => s.collect_map(
                m.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "kind" | "apiVersion")),
            ),
            other => other.serialize(s),
        }
    }
}

fn field_validation(params: &Params) -> validate::FieldValidation {
    validate::FieldValidation::from_param(params.get("fieldValidation").map(String::as_str))
}

/// Adds `Warning: 299 - "…"` headers, as the real server reports dropped unknown fields.
fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let v = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = header::HeaderValue::from_str(&v) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

fn dry_run(params: &Params) -> bool {
    params.get("dryRun").is_some_and(|v| v == "All")
}

/// The field manager of a non-apply write: the parameter, else the user agent's program
/// name, as the real server does.
fn manager_of(params: &Params, headers: &HeaderMap) -> String {
    if let Some(m) = params.get("fieldManager").filter(|m| !m.is_empty()) {
        return m.clone();
    }
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.starts_with(super::protobuf::MAGIC) {
        // Kubernetes protobuf, as kubectl's typed clients send it (`kubectl create …`).
        return super::protobuf::decode(body).map_err(|what| {
            ApiError::unsupported_media_type(&format!(
                "application/vnd.kubernetes.protobuf: {what}"
            ))
        });
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request was in an unknown format: {e}"
        ))
    })
}

fn parse_yaml_or_json(body: &Bytes) -> Result<Value, ApiError> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    let text = std::str::from_utf8(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    serde_saphyr::from_str::<Value>(text)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

/// Checks `apiVersion`/`kind` of a body against the URL, filling them when absent.
fn check_type(r: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    let av = r.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v != av => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({av})"
            )));
        }
        _ => obj["apiVersion"] = json!(av),
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if k != r.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                r.kind
            )));
        }
        _ => obj["kind"] = json!(r.kind),
    }
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    Ok(())
}

fn check_namespace(t: &Target, obj: &mut Value) -> Result<(), ApiError> {
    let url_ns = ns_of(t);
    match obj.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(n) if !n.is_empty() && n != url_ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {
            if RESOURCES[t.rt].namespaced {
                obj["metadata"]["namespace"] = json!(url_ns);
            } else if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("namespace");
            }
            Ok(())
        }
    }
}

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Labels joined by dots.
fn is_subdomain(s: &str) -> bool {
    s.split('.').all(is_label)
}

/// What the real server's name validation says of `name` (apimachinery's
/// `IsDNS1123Label` for namespaces and services, `IsDNS1123Subdomain` for the rest, a path
/// segment for RBAC objects), one message per problem.
fn name_problems(r: &ResourceType, name: &str) -> Vec<String> {
    if r.group == "rbac.authorization.k8s.io" {
        return match name {
            "." | ".." => vec![format!("may not be '{name}'")],
            _ if name.contains('/') => vec!["may not contain '/'".into()],
            _ if name.contains('%') => vec!["may not contain '%'".into()],
            _ => Vec::new(),
        };
    }
    let mut out = Vec::new();
    if matches!(r.resource, "namespaces" | "services") {
        if name.len() > 63 {
            out.push("must be no more than 63 characters".to_string());
        }
        if !is_label(name) {
            out.push(if is_subdomain(name) {
                "must not contain dots".to_string()
            } else {
                DNS1123_LABEL_MSG.to_string()
            });
        }
    } else {
        if name.len() > 253 {
            out.push("must be no more than 253 characters".to_string());
        }
        if !is_subdomain(name) {
            out.push(DNS1123_SUBDOMAIN_MSG.to_string());
        }
    }
    out
}

fn valid_name(r: &ResourceType, name: &str) -> Result<(), ApiError> {
    let causes: Vec<Cause> = name_problems(r, name)
        .iter()
        .map(|why| Cause::invalid("metadata.name", &json!(name), why))
        .collect();
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid_causes(r, name, causes))
    }
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// Everything but metadata and status: a change here bumps `metadata.generation`.
fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut m = v.as_object().cloned().unwrap_or_default();
        m.remove("metadata");
        m.remove("status");
        m
    };
    strip(old) != strip(new)
}

/// Fills the metadata a create sets (uid, creationTimestamp, generation, name).
fn prepare_create(
    shared: &Shared,
    t: &Target,
    obj: &mut Value,
    manager: &str,
    now: &str,
    apply: bool,
) -> Result<String, ApiError> {
    let r = &RESOURCES[t.rt];
    let mut name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty() {
        let gen_name = obj
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if gen_name.is_empty() {
            return Err(ApiError::invalid_causes(
                r,
                "",
                vec![Cause::required(
                    "metadata.name",
                    "name or generateName is required",
                )],
            ));
        }
        name = format!("{gen_name}{}", random_suffix());
        obj["metadata"]["name"] = json!(name);
    }
    valid_name(r, &name)?;
    let m = obj["metadata"]
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    m.insert("creationTimestamp".into(), json!(now));
    m.remove("resourceVersion");
    m.remove("deletionTimestamp");
    m.remove("deletionGracePeriodSeconds");
    if r.generation {
        m.insert("generation".into(), json!(1));
    } else {
        m.remove("generation");
    }
    if !apply {
        m.remove("managedFields");
    }
    if r.status {
        obj["status"] = json!({});
    }
    defaults::apply(t.rt, obj);
    if !apply {
        patching::record_update(None, obj, manager, now);
    }
    defaults::allocate(shared, t.rt, obj, None);
    Ok(name)
}

fn create(
    shared: &Shared,
    t: &Target,
    params: &Params,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let r = &RESOURCES[t.rt];
    if t.sub.is_some() {
        return Err(ApiError::method_not_allowed());
    }
    if r.namespaced && t.ns.is_none() {
        return Err(ApiError::method_not_allowed());
    }
    let mut obj = parse_body(body)?;
    check_type(r, &mut obj)?;
    check_namespace(t, &mut obj)?;
    let now = now();
    let manager = manager_of(params, headers);
    prepare_create(shared, t, &mut obj, &manager, &now, false)?;
    let warnings = validate::check(r, &mut obj, field_validation(params))?;
    let stored = shared.store.create(t.rt, obj, dry_run(params))?;
    Ok(with_warnings(
        json_response(StatusCode::CREATED, &stored),
        &warnings,
    ))
}

/// Carries over what a client cannot change on update: identity, creation time,
/// generation (bumped on spec change), and status or spec depending on the subresource.
fn merge_update(r: &ResourceType, old: &Value, mut new: Value, status_only: bool) -> Value {
    if status_only {
        let mut out = old.clone();
        out["status"] = new.get("status").cloned().unwrap_or(json!({}));
        return out;
    }
    if r.status {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match old["metadata"].get(f) {
            Some(v) => new["metadata"][f] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(f);
                }
            }
        }
    }
    if r.generation {
        let g = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        // Deployments also count annotation changes (they are copied to ReplicaSets).
        let annotations_changed = r.resource == "deployments"
            && old.pointer("/metadata/annotations") != new.pointer("/metadata/annotations");
        let g = if spec_changed(old, &new) || annotations_changed {
            g + 1
        } else {
            g
        };
        new["metadata"]["generation"] = json!(g);
    } else if let Some(m) = new["metadata"].as_object_mut() {
        m.remove("generation");
    }
    new
}

fn check_rv(r: &ResourceType, name: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    let want = new
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let have = old
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !want.is_empty() && want != have {
        return Err(ApiError::conflict(r, name));
    }
    Ok(())
}

fn status_only(t: &Target) -> Result<bool, ApiError> {
    match t.sub.as_deref() {
        None => Ok(false),
        Some("status") if RESOURCES[t.rt].status => Ok(true),
        Some("scale") if t.rt == DEPLOYMENTS => Ok(false),
        Some(_) => Err(ApiError::no_route()),
    }
}

fn update(
    shared: &Shared,
    t: &Target,
    params: &Params,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let r = &RESOURCES[t.rt];
    let name = t.name.clone().unwrap_or_default();
    let status_only = status_only(t)?;
    let mut obj = parse_body(body)?;
    let scale = t.sub.as_deref() == Some("scale");
    if !scale {
        check_type(r, &mut obj)?;
        check_namespace(t, &mut obj)?;
        if let Some(n) = obj.pointer("/metadata/name").and_then(Value::as_str)
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
    }
    let now = now();
    let manager = manager_of(params, headers);
    let mut warnings = Vec::new();
    let mode = field_validation(params);
    let written = shared
        .store
        .modify(t.rt, ns_of(t), &name, dry_run(params), |old| {
            let old = old.ok_or_else(|| ApiError::not_found(r, &name))?;
            if scale {
                let mut new = (**old).clone();
                check_rv(r, &name, old, &obj)?;
                new["spec"]["replicas"] =
                    obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1));
                let mut new = merge_update(r, old, new, false);
                patching::record_update(Some(old), &mut new, &manager, &now);
                return Ok(Change::Put(new));
            }
            check_rv(r, &name, old, &obj)?;
            let mut new = merge_update(r, old, obj, status_only);
            if !status_only {
                defaults::apply(t.rt, &mut new);
                defaults::allocate(shared, t.rt, &mut new, Some(old));
            }
            if !status_only && new.pointer("/metadata/managedFields").is_none() {
                new["metadata"]["managedFields"] = old
                    .pointer("/metadata/managedFields")
                    .cloned()
                    .unwrap_or(json!([]));
            }
            patching::record_update(Some(old), &mut new, &manager, &now);
            warnings = validate::check(r, &mut new, mode)?;
            Ok(Change::Put(new))
        })?;
    let response = if scale {
        ok(&scale_of(&written.obj))
    } else {
        ok(&written.obj)
    };
    Ok(with_warnings(response, &warnings))
}

fn patch(
    shared: &Shared,
    t: &Target,
    params: &Params,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let r = &RESOURCES[t.rt];
    let name = t.name.clone().unwrap_or_default();
    let status_only = status_only(t)?;
    let scale = t.sub.as_deref() == Some("scale");
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let now = now();
    let force = params.get("force").is_some_and(|f| f == "true");
    let is_apply = ct == "application/apply-patch+yaml";
    let mut patch_body = if is_apply {
        parse_yaml_or_json(body)?
    } else {
        parse_body(body)?
    };
    let manager = if is_apply {
        match params.get("fieldManager").filter(|m| !m.is_empty()) {
            Some(m) => m.clone(),
            None => {
                return Err(ApiError::invalid_of(
                    "PatchOptions.meta.k8s.io".into(),
                    "",
                    "meta.k8s.io",
                    "PatchOptions",
                    vec![Cause::required(
                        "fieldManager",
                        "is required for apply patch",
                    )],
                ));
            }
        }
    } else {
        manager_of(params, headers)
    };
    // An apply reads only `applied`; the other patch types only `patch_body`.
    let mut applied = if is_apply {
        std::mem::take(&mut patch_body)
    } else {
        Value::Null
    };
    if is_apply {
        if scale {
            return Err(ApiError::unsupported_patch_type(&ct));
        }
        check_type(r, &mut applied)?;
        check_namespace(t, &mut applied)?;
        match applied.pointer("/metadata/name").and_then(Value::as_str) {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            Some(_) => {}
            None => applied["metadata"]["name"] = json!(name),
        }
    }
    let mut warnings = Vec::new();
    let mode = field_validation(params);
    let written = shared
        .store
        .modify(t.rt, ns_of(t), &name, dry_run(params), |old| {
            let Some(old) = old else {
                if !is_apply || status_only {
                    return Err(ApiError::not_found(r, &name));
                }
                // Apply creates.
                let mut obj = patching::apply(None, &applied, &manager, force, &now)?;
                check_type(r, &mut obj)?;
                check_namespace(t, &mut obj)?;
                prepare_create(shared, t, &mut obj, &manager, &now, true)?;
                warnings = validate::check(r, &mut obj, mode)?;
                return Ok(Change::Put(obj));
            };
            // An apply builds its result from `old` itself (below): only the other patch
            // types start from a copy.
            let mut patched: Value = if is_apply {
                Value::Null
            } else if scale {
                scale_of(old)
            } else {
                (**old).clone()
            };
            match ct.as_str() {
                "application/merge-patch+json" | "application/json" => {
                    patching::merge_patch(&mut patched, &patch_body)
                }
                "application/json-patch+json" => {
                    patching::json_patch(r, &name, &mut patched, &patch_body)?
                }
                "application/strategic-merge-patch+json" => {
                    patching::strategic_merge(r, &name, &mut patched, &patch_body)?
                }
                "application/apply-patch+yaml" => {
                    patched = patching::apply(Some(old), &applied, &manager, force, &now)?;
                }
                other => return Err(ApiError::unsupported_patch_type(other)),
            }
            if !patched.get("metadata").is_some_and(Value::is_object) {
                return Err(ApiError::invalid(
                    r,
                    &name,
                    "metadata",
                    "Required value: the patched object must keep its metadata",
                ));
            }
            if scale {
                let mut new = (**old).clone();
                new["spec"]["replicas"] = patched
                    .pointer("/spec/replicas")
                    .cloned()
                    .unwrap_or(json!(1));
                let mut new = merge_update(r, old, new, false);
                patching::record_update(Some(old), &mut new, &manager, &now);
                return Ok(Change::Put(new));
            }
            check_rv(r, &name, old, &patched)?;
            if let Some(n) = patched.pointer("/metadata/name").and_then(Value::as_str)
                && n != name
            {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            if patched.pointer("/metadata/name").and_then(Value::as_str) != Some(name.as_str())
                || patched.get("kind") != old.get("kind")
                || patched.get("apiVersion") != old.get("apiVersion")
            {
                return Err(ApiError::invalid(
                    r,
                    &name,
                    "metadata.name",
                    "Invalid value: field is immutable",
                ));
            }
            let mut new = merge_update(r, old, patched, status_only);
            if !status_only {
                defaults::apply(t.rt, &mut new);
                defaults::allocate(shared, t.rt, &mut new, Some(old));
            }
            if !is_apply {
                patching::record_update(Some(old), &mut new, &manager, &now);
            }
            warnings = validate::check(r, &mut new, mode)?;
            Ok(Change::Put(new))
        })?;
    let code = if written.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let response = if scale {
        json_response(code, &scale_of(&written.obj))
    } else {
        json_response(code, &written.obj)
    };
    Ok(with_warnings(response, &warnings))
}

/// DeleteOptions from the body and query parameters.
fn delete_opts(params: &Params, body: &Bytes) -> Result<DeleteOptions, ApiError> {
    let opts: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_body(body)?
    };
    let policy = opts
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| params.get("propagationPolicy").cloned());
    let orphan = policy.as_deref() == Some("Orphan")
        || (policy.is_none()
            && opts.get("orphanDependents").and_then(Value::as_bool) == Some(true));
    let foreground = policy.as_deref() == Some("Foreground");
    let dry = opts
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|v| v == "All"))
        || dry_run(params);
    let pre = opts.get("preconditions");
    let s = |k: &str| {
        pre.and_then(|p| p.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Ok(DeleteOptions {
        propagation: if orphan {
            Propagation::Orphan
        } else if foreground {
            Propagation::Foreground
        } else {
            Propagation::Cascade
        },
        uid: s("uid"),
        resource_version: s("resourceVersion"),
        dry_run: dry,
    })
}

/// The grace period of a pod's deletion, as the real pod strategy decides it: none for a
/// pod not yet on a node or finished, else the request's or the pod's own (30 s default).
fn pod_grace(pod: &Value, params: &Params, body: &Bytes) -> i64 {
    let unscheduled = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    let done = matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    if unscheduled || done {
        return 0;
    }
    let asked = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|o| o.get("gracePeriodSeconds").and_then(Value::as_i64))
        .or_else(|| {
            params
                .get("gracePeriodSeconds")
                .and_then(|g| g.parse().ok())
        });
    asked
        .or_else(|| {
            pod.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(30)
}

fn delete(
    shared: &Shared,
    t: &Target,
    params: &Params,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let r = &RESOURCES[t.rt];
    if t.sub.is_some() {
        return Err(ApiError::method_not_allowed());
    }
    let name = t.name.clone().unwrap_or_default();
    let o = delete_opts(params, body)?;
    match shared.store.delete(t.rt, ns_of(t), &name, &o, &now())? {
        Deleted::Pending(obj) => Ok(ok(&obj)),
        // Pods answer with the object (the real registry's ReturnDeletedObject), stamped
        // as gracefully deleted (no kubelet waits here: the pod is gone already), the rest
        // with a Success Status.
        Deleted::Gone(obj) if t.rt == PODS => {
            let mut obj = (*obj).clone();
            let grace = pod_grace(&obj, params, body);
            obj["metadata"]["deletionTimestamp"] = json!(now());
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            Ok(ok(&obj))
        }
        Deleted::Gone(obj) => {
            let uid = obj
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or("");
            Ok(ok(&status::delete_success(r, &name, uid)))
        }
    }
}

fn delete_collection(
    shared: &Shared,
    t: &Target,
    params: &Params,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let r = &RESOURCES[t.rt];
    let (ls, fs) = selectors(r, params)?;
    let o = delete_opts(params, body)?;
    let page = shared.store.list(
        t.rt,
        t.ns.as_deref(),
        |v| ls.matches(v) && fs.matches(v),
        None,
        None,
    );
    let mut items = Vec::new();
    let now = now();
    for obj in page.items {
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        match shared.store.delete(t.rt, ns, name, &o, &now) {
            Ok(Deleted::Gone(v) | Deleted::Pending(v)) => items.push((*v).clone()),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(ok(&json!({
        "kind": format!("{}List", r.kind), "apiVersion": r.api_version(),
        "metadata": {"resourceVersion": shared.store.current_rv().to_string()},
        "items": items
    })))
}

// === watch ===

fn error_line(e: &ApiError) -> Bytes {
    store::watch_line("ERROR", &e.to_status())
}

fn event_line(ty: &str, obj: &Value) -> Bytes {
    store::watch_line(ty, obj)
}

/// The wire line of an event for one watcher (a one-row Table when `table` names the kind).
/// A selected watch sees objects enter and leave its selection as ADDED and DELETED, as
/// from the real server.
fn render(
    ev: &Event,
    pred: &impl Fn(&Value) -> bool,
    selective: bool,
    table: Option<&str>,
) -> Option<Bytes> {
    let now_matches = pred(&ev.obj);
    let ty = if !selective || ev.ty != EventType::Modified {
        if !now_matches {
            return None;
        }
        ev.ty.as_str()
    } else {
        let was = ev.prev.as_ref().is_some_and(|p| pred(p));
        match (was, now_matches) {
            (true, true) => "MODIFIED",
            (false, true) => "ADDED",
            (true, false) => {
                // As the real watch cache: the last state the watcher was shown, at the
                // resourceVersion of the change.
                let mut last = ev.prev.as_deref().cloned().unwrap_or(Value::Null);
                if let Some(m) = last.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.insert("resourceVersion".into(), json!(ev.rv.to_string()));
                }
                return Some(match table {
                    Some(kind) => tables::event_line("DELETED", kind, &last),
                    None => event_line("DELETED", &last),
                });
            }
            (false, false) => return None,
        }
    };
    Some(match table {
        Some(kind) => tables::event_line(ty, kind, &ev.obj),
        None if ty == ev.ty.as_str() => ev.line(),
        None => event_line(ty, &ev.obj),
    })
}

fn watch_response(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn watch(shared: Arc<Shared>, t: Target, params: Params, as_table: bool) -> Response {
    let r = &RESOURCES[t.rt];
    let (ls, fs) = match selectors(r, &params) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let ns = t.ns.clone();
    let name = t.name.clone();
    let pred = move |v: &Value| {
        let m = v.get("metadata");
        let field = |f: &str| {
            m.and_then(|m| m.get(f))
                .and_then(Value::as_str)
                .unwrap_or("")
        };
        ns.as_deref().is_none_or(|n| field("namespace") == n)
            && name.as_deref().is_none_or(|n| field("name") == n)
            && ls.matches(v)
            && fs.matches(v)
    };
    let send_initial = params.get("sendInitialEvents").is_some_and(|v| v == "true");
    let from = match params.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(_) if send_initial => None,
        Some(s) => match s.parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => {
                return ApiError::bad_request(format!("invalid resource version: {s}"))
                    .into_response();
            }
        },
    };
    let bookmarks = params
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let timeout = match shared.faults.watch_drop_after() {
        Some(d) => timeout.min(d),
        None => timeout,
    };
    let max_events = shared.faults.watch_drop_after_events();
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let start = if shared.faults.take_gone() {
        let rv = shared.store.current_rv();
        Err(ApiError::gone(from.unwrap_or(rv), rv))
    } else {
        shared.store.watch(t.rt, from, &pred)
    };
    let start = match start {
        Ok(s) => s,
        Err(e) => {
            // As the real server: 200 with a single ERROR event, then the end.
            let _ = tx.try_send(error_line(&e));
            return watch_response(rx);
        }
    };
    let kind = r.kind;
    let api_version = r.api_version();
    let rt = t.rt;
    let selective = params.contains_key("labelSelector") || params.contains_key("fieldSelector");
    let interval = shared.bookmark_interval;
    let table = as_table.then_some(kind);
    // A resourceVersion the store has not reached (a simulator restarted empty): as the
    // real server, say nothing, bookmarks included, until the store passes it.
    let ahead = from.filter(|rv| *rv > shared.store.current_rv());
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut sent: u64 = 0;
        let mut last_rv = start.rv;
        let limit_hit = |sent: u64| max_events.is_some_and(|m| sent >= m);
        for obj in &start.initial {
            let line = match table {
                Some(kind) => tables::event_line("ADDED", kind, obj),
                None => event_line("ADDED", obj),
            };
            if limit_hit(sent) || tx.send(line).await.is_err() {
                return;
            }
            sent += 1;
        }
        if send_initial {
            let bm = json!({"kind": kind, "apiVersion": api_version, "metadata": {
                "resourceVersion": start.rv.to_string(),
                "annotations": {"k8s.io/initial-events-end": "true"}}});
            if tx.send(event_line("BOOKMARK", &bm)).await.is_err() {
                return;
            }
        }
        for ev in &start.replay {
            let Some(line) = render(ev, &pred, selective, table) else {
                continue;
            };
            if limit_hit(sent) || tx.send(line).await.is_err() {
                return;
            }
            sent += 1;
        }
        let mut rx = start.rx;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        // The real server also sends a bookmark 2 s before the watch times out (unless the
        // watch is shorter than that), so a client resumes from a recent resourceVersion.
        let mut pre_timeout_sent = !bookmarks || timeout < Duration::from_secs(2);
        let pre_timeout = deadline
            .checked_sub(Duration::from_secs(2))
            .unwrap_or(deadline);
        loop {
            if limit_hit(sent) {
                tracing::debug!(sent, "dropping watch (fault injection)");
                return;
            }
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = tx.closed() => return,
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tick.tick(), if bookmarks => {
                    if ahead.is_some_and(|a| shared.store.current_rv() < a) {
                        continue;
                    }
                    let bm = json!({"kind": kind, "apiVersion": api_version,
                        "metadata": {"resourceVersion": last_rv.to_string()}});
                    if tx.send(event_line("BOOKMARK", &bm)).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(pre_timeout), if !pre_timeout_sent => {
                    pre_timeout_sent = true;
                    if ahead.is_some_and(|a| shared.store.current_rv() < a) {
                        continue;
                    }
                    let bm = json!({"kind": kind, "apiVersion": api_version,
                        "metadata": {"resourceVersion": last_rv.to_string()}});
                    if tx.send(event_line("BOOKMARK", &bm)).await.is_err() {
                        return;
                    }
                }
                ev = rx.recv() => match ev {
                    Ok(ev) => {
                        if ev.rt != rt || ahead.is_some_and(|a| ev.rv <= a) {
                            continue;
                        }
                        last_rv = ev.rv;
                        let Some(line) = render(&ev, &pred, selective, table) else {
                            continue;
                        };
                        if tx.send(line).await.is_err() {
                            return;
                        }
                        sent += 1;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "watcher fell behind; answering 410");
                        let e = ApiError::gone(last_rv, shared.store.current_rv());
                        let _ = tx.send(error_line(&e)).await;
                        return;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    watch_response(rx)
}
