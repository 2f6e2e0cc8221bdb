//! Decodes Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) into
//! the JSON the rest of the simulator works on.
//!
//! kubectl's typed clients send protobuf, not JSON: `kubectl create namespace`,
//! `create deployment`, `create configmap`, `create secret`, `create serviceaccount` and
//! `create service`. The envelope is the four bytes `k8s\0` and a `runtime.Unknown`
//! (type meta, then the object's own encoding in `raw`). The objects are decoded here with
//! schemas transcribed from `k8s.io/api`'s `generated.proto` for the fields those commands
//! can set. A field outside the schemas is an error naming it, never silently dropped, so a
//! request is either understood whole or refused with 415.

use base64::Engine as _;
use serde_json::{Map, Value, json};

/// How a field's value is encoded and turned into JSON.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    /// Bytes, shown as base64 (Secret data).
    Bytes,
    I32,
    I64,
    Bool,
    Msg(&'static [Field]),
    /// `map<string, string>`.
    MapStr,
    /// `map<string, bytes>`, values shown as base64.
    MapBytes,
    /// `map<string, resource.Quantity>`.
    MapQuantity,
    /// `intstr.IntOrString`: a number or a string.
    IntOrString,
    /// `resource.Quantity`: its string form.
    Quantity,
    /// `metav1.Time`: seconds and nanos since the epoch, shown as RFC 3339.
    Time,
}

/// One field of a message schema.
#[derive(Clone, Copy)]
struct Field {
    num: u64,
    name: &'static str,
    ty: Ty,
    repeated: bool,
    /// A Go pointer field: zero is a value to keep (`replicas: 0`), not "unset".
    keep_zero: bool,
}

const fn f(num: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        repeated: false,
        keep_zero: false,
    }
}

const fn rep(num: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        repeated: true,
        ..f(num, name, ty)
    }
}

const fn ptr(num: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        keep_zero: true,
        ..f(num, name, ty)
    }
}

use Ty::*;

const TYPE_META: &[Field] = &[f(1, "apiVersion", Str), f(2, "kind", Str)];
const UNKNOWN: &[Field] = &[
    f(1, "typeMeta", Msg(TYPE_META)),
    f(2, "raw", Bytes),
    f(3, "contentEncoding", Str),
    f(4, "contentType", Str),
];

const OWNER_REFERENCE: &[Field] = &[
    f(1, "kind", Str),
    f(3, "name", Str),
    f(4, "uid", Str),
    f(5, "apiVersion", Str),
    ptr(6, "controller", Bool),
    ptr(7, "blockOwnerDeletion", Bool),
];
const OBJECT_META: &[Field] = &[
    f(1, "name", Str),
    f(2, "generateName", Str),
    f(3, "namespace", Str),
    f(4, "selfLink", Str),
    f(5, "uid", Str),
    f(6, "resourceVersion", Str),
    f(7, "generation", I64),
    f(8, "creationTimestamp", Time),
    f(9, "deletionTimestamp", Time),
    ptr(10, "deletionGracePeriodSeconds", I64),
    f(11, "labels", MapStr),
    f(12, "annotations", MapStr),
    rep(13, "ownerReferences", Msg(OWNER_REFERENCE)),
    rep(14, "finalizers", Str),
];
const LOCAL_OBJECT_REFERENCE: &[Field] = &[f(1, "name", Str)];
const OBJECT_REFERENCE: &[Field] = &[
    f(1, "kind", Str),
    f(2, "namespace", Str),
    f(3, "name", Str),
    f(4, "uid", Str),
    f(5, "apiVersion", Str),
    f(6, "resourceVersion", Str),
    f(7, "fieldPath", Str),
];
const LABEL_SELECTOR_REQUIREMENT: &[Field] = &[
    f(1, "key", Str),
    f(2, "operator", Str),
    rep(3, "values", Str),
];
const LABEL_SELECTOR: &[Field] = &[
    f(1, "matchLabels", MapStr),
    rep(2, "matchExpressions", Msg(LABEL_SELECTOR_REQUIREMENT)),
];

// --- core/v1 ---

const NAMESPACE_SPEC: &[Field] = &[rep(1, "finalizers", Str)];
const NAMESPACE_STATUS: &[Field] = &[f(1, "phase", Str)];
const NAMESPACE: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(NAMESPACE_SPEC)),
    f(3, "status", Msg(NAMESPACE_STATUS)),
];
const CONFIG_MAP: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "data", MapStr),
    f(3, "binaryData", MapBytes),
    ptr(4, "immutable", Bool),
];
const SECRET: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "data", MapBytes),
    f(3, "type", Str),
    f(4, "stringData", MapStr),
    ptr(5, "immutable", Bool),
];
const SERVICE_ACCOUNT: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    rep(2, "secrets", Msg(OBJECT_REFERENCE)),
    rep(3, "imagePullSecrets", Msg(LOCAL_OBJECT_REFERENCE)),
    ptr(4, "automountServiceAccountToken", Bool),
];
const SERVICE_PORT: &[Field] = &[
    f(1, "name", Str),
    f(2, "protocol", Str),
    f(3, "port", I32),
    f(4, "targetPort", IntOrString),
    f(5, "nodePort", I32),
    ptr(6, "appProtocol", Str),
];
const SERVICE_SPEC: &[Field] = &[
    rep(1, "ports", Msg(SERVICE_PORT)),
    f(2, "selector", MapStr),
    f(3, "clusterIP", Str),
    f(4, "type", Str),
    rep(5, "externalIPs", Str),
    f(7, "sessionAffinity", Str),
    f(8, "loadBalancerIP", Str),
    rep(9, "loadBalancerSourceRanges", Str),
    f(10, "externalName", Str),
    f(11, "externalTrafficPolicy", Str),
    f(12, "healthCheckNodePort", I32),
    f(13, "publishNotReadyAddresses", Bool),
    rep(18, "clusterIPs", Str),
    rep(19, "ipFamilies", Str),
    ptr(20, "ipFamilyPolicy", Str),
    ptr(21, "allocateLoadBalancerNodePorts", Bool),
    ptr(22, "loadBalancerClass", Str),
    ptr(23, "internalTrafficPolicy", Str),
];
const LOAD_BALANCER_STATUS: &[Field] = &[];
const SERVICE_STATUS: &[Field] = &[f(1, "loadBalancer", Msg(LOAD_BALANCER_STATUS))];
const SERVICE: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(SERVICE_SPEC)),
    f(3, "status", Msg(SERVICE_STATUS)),
];
const CONTAINER_PORT: &[Field] = &[
    f(1, "name", Str),
    f(2, "hostPort", I32),
    f(3, "containerPort", I32),
    f(4, "protocol", Str),
    f(5, "hostIP", Str),
];
const ENV_VAR: &[Field] = &[f(1, "name", Str), f(2, "value", Str)];
const RESOURCE_REQUIREMENTS: &[Field] =
    &[f(1, "limits", MapQuantity), f(2, "requests", MapQuantity)];
const CONTAINER: &[Field] = &[
    f(1, "name", Str),
    f(2, "image", Str),
    rep(3, "command", Str),
    rep(4, "args", Str),
    f(5, "workingDir", Str),
    rep(6, "ports", Msg(CONTAINER_PORT)),
    rep(7, "env", Msg(ENV_VAR)),
    f(8, "resources", Msg(RESOURCE_REQUIREMENTS)),
    f(13, "terminationMessagePath", Str),
    f(14, "imagePullPolicy", Str),
    f(16, "stdin", Bool),
    f(17, "stdinOnce", Bool),
    f(18, "tty", Bool),
    f(20, "terminationMessagePolicy", Str),
];
const POD_SPEC: &[Field] = &[
    rep(2, "containers", Msg(CONTAINER)),
    f(3, "restartPolicy", Str),
    ptr(4, "terminationGracePeriodSeconds", I64),
    ptr(5, "activeDeadlineSeconds", I64),
    f(6, "dnsPolicy", Str),
    f(7, "nodeSelector", MapStr),
    f(8, "serviceAccountName", Str),
    f(9, "serviceAccount", Str),
    f(10, "nodeName", Str),
    f(11, "hostNetwork", Bool),
    f(12, "hostPID", Bool),
    f(13, "hostIPC", Bool),
    rep(15, "imagePullSecrets", Msg(LOCAL_OBJECT_REFERENCE)),
    f(16, "hostname", Str),
    f(17, "subdomain", Str),
    f(19, "schedulerName", Str),
    rep(20, "initContainers", Msg(CONTAINER)),
    ptr(21, "automountServiceAccountToken", Bool),
    f(24, "priorityClassName", Str),
    ptr(25, "priority", I32),
];
const POD_TEMPLATE_SPEC: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(POD_SPEC)),
];

// --- apps/v1 ---

const ROLLING_UPDATE_DEPLOYMENT: &[Field] = &[
    f(1, "maxUnavailable", IntOrString),
    f(2, "maxSurge", IntOrString),
];
const DEPLOYMENT_STRATEGY: &[Field] = &[
    f(1, "type", Str),
    f(2, "rollingUpdate", Msg(ROLLING_UPDATE_DEPLOYMENT)),
];
const DEPLOYMENT_SPEC: &[Field] = &[
    ptr(1, "replicas", I32),
    f(2, "selector", Msg(LABEL_SELECTOR)),
    f(3, "template", Msg(POD_TEMPLATE_SPEC)),
    f(4, "strategy", Msg(DEPLOYMENT_STRATEGY)),
    f(5, "minReadySeconds", I32),
    ptr(6, "revisionHistoryLimit", I32),
    f(7, "paused", Bool),
    ptr(9, "progressDeadlineSeconds", I32),
];
const DEPLOYMENT_STATUS: &[Field] = &[
    f(1, "observedGeneration", I64),
    f(2, "replicas", I32),
    f(3, "updatedReplicas", I32),
    f(4, "availableReplicas", I32),
    f(5, "unavailableReplicas", I32),
    f(7, "readyReplicas", I32),
    ptr(8, "collisionCount", I32),
];
const DEPLOYMENT: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(DEPLOYMENT_SPEC)),
    f(3, "status", Msg(DEPLOYMENT_STATUS)),
];

/// The schema of each kind decoded, by `(apiVersion, kind)`.
const KINDS: &[(&str, &str, &[Field])] = &[
    ("v1", "Namespace", NAMESPACE),
    ("v1", "ConfigMap", CONFIG_MAP),
    ("v1", "Secret", SECRET),
    ("v1", "ServiceAccount", SERVICE_ACCOUNT),
    ("v1", "Service", SERVICE),
    ("apps/v1", "Deployment", DEPLOYMENT),
];

/// The protobuf envelope's magic prefix.
pub const MAGIC: &[u8] = b"k8s\x00";

/// Decodes a protobuf request body (starting with [`MAGIC`]) into the object's JSON.
///
/// # Errors
/// A malformed body, a kind without a schema here, or a field outside the schema; the
/// message says which.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or("the body does not start with the protobuf magic k8s\\0")?;
    let unknown = message(envelope, UNKNOWN, "runtime.Unknown")?;
    let api_version = str_at(&unknown, &["typeMeta", "apiVersion"]);
    let kind = str_at(&unknown, &["typeMeta", "kind"]);
    let (_, _, schema) = KINDS
        .iter()
        .find(|(v, k, _)| *v == api_version && *k == kind)
        .ok_or_else(|| format!("protobuf bodies of {api_version} {kind}"))?;
    let raw = unknown
        .get("raw")
        .and_then(Value::as_str)
        .map(|b| base64::engine::general_purpose::STANDARD.decode(b))
        .transpose()
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let mut object = message(&raw, schema, kind)?;
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    Ok(Value::Object(object))
}

fn str_at<'a>(v: &'a Map<String, Value>, path: &[&str]) -> &'a str {
    let mut cur = v.get(path[0]);
    for p in &path[1..] {
        cur = cur.and_then(|c| c.get(p));
    }
    cur.and_then(Value::as_str).unwrap_or("")
}

/// A cursor over one message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.buf.split_first().ok_or("truncated varint")?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = usize::try_from(self.varint()?).map_err(|e| e.to_string())?;
        if len > self.buf.len() {
            return Err("length-delimited field runs past the end".into());
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }
}

const WIRE_VARINT: u64 = 0;
const WIRE_LEN: u64 = 2;

/// Decodes one message with `schema` into a JSON object, leaving out Go zero values of
/// non-pointer fields (as `omitempty` JSON does).
fn message(buf: &[u8], schema: &[Field], what: &str) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    let mut r = Reader { buf };
    while !r.buf.is_empty() {
        let key = r.varint()?;
        let (num, wire) = (key >> 3, key & 7);
        let field = schema
            .iter()
            .find(|f| f.num == num)
            .ok_or_else(|| format!("field {num} of {what}"))?;
        let expected = match field.ty {
            I32 | I64 | Bool => WIRE_VARINT,
            _ => WIRE_LEN,
        };
        if wire != expected {
            return Err(format!(
                "{what}.{}: wire type {wire}, expected {expected}",
                field.name
            ));
        }
        let context = || format!("{what}.{}", field.name);
        match field.ty {
            MapStr | MapBytes | MapQuantity => {
                let (k, v) = map_entry(r.bytes()?, field.ty, &context())?;
                out.entry(field.name)
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
                    .ok_or_else(context)?
                    .insert(k, v);
            }
            _ => {
                let value = scalar(&mut r, field.ty, &context())?;
                if field.repeated {
                    out.entry(field.name)
                        .or_insert_with(|| Value::Array(Vec::new()))
                        .as_array_mut()
                        .ok_or_else(context)?
                        .push(value);
                } else if field.keep_zero || !is_zero(&value) {
                    out.insert(field.name.into(), value);
                } else {
                    out.remove(field.name);
                }
            }
        }
    }
    Ok(out)
}

fn scalar(r: &mut Reader<'_>, ty: Ty, what: &str) -> Result<Value, String> {
    // Varints carry two's complement of 64 bits; the casts reinterpret them as Go does.
    Ok(match ty {
        I32 => json!(r.varint()? as i64 as i32),
        I64 => json!(r.varint()? as i64),
        Bool => json!(r.varint()? != 0),
        Str => json!(utf8(r.bytes()?, what)?),
        Bytes => json!(base64::engine::general_purpose::STANDARD.encode(r.bytes()?)),
        Msg(schema) => Value::Object(message(r.bytes()?, schema, what)?),
        IntOrString => {
            let m = message(r.bytes()?, INT_OR_STRING, what)?;
            if m.get("type").and_then(Value::as_i64) == Some(1) {
                m.get("strVal").cloned().unwrap_or_else(|| json!(""))
            } else {
                m.get("intVal").cloned().unwrap_or_else(|| json!(0))
            }
        }
        Quantity => message(r.bytes()?, QUANTITY, what)?
            .remove("string")
            .unwrap_or_else(|| json!("0")),
        Time => {
            let m = message(r.bytes()?, TIME, what)?;
            let seconds = m.get("seconds").and_then(Value::as_i64).unwrap_or(0);
            let nanos = m.get("nanos").and_then(Value::as_i64).unwrap_or(0);
            // Go's zero time (year 1) is "unset", shown as null in JSON.
            match chrono::DateTime::from_timestamp(seconds, u32::try_from(nanos).unwrap_or(0)) {
                Some(t) if seconds > GO_ZERO_TIME => {
                    json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                }
                _ => Value::Null,
            }
        }
        MapStr | MapBytes | MapQuantity => unreachable!("maps are decoded by map_entry"),
    })
}

/// Seconds of Go's zero `time.Time` (0001-01-01) since the Unix epoch.
const GO_ZERO_TIME: i64 = -62_135_596_800;

const INT_OR_STRING: &[Field] = &[
    ptr(1, "type", I64),
    f(2, "intVal", I32),
    f(3, "strVal", Str),
];
const QUANTITY: &[Field] = &[f(1, "string", Str)];
const TIME: &[Field] = &[f(1, "seconds", I64), f(2, "nanos", I32)];

fn map_entry(buf: &[u8], ty: Ty, what: &str) -> Result<(String, Value), String> {
    let value_ty = match ty {
        MapStr => Str,
        MapBytes => Bytes,
        _ => Quantity,
    };
    let mut r = Reader { buf };
    let (mut key, mut value) = (String::new(), None);
    while !r.buf.is_empty() {
        match r.varint()? {
            k if k == (1 << 3) | WIRE_LEN => key = utf8(r.bytes()?, what)?.to_string(),
            k if k == (2 << 3) | WIRE_LEN => value = Some(scalar(&mut r, value_ty, what)?),
            k => return Err(format!("{what}: map entry field {}", k >> 3)),
        }
    }
    let empty = match value_ty {
        Quantity => json!("0"),
        _ => json!(""),
    };
    Ok((key, value.unwrap_or(empty)))
}

fn utf8<'a>(b: &'a [u8], what: &str) -> Result<&'a str, String> {
    std::str::from_utf8(b).map_err(|_| format!("{what}: invalid UTF-8"))
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal protobuf writer for building request bodies in tests.
    #[derive(Default)]
    struct W(Vec<u8>);

    impl W {
        fn varint(&mut self, mut v: u64) -> &mut Self {
            loop {
                let b = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    self.0.push(b);
                    return self;
                }
                self.0.push(b | 0x80);
            }
        }
        fn int(&mut self, num: u64, v: u64) -> &mut Self {
            self.varint(num << 3).varint(v)
        }
        fn bytes(&mut self, num: u64, b: &[u8]) -> &mut Self {
            self.varint((num << 3) | 2).varint(b.len() as u64);
            self.0.extend_from_slice(b);
            self
        }
        fn str(&mut self, num: u64, s: &str) -> &mut Self {
            self.bytes(num, s.as_bytes())
        }
        fn msg(&mut self, num: u64, m: &W) -> &mut Self {
            self.bytes(num, &m.0)
        }
        fn entry(&mut self, num: u64, k: &str, v: &str) -> &mut Self {
            let mut e = W::default();
            e.str(1, k).str(2, v);
            self.msg(num, &e)
        }
    }

    fn envelope(api_version: &str, kind: &str, raw: &W) -> Vec<u8> {
        let mut tm = W::default();
        tm.str(1, api_version).str(2, kind);
        let mut u = W::default();
        u.msg(1, &tm).msg(2, raw).str(3, "").str(4, "");
        let mut body = MAGIC.to_vec();
        body.extend_from_slice(&u.0);
        body
    }

    fn meta(name: &str) -> W {
        let mut m = W::default();
        // As Go writes it: every non-pointer field, zero or not.
        let mut zero_time = W::default();
        zero_time.int(1, GO_ZERO_TIME as u64).int(2, 0);
        m.str(1, name)
            .str(2, "")
            .str(3, "")
            .int(7, 0)
            .msg(8, &zero_time)
            .entry(11, "app", name);
        m
    }

    #[test]
    fn a_namespace_as_kubectl_create_sends_it() {
        let mut ns = W::default();
        ns.msg(1, &meta("models"))
            .msg(2, &W::default())
            .msg(3, &W::default());
        let v = decode(&envelope("v1", "Namespace", &ns)).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "models", "labels": {"app": "models"}},
                   "spec": {}, "status": {}})
        );
    }

    #[test]
    fn a_deployment_keeps_pointer_zeros_and_int_or_string() {
        let mut quantity = W::default();
        quantity.str(1, "250m");
        let mut limits = W::default();
        limits.str(1, "cpu").msg(2, &quantity);
        let mut resources = W::default();
        resources.msg(1, &limits);
        let mut container = W::default();
        container
            .str(1, "nginx")
            .str(2, "nginx:1.27")
            .msg(8, &resources);
        let mut pod = W::default();
        pod.msg(2, &container).str(3, "");
        let mut template = W::default();
        template.msg(1, &meta("web")).msg(2, &pod);
        let mut selector = W::default();
        selector.entry(1, "app", "web");
        let mut surge = W::default();
        surge.int(1, 1).str(3, "25%");
        let mut rolling = W::default();
        rolling.msg(2, &surge);
        let mut strategy = W::default();
        strategy.str(1, "RollingUpdate").msg(2, &rolling);
        let mut spec = W::default();
        spec.int(1, 0)
            .msg(2, &selector)
            .msg(3, &template)
            .msg(4, &strategy)
            .int(5, 0);
        let mut d = W::default();
        d.msg(1, &meta("web")).msg(2, &spec).msg(3, &W::default());
        let v = decode(&envelope("apps/v1", "Deployment", &d)).unwrap();
        assert_eq!(v["spec"]["replicas"], 0, "replicas: 0 is kept");
        assert!(v["spec"].get("minReadySeconds").is_none());
        assert_eq!(v["spec"]["selector"]["matchLabels"]["app"], "web");
        assert_eq!(
            v["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%",
            "IntOrString of type string"
        );
        let c = &v["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "nginx:1.27");
        assert_eq!(c["resources"]["limits"]["cpu"], "250m");
        assert!(v["metadata"].get("creationTimestamp").is_none());
    }

    #[test]
    fn secret_bytes_become_base64_and_unknown_fields_are_refused() {
        let mut data = W::default();
        data.str(1, "token").bytes(2, b"\x00\xffsecret");
        let mut s = W::default();
        s.msg(1, &meta("creds")).msg(2, &data).str(3, "Opaque");
        let v = decode(&envelope("v1", "Secret", &s)).unwrap();
        assert_eq!(
            v["data"]["token"],
            base64::engine::general_purpose::STANDARD.encode(b"\x00\xffsecret")
        );
        assert_eq!(v["type"], "Opaque");

        s.str(99, "surprise");
        let e = decode(&envelope("v1", "Secret", &s)).unwrap_err();
        assert_eq!(e, "field 99 of Secret");
        let e = decode(&envelope("batch/v1", "Job", &W::default())).unwrap_err();
        assert_eq!(e, "protobuf bodies of batch/v1 Job");
        assert!(decode(b"k8s\x00\x0a\xff").is_err(), "truncated input");
    }
}
