//! Validation of the model from storage (issue 16): `--model-uri` and its scheme's parts,
//! `--model-path`, `--storage-secret`, `--model-sha256`. Said at `ds deployment create`,
//! not found out by an init container failing in the cluster.

use super::{ValidationError, check_dns1123_subdomain};
use crate::model_source::ModelUri;
use crate::spec::DeploymentSpec;

/// Longest model URI.
pub const MAX_MODEL_URI_LEN: usize = 4096;

/// Longest model path (Linux's `PATH_MAX`, less its NUL).
pub const MAX_MODEL_PATH_LEN: usize = 4095;

/// Checks the model-from-storage fields of `spec`.
pub(super) fn check(spec: &DeploymentSpec) -> Result<(), ValidationError> {
    let given = |o: &Option<String>| o.clone().filter(|v| !v.is_empty());
    let Some(text) = given(&spec.model_uri) else {
        for (field, value) in [
            ("model_path", given(&spec.model_path)),
            ("storage_secret", given(&spec.storage_secret)),
            ("model_sha256", given(&spec.model_sha256)),
        ] {
            if let Some(value) = value {
                return Err(ValidationError::new(
                    field,
                    value,
                    "applies to a model from storage, but model_uri is not set: give model_uri too",
                ));
            }
        }
        return Ok(());
    };
    let uri = check_uri(&text)?;
    check_path(crate::model_source::model_path(spec))?;
    if let Some(secret) = given(&spec.storage_secret) {
        if !uri.is_fetched() {
            return Err(ValidationError::new(
                "storage_secret",
                secret,
                "is passed to the init container that downloads the model; a pvc:// model is mounted, not downloaded",
            ));
        }
        check_dns1123_subdomain("storage_secret", &secret)?;
    }
    if let Some(sum) = given(&spec.model_sha256) {
        if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ValidationError::new(
                "model_sha256",
                sum,
                "must be a SHA-256 digest: 64 hexadecimal digits",
            ));
        }
        if !uri.is_single_file() {
            return Err(ValidationError::new(
                "model_sha256",
                sum,
                "checks a single downloaded file; model_uri names a prefix or a volume",
            ));
        }
    }
    Ok(())
}

fn check_uri(text: &str) -> Result<ModelUri, ValidationError> {
    // Never repeat a URI with credentials in it.
    let shown = |uri: &ModelUri| {
        if uri.has_user_info() || uri.signed_query().is_some() {
            "(not shown: it holds credentials)".to_string()
        } else {
            text.to_string()
        }
    };
    if text.len() > MAX_MODEL_URI_LEN {
        return Err(ValidationError::new(
            "model_uri",
            text,
            format!("must be at most {MAX_MODEL_URI_LEN} characters"),
        ));
    }
    if text.chars().any(char::is_control) || text.contains(' ') {
        return Err(ValidationError::new(
            "model_uri",
            text,
            "must not hold spaces or control characters (percent-encode them)",
        ));
    }
    let uri =
        ModelUri::parse(text).map_err(|rule| ValidationError::new("model_uri", text, rule))?;
    match &uri {
        ModelUri::S3 { bucket, .. } => {
            // S3's bucket rules: 3 to 63 lowercase letters, digits, '.' and '-'.
            if bucket.len() < 3
                || bucket.len() > 63
                || check_dns1123_subdomain("b", bucket).is_err()
            {
                return Err(ValidationError::new(
                    "model_uri",
                    text,
                    "names a bad S3 bucket: 3 to 63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit",
                ));
            }
        }
        ModelUri::Gs { bucket, .. } => {
            if bucket.len() < 3
                || bucket.len() > 222
                || !bucket
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
            {
                return Err(ValidationError::new(
                    "model_uri",
                    text,
                    "names a bad GCS bucket: 3 to 222 lowercase letters, digits, '-', '_' and '.'",
                ));
            }
        }
        ModelUri::Http { tls, .. } => {
            if uri.has_user_info() {
                return Err(ValidationError::new(
                    "model_uri",
                    shown(&uri),
                    "must not hold credentials (user:password@): put them in the --storage-secret Secret",
                ));
            }
            if let Some(param) = uri.signed_query() {
                // Stored, listed and sent to the agent as given: a signature would leak.
                return Err(ValidationError::new(
                    "model_uri",
                    shown(&uri),
                    format!(
                        "must not hold a credential in its query ({param}=…): a presigned URL would be stored and shown by the gateway; use s3://BUCKET/KEY or gs://BUCKET/KEY with --storage-secret"
                    ),
                ));
            }
            let host = uri.http_host().unwrap_or("").to_ascii_lowercase();
            if host.is_empty() {
                return Err(ValidationError::new("model_uri", text, "names no host"));
            }
            // Plain HTTP only where the traffic stays inside the cluster.
            let in_cluster = host.ends_with(".svc") || host.ends_with(".svc.cluster.local");
            if !tls && !in_cluster {
                return Err(ValidationError::new(
                    "model_uri",
                    text,
                    "must be https:// (http:// only for a host inside the cluster: NAME.NAMESPACE.svc or NAME.NAMESPACE.svc.cluster.local)",
                ));
            }
        }
        ModelUri::Pvc { claim, path } => {
            check_dns1123_subdomain("model_uri", claim).map_err(|_| {
                ValidationError::new(
                    "model_uri",
                    text,
                    "names a bad PersistentVolumeClaim: a DNS-1123 subdomain (pvc://CLAIM/PATH)",
                )
            })?;
            if path.starts_with('/') || path.split('/').any(|p| p == "..") {
                return Err(ValidationError::new(
                    "model_uri",
                    text,
                    "the PATH of pvc://CLAIM/PATH must be relative inside the volume, without '..'",
                ));
            }
        }
    }
    Ok(uri)
}

fn check_path(path: &str) -> Result<(), ValidationError> {
    let rule = if !path.starts_with('/') {
        Some("must be an absolute path (starting with '/'), e.g. /models".to_string())
    } else if path == "/" || path.trim_end_matches('/').is_empty() {
        Some("must not be '/': the model volume would hide the image's whole file system".into())
    } else if path.split('/').any(|p| p == ".." || p == ".") {
        Some("must not hold '.' or '..' parts".into())
    } else if path.contains(':') || path.chars().any(char::is_control) {
        Some("must not hold ':' or control characters".into())
    } else if path.len() > MAX_MODEL_PATH_LEN {
        Some(format!("must be at most {MAX_MODEL_PATH_LEN} bytes"))
    } else {
        None
    };
    match rule {
        Some(rule) => Err(ValidationError::new("model_path", path, rule)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use crate::{DeploymentSpec, validate_deployment};

    fn with(f: impl FnOnce(&mut DeploymentSpec)) -> DeploymentSpec {
        let mut s = DeploymentSpec::test("iris");
        f(&mut s);
        s
    }

    fn refused(spec: &DeploymentSpec) -> (String, String) {
        let e = validate_deployment("iris", "default", spec).expect_err("refused");
        (e.field.clone(), e.to_string())
    }

    #[test]
    fn each_scheme_is_accepted_with_its_options() {
        for (uri, secret, sum) in [
            ("s3://models/iris/", Some("s3-creds"), None),
            ("s3://models/iris.onnx", None, Some("a".repeat(64))),
            (
                "gs://my_models/iris/model.bin",
                Some("gcs"),
                Some("AB".repeat(32)),
            ),
            (
                "https://huggingface.co/x/y/resolve/main/model.onnx",
                None,
                None,
            ),
            (
                "http://minio.storage.svc.cluster.local:9000/m.bin",
                None,
                None,
            ),
            ("pvc://weights/iris/v1", None, None),
            ("pvc://weights", None, None),
        ] {
            let spec = with(|s| {
                s.model_uri = Some(uri.into());
                s.model_path = Some("/mnt/model".into());
                s.storage_secret = secret.map(Into::into);
                s.model_sha256 = sum;
            });
            validate_deployment("iris", "default", &spec).unwrap_or_else(|e| panic!("{uri}: {e}"));
        }
    }

    #[test]
    fn an_unknown_scheme_names_the_field_and_the_schemes() {
        let (field, msg) = refused(&with(|s| s.model_uri = Some("ftp://host/model.bin".into())));
        assert_eq!(field, "model_uri");
        for scheme in ["s3://", "gs://", "https://", "pvc://"] {
            assert!(msg.contains(scheme), "{msg}");
        }
        let (field, _) = refused(&with(|s| s.model_uri = Some("models/iris".into())));
        assert_eq!(field, "model_uri");
    }

    #[test]
    fn bad_uris_are_refused_by_their_schemes_rules() {
        for uri in [
            "s3://Models/iris",
            "s3://ab/iris",
            "gs://bucket",
            "http://example.com/model.bin",
            "pvc://Weights/x",
            "pvc://weights/../etc",
            "https:///model.bin",
            "https://example.com/a b",
        ] {
            let (field, msg) = refused(&with(|s| s.model_uri = Some(uri.into())));
            assert_eq!(field, "model_uri", "{uri}: {msg}");
        }
    }

    #[test]
    fn credentials_in_the_uri_are_refused_and_not_repeated() {
        let (field, msg) = refused(&with(|s| {
            s.model_uri = Some("https://user:hunter2@example.com/m.bin".into());
        }));
        assert_eq!(field, "model_uri");
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(msg.contains("--storage-secret"), "{msg}");
        let (field, msg) = refused(&with(|s| {
            s.model_uri = Some(
                "https://m.s3.amazonaws.com/iris.onnx?X-Amz-Date=20261203&X-Amz-Signature=5ec12e7"
                    .into(),
            );
        }));
        assert_eq!(field, "model_uri");
        assert!(!msg.contains("5ec12e7"), "{msg}");
        assert!(
            msg.contains("X-Amz-Signature") && msg.contains("--storage-secret"),
            "{msg}"
        );
        // An ordinary query is no credential.
        let plain = with(|s| {
            s.model_uri = Some("https://models.example.com/iris.onnx?version=3".into());
        });
        validate_deployment("iris", "default", &plain).expect("an ordinary query is accepted");
    }

    #[test]
    fn the_model_path_must_be_absolute_and_plain() {
        for path in ["models", "./models", "/", "/models/../etc", "/a:b"] {
            let (field, _) = refused(&with(|s| {
                s.model_uri = Some("s3://models/iris/".into());
                s.model_path = Some(path.into());
            }));
            assert_eq!(field, "model_path", "{path}");
        }
    }

    #[test]
    fn a_bad_checksum_or_secret_is_refused() {
        for (sum, uri) in [
            ("abc".to_string(), "s3://models/m.bin"),
            ("g".repeat(64), "s3://models/m.bin"),
            ("a".repeat(64), "s3://models/prefix/"),
            ("a".repeat(64), "pvc://weights/m.bin"),
        ] {
            let (field, _) = refused(&with(|s| {
                s.model_uri = Some(uri.into());
                s.model_sha256 = Some(sum.clone());
            }));
            assert_eq!(field, "model_sha256", "{sum} {uri}");
        }
        let (field, _) = refused(&with(|s| {
            s.model_uri = Some("s3://models/m.bin".into());
            s.storage_secret = Some("Bad Secret".into());
        }));
        assert_eq!(field, "storage_secret");
        let (field, _) = refused(&with(|s| {
            s.model_uri = Some("pvc://weights".into());
            s.storage_secret = Some("creds".into());
        }));
        assert_eq!(field, "storage_secret");
    }

    #[test]
    fn the_options_need_a_model_uri() {
        for f in [
            (|s: &mut DeploymentSpec| s.model_path = Some("/models".into()))
                as fn(&mut DeploymentSpec),
            |s| s.storage_secret = Some("creds".into()),
            |s| s.model_sha256 = Some("a".repeat(64)),
        ] {
            let (_, msg) = refused(&with(f));
            assert!(msg.contains("model_uri is not set"), "{msg}");
        }
    }
}
