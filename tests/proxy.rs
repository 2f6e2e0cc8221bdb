//! `ds model-proxy` end to end: a real proxy between a test client and a small hyper
//! upstream, all on loopback sockets.

use bytes::Bytes;
use ds_proxy::{HEALTH_PATH, METRICS_PATH, READY_PATH, REQUEST_ID_HEADER, RunningProxy};
use futures::StreamExt;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::{BoxError, TestBody, full, pattern, serve_each, serve_http1, start_proxy};

/// Generous: the machine is shared and slow; nothing here should take more than a second.
const DEADLINE: Duration = Duration::from_secs(30);

// === helpers: data ===

/// A body sent as many frames of varying size and no length: chunked on HTTP/1.1.
fn chunked(data: &[u8]) -> TestBody {
    let mut chunks = Vec::new();
    let mut rest = Bytes::copy_from_slice(data);
    let mut size = 1;
    while !rest.is_empty() {
        let n = size.min(rest.len());
        chunks.push(Ok::<_, BoxError>(Frame::data(rest.split_to(n))));
        size = size * 3 % 7919 + 1;
    }
    BodyExt::boxed(StreamBody::new(futures::stream::iter(chunks)))
}

// === helpers: the upstream ===

/// A small model-server stand-in:
/// - `/echo`: streams the request body back; status from `x-want-status`;
/// - `/collect`: reads the whole body, then answers with its length;
/// - `/chunked`: 300 kB of `pattern(_, 7)` in uneven chunks, no content length;
/// - `/big`: 10 MB of `pattern(_, 11)`;
/// - `/slow`: answers after a minute.
///
/// Every answer reports what the upstream saw in `x-seen-*` headers.
async fn upstream_handler(req: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
    let status = req
        .headers()
        .get("x-want-status")
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .unwrap_or(200);
    let mut response = Response::builder()
        .status(status)
        .header("x-upstream", "yes")
        .header("x-seen-version", format!("{:?}", req.version()));
    for (seen, header) in [
        ("x-seen-request-id", REQUEST_ID_HEADER),
        ("x-seen-custom", "x-custom"),
        ("x-seen-hop", "x-hop"),
        ("x-seen-host", "host"),
        ("x-seen-forwarded-for", "x-forwarded-for"),
    ] {
        if let Some(v) = req.headers().get(header) {
            response = response.header(seen, v.clone());
        }
    }
    let body = match req.uri().path() {
        "/echo" => req.into_body().map_err(BoxError::from).boxed(),
        "/collect" => {
            // Reads the whole request before answering, as TensorFlow Serving does.
            match req.into_body().collect().await {
                Ok(body) => full(format!("{} bytes", body.to_bytes().len())),
                Err(_) => full("broken body"),
            }
        }
        "/chunked" => chunked(&pattern(300_000, 7)),
        "/big" => full(pattern(10 * 1024 * 1024, 11)),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            full("late")
        }
        _ => {
            response = response.status(404);
            full("no such path")
        }
    };
    Ok(response.body(body).expect("valid response"))
}

async fn start_upstream() -> SocketAddr {
    serve_http1(upstream_handler).await
}

/// An address where nothing listens.
async fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

// === helpers: the proxy and clients ===

fn http1_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2c_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

async fn send(
    client: &Client<HttpConnector, TestBody>,
    method: Method,
    url: String,
    headers: &[(&str, &str)],
    body: TestBody,
) -> Answer {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = tokio::time::timeout(DEADLINE, client.request(req.body(body).unwrap()))
        .await
        .expect("answer within the deadline")
        .expect("request succeeds");
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .expect("body within the deadline")
        .expect("body arrives")
        .to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

async fn get(url: String) -> Answer {
    send(&http1_client(), Method::GET, url, &[], full("")).await
}

async fn post(proxy: &RunningProxy, path: &str, body: impl Into<Bytes>) -> Answer {
    send(
        &http1_client(),
        Method::POST,
        format!("http://{}{path}", proxy.addr),
        &[],
        full(body),
    )
    .await
}

// === helpers: metrics ===

/// One sample of the OpenMetrics text: `name{k="v",…} value`, labels in any order.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let found: Vec<(&str, &str)> = label_text
                .split(',')
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            let same = found.len() == labels.len() && labels.iter().all(|l| found.contains(l));
            if same { value.parse().ok() } else { None }
        })
}

async fn scrape(proxy: &RunningProxy) -> String {
    let answer = get(format!("http://{}{METRICS_PATH}", proxy.admin_addr)).await;
    assert_eq!(answer.status, StatusCode::OK);
    String::from_utf8(answer.body.to_vec()).expect("UTF-8 metrics")
}

/// A metric name, its labels and the value it should reach.
type Expected<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// Scrapes until every expected sample has its value (a response is recorded when its
/// body ends, which can trail the client's last byte by a moment), then returns the text.
async fn scrape_until(proxy: &RunningProxy, expected: &[Expected<'_>]) -> String {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let text = scrape(proxy).await;
        let missing: Vec<_> = expected
            .iter()
            .filter(|(name, labels, value)| sample(&text, name, labels) != Some(*value))
            .collect();
        if missing.is_empty() {
            return text;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("metrics never reached {missing:?}:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// === bodies ===

#[tokio::test]
async fn small_bodies_pass_byte_exact_both_ways() {
    let proxy = start_proxy(start_upstream().await, &[]).await;
    for body in [
        Bytes::from_static(b"hello"),
        Bytes::from_static(b""),
        Bytes::from(vec![0u8, 159, 146, 150, 255, b'\n', b'\r']),
        Bytes::from(pattern(70_000, 3)),
    ] {
        let answer = post(&proxy, "/echo", body.clone()).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, body);
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn chunked_bodies_pass_byte_exact_both_ways() {
    let proxy = start_proxy(start_upstream().await, &[]).await;
    let client = http1_client();
    let data = pattern(500_000, 5);
    let answer = send(
        &client,
        Method::POST,
        format!("http://{}/echo", proxy.addr),
        &[],
        chunked(&data),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body.len(), data.len());
    assert!(answer.body == data, "chunked upload echoed differently");

    let answer = get(format!("http://{}/chunked", proxy.addr)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        answer.body == pattern(300_000, 7),
        "chunked download differs"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn ten_megabyte_bodies_pass_byte_exact_both_ways() {
    let proxy = start_proxy(start_upstream().await, &[]).await;
    let data = Bytes::from(pattern(10 * 1024 * 1024, 13));
    let answer = post(&proxy, "/echo", data.clone()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body.len(), data.len());
    assert!(answer.body == data, "10 MB upload echoed differently");

    let answer = get(format!("http://{}/big", proxy.addr)).await;
    assert_eq!(answer.header("content-length"), Some("10485760"));
    assert!(
        answer.body == pattern(10 * 1024 * 1024, 11),
        "10 MB download differs"
    );
    proxy.shutdown().await;
}

// === headers and status ===

#[tokio::test]
async fn headers_and_status_codes_pass_through() {
    let upstream = start_upstream().await;
    let proxy = start_proxy(upstream, &[]).await;
    let client = http1_client();
    let url = format!("http://{}/echo", proxy.addr);

    for status in ["200", "201", "404", "500", "503"] {
        let answer = send(
            &client,
            Method::POST,
            url.clone(),
            &[("x-want-status", status), ("x-custom", "kept as is")],
            full("body"),
        )
        .await;
        assert_eq!(answer.status.as_str(), status);
        assert_eq!(answer.header("x-upstream"), Some("yes"));
        assert_eq!(answer.header("x-seen-custom"), Some("kept as is"));
        assert_eq!(answer.body, "body");
    }

    // No request ID: the proxy adds one, the upstream sees it, the client gets it back.
    let answer = send(&client, Method::GET, url.clone(), &[], full("")).await;
    let seen = answer
        .header("x-seen-request-id")
        .expect("upstream saw an ID");
    assert!(uuid::Uuid::parse_str(seen).is_ok(), "{seen} is a UUID");
    assert_eq!(answer.header(REQUEST_ID_HEADER), Some(seen));
    let other = send(&client, Method::GET, url.clone(), &[], full("")).await;
    assert_ne!(
        other.header(REQUEST_ID_HEADER),
        Some(seen),
        "IDs are unique"
    );

    // A client's own ID is kept.
    let answer = send(
        &client,
        Method::GET,
        url.clone(),
        &[(REQUEST_ID_HEADER, "client-id-1")],
        full(""),
    )
    .await;
    assert_eq!(answer.header("x-seen-request-id"), Some("client-id-1"));
    assert_eq!(answer.header(REQUEST_ID_HEADER), Some("client-id-1"));

    // Host passes through; hop-by-hop headers (named by Connection) do not.
    let answer = send(
        &client,
        Method::GET,
        url.clone(),
        &[
            ("host", "iris.models.example"),
            ("connection", "x-hop"),
            ("x-hop", "only for this hop"),
        ],
        full(""),
    )
    .await;
    assert_eq!(answer.header("x-seen-host"), Some("iris.models.example"));
    assert_eq!(answer.header("x-seen-hop"), None);
    assert_eq!(answer.header("x-seen-forwarded-for"), Some("127.0.0.1"));
    let answer = send(
        &client,
        Method::GET,
        url.clone(),
        &[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2, 10.0.0.3"),
        ],
        full(""),
    )
    .await;
    assert_eq!(
        answer.header("x-seen-forwarded-for"),
        Some("10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1")
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn h2c_requests_are_proxied() {
    let proxy = start_proxy(start_upstream().await, &[]).await;
    let client = h2c_client();
    let data = pattern(1024 * 1024, 17);
    let answer = send(
        &client,
        Method::POST,
        format!("http://{}/echo", proxy.addr),
        &[("x-custom", "over h2")],
        chunked(&data),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body == data, "h2c echo differs");
    assert_eq!(answer.header("x-seen-custom"), Some("over h2"));
    // The upstream pool speaks HTTP/1.1 and sees the client's authority as Host.
    assert_eq!(answer.header("x-seen-version"), Some("HTTP/1.1"));
    assert_eq!(
        answer.header("x-seen-host"),
        Some(proxy.addr.to_string().as_str())
    );
    let answer = send(
        &client,
        Method::GET,
        format!("http://{}/echo", proxy.addr),
        &[("x-want-status", "418")],
        full(""),
    )
    .await;
    assert_eq!(answer.status.as_u16(), 418);
    // Every X-Forwarded-For field the client sent is kept, the peer appended.
    let answer = send(
        &client,
        Method::GET,
        format!("http://{}/echo", proxy.addr),
        &[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2, 10.0.0.3"),
        ],
        full(""),
    )
    .await;
    assert_eq!(
        answer.header("x-seen-forwarded-for"),
        Some("10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1")
    );
    scrape_until(
        &proxy,
        &[
            (
                "ds_proxy_requests_total",
                &[("method", "POST"), ("code", "200")],
                1.0,
            ),
            (
                "ds_proxy_requests_total",
                &[("method", "GET"), ("code", "418")],
                1.0,
            ),
        ],
    )
    .await;
    proxy.shutdown().await;
}

// === upstream failures ===

#[tokio::test]
async fn unreachable_upstream_gives_502_with_json() {
    let proxy = start_proxy(dead_address().await, &[]).await;
    let answer = post(&proxy, "/v1/models/iris:predict", "{}").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let json = answer.json();
    assert_eq!(json["error"], "upstream_unavailable");
    assert!(json["message"].as_str().unwrap().contains("connect"));
    assert_eq!(
        json["request_id"].as_str(),
        answer.header(REQUEST_ID_HEADER)
    );
    scrape_until(
        &proxy,
        &[
            (
                "ds_proxy_requests_total",
                &[("method", "POST"), ("code", "502")],
                1.0,
            ),
            (
                "ds_proxy_upstream_errors_total",
                &[("kind", "connect")],
                1.0,
            ),
        ],
    )
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_gives_504_with_json() {
    let proxy = start_proxy(start_upstream().await, &["--timeout", "300ms"]).await;
    let answer = get(format!("http://{}/slow", proxy.addr)).await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    let json = answer.json();
    assert_eq!(json["error"], "upstream_timeout");
    assert!(json["message"].as_str().unwrap().contains("300ms"));
    // The proxy stays usable after a timeout.
    let answer = post(&proxy, "/echo", "still here").await;
    assert_eq!(answer.body, "still here");
    scrape_until(
        &proxy,
        &[
            (
                "ds_proxy_requests_total",
                &[("method", "GET"), ("code", "504")],
                1.0,
            ),
            (
                "ds_proxy_upstream_errors_total",
                &[("kind", "timeout")],
                1.0,
            ),
        ],
    )
    .await;
    proxy.shutdown().await;
}

/// A model server that starts every answer (a head promising 100 bytes, and 10 of them)
/// and then closes the connection, or (`stall`) sends nothing more.
async fn start_breaking_upstream(stall: bool) -> SocketAddr {
    serve_each(move |mut stream: TcpStream| async move {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            .await;
        if stall {
            // Holds the connection open without a byte more, until the proxy gives up.
            let _ = stream.read(&mut byte).await;
        }
    })
    .await
}

/// Sends a GET and reads the answer: its status (`None`: the stream was reset before the
/// head came) and whether its body came whole.
async fn get_whole(
    client: &Client<HttpConnector, TestBody>,
    url: String,
) -> (Option<StatusCode>, bool) {
    let request = Request::get(url).body(full("")).unwrap();
    let response = tokio::time::timeout(DEADLINE, client.request(request))
        .await
        .expect("an answer or an error within the deadline");
    let Ok(response) = response else {
        return (None, false);
    };
    let status = response.status();
    let body = tokio::time::timeout(DEADLINE, response.into_body().collect())
        .await
        .expect("the body ends or breaks within the deadline");
    (Some(status), body.is_ok_and(|b| b.to_bytes().len() == 100))
}

#[tokio::test]
async fn answers_the_model_breaks_off_or_stalls_are_cut_and_counted() {
    for (stall, kind) in [(false, "other"), (true, "timeout")] {
        let proxy = start_proxy(
            start_breaking_upstream(stall).await,
            &["--timeout", "300ms"],
        )
        .await;
        let url = format!("http://{}/predict", proxy.addr);
        // Over HTTP/1.1 and h2c alike: the model's head has gone out, so the client sees
        // the answer cut (a close, or a reset stream, on h2c possibly before the head
        // arrives), never a whole one, nor an error of the proxy's own.
        for client in [http1_client(), h2c_client()] {
            let (status, whole) = get_whole(&client, url.clone()).await;
            assert!(
                matches!(status, None | Some(StatusCode::OK)),
                "stall {stall}: {status:?}"
            );
            assert!(!whole, "stall {stall}: the answer must arrive cut");
        }
        scrape_until(
            &proxy,
            &[
                ("ds_proxy_upstream_errors_total", &[("kind", kind)], 2.0),
                (
                    "ds_proxy_requests_total",
                    &[("method", "GET"), ("code", "200")],
                    2.0,
                ),
                ("ds_proxy_requests_in_flight", &[], 0.0),
            ],
        )
        .await;
        proxy.shutdown().await;
    }
}

// === probes ===

#[tokio::test]
async fn readyz_follows_the_upstream_and_healthz_the_proxy() {
    let live = start_proxy(start_upstream().await, &[]).await;
    let dead = start_proxy(dead_address().await, &[]).await;
    for proxy in [&live, &dead] {
        let health = get(format!("http://{}{HEALTH_PATH}", proxy.admin_addr)).await;
        assert_eq!(health.status, StatusCode::OK);
    }
    let ready = get(format!("http://{}{READY_PATH}", live.admin_addr)).await;
    assert_eq!(ready.status, StatusCode::OK);
    let ready = get(format!("http://{}{READY_PATH}", dead.admin_addr)).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["error"], "upstream_not_ready");
    let missing = get(format!("http://{}/nope", live.admin_addr)).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    live.shutdown().await;
    dead.shutdown().await;
}

#[tokio::test]
async fn readyz_asks_the_ready_path_on_a_kept_connection_and_says_why_not() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let connections = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = {
        let (connections, failing, seen) = (connections.clone(), failing.clone(), seen.clone());
        serve_each(move |stream| {
            connections.fetch_add(1, Ordering::SeqCst);
            let (failing, seen) = (failing.clone(), seen.clone());
            async move {
                let handler = move |req: Request<Incoming>| {
                    let host = req.headers().get("host").cloned();
                    seen.lock().unwrap().push((req.uri().to_string(), host));
                    let status = if failing.load(Ordering::SeqCst) {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::NOT_FOUND
                    };
                    let mut answer = Response::new(full("no such page\n"));
                    *answer.status_mut() = status;
                    async move { Ok::<_, Infallible>(answer) }
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(stream),
                        hyper::service::service_fn(handler),
                    )
                    .await;
            }
        })
        .await
    };
    let url = format!("http://{upstream}/base");
    let flags = [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--upstream",
        &url,
        "--ready-path",
        "/health?deep=1",
    ];
    let proxy = RunningProxy::start(ds_proxy::ProxyArgs::from_flags(flags).unwrap())
        .await
        .unwrap();
    let ready_url = format!("http://{}{READY_PATH}", proxy.admin_addr);
    for _ in 0..3 {
        // A 404 still means a model server is there.
        assert_eq!(get(ready_url.clone()).await.status, StatusCode::OK);
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1, "one kept connection");
    let host = http::HeaderValue::from_str(&upstream.to_string()).unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![("/base/health?deep=1".to_owned(), Some(host)); 3]
    );
    failing.store(true, Ordering::SeqCst);
    let ready = get(ready_url).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["error"], "upstream_not_ready");
    assert_eq!(
        ready.json()["message"],
        "upstream answered 500 Internal Server Error"
    );
    proxy.shutdown().await;

    let dead = start_proxy(dead_address().await, &[]).await;
    let ready = get(format!("http://{}{READY_PATH}", dead.admin_addr)).await;
    let message = ready.json()["message"].as_str().unwrap().to_owned();
    assert!(message.starts_with("upstream unreachable: "), "{message}");
    dead.shutdown().await;
}

// === metrics ===

#[tokio::test]
async fn metrics_count_a_known_sequence_of_requests() {
    let proxy = start_proxy(start_upstream().await, &["--timeout", "300ms"]).await;
    let client = http1_client();
    let base = format!("http://{}", proxy.addr);
    for _ in 0..3 {
        send(&client, Method::GET, format!("{base}/echo"), &[], full("")).await;
    }
    for _ in 0..2 {
        send(
            &client,
            Method::POST,
            format!("{base}/echo"),
            &[("x-want-status", "404")],
            full("x"),
        )
        .await;
    }
    send(&client, Method::PUT, format!("{base}/echo"), &[], full("y")).await;
    send(&client, Method::GET, format!("{base}/slow"), &[], full("")).await;

    let text = scrape_until(
        &proxy,
        &[
            (
                "ds_proxy_requests_total",
                &[("method", "GET"), ("code", "200")],
                3.0,
            ),
            (
                "ds_proxy_requests_total",
                &[("method", "POST"), ("code", "404")],
                2.0,
            ),
            (
                "ds_proxy_requests_total",
                &[("method", "PUT"), ("code", "200")],
                1.0,
            ),
            (
                "ds_proxy_requests_total",
                &[("method", "GET"), ("code", "504")],
                1.0,
            ),
            (
                "ds_proxy_upstream_errors_total",
                &[("kind", "timeout")],
                1.0,
            ),
            ("ds_proxy_request_duration_seconds_count", &[], 7.0),
            ("ds_proxy_requests_in_flight", &[], 0.0),
        ],
    )
    .await;
    // The timed-out request took at least the timeout; the histogram sum shows it.
    let sum = sample(&text, "ds_proxy_request_duration_seconds_sum", &[]).unwrap();
    assert!(sum >= 0.3, "duration sum {sum}");
    let slowest = sample(
        &text,
        "ds_proxy_request_duration_seconds_bucket",
        &[("le", "0.25")],
    )
    .unwrap();
    assert!(slowest <= 6.0, "the 504 is above the 0.25 s bucket");
    assert_eq!(
        sample(
            &text,
            "ds_proxy_upstream_errors_total",
            &[("kind", "connect")]
        ),
        None,
        "no connect errors happened"
    );
    assert_eq!(
        sample(&text, "ds_proxy_query_log_dropped_total", &[]),
        Some(0.0)
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn predicted_classes_are_counted_by_name() {
    let proxy = start_proxy(
        start_upstream().await,
        &[
            "--class-names",
            "setosa,versicolor,virginica",
            "--class-body-limit",
            "256",
        ],
    )
    .await;
    // The echo upstream answers with what it is sent: these are the model's answers.
    for answer in [
        r#"{"predictions": [[0.1, 0.8, 0.1]]}"#,
        r#"{"predictions": [[0.9, 0.05, 0.05], [0.0, 0.1, 0.9]]}"#,
        r#"{"predictions": [[1, 2, 3]], "model_version": "2"}"#,
        r#"{"predictions": [[0, 0, 0, 0, 0, 1]]}"#,
    ] {
        let echoed = post(&proxy, "/v1/models/iris:predict", answer).await;
        assert_eq!(
            echoed.status,
            StatusCode::NOT_FOUND,
            "no such path upstream"
        );
        let echoed = post(&proxy, "/echo", answer).await;
        assert_eq!(echoed.body, answer);
    }
    // Other shapes are "unparsed", never errors; an answer over the limit too.
    let too_long = format!(r#"{{"predictions": [[{}1]]}}"#, "0, ".repeat(200));
    for answer in [
        r#"{"outputs": [[0.1, 0.9]]}"#,
        "not json at all",
        r#"{"predictions": [0.2, 0.8]}"#,
        too_long.as_str(),
    ] {
        let echoed = post(&proxy, "/echo", answer.to_owned()).await;
        assert_eq!(echoed.status, StatusCode::OK);
        assert_eq!(echoed.body, answer, "answers pass unchanged");
    }
    // Not counted: GETs and failed answers.
    let client = http1_client();
    send(
        &client,
        Method::GET,
        format!("http://{}/echo", proxy.addr),
        &[],
        full(r#"{"predictions": [[1, 0, 0]]}"#),
    )
    .await;
    send(
        &client,
        Method::POST,
        format!("http://{}/echo", proxy.addr),
        &[("x-want-status", "500")],
        full(r#"{"predictions": [[1, 0, 0]]}"#),
    )
    .await;

    let text = scrape_until(
        &proxy,
        &[
            ("ds_proxy_predictions_total", &[("class", "setosa")], 1.0),
            (
                "ds_proxy_predictions_total",
                &[("class", "versicolor")],
                1.0,
            ),
            ("ds_proxy_predictions_total", &[("class", "virginica")], 2.0),
            ("ds_proxy_predictions_total", &[("class", "5")], 1.0),
            ("ds_proxy_predictions_total", &[("class", "unparsed")], 4.0),
            (
                "ds_proxy_requests_total",
                &[("method", "POST"), ("code", "500")],
                1.0,
            ),
            ("ds_proxy_requests_in_flight", &[], 0.0),
        ],
    )
    .await;
    assert!(text.contains("# TYPE ds_proxy_predictions counter"));
    proxy.shutdown().await;
}

// === Open Inference Protocol v2 ===

/// A v2 model server stand-in serving the models `iris` and `wine`: their `infer` paths
/// (with or without a version) answer with the request body, so the test writes the
/// model's answers; `POST /v2/repository/models/iris/load` answers `{}`;
/// `GET /v2/health/ready` answers 200 once `ready` is set and 400 before (as Triton does);
/// everything else 404. Every path asked is recorded in `seen`.
async fn start_v2_upstream(
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) -> SocketAddr {
    serve_http1(move |req: Request<Incoming>| {
        let (ready, seen) = (ready.clone(), seen.clone());
        async move {
            let path = req.uri().path().to_owned();
            seen.lock().unwrap().push(path.clone());
            let infer = ["/v2/models/iris/", "/v2/models/wine/"]
                .iter()
                .any(|m| path.starts_with(m))
                && path.ends_with("/infer");
            let (status, body) = match (req.method(), path.as_str()) {
                (&Method::POST, _) if infer => {
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    (StatusCode::OK, body)
                }
                (&Method::POST, "/v2/repository/models/iris/load") => {
                    (StatusCode::OK, Bytes::from_static(b"{}"))
                }
                (&Method::GET, "/v2/health/ready") => {
                    if ready.load(std::sync::atomic::Ordering::SeqCst) {
                        (StatusCode::OK, Bytes::new())
                    } else {
                        (StatusCode::BAD_REQUEST, Bytes::from_static(b"not ready"))
                    }
                }
                _ => (StatusCode::NOT_FOUND, Bytes::from_static(b"no such path")),
            };
            let mut answer = Response::new(full(body));
            *answer.status_mut() = status;
            answer
                .headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            Ok::<_, Infallible>(answer)
        }
    })
    .await
}

#[tokio::test]
async fn v2_answers_are_counted_by_protocol_model_and_output() {
    let upstream = start_v2_upstream(Default::default(), Default::default()).await;
    let proxy = start_proxy(upstream, &["--class-names", "setosa,versicolor,virginica"]).await;
    // Not predictions: a repository call's answer (sent first, so it is recorded long
    // before the scrape below) is not counted at all, not even as unparsed.
    assert_eq!(
        post(&proxy, "/v2/repository/models/iris/load", "{}")
            .await
            .status,
        StatusCode::OK
    );
    // Two outputs of a batch of two rows: argmax per row of the scores, and the labels.
    let two_outputs = r#"{"model_name": "iris", "model_version": "1", "outputs": [
        {"name": "probabilities", "datatype": "FP32", "shape": [2, 3],
         "data": [0.1, 0.8, 0.1, 0.1, 0.2, 0.7]},
        {"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 2]}]}"#;
    let answer = post(&proxy, "/v2/models/iris/infer", two_outputs).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, two_outputs, "answers pass unchanged");
    // A versioned path over h2c (hyper's path through the proxy), nested data.
    let versioned = r#"{"model_name": "iris", "outputs": [{"name": "probabilities",
        "datatype": "FP32", "shape": [1, 3], "data": [[0.6, 0.3, 0.1]]}]}"#;
    let answer = send(
        &h2c_client(),
        Method::POST,
        format!("http://{}/v2/models/iris/versions/7/infer", proxy.addr),
        &[],
        full(versioned),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    // Strings (BYTES) and an answer that is not JSON: unparsed, by output and for the
    // answer as a whole (an empty output name).
    let strings = r#"{"model_name": "wine", "outputs": [{"name": "text", "datatype": "BYTES",
        "shape": [1], "data": ["red"]}]}"#;
    assert_eq!(
        post(&proxy, "/v2/models/wine/infer", strings).await.status,
        StatusCode::OK
    );
    assert_eq!(
        post(&proxy, "/v2/models/iris/infer", "not json")
            .await
            .status,
        StatusCode::OK
    );
    // A model the server does not know answers 404: neither counted nor given a name.
    assert_eq!(
        post(&proxy, "/v2/models/made-up/infer", two_outputs)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let v2 = |class: &'static str, model: &'static str, output: &'static str| {
        [
            ("class", class),
            ("protocol", "v2"),
            ("model", model),
            ("output", output),
        ]
    };
    let labels = [
        v2("versicolor", "iris", "probabilities"),
        v2("virginica", "iris", "probabilities"),
        v2("setosa", "iris", "probabilities"),
        v2("setosa", "iris", "label"),
        v2("virginica", "iris", "label"),
        v2("unparsed", "wine", "text"),
        v2("unparsed", "iris", ""),
    ];
    let mut expected: Vec<Expected<'_>> = labels
        .iter()
        .map(|l| ("ds_proxy_predictions_total", &l[..], 1.0))
        .collect();
    expected.push((
        "ds_proxy_requests_total",
        &[("method", "POST"), ("code", "200")],
        5.0,
    ));
    let text = scrape_until(&proxy, &expected).await;
    // The v1 series are there as before (nothing was a v1 prediction here), and nothing
    // is counted for the model the server refused.
    for class in ["setosa", "versicolor", "virginica", "unparsed"] {
        assert_eq!(
            sample(&text, "ds_proxy_predictions_total", &[("class", class)]),
            Some(0.0),
            "{class}:\n{text}"
        );
    }
    assert!(!text.contains("made-up"), "{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("ds_proxy_predictions_total{"))
            .count(),
        4 + labels.len(),
        "{text}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn v2_model_names_are_capped_and_v1_answers_still_count_under_auto() {
    // Every model name answers: the server stand-in here echoes any infer path.
    let upstream = serve_http1(|req: Request<Incoming>| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Ok::<_, Infallible>(Response::new(full(body)))
    })
    .await;
    let proxy = start_proxy(upstream, &["--class-names", "no,yes"]).await;
    let answer =
        r#"{"outputs": [{"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [0.2, 0.8]}]}"#;
    for i in 0..40 {
        let path = format!("/v2/models/m{i:02}/infer");
        assert_eq!(post(&proxy, &path, answer).await.status, StatusCode::OK);
    }
    // A v1 answer on a v1 path under auto: counted as before, with its old labels.
    let answer = post(
        &proxy,
        "/v1/models/m:predict",
        r#"{"predictions": [[0.9, 0.1]]}"#,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    // Which 32 names took the slots depends on the order the workers recorded them in;
    // that there are 32, each counted once, and the rest are "other", does not.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let text = scrape(&proxy).await;
        let named: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with(r#"ds_proxy_predictions_total{class="yes",protocol="v2",model="m"#)
            })
            .collect();
        let other = [
            ("class", "yes"),
            ("protocol", "v2"),
            ("model", "other"),
            ("output", "p"),
        ];
        if named.len() == 32
            && named.iter().all(|l| l.ends_with(r#",output="p"} 1"#))
            && sample(&text, "ds_proxy_predictions_total", &other) == Some(8.0)
            && sample(&text, "ds_proxy_predictions_total", &[("class", "no")]) == Some(1.0)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never 32 models and 8 others:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn readyz_asks_v2_health_ready_with_protocol_v2() {
    use std::sync::atomic::Ordering;
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let upstream = start_v2_upstream(ready.clone(), seen.clone()).await;
    let v2 = start_proxy(upstream, &["--protocol", "v2"]).await;
    let auto = start_proxy(upstream, &[]).await;
    let ready_url = |p: &RunningProxy| format!("http://{}{READY_PATH}", p.admin_addr);

    // Loading: the v2 health endpoint answers 400, and with v2 only a 2xx means ready.
    let answer = get(ready_url(&v2)).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json()["error"], "upstream_not_ready");
    assert_eq!(
        answer.json()["message"],
        "upstream answered 400 Bad Request"
    );
    assert_eq!(*seen.lock().unwrap(), ["/v2/health/ready"]);
    // Under auto the proxy asks `/` as before (404 there: a server is listening).
    seen.lock().unwrap().clear();
    assert_eq!(get(ready_url(&auto)).await.status, StatusCode::OK);
    assert_eq!(*seen.lock().unwrap(), ["/"]);

    ready.store(true, Ordering::SeqCst);
    seen.lock().unwrap().clear();
    assert_eq!(get(ready_url(&v2)).await.status, StatusCode::OK);
    assert_eq!(*seen.lock().unwrap(), ["/v2/health/ready"]);
    v2.shutdown().await;
    auto.shutdown().await;

    // An explicit --ready-path still wins over the protocol's default.
    seen.lock().unwrap().clear();
    let custom = start_proxy(
        upstream,
        &["--protocol", "v2", "--ready-path", "/v2/models/iris/ready"],
    )
    .await;
    let answer = get(ready_url(&custom)).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "404 is not ready under v2"
    );
    assert_eq!(*seen.lock().unwrap(), ["/v2/models/iris/ready"]);
    custom.shutdown().await;
}

// === query logs ===

fn read_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

#[tokio::test]
async fn query_log_lines_parse_and_truncate_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("queries.jsonl");
    let log_flag = log.to_str().unwrap().to_owned();
    let proxy = start_proxy(
        start_upstream().await,
        &[
            "--query-log",
            &log_flag,
            "--query-log-body-limit",
            "16",
            "--deployment-id",
            "dep-42",
            "--class-names",
            "no,yes",
        ],
    )
    .await;
    let small = post(&proxy, "/echo?v=1", r#"{"predictions": [[0, 1]]}"#).await;
    let long_body = "0123456789".repeat(10);
    let long = post(&proxy, "/echo", long_body.clone()).await;
    // A multi-byte character cut by the limit is dropped, not mangled.
    let accents = post(&proxy, "/echo", "aéééééééééé").await;
    let failed = send(
        &http1_client(),
        Method::DELETE,
        format!("http://{}/echo", proxy.addr),
        &[("x-want-status", "503")],
        full(""),
    )
    .await;
    // Shutdown writes everything queued, so the file is complete afterwards.
    proxy.shutdown().await;

    let lines = read_lines(&log);
    assert_eq!(lines.len(), 4, "{lines:?}");
    let line = |answer: &Answer| {
        let id = answer.header(REQUEST_ID_HEADER).unwrap();
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("a line for {id}"))
            .clone()
    };

    let first = line(&small);
    assert_eq!(first["deployment_id"], "dep-42");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/echo?v=1");
    assert_eq!(first["status"], 200);
    assert!(first["latency_ms"].as_f64().unwrap() >= 0.0);
    assert!(
        chrono::DateTime::parse_from_rfc3339(first["time"].as_str().unwrap()).is_ok(),
        "RFC 3339 time"
    );
    assert_eq!(first["request_body"], r#"{"predictions": "#);
    assert_eq!(first["request_body_truncated"], true);
    assert_eq!(first["request_bytes"], 25);
    assert_eq!(first["response_body"], r#"{"predictions": "#);
    assert_eq!(first["response_body_truncated"], true);
    assert_eq!(first["predictions"], serde_json::json!(["yes"]));

    let second = line(&long);
    assert_eq!(second["request_body"], "0123456789012345");
    assert_eq!(second["request_body_truncated"], true);
    assert_eq!(second["response_bytes"], 100);

    let third = line(&accents);
    assert_eq!(third["request_body"], "aééééééé");
    assert_eq!(third["request_body_truncated"], true);

    let fourth = line(&failed);
    assert_eq!(fourth["method"], "DELETE");
    assert_eq!(fourth["status"], 503);
    assert_eq!(fourth["request_body"], "");
    assert_eq!(fourth["request_body_truncated"], false);
    assert!(fourth.get("predictions").is_none());
}

#[tokio::test]
async fn refused_requests_are_counted_and_logged_with_what_could_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("queries.jsonl");
    let log_flag = log.to_str().unwrap().to_owned();
    let proxy = start_proxy(start_upstream().await, &["--query-log", &log_flag]).await;
    // Not even a request line: counted under OTHER, logged with "-".
    let garbage = raw_exchange(proxy.addr, b"GARBAGE\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    // A readable head the proxy refuses: the client's own request ID is kept.
    let bad_length = raw_exchange(
        proxy.addr,
        b"POST /v1/models/iris:predict HTTP/1.1\r\nHost: x\r\nX-Request-Id: mine-1\r\nContent-Length: +5\r\n\r\nhello",
    )
    .await;
    assert!(bad_length.starts_with("HTTP/1.1 400"), "{bad_length}");
    assert!(
        bad_length
            .to_ascii_lowercase()
            .contains("x-request-id: mine-1"),
        "{bad_length}"
    );
    assert!(
        bad_length.contains(r#""request_id":"mine-1""#),
        "{bad_length}"
    );
    let gzip = raw_exchange(
        proxy.addr,
        b"PUT /v1/models/iris HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    )
    .await;
    assert!(gzip.starts_with("HTTP/1.1 501"), "{gzip}");
    scrape_until(
        &proxy,
        &[
            (
                "ds_proxy_requests_total",
                &[("method", "OTHER"), ("code", "400")],
                1.0,
            ),
            (
                "ds_proxy_requests_total",
                &[("method", "POST"), ("code", "400")],
                1.0,
            ),
            (
                "ds_proxy_requests_total",
                &[("method", "PUT"), ("code", "501")],
                1.0,
            ),
            ("ds_proxy_requests_in_flight", &[], 0.0),
        ],
    )
    .await;
    proxy.shutdown().await;

    let lines = read_lines(&log);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let by_status = |status: u64, method: &str| {
        lines
            .iter()
            .find(|l| l["status"] == status && l["method"] == method)
            .unwrap_or_else(|| panic!("a {status} {method} line in {lines:?}"))
    };
    let garbage = by_status(400, "-");
    assert_eq!(garbage["path"], "-");
    assert_eq!(garbage["error"], "bad_request");
    let bad_length = by_status(400, "POST");
    assert_eq!(bad_length["path"], "/v1/models/iris:predict");
    assert_eq!(bad_length["request_id"], "mine-1");
    assert_eq!(bad_length["error"], "bad_request");
    assert_eq!(
        by_status(501, "PUT")["error"],
        "unsupported_transfer_encoding"
    );
}

#[tokio::test]
async fn query_log_to_a_stalled_reader_drops_and_counts_without_slowing_requests() {
    // A FIFO whose reader never reads: the writer blocks once the pipe buffer is full, the
    // queue fills, and further lines must be dropped while requests keep flowing.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("stalled");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let (release, held) = std::sync::mpsc::channel::<()>();
    let reader_path = fifo.clone();
    let reader = std::thread::spawn(move || {
        let file = std::fs::File::open(reader_path).expect("open the FIFO for reading");
        let _ = held.recv();
        drop(file);
    });
    let fifo_flag = fifo.to_str().unwrap().to_owned();
    let proxy = start_proxy(
        start_upstream().await,
        &[
            "--query-log",
            &fifo_flag,
            "--query-log-queue",
            "2",
            "--query-log-body-limit",
            "4096",
        ],
    )
    .await;
    let body = "x".repeat(4096);
    for _ in 0..100 {
        let answer = post(&proxy, "/echo", body.clone()).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let text = scrape(&proxy).await;
        let dropped = sample(&text, "ds_proxy_query_log_dropped_total", &[]).unwrap();
        let written = sample(&text, "ds_proxy_query_log_written_total", &[]).unwrap();
        // 64 KiB of pipe holds about 15 lines of 4 KiB bodies, the queue and the writer's
        // buffers a few more: most of the 100 must have been dropped.
        if dropped > 0.0 && sample(&text, "ds_proxy_requests_in_flight", &[]) == Some(0.0) {
            assert!(written < 100.0, "written {written}");
            assert!(dropped >= 70.0, "dropped {dropped}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no drops:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the writer fail (broken pipe) so shutdown can finish.
    release.send(()).unwrap();
    reader.join().unwrap();
    tokio::time::timeout(DEADLINE, proxy.shutdown())
        .await
        .expect("shutdown finishes");
}

// === robustness ===

/// Sends raw bytes on a fresh connection and returns what comes back until close.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let _ = stream.shutdown().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn malformed_requests_get_an_error_not_a_crash() {
    let proxy = start_proxy(start_upstream().await, &[]).await;
    // Broken heads: answered with an error (or closed), never passed on as a 200.
    let broken_heads: [&[u8]; 4] = [
        b"GARBAGE\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 binary TLS hello",
    ];
    for case in broken_heads {
        let answer = raw_exchange(proxy.addr, case).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
            "{} got {answer:?}",
            String::from_utf8_lossy(case)
        );
    }
    // Broken bodies: the streaming upstream may already have answered; the proxy must
    // just cope.
    let broken_bodies: [&[u8]; 2] = [
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly a few bytes",
    ];
    for case in broken_bodies {
        let answer = raw_exchange(proxy.addr, case).await;
        assert!(!answer.contains("only a few byteshello"), "{answer}");
    }
    // A broken body on its way to an upstream that waits for all of it: 400, and the
    // upstream is not blamed.
    let broken = raw_exchange(
        proxy.addr,
        b"POST /collect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    )
    .await;
    assert!(broken.starts_with("HTTP/1.1 400"), "{broken}");
    assert!(broken.contains("bad_request_body"), "{broken}");
    let text = scrape(&proxy).await;
    assert_eq!(
        sample(
            &text,
            "ds_proxy_upstream_errors_total",
            &[("kind", "other")]
        ),
        None,
        "{text}"
    );
    let star = raw_exchange(proxy.addr, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(star.starts_with("HTTP/1.1 400"), "{star}");
    assert!(star.contains("bad_request"));
    // Still serving.
    let answer = post(&proxy, "/echo", "fine").await;
    assert_eq!(answer.body, "fine");
    proxy.shutdown().await;
}

#[tokio::test]
async fn many_concurrent_requests_share_the_upstream_pool() {
    let proxy = start_proxy(start_upstream().await, &[]).await;
    let client = http1_client();
    let url = format!("http://{}/echo", proxy.addr);
    let answers = futures::stream::iter(0..200u64)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let body = Bytes::from(pattern(1000 + i as usize * 13, i));
                let answer = send(&client, Method::POST, url, &[], full(body.clone())).await;
                answer.body == body
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<bool>>()
        .await;
    assert!(answers.iter().all(|ok| *ok), "every echo is exact");
    scrape_until(
        &proxy,
        &[
            (
                "ds_proxy_requests_total",
                &[("method", "POST"), ("code", "200")],
                200.0,
            ),
            ("ds_proxy_requests_in_flight", &[], 0.0),
        ],
    )
    .await;
    proxy.shutdown().await;
}

// === the `ds model-proxy` command ===

/// A loopback port that was free a moment ago (the child process binds it itself).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn ds_model_proxy_reads_ds_env_logs_to_stdout_and_stops_on_sigterm() {
    use std::process::Stdio;
    use tokio::io::AsyncBufReadExt;

    let upstream = start_upstream().await;
    let (port, admin_port) = (free_port(), free_port());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ds"))
        .arg("model-proxy")
        .env("DS_PROXY_LISTEN", format!("127.0.0.1:{port}"))
        .env("DS_PROXY_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
        .env("DS_PROXY_UPSTREAM", format!("http://{upstream}"))
        .env("DS_PROXY_CLASS_NAMES", "cat,dog")
        .env("DS_PROXY_DEPLOYMENT_ID", "dep-env")
        .env("DS_PROXY_QUERY_LOG", "-")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("ds runs");

    // Ready once the admin port answers.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let ready_url = format!("http://127.0.0.1:{admin_port}{READY_PATH}");
    loop {
        let probe = http1_client()
            .request(Request::get(ready_url.as_str()).body(full("")).unwrap())
            .await;
        if matches!(probe, Ok(ref r) if r.status() == StatusCode::OK) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "proxy never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let answer = send(
        &http1_client(),
        Method::POST,
        format!("http://127.0.0.1:{port}/echo"),
        &[],
        full(r#"{"predictions": [[0.2, 0.8]]}"#),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);

    // The query-log line arrives on stdout.
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(DEADLINE, stdout.next_line())
        .await
        .expect("a query-log line within the deadline")
        .unwrap()
        .expect("a line");
    let line: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(line["deployment_id"], "dep-env");
    assert_eq!(line["predictions"], serde_json::json!(["dog"]));
    assert_eq!(
        line["request_id"].as_str(),
        answer.header(REQUEST_ID_HEADER)
    );

    // SIGTERM: a clean exit.
    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("exits within the deadline")
        .unwrap();
    assert!(status.success(), "{status}");
}
