//! What changed between two deployment specs, field by field: the CHANGE column of
//! `ds deployment history` and the lines of `ds deployment diff`.
//!
//! Specs are compared as their JSON form, so every field, including ones added later,
//! is covered without a list to keep up to date. Lists of named items (the environment)
//! are compared by name, so that adding one variable is one change, not a new list.

use crate::DeploymentSpec;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One changed field: its path (`image`, `resources.cpu_limit`, `env[DB_URL]`) and its
/// values before and after (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldChange {
    pub path: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

/// The fields that differ from `old` to `new`, in path order.
#[must_use]
pub fn spec_changes(old: &DeploymentSpec, new: &DeploymentSpec) -> Vec<FieldChange> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &serde_json::to_value(old).unwrap_or_default(), &mut a);
    flatten("", &serde_json::to_value(new).unwrap_or_default(), &mut b);
    let mut paths: Vec<&String> = a.keys().chain(b.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter_map(|path| {
            let (old, new) = (a.get(path), b.get(path));
            (old != new).then(|| FieldChange {
                path: path.clone(),
                old: old.cloned(),
                new: new.cloned(),
            })
        })
        .collect()
}

/// Leaves of `value` by path; nulls, empty lists and empty maps count as absent, so that
/// "unset" and "empty" are no change.
fn flatten(path: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Value::Null => {}
        Value::Object(map) => {
            for (key, v) in map {
                flatten(&join(key), v, out);
            }
        }
        Value::Array(items) if items.is_empty() => {}
        Value::Array(items) => match named(items) {
            Some(by_name) => {
                for (name, item) in by_name {
                    let mut rest = item.clone();
                    rest.remove("name");
                    let key = format!("{path}[{name}]");
                    // A named item with one other field (an env var's value) is that value.
                    match rest.len() {
                        1 => flatten(&key, rest.values().next().unwrap_or(&Value::Null), out),
                        _ => flatten(&key, &Value::Object(rest), out),
                    }
                }
            }
            None => {
                out.insert(path.to_string(), value.clone());
            }
        },
        leaf => {
            out.insert(path.to_string(), leaf.clone());
        }
    }
}

/// The items by their `name`, when every item is an object with a distinct string name.
fn named(items: &[Value]) -> Option<BTreeMap<&str, &Map<String, Value>>> {
    let mut by_name = BTreeMap::new();
    for item in items {
        let obj = item.as_object()?;
        let name = obj.get("name")?.as_str()?;
        if by_name.insert(name, obj).is_some() {
            return None;
        }
    }
    Some(by_name)
}

/// A value as one short piece of text: strings bare, the rest as JSON.
#[must_use]
pub fn show(value: Option<&Value>) -> String {
    match value {
        None => "(none)".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// Longest CHANGE summary; more is cut with "…".
const SUMMARY_MAX: usize = 160;
/// Longest value shown in a summary; a longer one is named by its path alone.
const VALUE_MAX: usize = 80;

/// The changes in one line: `image a → b, replicas 1 → 3, env[DEBUG] added`.
#[must_use]
pub fn summary(changes: &[FieldChange]) -> String {
    let parts: Vec<String> = changes
        .iter()
        .map(|c| {
            let (old, new) = (show(c.old.as_ref()), show(c.new.as_ref()));
            match (&c.old, &c.new) {
                (None, Some(_)) if new.chars().count() <= VALUE_MAX => {
                    format!("{} {new} added", c.path)
                }
                (None, _) => format!("{} added", c.path),
                (Some(_), None) => format!("{} removed", c.path),
                _ if old.chars().count() + new.chars().count() <= VALUE_MAX => {
                    format!("{} {old} → {new}", c.path)
                }
                _ => format!("{} changed", c.path),
            }
        })
        .collect();
    let line = parts.join(", ");
    match line.char_indices().nth(SUMMARY_MAX) {
        None => line,
        Some((end, _)) => format!("{}…", &line[..end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EnvVar;

    fn env(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn scalar_nested_and_named_list_changes_are_found_by_path() {
        let old = DeploymentSpec::test("iris");
        let mut new = old.clone().image("tf:2").replicas(3);
        new.env = vec![env("DEBUG", "1")];
        new.resources.cpu_limit = Some("500m".into());
        let changes = spec_changes(&old, &new);
        let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            ["env[DEBUG]", "image", "replicas", "resources.cpu_limit"]
        );
        assert_eq!(changes[0].old, None);
        assert_eq!(changes[0].new, Some(Value::from("1")));
        assert_eq!(
            summary(&changes),
            "env[DEBUG] 1 added, image tensorflow/serving:2.15.0 → tf:2, replicas 1 → 3, resources.cpu_limit 500m added"
        );
        // Back again: the same paths, values swapped.
        let back = spec_changes(&new, &old);
        assert_eq!(back.len(), 4);
        assert_eq!(back[0].new, None);
        assert!(spec_changes(&new, &new).is_empty());
    }

    #[test]
    fn one_env_var_more_is_one_change_and_order_is_no_change() {
        let mut old = DeploymentSpec::test("iris");
        old.env = vec![env("A", "1"), env("B", "2")];
        let mut new = old.clone();
        new.env = vec![env("B", "2"), env("A", "1"), env("C", "3")];
        let changes = spec_changes(&old, &new);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].path, "env[C]");
        assert_eq!(summary(&changes), "env[C] 3 added");
    }

    #[test]
    fn long_values_and_long_summaries_are_cut() {
        let old = DeploymentSpec::test("iris");
        let new = old.clone().image(&"r.io/x".repeat(20));
        assert_eq!(summary(&spec_changes(&old, &new)), "image changed");
        let mut many = old.clone();
        many.labels = (0..30).map(|i| (format!("k{i}"), "v".into())).collect();
        let line = summary(&spec_changes(&old, &many));
        assert!(
            line.ends_with('…') && line.chars().count() == SUMMARY_MAX + 1,
            "{line}"
        );
    }
}
