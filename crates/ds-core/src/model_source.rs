//! Where a deployment's model comes from (`--model-uri`): the URI schemes, parsed in one
//! place for validation, the agent's builders and `ds model-fetch`.

/// Where the model container sees the model when `model_path` is not given.
pub const DEFAULT_MODEL_PATH: &str = "/models";

/// The schemes `--model-uri` takes, as error messages list them.
pub const SCHEMES: &str = "s3://BUCKET/KEY-or-PREFIX/, gs://BUCKET/PATH, https://HOST/PATH, \
     http://HOST/PATH (a host inside the cluster: *.svc or *.svc.cluster.local), pvc://CLAIM/PATH";

/// A parsed model URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelUri {
    /// An S3 (or S3-compatible) object, or every object under `key` when it is empty or
    /// ends in `/`.
    S3 { bucket: String, key: String },
    /// A Google Cloud Storage object.
    Gs { bucket: String, path: String },
    /// One file over HTTP(S); `url` is the whole URI.
    Http { url: String, tls: bool },
    /// A PersistentVolumeClaim in the namespace, mounted with `subPath` `path` (empty:
    /// the whole volume).
    Pvc { claim: String, path: String },
}

impl ModelUri {
    /// Splits `text` by scheme. Each part's own rules (bucket names, hosts) are checked
    /// by validation; this refuses only what has no meaning at all.
    ///
    /// # Errors
    /// An unknown scheme, or a URI without the part its scheme needs.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("has no scheme; the schemes are {SCHEMES}"))?;
        let split = |what: &str| -> Result<(String, String), String> {
            let (first, path) = rest.split_once('/').unwrap_or((rest, ""));
            if first.is_empty() {
                return Err(format!(
                    "names no {what}: {scheme}://{}/...",
                    what.to_uppercase()
                ));
            }
            Ok((first.to_string(), path.to_string()))
        };
        match scheme {
            "s3" => {
                let (bucket, key) = split("bucket")?;
                Ok(Self::S3 { bucket, key })
            }
            "gs" => {
                let (bucket, path) = split("bucket")?;
                if path.is_empty() {
                    return Err("names no object: gs://BUCKET/PATH".into());
                }
                Ok(Self::Gs { bucket, path })
            }
            "https" | "http" => {
                split("host")?;
                Ok(Self::Http {
                    url: text.to_string(),
                    tls: scheme == "https",
                })
            }
            "pvc" => {
                let (claim, path) = split("claim")?;
                Ok(Self::Pvc {
                    claim,
                    path: path.trim_end_matches('/').to_string(),
                })
            }
            other => Err(format!(
                "has the unknown scheme {other:?}; the schemes are {SCHEMES}"
            )),
        }
    }

    /// Whether an init container downloads the model (every scheme but `pvc://`).
    pub fn is_fetched(&self) -> bool {
        !matches!(self, Self::Pvc { .. })
    }

    /// Whether the URI names one object (a checksum can apply), not a prefix.
    pub fn is_single_file(&self) -> bool {
        match self {
            Self::S3 { key, .. } => !key.is_empty() && !key.ends_with('/'),
            Self::Gs { path, .. } => !path.ends_with('/'),
            Self::Http { .. } => true,
            Self::Pvc { .. } => false,
        }
    }

    /// The host of an `http(s)://` URI (without port or user info), else `None`.
    pub fn http_host(&self) -> Option<&str> {
        let Self::Http { url, .. } = self else {
            return None;
        };
        let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        Some(if host_port.starts_with('[') {
            host_port
                .split_once(']')
                .map_or(host_port, |(h, _)| &h[1..])
        } else {
            host_port.split(':').next().unwrap_or(host_port)
        })
    }

    /// Whether an `http(s)://` URI carries user info (`user:password@`).
    pub fn has_user_info(&self) -> bool {
        let Self::Http { url, .. } = self else {
            return false;
        };
        let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        rest.split(['/', '?', '#'])
            .next()
            .unwrap_or("")
            .contains('@')
    }

    /// The first query parameter of an `http(s)://` URI that carries a credential: the
    /// signature or token of an S3 or GCS presigned URL, an Azure SAS, or an OAuth token.
    pub fn signed_query(&self) -> Option<&str> {
        // Lowercase: S3 and GCS spell them X-Amz-Signature and X-Goog-Signature.
        const CREDENTIALS: [&str; 9] = [
            "x-amz-signature",
            "x-amz-credential",
            "x-amz-security-token",
            "x-goog-signature",
            "x-goog-credential",
            "signature",
            "sig",
            "token",
            "access_token",
        ];
        let Self::Http { url, .. } = self else {
            return None;
        };
        let query = url.split_once('?')?.1;
        let query = query.split('#').next().unwrap_or(query);
        query.split('&').find_map(|pair| {
            let name = pair.split('=').next().unwrap_or(pair);
            CREDENTIALS
                .iter()
                .any(|c| name.eq_ignore_ascii_case(c))
                .then_some(name)
        })
    }
}

/// The path the model container sees the model at.
pub fn model_path(spec: &crate::DeploymentSpec) -> &str {
    spec.model_path
        .as_deref()
        .filter(|p| !p.is_empty())
        .unwrap_or(DEFAULT_MODEL_PATH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scheme_splits_into_its_parts() {
        assert_eq!(
            ModelUri::parse("s3://models/iris/").unwrap(),
            ModelUri::S3 {
                bucket: "models".into(),
                key: "iris/".into()
            }
        );
        assert!(
            !ModelUri::parse("s3://models/iris/")
                .unwrap()
                .is_single_file()
        );
        assert!(
            ModelUri::parse("s3://models/iris.onnx")
                .unwrap()
                .is_single_file()
        );
        assert_eq!(
            ModelUri::parse("pvc://weights/iris/v1/").unwrap(),
            ModelUri::Pvc {
                claim: "weights".into(),
                path: "iris/v1".into()
            }
        );
        let https = ModelUri::parse("https://u:p@Example.com:8443/m.bin?x=1").unwrap();
        assert_eq!(https.http_host(), Some("Example.com"));
        assert!(https.has_user_info());
        assert_eq!(https.signed_query(), None);
        let presigned = ModelUri::parse(
            "https://m.s3.amazonaws.com/iris.onnx?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=5ec",
        )
        .unwrap();
        assert_eq!(presigned.signed_query(), Some("X-Amz-Signature"));
        let sas =
            ModelUri::parse("https://a.blob.core.windows.net/c/m.bin?sv=2022&sig=abc").unwrap();
        assert_eq!(sas.signed_query(), Some("sig"));
        assert!(https.is_fetched());
        assert!(!ModelUri::parse("pvc://weights").unwrap().is_fetched());
    }

    #[test]
    fn unknown_schemes_and_missing_parts_are_refused() {
        let e = ModelUri::parse("ftp://host/m.bin").unwrap_err();
        assert!(
            e.contains("\"ftp\"") && e.contains("s3://") && e.contains("pvc://"),
            "{e}"
        );
        assert!(
            ModelUri::parse("/models/iris")
                .unwrap_err()
                .contains("no scheme")
        );
        assert!(ModelUri::parse("s3:///key").is_err());
        assert!(ModelUri::parse("gs://bucket").is_err());
    }
}
