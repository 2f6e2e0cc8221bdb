//! The in-memory object store: one cluster-wide resourceVersion, watch history and fan-out.

use super::resources::{NAMESPACES, RESOURCES};
use super::status::ApiError;
use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, OnceLock};
use tokio::sync::broadcast;

/// Kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// An object was created.
    Added,
    /// An object was changed.
    Modified,
    /// An object was removed.
    Deleted,
}

impl EventType {
    /// The wire name (`ADDED`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, serialized once for every watcher.
#[derive(Debug)]
pub struct Event {
    /// The resourceVersion this change produced.
    pub rv: u64,
    /// Resource id (index in [`RESOURCES`]).
    pub rt: usize,
    /// What happened.
    pub ty: EventType,
    /// The object after the change (before, for deletes, with the delete's resourceVersion).
    pub obj: Arc<Value>,
    /// The object before a modification (selected watches need it).
    pub prev: Option<Arc<Value>>,
    /// `{"type":…,"object":…}\n`, made by the first watch that sends it: most events
    /// (a rollout's ReplicaSets and pods, writes while nobody watches) are never sent, and
    /// serializing each under the store's lock cost a sixth of a server-side apply.
    line: OnceLock<Bytes>,
}

impl Event {
    /// The event as a watch stream line, `{"type":…,"object":…}\n`.
    pub fn line(&self) -> Bytes {
        self.line
            .get_or_init(|| watch_line(self.ty.as_str(), &*self.obj))
            .clone()
    }
}

/// Key of an object within one resource: (namespace or "", name).
pub type Key = (String, String);

struct State {
    rv: u64,
    objects: Vec<BTreeMap<Key, Arc<Value>>>,
    history: VecDeque<Arc<Event>>,
    /// Every event with a resourceVersion above this is in `history`.
    floor: u64,
}

/// What a read-modify-write closure decides.
pub enum Change {
    /// Store this object (create or update).
    Put(Value),
    /// Leave everything as it is, answer with the current object.
    Keep,
}

/// Result of a write.
#[derive(Debug, Clone)]
pub struct Written {
    /// The object as stored (or as it would be, for dry runs).
    pub obj: Arc<Value>,
    /// Whether the write created the object.
    pub created: bool,
}

/// Result of a delete.
#[derive(Debug, Clone)]
pub enum Deleted {
    /// The object is gone.
    Gone(Arc<Value>),
    /// Finalizers hold the object: it now carries a deletionTimestamp.
    Pending(Arc<Value>),
}

/// How dependents of a deleted owner are treated (`propagationPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Background: the owner goes at once, then its dependents.
    Cascade,
    /// Foreground: the owner carries the `foregroundDeletion` finalizer until its dependents
    /// are gone (here: at once, within the delete).
    Foreground,
    /// Orphan: the owner carries the `orphan` finalizer until its dependents lost their
    /// ownerReference to it (here: at once, within the delete).
    Orphan,
}

/// Options of a delete (DeleteOptions).
#[derive(Debug, Clone)]
pub struct DeleteOptions {
    /// Precondition on the uid.
    pub uid: Option<String>,
    /// Precondition on the resourceVersion.
    pub resource_version: Option<String>,
    /// What happens to dependents.
    pub propagation: Propagation,
    /// Validate only.
    pub dry_run: bool,
}

/// What a new watch starts with.
pub struct WatchStart {
    /// Current objects to send as synthetic ADDED events (watch without resourceVersion).
    pub initial: Vec<Arc<Value>>,
    /// Historic events after the requested resourceVersion.
    pub replay: Vec<Arc<Event>>,
    /// Live events after the snapshot.
    pub rx: broadcast::Receiver<Arc<Event>>,
    /// The resourceVersion the watch is at once initial and replay are sent.
    pub rv: u64,
}

/// A page of a list.
pub struct Page {
    /// Matching objects of this page.
    pub items: Vec<Arc<Value>>,
    /// The list's resourceVersion.
    pub rv: u64,
    /// Key to continue after, if more items match.
    pub next: Option<Key>,
}

/// The store. All mutations go through one mutex so resourceVersions are totally ordered.
pub struct Store {
    state: Mutex<State>,
    tx: broadcast::Sender<Arc<Event>>,
    history_limit: usize,
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Copies that differ only in resourceVersion or managedFields timestamps are the same
/// object: the real server makes such writes no-ops (no new resourceVersion, no event).
/// Compared in place: this runs on every write, under the store's lock, and copying both
/// objects to strip those fields first was a good part of a write's cost.
fn same_object(a: &Value, b: &Value) -> bool {
    type Map = serde_json::Map<String, Value>;
    /// Equal maps, but for the key `skip` (ignored) and the key `special` (compared by `f`).
    fn eq_except(
        a: &Map,
        b: &Map,
        skip: Option<&str>,
        special: &str,
        f: impl Fn(&Value, &Value) -> bool,
    ) -> bool {
        let counted = |m: &Map| m.keys().filter(|k| Some(k.as_str()) != skip).count();
        counted(a) == counted(b)
            && a.iter().all(|(k, va)| {
                if Some(k.as_str()) == skip {
                    return true;
                }
                match b.get(k) {
                    None => false,
                    Some(vb) if k == special => f(va, vb),
                    Some(vb) => va == vb,
                }
            })
    }
    fn entry_eq(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                eq_except(a, b, Some("time"), "", |x, y| x == y)
            }
            _ => a == b,
        }
    }
    fn managed_fields_eq(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| entry_eq(x, y))
            }
            _ => a == b,
        }
    }
    fn metadata_eq(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => eq_except(
                a,
                b,
                Some("resourceVersion"),
                "managedFields",
                managed_fields_eq,
            ),
            _ => a == b,
        }
    }
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => eq_except(a, b, None, "metadata", metadata_eq),
        _ => a == b,
    }
}

/// One line of a watch stream, `{"type":…,"object":…}\n`: the type first, as the real
/// server writes it (clients can then decode the object without buffering it), and the
/// object serialized in place rather than copied into a `json!` map first.
pub(crate) fn watch_line(ty: &str, obj: &impl serde::Serialize) -> Bytes {
    let mut v = Vec::with_capacity(256);
    v.extend_from_slice(b"{\"type\":");
    // Serializing a string or a JSON value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut v, ty);
    v.extend_from_slice(b",\"object\":");
    let _ = serde_json::to_writer(&mut v, obj);
    v.extend_from_slice(b"}\n");
    Bytes::from(v)
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

impl Store {
    /// An empty store keeping `history_limit` events for watch resumption.
    pub fn new(history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(16_384);
        Self {
            state: Mutex::new(State {
                rv: 1,
                objects: RESOURCES.iter().map(|_| BTreeMap::new()).collect(),
                history: VecDeque::new(),
                floor: 1,
            }),
            tx,
            history_limit: history_limit.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent maps (every mutation is a single
        // insert/remove), so a poisoned lock is still usable.
        self.state.lock()
    }

    /// A receiver of every future event (controllers).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// The latest resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// Number of objects held.
    pub fn object_count(&self) -> usize {
        self.lock().objects.iter().map(BTreeMap::len).sum()
    }

    /// One object.
    pub fn get(&self, rt: usize, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.lock().objects[rt]
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Whether a namespace exists.
    pub fn namespace_exists(&self, ns: &str) -> bool {
        self.get(NAMESPACES, "", ns).is_some()
    }

    /// A page of the objects of one resource (in one namespace, or all) matching `pred`.
    pub fn list(
        &self,
        rt: usize,
        ns: Option<&str>,
        pred: impl Fn(&Value) -> bool,
        limit: Option<usize>,
        after: Option<Key>,
    ) -> Page {
        let st = self.lock();
        let map = &st.objects[rt];
        let limit = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut next = None;
        let iter: Box<dyn Iterator<Item = (&Key, &Arc<Value>)>> = match (&after, ns) {
            (Some(a), _) => Box::new(map.range::<Key, _>((
                std::ops::Bound::Excluded(a.clone()),
                std::ops::Bound::Unbounded,
            ))),
            (None, Some(n)) => Box::new(map.range::<Key, _>((n.to_string(), String::new())..)),
            (None, None) => Box::new(map.iter()),
        };
        for (k, v) in iter {
            if let Some(n) = ns
                && k.0 != n
            {
                break;
            }
            if !pred(v) {
                continue;
            }
            if items.len() == limit {
                next = items.last().map(|o: &Arc<Value>| {
                    (
                        meta_str(o, "namespace").to_string(),
                        meta_str(o, "name").to_string(),
                    )
                });
                break;
            }
            items.push(v.clone());
        }
        Page {
            items,
            rv: st.rv,
            next,
        }
    }

    /// The objects of one resource in `ns` whose names start with `prefix` and match
    /// `pred`: a range of the map, not a scan of the namespace (controllers call it for
    /// every rollout, under the one lock every request takes).
    pub fn list_prefixed(
        &self,
        rt: usize,
        ns: &str,
        prefix: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Arc<Value>> {
        let st = self.lock();
        st.objects[rt]
            .range::<Key, _>((ns.to_string(), prefix.to_string())..)
            .take_while(|(k, _)| k.0 == ns && k.1.starts_with(prefix))
            .filter(|(_, v)| pred(v))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn emit(
        &self,
        st: &mut State,
        rt: usize,
        ty: EventType,
        obj: Arc<Value>,
        prev: Option<Arc<Value>>,
    ) {
        let ev = Arc::new(Event {
            rv: st.rv,
            rt,
            ty,
            obj,
            prev,
            line: OnceLock::new(),
        });
        st.history.push_back(ev.clone());
        while st.history.len() > self.history_limit {
            if let Some(old) = st.history.pop_front() {
                st.floor = old.rv;
            }
        }
        // No receiver is fine: nobody watches.
        let _ = self.tx.send(ev);
    }

    /// Creates an object; `obj` carries its final name and namespace.
    ///
    /// # Errors
    /// AlreadyExists, or NotFound for a missing namespace.
    pub fn create(&self, rt: usize, obj: Value, dry_run: bool) -> Result<Arc<Value>, ApiError> {
        let ns = meta_str(&obj, "namespace").to_string();
        let name = meta_str(&obj, "name").to_string();
        self.modify(rt, &ns, &name, dry_run, |old| match old {
            Some(_) => Err(ApiError::already_exists(&RESOURCES[rt], &name)),
            None => Ok(Change::Put(obj)),
        })
        .map(|w| w.obj)
    }

    /// Atomic read-modify-write of one object. `f` sees the current object (if any) and
    /// decides. Writes that change nothing keep the resourceVersion and emit no event.
    ///
    /// # Errors
    /// Whatever `f` answers, or NotFound for a namespaced create into a missing namespace.
    pub fn modify(
        &self,
        rt: usize,
        ns: &str,
        name: &str,
        dry_run: bool,
        f: impl FnOnce(Option<&Arc<Value>>) -> Result<Change, ApiError>,
    ) -> Result<Written, ApiError> {
        let mut st = self.lock();
        let key = (ns.to_string(), name.to_string());
        let old = st.objects[rt].get(&key).cloned();
        match f(old.as_ref())? {
            Change::Keep => match old {
                Some(o) => Ok(Written {
                    obj: o,
                    created: false,
                }),
                None => Err(ApiError::not_found(&RESOURCES[rt], name)),
            },
            Change::Put(mut new) => {
                if let Some(o) = &old {
                    if same_object(o, &new) {
                        return Ok(Written {
                            obj: o.clone(),
                            created: false,
                        });
                    }
                } else if RESOURCES[rt].namespaced {
                    match st.objects[NAMESPACES].get(&(String::new(), ns.to_string())) {
                        None => return Err(ApiError::namespace_not_found(ns)),
                        Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => {
                            return Err(ApiError::namespace_terminating(&RESOURCES[rt], name, ns));
                        }
                        Some(_) => {}
                    }
                }
                // An object whose deletion only waited for finalizers goes once they are gone.
                let finalized = old.is_some()
                    && new.pointer("/metadata/deletionTimestamp").is_some()
                    && new
                        .pointer("/metadata/finalizers")
                        .and_then(Value::as_array)
                        .is_none_or(Vec::is_empty);
                if dry_run {
                    set_rv(&mut new, st.rv);
                    return Ok(Written {
                        obj: Arc::new(new),
                        created: old.is_none(),
                    });
                }
                st.rv += 1;
                let rv = st.rv;
                set_rv(&mut new, rv);
                let new = Arc::new(new);
                if finalized {
                    st.objects[rt].remove(&key);
                    self.emit(&mut st, rt, EventType::Deleted, new.clone(), None);
                    self.cascade(&mut st, rt, &new, Propagation::Cascade);
                } else {
                    st.objects[rt].insert(key, new.clone());
                    let ty = if old.is_some() {
                        EventType::Modified
                    } else {
                        EventType::Added
                    };
                    self.emit(&mut st, rt, ty, new.clone(), old.clone());
                }
                Ok(Written {
                    obj: new,
                    created: old.is_none(),
                })
            }
        }
    }

    /// Deletes an object, honouring preconditions, finalizers and ownerReference cascade.
    ///
    /// # Errors
    /// NotFound, or Conflict when a precondition (uid, resourceVersion) fails.
    pub fn delete(
        &self,
        rt: usize,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
        now: &str,
    ) -> Result<Deleted, ApiError> {
        let r = &RESOURCES[rt];
        let mut st = self.lock();
        let key = (ns.to_string(), name.to_string());
        let Some(old) = st.objects[rt].get(&key).cloned() else {
            return Err(ApiError::not_found(r, name));
        };
        let (uid, rv) = (&opts.uid, &opts.resource_version);
        if uid.as_ref().is_some_and(|u| u != meta_str(&old, "uid")) {
            return Err(ApiError::conflict_msg(
                r,
                name,
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition does not match the UID in record",
                    r.group_resource()
                ),
            ));
        }
        if rv
            .as_ref()
            .is_some_and(|v| v != meta_str(&old, "resourceVersion"))
        {
            return Err(ApiError::conflict(r, name));
        }
        let has_finalizers = old
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        // Foreground and Orphan: as the real registry, the owner is marked for deletion with
        // the garbage collector's finalizer and the DELETE answers that object; the simulated
        // collector then does its work and removes the finalizer at once.
        let gc_finalizer = match opts.propagation {
            Propagation::Foreground => Some("foregroundDeletion"),
            Propagation::Orphan => Some("orphan"),
            Propagation::Cascade => None,
        };
        if let Some(fin) = gc_finalizer
            && rt != NAMESPACES
            && old.pointer("/metadata/deletionTimestamp").is_none()
        {
            let mut marked = (*old).clone();
            marked["metadata"]["deletionTimestamp"] = Value::String(now.to_string());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            let finalizers = marked["metadata"]
                .as_object_mut()
                .map(|m| m.entry("finalizers").or_insert_with(|| json!([])));
            if let Some(Value::Array(f)) = finalizers
                && !f.iter().any(|x| x == fin)
            {
                f.push(json!(fin));
            }
            if opts.dry_run {
                return Ok(Deleted::Pending(Arc::new(marked)));
            }
            st.rv += 1;
            set_rv(&mut marked, st.rv);
            let marked = Arc::new(marked);
            st.objects[rt].insert(key.clone(), marked.clone());
            self.emit(&mut st, rt, EventType::Modified, marked.clone(), Some(old));
            let dependents = if fin == "orphan" {
                Propagation::Orphan
            } else {
                Propagation::Cascade
            };
            self.cascade(&mut st, rt, &marked, dependents);
            let mut done = (*marked).clone();
            if let Some(Value::Array(f)) = done.pointer_mut("/metadata/finalizers") {
                f.retain(|x| x != fin);
            }
            let others = done
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
            if others {
                st.rv += 1;
                set_rv(&mut done, st.rv);
                let done = Arc::new(done);
                st.objects[rt].insert(key, done.clone());
                self.emit(&mut st, rt, EventType::Modified, done, Some(marked.clone()));
            } else {
                self.remove(&mut st, rt, &key);
            }
            return Ok(Deleted::Pending(marked));
        }
        if opts.dry_run {
            return Ok(if has_finalizers {
                Deleted::Pending(old)
            } else {
                Deleted::Gone(old)
            });
        }
        if has_finalizers {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(Deleted::Pending(old));
            }
            let mut new = (*old).clone();
            new["metadata"]["deletionTimestamp"] = Value::String(now.to_string());
            new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            st.rv += 1;
            set_rv(&mut new, st.rv);
            let new = Arc::new(new);
            st.objects[rt].insert(key, new.clone());
            self.emit(&mut st, rt, EventType::Modified, new.clone(), Some(old));
            return Ok(Deleted::Pending(new));
        }
        if rt == NAMESPACES {
            // As in Kubernetes: the namespace turns Terminating and the namespace controller
            // (controllers.rs) removes its content and then the namespace, a moment later.
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(Deleted::Pending(old));
            }
            let mut new = (*old).clone();
            new["metadata"]["deletionTimestamp"] = Value::String(now.to_string());
            new["status"] = json!({"phase": "Terminating"});
            st.rv += 1;
            set_rv(&mut new, st.rv);
            let new = Arc::new(new);
            st.objects[rt].insert(key, new.clone());
            self.emit(&mut st, rt, EventType::Modified, new.clone(), Some(old));
            return Ok(Deleted::Pending(new));
        }
        let gone = self.remove(&mut st, rt, &key);
        if let Some(g) = &gone {
            self.cascade(&mut st, rt, g, opts.propagation);
        }
        gone.map(Deleted::Gone)
            .ok_or_else(|| ApiError::not_found(r, name))
    }

    /// Removes a terminating namespace and everything in it (the namespace controller).
    pub fn purge_namespace(&self, name: &str) {
        let mut st = self.lock();
        for (i, res) in RESOURCES.iter().enumerate() {
            if !res.namespaced {
                continue;
            }
            let keys: Vec<Key> = st.objects[i]
                .range::<Key, _>((name.to_string(), String::new())..)
                .take_while(|(k, _)| k.0 == name)
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                self.remove(&mut st, i, &k);
            }
        }
        self.remove(&mut st, NAMESPACES, &(String::new(), name.to_string()));
    }

    fn remove(&self, st: &mut State, rt: usize, key: &Key) -> Option<Arc<Value>> {
        let old = st.objects[rt].remove(key)?;
        st.rv += 1;
        let mut last = (*old).clone();
        set_rv(&mut last, st.rv);
        let last = Arc::new(last);
        self.emit(st, rt, EventType::Deleted, last.clone(), None);
        Some(last)
    }

    /// Garbage collection of the dependents of a deleted owner.
    fn cascade(&self, st: &mut State, owner_rt: usize, owner: &Value, propagation: Propagation) {
        let uid = meta_str(owner, "uid").to_string();
        if uid.is_empty() {
            return;
        }
        let owner_ns = RESOURCES[owner_rt]
            .namespaced
            .then(|| meta_str(owner, "namespace").to_string());
        let owned_by = |v: &Value| {
            v.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|refs| {
                    refs.iter()
                        .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid.as_str()))
                })
        };
        let mut dependents: Vec<(usize, Key)> = Vec::new();
        for (i, map) in st.objects.iter().enumerate() {
            let iter: Box<dyn Iterator<Item = (&Key, &Arc<Value>)>> = match &owner_ns {
                Some(n) => Box::new(
                    map.range::<Key, _>((n.clone(), String::new())..)
                        .take_while(move |(k, _)| &k.0 == n),
                ),
                None => Box::new(map.iter()),
            };
            for (k, v) in iter {
                if owned_by(v) {
                    dependents.push((i, k.clone()));
                }
            }
        }
        for (i, k) in dependents {
            match propagation {
                Propagation::Cascade | Propagation::Foreground => {
                    if let Some(gone) = self.remove(st, i, &k) {
                        self.cascade(st, i, &gone, Propagation::Cascade);
                    }
                }
                Propagation::Orphan => {
                    let Some(old) = st.objects[i].get(&k).cloned() else {
                        continue;
                    };
                    let mut new = (*old).clone();
                    if let Some(refs) = new
                        .pointer_mut("/metadata/ownerReferences")
                        .and_then(Value::as_array_mut)
                    {
                        refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(&uid));
                    }
                    // As the real garbage collector's patch: no empty list left behind.
                    if new
                        .pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .is_some_and(Vec::is_empty)
                        && let Some(m) = new["metadata"].as_object_mut()
                    {
                        m.remove("ownerReferences");
                    }
                    st.rv += 1;
                    set_rv(&mut new, st.rv);
                    let new = Arc::new(new);
                    st.objects[i].insert(k, new.clone());
                    self.emit(st, i, EventType::Modified, new, Some(old));
                }
            }
        }
    }

    /// Starts a watch of one resource. `from`: `None` sends every current object matching
    /// `pred` as ADDED first; `Some(rv)` replays history after `rv`.
    ///
    /// # Errors
    /// 410 Expired when `rv` is older than the kept history.
    pub fn watch(
        &self,
        rt: usize,
        from: Option<u64>,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<WatchStart, ApiError> {
        let st = self.lock();
        let rx = self.tx.subscribe();
        match from {
            None => {
                let initial = st.objects[rt]
                    .values()
                    .filter(|v| pred(v))
                    .cloned()
                    .collect();
                Ok(WatchStart {
                    initial,
                    replay: Vec::new(),
                    rx,
                    rv: st.rv,
                })
            }
            Some(rv) => {
                if rv < st.floor {
                    return Err(ApiError::gone(rv, st.floor + 1));
                }
                let start = st.history.partition_point(|e| e.rv <= rv);
                let replay = st
                    .history
                    .range(start..)
                    .filter(|e| e.rt == rt)
                    .cloned()
                    .collect();
                Ok(WatchStart {
                    initial: Vec::new(),
                    replay,
                    rx,
                    rv: st.rv.max(rv),
                })
            }
        }
    }

    /// Every object and the resourceVersion, for the state file.
    pub fn dump(&self) -> Value {
        let st = self.lock();
        let objects: Vec<Value> = st
            .objects
            .iter()
            .flat_map(|m| m.values().map(|v| (**v).clone()))
            .collect();
        json!({"resourceVersion": st.rv, "objects": objects})
    }

    /// Loads a [`Store::dump`]; objects of unknown kinds are skipped.
    pub fn restore(&self, dump: &Value) -> usize {
        let mut st = self.lock();
        let mut n = 0;
        if let Some(objs) = dump.get("objects").and_then(Value::as_array) {
            for o in objs {
                let api_version = o.get("apiVersion").and_then(Value::as_str).unwrap_or("");
                let kind = o.get("kind").and_then(Value::as_str).unwrap_or("");
                if let Some(rt) = super::resources::find_kind(api_version, kind) {
                    let key = (
                        meta_str(o, "namespace").to_string(),
                        meta_str(o, "name").to_string(),
                    );
                    st.objects[rt].insert(key, Arc::new(o.clone()));
                    n += 1;
                }
            }
        }
        let rv = dump
            .get("resourceVersion")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        st.rv = st.rv.max(rv);
        st.floor = st.rv;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_object_ignores_only_the_resource_version_and_managed_field_times() {
        let a = json!({"kind": "X", "metadata": {"name": "a", "resourceVersion": "1",
            "managedFields": [{"manager": "m", "time": "t1", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"n": 1}});
        let mut b = a.clone();
        b["metadata"]["resourceVersion"] = json!("2");
        b["metadata"]["managedFields"][0]["time"] = json!("t2");
        assert!(same_object(&a, &b));
        let mut c = b.clone();
        c["spec"]["n"] = json!(2);
        assert!(!same_object(&a, &c), "spec");
        let mut c = b.clone();
        c["metadata"]["managedFields"][0]["manager"] = json!("other");
        assert!(!same_object(&a, &c), "manager");
        let mut c = b.clone();
        c["metadata"]["labels"] = json!({"x": "y"});
        assert!(!same_object(&a, &c), "a new metadata field");
        let mut c = b.clone();
        c["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("resourceVersion");
        assert!(same_object(&a, &c), "no resourceVersion at all");
        let mut c = b;
        c["status"] = json!({});
        assert!(!same_object(&a, &c), "a new top-level field");
    }
}
