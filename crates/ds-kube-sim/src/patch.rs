//! The three PATCH flavours of the Kubernetes API: JSON merge, JSON patch and strategic merge.
//!
//! Strategic merge needs to know, per list, whether it is merged by a key, merged as a set of
//! primitives or replaced whole. The real API server reads that from the Go struct tags
//! (`patchStrategy`, `patchMergeKey`); here [`list_type`] answers it from the list's field name
//! and its parent fields, for the built-in kinds the simulator serves. Server-side apply
//! (`super::apply`) shares the same registry so both agree on what a list is.

use serde_json::{Map, Value};

/// Why a patch could not be applied. The server answers 422 (or 400 for a malformed body).
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The body is not a patch of the expected shape (not an object, not a list of operations).
    #[error("invalid patch: {0}")]
    InvalidPatch(String),
    /// A JSON patch operation failed; names the operation index and its path.
    #[error("json patch operation {index} ({op} {path}) failed: {reason}")]
    JsonPatchOperation {
        index: usize,
        op: String,
        path: String,
        reason: String,
    },
    /// A strategic merge directive is unknown or misused.
    #[error("invalid strategic merge patch directive at {path}: {reason}")]
    Directive { path: String, reason: String },
    /// A list item of a keyed list lacks its merge key.
    #[error("map: {item} does not contain declared merge key: {key}")]
    MissingMergeKey { item: String, key: String },
}

impl PatchError {
    /// The HTTP status the real API server answers with: 400 for a body that is not a patch
    /// of the right shape, 422 for a well-formed patch that cannot be applied.
    pub fn status_code(&self) -> u16 {
        match self {
            Self::InvalidPatch(_) | Self::Directive { .. } => 400,
            Self::JsonPatchOperation { .. } | Self::MissingMergeKey { .. } => 422,
        }
    }
}

/// How a list field is patched and owned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListType {
    /// Items are maps identified by these fields (the first one is the strategic merge key;
    /// server-side apply uses all of them, as the real `listMapKeys` do).
    Map(&'static [&'static str]),
    /// A set of primitives, merged by union.
    Set,
    /// Replaced whole by any write.
    Atomic,
}

const CONTAINER_LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];

/// The list type of the list `field` whose ancestors' field names are `parent` (list items do
/// not add a name: a container's `env` has parent `[.., "containers"]`).
pub(crate) fn list_type(parent: &[&str], field: &str) -> ListType {
    let last = parent.last().copied();
    let in_container = last.is_some_and(|l| CONTAINER_LISTS.contains(&l));
    match field {
        "containers" | "initContainers" | "ephemeralContainers" => ListType::Map(&["name"]),
        "ports" if in_container => ListType::Map(&["containerPort", "protocol"]),
        // Service spec.ports; other `ports` lists (NetworkPolicy, EndpointSlice) are atomic.
        "ports" if parent == ["spec"] => ListType::Map(&["port", "protocol"]),
        "env" if in_container => ListType::Map(&["name"]),
        "volumeMounts" if in_container => ListType::Map(&["mountPath"]),
        "volumeDevices" if in_container => ListType::Map(&["devicePath"]),
        "volumes" | "imagePullSecrets" | "schedulingGates" | "resourceClaims"
            if last == Some("spec") =>
        {
            ListType::Map(&["name"])
        }
        "hostAliases" if last == Some("spec") => ListType::Map(&["ip"]),
        "topologySpreadConstraints" if last == Some("spec") => {
            ListType::Map(&["topologyKey", "whenUnsatisfiable"])
        }
        "conditions" => ListType::Map(&["type"]),
        "ownerReferences" if parent == ["metadata"] => ListType::Map(&["uid"]),
        "finalizers" if parent == ["metadata"] => ListType::Set,
        // ServiceAccount.secrets (its imagePullSecrets are atomic, unlike a pod's).
        "secrets" if parent.is_empty() => ListType::Map(&["name"]),
        _ => ListType::Atomic,
    }
}

// === JSON merge patch ===

/// Applies an RFC 7386 JSON merge patch: objects merge recursively, `null` deletes, anything
/// else (arrays included) replaces.
pub fn json_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target_map) = target else {
        return;
    };
    for (key, value) in patch_map {
        if value.is_null() {
            target_map.remove(key);
        } else {
            json_merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

// === JSON patch ===

/// Applies an RFC 6902 JSON patch (a list of operations). All or nothing: on error the target
/// is left as it was.
///
/// # Errors
/// [`PatchError::InvalidPatch`] if the body is not a list of operations,
/// [`PatchError::JsonPatchOperation`] naming the first failing operation.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| PatchError::InvalidPatch(format!("not a JSON patch: {e}")))?;
    json_patch::patch(target, &ops.0).map_err(|e| {
        let op = ops.0.get(e.operation);
        PatchError::JsonPatchOperation {
            index: e.operation,
            op: op.map(op_name).unwrap_or("?").to_owned(),
            path: e.path.to_string(),
            reason: e.kind.to_string(),
        }
    })
}

fn op_name(op: &json_patch::PatchOperation) -> &'static str {
    use json_patch::PatchOperation as P;
    match op {
        P::Add(_) => "add",
        P::Remove(_) => "remove",
        P::Replace(_) => "replace",
        P::Move(_) => "move",
        P::Copy(_) => "copy",
        P::Test(_) => "test",
    }
}

// === Strategic merge patch ===

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER_PREFIX: &str = "$setElementOrder/";
const DELETE_PRIMITIVE_PREFIX: &str = "$deleteFromPrimitiveList/";

/// Applies a Kubernetes strategic merge patch as the API server does (`MergeParallelList` and
/// `IgnoreUnmatchedNulls` on): maps merge, `null` deletes, lists merge by their merge key or
/// as sets or are replaced (see [`list_type`]), and the directives `$patch`, `$retainKeys`,
/// `$setElementOrder/…` and `$deleteFromPrimitiveList/…` are honoured and never stored.
///
/// # Errors
/// [`PatchError`] if the patch is not an object, a directive is unknown, or an item of a keyed
/// list lacks its key. On error the target is left as it was.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Value::Object(patch_map) = patch else {
        return Err(PatchError::InvalidPatch(
            "a strategic merge patch must be a JSON object".to_owned(),
        ));
    };
    let original = match target {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    let mut path = Vec::new();
    let merged = merge_map(original, patch_map, &mut path)?;
    *target = Value::Object(merged);
    Ok(())
}

fn display_path(path: &[String]) -> String {
    if path.is_empty() {
        ".".to_owned()
    } else {
        path.iter().map(|p| format!(".{p}")).collect()
    }
}

fn directive_error(path: &[String], reason: impl Into<String>) -> PatchError {
    PatchError::Directive {
        path: display_path(path),
        reason: reason.into(),
    }
}

/// Merges `patch` into `original` (the `mergeMap` of apimachinery's strategicpatch).
fn merge_map(
    mut original: Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
) -> Result<Map<String, Value>, PatchError> {
    if let Some(directive) = patch.get(DIRECTIVE) {
        return match directive.as_str() {
            // The map becomes the patch itself, cleaned of directives and nulls.
            Some("replace") => {
                let mut rest = patch.clone();
                rest.remove(DIRECTIVE);
                merge_map(Map::new(), &rest, path)
            }
            Some("delete") => Ok(Map::new()),
            Some("merge") => {
                let mut rest = patch.clone();
                rest.remove(DIRECTIVE);
                merge_map(original, &rest, path)
            }
            _ => Err(directive_error(
                path,
                format!("unknown $patch value {directive}"),
            )),
        };
    }

    if let Some(retain) = patch.get(RETAIN_KEYS) {
        let Value::Array(keys) = retain else {
            return Err(directive_error(path, "$retainKeys must be a list"));
        };
        let keys: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
        for (k, v) in patch {
            // Nulls delete anyway and directives are not fields: neither needs retaining.
            if !v.is_null() && !k.starts_with('$') && !keys.contains(&k.as_str()) {
                return Err(directive_error(
                    path,
                    format!("field {k} is in the patch but not in $retainKeys"),
                ));
            }
        }
        original.retain(|k, _| keys.contains(&k.as_str()));
    }

    // Lists named by $setElementOrder are merged together with their directive.
    let mut handled: Vec<&str> = Vec::new();
    for (key, order) in patch {
        let Some(list_key) = key.strip_prefix(SET_ORDER_PREFIX) else {
            continue;
        };
        let Value::Array(order) = order else {
            return Err(directive_error(path, format!("{key} must be a list")));
        };
        let parent: Vec<&str> = path.iter().map(String::as_str).collect();
        let patch_list = match patch.get(list_key) {
            Some(Value::Array(l)) => l.as_slice(),
            // Atomic lists are only ever replaced: without a list in the patch, keep the live one.
            None if list_type(&parent, list_key) != ListType::Atomic => &[],
            // null or a non-list: the ordinary merge below deletes or replaces the value.
            _ => continue,
        };
        let original_list = match original.get(list_key) {
            Some(Value::Array(_)) | None => match original.remove(list_key) {
                Some(Value::Array(l)) => l,
                _ => Vec::new(),
            },
            Some(_) => continue,
        };
        handled.push(list_key);
        let merged = merge_list(original_list, patch_list, Some(order), list_key, path)?;
        if !merged.is_empty() || patch.contains_key(list_key) {
            original.insert(list_key.to_owned(), Value::Array(merged));
        }
    }

    for (key, patch_value) in patch {
        if key == DIRECTIVE || key == RETAIN_KEYS || key.starts_with(SET_ORDER_PREFIX) {
            continue;
        }
        if handled.contains(&key.as_str()) {
            continue;
        }
        if let Some(list_key) = key.strip_prefix(DELETE_PRIMITIVE_PREFIX) {
            let Value::Array(to_delete) = patch_value else {
                return Err(directive_error(path, format!("{key} must be a list")));
            };
            if let Some(Value::Array(list)) = original.get_mut(list_key) {
                list.retain(|v| !to_delete.contains(v));
            }
            continue;
        }
        if key.starts_with('$') {
            return Err(directive_error(path, format!("unknown directive {key}")));
        }
        if patch_value.is_null() {
            original.remove(key);
            continue;
        }
        let merged = match (original.remove(key), patch_value) {
            (Some(Value::Array(o)), Value::Array(p)) => {
                Value::Array(merge_list(o, p, None, key, path)?)
            }
            // Absent or of another type: the patch list, cleaned of directives.
            (_, Value::Array(p)) => Value::Array(merge_list(Vec::new(), p, None, key, path)?),
            // Deleting a map that is not there: nothing to store.
            (None, Value::Object(p))
                if p.get(DIRECTIVE).and_then(Value::as_str) == Some("delete") =>
            {
                continue;
            }
            (current, Value::Object(p)) => {
                let base = match current {
                    Some(Value::Object(o)) => o,
                    // Absent or of another type: the patch map, cleaned of directives and nulls.
                    _ => Map::new(),
                };
                path.push(key.clone());
                let merged = merge_map(base, p, path);
                path.pop();
                Value::Object(merged?)
            }
            (_, scalar) => scalar.clone(),
        };
        original.insert(key.clone(), merged);
    }
    Ok(original)
}

/// Merges the list `key` (child of `path`) according to its [`list_type`].
fn merge_list(
    original: Vec<Value>,
    patch: &[Value],
    order: Option<&Vec<Value>>,
    key: &str,
    path: &mut Vec<String>,
) -> Result<Vec<Value>, PatchError> {
    let parent: Vec<&str> = path.iter().map(String::as_str).collect();
    let kind = list_type(&parent, key);
    path.push(key.to_owned());
    let result = match kind {
        ListType::Atomic => replace_list(patch, path),
        ListType::Set => Ok(merge_primitive_list(original, patch, order)),
        ListType::Map(keys) => merge_keyed_list(original, patch, order, keys[0], path),
    };
    path.pop();
    result
}

/// An atomic list is the patch list; its maps are still cleaned of directives and nulls.
fn replace_list(patch: &[Value], path: &mut Vec<String>) -> Result<Vec<Value>, PatchError> {
    let mut out = Vec::with_capacity(patch.len());
    for item in patch {
        match item {
            Value::Object(m) if m.get(DIRECTIVE).and_then(Value::as_str) == Some("replace") => {
                // `[{"$patch":"replace"}, …]`: the list is the other items, as already here.
                if m.len() > 1 {
                    out.push(Value::Object(merge_map(Map::new(), m, path)?));
                }
            }
            Value::Object(m) => out.push(Value::Object(merge_map(Map::new(), m, path)?)),
            other => out.push(other.clone()),
        }
    }
    Ok(out)
}

fn merge_primitive_list(
    original: Vec<Value>,
    patch: &[Value],
    order: Option<&Vec<Value>>,
) -> Vec<Value> {
    let mut merged = Vec::with_capacity(original.len() + patch.len());
    for v in original.iter().chain(patch) {
        if !merged.contains(v) {
            merged.push(v.clone());
        }
    }
    let patch_order: &[Value] = order.map(Vec::as_slice).unwrap_or(patch);
    let (patch_items, server_only): (Vec<Value>, Vec<Value>) =
        merged.into_iter().partition(|v| patch_order.contains(v));
    normalize_order(
        patch_items,
        server_only,
        &original,
        |a, b| a == b,
        |v| patch_order.iter().position(|o| o == v),
    )
}

fn merge_key_of<'a>(item: &'a Value, merge_key: &str) -> Option<&'a Value> {
    item.as_object().and_then(|m| m.get(merge_key))
}

fn merge_keyed_list(
    original: Vec<Value>,
    patch: &[Value],
    order: Option<&Vec<Value>>,
    merge_key: &str,
    path: &mut Vec<String>,
) -> Result<Vec<Value>, PatchError> {
    // Special elements first: `$patch: delete` items and a `$patch: replace` marker.
    let mut merged = original.clone();
    let mut plain: Vec<&Map<String, Value>> = Vec::new();
    let mut replace = false;
    for item in patch {
        let Value::Object(m) = item else {
            return Err(directive_error(
                path,
                format!("items of a list merged by {merge_key} must be objects"),
            ));
        };
        match m.get(DIRECTIVE) {
            None => plain.push(m),
            Some(d) => match d.as_str() {
                Some("delete") => {
                    let Some(key) = m.get(merge_key) else {
                        return Err(PatchError::MissingMergeKey {
                            item: item.to_string(),
                            key: merge_key.to_owned(),
                        });
                    };
                    merged.retain(|o| merge_key_of(o, merge_key) != Some(key));
                }
                Some("replace") => replace = true,
                Some("merge") => {
                    return Err(directive_error(
                        path,
                        "merging lists cannot yet be specified in the patch",
                    ));
                }
                _ => return Err(directive_error(path, format!("unknown $patch value {d}"))),
            },
        }
    }
    let server_order = if replace { Vec::new() } else { original };
    if replace {
        merged.clear();
    }

    for p in &plain {
        let Some(key) = p.get(merge_key) else {
            return Err(PatchError::MissingMergeKey {
                item: Value::Object((*p).clone()).to_string(),
                key: merge_key.to_owned(),
            });
        };
        match merged
            .iter_mut()
            .find(|o| merge_key_of(o, merge_key) == Some(key))
        {
            Some(Value::Object(existing)) => {
                let taken = std::mem::take(existing);
                *existing = merge_map(taken, p, path)?;
            }
            _ => merged.push(Value::Object(merge_map(Map::new(), p, path)?)),
        }
    }

    // Keys in the order the patch asks for: $setElementOrder, else the patch list.
    let patch_keys: Vec<&Value> = match order {
        Some(o) => o
            .iter()
            .filter_map(|i| merge_key_of(i, merge_key))
            .collect(),
        None => plain.iter().filter_map(|p| p.get(merge_key)).collect(),
    };
    let (patch_items, server_only): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|v| merge_key_of(v, merge_key).is_some_and(|k| patch_keys.contains(&k)));
    let same = |a: &Value, b: &Value| {
        merge_key_of(a, merge_key).is_some()
            && merge_key_of(a, merge_key) == merge_key_of(b, merge_key)
    };
    Ok(normalize_order(
        patch_items,
        server_only,
        &server_order,
        same,
        |v| merge_key_of(v, merge_key).and_then(|k| patch_keys.iter().position(|o| *o == k)),
    ))
}

/// Orders a merged list as apimachinery does: patch items by the patch's order, server-only
/// items by their live order, then the two interleaved by live position (`mergeSortedSlice`).
fn normalize_order(
    mut patch_items: Vec<Value>,
    mut server_only: Vec<Value>,
    server_order: &[Value],
    same: impl Fn(&Value, &Value) -> bool,
    patch_position: impl Fn(&Value) -> Option<usize>,
) -> Vec<Value> {
    let live_index = |v: &Value| server_order.iter().position(|o| same(o, v));
    patch_items.sort_by_key(|v| patch_position(v).unwrap_or(usize::MAX));
    server_only.sort_by_key(|v| live_index(v).unwrap_or(usize::MAX));
    let mut out = Vec::with_capacity(patch_items.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = patch_items.into_iter().peekable();
    loop {
        match (left.peek(), right.peek()) {
            (Some(l), Some(r)) => {
                let take_left =
                    matches!((live_index(l), live_index(r)), (Some(a), Some(b)) if a < b);
                let next = if take_left { left.next() } else { right.next() };
                out.extend(next);
            }
            (Some(_), None) => out.extend(left.next()),
            (None, Some(_)) => out.extend(right.next()),
            (None, None) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "labels": {"app": "web", "tier": "front"},
                "finalizers": ["a", "b"]
            },
            "spec": {
                "replicas": 2,
                "template": {"spec": {
                    "containers": [
                        {"name": "web", "image": "nginx:1.25",
                         "args": ["--a", "--b"],
                         "ports": [{"containerPort": 80, "name": "http"}],
                         "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                        {"name": "sidecar", "image": "envoy:1"}
                    ],
                    "tolerations": [{"key": "x", "operator": "Exists"}],
                    "volumes": [{"name": "data", "emptyDir": {}}]
                }}
            }
        })
    }

    fn containers(v: &Value) -> &Vec<Value> {
        v["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
    }

    fn has_directive(v: &Value) -> bool {
        match v {
            Value::Object(m) => m
                .iter()
                .any(|(k, v)| k.starts_with('$') || has_directive(v)),
            Value::Array(a) => a.iter().any(has_directive),
            _ => false,
        }
    }

    // --- JSON merge patch (RFC 7386 appendix A cases) ---

    #[test]
    fn merge_patch_rfc7386_examples() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (target, patch, want) in cases {
            let mut t = target.clone();
            json_merge_patch(&mut t, &patch);
            assert_eq!(t, want, "target {target} patch {patch}");
        }
    }

    #[test]
    fn merge_patch_replaces_lists_whole() {
        let mut d = deployment();
        json_merge_patch(
            &mut d,
            &json!({"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:1.26"}]}}}}),
        );
        assert_eq!(
            containers(&d),
            &vec![json!({"name":"web","image":"nginx:1.26"})]
        );
        assert_eq!(d["spec"]["replicas"], 2);
    }

    // --- JSON patch ---

    #[test]
    fn json_patch_applies_all_operations() {
        let mut d = json!({"metadata":{"labels":{"a":"1"}},"spec":{"replicas":1,"list":[1,2]}});
        json_patch(
            &mut d,
            &json!([
                {"op":"test","path":"/spec/replicas","value":1},
                {"op":"replace","path":"/spec/replicas","value":3},
                {"op":"add","path":"/metadata/labels/b","value":"2"},
                {"op":"add","path":"/spec/list/-","value":3},
                {"op":"remove","path":"/spec/list/0"},
                {"op":"copy","from":"/metadata/labels/a","path":"/metadata/labels/c"},
                {"op":"move","from":"/metadata/labels/a","path":"/metadata/labels/d"}
            ]),
        )
        .unwrap();
        assert_eq!(
            d,
            json!({"metadata":{"labels":{"b":"2","c":"1","d":"1"}},"spec":{"replicas":3,"list":[2,3]}})
        );
    }

    #[test]
    fn json_patch_error_names_op_and_path_and_leaves_target_unchanged() {
        let mut d = json!({"spec":{"replicas":1}});
        let err = json_patch(
            &mut d,
            &json!([
                {"op":"replace","path":"/spec/replicas","value":5},
                {"op":"remove","path":"/spec/missing"}
            ]),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("remove") && msg.contains("/spec/missing"),
            "{msg}"
        );
        assert!(matches!(
            err,
            PatchError::JsonPatchOperation { index: 1, .. }
        ));
        assert_eq!(d, json!({"spec":{"replicas":1}}));

        let err = json_patch(
            &mut d,
            &json!([{"op":"test","path":"/spec/replicas","value":2}]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("test /spec/replicas"), "{err}");
    }

    #[test]
    fn json_patch_rejects_non_list_body() {
        let mut d = json!({});
        let err = json_patch(&mut d, &json!({"op":"add"})).unwrap_err();
        assert!(matches!(err, PatchError::InvalidPatch(_)));
        assert_eq!(err.status_code(), 400);
        let err = json_patch(&mut d, &json!([{"op":"frobnicate","path":"/a"}])).unwrap_err();
        assert!(matches!(err, PatchError::InvalidPatch(_)));
    }

    // --- strategic merge patch ---

    #[test]
    fn smp_kubectl_reapply_patch_merges_container_by_name_and_strips_directives() {
        let mut d = deployment();
        let patch = json!({
            "metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{}"}},
            "spec":{"template":{"spec":{
                "$setElementOrder/containers":[{"name":"web"},{"name":"sidecar"}],
                "containers":[{"image":"nginx:1.26","name":"web"}]
            }}}
        });
        strategic_merge_patch(&mut d, &patch).unwrap();
        let c = containers(&d);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0]["name"], "web");
        assert_eq!(c[0]["image"], "nginx:1.26");
        // Fields of the merged item not in the patch are kept.
        assert_eq!(c[0]["args"], json!(["--a", "--b"]));
        assert_eq!(c[1], json!({"name":"sidecar","image":"envoy:1"}));
        assert_eq!(
            d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"],
            "{}"
        );
        assert!(!has_directive(&d), "{d}");
    }

    #[test]
    fn smp_null_deletes_and_maps_merge() {
        let mut d = deployment();
        strategic_merge_patch(
            &mut d,
            &json!({"metadata":{"labels":{"tier":null,"new":"x","absent":null}},"spec":{"replicas":null}}),
        )
        .unwrap();
        assert_eq!(d["metadata"]["labels"], json!({"app":"web","new":"x"}));
        assert!(d["spec"].get("replicas").is_none());
    }

    #[test]
    fn smp_nulls_in_new_subtrees_are_not_stored() {
        let mut d = json!({"spec":{}});
        strategic_merge_patch(
            &mut d,
            &json!({"spec":{"strategy":{"type":"Recreate","rollingUpdate":null}}}),
        )
        .unwrap();
        assert_eq!(d, json!({"spec":{"strategy":{"type":"Recreate"}}}));
    }

    #[test]
    fn smp_keyed_lists_merge_by_their_real_keys() {
        let mut d = deployment();
        strategic_merge_patch(
            &mut d,
            &json!({"spec":{"template":{"spec":{
                "containers":[{"name":"web",
                    "ports":[{"containerPort":80,"protocol":"TCP"},{"containerPort":9090,"name":"metrics"}],
                    "env":[{"name":"B","value":"20"},{"name":"C","value":"3"}],
                    "volumeMounts":[{"mountPath":"/data","name":"data"}]}],
                "volumes":[{"name":"cache","emptyDir":{}}]
            }}}}),
        )
        .unwrap();
        let web = &containers(&d)[0];
        assert_eq!(
            web["ports"],
            json!([{"containerPort":80,"name":"http","protocol":"TCP"},{"containerPort":9090,"name":"metrics"}])
        );
        assert_eq!(
            web["env"],
            json!([{"name":"A","value":"1"},{"name":"B","value":"20"},{"name":"C","value":"3"}])
        );
        assert_eq!(
            web["volumeMounts"],
            json!([{"mountPath":"/data","name":"data"}])
        );
        assert_eq!(
            d["spec"]["template"]["spec"]["volumes"],
            // New items go first, as with the real server (the kubectl patch docs show it).
            json!([{"name":"cache","emptyDir":{}},{"name":"data","emptyDir":{}}])
        );
    }

    #[test]
    fn smp_service_ports_merge_by_port() {
        let mut svc = json!({"kind":"Service","spec":{"ports":[
            {"port":80,"targetPort":8080,"name":"http"},{"port":443,"targetPort":8443,"name":"https"}]}});
        strategic_merge_patch(
            &mut svc,
            &json!({"spec":{"ports":[{"port":443,"targetPort":9443}]}}),
        )
        .unwrap();
        assert_eq!(
            svc["spec"]["ports"],
            json!([{"port":80,"targetPort":8080,"name":"http"},{"port":443,"targetPort":9443,"name":"https"}])
        );
    }

    #[test]
    fn smp_atomic_lists_are_replaced() {
        let mut d = deployment();
        strategic_merge_patch(
            &mut d,
            &json!({"spec":{"template":{"spec":{
                "tolerations":[{"key":"y","operator":"Exists"}],
                "containers":[{"name":"web","args":["--c"],"command":["run"]}]
            }}}}),
        )
        .unwrap();
        assert_eq!(
            d["spec"]["template"]["spec"]["tolerations"],
            json!([{"key":"y","operator":"Exists"}])
        );
        assert_eq!(containers(&d)[0]["args"], json!(["--c"]));
        assert_eq!(containers(&d)[0]["command"], json!(["run"]));
    }

    #[test]
    fn smp_conditions_owner_references_and_image_pull_secrets_by_key() {
        let mut d = json!({
            "metadata":{"ownerReferences":[{"uid":"u1","name":"a","kind":"X"}]},
            "spec":{"imagePullSecrets":[{"name":"r1"}]},
            "status":{"conditions":[{"type":"Available","status":"False"},{"type":"Progressing","status":"True"}]}
        });
        strategic_merge_patch(
            &mut d,
            &json!({
                "metadata":{"ownerReferences":[{"uid":"u2","name":"b","kind":"X"}]},
                "spec":{"imagePullSecrets":[{"name":"r2"}]},
                "status":{"conditions":[{"type":"Available","status":"True"}]}
            }),
        )
        .unwrap();
        assert_eq!(
            d["metadata"]["ownerReferences"].as_array().unwrap().len(),
            2
        );
        assert_eq!(
            d["spec"]["imagePullSecrets"],
            json!([{"name":"r2"},{"name":"r1"}])
        );
        assert_eq!(
            d["status"]["conditions"],
            json!([{"type":"Available","status":"True"},{"type":"Progressing","status":"True"}])
        );
    }

    #[test]
    fn smp_finalizers_merge_as_set_and_delete_from_primitive_list() {
        let mut d = deployment();
        strategic_merge_patch(&mut d, &json!({"metadata":{"finalizers":["b","c"]}})).unwrap();
        assert_eq!(d["metadata"]["finalizers"], json!(["a", "b", "c"]));
        strategic_merge_patch(
            &mut d,
            &json!({"metadata":{"$deleteFromPrimitiveList/finalizers":["a","zz"]}}),
        )
        .unwrap();
        assert_eq!(d["metadata"]["finalizers"], json!(["b", "c"]));
        strategic_merge_patch(
            &mut d,
            &json!({"metadata":{"$setElementOrder/finalizers":["c","b"]}}),
        )
        .unwrap();
        assert_eq!(d["metadata"]["finalizers"], json!(["c", "b"]));
        assert!(!has_directive(&d));
    }

    #[test]
    fn smp_patch_delete_removes_list_item_by_key() {
        let mut d = deployment();
        strategic_merge_patch(
            &mut d,
            &json!({"spec":{"template":{"spec":{
                "$setElementOrder/containers":[{"name":"web"}],
                "containers":[{"$patch":"delete","name":"sidecar"}],
            }}}}),
        )
        .unwrap();
        let c = containers(&d);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0]["name"], "web");
        assert!(!has_directive(&d));
    }

    #[test]
    fn smp_patch_replace_on_list_and_map() {
        let mut d = deployment();
        strategic_merge_patch(
            &mut d,
            &json!({"spec":{"template":{"spec":{
                "containers":[{"$patch":"replace"},{"name":"only","image":"busybox"}]
            }}}}),
        )
        .unwrap();
        assert_eq!(
            containers(&d),
            &vec![json!({"name":"only","image":"busybox"})]
        );

        strategic_merge_patch(
            &mut d,
            &json!({"metadata":{"labels":{"$patch":"replace","fresh":"1"}}}),
        )
        .unwrap();
        assert_eq!(d["metadata"]["labels"], json!({"fresh":"1"}));

        strategic_merge_patch(&mut d, &json!({"metadata":{"labels":{"$patch":"delete"}}})).unwrap();
        assert_eq!(d["metadata"]["labels"], json!({}));
        strategic_merge_patch(&mut d, &json!({"spec":{"absent":{"$patch":"delete"}}})).unwrap();
        assert!(d["spec"].get("absent").is_none());
        assert!(!has_directive(&d));
    }

    #[test]
    fn smp_retain_keys_clears_other_fields() {
        let mut d =
            json!({"spec":{"strategy":{"type":"RollingUpdate","rollingUpdate":{"maxSurge":1}}}});
        strategic_merge_patch(
            &mut d,
            &json!({"spec":{"strategy":{"$retainKeys":["type"],"type":"Recreate"}}}),
        )
        .unwrap();
        assert_eq!(d, json!({"spec":{"strategy":{"type":"Recreate"}}}));

        let err = strategic_merge_patch(
            &mut d,
            &json!({"spec":{"strategy":{"$retainKeys":["type"],"other":1}}}),
        )
        .unwrap_err();
        assert!(matches!(err, PatchError::Directive { .. }), "{err}");
    }

    #[test]
    fn smp_set_element_order_reorders_and_keeps_server_only_items() {
        let mut d = json!({"spec":{"containers":[
            {"name":"a","image":"1"},{"name":"injected","image":"2"},{"name":"b","image":"3"}]}});
        strategic_merge_patch(
            &mut d,
            &json!({"spec":{
                "$setElementOrder/containers":[{"name":"b"},{"name":"a"}],
                "containers":[{"name":"b","image":"30"}]
            }}),
        )
        .unwrap();
        let names: Vec<_> = d["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect();
        // The injected (server-only) item is kept; the patch's items follow the given order.
        assert!(names.contains(&"injected".to_owned()));
        let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
        assert!(pos("b") < pos("a"), "{names:?}");
        assert_eq!(d["spec"]["containers"][pos("b")]["image"], "30");
    }

    #[test]
    fn smp_directives_inside_new_fields_are_not_stored() {
        let mut d = json!({"spec":{}});
        strategic_merge_patch(
            &mut d,
            &json!({"spec":{"template":{"spec":{
                "$setElementOrder/containers":[{"name":"web"}],
                "containers":[{"name":"web","image":"x",
                    "$setElementOrder/env":[{"name":"A"}],"env":[{"name":"A","value":"1"}]}]
            }}}}),
        )
        .unwrap();
        assert_eq!(
            d,
            json!({"spec":{"template":{"spec":{"containers":[{"name":"web","image":"x","env":[{"name":"A","value":"1"}]}]}}}})
        );
    }

    #[test]
    fn smp_errors_leave_target_unchanged() {
        let mut d = deployment();
        let before = d.clone();
        let err = strategic_merge_patch(
            &mut d,
            &json!({"metadata":{"labels":{"x":"y"}},"spec":{"template":{"spec":{"containers":[{"image":"no-name"}]}}}}),
        )
        .unwrap_err();
        assert!(matches!(err, PatchError::MissingMergeKey { .. }), "{err}");
        assert_eq!(d, before);
        let err = strategic_merge_patch(&mut d, &json!({"spec":{"$patch":"explode"}})).unwrap_err();
        assert!(err.to_string().contains(".spec"), "{err}");
        assert!(strategic_merge_patch(&mut d, &json!([1])).is_err());
        assert_eq!(d, before);
    }

    fn names(list: &Value) -> Vec<&str> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect()
    }

    /// Expectations taken from `kubectl patch --local --type strategic`, which runs the same
    /// apimachinery code as the API server.
    #[test]
    fn smp_matches_kubectl_local_patch_results() {
        let order = |order: Value, patch: Value| {
            let mut d = deployment();
            let mut p =
                json!({"spec":{"template":{"spec":{"$setElementOrder/containers": order}}}});
            if !patch.is_null() {
                p["spec"]["template"]["spec"]["containers"] = patch;
            }
            strategic_merge_patch(&mut d, &p).unwrap();
            d["spec"]["template"]["spec"]["containers"].clone()
        };
        let new = json!([{"name":"new","image":"n"}]);
        let c = order(
            json!([{"name":"new"},{"name":"web"},{"name":"sidecar"}]),
            new.clone(),
        );
        assert_eq!(names(&c), ["new", "web", "sidecar"]);
        let c = order(
            json!([{"name":"web"},{"name":"new"},{"name":"sidecar"}]),
            new,
        );
        assert_eq!(names(&c), ["web", "new", "sidecar"]);
        let c = order(json!([{"name":"sidecar"},{"name":"web"}]), Value::Null);
        assert_eq!(names(&c), ["sidecar", "web"]);

        // Container ports merge by containerPort alone; volumeMounts by mountPath.
        let mut pod = json!({"spec":{"containers":[{"name":"a","image":"1",
            "ports":[{"containerPort":80,"protocol":"TCP","name":"h"},{"containerPort":53,"protocol":"UDP"}],
            "volumeMounts":[{"name":"v","mountPath":"/a"},{"name":"w","mountPath":"/b"}],"args":["x","y"]}],
            "volumes":[{"name":"v","emptyDir":{}},{"name":"w","configMap":{"name":"cm"}}]}});
        strategic_merge_patch(
            &mut pod,
            &json!({"spec":{
                "containers":[{"name":"a",
                    "ports":[{"containerPort":53,"protocol":"TCP"},{"containerPort":8080}],
                    "volumeMounts":[{"mountPath":"/b","readOnly":true}],"args":["z"]}],
                "volumes":[{"name":"w","$retainKeys":["name","secret"],"secret":{"secretName":"s"}}]}}),
        )
        .unwrap();
        assert_eq!(
            pod["spec"]["containers"][0],
            json!({"args":["z"],"image":"1","name":"a",
                "ports":[{"containerPort":80,"name":"h","protocol":"TCP"},{"containerPort":53,"protocol":"TCP"},{"containerPort":8080}],
                "volumeMounts":[{"mountPath":"/a","name":"v"},{"mountPath":"/b","name":"w","readOnly":true}]})
        );
        assert_eq!(
            pod["spec"]["volumes"],
            json!([{"emptyDir":{},"name":"v"},{"name":"w","secret":{"secretName":"s"}}])
        );

        let mut d =
            json!({"spec":{"strategy":{"type":"RollingUpdate","rollingUpdate":{"maxSurge":1}}}});
        strategic_merge_patch(
            &mut d,
            &json!({"spec":{"strategy":{"$retainKeys":["rollingUpdate","type"],"rollingUpdate":{"maxUnavailable":0}}}}),
        )
        .unwrap();
        assert_eq!(
            d["spec"]["strategy"],
            json!({"rollingUpdate":{"maxSurge":1,"maxUnavailable":0},"type":"RollingUpdate"})
        );
        // A null next to $retainKeys needs no retaining (kubectl sends this on a strategy change).
        strategic_merge_patch(
            &mut d,
            &json!({"spec":{"strategy":{"$retainKeys":["type"],"type":"Recreate","rollingUpdate":null}}}),
        )
        .unwrap();
        assert_eq!(d["spec"]["strategy"], json!({"type":"Recreate"}));

        let mut svc = json!({"metadata":{"finalizers":["a/x","b/y"]}});
        strategic_merge_patch(
            &mut svc,
            &json!({"metadata":{"$setElementOrder/finalizers":["b/y","n/n","a/x"],"finalizers":["n/n"]}}),
        )
        .unwrap();
        assert_eq!(svc["metadata"]["finalizers"], json!(["b/y", "n/n", "a/x"]));
    }

    #[test]
    fn smp_edge_cases() {
        let mut d = json!({"metadata":{"name":"x"}});
        // Deleting from a list that is not there, and nulls for absent keys: no-ops.
        strategic_merge_patch(
            &mut d,
            &json!({"metadata":{"$deleteFromPrimitiveList/finalizers":["a"],"labels":null}}),
        )
        .unwrap();
        assert_eq!(d, json!({"metadata":{"name":"x"}}));
        let err =
            strategic_merge_patch(&mut d, &json!({"metadata":{"$frobnicate":1}})).unwrap_err();
        assert!(err.to_string().contains("$frobnicate"), "{err}");
        assert_eq!(err.status_code(), 400);
        // A scalar replaced by a map, and a map by a scalar.
        strategic_merge_patch(&mut d, &json!({"metadata":{"name":{"a":1}}})).unwrap();
        assert_eq!(d["metadata"]["name"], json!({"a":1}));
        strategic_merge_patch(&mut d, &json!({"metadata":{"name":"y"}})).unwrap();
        assert_eq!(d["metadata"]["name"], "y");
        // A list item lacking its merge key is refused with 422.
        let err = strategic_merge_patch(&mut d, &json!({"spec":{"containers":[{"image":"i"}]}}))
            .unwrap_err();
        assert_eq!(err.status_code(), 422);
    }

    #[test]
    fn json_patch_on_the_root_and_escaped_paths() {
        let mut d = json!({"metadata":{"annotations":{"a/b":"1","c~d":"2"}}});
        json_patch(
            &mut d,
            &json!([
                {"op":"remove","path":"/metadata/annotations/a~1b"},
                {"op":"replace","path":"/metadata/annotations/c~0d","value":"3"}
            ]),
        )
        .unwrap();
        assert_eq!(d, json!({"metadata":{"annotations":{"c~d":"3"}}}));
        json_patch(&mut d, &json!([{"op":"replace","path":"","value":{"x":1}}])).unwrap();
        assert_eq!(d, json!({"x":1}));
    }

    #[test]
    fn list_types_follow_the_real_merge_keys() {
        let pod = ["spec", "template", "spec"];
        assert_eq!(list_type(&pod, "containers"), ListType::Map(&["name"]));
        assert_eq!(
            list_type(&["spec", "template", "spec", "containers"], "ports"),
            ListType::Map(&["containerPort", "protocol"])
        );
        assert_eq!(
            list_type(&["spec"], "ports"),
            ListType::Map(&["port", "protocol"])
        );
        assert_eq!(
            list_type(&["spec", "containers"], "volumeMounts"),
            ListType::Map(&["mountPath"])
        );
        assert_eq!(list_type(&pod, "tolerations"), ListType::Atomic);
        assert_eq!(list_type(&["spec", "containers"], "args"), ListType::Atomic);
        assert_eq!(list_type(&["metadata"], "finalizers"), ListType::Set);
        assert_eq!(list_type(&["spec"], "rules"), ListType::Atomic);
    }
}
