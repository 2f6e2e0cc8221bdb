//! A deployer's remapping (Dataiku's connection remapping): env values and Secret names
//! replaced when a deployment is created on, or promoted to, that deployer, so that one
//! spec runs against `sql-dev` in Development and `sql-prod` in Production.

use crate::spec::DeploymentSpec;
use crate::validate::{ValidationError, check_secret_name, env_name_ok};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Most entries of a deployer's map, env and secrets together.
pub const MAX_REMAP_ENTRIES: usize = 200;

/// Longest value of an env entry's `from` or `to`, in bytes (an env value's limit).
pub const MAX_REMAP_VALUE_BYTES: usize = crate::validate::MAX_ENV_VALUE_BYTES;

/// Replaces the value `from` of env variable `name` by `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvRemap {
    pub name: String,
    pub from: String,
    pub to: String,
}

/// Replaces Secret `from` by Secret `to` wherever the spec names a Secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRemap {
    pub from: String,
    pub to: String,
}

/// A deployer's map; empty by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remap {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvRemap>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretRemap>,
}

impl Remap {
    /// Whether it replaces nothing.
    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && self.secrets.is_empty()
    }
}

/// An edit of a deployer's map, as `ds deployer remap` makes it: `clear` first, then the
/// removals, then the additions (each replacing the entry of the same env name and
/// `from`, or the same Secret `from`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemapEdit {
    pub set_env: Vec<EnvRemap>,
    pub set_secrets: Vec<SecretRemap>,
    /// Env variable names whose entries go.
    pub remove_env: Vec<String>,
    /// Secret names (`from`) whose entries go.
    pub remove_secrets: Vec<String>,
    pub clear: bool,
}

impl RemapEdit {
    /// `current` with the edit applied (not validated: see [`validate`]).
    pub fn apply_to(&self, current: &Remap) -> Remap {
        let mut out = if self.clear {
            Remap::default()
        } else {
            current.clone()
        };
        out.env.retain(|e| !self.remove_env.contains(&e.name));
        out.secrets
            .retain(|s| !self.remove_secrets.contains(&s.from));
        for e in &self.set_env {
            match out
                .env
                .iter_mut()
                .find(|x| x.name == e.name && x.from == e.from)
            {
                Some(x) => x.to.clone_from(&e.to),
                None => out.env.push(e.clone()),
            }
        }
        for s in &self.set_secrets {
            match out.secrets.iter_mut().find(|x| x.from == s.from) {
                Some(x) => x.to.clone_from(&s.to),
                None => out.secrets.push(s.clone()),
            }
        }
        out
    }
}

/// What a replacement was of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemapKind {
    Env,
    Secret,
}

/// One replacement [`apply`] made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remapped {
    pub kind: RemapKind,
    /// For env: the variable's name; for a Secret: the spec field that names it
    /// (`image_pull_secrets`, `tls_secret`).
    pub name: String,
    pub from: String,
    pub to: String,
}

impl std::fmt::Display for Remapped {
    /// `env DB_CONN sql-dev → sql-prod`, `secret creds-dev → creds-prod (tls_secret)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            RemapKind::Env => write!(f, "env {} {} → {}", self.name, self.from, self.to),
            RemapKind::Secret => write!(f, "secret {} → {} ({})", self.from, self.to, self.name),
        }
    }
}

/// `spec` with `remap` applied, and what was replaced. One pass: a value replaced is not
/// looked up again, so `a → b` and `b → c` turn `a` into `b`, not `c`.
pub fn apply(spec: &DeploymentSpec, remap: &Remap) -> (DeploymentSpec, Vec<Remapped>) {
    let mut out = spec.clone();
    let mut done = Vec::new();
    for var in &mut out.env {
        if let Some(r) = remap
            .env
            .iter()
            .find(|r| r.name == var.name && r.from == var.value)
        {
            done.push(Remapped {
                kind: RemapKind::Env,
                name: var.name.clone(),
                from: r.from.clone(),
                to: r.to.clone(),
            });
            var.value.clone_from(&r.to);
        }
    }
    let secret = |name: &mut String, field: &str, done: &mut Vec<Remapped>| {
        if let Some(r) = remap.secrets.iter().find(|r| r.from == *name) {
            done.push(Remapped {
                kind: RemapKind::Secret,
                name: field.to_string(),
                from: r.from.clone(),
                to: r.to.clone(),
            });
            name.clone_from(&r.to);
        }
    };
    for name in &mut out.image_pull_secrets {
        secret(name, "image_pull_secrets", &mut done);
    }
    if let Some(name) = out.tls_secret.as_mut() {
        secret(name, "tls_secret", &mut done);
    }
    (out, done)
}

/// Checks a deployer's map; errors name the CLI flag (`--env`, `--secret`) and show the
/// entry as it is given there (`NAME=FROM:TO`, `FROM:TO`).
///
/// # Errors
/// The first rule broken: a bad env name or Secret name, `from` equal to `to`, an entry
/// given twice, or more than [`MAX_REMAP_ENTRIES`] entries.
pub fn validate(remap: &Remap) -> Result<(), ValidationError> {
    let total = remap.env.len() + remap.secrets.len();
    if total > MAX_REMAP_ENTRIES {
        return Err(ValidationError::new(
            "--env/--secret",
            format!("{total} entries"),
            format!(
                "a deployer's remapping has at most {MAX_REMAP_ENTRIES} entries, env and secrets together"
            ),
        ));
    }
    let mut seen = HashSet::new();
    for r in &remap.env {
        let shown = format!("{}={}:{}", r.name, r.from, r.to);
        if !env_name_ok(&r.name) {
            return Err(ValidationError::new(
                "--env",
                shown,
                "NAME must be an environment variable name: letters, digits, '_', '-' or '.', not starting with a digit",
            ));
        }
        if r.from.is_empty() {
            return Err(ValidationError::new(
                "--env",
                shown,
                "FROM must not be empty: give NAME=FROM:TO",
            ));
        }
        if r.from.contains(':') {
            return Err(ValidationError::new(
                "--env",
                shown,
                "FROM must not contain ':' (the first ':' ends it; TO may contain ':')",
            ));
        }
        if r.from.len() > MAX_REMAP_VALUE_BYTES || r.to.len() > MAX_REMAP_VALUE_BYTES {
            return Err(ValidationError::new(
                "--env",
                shown,
                format!("FROM and TO are env values of at most {MAX_REMAP_VALUE_BYTES} bytes"),
            ));
        }
        if r.from == r.to {
            return Err(ValidationError::new(
                "--env",
                shown,
                "FROM and TO are the same: the entry would change nothing",
            ));
        }
        if !seen.insert(("env", r.name.as_str(), r.from.as_str())) {
            return Err(ValidationError::new(
                "--env",
                shown,
                "is given more than once: each NAME=FROM may map to one TO",
            ));
        }
    }
    for r in &remap.secrets {
        let shown = format!("{}:{}", r.from, r.to);
        for name in [&r.from, &r.to] {
            if check_secret_name("--secret", name).is_err() {
                return Err(ValidationError::new(
                    "--secret",
                    shown,
                    "FROM and TO must be Secret names: DNS-1123 subdomains (lowercase letters, digits, '-' and '.')",
                ));
            }
        }
        if r.from == r.to {
            return Err(ValidationError::new(
                "--secret",
                shown,
                "FROM and TO are the same: the entry would change nothing",
            ));
        }
        if !seen.insert(("secret", "", r.from.as_str())) {
            return Err(ValidationError::new(
                "--secret",
                shown,
                "is given more than once: each FROM may map to one TO",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::EnvVar;

    fn env(name: &str, from: &str, to: &str) -> EnvRemap {
        EnvRemap {
            name: name.into(),
            from: from.into(),
            to: to.into(),
        }
    }

    fn secret(from: &str, to: &str) -> SecretRemap {
        SecretRemap {
            from: from.into(),
            to: to.into(),
        }
    }

    fn spec() -> DeploymentSpec {
        let mut spec = DeploymentSpec::test("iris").host("iris.example.com");
        spec.env = vec![
            EnvVar {
                name: "DB_CONN".into(),
                value: "sql-dev".into(),
            },
            EnvVar {
                name: "OTHER".into(),
                value: "sql-dev".into(),
            },
        ];
        spec.image_pull_secrets = vec!["creds-dev".into(), "registry".into()];
        spec.tls_secret = Some("creds-dev".into());
        spec
    }

    #[test]
    fn replaces_the_named_env_value_and_every_place_a_secret_is_named() {
        let remap = Remap {
            env: vec![env("DB_CONN", "sql-dev", "sql-prod")],
            secrets: vec![secret("creds-dev", "creds-prod")],
        };
        let (out, done) = apply(&spec(), &remap);
        assert_eq!(out.env[0].value, "sql-prod");
        assert_eq!(
            out.env[1].value, "sql-dev",
            "another variable keeps its value"
        );
        assert_eq!(out.image_pull_secrets, vec!["creds-prod", "registry"]);
        assert_eq!(out.tls_secret.as_deref(), Some("creds-prod"));
        let shown: Vec<String> = done.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            vec![
                "env DB_CONN sql-dev → sql-prod",
                "secret creds-dev → creds-prod (image_pull_secrets)",
                "secret creds-dev → creds-prod (tls_secret)",
            ]
        );
    }

    #[test]
    fn a_value_not_in_the_map_stays_and_nothing_is_listed() {
        let remap = Remap {
            env: vec![env("DB_CONN", "sql-test", "sql-prod")],
            secrets: vec![secret("other", "creds-prod")],
        };
        let (out, done) = apply(&spec(), &remap);
        assert_eq!(out, spec());
        assert!(done.is_empty());
    }

    #[test]
    fn one_pass_does_not_chain_entries() {
        let remap = Remap {
            env: vec![
                env("DB_CONN", "sql-dev", "sql-test"),
                env("DB_CONN", "sql-test", "sql-prod"),
            ],
            secrets: vec![
                secret("creds-dev", "creds-test"),
                secret("creds-test", "creds-prod"),
            ],
        };
        let (out, done) = apply(&spec(), &remap);
        assert_eq!(out.env[0].value, "sql-test");
        assert_eq!(out.tls_secret.as_deref(), Some("creds-test"));
        assert_eq!(done.len(), 3);
    }

    #[test]
    fn an_empty_map_changes_nothing_and_serializes_to_nothing() {
        let (out, done) = apply(&spec(), &Remap::default());
        assert_eq!((out, done.len()), (spec(), 0));
        assert_eq!(serde_json::to_string(&Remap::default()).unwrap(), "{}");
        assert!(Remap::default().is_empty());
    }

    #[test]
    fn an_edit_clears_then_removes_then_adds_or_replaces() {
        let current = Remap {
            env: vec![
                env("DB_CONN", "sql-dev", "sql-prod"),
                env("CACHE", "c-dev", "c-prod"),
            ],
            secrets: vec![
                secret("creds-dev", "creds-prod"),
                secret("tls-dev", "tls-prod"),
            ],
        };
        let edit = RemapEdit {
            set_env: vec![
                env("DB_CONN", "sql-dev", "sql-prod-2"),
                env("Q", "q1", "q2"),
            ],
            set_secrets: vec![secret("x", "y")],
            remove_env: vec!["CACHE".into()],
            remove_secrets: vec!["tls-dev".into()],
            clear: false,
        };
        let out = edit.apply_to(&current);
        assert_eq!(
            out.env,
            vec![
                env("DB_CONN", "sql-dev", "sql-prod-2"),
                env("Q", "q1", "q2")
            ]
        );
        assert_eq!(
            out.secrets,
            vec![secret("creds-dev", "creds-prod"), secret("x", "y")]
        );
        let cleared = RemapEdit {
            set_secrets: vec![secret("a", "b")],
            clear: true,
            ..RemapEdit::default()
        }
        .apply_to(&current);
        assert_eq!(
            cleared,
            Remap {
                env: vec![],
                secrets: vec![secret("a", "b")]
            }
        );
    }

    #[test]
    fn validation_names_the_flag_and_the_rule() {
        let bad = |remap: Remap| validate(&remap).unwrap_err();
        let e = bad(Remap {
            env: vec![env("1BAD", "a", "b")],
            ..Remap::default()
        });
        assert_eq!(e.field, "--env");
        assert!(e.to_string().contains("environment variable name"), "{e}");
        let e = bad(Remap {
            env: vec![env("DB_CONN", "sql", "sql")],
            ..Remap::default()
        });
        assert!(e.to_string().contains("the same"), "{e}");
        let e = bad(Remap {
            env: vec![env("DB_CONN", "", "sql")],
            ..Remap::default()
        });
        assert!(e.to_string().contains("FROM must not be empty"), "{e}");
        let e = bad(Remap {
            env: vec![env("A", "x", "y"), env("A", "x", "z")],
            ..Remap::default()
        });
        assert!(e.to_string().contains("more than once"), "{e}");
        let e = bad(Remap {
            secrets: vec![secret("Creds_Dev", "creds-prod")],
            ..Remap::default()
        });
        assert_eq!(e.field, "--secret");
        assert!(e.to_string().contains("Secret names"), "{e}");
        let e = bad(Remap {
            secrets: vec![secret("creds", "creds")],
            ..Remap::default()
        });
        assert_eq!(e.field, "--secret");
        let e = bad(Remap {
            secrets: (0..=MAX_REMAP_ENTRIES)
                .map(|i| secret(&format!("s{i}"), "t"))
                .collect(),
            ..Remap::default()
        });
        assert!(e.to_string().contains("at most 200"), "{e}");
        validate(&Remap {
            env: vec![
                env("DB_CONN", "sql-dev", "postgres://db:5432"),
                env("DB_CONN", "sql-test", ""),
            ],
            secrets: vec![secret("creds-dev", "creds-prod")],
        })
        .expect("a good map");
    }
}
