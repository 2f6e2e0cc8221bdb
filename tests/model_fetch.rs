//! `ds model-fetch` tested as a process (`CARGO_BIN_EXE_ds`), as the init container runs
//! it: against a local HTTP server the test serves (plain URLs, a GCS-style bucket with a
//! bearer token, a hostile listing), and against moto's S3 server (`python3 -m
//! moto.server`, with signatures enforced) for real S3 semantics. Objects are uploaded
//! with our own SigV4 signer, which moto verifies.

use axum::Router;
use axum::extract::Query;
use axum::http::{HeaderMap as AxumHeaders, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use ds_fetch::sigv4::{self, Credentials, Signer};
use ds_test_support::cli::{self, Run};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use url::Url;

/// Generous bound for one `ds model-fetch` run on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(60);
const GCS_TOKEN: &str = "ya29.test-bearer-token";

fn ds_binary() -> PathBuf {
    std::env::var_os("DS_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ds")))
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Bytes that are not all alike, large enough to arrive in several frames.
fn model_bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// A scratch directory: the download destination and the termination log.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn dest(&self) -> PathBuf {
        self.dir.path().join("models")
    }

    fn termination_log(&self) -> PathBuf {
        self.dir.path().join("termination-log")
    }

    /// `ds model-fetch ARGS --dest DEST --termination-log LOG` with only `env` as
    /// credentials (none of the user's own).
    async fn fetch(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let dest = self.dest();
        let log = self.termination_log();
        let mut all = vec!["model-fetch"];
        all.extend_from_slice(args);
        all.extend([
            "--dest",
            dest.to_str().unwrap(),
            "--termination-log",
            log.to_str().unwrap(),
        ]);
        let mut cmd = cli::bare(&ds_binary(), &self.dir.path().join("config.yaml"), &all);
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_REGION",
            "GCS_TOKEN",
            "DS_TERMINATION_LOG",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cli::output(cmd, DEADLINE).await
    }

    /// The one failure line: exit 1, the last line of stderr, the only `model-fetch:`
    /// line there, and the termination log's content.
    fn reason(&self, run: &Run) -> String {
        assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
        let lines: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("model-fetch: "))
            .collect();
        assert_eq!(lines.len(), 1, "one reason line: {}", run.stderr);
        assert_eq!(run.stderr.lines().last(), Some(lines[0]), "{}", run.stderr);
        let logged = std::fs::read_to_string(self.termination_log()).expect("termination log");
        assert_eq!(logged.trim_end(), lines[0]);
        lines[0].to_string()
    }

    /// The files under the destination, as relative paths with their contents.
    fn files(&self) -> BTreeMap<String, Vec<u8>> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(root, &path, out);
                } else {
                    let rel = path
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    out.insert(rel, std::fs::read(&path).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.dest(), &self.dest(), &mut out);
        out
    }
}

// === a local HTTP server ===

/// Serves `/files/model.bin`, a GCS-style bucket at `/gcs/bucket/…` that wants
/// `Authorization: Bearer GCS_TOKEN`, and a bucket `/evil` whose listing names a key
/// outside the prefix's directory.
async fn serve(model: Vec<u8>) -> String {
    let model = Bytes::from(model);
    let plain = model.clone();
    let flaky = model.clone();
    let failures_left = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(2));
    let gcs = model.clone();
    let app = Router::new()
        .route("/files/model.bin", get(move || async move { plain.clone() }))
        .route(
            "/gcs/bucket/dir/model.bin",
            get(move |headers: AxumHeaders| async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
                if auth == Some(&format!("Bearer {GCS_TOKEN}")) {
                    gcs.clone().into_response()
                } else {
                    (
                        StatusCode::UNAUTHORIZED,
                        "<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>\
                         <Message>Anonymous caller does not have storage.objects.get access.</Message></Error>",
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/evil",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                assert_eq!(q.get("list-type").map(String::as_str), Some("2"));
                assert_eq!(q.get("prefix").map(String::as_str), Some("p/"));
                "<ListBucketResult><IsTruncated>false</IsTruncated>\
                 <Contents><Key>p/ok.txt</Key></Contents>\
                 <Contents><Key>p/../../escape.txt</Key></Contents></ListBucketResult>"
            }),
        )
        .route(
            "/flaky/model.bin",
            get(move || async move {
                let left = failures_left.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                if left > 0 && left <= 2 {
                    (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response()
                } else {
                    flaky.clone().into_response()
                }
            }),
        )
        .route("/evil/p/ok.txt", get(|| async { "ok" }))
        .route(
            "/paged",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                match q.get("continuation-token").map(String::as_str) {
                    None => "<ListBucketResult><IsTruncated>true</IsTruncated>\
                             <Contents><Key>p/a.txt</Key></Contents>\
                             <NextContinuationToken>tok/+=1</NextContinuationToken></ListBucketResult>",
                    Some("tok/+=1") => "<ListBucketResult><IsTruncated>false</IsTruncated>\
                             <Contents><Key>p/deep/b.txt</Key></Contents></ListBucketResult>",
                    Some(other) => panic!("unexpected continuation token {other:?}"),
                }
            }),
        )
        .route("/paged/p/a.txt", get(|| async { "first page" }))
        .route("/paged/p/deep/b.txt", get(|| async { "second page" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn http_with_the_right_checksum_writes_the_file() {
    let model = model_bytes(300_000, 1);
    let base = serve(model.clone()).await;
    let s = Scratch::new();
    let uri = format!("{base}/files/model.bin");
    let run = s
        .fetch(&["--uri", &uri, "--sha256", &sha256_hex(&model)], &[])
        .await;
    run.ok();
    assert_eq!(
        s.files(),
        BTreeMap::from([("model.bin".to_string(), model)])
    );
}

#[tokio::test]
async fn http_with_a_wrong_checksum_fails_and_leaves_no_file() {
    let model = model_bytes(300_000, 2);
    let base = serve(model.clone()).await;
    let s = Scratch::new();
    let uri = format!("{base}/files/model.bin");
    let wrong = sha256_hex(b"another model");
    let run = s.fetch(&["--uri", &uri, "--sha256", &wrong], &[]).await;
    assert_eq!(
        s.reason(&run),
        format!(
            "model-fetch: {uri}: sha256 mismatch: expected {wrong}, got {}",
            sha256_hex(&model)
        )
    );
    assert!(s.files().is_empty(), "left behind: {:?}", s.files().keys());
}

#[tokio::test]
async fn http_missing_file_names_the_404() {
    let base = serve(model_bytes(10, 3)).await;
    let s = Scratch::new();
    let uri = format!("{base}/files/absent.onnx");
    let run = s.fetch(&["--uri", &uri], &[]).await;
    assert_eq!(
        s.reason(&run),
        format!("model-fetch: {uri}: HTTP 404 Not Found")
    );
    assert!(
        !run.stderr.contains("retrying"),
        "a 4xx is final: {}",
        run.stderr
    );
    assert!(s.files().is_empty());
}

#[tokio::test]
async fn http_5xx_is_retried() {
    let model = model_bytes(1_000, 7);
    let base = serve(model.clone()).await;
    let s = Scratch::new();
    let uri = format!("{base}/flaky/model.bin");
    let run = s.fetch(&["--uri", &uri], &[]).await;
    run.ok();
    assert_eq!(run.stderr.matches("retrying").count(), 2, "{}", run.stderr);
    assert_eq!(
        s.files(),
        BTreeMap::from([("model.bin".to_string(), model)])
    );
}

#[tokio::test]
async fn gs_sends_the_bearer_token_and_never_prints_it() {
    let model = model_bytes(50_000, 4);
    let base = serve(model.clone()).await;
    let endpoint = format!("{base}/gcs");
    let args = [
        "--uri",
        "gs://bucket/dir/model.bin",
        "--endpoint",
        &endpoint,
    ];

    let s = Scratch::new();
    s.fetch(&args, &[("GCS_TOKEN", GCS_TOKEN)]).await.ok();
    assert_eq!(
        s.files(),
        BTreeMap::from([("model.bin".to_string(), model)])
    );

    let s = Scratch::new();
    let wrong = "ya29.wrong-token";
    let run = s.fetch(&args, &[("GCS_TOKEN", wrong)]).await;
    assert_eq!(
        s.reason(&run),
        "model-fetch: gs://bucket/dir/model.bin: AccessDenied (HTTP 401): \
         Anonymous caller does not have storage.objects.get access."
    );
    assert!(!run.stderr.contains(wrong) && !run.stdout.contains(wrong));
    assert!(s.files().is_empty());
}

#[tokio::test]
async fn a_listing_with_a_key_outside_the_prefix_writes_nothing() {
    let base = serve(Vec::new()).await;
    let s = Scratch::new();
    let run = s
        .fetch(&["--uri", "s3://evil/p/", "--endpoint", &base], &[])
        .await;
    let reason = s.reason(&run);
    assert!(
        reason.starts_with("model-fetch: s3://evil/p/../../escape.txt: refusing to write"),
        "{reason}"
    );
    // Checked before any download: not even the harmless object is written.
    assert!(s.files().is_empty(), "{:?}", s.files().keys());
    assert!(!s.dir.path().join("escape.txt").exists());
    assert!(!s.dir.path().parent().unwrap().join("escape.txt").exists());
}

#[tokio::test]
async fn a_body_cut_off_is_downloaded_again() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let model = model_bytes(20_000, 8);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = model.clone();
    tokio::spawn(async move {
        for attempt in 0.. {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 4096];
            let _ = conn.read(&mut request).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                served.len()
            );
            conn.write_all(head.as_bytes()).await.unwrap();
            // The first answer stops halfway, as a dropped connection does.
            let body = if attempt == 0 {
                &served[..served.len() / 2]
            } else {
                &served[..]
            };
            conn.write_all(body).await.unwrap();
            conn.shutdown().await.unwrap();
        }
    });
    let s = Scratch::new();
    let uri = format!("http://{addr}/cut/model.bin");
    let run = s
        .fetch(&["--uri", &uri, "--sha256", &sha256_hex(&model)], &[])
        .await;
    run.ok();
    assert_eq!(run.stderr.matches("retrying").count(), 1, "{}", run.stderr);
    assert_eq!(
        s.files(),
        BTreeMap::from([("model.bin".to_string(), model)])
    );
}

#[tokio::test]
async fn a_listing_in_pages_is_followed_to_its_end() {
    let base = serve(Vec::new()).await;
    let s = Scratch::new();
    s.fetch(&["--uri", "s3://paged/p/", "--endpoint", &base], &[])
        .await
        .ok();
    assert_eq!(
        s.files(),
        BTreeMap::from([
            ("a.txt".to_string(), b"first page".to_vec()),
            ("deep/b.txt".to_string(), b"second page".to_vec()),
        ])
    );
}

#[tokio::test]
async fn a_server_that_is_not_there_is_named_after_the_retries() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = Scratch::new();
    let uri = format!("http://127.0.0.1:{port}/m.onnx");
    let run = s.fetch(&["--uri", &uri], &[]).await;
    let reason = s.reason(&run);
    assert!(
        reason.starts_with(&format!("model-fetch: {uri}: cannot connect: ")),
        "{reason}"
    );
    assert_eq!(run.stderr.matches("retrying").count(), 3, "{}", run.stderr);
}

// === moto's S3 server ===

type TestClient = Client<HttpConnector, Full<Bytes>>;

/// A moto server on a free port, with an IAM user allowed `s3:*` and signatures
/// enforced from then on.
struct Moto {
    _child: Child,
    url: String,
    creds: Credentials,
    http: TestClient,
}

/// Sends `method url` with `body`, signed for `service` when `creds` is given.
async fn send(
    http: &TestClient,
    method: &str,
    url: &str,
    body: &[u8],
    content_type: Option<&str>,
    signing: Option<(&Credentials, &str)>,
) -> (u16, String) {
    let parsed = Url::parse(url).unwrap();
    let mut headers = http::HeaderMap::new();
    if let Some(ct) = content_type {
        headers.insert("content-type", ct.parse().unwrap());
    }
    if let Some((creds, service)) = signing {
        let signer = Signer {
            creds,
            region: "us-east-1",
            service,
        };
        sigv4::sign(
            method,
            &parsed,
            &mut headers,
            &sha256_hex(body),
            &signer,
            chrono::Utc::now(),
        );
    }
    let mut request = http::Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    *request.headers_mut() = headers;
    let response = http.request(request).await.expect("moto answers");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn xml_text(doc: &str, tag: &str) -> String {
    let start = doc
        .find(&format!("<{tag}>"))
        .unwrap_or_else(|| panic!("no {tag}: {doc}"));
    let rest = &doc[start + tag.len() + 2..];
    rest[..rest.find(&format!("</{tag}>")).unwrap()].to_string()
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", sigv4::encode_query(k), sigv4::encode_query(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl Moto {
    async fn start() -> Self {
        let import = std::process::Command::new("python3")
            .args(["-c", "import moto.server"])
            .output();
        assert!(
            import.as_ref().is_ok_and(|o| o.status.success()),
            "these tests need moto's S3 server: pip install 'moto[server]' ({import:?})"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let url = format!("http://127.0.0.1:{port}");
        let http: TestClient = Client::builder(TokioExecutor::new()).build_http();
        ds_test_support::eventually_within(Duration::from_secs(60), "moto listening", || {
            let http = http.clone();
            let probe = format!("{url}/moto-api/");
            async move {
                let req = http::Request::get(probe).body(Full::default()).unwrap();
                let ok = http.request(req).await.ok()?.status().is_success();
                ok.then_some(())
            }
        })
        .await;

        // Authentication is off until reset-auth: the user and its key are made
        // anonymously (moto routes the IAM calls by the service the signature names).
        let bootstrap = Credentials {
            access_key_id: "AKIDBOOTSTRAP".into(),
            secret_access_key: "bootstrap".into(),
            session_token: None,
        };
        let iam = |pairs: Vec<(&'static str, String)>| {
            let http = http.clone();
            let url = url.clone();
            let bootstrap = bootstrap.clone();
            async move {
                let pairs: Vec<(&str, &str)> =
                    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let body = form(&pairs);
                let ct = "application/x-www-form-urlencoded";
                let (status, doc) = send(
                    &http,
                    "POST",
                    &format!("{url}/"),
                    body.as_bytes(),
                    Some(ct),
                    Some((&bootstrap, "iam")),
                )
                .await;
                assert_eq!(status, 200, "IAM {pairs:?}: {doc}");
                doc
            }
        };
        let v = || ("Version", "2010-05-08".to_string());
        iam(vec![
            ("Action", "CreateUser".into()),
            ("UserName", "fetch".into()),
            v(),
        ])
        .await;
        let key = iam(vec![
            ("Action", "CreateAccessKey".into()),
            ("UserName", "fetch".into()),
            v(),
        ])
        .await;
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
        iam(vec![
            ("Action", "PutUserPolicy".into()),
            ("UserName", "fetch".into()),
            ("PolicyName", "s3".into()),
            ("PolicyDocument", policy.into()),
            v(),
        ])
        .await;
        let creds = Credentials {
            access_key_id: xml_text(&key, "AccessKeyId"),
            secret_access_key: xml_text(&key, "SecretAccessKey").into(),
            session_token: None,
        };
        let moto = Self {
            _child: child,
            url,
            creds,
            http,
        };
        moto.enforce_signatures().await;
        moto
    }

    /// From now on moto checks every request's signature and the user's policy.
    async fn enforce_signatures(&self) {
        let (status, doc) = send(
            &self.http,
            "POST",
            &format!("{}/moto-api/reset-auth", self.url),
            b"0",
            Some("text/plain"),
            None,
        )
        .await;
        assert_eq!(status, 200, "reset-auth: {doc}");
    }

    /// Stops checking signatures (see the prefix test).
    async fn accept_any_signature(&self) {
        let (status, doc) = send(
            &self.http,
            "POST",
            &format!("{}/moto-api/reset-auth", self.url),
            b"inf",
            Some("text/plain"),
            None,
        )
        .await;
        assert_eq!(status, 200, "reset-auth: {doc}");
    }

    /// PUTs with our signer; moto checks the signature.
    async fn put(&self, path: &str, body: &[u8]) {
        let url = format!("{}/{}", self.url, sigv4::encode_key(path));
        let (status, doc) = send(
            &self.http,
            "PUT",
            &url,
            body,
            None,
            Some((&self.creds, "s3")),
        )
        .await;
        assert_eq!(status, 200, "PUT {path}: {doc}");
    }

    /// A bucket `models` with `iris.onnx` and, under `prefix/v1/`, two files (one in a
    /// sub-directory), plus one under `prefix/v2/` that a fetch of v1 must not take.
    async fn with_models(self) -> Self {
        self.put("models", b"").await;
        self.put("models/iris.onnx", &model_bytes(200_000, 5)).await;
        self.put("models/prefix/v1/config.json", b"{\"classes\":3}")
            .await;
        self.put(
            "models/prefix/v1/sub dir/weights.bin",
            &model_bytes(70_000, 6),
        )
        .await;
        self.put("models/prefix/v2/other.bin", b"other").await;
        self
    }

    fn env(&self) -> Vec<(&str, &str)> {
        use secrecy::ExposeSecret as _;
        vec![
            ("AWS_ACCESS_KEY_ID", self.creds.access_key_id.as_str()),
            (
                "AWS_SECRET_ACCESS_KEY",
                self.creds.secret_access_key.expose_secret(),
            ),
            ("AWS_ENDPOINT_URL", self.url.as_str()),
        ]
    }
}

#[tokio::test]
async fn s3_single_object_with_its_checksum() {
    let moto = Moto::start().await.with_models().await;
    let s = Scratch::new();
    let model = model_bytes(200_000, 5);
    let run = s
        .fetch(
            &[
                "--uri",
                "s3://models/iris.onnx",
                "--sha256",
                &sha256_hex(&model),
            ],
            &moto.env(),
        )
        .await;
    run.ok();
    assert_eq!(
        s.files(),
        BTreeMap::from([("iris.onnx".to_string(), model)])
    );
}

#[tokio::test]
async fn s3_prefix_fetches_every_object_with_its_relative_path() {
    let moto = Moto::start().await.with_models().await;
    // moto checks a signature against the query it has already decoded, so it refuses
    // any listing whose prefix holds a '/' (boto3's own too) while real S3 accepts ours;
    // the prefix listing is therefore checked with signatures off, and a signed
    // listing below with the bucket's root (an empty prefix).
    moto.accept_any_signature().await;
    let s = Scratch::new();
    s.fetch(&["--uri", "s3://models/prefix/v1/"], &moto.env())
        .await
        .ok();
    assert_eq!(
        s.files(),
        BTreeMap::from([
            ("config.json".to_string(), b"{\"classes\":3}".to_vec()),
            ("sub dir/weights.bin".to_string(), model_bytes(70_000, 6)),
        ])
    );

    moto.enforce_signatures().await;
    let s = Scratch::new();
    s.fetch(&["--uri", "s3://models/"], &moto.env()).await.ok();
    let files: Vec<String> = s.files().into_keys().collect();
    assert_eq!(
        files,
        [
            "iris.onnx",
            "prefix/v1/config.json",
            "prefix/v1/sub dir/weights.bin",
            "prefix/v2/other.bin"
        ]
    );
}

#[tokio::test]
async fn s3_missing_key_is_no_such_key() {
    let moto = Moto::start().await.with_models().await;
    let s = Scratch::new();
    let run = s
        .fetch(&["--uri", "s3://models/absent.onnx"], &moto.env())
        .await;
    assert_eq!(
        s.reason(&run),
        "model-fetch: s3://models/absent.onnx: NoSuchKey (HTTP 404): The specified key does not exist."
    );
    assert!(s.files().is_empty());
}

#[tokio::test]
async fn s3_wrong_secret_is_refused_and_no_secret_is_printed() {
    use secrecy::ExposeSecret as _;
    let moto = Moto::start().await.with_models().await;
    let s = Scratch::new();
    let wrong = "wrongSecretKey/EXAMPLE+0123456789abcdef";
    let mut env = moto.env();
    env[1] = ("AWS_SECRET_ACCESS_KEY", wrong);
    let run = s.fetch(&["--uri", "s3://models/iris.onnx"], &env).await;
    let reason = s.reason(&run);
    assert!(
        reason.starts_with("model-fetch: s3://models/iris.onnx: SignatureDoesNotMatch (HTTP 403)"),
        "{reason}"
    );
    let right = moto.creds.secret_access_key.expose_secret();
    let printed = format!("{}{}", run.stdout, run.stderr);
    for secret in [wrong, right, "Signature=", "AWS4-HMAC-SHA256"] {
        assert!(!printed.contains(secret), "{secret} printed: {printed}");
    }
    assert!(s.files().is_empty());
}
