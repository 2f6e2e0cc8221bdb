//! Credentials: deployer tokens and admin API keys. Secrets are 256-bit random, shown
//! once, stored as SHA-256 hashes, and compared in constant time.
//!
//! A secret reads `PREFIX_ID_SECRET`: the ID (64 random bits, hex) is a public lookup key
//! so the database never searches by anything derived from the secret; the 256-bit
//! secret part (base64url) is what makes it unguessable. The stored hash covers the whole
//! string.

use super::store::{ChangeBy, Store, StoreError, TokenRecord};
use base64::Engine as _;
use chrono::Utc;
use sha2::{Digest, Sha256};
use std::path::Path;
use subtle::ConstantTimeEq;

/// Prefix of deployer tokens.
pub const TOKEN_PREFIX: &str = "dst";
/// Prefix of admin API keys.
pub const API_KEY_PREFIX: &str = "dsk";
/// File name of the admin API key in the data directory.
pub const ADMIN_KEY_FILE: &str = "admin.key";

/// A freshly generated secret: the full string (shown once), its ID and hash.
pub struct NewSecret {
    /// The whole secret, handed to the user once and never logged.
    pub secret: String,
    /// The public lookup ID.
    pub id: String,
    /// SHA-256 of `secret`.
    pub hash: [u8; 32],
}

// Hand-written so that a stray `{:?}` cannot print the secret.
impl std::fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSecret")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Generates a new secret with the given prefix.
pub fn generate(prefix: &str) -> NewSecret {
    let id = hex::encode(rand::random::<[u8; 8]>());
    let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let secret = format!("{prefix}_{id}_{body}");
    let hash = hash(&secret);
    NewSecret { secret, id, hash }
}

/// SHA-256 of a secret.
pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Splits a presented secret into its lookup ID, if it has the expected shape.
pub fn parse_id<'a>(prefix: &str, secret: &'a str) -> Option<&'a str> {
    let rest = secret.strip_prefix(prefix)?.strip_prefix('_')?;
    let (id, body) = rest.split_once('_')?;
    let well_formed = id.len() == 16
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && body.len() == 43
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then_some(id)
}

/// Whether `presented` matches the stored record now: constant-time hash comparison and
/// not past its expiry.
pub fn matches(record: &TokenRecord, presented: &str) -> bool {
    let ok: bool = hash(presented).ct_eq(&record.hash).into();
    ok && record.expires_at.is_none_or(|t| t > Utc::now())
}

/// Who a valid deployer token authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The deployer the token belongs to.
    pub deployer_id: String,
    /// The token's public ID, to re-check later that it is still valid.
    pub token_id: String,
}

/// Checks a deployer token; returns the deployer it authenticates.
///
/// # Errors
/// Only database failures; a wrong token is `Ok(None)`.
pub async fn verify_token(
    store: &dyn Store,
    presented: &str,
) -> Result<Option<Authenticated>, StoreError> {
    let Some(id) = parse_id(TOKEN_PREFIX, presented) else {
        return Ok(None);
    };
    Ok(store
        .find_token(id)
        .await?
        .filter(|r| matches(r, presented))
        .map(|r| Authenticated {
            deployer_id: r.deployer_id,
            token_id: id.to_string(),
        }))
}

/// Whether a token that was verified earlier is still valid: not revoked (its deployer
/// deleted) and not rotated out past its overlap window. Long-lived streams call this
/// so that a rotated-out token does not keep a stream open forever.
///
/// # Errors
/// Only database failures.
pub async fn still_valid(store: &dyn Store, token_id: &str) -> Result<bool, StoreError> {
    Ok(store
        .find_token(token_id)
        .await?
        .is_some_and(|r| r.expires_at.is_none_or(|t| t > Utc::now())))
}

/// Checks an admin API key.
///
/// # Errors
/// Only database failures; a wrong key is `Ok(false)`.
pub async fn verify_api_key(store: &dyn Store, presented: &str) -> Result<bool, StoreError> {
    let Some(id) = parse_id(API_KEY_PREFIX, presented) else {
        return Ok(false);
    };
    Ok(store
        .find_api_key(id)
        .await?
        .is_some_and(|r| matches(&r, presented)))
}

/// Errors of setting up the admin API key.
#[derive(Debug, thiserror::Error)]
pub enum AdminKeyError {
    #[error("writing the admin key file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Makes sure an admin API key exists. On the first start it creates one, stores its
/// hash, writes it 0600 to `data_dir/admin.key` and returns `(key, true)`; later starts
/// return the key from that file when it is still valid (`(key, false)`), or an empty
/// string when the file is missing or stale (the stored key keeps working).
///
/// # Errors
/// The key file cannot be written or the store fails.
pub async fn ensure_admin_key(
    store: &dyn Store,
    data_dir: &Path,
) -> Result<(String, bool), AdminKeyError> {
    let path = data_dir.join(ADMIN_KEY_FILE);
    if store.has_api_key().await? {
        let existing = std::fs::read_to_string(&path).unwrap_or_default();
        let existing = existing.trim();
        if verify_api_key(store, existing).await? {
            return Ok((existing.to_string(), false));
        }
        tracing::warn!(path = %path.display(), "admin key file missing or not matching the database; the stored key stays valid");
        return Ok((String::new(), false));
    }
    let key = generate(API_KEY_PREFIX);
    write_private(&path, &format!("{}\n", key.secret)).map_err(|source| AdminKeyError::Write {
        path: path.display().to_string(),
        source,
    })?;
    // The gateway itself makes the first key: nobody could have called it yet.
    let by = ChangeBy::new("gateway", uuid::Uuid::new_v4().to_string())
        .with_note("the admin key of the first start");
    store.add_api_key(&by, &key.id, key.hash).await?;
    Ok((key.secret, true))
}

/// Writes a file readable only by its owner.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        // The mode above applies only to new files; tighten an existing one too.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secret_parses_and_matches() {
        let s = generate(TOKEN_PREFIX);
        assert_eq!(parse_id(TOKEN_PREFIX, &s.secret), Some(s.id.as_str()));
        let record = TokenRecord {
            deployer_id: "d".into(),
            hash: s.hash,
            expires_at: None,
        };
        assert!(matches(&record, &s.secret));
        let other = generate(TOKEN_PREFIX);
        assert!(!matches(&record, &other.secret));
    }

    #[test]
    fn malformed_or_foreign_secrets_do_not_parse() {
        let s = generate(API_KEY_PREFIX);
        assert_eq!(parse_id(TOKEN_PREFIX, &s.secret), None);
        assert_eq!(parse_id(TOKEN_PREFIX, "dst_abc_def"), None);
        assert_eq!(parse_id(TOKEN_PREFIX, ""), None);
    }

    #[test]
    fn expired_token_does_not_match() {
        let s = generate(TOKEN_PREFIX);
        let record = TokenRecord {
            deployer_id: "d".into(),
            hash: s.hash,
            expires_at: Some(Utc::now() - chrono::Duration::seconds(1)),
        };
        assert!(!matches(&record, &s.secret));
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let s = generate(TOKEN_PREFIX);
        assert!(!format!("{s:?}").contains(&s.secret));
    }
}
