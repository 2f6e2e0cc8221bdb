//! API errors answered as `Status` objects, with the reasons and codes of the real API server.

use super::resources::ResourceType;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A failed request, rendered as a Kubernetes `Status` (kind Status, status Failure).
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status code (also `Status.code`).
    pub code: u16,
    /// `Status.reason` (`NotFound`, `AlreadyExists`, `Conflict`, …).
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// `Status.details`, when the real server fills it.
    pub details: Option<Value>,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u64>,
}

/// `Status.details` naming an object: the real server leaves out empty fields (the core
/// group, the name of an object that has none).
fn details_of(name: &str, group: &str, kind: &str) -> Value {
    let mut d = serde_json::Map::new();
    for (k, v) in [("name", name), ("group", group), ("kind", kind)] {
        if !v.is_empty() {
            d.insert(k.into(), json!(v));
        }
    }
    Value::Object(d)
}

fn details(rt: &ResourceType, name: &str) -> Value {
    details_of(name, rt.group, rt.resource)
}

/// One `Status.details.causes` entry of a 422: the field, the cause type and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// The field path (`spec.replicas`, `metadata.name`).
    pub field: String,
    /// `FieldValueInvalid`, `FieldValueRequired`, …
    pub reason: &'static str,
    /// `Invalid value: -1: must be greater than or equal to 0`.
    pub message: String,
}

impl Cause {
    /// `FieldValueInvalid` with the real server's `Invalid value: VALUE: why` message.
    pub fn invalid(field: impl Into<String>, value: &Value, why: &str) -> Self {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        Self {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {shown}: {why}"),
        }
    }

    /// `FieldValueRequired`: `Required value` (and why, if given).
    pub fn required(field: impl Into<String>, why: &str) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueRequired",
            message: if why.is_empty() {
                "Required value".into()
            } else {
                format!("Required value: {why}")
            },
        }
    }

    /// A cause with a message of its own.
    pub fn other(field: impl Into<String>, reason: &'static str, message: String) -> Self {
        Self {
            field: field.into(),
            reason,
            message,
        }
    }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    fn with_details(mut self, d: Value) -> Self {
        self.details = Some(d);
        self
    }

    /// 404 `deployments.apps "x" not found`.
    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", rt.group_resource()),
        )
        .with_details(details(rt, name))
    }

    /// 404 for a namespaced write into a namespace that does not exist.
    pub fn namespace_not_found(ns: &str) -> Self {
        Self::new(404, "NotFound", format!("namespaces \"{ns}\" not found"))
            .with_details(json!({"name": ns, "kind": "namespaces"}))
    }

    /// 403 for a create in a namespace that is being deleted.
    pub fn namespace_terminating(rt: &ResourceType, name: &str, ns: &str) -> Self {
        Self::new(
            403,
            "Forbidden",
            format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                rt.group_resource()
            ),
        )
        .with_details(details(rt, name))
    }

    /// 404 for a URL that names no resource.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    /// 409 `deployments.apps "x" already exists`.
    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", rt.group_resource()),
        )
        .with_details(details(rt, name))
    }

    /// 409 for a stale `resourceVersion`.
    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                rt.group_resource()
            ),
        )
        .with_details(details(rt, name))
    }

    /// 403 as RBAC answers a request outside the caller's rights.
    pub fn forbidden(rt: &ResourceType, verb: &str, name: &str, ns: Option<&str>) -> Self {
        let scope = match ns {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_string(),
        };
        Self::new(
            403,
            "Forbidden",
            format!(
                "{} is forbidden: User \"system:serviceaccount:ds-sim:restricted\" cannot {verb} resource \"{}\" in API group \"{}\" {scope}",
                rt.group_resource(),
                rt.resource,
                rt.group
            ),
        )
        .with_details(details(rt, name))
    }

    /// 409 with a free message (a failed delete precondition).
    pub fn conflict_msg(rt: &ResourceType, name: &str, message: String) -> Self {
        Self::new(409, "Conflict", message).with_details(details(rt, name))
    }

    /// 409 of a server-side apply conflict: the real server's details hold only the causes
    /// (type `FieldManagerConflict`), no name, group or kind.
    pub fn apply_conflict(message: String, causes: Value) -> Self {
        Self::new(409, "Conflict", message).with_details(json!({"causes": causes}))
    }

    /// 422 `Deployment.apps "x" is invalid: field: why`, one `FieldValueInvalid` cause.
    pub fn invalid(rt: &ResourceType, name: &str, field: &str, why: &str) -> Self {
        Self::invalid_causes(
            rt,
            name,
            vec![Cause::other(field, "FieldValueInvalid", why.to_string())],
        )
    }

    /// 422 naming every cause, as the real server's `NewInvalid` does: one cause reads
    /// `Kind "x" is invalid: field: message`, several `… is invalid: [field: message, …]`.
    pub fn invalid_causes(rt: &ResourceType, name: &str, causes: Vec<Cause>) -> Self {
        Self::invalid_of(rt.group_kind(), name, rt.group, rt.kind, causes)
    }

    /// [`ApiError::invalid_causes`] for a kind that is not a served resource
    /// (`PatchOptions.meta.k8s.io`).
    pub fn invalid_of(
        group_kind: String,
        name: &str,
        group: &str,
        kind: &str,
        causes: Vec<Cause>,
    ) -> Self {
        let text = |c: &Cause| {
            if c.field.is_empty() {
                c.message.clone()
            } else {
                format!("{}: {}", c.field, c.message)
            }
        };
        let what = match causes.as_slice() {
            [one] => text(one),
            many => format!("[{}]", many.iter().map(text).collect::<Vec<_>>().join(", ")),
        };
        let mut d = details_of(name, group, kind);
        d["causes"] = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        Self::new(
            422,
            "Invalid",
            format!("{group_kind} \"{name}\" is invalid: {what}"),
        )
        .with_details(d)
    }

    /// 422 as the real server answers a JSON patch that cannot be applied (a failing `test`,
    /// a missing path): a generic message and empty details.
    pub fn patch_unprocessable() -> Self {
        Self::new(
            422,
            "Invalid",
            "the server rejected our request due to an error in our request",
        )
        .with_details(json!({}))
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
        .with_details(json!({}))
    }

    /// 415 UnsupportedMediaType for a body encoding the simulator does not read.
    pub fn unsupported_media_type(ct: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (the simulated API server does not decode {ct})"
            ),
        )
    }

    /// 415 UnsupportedMediaType for a PATCH content type.
    pub fn unsupported_patch_type(ct: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct})"
            ),
        )
    }

    /// 410 Expired: a watch asked for a resourceVersion older than the kept history.
    pub fn gone(asked: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {asked} ({oldest})"),
        )
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message).with_details(json!({
            "causes": [{"message": "injected fault"}]
        }))
    }

    /// 429 TooManyRequests with `Retry-After`.
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        let mut e = Self::new(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
        )
        .with_details(json!({"retryAfterSeconds": retry_after_secs}));
        e.retry_after = Some(retry_after_secs);
        e
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_default();
        let mut resp = (
            code,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// The `Status` a successful delete answers with (kind Status, status Success).
pub fn delete_success(rt: &ResourceType, name: &str, uid: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details_with_uid(rt, name, uid)
    })
}

fn details_with_uid(rt: &ResourceType, name: &str, uid: &str) -> Value {
    let mut d = details(rt, name);
    d["uid"] = json!(uid);
    d
}
