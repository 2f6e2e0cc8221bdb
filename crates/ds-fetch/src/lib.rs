//! `ds model-fetch`: what the model-from-storage init container runs (issue 16). It
//! downloads `s3://BUCKET/KEY`, `gs://BUCKET/PATH` or an `http(s)://` URL into `--dest`,
//! a KEY that is empty or ends in `/` being a prefix (every object under it, relative
//! paths kept). Files appear atomically, verified against `--sha256` for a single object.
//! A failure is one line on stderr and in the termination log, which the agent reports
//! as the deployment's `Failed` reason.

mod client;
mod download;
pub mod sigv4;
mod xml;

use client::{Http, read_limited, retry_interrupted};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use secrecy::{ExposeSecret as _, SecretString};
use sigv4::{Credentials, Signer};
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use url::Url;

/// Where Kubernetes reads a container's termination message.
const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";
/// The largest listing page or error document read (S3 pages hold 1,000 keys).
const DOC_LIMIT: usize = 16 << 20;
/// Redirects followed for `http(s)://` URLs (model hubs redirect to their CDN).
const MAX_REDIRECTS: usize = 5;
const GCS_ENDPOINT: &str = "https://storage.googleapis.com";

/// `ds model-fetch` flags. The credentials come from the environment only (the storage
/// Secret as `envFrom`): `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN` for `s3://`, `GCS_TOKEN` for `gs://`.
#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// What to download: s3://BUCKET/KEY, gs://BUCKET/PATH or https://…; a KEY or PATH
    /// that is empty or ends in '/' is a prefix (every object under it).
    #[arg(long)]
    pub uri: String,
    /// The directory to download into (created if missing).
    #[arg(long)]
    pub dest: PathBuf,
    /// The SHA-256 (hex) the single object must have.
    #[arg(long)]
    pub sha256: Option<String>,
    /// An S3-compatible server (path-style requests): MinIO, Ceph, GCS interop…
    /// Without it, s3:// goes to BUCKET.s3.REGION.amazonaws.com and gs:// to
    /// storage.googleapis.com.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint: Option<String>,
    /// The bucket's region (S3 signatures name it).
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub region: String,
    /// Where the one-line failure reason is also written (the kubelet reads it).
    #[arg(long, env = "DS_TERMINATION_LOG", default_value = DEFAULT_TERMINATION_LOG)]
    pub termination_log: PathBuf,
}

/// Why a download failed; the message is the part after the object's name.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Setup(String),
    #[error("{0}")]
    Connect(String),
    /// The body was cut off or stalled (the download is retried from the start).
    #[error("{0}")]
    Interrupted(String),
    /// An error answer: S3's `Code (HTTP n): Message`, or `HTTP n Reason`.
    #[error("{0}")]
    Status(String),
    #[error("{0}")]
    Protocol(String),
    #[error("sha256 mismatch: expected {expected}, got {got}")]
    Checksum { expected: String, got: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A failure and the object it concerns.
struct Failure {
    object: String,
    error: FetchError,
}

impl Failure {
    fn at(object: impl Into<String>) -> impl FnOnce(FetchError) -> Self {
        let object = object.into();
        move |error| Self { object, error }
    }
}

/// Runs `ds model-fetch`: on failure prints `model-fetch: OBJECT: REASON` on stderr,
/// writes it to the termination log and exits 1.
pub async fn run(args: FetchArgs) -> ExitCode {
    let secrets = Secrets::from_env();
    match fetch(&args, &secrets).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { object, error }) => {
            let line = secrets.redact(&one_line(&format!("model-fetch: {object}: {error}")));
            eprintln!("{line}");
            write_termination_log(&args.termination_log, &line);
            ExitCode::FAILURE
        }
    }
}

/// The credentials in the environment.
struct Secrets {
    aws: Option<Credentials>,
    gcs_token: Option<SecretString>,
}

impl Secrets {
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let aws = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => Some(Credentials {
                access_key_id: id,
                secret_access_key: secret.into(),
                session_token: var("AWS_SESSION_TOKEN").map(Into::into),
            }),
            _ => None,
        };
        Self {
            aws,
            gcs_token: var("GCS_TOKEN").map(Into::into),
        }
    }

    /// Masks any secret a server might have echoed into an error message.
    fn redact(&self, line: &str) -> String {
        let mut out = line.to_string();
        let secrets = self
            .aws
            .iter()
            .flat_map(|c| [Some(&c.secret_access_key), c.session_token.as_ref()])
            .flatten()
            .chain(self.gcs_token.as_ref());
        for secret in secrets {
            let secret = secret.expose_secret();
            if !secret.is_empty() {
                out = out.replace(secret, "[redacted]");
            }
        }
        out
    }
}

/// One line, of bounded length: the kubelet keeps 4 KiB of termination message.
fn one_line(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(1000) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

fn write_termination_log(path: &Path, line: &str) {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).truncate(true);
    // Kubernetes provides /dev/termination-log; outside a pod, do not create it in /dev.
    options.create(path != Path::new(DEFAULT_TERMINATION_LOG));
    if let Ok(mut file) = options.open(path) {
        let _ = writeln!(file, "{line}");
    }
}

/// A URL as it may be shown: no user info, no query (it may carry a presigned signature).
fn display_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    if shown.query().is_some() {
        shown.set_query(None);
        format!("{shown}?…")
    } else {
        shown.to_string()
    }
}

async fn fetch(args: &FetchArgs, secrets: &Secrets) -> Result<(), Failure> {
    let url = Url::parse(&args.uri).map_err(|e| Failure {
        object: args.uri.split('?').next().unwrap_or_default().to_string(),
        error: FetchError::Usage(format!("--uri: not a URI: {e}")),
    })?;
    let shown = display_url(&url);
    let expect = match args.sha256.as_deref() {
        None => None,
        Some(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(s.to_ascii_lowercase())
        }
        Some(_) => {
            return Err(Failure {
                object: shown,
                error: FetchError::Usage("--sha256: must be 64 hexadecimal digits".into()),
            });
        }
    };
    let http = Http::new().map_err(Failure::at(&shown))?;
    match url.scheme() {
        "http" | "https" => {
            let name = url
                .path_segments()
                .and_then(|mut s| s.next_back())
                .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
                .unwrap_or_default();
            let target = safe_join(&args.dest, &name).map_err(Failure::at(&shown))?;
            let bytes = retry_interrupted(|| {
                fetch_url(&http, url.clone(), &target, expect.as_deref(), &shown)
            })
            .await
            .map_err(Failure::at(&shown))?;
            tracing::info!(object = %shown, bytes, file = %target.display(), "fetched");
            Ok(())
        }
        "s3" | "gs" => {
            let store = Store::new(&url, args, secrets).map_err(Failure::at(&shown))?;
            let key = percent_decode_str(url.path().trim_start_matches('/'))
                .decode_utf8_lossy()
                .into_owned();
            if key.is_empty() || key.ends_with('/') {
                if expect.is_some() {
                    return Err(Failure {
                        object: shown,
                        error: FetchError::Usage(
                            "--sha256 applies to a single object, not to a prefix".into(),
                        ),
                    });
                }
                fetch_prefix(&http, &store, &key, &args.dest).await
            } else {
                let name = key.rsplit('/').next().unwrap_or_default();
                let target = safe_join(&args.dest, name).map_err(Failure::at(&shown))?;
                let bytes = store
                    .fetch_object(&http, &key, &target, expect.as_deref())
                    .await
                    .map_err(Failure::at(&shown))?;
                tracing::info!(object = %shown, bytes, file = %target.display(), "fetched");
                Ok(())
            }
        }
        other => Err(Failure {
            object: shown,
            error: FetchError::Usage(format!(
                "--uri: unsupported scheme {other}:// (s3, gs, https, http)"
            )),
        }),
    }
}

/// `dest/relative`, refusing anything that would land outside `dest` (a hostile listing
/// or URL must not write elsewhere).
fn safe_join(dest: &Path, relative: &str) -> Result<PathBuf, FetchError> {
    let path = Path::new(relative);
    let normal = path.components().all(|c| matches!(c, Component::Normal(_)));
    if relative.is_empty() || !normal {
        return Err(FetchError::Protocol(format!(
            "refusing to write {relative:?}: not a plain relative path under --dest"
        )));
    }
    Ok(dest.join(path))
}

/// GETs an `http(s)://` URL (following redirects) into `target`.
async fn fetch_url(
    http: &Http,
    url: Url,
    target: &Path,
    expect: Option<&str>,
    shown: &str,
) -> Result<u64, FetchError> {
    let mut url = url;
    for _ in 0..=MAX_REDIRECTS {
        let response = http
            .send(|| {
                let uri = url.as_str();
                Request::get(uri)
                    .body(Empty::new())
                    .map_err(|e| FetchError::Usage(format!("--uri: {e}")))
            })
            .await?;
        if response.status().is_redirection()
            && let Some(location) = response.headers().get(http::header::LOCATION)
        {
            let next = location
                .to_str()
                .ok()
                .and_then(|l| url.join(l).ok())
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| FetchError::Protocol("redirect to an invalid location".into()))?;
            tracing::info!(to = %display_url(&next), "following a redirect");
            url = next;
            continue;
        }
        return body_to_file(response, target, expect, shown).await;
    }
    Err(FetchError::Protocol(format!(
        "more than {MAX_REDIRECTS} redirects"
    )))
}

/// A successful answer's body into `target`; an error answer becomes its reason.
async fn body_to_file(
    response: Response<Incoming>,
    target: &Path,
    expect: Option<&str>,
    shown: &str,
) -> Result<u64, FetchError> {
    if !response.status().is_success() {
        return Err(status_error(response).await);
    }
    let total = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    download::to_file(response.into_body(), total, target, expect, shown).await
}

/// `Code (HTTP n): Message` from an S3/GCS error document, else `HTTP n Reason`.
async fn status_error(response: Response<Incoming>) -> FetchError {
    let status = response.status();
    let body = read_limited(response.into_body(), DOC_LIMIT)
        .await
        .unwrap_or_default();
    let doc = String::from_utf8_lossy(&body);
    FetchError::Status(describe_status(status, &doc))
}

fn describe_status(status: StatusCode, doc: &str) -> String {
    let code = status.as_u16();
    match xml::first(doc, "Code") {
        Some(name) => {
            let mut out = format!("{name} (HTTP {code})");
            if let Some(message) = xml::first(doc, "Message").filter(|m| !m.is_empty()) {
                out.push_str(": ");
                out.push_str(&message);
            }
            if matches!(
                name.as_str(),
                "PermanentRedirect"
                    | "AuthorizationHeaderMalformed"
                    | "IllegalLocationConstraintException"
            ) {
                out.push_str(" (set AWS_REGION to the bucket's region)");
            }
            out
        }
        None => format!(
            "HTTP {code} {}",
            status.canonical_reason().unwrap_or_default()
        )
        .trim_end()
        .to_string(),
    }
}

/// How requests to a bucket are authorized.
enum Auth<'a> {
    None,
    SigV4(&'a Credentials),
    Bearer(&'a SecretString),
}

/// A bucket of S3 or of GCS's XML API (the same protocol for what we need).
struct Store<'a> {
    scheme: &'static str,
    bucket: String,
    /// The bucket's root URL: `https://BUCKET.s3.REGION.amazonaws.com` or
    /// `ENDPOINT/BUCKET` (path-style).
    root: String,
    region: &'a str,
    auth: Auth<'a>,
}

impl<'a> Store<'a> {
    fn new(url: &Url, args: &'a FetchArgs, secrets: &'a Secrets) -> Result<Self, FetchError> {
        let bucket = url.host_str().unwrap_or_default().to_string();
        if bucket.is_empty() {
            return Err(FetchError::Usage("--uri: no bucket".into()));
        }
        let endpoint = args
            .endpoint
            .as_deref()
            .map(|e| e.trim_end_matches('/'))
            .filter(|e| !e.is_empty());
        if let Some(e) = endpoint
            && !(e.starts_with("https://") || e.starts_with("http://"))
        {
            return Err(FetchError::Usage(format!(
                "--endpoint (AWS_ENDPOINT_URL): {e:?} is not an http(s):// URL"
            )));
        }
        let (scheme, root, auth) = if url.scheme() == "s3" {
            let root = match endpoint {
                Some(e) => format!("{e}/{bucket}"),
                // A dotted name would not match the `*.s3.REGION.amazonaws.com`
                // certificate: such buckets are addressed path-style.
                None if bucket.contains('.') => {
                    format!("https://s3.{}.amazonaws.com/{bucket}", args.region)
                }
                None => format!("https://{bucket}.s3.{}.amazonaws.com", args.region),
            };
            let auth = secrets.aws.as_ref().map_or(Auth::None, Auth::SigV4);
            ("s3", root, auth)
        } else {
            let root = format!("{}/{bucket}", endpoint.unwrap_or(GCS_ENDPOINT));
            let auth = secrets.gcs_token.as_ref().map_or(Auth::None, Auth::Bearer);
            ("gs", root, auth)
        };
        Ok(Self {
            scheme,
            bucket,
            root,
            region: &args.region,
            auth,
        })
    }

    fn shown(&self, key: &str) -> String {
        format!("{}://{}/{key}", self.scheme, self.bucket)
    }

    /// A signed (or bearer, or anonymous) GET of `url`.
    async fn get(&self, http: &Http, url: &Url) -> Result<Response<Incoming>, FetchError> {
        http.send(|| {
            let mut headers = HeaderMap::new();
            match &self.auth {
                Auth::None => {}
                Auth::SigV4(creds) => sigv4::sign(
                    "GET",
                    url,
                    &mut headers,
                    sigv4::EMPTY_SHA256,
                    &Signer {
                        creds,
                        region: self.region,
                        service: "s3",
                    },
                    chrono::Utc::now(),
                ),
                Auth::Bearer(token) => {
                    let value = format!("Bearer {}", token.expose_secret());
                    let mut value = http::HeaderValue::from_str(&value).map_err(|_| {
                        FetchError::Usage("GCS_TOKEN: not a valid header value".into())
                    })?;
                    value.set_sensitive(true);
                    headers.insert(http::header::AUTHORIZATION, value);
                }
            }
            let mut request = Request::builder()
                .method(Method::GET)
                .uri(url.as_str())
                .body(Empty::new())
                .map_err(|e| FetchError::Usage(format!("--uri: {e}")))?;
            *request.headers_mut() = headers;
            Ok(request)
        })
        .await
    }

    fn object_url(&self, key: &str) -> Result<Url, FetchError> {
        Url::parse(&format!("{}/{}", self.root, sigv4::encode_key(key)))
            .map_err(|e| FetchError::Usage(format!("--uri: {e}")))
    }

    async fn fetch_object(
        &self,
        http: &Http,
        key: &str,
        target: &Path,
        expect: Option<&str>,
    ) -> Result<u64, FetchError> {
        let url = self.object_url(key)?;
        let shown = self.shown(key);
        retry_interrupted(|| async {
            let response = self.get(http, &url).await?;
            body_to_file(response, target, expect, &shown).await
        })
        .await
    }

    /// Every key under `prefix` (ListObjectsV2, following continuation tokens).
    async fn list(&self, http: &Http, prefix: &str) -> Result<Vec<String>, FetchError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = format!("list-type=2&prefix={}", sigv4::encode_query(prefix));
            if let Some(t) = &token {
                query.push_str("&continuation-token=");
                query.push_str(&sigv4::encode_query(t));
            }
            // Path-style: `/BUCKET?list-type=2…` (what S3-compatible servers sign), virtual-hosted: `/?…`.
            let url = Url::parse(&format!("{}?{query}", self.root))
                .map_err(|e| FetchError::Usage(format!("--uri: {e}")))?;
            let response = self.get(http, &url).await?;
            if !response.status().is_success() {
                return Err(status_error(response).await);
            }
            let body = read_limited(response.into_body(), DOC_LIMIT).await?;
            let doc = String::from_utf8_lossy(&body);
            keys.extend(xml::elements(&doc, "Key"));
            if xml::first(&doc, "IsTruncated").as_deref() != Some("true") {
                return Ok(keys);
            }
            token = xml::first(&doc, "NextContinuationToken");
            if token.is_none() {
                return Err(FetchError::Protocol(
                    "truncated listing without a NextContinuationToken".into(),
                ));
            }
        }
    }
}

/// Downloads every object under `prefix`, keeping the paths below it.
async fn fetch_prefix(
    http: &Http,
    store: &Store<'_>,
    prefix: &str,
    dest: &Path,
) -> Result<(), Failure> {
    let keys = store
        .list(http, prefix)
        .await
        .map_err(Failure::at(store.shown(prefix)))?;
    let mut plan = Vec::new();
    for key in keys {
        // Zero-byte "folder" markers of consoles carry no content.
        if key.ends_with('/') {
            continue;
        }
        let relative = key.strip_prefix(prefix).ok_or_else(|| Failure {
            object: store.shown(prefix),
            error: FetchError::Protocol(format!("listed key {key:?} is not under the prefix")),
        })?;
        let target = safe_join(dest, relative).map_err(Failure::at(store.shown(&key)))?;
        plan.push((key, target));
    }
    if plan.is_empty() {
        return Err(Failure {
            object: store.shown(prefix),
            error: FetchError::Status("no objects under this prefix".into()),
        });
    }
    let mut total: u64 = 0;
    for (i, (key, target)) in plan.iter().enumerate() {
        let bytes = store
            .fetch_object(http, key, target, None)
            .await
            .map_err(Failure::at(store.shown(key)))?;
        total += bytes;
        tracing::info!(object = %store.shown(key), bytes, done = i + 1, of = plan.len(), "fetched");
    }
    tracing::info!(prefix = %store.shown(prefix), objects = plan.len(), bytes = total, "fetched the prefix");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(uri: &str, endpoint: Option<&str>) -> FetchArgs {
        FetchArgs {
            uri: uri.into(),
            dest: "/models".into(),
            sha256: None,
            endpoint: endpoint.map(Into::into),
            region: "eu-west-1".into(),
            termination_log: DEFAULT_TERMINATION_LOG.into(),
        }
    }

    #[test]
    fn bucket_addresses() {
        let none = Secrets {
            aws: None,
            gcs_token: None,
        };
        let root = |uri: &str, endpoint: Option<&str>| {
            let a = args(uri, endpoint);
            let url = Url::parse(uri).unwrap();
            let store = Store::new(&url, &a, &none).unwrap();
            (
                store.root.clone(),
                store.object_url("m/a b.onnx").unwrap().to_string(),
            )
        };
        assert_eq!(
            root("s3://models/m/a.onnx", None),
            (
                "https://models.s3.eu-west-1.amazonaws.com".into(),
                "https://models.s3.eu-west-1.amazonaws.com/m/a%20b.onnx".into()
            )
        );
        assert_eq!(
            root("s3://my.models/m/", None).0,
            "https://s3.eu-west-1.amazonaws.com/my.models"
        );
        assert_eq!(
            root("s3://models/m/", Some("http://minio.svc:9000/")).1,
            "http://minio.svc:9000/models/m/a%20b.onnx"
        );
        assert_eq!(
            root("gs://models/m/", None).0,
            "https://storage.googleapis.com/models"
        );
        let a = args("s3://models/x", Some("ftp://x"));
        let url = Url::parse(&a.uri).unwrap();
        assert!(Store::new(&url, &a, &none).is_err());
    }

    #[test]
    fn safe_join_refuses_escapes() {
        let dest = Path::new("/models");
        assert_eq!(
            safe_join(dest, "sub/a.bin").unwrap(),
            Path::new("/models/sub/a.bin")
        );
        for bad in ["", "../x", "a/../../x", "/etc/passwd", "..", "./a"] {
            assert!(safe_join(dest, bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn shown_urls_hide_user_info_and_query() {
        let url = Url::parse("https://u:p@h.example/m.onnx?X-Amz-Signature=abc").unwrap();
        assert_eq!(display_url(&url), "https://h.example/m.onnx?…");
    }

    #[test]
    fn status_reasons() {
        let doc = "<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>";
        assert_eq!(
            describe_status(StatusCode::NOT_FOUND, doc),
            "NoSuchKey (HTTP 404): The specified key does not exist."
        );
        assert_eq!(
            describe_status(StatusCode::NOT_FOUND, "<html>nope</html>"),
            "HTTP 404 Not Found"
        );
    }

    #[test]
    fn failure_line_is_one_redacted_line() {
        let secrets = Secrets {
            aws: Some(Credentials {
                access_key_id: "AKID".into(),
                secret_access_key: "s3cr3t".into(),
                session_token: None,
            }),
            gcs_token: Some("gtok".into()),
        };
        let line = secrets.redact(&one_line("model-fetch: x:\n echoed s3cr3t and gtok"));
        assert_eq!(line, "model-fetch: x: echoed [redacted] and [redacted]");
    }
}
