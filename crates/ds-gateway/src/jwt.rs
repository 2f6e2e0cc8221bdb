//! OIDC / JWT bearer tokens for the control API: the issuer's public keys, loaded and
//! checked at start (`--jwt-*`), and the pure check of a presented token against them.
//!
//! Only RS256 and ES256 are accepted, and each key is bound to the one algorithm of its
//! type: `none`, HMAC (including HS256 keyed with a public key's bytes, the classic
//! confusion attack) and every other algorithm fail before any key is touched. The
//! signature is checked before any claim is read, so a forged token learns nothing about
//! which claims would have passed.

use crate::GatewayError;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use p256::ecdsa::signature::Verifier as _;
use p256::pkcs8::DecodePublicKey as _;
use rsa::pkcs1::DecodeRsaPublicKey as _;
use rsa::sha2::{Digest as _, Sha256};
use rsa::traits::PublicKeyParts as _;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest token looked at: real ID and access tokens are a few KiB, and this bounds the
/// work an unauthenticated caller can cause.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Longest subject accepted: it becomes the actor in revisions and logs.
const MAX_SUBJECT_LEN: usize = 255;
/// Smallest RSA modulus accepted (NIST SP 800-131A).
const MIN_RSA_BITS: usize = 2048;
/// The object identifier of EC public keys in a SubjectPublicKeyInfo (RFC 5480).
const EC_PUBLIC_KEY_OID: &str = "1.2.840.10045.2.1";

const PUBLIC_KEY_FLAG: &str = "--jwt-public-key";
const JWKS_FLAG: &str = "--jwt-jwks-file";
const ISSUER_FLAG: &str = "--jwt-issuer";

/// Flags of `ds gateway` for OIDC / JWT bearer tokens on the control API (the CLI's
/// calls); without `--jwt-issuer` only API keys are accepted.
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "OIDC / JWT bearer tokens")]
pub struct JwtArgs {
    /// Accept JWT bearer tokens whose `iss` claim is exactly this URL (the OIDC issuer);
    /// needs --jwt-public-key or --jwt-jwks-file.
    #[arg(
        id = "jwt_issuer",
        long = "jwt-issuer",
        env = "DS_JWT_ISSUER",
        value_name = "URL"
    )]
    pub issuer: Option<String>,
    /// When set, a token's `aud` claim (a string or an array) must contain this value.
    #[arg(
        id = "jwt_audience",
        long = "jwt-audience",
        env = "DS_JWT_AUDIENCE",
        value_name = "AUD"
    )]
    pub audience: Option<String>,
    /// PEM public key of the issuer: RSA (RS256) or EC P-256 (ES256). Repeat the flag
    /// (comma-separate in the environment variable) to accept several keys during a rotation.
    #[arg(
        id = "jwt_public_key",
        long = "jwt-public-key",
        env = "DS_JWT_PUBLIC_KEY",
        value_name = "FILE",
        value_delimiter = ','
    )]
    pub public_keys: Vec<PathBuf>,
    /// JWKS JSON file with the issuer's keys (RSA and EC P-256 signing keys are used;
    /// keys of other types or uses are skipped).
    #[arg(
        id = "jwt_jwks_file",
        long = "jwt-jwks-file",
        env = "DS_JWT_JWKS_FILE",
        value_name = "FILE"
    )]
    pub jwks_file: Option<PathBuf>,
    /// Claim with the caller's groups: an array of strings or one string. A dotted path
    /// such as `realm_access.roles` reaches into objects.
    #[arg(
        id = "jwt_groups_claim",
        long = "jwt-groups-claim",
        env = "DS_JWT_GROUPS_CLAIM",
        value_name = "CLAIM",
        default_value = "groups"
    )]
    pub groups_claim: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat` (e.g. `30s`).
    #[arg(
        id = "jwt_leeway",
        long = "jwt-leeway",
        env = "DS_JWT_LEEWAY",
        value_name = "DURATION",
        default_value = "30s",
        value_parser = ds_core::duration::parse
    )]
    pub leeway: Duration,
}

impl Default for JwtArgs {
    /// JWT bearer tokens off; the other values as the flags' defaults.
    fn default() -> Self {
        Self {
            issuer: None,
            audience: None,
            public_keys: Vec::new(),
            jwks_file: None,
            groups_claim: "groups".to_string(),
            leeway: Duration::from_secs(30),
        }
    }
}

/// Who a valid token authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIdentity {
    /// The `sub` claim.
    pub subject: String,
    /// The groups claim's strings (empty when the claim is absent).
    pub groups: Vec<String>,
}

/// Why a token was refused. The messages go to the caller as they are: they say which
/// rule failed and never repeat the token, a claim's value or any key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token malformed")]
    Malformed,
    #[error("token algorithm not accepted")]
    AlgorithmNotAccepted,
    #[error("token signing key not known")]
    UnknownKey,
    #[error("token signature not valid")]
    BadSignature,
    #[error("token issuer not accepted")]
    WrongIssuer,
    #[error("token audience not accepted")]
    WrongAudience,
    #[error("token has no expiry")]
    MissingExpiry,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("token has no subject")]
    MissingSubject,
    #[error("token subject not accepted")]
    BadSubject,
}

/// A public key and the one algorithm it verifies.
enum Material {
    /// RS256: RSASSA-PKCS1-v1_5 with SHA-256.
    Rsa(rsa::PublicKey),
    /// ES256: ECDSA on P-256 with SHA-256.
    Ec(p256::ecdsa::VerifyingKey),
}

struct Key {
    /// The JWKS `kid`; PEM keys have none and are tried for every token of their type.
    kid: Option<String>,
    material: Material,
}

impl Key {
    fn fits(&self, alg: Alg, kid: Option<&str>) -> bool {
        let type_fits = matches!(
            (&self.material, alg),
            (Material::Rsa(_), Alg::Rs256) | (Material::Ec(_), Alg::Es256)
        );
        type_fits && (kid.is_none() || self.kid.is_none() || self.kid.as_deref() == kid)
    }

    fn verifies(&self, signed: &[u8], signature: &[u8]) -> bool {
        match &self.material {
            Material::Rsa(key) => key
                .verify(
                    rsa::Pkcs1v15Sign::new::<Sha256>(),
                    &Sha256::digest(signed),
                    signature,
                )
                .is_ok(),
            // JWS carries the raw 64-byte r || s (RFC 7518 §3.4), not DER.
            Material::Ec(key) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify(signed, &sig).is_ok()),
        }
    }
}

#[derive(Clone, Copy)]
enum Alg {
    Rs256,
    Es256,
}

/// Checks tokens against one issuer's keys; built once at start from [`JwtArgs`].
pub struct Verifier {
    issuer: String,
    audience: Option<String>,
    keys: Vec<Key>,
    groups_claim: String,
    leeway_secs: i64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("keys", &self.keys.len())
            .field("groups_claim", &self.groups_claim)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Reads and checks the configured keys; `None` when JWT bearer tokens are off (no
    /// `--jwt-*` flag given).
    ///
    /// # Errors
    /// A flag is missing its companion, or a key file is unreadable or holds no usable
    /// key: the error names the flag and the file.
    pub fn from_args(args: &JwtArgs) -> Result<Option<Verifier>, GatewayError> {
        let issuer = non_empty(args.issuer.as_deref());
        let audience = non_empty(args.audience.as_deref());
        let pem_files: Vec<&Path> = args
            .public_keys
            .iter()
            .map(PathBuf::as_path)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        let jwks_file = args
            .jwks_file
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty());
        let has_keys = !pem_files.is_empty() || jwks_file.is_some();
        let Some(issuer) = issuer else {
            if has_keys || audience.is_some() {
                return Err(config_error(
                    ISSUER_FLAG,
                    "required with --jwt-public-key, --jwt-jwks-file or --jwt-audience",
                ));
            }
            return Ok(None);
        };
        if !has_keys {
            return Err(config_error(
                PUBLIC_KEY_FLAG,
                "--jwt-issuer needs the issuer's public keys: give --jwt-public-key FILE or --jwt-jwks-file FILE",
            ));
        }
        let groups_claim = args.groups_claim.trim();
        if groups_claim.is_empty() {
            return Err(config_error(
                "--jwt-groups-claim",
                "must name a claim, e.g. groups or realm_access.roles",
            ));
        }
        let leeway_secs = i64::try_from(args.leeway.as_secs())
            .map_err(|_| config_error("--jwt-leeway", "too large"))?;
        let mut keys = Vec::new();
        for path in pem_files {
            let material =
                load_pem(path).map_err(|reason| key_error(PUBLIC_KEY_FLAG, path, reason))?;
            keys.push(Key {
                kid: None,
                material,
            });
        }
        if let Some(path) = jwks_file {
            keys.extend(load_jwks(path).map_err(|reason| key_error(JWKS_FLAG, path, reason))?);
        }
        Ok(Some(Verifier {
            issuer: issuer.to_string(),
            audience: audience.map(str::to_string),
            keys,
            groups_claim: groups_claim.to_string(),
            leeway_secs,
        }))
    }

    /// The accepted issuer (not secret: logged at start).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Whether tokens must name `--jwt-audience`.
    pub fn checks_audience(&self) -> bool {
        self.audience.is_some()
    }

    /// How many keys tokens are checked against.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Checks `token` at time `now`: algorithm, signature, then issuer, audience, validity
    /// window and subject.
    ///
    /// # Errors
    /// The first rule the token breaks.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<JwtIdentity, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header = decode_object(header_b64)?;
        let alg = match header.get("alg").and_then(Value::as_str) {
            Some("RS256") => Alg::Rs256,
            Some("ES256") => Alg::Es256,
            Some(_) => return Err(JwtError::AlgorithmNotAccepted),
            None => return Err(JwtError::Malformed),
        };
        // No header extension is understood here, so one marked critical must fail
        // (RFC 7515 §4.1.11).
        if header.contains_key("crit") {
            return Err(JwtError::Malformed);
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(JwtError::Malformed),
        };
        let signature = decode_b64(signature_b64)?;
        let signed = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
        let mut candidates = self.keys.iter().filter(|k| k.fits(alg, kid)).peekable();
        if candidates.peek().is_none() {
            return Err(JwtError::UnknownKey);
        }
        if !candidates.any(|k| k.verifies(signed, &signature)) {
            return Err(JwtError::BadSignature);
        }
        let claims = decode_object(payload_b64)?;
        self.check_claims(&claims, now.timestamp())?;
        let subject = match claims.get("sub") {
            None => return Err(JwtError::MissingSubject),
            Some(Value::String(s)) if s.is_empty() => return Err(JwtError::MissingSubject),
            Some(Value::String(s))
                if s.len() <= MAX_SUBJECT_LEN && !s.chars().any(char::is_control) =>
            {
                s.clone()
            }
            Some(_) => return Err(JwtError::BadSubject),
        };
        Ok(JwtIdentity {
            subject,
            groups: groups(&claims, &self.groups_claim),
        })
    }

    /// Issuer, audience and the validity window (RFC 7519 §4.1), `now` in Unix seconds.
    fn check_claims(
        &self,
        claims: &serde_json::Map<String, Value>,
        now: i64,
    ) -> Result<(), JwtError> {
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(JwtError::WrongIssuer);
        }
        if let Some(audience) = &self.audience {
            let contains = match claims.get("aud") {
                Some(Value::String(aud)) => aud == audience,
                Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
                _ => false,
            };
            if !contains {
                return Err(JwtError::WrongAudience);
            }
        }
        let leeway = self.leeway_secs;
        let exp = numeric_date(claims, "exp")?.ok_or(JwtError::MissingExpiry)?;
        if now >= exp.saturating_add(leeway) {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = numeric_date(claims, "nbf")?
            && now.saturating_add(leeway) < nbf
        {
            return Err(JwtError::NotYetValid);
        }
        if let Some(iat) = numeric_date(claims, "iat")?
            && iat > now.saturating_add(leeway)
        {
            return Err(JwtError::IssuedInFuture);
        }
        Ok(())
    }
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

fn config_error(flag: &'static str, reason: &str) -> GatewayError {
    GatewayError::JwtConfig {
        flag,
        reason: reason.to_string(),
    }
}

fn key_error(flag: &'static str, path: &Path, reason: String) -> GatewayError {
    GatewayError::JwtKey {
        flag,
        path: path.display().to_string(),
        reason,
    }
}

fn decode_b64(part: &str) -> Result<Vec<u8>, JwtError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed)
}

fn decode_object(part: &str) -> Result<serde_json::Map<String, Value>, JwtError> {
    match serde_json::from_slice(&decode_b64(part)?) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::Malformed),
    }
}

/// A NumericDate claim in whole seconds; `Ok(None)` when absent.
fn numeric_date(
    claims: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.is_finite())
                    // Saturating cast: a date beyond i64 is as good as never.
                    .map(|f| f.floor() as i64)
            })
            .map(Some)
            .ok_or(JwtError::Malformed),
    }
}

/// The groups claim's strings. A name is first looked up whole (namespaced claims such
/// as `https://example.com/groups` contain dots), then as a dotted path into objects.
fn groups(claims: &serde_json::Map<String, Value>, name: &str) -> Vec<String> {
    let found = claims.get(name).or_else(|| {
        let mut parts = name.split('.');
        let first = claims.get(parts.next()?)?;
        parts.try_fold(first, |v, part| v.get(part))
    });
    match found {
        Some(Value::String(group)) => vec![group.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// Reads one PEM public key: SPKI (`PUBLIC KEY`, RSA or EC P-256) or PKCS#1
/// (`RSA PUBLIC KEY`).
fn load_pem(path: &Path) -> Result<Material, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot be read: {e}"))?;
    let block = pem_block(&text).ok_or("is not a PEM file (no -----BEGIN/-----END block)")?;
    let (label, der) =
        p256::pkcs8::der::pem::decode_vec(block).map_err(|e| format!("is not valid PEM: {e}"))?;
    let material = match label {
        "PUBLIC KEY" => spki_key(&der)?,
        "RSA PUBLIC KEY" => Material::Rsa(
            rsa::PublicKey::from_pkcs1_der(&der)
                .map_err(|e| format!("is not a valid RSA public key: {e}"))?,
        ),
        label if label.contains("PRIVATE KEY") => {
            // Never echo any of it: this is the issuer's signing secret.
            return Err(
                "holds a private key; give the issuer's public key (openssl pkey -pubout)"
                    .to_string(),
            );
        }
        "CERTIFICATE" => {
            return Err(
                "holds a certificate; give its public key (openssl x509 -pubkey -noout)"
                    .to_string(),
            );
        }
        other => return Err(format!("holds a PEM {other:?} block, not a public key")),
    };
    check_rsa_size(&material)?;
    Ok(material)
}

/// The first `-----BEGIN …` to `-----END …-----` block of a file, leaving out text around
/// it that the strict PEM grammar refuses (comments, several trailing newlines).
fn pem_block(text: &[u8]) -> Option<&[u8]> {
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let start = find(text, b"-----BEGIN ")?;
    let end_marker = start + find(&text[start..], b"-----END ")?;
    let after = end_marker + b"-----END ".len();
    let end = after + find(&text[after..], b"-----")? + b"-----".len();
    Some(&text[start..end])
}

fn spki_key(der: &[u8]) -> Result<Material, String> {
    if let Ok(key) = rsa::PublicKey::from_public_key_der(der) {
        return Ok(Material::Rsa(key));
    }
    if let Ok(key) = p256::PublicKey::from_public_key_der(der) {
        return Ok(Material::Ec(key.into()));
    }
    let info = p256::pkcs8::spki::SubjectPublicKeyInfoRef::try_from(der)
        .map_err(|e| format!("is not a valid public key: {e}"))?;
    if info.algorithm.oid.to_string() == EC_PUBLIC_KEY_OID {
        Err("is an EC key on a curve other than P-256 (only ES256 is accepted)".to_string())
    } else {
        Err(format!(
            "is a {} key, neither RSA nor EC P-256 (only RS256 and ES256 are accepted)",
            info.algorithm.oid
        ))
    }
}

fn check_rsa_size(material: &Material) -> Result<(), String> {
    match material {
        Material::Rsa(key) if key.size() * 8 < MIN_RSA_BITS => Err(format!(
            "is an RSA key of {} bits; at least {MIN_RSA_BITS} are required",
            key.size() * 8
        )),
        _ => Ok(()),
    }
}

/// Reads a JWKS file (RFC 7517). Keys this gateway cannot use for RS256 or ES256 (other
/// types, curves, algorithms or uses) are skipped so a provider's whole key set can be
/// given; a usable key that is broken is an error.
fn load_jwks(path: &Path) -> Result<Vec<Key>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot be read: {e}"))?;
    let set: Value =
        serde_json::from_slice(&text).map_err(|e| format!("is not valid JSON: {e}"))?;
    let entries = set
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("is not a JWKS: no \"keys\" array")?;
    let mut keys = Vec::new();
    for (index, jwk) in entries.iter().enumerate() {
        let field = |name: &str| jwk.get(name).and_then(Value::as_str);
        let kid = field("kid").map(str::to_string);
        let which = match &kid {
            Some(kid) => format!("key {kid:?}"),
            None => format!("key #{}", index + 1),
        };
        if field("use").is_some_and(|u| u != "sig") {
            continue;
        }
        let material = match (field("kty"), field("alg")) {
            (Some("RSA"), None | Some("RS256")) => {
                let n = jwk_bytes(jwk, "n").map_err(|e| format!("{which}: {e}"))?;
                let e = jwk_bytes(jwk, "e").map_err(|e| format!("{which}: {e}"))?;
                let key = rsa::PublicKey::new(
                    rsa::BoxedUint::from_be_slice_vartime(&n),
                    rsa::BoxedUint::from_be_slice_vartime(&e),
                )
                .map_err(|e| format!("{which}: not a valid RSA public key: {e}"))?;
                Material::Rsa(key)
            }
            (Some("EC"), None | Some("ES256")) if field("crv") == Some("P-256") => {
                let x = jwk_bytes(jwk, "x").map_err(|e| format!("{which}: {e}"))?;
                let y = jwk_bytes(jwk, "y").map_err(|e| format!("{which}: {e}"))?;
                if x.len() != 32 || y.len() != 32 {
                    return Err(format!("{which}: x and y must be 32 bytes for P-256"));
                }
                let mut sec1 = vec![0x04];
                sec1.extend_from_slice(&x);
                sec1.extend_from_slice(&y);
                let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                    .map_err(|_| format!("{which}: not a point on P-256"))?;
                Material::Ec(key)
            }
            _ => continue,
        };
        check_rsa_size(&material).map_err(|e| format!("{which} {e}"))?;
        keys.push(Key { kid, material });
    }
    if keys.is_empty() {
        return Err("holds no RSA or EC P-256 signing key".to_string());
    }
    Ok(keys)
}

fn jwk_bytes(jwk: &Value, name: &str) -> Result<Vec<u8>, String> {
    let text = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing {name:?}"))?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| format!("{name:?} is not base64url"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{KeyInit as _, Mac as _};
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::EncodePublicKey as _;
    use p256::pkcs8::LineEnding;
    use serde_json::json;
    use std::sync::OnceLock;

    const ISSUER: &str = "https://idp.example.com/realms/ds";
    const AUDIENCE: &str = "ds-gateway";
    /// The test's clock: every token is checked at this instant, never the wall clock.
    const NOW: i64 = 1_800_000_000;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(NOW, 0).unwrap()
    }

    /// RSA keys are slow to generate: two per test run, shared.
    fn rsa_key(which: usize) -> &'static rsa::PrivateKey {
        static KEYS: OnceLock<[rsa::PrivateKey; 2]> = OnceLock::new();
        &KEYS.get_or_init(|| {
            let mut rng = rand::rng();
            [
                rsa::PrivateKey::new(&mut rng, 2048).unwrap(),
                rsa::PrivateKey::new(&mut rng, 2048).unwrap(),
            ]
        })[which]
    }

    fn ec_key() -> p256::ecdsa::SigningKey {
        p256::ecdsa::SigningKey::from_slice(&rand::random::<[u8; 32]>()).unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn signing_input(header: &Value, claims: &Value) -> String {
        format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        )
    }

    fn rs256(key: &rsa::PrivateKey, header: Value, claims: &Value) -> String {
        let input = signing_input(&header, claims);
        let sig = key
            .sign(
                rsa::Pkcs1v15Sign::new::<Sha256>(),
                &Sha256::digest(input.as_bytes()),
            )
            .unwrap();
        format!("{input}.{}", b64(&sig))
    }

    fn es256(key: &p256::ecdsa::SigningKey, header: Value, claims: &Value) -> String {
        let input = signing_input(&header, claims);
        let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig.to_bytes()))
    }

    fn hs256(secret: &[u8], header: Value, claims: &Value) -> String {
        let input = signing_input(&header, claims);
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", b64(&mac.finalize().into_bytes()))
    }

    /// Valid claims for [`ISSUER`] and [`AUDIENCE`] at [`NOW`].
    fn claims() -> Value {
        json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice",
            "iat": NOW - 60,
            "nbf": NOW - 60,
            "exp": NOW + 300,
            "groups": ["ml-team", "ops"],
        })
    }

    fn with(mut claims: Value, name: &str, value: Value) -> Value {
        claims[name] = value;
        claims
    }

    fn without(mut claims: Value, name: &str) -> Value {
        claims.as_object_mut().unwrap().remove(name);
        claims
    }

    fn rsa_pem(key: &rsa::PrivateKey) -> String {
        key.to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
    }

    fn ec_pem(key: &p256::ecdsa::SigningKey) -> String {
        p256::PublicKey::from(key.verifying_key())
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
    }

    /// Key files in a temporary directory, and the flags naming them.
    struct Setup {
        dir: tempfile::TempDir,
        args: JwtArgs,
    }

    impl Setup {
        fn new() -> Self {
            Setup {
                dir: tempfile::tempdir().unwrap(),
                args: JwtArgs {
                    issuer: Some(ISSUER.to_string()),
                    audience: Some(AUDIENCE.to_string()),
                    ..JwtArgs::default()
                },
            }
        }

        fn file(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }

        fn pem(mut self, name: &str, contents: &str) -> Self {
            let path = self.file(name, contents);
            self.args.public_keys.push(path);
            self
        }

        fn jwks(mut self, jwks: &Value) -> Self {
            let path = self.file("jwks.json", &jwks.to_string());
            self.args.jwks_file = Some(path);
            self
        }

        fn verifier(&self) -> Verifier {
            Verifier::from_args(&self.args)
                .unwrap()
                .expect("configured")
        }

        fn error(&self) -> String {
            Verifier::from_args(&self.args)
                .expect_err("refused at start")
                .to_string()
        }
    }

    fn rsa_jwk(key: &rsa::PrivateKey, kid: &str) -> Value {
        let public = key.to_public_key();
        json!({
            "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": b64(&public.n().to_be_bytes_trimmed_vartime()),
            "e": b64(&public.e().to_be_bytes_trimmed_vartime()),
        })
    }

    fn ec_jwk(key: &p256::ecdsa::SigningKey, kid: &str) -> Value {
        let point = key.verifying_key().to_sec1_point(false);
        json!({
            "kty": "EC", "kid": kid, "crv": "P-256",
            "x": b64(point.x().unwrap()),
            "y": b64(point.y().unwrap()),
        })
    }

    fn rs_header() -> Value {
        json!({"alg": "RS256", "typ": "JWT"})
    }

    fn es_header() -> Value {
        json!({"alg": "ES256", "typ": "JWT"})
    }

    #[test]
    fn rs256_token_gives_subject_and_groups() {
        let key = rsa_key(0);
        let v = Setup::new().pem("rsa.pem", &rsa_pem(key)).verifier();
        let identity = v
            .verify(&rs256(key, rs_header(), &claims()), now())
            .unwrap();
        assert_eq!(
            identity,
            JwtIdentity {
                subject: "alice".into(),
                groups: vec!["ml-team".into(), "ops".into()],
            }
        );
    }

    #[test]
    fn es256_token_is_accepted() {
        let key = ec_key();
        let v = Setup::new().pem("ec.pem", &ec_pem(&key)).verifier();
        let identity = v
            .verify(&es256(&key, es_header(), &claims()), now())
            .unwrap();
        assert_eq!(identity.subject, "alice");
    }

    #[test]
    fn pkcs1_rsa_pem_is_accepted() {
        use rsa::pkcs1::EncodeRsaPublicKey as _;
        let key = rsa_key(0);
        let pem = key.to_public_key().to_pkcs1_pem(LineEnding::LF).unwrap();
        let v = Setup::new().pem("rsa1.pem", &pem).verifier();
        assert!(v.verify(&rs256(key, rs_header(), &claims()), now()).is_ok());
    }

    #[test]
    fn rotation_accepts_either_configured_key_and_no_other() {
        let (old, new, stranger) = (rsa_key(0), ec_key(), rsa_key(1));
        let (old_ec, other_ec) = (ec_key(), ec_key());
        let v = Setup::new()
            .pem("old.pem", &rsa_pem(old))
            .pem("new.pem", &ec_pem(&new))
            .pem("old-ec.pem", &ec_pem(&old_ec))
            .verifier();
        assert!(v.verify(&rs256(old, rs_header(), &claims()), now()).is_ok());
        assert!(
            v.verify(&es256(&new, es_header(), &claims()), now())
                .is_ok()
        );
        assert!(
            v.verify(&es256(&old_ec, es_header(), &claims()), now())
                .is_ok()
        );
        assert_eq!(
            v.verify(&rs256(stranger, rs_header(), &claims()), now()),
            Err(JwtError::BadSignature)
        );
        assert_eq!(
            v.verify(&es256(&other_ec, es_header(), &claims()), now()),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn jwks_keys_are_chosen_by_kid() {
        let (rsa, ec1, ec2) = (rsa_key(0), ec_key(), ec_key());
        let jwks = json!({"keys": [
            rsa_jwk(rsa, "r1"),
            ec_jwk(&ec1, "e1"),
            ec_jwk(&ec2, "e2"),
            // Skipped, not refused: an encryption key and curves or types ES256/RS256 cannot use.
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AA"},
            {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": "AQAB", "e": "AQAB"},
        ]});
        let v = Setup::new().jwks(&jwks).verifier();
        assert_eq!(v.key_count(), 3);
        let kid = |alg: &str, kid: &str| json!({"alg": alg, "kid": kid});
        assert!(
            v.verify(&rs256(rsa, kid("RS256", "r1"), &claims()), now())
                .is_ok()
        );
        assert!(
            v.verify(&es256(&ec2, kid("ES256", "e2"), &claims()), now())
                .is_ok()
        );
        // Without a kid every key of the type is tried.
        assert!(
            v.verify(&es256(&ec2, es_header(), &claims()), now())
                .is_ok()
        );
        // The kid picks the key: e1's kid on e2's signature fails.
        assert_eq!(
            v.verify(&es256(&ec2, kid("ES256", "e1"), &claims()), now()),
            Err(JwtError::BadSignature)
        );
        assert_eq!(
            v.verify(&es256(&ec2, kid("ES256", "gone"), &claims()), now()),
            Err(JwtError::UnknownKey)
        );
        // An EC kid on an RS256 token: no RSA key carries it.
        assert_eq!(
            v.verify(&rs256(rsa, kid("RS256", "e1"), &claims()), now()),
            Err(JwtError::UnknownKey)
        );
    }

    #[test]
    fn validity_window_honours_the_leeway() {
        let key = ec_key();
        let v = Setup::new().pem("ec.pem", &ec_pem(&key)).verifier();
        let check = |claims: Value| v.verify(&es256(&key, es_header(), &claims), now());
        // Default leeway 30 s.
        assert_eq!(
            check(with(claims(), "exp", json!(NOW - 31))),
            Err(JwtError::Expired)
        );
        assert_eq!(
            check(with(claims(), "exp", json!(NOW - 30))),
            Err(JwtError::Expired)
        );
        assert!(check(with(claims(), "exp", json!(NOW - 29))).is_ok());
        assert_eq!(
            check(without(claims(), "exp")),
            Err(JwtError::MissingExpiry)
        );
        assert_eq!(
            check(with(claims(), "exp", json!("soon"))),
            Err(JwtError::Malformed)
        );
        assert!(check(with(claims(), "exp", json!((NOW + 60) as f64 + 0.5))).is_ok());
        assert_eq!(
            check(with(claims(), "nbf", json!(NOW + 31))),
            Err(JwtError::NotYetValid)
        );
        assert!(check(with(claims(), "nbf", json!(NOW + 30))).is_ok());
        assert!(check(without(claims(), "nbf")).is_ok());
        assert_eq!(
            check(with(claims(), "iat", json!(NOW + 31))),
            Err(JwtError::IssuedInFuture)
        );
        assert!(check(with(claims(), "iat", json!(NOW + 30))).is_ok());
        assert!(check(without(claims(), "iat")).is_ok());
    }

    #[test]
    fn leeway_flag_changes_the_window() {
        let key = ec_key();
        let mut setup = Setup::new().pem("ec.pem", &ec_pem(&key));
        setup.args.leeway = Duration::ZERO;
        let v = setup.verifier();
        let check = |claims: Value| v.verify(&es256(&key, es_header(), &claims), now());
        assert_eq!(
            check(with(claims(), "exp", json!(NOW))),
            Err(JwtError::Expired)
        );
        assert!(check(with(claims(), "exp", json!(NOW + 1))).is_ok());
        assert_eq!(
            check(with(claims(), "nbf", json!(NOW + 1))),
            Err(JwtError::NotYetValid)
        );
    }

    #[test]
    fn issuer_and_audience_must_match() {
        let key = ec_key();
        let v = Setup::new().pem("ec.pem", &ec_pem(&key)).verifier();
        let check = |claims: Value| v.verify(&es256(&key, es_header(), &claims), now());
        let wrong_iss = with(claims(), "iss", json!("https://evil.example.com"));
        assert_eq!(check(wrong_iss), Err(JwtError::WrongIssuer));
        // A trailing slash is another issuer (OIDC compares exactly).
        let slash = with(claims(), "iss", json!(format!("{ISSUER}/")));
        assert_eq!(check(slash), Err(JwtError::WrongIssuer));
        assert_eq!(check(without(claims(), "iss")), Err(JwtError::WrongIssuer));
        assert_eq!(
            check(with(claims(), "aud", json!("other"))),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(
            check(without(claims(), "aud")),
            Err(JwtError::WrongAudience)
        );
        assert!(check(with(claims(), "aud", json!(["other", AUDIENCE]))).is_ok());
        assert_eq!(
            check(with(claims(), "aud", json!(["other", "more"]))),
            Err(JwtError::WrongAudience)
        );

        // Without --jwt-audience any audience (or none) is fine.
        let mut setup = Setup::new().pem("ec.pem", &ec_pem(&key));
        setup.args.audience = None;
        let open = setup.verifier();
        let token = es256(&key, es_header(), &with(claims(), "aud", json!("other")));
        assert!(open.verify(&token, now()).is_ok());
        let token = es256(&key, es_header(), &without(claims(), "aud"));
        assert!(open.verify(&token, now()).is_ok());
    }

    #[test]
    fn subject_is_required() {
        let key = ec_key();
        let v = Setup::new().pem("ec.pem", &ec_pem(&key)).verifier();
        let check = |claims: Value| v.verify(&es256(&key, es_header(), &claims), now());
        assert_eq!(
            check(without(claims(), "sub")),
            Err(JwtError::MissingSubject)
        );
        assert_eq!(
            check(with(claims(), "sub", json!(""))),
            Err(JwtError::MissingSubject)
        );
        assert_eq!(
            check(with(claims(), "sub", json!(42))),
            Err(JwtError::BadSubject)
        );
        assert_eq!(
            check(with(claims(), "sub", json!("alice\nkey admin"))),
            Err(JwtError::BadSubject)
        );
        assert_eq!(
            check(with(claims(), "sub", json!("a".repeat(256)))),
            Err(JwtError::BadSubject)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let key = ec_key();
        let v = Setup::new().pem("ec.pem", &ec_pem(&key)).verifier();
        for alg in ["none", "None", "NONE", ""] {
            let token = format!("{}.", signing_input(&json!({"alg": alg}), &claims()));
            assert_eq!(
                v.verify(&token, now()),
                Err(JwtError::AlgorithmNotAccepted),
                "{alg}"
            );
        }
        // A none header with a real signature appended is refused just the same.
        let real = es256(&key, es_header(), &claims());
        let sig = real.rsplit('.').next().unwrap();
        let token = format!(
            "{}.{sig}",
            signing_input(&json!({"alg": "none"}), &claims())
        );
        assert_eq!(v.verify(&token, now()), Err(JwtError::AlgorithmNotAccepted));
    }

    #[test]
    fn hs256_keyed_with_the_public_key_is_refused() {
        let key = rsa_key(0);
        let pem = rsa_pem(key);
        let v = Setup::new().pem("rsa.pem", &pem).verifier();
        let der = key.to_public_key().to_public_key_der().unwrap();
        for secret in [pem.as_bytes(), pem.trim_end().as_bytes(), der.as_bytes()] {
            let hs = json!({"alg": "HS256", "typ": "JWT"});
            let token = hs256(secret, hs, &claims());
            assert_eq!(v.verify(&token, now()), Err(JwtError::AlgorithmNotAccepted));
            // The same MAC under an RS256 header is just a bad signature.
            let token = hs256(secret, rs_header(), &claims());
            assert_eq!(v.verify(&token, now()), Err(JwtError::BadSignature));
        }
    }

    #[test]
    fn other_algorithms_are_refused() {
        use rsa::sha2::Sha512;
        let (rsa, ec) = (rsa_key(0), ec_key());
        let v = Setup::new()
            .pem("rsa.pem", &rsa_pem(rsa))
            .pem("ec.pem", &ec_pem(&ec))
            .verifier();
        // A real RS512 signature by the configured key.
        let input = signing_input(&json!({"alg": "RS512"}), &claims());
        let sig = rsa
            .sign(
                rsa::Pkcs1v15Sign::new::<Sha512>(),
                &Sha512::digest(input.as_bytes()),
            )
            .unwrap();
        let rs512 = format!("{input}.{}", b64(&sig));
        assert_eq!(v.verify(&rs512, now()), Err(JwtError::AlgorithmNotAccepted));
        for alg in ["ES384", "PS256", "EdDSA", "HS512", "rs256", "es256"] {
            let token = es256(&ec, json!({"alg": alg}), &claims());
            assert_eq!(
                v.verify(&token, now()),
                Err(JwtError::AlgorithmNotAccepted),
                "{alg}"
            );
        }
        // Each key verifies only its own algorithm: an ES256 signature under an RS256 header
        // is checked against the RSA key alone.
        let es = es256(&ec, es_header(), &claims());
        let (_, rest) = es.split_once('.').unwrap();
        let swapped = format!("{}.{rest}", b64(rs_header().to_string().as_bytes()));
        assert_eq!(v.verify(&swapped, now()), Err(JwtError::BadSignature));
    }

    #[test]
    fn tampered_and_malformed_tokens_are_refused() {
        let key = ec_key();
        let v = Setup::new().pem("ec.pem", &ec_pem(&key)).verifier();
        let good = es256(&key, es_header(), &claims());
        let parts: Vec<&str> = good.split('.').collect();
        let admin = b64(with(claims(), "sub", json!("admin")).to_string().as_bytes());
        let tampered = format!("{}.{admin}.{}", parts[0], parts[2]);
        assert_eq!(v.verify(&tampered, now()), Err(JwtError::BadSignature));
        // A signature check comes before the claims: a forged expired token says nothing
        // about its expiry.
        let expired = with(claims(), "exp", json!(NOW - 3600));
        let forged = format!("{}.{}", signing_input(&es_header(), &expired), parts[2]);
        assert_eq!(v.verify(&forged, now()), Err(JwtError::BadSignature));
        let crit = es256(&key, json!({"alg": "ES256", "crit": ["exp"]}), &claims());
        for token in [
            "",
            "not a token",
            "a.b",
            "a.b.c.d",
            &format!("{good}.x"),
            &format!("{}.{}.{}", "!!", parts[1], parts[2]),
            &format!("{}.{}.{}", b64(b"not json"), parts[1], parts[2]),
            &format!("{}.{}.{}", b64(b"[1]"), parts[1], parts[2]),
            &format!("{}.{}.{}", parts[0], parts[1], "***"),
            &format!("{}.{}.{}", b64(br#"{"typ":"JWT"}"#), parts[1], parts[2]),
            &format!(
                "{}.{}.{}",
                b64(br#"{"alg":"ES256","kid":7}"#),
                parts[1],
                parts[2]
            ),
            &crit,
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert_eq!(
                v.verify(token, now()),
                Err(JwtError::Malformed),
                "{token:.40}"
            );
        }
        // A signed payload that is not a JSON object.
        let input = format!("{}.{}", b64(es_header().to_string().as_bytes()), b64(b"[]"));
        let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
        let token = format!("{input}.{}", b64(&sig.to_bytes()));
        assert_eq!(v.verify(&token, now()), Err(JwtError::Malformed));
    }

    #[test]
    fn groups_claim_variants() {
        let key = ec_key();
        let groups_of = |claim: &str, claims: Value| {
            let mut setup = Setup::new().pem("ec.pem", &ec_pem(&key));
            setup.args.groups_claim = claim.to_string();
            let v = setup.verifier();
            v.verify(&es256(&key, es_header(), &claims), now())
                .unwrap()
                .groups
        };
        assert_eq!(
            groups_of("groups", with(claims(), "groups", json!("ml-team"))),
            ["ml-team"]
        );
        assert_eq!(
            groups_of("groups", with(claims(), "groups", json!(["a", 7, "b"]))),
            ["a", "b"]
        );
        assert!(groups_of("groups", without(claims(), "groups")).is_empty());
        assert!(groups_of("groups", with(claims(), "groups", json!({"a": 1}))).is_empty());
        let keycloak = with(
            claims(),
            "realm_access",
            json!({"roles": ["deployers", "viewers"]}),
        );
        assert_eq!(
            groups_of("realm_access.roles", keycloak.clone()),
            ["deployers", "viewers"]
        );
        assert!(groups_of("realm_access.missing", keycloak).is_empty());
        // A namespaced claim whose name has dots is found whole.
        let namespaced = with(claims(), "https://ds.example.com/groups", json!(["ns"]));
        assert_eq!(
            groups_of("https://ds.example.com/groups", namespaced),
            ["ns"]
        );
    }

    #[test]
    fn messages_never_carry_the_token_or_the_expected_values() {
        let key = ec_key();
        let v = Setup::new().pem("ec.pem", &ec_pem(&key)).verifier();
        let wrong = with(claims(), "iss", json!("https://evil.example.com"));
        let wrong = with(wrong, "aud", json!("someone-else"));
        let token = es256(&key, es_header(), &wrong);
        let message = v.verify(&token, now()).unwrap_err().to_string();
        assert_eq!(message, "token issuer not accepted");
        let wrong_aud = es256(&key, es_header(), &with(claims(), "aud", json!("x")));
        assert_eq!(
            v.verify(&wrong_aud, now()).unwrap_err().to_string(),
            "token audience not accepted"
        );
        let expired = es256(&key, es_header(), &with(claims(), "exp", json!(NOW - 3600)));
        assert_eq!(
            v.verify(&expired, now()).unwrap_err().to_string(),
            "token expired"
        );
        let none = format!("{}.", signing_input(&json!({"alg": "none"}), &claims()));
        assert_eq!(
            v.verify(&none, now()).unwrap_err().to_string(),
            "token algorithm not accepted"
        );
        // And the verifier's Debug (it sits in shared state) shows no key material.
        let debug = format!("{v:?}");
        assert!(!debug.contains(&ec_pem(&key)[30..60]), "{debug}");
    }

    #[test]
    fn flags_parse_with_defaults_and_repeats() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            jwt: JwtArgs,
        }
        use clap::Parser as _;
        let cli = Cli::try_parse_from(["gw", "--jwt-issuer", ISSUER]).unwrap();
        assert_eq!(cli.jwt.groups_claim, "groups");
        assert_eq!(cli.jwt.leeway, Duration::from_secs(30));
        let cli = Cli::try_parse_from([
            "gw",
            "--jwt-issuer",
            ISSUER,
            "--jwt-public-key",
            "old.pem",
            "--jwt-public-key",
            "new.pem,ec.pem",
            "--jwt-leeway",
            "1m",
            "--jwt-groups-claim",
            "realm_access.roles",
        ])
        .unwrap();
        assert_eq!(
            cli.jwt.public_keys,
            [PathBuf::from("old.pem"), "new.pem".into(), "ec.pem".into()]
        );
        assert_eq!(cli.jwt.leeway, Duration::from_secs(60));
        assert_eq!(cli.jwt.groups_claim, "realm_access.roles");
        let error = Cli::try_parse_from(["gw", "--jwt-leeway", "soon"])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("--jwt-leeway"), "{error}");
    }

    #[test]
    fn no_flags_means_no_verifier() {
        assert!(Verifier::from_args(&JwtArgs::default()).unwrap().is_none());
        // Empty values (an unset environment variable exported empty) count as unset.
        let args = JwtArgs {
            issuer: Some(" ".into()),
            public_keys: vec![PathBuf::new()],
            ..JwtArgs::default()
        };
        assert!(Verifier::from_args(&args).unwrap().is_none());
    }

    #[test]
    fn incomplete_configuration_names_the_missing_flag() {
        let setup = Setup::new();
        assert!(
            setup
                .error()
                .starts_with("--jwt-public-key: --jwt-issuer needs"),
            "{}",
            setup.error()
        );
        let key = ec_key();
        let mut setup = Setup::new().pem("ec.pem", &ec_pem(&key));
        setup.args.issuer = None;
        assert!(
            setup.error().starts_with("--jwt-issuer: required"),
            "{}",
            setup.error()
        );
        let mut setup = Setup::new().pem("ec.pem", &ec_pem(&key));
        setup.args.groups_claim = String::new();
        assert!(
            setup.error().starts_with("--jwt-groups-claim:"),
            "{}",
            setup.error()
        );
    }

    #[test]
    fn bad_key_files_are_startup_errors_naming_flag_and_file() {
        use p256::pkcs8::EncodePrivateKey as _;
        let key = ec_key();
        let private = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        let cases: Vec<(&str, String, &str)> = vec![
            ("garbage.pem", "hello".into(), "is not a PEM file"),
            (
                "broken.pem",
                "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n".into(),
                "is not valid PEM",
            ),
            (
                "junk-der.pem",
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into(),
                "is not a valid public key",
            ),
            ("private.pem", private.to_string(), "holds a private key"),
            (
                "cert.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
                "holds a certificate",
            ),
        ];
        for (name, contents, expected) in cases {
            let setup = Setup::new().pem(name, &contents);
            let error = setup.error();
            let path = setup.dir.path().join(name).display().to_string();
            assert!(
                error.starts_with(&format!("--jwt-public-key {path}: {expected}")),
                "{name}: {error}"
            );
            // A private key's bytes never reach the message.
            assert!(!error.contains("MIG"), "{error}");
        }
        let mut setup = Setup::new();
        setup
            .args
            .public_keys
            .push(setup.dir.path().join("absent.pem"));
        assert!(
            setup.error().contains("absent.pem: cannot be read"),
            "{}",
            setup.error()
        );
    }

    #[test]
    fn weak_or_unsupported_public_keys_are_refused_by_kind() {
        let pem = |der: &[u8]| {
            p256::pkcs8::der::pem::encode_string("PUBLIC KEY", LineEnding::LF, der).unwrap()
        };
        // Hand-built SubjectPublicKeyInfo structures (public values only): an Ed25519 key
        // and a P-384 key.
        let mut ed25519 = hex::decode("302a300506032b6570032100").unwrap();
        ed25519.extend([7; 32]);
        let mut p384 = hex::decode("3076301006072a8648ce3d020106052b81040022036200").unwrap();
        p384.push(0x04);
        p384.extend([7; 96]);
        // A 1024-bit modulus (all ones: odd, which is all the parser asks).
        let small = rsa::PublicKey::new(
            rsa::BoxedUint::from_be_slice_vartime(&[0xff; 128]),
            rsa::BoxedUint::from(65537u32),
        )
        .unwrap()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
        for (contents, expected) in [
            (
                pem(&ed25519),
                "is a 1.3.101.112 key, neither RSA nor EC P-256",
            ),
            (pem(&p384), "is an EC key on a curve other than P-256"),
            (
                small,
                "is an RSA key of 1024 bits; at least 2048 are required",
            ),
        ] {
            let setup = Setup::new().pem("key.pem", &contents);
            let error = setup.error();
            assert!(error.starts_with("--jwt-public-key "), "{error}");
            assert!(error.contains(&format!("key.pem: {expected}")), "{error}");
        }
    }

    #[test]
    fn pem_with_surrounding_text_is_read() {
        let key = ec_key();
        let pem = format!("# issuer key, rotated 2026-11\n{}\n\n", ec_pem(&key));
        let v = Setup::new().pem("ec.pem", &pem).verifier();
        assert!(
            v.verify(&es256(&key, es_header(), &claims()), now())
                .is_ok()
        );
    }

    #[test]
    fn bad_jwks_files_are_startup_errors() {
        let key = ec_key();
        let mut short = ec_jwk(&key, "short");
        short["x"] = json!(b64(&[1; 31]));
        let mut off_curve = ec_jwk(&key, "off");
        off_curve["y"] = json!(b64(&[1; 32]));
        let cases = [
            (json!({"nokeys": []}), "is not a JWKS"),
            (json!({"keys": []}), "holds no RSA or EC P-256 signing key"),
            (
                json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AA"}]}),
                "holds no RSA or EC P-256 signing key",
            ),
            (
                json!({"keys": [short]}),
                "key \"short\": x and y must be 32 bytes",
            ),
            (
                json!({"keys": [off_curve]}),
                "key \"off\": not a point on P-256",
            ),
            (
                json!({"keys": [{"kty": "RSA", "n": "!", "e": "AQAB"}]}),
                "key #1: \"n\" is not base64url",
            ),
            (
                json!({"keys": [{"kty": "RSA", "e": "AQAB"}]}),
                "key #1: missing \"n\"",
            ),
        ];
        for (jwks, expected) in cases {
            let setup = Setup::new().jwks(&jwks);
            let error = setup.error();
            assert!(error.starts_with("--jwt-jwks-file "), "{error}");
            assert!(error.contains(&format!("jwks.json: {expected}")), "{error}");
        }
        let setup = Setup::new();
        let path = setup.file("jwks.json", "{not json");
        let mut setup = setup;
        setup.args.jwks_file = Some(path);
        assert!(
            setup.error().contains("jwks.json: is not valid JSON"),
            "{}",
            setup.error()
        );
    }
}
