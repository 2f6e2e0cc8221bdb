//! Server-side apply and `metadata.managedFields`, as the real API server (structured-merge-diff) keeps them.
//!
//! A field set is the set of paths a manager owns, stored in the `FieldsV1` form
//! (`{"f:spec":{"f:replicas":{}}}`): `f:` names a map field, `k:{…}` an item of an associative
//! list by its key fields, `v:…` a member of a set, and `.` marks a node that is owned itself
//! while also having owned children. Which lists are associative, sets or atomic comes from the
//! registry shared with strategic merge ([`super::patch`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::patch::{ListType, list_type};

/// Why an apply was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Fields the applied configuration changes are owned by other managers (409 Conflict
    /// with reason `Conflict`); `conflicts` holds `(manager, field path)` pairs such as
    /// `("kubectl-client-side-apply", ".spec.replicas")`, `message` the real server's text.
    /// `causes` holds the `(message, field)` pairs of the Status' `details.causes`, the
    /// manager printed as the real server prints it (`conflict with "edit" using v1`).
    #[error("{message}")]
    Conflict {
        conflicts: Vec<(String, String)>,
        causes: Vec<(String, String)>,
        message: String,
    },
    /// The applied configuration is not an object with `apiVersion` and `kind` (400).
    #[error("invalid apply configuration: {0}")]
    InvalidConfig(String),
    /// The live object's `metadata.managedFields` cannot be read (500 on the real server).
    #[error("invalid managedFields: {0}")]
    InvalidManagedFields(String),
}

impl ApplyError {
    /// The HTTP status the real API server answers with (409 for conflicts).
    pub fn status_code(&self) -> u16 {
        match self {
            Self::Conflict { .. } => 409,
            Self::InvalidConfig(_) => 400,
            Self::InvalidManagedFields(_) => 500,
        }
    }

    /// The `(message, field)` pairs of a Status' `details.causes` (type
    /// `FieldManagerConflict`), one per conflicting field.
    pub fn causes(&self) -> Vec<(String, String)> {
        match self {
            Self::Conflict { causes, .. } => causes.clone(),
            _ => Vec::new(),
        }
    }
}

// === Paths and field sets ===

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum PathElement {
    /// A map field: shared, as every path below it repeats it (a field set holds one path
    /// per leaf, and cloning a path is then a count increment per step, not a string copy).
    Field(Arc<str>),
    /// An associative list item, by its key fields.
    Key(Parsed),
    /// A set member.
    Value(Parsed),
    /// A list index (only read from foreign field sets; never produced here).
    Index(usize),
}

/// A JSON value with its canonical text (compact, keys sorted): compared, ordered and hashed
/// by the text, matched against list items by the value without re-parsing.
#[derive(Debug, Clone)]
struct Parsed {
    text: String,
    value: Value,
}

impl Parsed {
    fn new(value: Value) -> Self {
        Self {
            text: canonical_json(&value),
            value,
        }
    }
}

impl PartialEq for Parsed {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Parsed {}

impl PartialOrd for Parsed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Parsed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl std::hash::Hash for Parsed {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

/// Compact JSON with object keys sorted, whatever serde_json's map ordering is.
fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, &Value> = m.iter().collect();
            let parts: Vec<String> = sorted
                .iter()
                .map(|(k, v)| format!("{}:{}", Value::String((*k).clone()), canonical_json(v)))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical_json).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

type Path = Vec<PathElement>;
type FieldSet = BTreeSet<Path>;

impl PathElement {
    /// Appends the FieldsV1 key (`f:name`, `k:{…}`, `v:…`, `i:N`) to `out`.
    fn encode_into(&self, out: &mut String) {
        use std::fmt::Write;
        let (prefix, text) = match self {
            Self::Field(f) => ("f:", &**f),
            Self::Key(k) => ("k:", k.text.as_str()),
            Self::Value(v) => ("v:", v.text.as_str()),
            Self::Index(i) => {
                let _ = write!(out, "i:{i}");
                return;
            }
        };
        out.push_str(prefix);
        out.push_str(text);
    }

    fn decode(s: &str) -> Result<Self, ApplyError> {
        let bad = || ApplyError::InvalidManagedFields(format!("bad path element {s:?}"));
        if let Some(f) = s.strip_prefix("f:") {
            Ok(Self::Field(f.into()))
        } else if let Some(k) = s.strip_prefix("k:") {
            match serde_json::from_str::<Value>(k) {
                Ok(v @ Value::Object(_)) => Ok(Self::Key(Parsed::new(v))),
                _ => Err(bad()),
            }
        } else if let Some(v) = s.strip_prefix("v:") {
            let v: Value = serde_json::from_str(v).map_err(|_| bad())?;
            Ok(Self::Value(Parsed::new(v)))
        } else if let Some(i) = s.strip_prefix("i:") {
            i.parse().map(Self::Index).map_err(|_| bad())
        } else {
            Err(bad())
        }
    }

    /// The list item this element selects, if `value` is a list holding it.
    fn find(&self, items: &[Value]) -> Option<usize> {
        match self {
            Self::Key(k) => items.iter().position(|i| item_matches(i, &k.value)),
            Self::Value(v) => items.iter().position(|i| *i == v.value),
            Self::Index(i) => (*i < items.len()).then_some(*i),
            Self::Field(_) => None,
        }
    }
}

/// A path as the real server prints it in conflicts: `.spec.containers[name="web"].image`.
fn display_path(path: &[PathElement]) -> String {
    let mut out = String::new();
    for pe in path {
        match pe {
            PathElement::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            PathElement::Key(k) => {
                let parts: Vec<String> = k
                    .value
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                out.push_str(&format!("[{}]", parts.join(",")));
            }
            PathElement::Value(v) => out.push_str(&format!("[={}]", v.text)),
            PathElement::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The value a key field has when the item leaves it out (the server defaults a port's
/// protocol to TCP before keys are compared).
fn key_field_default(field: &str) -> Option<Value> {
    (field == "protocol").then(|| Value::String("TCP".to_owned()))
}

fn key_field(item: &Map<String, Value>, field: &str) -> Option<Value> {
    item.get(field)
        .cloned()
        .or_else(|| key_field_default(field))
}

/// The key of an associative list item: its key fields (defaults filled in).
fn item_key(item: &Map<String, Value>, keys: &[&str]) -> Parsed {
    Parsed::new(Value::Object(
        keys.iter()
            .filter_map(|k| key_field(item, k).map(|v| ((*k).to_owned(), v)))
            .collect(),
    ))
}

fn item_matches(item: &Value, key: &Value) -> bool {
    let (Value::Object(item), Value::Object(key)) = (item, key) else {
        return false;
    };
    key.iter().all(|(f, want)| match item.get(f) {
        Some(v) => v == want,
        None => key_field_default(f).as_ref() == Some(want),
    })
}

/// Metadata fields the server owns: never in a field set, never taken from an applied config.
const SERVER_METADATA: [&str; 10] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

fn is_server_owned(names: &[String], field: &str) -> bool {
    match names {
        [] => matches!(field, "apiVersion" | "kind" | "status"),
        [m] if m == "metadata" => SERVER_METADATA.contains(&field),
        _ => false,
    }
}

/// Maps owned whole (`+structType=atomic` / `+mapType=atomic`): label selectors and node selectors.
fn is_atomic_map(field: &str) -> bool {
    matches!(field, "selector" | "nodeSelector")
}

fn parent_names(names: &[String]) -> Vec<&str> {
    names.iter().map(String::as_str).collect()
}

/// The field set of an object (or an applied configuration), server-owned fields excluded.
fn fields_of(obj: &Value) -> FieldSet {
    collect(obj).set
}

/// Walks an object into its field set, noting associative-list items with duplicate keys.
#[derive(Default)]
struct Collector {
    path: Path,
    names: Vec<String>,
    set: FieldSet,
    /// Real-server style messages: `.spec.containers: duplicate entries for key [name="a"]`.
    duplicates: Vec<String>,
}

fn collect(obj: &Value) -> Collector {
    let mut c = Collector::default();
    if let Value::Object(m) = obj {
        c.map(m);
    }
    c
}

impl Collector {
    fn map(&mut self, map: &Map<String, Value>) {
        for (k, v) in map {
            if is_server_owned(&self.names, k) {
                continue;
            }
            self.path.push(PathElement::Field(k.as_str().into()));
            self.field(k, v);
            self.path.pop();
        }
    }

    fn leaf(&mut self) {
        self.set.insert(self.path.clone());
    }

    fn field(&mut self, field: &str, value: &Value) {
        match value {
            Value::Object(m) if !m.is_empty() && !is_atomic_map(field) => {
                self.names.push(field.to_owned());
                self.map(m);
                self.names.pop();
            }
            Value::Array(items) if !items.is_empty() => {
                match list_type(&parent_names(&self.names), field) {
                    ListType::Atomic => self.leaf(),
                    ListType::Set => {
                        for item in items {
                            self.path
                                .push(PathElement::Value(Parsed::new(item.clone())));
                            self.leaf();
                            self.path.pop();
                        }
                    }
                    // Not the shape the schema expects: owned whole.
                    ListType::Map(_) if items.iter().any(|i| !i.is_object()) => self.leaf(),
                    ListType::Map(keys) => {
                        self.names.push(field.to_owned());
                        for item in items.iter().filter_map(Value::as_object) {
                            self.path.push(PathElement::Key(item_key(item, keys)));
                            if !self.set.insert(self.path.clone())
                                && let Some((key, list)) = self.path.split_last()
                            {
                                self.duplicates.push(format!(
                                    "{}: duplicate entries for key {}",
                                    display_path(list),
                                    display_path(std::slice::from_ref(key)),
                                ));
                            }
                            self.map(item);
                            self.path.pop();
                        }
                        self.names.pop();
                    }
                }
            }
            // Scalars, nulls, empty maps and lists, atomic maps: owned as a leaf.
            _ => self.leaf(),
        }
    }
}

/// Whether `set` holds a path strictly below `path`.
fn has_descendant(set: &FieldSet, path: &Path) -> bool {
    set.range::<Path, _>((Bound::Excluded(path), Bound::Unbounded))
        .next()
        .is_some_and(|q| q.starts_with(path))
}

fn step<'a>(value: &'a Value, pe: &PathElement) -> Option<&'a Value> {
    match (pe, value) {
        (PathElement::Field(f), Value::Object(m)) => m.get(&**f),
        (_, Value::Array(items)) => pe.find(items).map(|i| &items[i]),
        _ => None,
    }
}

fn step_mut<'a>(value: &'a mut Value, pe: &PathElement) -> Option<&'a mut Value> {
    match (pe, value) {
        (PathElement::Field(f), Value::Object(m)) => m.get_mut(&**f),
        (_, Value::Array(items)) => pe.find(items).map(|i| &mut items[i]),
        _ => None,
    }
}

fn get<'a>(obj: &'a Value, path: &Path) -> Option<&'a Value> {
    path.iter().try_fold(obj, step)
}

/// Removes the node at `path` (a map field, a list item, a set member) if it is there.
fn remove(obj: &mut Value, path: &Path) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let Some(container) = parent.iter().try_fold(obj, step_mut) else {
        return;
    };
    match (last, container) {
        (PathElement::Field(f), Value::Object(m)) => {
            m.remove(&**f);
        }
        (_, Value::Array(items)) => {
            // Every match goes: a duplicated key or member is not half-removed.
            while let Some(i) = last.find(items) {
                items.remove(i);
                if matches!(last, PathElement::Index(_)) {
                    break;
                }
            }
        }
        _ => {}
    }
}

/// As the real server, whose field sets also own the maps that hold an applier's fields
/// (`.`): a map that the removal of `path` left empty goes too (a dropped `startupProbe`
/// leaves no `startupProbe: {httpGet: {}}`), unless another manager owns it or something in
/// it, or the applied configuration still sets it. Stops at list items.
fn prune_emptied_maps(obj: &mut Value, path: &Path, others: &FieldSet, applied: &FieldSet) {
    for n in (1..path.len()).rev() {
        if !matches!(path[n - 1], PathElement::Field(_)) {
            break;
        }
        let parent: Path = path[..n].to_vec();
        let emptied = matches!(get(obj, &parent), Some(Value::Object(m)) if m.is_empty());
        let kept = others.contains(&parent)
            || has_descendant(others, &parent)
            || applied.contains(&parent)
            || has_descendant(applied, &parent);
        if !emptied || kept {
            break;
        }
        remove(obj, &parent);
    }
}

// === FieldsV1 ===

#[derive(Default)]
struct Node {
    member: bool,
    children: BTreeMap<String, Node>,
}

impl Node {
    fn into_value(self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".to_owned(), Value::Object(Map::new()));
        }
        for (k, child) in self.children {
            m.insert(k, child.into_value());
        }
        Value::Object(m)
    }
}

fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Node::default();
    // The key is encoded into one buffer and only copied for a node not seen yet: paths
    // share most of their steps.
    let mut key = String::new();
    for path in set {
        let mut node = &mut root;
        for pe in path {
            key.clear();
            pe.encode_into(&mut key);
            if !node.children.contains_key(key.as_str()) {
                node.children.insert(key.clone(), Node::default());
            }
            node = node.children.get_mut(key.as_str()).expect("inserted above");
        }
        node.member = true;
    }
    root.into_value()
}

fn from_fields_v1(value: &Value) -> Result<FieldSet, ApplyError> {
    fn walk(value: &Value, prefix: &mut Path, out: &mut FieldSet) -> Result<(), ApplyError> {
        let Value::Object(m) = value else {
            return Err(ApplyError::InvalidManagedFields(
                "fieldsV1 nodes must be objects".to_owned(),
            ));
        };
        if m.is_empty() && !prefix.is_empty() {
            out.insert(prefix.clone());
        }
        for (k, child) in m {
            if k == "." {
                if !prefix.is_empty() {
                    out.insert(prefix.clone());
                }
                continue;
            }
            prefix.push(PathElement::decode(k)?);
            walk(child, prefix, out)?;
            prefix.pop();
        }
        Ok(())
    }
    let mut out = FieldSet::new();
    walk(value, &mut Vec::new(), &mut out)?;
    Ok(out)
}

/// Returns an object's field set in `FieldsV1` form (server-owned fields excluded): what a
/// manager that wrote the whole object would own.
pub fn field_set(obj: &Value) -> Value {
    to_fields_v1(&fields_of(obj))
}

// === managedFields entries ===

const APPLY: &str = "Apply";
const UPDATE: &str = "Update";

#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    subresource: Option<String>,
    set: FieldSet,
}

impl Entry {
    fn is(&self, manager: &str, operation: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.is_none()
    }

    /// How the real server names a manager in conflict messages (`printManager`). The
    /// manager identifier it prints never carries the time (`BuildManagerIdentifier`), so
    /// neither does this.
    fn describe(&self) -> String {
        let mut s = format!("\"{}\"", self.manager);
        if let Some(sub) = &self.subresource {
            s.push_str(&format!(" with subresource \"{sub}\""));
        }
        if self.operation == UPDATE {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }

    fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("apiVersion".into(), Value::String(self.api_version.clone()));
        m.insert("fieldsType".into(), Value::String("FieldsV1".into()));
        m.insert("fieldsV1".into(), to_fields_v1(&self.set));
        m.insert("manager".into(), Value::String(self.manager.clone()));
        m.insert("operation".into(), Value::String(self.operation.clone()));
        if let Some(sub) = &self.subresource {
            m.insert("subresource".into(), Value::String(sub.clone()));
        }
        if let Some(t) = &self.time {
            m.insert("time".into(), Value::String(t.clone()));
        }
        Value::Object(m)
    }
}

fn managed_fields_value(obj: &Value) -> Option<&Value> {
    obj.get("metadata")?.get("managedFields")
}

fn read_entries(obj: &Value) -> Result<Vec<Entry>, ApplyError> {
    let Some(list) = managed_fields_value(obj) else {
        return Ok(Vec::new());
    };
    let Value::Array(list) = list else {
        return match list {
            Value::Null => Ok(Vec::new()),
            _ => Err(ApplyError::InvalidManagedFields(
                "metadata.managedFields must be a list".into(),
            )),
        };
    };
    let text = |e: &Value, k: &str| e.get(k).and_then(Value::as_str).map(str::to_owned);
    list.iter()
        .map(|e| {
            if let Some(t) = text(e, "fieldsType")
                && t != "FieldsV1"
            {
                return Err(ApplyError::InvalidManagedFields(format!(
                    "unsupported fieldsType {t}"
                )));
            }
            Ok(Entry {
                manager: text(e, "manager").unwrap_or_default(),
                operation: text(e, "operation").unwrap_or_else(|| UPDATE.to_owned()),
                api_version: text(e, "apiVersion").unwrap_or_default(),
                time: text(e, "time"),
                subresource: text(e, "subresource"),
                set: match e.get("fieldsV1") {
                    Some(v) => from_fields_v1(v)?,
                    None => FieldSet::new(),
                },
            })
        })
        .collect()
}

/// Stores the entries, sorted as the real server sorts them (operation, time, manager), empty
/// sets dropped.
fn write_entries(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.set.is_empty());
    entries.sort_by(|a, b| {
        (
            &a.operation,
            &a.time,
            &a.manager,
            &a.api_version,
            &a.subresource,
        )
            .cmp(&(
                &b.operation,
                &b.time,
                &b.manager,
                &b.api_version,
                &b.subresource,
            ))
    });
    let Value::Object(root) = obj else {
        return;
    };
    let meta = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    if let Value::Object(meta) = meta {
        if entries.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert(
                "managedFields".into(),
                Value::Array(entries.iter().map(Entry::to_value).collect()),
            );
        }
    }
}

/// Whether two objects are equal apart from their managedFields (did a write change anything?).
fn same_data(a: &Value, b: &Value) -> bool {
    fn same_map(a: &Map<String, Value>, b: &Map<String, Value>, skip: &str) -> bool {
        let count = |m: &Map<String, Value>| m.keys().filter(|k| *k != skip).count();
        count(a) == count(b)
            && a.iter()
                .filter(|(k, _)| *k != skip)
                .all(|(k, v)| b.get(k) == Some(v))
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let meta = |m: &Map<String, Value>| m.get("metadata").cloned().unwrap_or(Value::Null);
            let metadata_same = match (x.get("metadata"), y.get("metadata")) {
                (Some(Value::Object(mx)), Some(Value::Object(my))) => {
                    same_map(mx, my, "managedFields")
                }
                _ => meta(x) == meta(y),
            };
            metadata_same && same_map(x, y, "metadata")
        }
        _ => a == b,
    }
}

// === Apply ===

/// Merges an applied configuration into the object: maps by field, associative lists by key,
/// sets by member, atomic lists and maps replaced; `null` removes the field.
fn merge_applied(
    live: &mut Map<String, Value>,
    applied: &Map<String, Value>,
    names: &mut Vec<String>,
) {
    for (k, v) in applied {
        if is_server_owned(names, k) {
            continue;
        }
        if v.is_null() {
            live.remove(k);
            continue;
        }
        let kind = list_type(&parent_names(names), k);
        names.push(k.clone());
        match v {
            Value::Object(m) if !is_atomic_map(k) => {
                let slot = live
                    .entry(k.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(slot) = slot {
                    merge_applied(slot, m, names);
                }
            }
            Value::Array(items) if kind != ListType::Atomic => {
                let slot = live
                    .entry(k.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if !slot.is_array() {
                    *slot = Value::Array(Vec::new());
                }
                if let Value::Array(slot) = slot {
                    merge_applied_list(slot, items, kind, names);
                }
            }
            _ => {
                live.insert(k.clone(), without_nulls(v));
            }
        }
        names.pop();
    }
}

fn merge_applied_list(
    live: &mut Vec<Value>,
    applied: &[Value],
    kind: ListType,
    names: &mut Vec<String>,
) {
    match kind {
        ListType::Map(keys) if applied.iter().all(Value::is_object) => {
            let key_of = |v: &Value| match v {
                Value::Object(m) => item_key(m, keys).text,
                other => format!("!{other}"),
            };
            *live = merge_ordered(std::mem::take(live), applied, key_of, |l, a| match (l, a) {
                (Some(Value::Object(mut existing)), Value::Object(item)) => {
                    merge_applied(&mut existing, item, names);
                    Value::Object(existing)
                }
                _ => without_nulls(a),
            });
        }
        ListType::Set => {
            *live = merge_ordered(std::mem::take(live), applied, canonical_json, |_, a| {
                a.clone()
            });
        }
        _ => *live = applied.iter().map(without_nulls).collect(),
    }
}

/// Merges the items of an applied list into the live list in structured-merge-diff's order:
/// live-only items keep their place, applied items come in the applied order, and an item in
/// both is merged where the applied order reaches it.
fn merge_ordered(
    live: Vec<Value>,
    applied: &[Value],
    key_of: impl Fn(&Value) -> String,
    mut merge: impl FnMut(Option<Value>, &Value) -> Value,
) -> Vec<Value> {
    let lhs: Vec<String> = live.iter().map(&key_of).collect();
    let rhs: Vec<String> = applied.iter().map(&key_of).collect();
    let in_rhs: HashSet<&str> = rhs.iter().map(String::as_str).collect();
    let lhs_index: HashMap<&str, usize> = lhs
        .iter()
        .enumerate()
        .rev()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let mut shared = rhs
        .iter()
        .filter(|k| lhs_index.contains_key(k.as_str()))
        .map(String::as_str);
    let mut next_shared = shared.next();
    let mut live: Vec<Option<Value>> = live.into_iter().map(Some).collect();
    let mut merged_rhs = HashSet::new();
    let mut out = Vec::with_capacity(live.len().max(applied.len()));
    let (mut li, mut ri) = (0, 0);
    while li < lhs.len() || ri < rhs.len() {
        if li < lhs.len() && ri < rhs.len() {
            if lhs[li] == rhs[ri] {
                merged_rhs.insert(rhs[ri].as_str());
                out.push(merge(live[li].take(), &applied[ri]));
                li += 1;
                ri += 1;
                next_shared = shared.next();
                continue;
            }
            if in_rhs.contains(lhs[li].as_str()) && next_shared.is_some_and(|n| n != lhs[li]) {
                // Shared, but the applied order reaches it later: it is merged then.
                li += 1;
                continue;
            }
        }
        if li < lhs.len() {
            if !in_rhs.contains(lhs[li].as_str()) {
                out.extend(live[li].take());
                li += 1;
                continue;
            }
            if merged_rhs.contains(lhs[li].as_str()) {
                li += 1;
                continue;
            }
        }
        if ri < rhs.len() {
            let key = rhs[ri].as_str();
            merged_rhs.insert(key);
            let existing = lhs_index.get(key).and_then(|&i| live[i].take());
            out.push(merge(existing, &applied[ri]));
            ri += 1;
            if next_shared == Some(key) {
                next_shared = shared.next();
            }
        }
    }
    out
}

fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// Server-side apply of `applied` (the user's partial intent) by `manager` onto `live` (None
/// on create). Returns the new object with `metadata.managedFields` updated:
/// - the manager's `Apply` entry becomes exactly the applied configuration's field set;
/// - a field the configuration changes that another manager owns is a conflict, unless
///   `force`, which moves the field to this manager;
/// - fields this manager applied before, no longer applied and owned by nobody else, are
///   removed from the object;
/// - applying unchanged intent returns the live object unchanged (entry time included).
///
/// # Errors
/// [`ApplyError::Conflict`] listing every conflicting `(manager, path)`;
/// [`ApplyError::InvalidConfig`] if `applied` is not an object with apiVersion and kind;
/// [`ApplyError::InvalidManagedFields`] if the live object's managedFields are unreadable.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, ApplyError> {
    let Value::Object(applied_map) = applied else {
        return Err(ApplyError::InvalidConfig("must be a JSON object".into()));
    };
    let text = |k: &str| {
        applied_map
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let (Some(api_version), Some(kind)) = (text("apiVersion"), text("kind")) else {
        return Err(ApplyError::InvalidConfig(
            "apiVersion and kind must be set".into(),
        ));
    };

    let mut entries = match live {
        Some(l) => read_entries(l)?,
        None => Vec::new(),
    };
    if let Some(l) = live
        && entries.is_empty()
    {
        // As the real server: an object nobody manages yet is owned by "before-first-apply",
        // so the first applier cannot silently change what an earlier writer set.
        entries.push(Entry {
            manager: "before-first-apply".into(),
            operation: UPDATE.into(),
            api_version: l
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or(api_version)
                .to_owned(),
            time: Some(now.to_owned()),
            subresource: None,
            set: fields_of(l),
        });
    }

    let Collector {
        set: applied_set,
        duplicates,
        ..
    } = collect(applied);
    if !duplicates.is_empty() {
        return Err(ApplyError::InvalidConfig(duplicates.join("; ")));
    }
    let mut merged = match live {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    for (k, v) in [("apiVersion", api_version), ("kind", kind)] {
        merged
            .entry(k)
            .or_insert_with(|| Value::String(v.to_owned()));
    }
    for k in ["name", "namespace", "generateName"] {
        if let Some(v) = applied_map.get("metadata").and_then(|m| m.get(k)) {
            let meta = merged
                .entry("metadata")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(meta) = meta {
                meta.entry(k).or_insert_with(|| v.clone());
            }
        }
    }
    merge_applied(&mut merged, applied_map, &mut Vec::new());
    let mut merged = Value::Object(merged);

    // Conflicts: applied leaves whose value changes and that another manager owns.
    let mut conflicts: Vec<(usize, Path)> = Vec::new();
    if let Some(l) = live {
        for path in &applied_set {
            if has_descendant(&applied_set, path) {
                continue;
            }
            let before = get(l, path);
            if before.is_none() || before == get(&merged, path) {
                continue;
            }
            for (i, e) in entries.iter().enumerate() {
                if !e.is(manager, APPLY) && e.set.contains(path) {
                    conflicts.push((i, path.clone()));
                }
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            return Err(conflict_error(&entries, &conflicts));
        }
        for (i, path) in &conflicts {
            entries[*i].set.remove(path);
        }
    }

    // Fields this manager applied before and dropped now go, unless someone else owns them.
    let previous = entries
        .iter()
        .find(|e| e.is(manager, APPLY))
        .map(|e| e.set.clone())
        .unwrap_or_default();
    let others: FieldSet = entries
        .iter()
        .filter(|e| !e.is(manager, APPLY))
        .flat_map(|e| e.set.iter().cloned())
        .collect();
    let removable: FieldSet = previous
        .difference(&applied_set)
        .filter(|p| {
            !others.contains(*p) && !has_descendant(&others, p) && !has_descendant(&applied_set, p)
        })
        .cloned()
        .collect();
    for path in &removable {
        // Removing an item takes its fields along; removing the fields first would lose the
        // key the item is found by.
        let ancestor_goes = (1..path.len()).any(|n| removable.contains(&path[..n]));
        if !ancestor_goes {
            remove(&mut merged, path);
            prune_emptied_maps(&mut merged, path, &others, &applied_set);
        }
    }

    // Fields the write took out of the object leave every other manager's set.
    if let Some(l) = live {
        for e in entries.iter_mut().filter(|e| !e.is(manager, APPLY)) {
            e.set
                .retain(|p| get(&merged, p).is_some() || get(l, p).is_none());
        }
    }

    // As the real server: the entry's time moves only when the object changed, so applying
    // unchanged intent (even by a manager taking shared ownership) writes nothing new.
    let changed_object = live.is_none_or(|l| !same_data(l, &merged));
    let time = changed_object.then(|| now.to_owned());
    match entries.iter_mut().find(|e| e.is(manager, APPLY)) {
        Some(e) => {
            e.time = time.or(e.time.take());
            e.set = applied_set;
            e.api_version = api_version.to_owned();
        }
        None => entries.push(Entry {
            manager: manager.to_owned(),
            operation: APPLY.into(),
            api_version: api_version.to_owned(),
            time,
            subresource: None,
            set: applied_set,
        }),
    }
    write_entries(&mut merged, entries);
    Ok(merged)
}

fn conflict_error(entries: &[Entry], conflicts: &[(usize, Path)]) -> ApplyError {
    let message = if let [(i, path)] = conflicts {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            entries[*i].describe(),
            display_path(path)
        )
    } else {
        let mut by_manager: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (i, path) in conflicts {
            by_manager
                .entry(entries[*i].describe())
                .or_default()
                .push(display_path(path));
        }
        let mut lines = Vec::new();
        for (manager, paths) in by_manager {
            lines.push(format!("conflicts with {manager}:"));
            lines.extend(paths.into_iter().map(|p| format!("- {p}")));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    ApplyError::Conflict {
        conflicts: conflicts
            .iter()
            .map(|(i, p)| (entries[*i].manager.clone(), display_path(p)))
            .collect(),
        causes: conflicts
            .iter()
            .map(|(i, p)| {
                (
                    format!("conflict with {}", entries[*i].describe()),
                    display_path(p),
                )
            })
            .collect(),
        message,
    }
}

// === Update ===

/// Whether the zero value of `kind` (a Go struct serialized) holds the node at `path`:
/// `metadata`, non-pointer structs such as a Deployment's `spec.strategy`, and fields
/// without omitempty such as a pod spec's `containers`. Paths into list items never are.
fn in_zero_object(kind: &str, path: &[PathElement]) -> bool {
    let mut names = Vec::new();
    for pe in path {
        match pe {
            PathElement::Field(f) => names.push(&**f),
            _ => return false,
        }
    }
    const WORKLOAD: &[&[&str]] = &[
        &["spec"],
        &["spec", "template"],
        &["spec", "template", "metadata"],
        &["spec", "template", "spec"],
        &["spec", "template", "spec", "containers"],
    ];
    let extra: &[&[&str]] = match kind {
        "Deployment" => &[&["spec", "strategy"]],
        "ReplicaSet" => &[],
        "Pod" => &[&["spec"], &["spec", "containers"]],
        "Service" | "Namespace" | "Ingress" | "Lease" | "PodDisruptionBudget" => &[&["spec"]],
        "HorizontalPodAutoscaler" => &[&["spec"], &["spec", "scaleTargetRef"]],
        "Role" | "ClusterRole" => &[&["rules"]],
        "RoleBinding" | "ClusterRoleBinding" => &[&["roleRef"]],
        "Event" => &[&["involvedObject"], &["source"]],
        _ => &[],
    };
    let workload =
        matches!(kind, "Deployment" | "ReplicaSet") && WORKLOAD.contains(&names.as_slice());
    names == ["metadata"] || workload || extra.contains(&names.as_slice())
}

/// Records a non-apply write (create, replace, JSON/merge/strategic patch) by `manager` in
/// `new`'s managedFields, as the real server does for `operation: Update`: the fields the
/// write added or changed (all of them on create) join the manager's `Update` entry and leave
/// every other manager's set; fields no longer in the object leave every set.
///
/// managedFields sent by the client are kept if non-empty, an empty list clears them, and when
/// absent the old object's are carried over. Unreadable managedFields are reset.
pub fn record_update(old: Option<&Value>, new: &mut Value, manager: &str, now: &str) {
    let sent = managed_fields_value(new).cloned();
    let mut entries = match sent {
        Some(Value::Array(list)) if list.is_empty() => Vec::new(),
        Some(Value::Array(_)) => read_entries(new)
            .or_else(|_| old.map_or(Ok(Vec::new()), read_entries))
            .unwrap_or_default(),
        _ => old
            .map(read_entries)
            .transpose()
            .unwrap_or_default()
            .unwrap_or_default(),
    };

    let new_set = fields_of(new);
    let mut changed: FieldSet = match old {
        None => new_set.clone(),
        Some(o) => new_set
            .iter()
            .filter(|p| match get(o, p) {
                None => true,
                Some(before) => !has_descendant(&new_set, p) && Some(before) != get(new, p),
            })
            .cloned()
            .collect(),
    };
    // As structured-merge-diff compares old and new: a map, struct or list the write added
    // is owned itself too (the `.` of FieldsV1), beside its fields. On create the old object
    // is the kind's zero value, which holds Go's non-pointer structs and fields without
    // omitempty (a Deployment's spec.strategy, spec.template, …).
    let kind = new.get("kind").and_then(Value::as_str).unwrap_or_default();
    let added_containers: Vec<Path> = changed
        .iter()
        .flat_map(|p| (1..p.len()).map(move |n| p[..n].to_vec()))
        .filter(|prefix| matches!(prefix.last(), Some(PathElement::Field(_))))
        .filter(|prefix| match old {
            Some(o) => get(o, prefix).is_none(),
            None => !in_zero_object(kind, prefix),
        })
        .collect();
    changed.extend(added_containers);

    for e in &mut entries {
        if !e.is(manager, UPDATE) {
            e.set.retain(|p| !changed.contains(p));
        }
        e.set.retain(|p| get(new, p).is_some());
    }
    if !changed.is_empty() {
        let api_version = new
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match entries.iter_mut().find(|e| e.is(manager, UPDATE)) {
            Some(e) => {
                e.set.extend(changed);
                e.time = Some(now.to_owned());
                e.api_version = api_version;
            }
            None => entries.push(Entry {
                manager: manager.to_owned(),
                operation: UPDATE.into(),
                api_version,
                time: Some(now.to_owned()),
                subresource: None,
                set: changed,
            }),
        }
    }
    write_entries(new, entries);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T0: &str = "2026-11-22T01:00:00Z";
    const T1: &str = "2026-11-22T02:00:00Z";
    const T2: &str = "2026-11-22T03:00:00Z";

    /// The agent's intent for a Deployment: image and labels, no replicas.
    fn agent_config(image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": image,
                        "ports": [{"containerPort": 80}]}]}
                }
            }
        })
    }

    /// An autoscaler-like manager that only sets replicas.
    fn scaler_config(replicas: u64) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "namespace": "default"},
               "spec": {"replicas": replicas}})
    }

    fn entry<'a>(obj: &'a Value, manager: &str, operation: &str) -> Option<&'a Value> {
        obj["metadata"]["managedFields"]
            .as_array()?
            .iter()
            .find(|e| e["manager"] == manager && e["operation"] == operation)
    }

    fn owns(obj: &Value, manager: &str, operation: &str, path: &[&str]) -> bool {
        let Some(e) = entry(obj, manager, operation) else {
            return false;
        };
        let set = from_fields_v1(&e["fieldsV1"]).unwrap();
        let path: Path = path
            .iter()
            .map(|p| PathElement::decode(p).unwrap())
            .collect();
        set.contains(&path)
    }

    fn image(obj: &Value) -> &Value {
        &obj["spec"]["template"]["spec"]["containers"][0]["image"]
    }

    #[test]
    fn create_records_the_apply_entry_with_the_applied_field_set() {
        let obj = apply(None, &agent_config("nginx:1.25"), "ds-agent", false, T0).unwrap();
        assert_eq!(obj["metadata"]["name"], "web");
        assert_eq!(*image(&obj), "nginx:1.25");
        let e = entry(&obj, "ds-agent", "Apply").unwrap();
        assert_eq!(e["apiVersion"], "apps/v1");
        assert_eq!(e["time"], T0);
        assert_eq!(e["fieldsType"], "FieldsV1");
        assert_eq!(
            e["fieldsV1"],
            json!({
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {
                    "f:selector": {},
                    "f:template": {
                        "f:metadata": {"f:labels": {"f:app": {}}},
                        "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {
                            ".": {}, "f:image": {}, "f:name": {},
                            "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                                ".": {}, "f:containerPort": {}}}
                        }}}
                    }
                }
            })
        );
    }

    #[test]
    fn reapplying_unchanged_intent_changes_nothing() {
        let first = apply(None, &agent_config("nginx:1.25"), "ds-agent", false, T0).unwrap();
        let again = apply(
            Some(&first),
            &agent_config("nginx:1.25"),
            "ds-agent",
            false,
            T1,
        )
        .unwrap();
        assert_eq!(again, first);
        // Also with another manager present and server-added fields in the live object.
        let mut live = apply(Some(&first), &scaler_config(3), "hpa", false, T1).unwrap();
        live["metadata"]["uid"] = json!("u-1");
        live["metadata"]["resourceVersion"] = json!("7");
        live["status"] = json!({"replicas": 3});
        live["spec"]["template"]["spec"]["containers"][0]["ports"][0]["protocol"] = json!("TCP");
        let again = apply(
            Some(&live),
            &agent_config("nginx:1.25"),
            "ds-agent",
            false,
            T2,
        )
        .unwrap();
        assert_eq!(again, live);
    }

    #[test]
    fn a_changed_apply_updates_the_time_and_the_value() {
        let first = apply(None, &agent_config("nginx:1.25"), "ds-agent", false, T0).unwrap();
        let next = apply(
            Some(&first),
            &agent_config("nginx:1.26"),
            "ds-agent",
            false,
            T1,
        )
        .unwrap();
        assert_eq!(*image(&next), "nginx:1.26");
        assert_eq!(entry(&next, "ds-agent", "Apply").unwrap()["time"], T1);
    }

    #[test]
    fn two_managers_share_a_deployment_and_conflict_without_force() {
        let obj = apply(None, &agent_config("nginx:1.25"), "ds-agent", false, T0).unwrap();
        let obj = apply(Some(&obj), &scaler_config(3), "hpa", false, T1).unwrap();
        assert_eq!(obj["spec"]["replicas"], 3);
        assert!(owns(&obj, "hpa", "Apply", &["f:spec", "f:replicas"]));
        assert!(!owns(&obj, "ds-agent", "Apply", &["f:spec", "f:replicas"]));
        let img = [
            "f:spec",
            "f:template",
            "f:spec",
            "f:containers",
            "k:{\"name\":\"web\"}",
            "f:image",
        ];
        assert!(owns(&obj, "ds-agent", "Apply", &img));

        // Each manager changes its own field freely.
        let obj = apply(
            Some(&obj),
            &agent_config("nginx:1.26"),
            "ds-agent",
            false,
            T1,
        )
        .unwrap();
        let obj = apply(Some(&obj), &scaler_config(5), "hpa", false, T1).unwrap();
        assert_eq!(obj["spec"]["replicas"], 5);
        assert_eq!(*image(&obj), "nginx:1.26");

        // The agent setting replicas to another value conflicts with the scaler.
        let mut with_replicas = agent_config("nginx:1.26");
        with_replicas["spec"]["replicas"] = json!(1);
        let err = apply(Some(&obj), &with_replicas, "ds-agent", false, T2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"hpa\": .spec.replicas"
        );
        match &err {
            ApplyError::Conflict { conflicts, .. } => {
                assert_eq!(
                    conflicts,
                    &vec![("hpa".to_owned(), ".spec.replicas".to_owned())]
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(err.status_code(), 409);
        assert_eq!(
            err.causes(),
            vec![(
                "conflict with \"hpa\"".to_owned(),
                ".spec.replicas".to_owned()
            )]
        );
    }

    #[test]
    fn force_moves_ownership_to_the_applier() {
        let obj = apply(None, &agent_config("nginx:1.25"), "ds-agent", false, T0).unwrap();
        let obj = apply(Some(&obj), &scaler_config(3), "hpa", false, T1).unwrap();
        let mut with_replicas = agent_config("nginx:1.25");
        with_replicas["spec"]["replicas"] = json!(1);
        let obj = apply(Some(&obj), &with_replicas, "ds-agent", true, T2).unwrap();
        assert_eq!(obj["spec"]["replicas"], 1);
        assert!(owns(&obj, "ds-agent", "Apply", &["f:spec", "f:replicas"]));
        // The scaler owned nothing else, so its entry is gone.
        assert!(entry(&obj, "hpa", "Apply").is_none());
        // Now the scaler is the one that conflicts.
        let err = apply(Some(&obj), &scaler_config(4), "hpa", false, T2).unwrap_err();
        assert!(
            err.to_string()
                .contains("conflict with \"ds-agent\": .spec.replicas"),
            "{err}"
        );
    }

    #[test]
    fn applying_the_same_value_shares_ownership_without_conflict() {
        let mut agent = agent_config("nginx:1.25");
        agent["spec"]["replicas"] = json!(2);
        let obj = apply(None, &agent, "ds-agent", false, T0).unwrap();
        let obj = apply(Some(&obj), &scaler_config(2), "hpa", false, T1).unwrap();
        assert!(owns(&obj, "hpa", "Apply", &["f:spec", "f:replicas"]));
        assert!(owns(&obj, "ds-agent", "Apply", &["f:spec", "f:replicas"]));
        // The object did not change, so (as on the real server) the new entry has no time.
        assert!(entry(&obj, "hpa", "Apply").unwrap().get("time").is_none());
        // The agent dropping replicas leaves the field: the scaler still owns it.
        let obj = apply(
            Some(&obj),
            &agent_config("nginx:1.25"),
            "ds-agent",
            false,
            T2,
        )
        .unwrap();
        assert_eq!(obj["spec"]["replicas"], 2);
        assert!(!owns(&obj, "ds-agent", "Apply", &["f:spec", "f:replicas"]));
    }

    #[test]
    fn fields_dropped_from_the_config_are_removed() {
        let mut full = agent_config("nginx:1.25");
        full["metadata"]["labels"]["tier"] = json!("front");
        full["spec"]["replicas"] = json!(2);
        full["spec"]["template"]["spec"]["containers"][0]["env"] =
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]);
        full["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "sidecar", "image": "envoy:1"}));
        let obj = apply(None, &full, "ds-agent", false, T0).unwrap();
        assert_eq!(
            obj["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            2
        );

        let mut slim = agent_config("nginx:1.25");
        slim["spec"]["template"]["spec"]["containers"][0]["env"] =
            json!([{"name": "A", "value": "1"}]);
        let obj = apply(Some(&obj), &slim, "ds-agent", false, T1).unwrap();
        assert_eq!(obj["metadata"]["labels"], json!({"app": "web"}));
        assert!(obj["spec"].get("replicas").is_none());
        let containers = obj["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(containers.len(), 1);
        assert_eq!(containers[0]["env"], json!([{"name": "A", "value": "1"}]));
        assert_eq!(obj["metadata"]["name"], "web");
    }

    #[test]
    fn maps_emptied_by_a_dropped_field_go_too() {
        let mut with_probe = agent_config("a:1");
        with_probe["spec"]["template"]["spec"]["containers"][0]["startupProbe"] =
            json!({"httpGet": {"path": "/ready", "port": 8501}, "periodSeconds": 10});
        let obj = apply(None, &with_probe, "agent", false, T0).unwrap();
        let obj = apply(Some(&obj), &agent_config("a:1"), "agent", false, T1).unwrap();
        let c = &obj["spec"]["template"]["spec"]["containers"][0];
        assert!(c.get("startupProbe").is_none(), "{c}");
        assert_eq!(c["image"], "a:1", "the rest stays");
    }

    #[test]
    fn associative_lists_merge_items_of_different_managers_by_key() {
        let obj = apply(None, &agent_config("nginx:1.25"), "ds-agent", false, T0).unwrap();
        let injector = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"template": {"spec": {"containers": [{"name": "proxy", "image": "envoy:1"}],
                "volumes": [{"name": "certs", "secret": {"secretName": "c"}}]}}}});
        let obj = apply(Some(&obj), &injector, "injector", false, T1).unwrap();
        let names: Vec<&str> = obj["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["web", "proxy"]);
        assert!(owns(
            &obj,
            "injector",
            "Apply",
            &[
                "f:spec",
                "f:template",
                "f:spec",
                "f:containers",
                "k:{\"name\":\"proxy\"}",
                "f:image"
            ]
        ));
        // The agent's re-apply with a new image keeps the injected container.
        let obj = apply(
            Some(&obj),
            &agent_config("nginx:1.26"),
            "ds-agent",
            false,
            T2,
        )
        .unwrap();
        let containers = obj["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(containers.len(), 2);
        assert_eq!(containers[0]["image"], "nginx:1.26");
        assert_eq!(containers[1]["image"], "envoy:1");
        assert_eq!(
            obj["spec"]["template"]["spec"]["volumes"][0]["name"],
            "certs"
        );
    }

    #[test]
    fn applied_list_order_is_kept_around_live_only_items() {
        let cfg = |names: &[&str]| {
            let containers: Vec<Value> = names
                .iter()
                .map(|n| json!({"name": n, "image": "i"}))
                .collect();
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                   "spec": {"containers": containers}})
        };
        let order = |obj: &Value| -> Vec<String> {
            obj["spec"]["containers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_owned())
                .collect()
        };
        let obj = apply(None, &cfg(&["a", "b"]), "m1", false, T0).unwrap();
        let obj = apply(Some(&obj), &cfg(&["injected"]), "m2", false, T0).unwrap();
        assert_eq!(order(&obj), ["a", "b", "injected"]);
        // m1 puts a new item first and swaps the others: live-only items keep their place.
        let obj = apply(Some(&obj), &cfg(&["new", "b", "a"]), "m1", false, T1).unwrap();
        // structured-merge-diff's order: a shared item is placed where the applied order
        // reaches it, after the live-only items passed on the way.
        assert_eq!(order(&obj), ["new", "b", "injected", "a"]);
        let again = apply(Some(&obj), &cfg(&["new", "b", "a"]), "m1", false, T2).unwrap();
        assert_eq!(again, obj);
    }

    #[test]
    fn item_owned_partly_by_another_manager_survives_removal() {
        let obj = apply(None, &agent_config("nginx:1.25"), "ds-agent", false, T0).unwrap();
        let other = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"template": {"spec": {"containers": [{"name": "web", "resources": {"limits": {"cpu": "1"}}}]}}}});
        let obj = apply(Some(&obj), &other, "tuner", false, T1).unwrap();
        let mut no_containers = agent_config("x");
        no_containers["spec"]["template"]["spec"]
            .as_object_mut()
            .unwrap()
            .remove("containers");
        let obj = apply(Some(&obj), &no_containers, "ds-agent", false, T2).unwrap();
        let c = &obj["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["name"], "web");
        assert_eq!(c["resources"]["limits"]["cpu"], "1");
        // The agent-only image field went away.
        assert!(c.get("image").is_none(), "{c}");
    }

    #[test]
    fn atomic_lists_and_selectors_are_owned_whole() {
        let mut cfg = agent_config("nginx:1.25");
        cfg["spec"]["template"]["spec"]["containers"][0]["args"] = json!(["--a", "--b"]);
        cfg["spec"]["template"]["spec"]["tolerations"] =
            json!([{"key": "k", "operator": "Exists"}]);
        let obj = apply(None, &cfg, "ds-agent", false, T0).unwrap();
        let base = ["f:spec", "f:template", "f:spec"];
        assert!(owns(
            &obj,
            "ds-agent",
            "Apply",
            &[&base[..], &["f:tolerations"]].concat()
        ));
        assert!(owns(
            &obj,
            "ds-agent",
            "Apply",
            &[
                &base[..],
                &["f:containers", "k:{\"name\":\"web\"}", "f:args"]
            ]
            .concat()
        ));
        assert!(owns(&obj, "ds-agent", "Apply", &["f:spec", "f:selector"]));
        cfg["spec"]["template"]["spec"]["containers"][0]["args"] = json!(["--c"]);
        let obj = apply(Some(&obj), &cfg, "ds-agent", false, T1).unwrap();
        assert_eq!(
            obj["spec"]["template"]["spec"]["containers"][0]["args"],
            json!(["--c"])
        );
    }

    #[test]
    fn finalizers_are_a_set_owned_per_member() {
        let a = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "finalizers": ["x/a"]}});
        let b = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "finalizers": ["x/b"]}});
        let obj = apply(None, &a, "m1", false, T0).unwrap();
        let obj = apply(Some(&obj), &b, "m2", false, T1).unwrap();
        assert_eq!(obj["metadata"]["finalizers"], json!(["x/a", "x/b"]));
        assert!(owns(
            &obj,
            "m2",
            "Apply",
            &["f:metadata", "f:finalizers", "v:\"x/b\""]
        ));
        let none = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}});
        let obj = apply(Some(&obj), &none, "m1", false, T2).unwrap();
        assert_eq!(obj["metadata"]["finalizers"], json!(["x/b"]));
    }

    #[test]
    fn ports_match_with_the_defaulted_protocol() {
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"ports": [{"port": 80, "targetPort": 8080}]}});
        let mut obj = apply(None, &svc, "ds-agent", false, T0).unwrap();
        // The server defaults the protocol; re-apply must still match the item.
        obj["spec"]["ports"][0]["protocol"] = json!("TCP");
        assert!(owns(
            &obj,
            "ds-agent",
            "Apply",
            &[
                "f:spec",
                "f:ports",
                "k:{\"port\":80,\"protocol\":\"TCP\"}",
                "f:targetPort"
            ]
        ));
        let again = apply(Some(&obj), &svc, "ds-agent", false, T1).unwrap();
        assert_eq!(again, obj);
    }

    #[test]
    fn server_owned_fields_stay_out_of_field_sets_and_applies() {
        let mut cfg = agent_config("nginx:1.25");
        cfg["status"] = json!({"replicas": 9});
        cfg["metadata"]["uid"] = json!("fake");
        cfg["metadata"]["managedFields"] = json!([{"manager": "evil", "operation": "Apply"}]);
        let obj = apply(None, &cfg, "ds-agent", false, T0).unwrap();
        assert!(obj.get("status").is_none());
        assert!(obj["metadata"].get("uid").is_none());
        assert_eq!(
            obj["metadata"]["managedFields"].as_array().unwrap().len(),
            1
        );
        let set = field_set(&json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "uid": "u", "resourceVersion": "1", "generation": 1,
                         "creationTimestamp": "t", "labels": {"a": "b"}},
            "status": {"phase": "Running"}}));
        assert_eq!(set, json!({"f:metadata": {"f:labels": {"f:a": {}}}}));
    }

    #[test]
    fn client_side_apply_owner_conflicts_with_server_side_apply() {
        // kubectl apply (client-side) creates the object: an Update entry owns everything.
        let mut created = agent_config("nginx:1.25");
        created["spec"]["replicas"] = json!(2);
        record_update(None, &mut created, "kubectl-client-side-apply", T0);
        assert!(owns(
            &created,
            "kubectl-client-side-apply",
            "Update",
            &["f:spec", "f:replicas"]
        ));
        assert_eq!(
            entry(&created, "kubectl-client-side-apply", "Update").unwrap()["time"],
            T0
        );

        let err = apply(Some(&created), &scaler_config(3), "hpa", false, T1).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
            )
        );
        let obj = apply(Some(&created), &scaler_config(3), "hpa", true, T1).unwrap();
        assert!(!owns(
            &obj,
            "kubectl-client-side-apply",
            "Update",
            &["f:spec", "f:replicas"]
        ));
        assert!(owns(&obj, "hpa", "Apply", &["f:spec", "f:replicas"]));
    }

    #[test]
    fn conflicts_with_several_managers_are_grouped_like_the_real_server() {
        let obj = apply(None, &agent_config("nginx:1.25"), "ds-agent", false, T0).unwrap();
        let obj = apply(Some(&obj), &scaler_config(3), "hpa", false, T1).unwrap();
        let mut cfg = agent_config("nginx:9");
        cfg["spec"]["replicas"] = json!(1);
        cfg["metadata"]["labels"]["app"] = json!("other");
        let err = apply(Some(&obj), &cfg, "intruder", false, T2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 3 conflicts: conflicts with \"ds-agent\":\n\
             - .metadata.labels.app\n\
             - .spec.template.spec.containers[name=\"web\"].image\n\
             conflicts with \"hpa\":\n\
             - .spec.replicas"
        );
    }

    #[test]
    fn an_unmanaged_live_object_is_owned_by_before_first_apply() {
        let mut live = agent_config("nginx:1.25");
        live["spec"]["replicas"] = json!(2);
        let err = apply(Some(&live), &scaler_config(3), "hpa", false, T1).unwrap_err();
        assert!(
            err.to_string()
                .contains("\"before-first-apply\" using apps/v1"),
            "{err}"
        );
        // Applying values equal to the live ones takes shared ownership quietly.
        let obj = apply(Some(&live), &scaler_config(2), "hpa", false, T1).unwrap();
        assert!(owns(
            &obj,
            "before-first-apply",
            "Update",
            &["f:spec", "f:replicas"]
        ));
        assert!(owns(&obj, "hpa", "Apply", &["f:spec", "f:replicas"]));
    }

    #[test]
    fn invalid_configs_and_managed_fields_are_rejected() {
        assert!(matches!(
            apply(None, &json!([1]), "m", false, T0),
            Err(ApplyError::InvalidConfig(_))
        ));
        assert!(matches!(
            apply(None, &json!({"kind": "Pod"}), "m", false, T0),
            Err(ApplyError::InvalidConfig(_))
        ));
        let live = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p",
            "managedFields": [{"manager": "m", "operation": "Update", "fieldsType": "FieldsV1",
                               "fieldsV1": {"x:bad": {}}}]}});
        assert!(matches!(
            apply(
                Some(&live),
                &json!({"apiVersion": "v1", "kind": "Pod"}),
                "m",
                false,
                T0
            ),
            Err(ApplyError::InvalidManagedFields(_))
        ));
    }

    #[test]
    fn duplicate_keys_in_an_applied_list_are_rejected() {
        let mut cfg = agent_config("nginx:1.25");
        cfg["spec"]["template"]["spec"]["containers"][0]["env"] =
            json!([{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]);
        let err = apply(None, &cfg, "m", false, T0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid apply configuration: .spec.template.spec.containers[name=\"web\"].env: \
             duplicate entries for key [name=\"A\"]"
        );
    }

    #[test]
    fn fields_v1_round_trips_foreign_encodings() {
        let foreign = json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {"f:template": {"f:spec": {"f:containers": {
                "k:{\"name\":\"web\"}": {".": {}, "f:ports": {
                    "k:{\"protocol\":\"TCP\",\"containerPort\":80}": {".": {}}}}}}}}
        });
        let set = from_fields_v1(&foreign).unwrap();
        let key = PathElement::decode("k:{\"containerPort\":80,\"protocol\":\"TCP\"}").unwrap();
        assert!(set.iter().any(|p| p.last() == Some(&key)));
        let back = to_fields_v1(&set);
        assert_eq!(back["f:metadata"], foreign["f:metadata"]);
        assert_eq!(from_fields_v1(&back).unwrap(), set);
    }

    #[test]
    fn record_update_moves_changed_fields_and_drops_removed_ones() {
        let mut created = agent_config("nginx:1.25");
        created["spec"]["replicas"] = json!(2);
        record_update(None, &mut created, "creator", T0);

        // A merge patch by another manager changes replicas and removes a label.
        let mut patched = created.clone();
        patched["spec"]["replicas"] = json!(4);
        patched["metadata"]["labels"] = json!({});
        record_update(Some(&created), &mut patched, "scaler", T1);
        assert!(owns(
            &patched,
            "scaler",
            "Update",
            &["f:spec", "f:replicas"]
        ));
        assert!(!owns(
            &patched,
            "creator",
            "Update",
            &["f:spec", "f:replicas"]
        ));
        assert!(!owns(
            &patched,
            "creator",
            "Update",
            &["f:metadata", "f:labels", "f:app"]
        ));
        assert!(owns(
            &patched,
            "creator",
            "Update",
            &[
                "f:spec",
                "f:template",
                "f:spec",
                "f:containers",
                "k:{\"name\":\"web\"}",
                "f:image"
            ]
        ));
        assert_eq!(entry(&patched, "scaler", "Update").unwrap()["time"], T1);

        // A write that changes nothing leaves managedFields (and their times) alone.
        let mut same = patched.clone();
        if let Some(Value::Object(meta)) = same.get_mut("metadata") {
            meta.remove("managedFields");
        }
        record_update(Some(&patched), &mut same, "scaler", T2);
        assert_eq!(same, patched);
    }

    /// What the server does for `kubectl apply` (client-side): POST, then strategic merge
    /// PATCHes, each recorded as an Update; then the agent takes over with server-side apply.
    #[test]
    fn kubectl_client_side_apply_then_strategic_merge_then_server_side_apply() {
        let mut live = agent_config("nginx:1.25");
        live["spec"]["replicas"] = json!(2);
        record_update(None, &mut live, "kubectl-client-side-apply", T0);

        let patch = json!({"spec": {"replicas": 3, "template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}],
            "containers": [{"name": "web", "image": "nginx:1.26"}]}}}});
        let mut patched = live.clone();
        crate::patch::strategic_merge_patch(&mut patched, &patch).unwrap();
        record_update(Some(&live), &mut patched, "kubectl-client-side-apply", T1);
        assert_eq!(patched["spec"]["replicas"], 3);
        assert_eq!(*image(&patched), "nginx:1.26");
        let e = entry(&patched, "kubectl-client-side-apply", "Update").unwrap();
        assert_eq!(e["time"], T1);

        // `kubectl scale` is a merge patch by another manager: replicas change hands.
        let mut scaled = patched.clone();
        crate::patch::json_merge_patch(&mut scaled, &json!({"spec": {"replicas": 5}}));
        record_update(Some(&patched), &mut scaled, "kubectl", T1);
        assert!(owns(
            &scaled,
            "kubectl",
            "Update",
            &["f:spec", "f:replicas"]
        ));
        assert!(!owns(
            &scaled,
            "kubectl-client-side-apply",
            "Update",
            &["f:spec", "f:replicas"]
        ));

        // The agent applies the same image: shared ownership, no conflict, nothing changes.
        let applied = apply(
            Some(&scaled),
            &agent_config("nginx:1.26"),
            "ds-agent",
            false,
            T2,
        )
        .unwrap();
        assert!(same_data(&applied, &scaled));
        assert_ne!(applied, scaled, "the agent now shares ownership");
        // A different image conflicts with the client-side applier.
        let err = apply(
            Some(&scaled),
            &agent_config("nginx:2"),
            "ds-agent",
            false,
            T2,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: \
                 .spec.template.spec.containers[name=\"web\"].image"
            )
        );
    }

    #[test]
    fn applying_null_removes_a_field_and_owns_it() {
        let mut cfg = agent_config("nginx:1.25");
        cfg["spec"]["paused"] = json!(true);
        let obj = apply(None, &cfg, "ds-agent", false, T0).unwrap();
        cfg["spec"]["paused"] = Value::Null;
        let obj = apply(Some(&obj), &cfg, "ds-agent", false, T1).unwrap();
        assert!(obj["spec"].get("paused").is_none());
        assert!(owns(&obj, "ds-agent", "Apply", &["f:spec", "f:paused"]));
    }

    #[test]
    fn record_update_honours_client_sent_managed_fields() {
        let mut created = agent_config("nginx:1.25");
        record_update(None, &mut created, "creator", T0);
        let mut cleared = created.clone();
        cleared["metadata"]["managedFields"] = json!([]);
        cleared["spec"]["replicas"] = json!(1);
        record_update(Some(&created), &mut cleared, "editor", T1);
        let entries = cleared["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["manager"], "editor");
    }
}
