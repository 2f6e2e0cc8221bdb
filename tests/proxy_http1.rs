//! `ds model-proxy` at the edges of HTTP/1.1: raw byte clients (and, where a case needs a
//! misbehaving model server, raw scripted upstreams) that check what any correct proxy
//! must do, whatever parses and relays the bytes.

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

mod common;
use common::{BoxError, TestBody, full, pattern, serve_each, serve_http1, start_proxy};

/// Generous: the machine is shared and slow; a hang must fail, not block the suite.
const DEADLINE: Duration = Duration::from_secs(10);

/// What the hyper upstream's `/doc` answers, with a Content-Length.
const DOC: &[u8] = b"a document of known length\n";

// === helpers: data ===

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// === helpers: one side of a raw connection ===

/// A socket and the bytes read from it but not consumed yet: both the test clients and the
/// scripted upstreams read HTTP/1.1 messages through it.
struct Wire {
    read: OwnedReadHalf,
    /// Taken by a test that writes on a task of its own while this side reads.
    write: Option<OwnedWriteHalf>,
    buf: Vec<u8>,
}

impl Wire {
    fn new(stream: TcpStream) -> Self {
        let (read, write) = stream.into_split();
        Self {
            read,
            write: Some(write),
            buf: Vec::new(),
        }
    }

    async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::time::timeout(DEADLINE, TcpStream::connect(addr))
            .await
            .expect("connect within the deadline")
            .expect("the proxy accepts");
        Self::new(stream)
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let write = self.write.as_mut().expect("the write half is here");
        write.write_all(bytes).await
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.write(bytes).await.expect("write succeeds");
    }

    /// Ends this side's writing (a FIN), keeping the read side open.
    async fn finish_writing(&mut self) {
        if let Some(write) = &mut self.write {
            let _ = write.shutdown().await;
        }
    }

    /// Reads more bytes into the buffer; false at the end of the stream (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.read.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next message head (start line and fields, without the blank line); `None` if the
    /// stream ends first.
    async fn read_head(&mut self) -> Option<String> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return Some(String::from_utf8_lossy(&head[..end]).into_owned());
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn read_exact(&mut self, len: usize) -> Result<Vec<u8>, String> {
        while self.buf.len() < len {
            if !self.fill().await {
                return Err(format!(
                    "stream ended after {} of {len} body bytes",
                    self.buf.len()
                ));
            }
        }
        Ok(self.buf.drain(..len).collect())
    }

    async fn read_line(&mut self) -> Result<String, String> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..end + 2).collect();
                return Ok(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            if !self.fill().await {
                return Err("stream ended inside a chunked body".into());
            }
        }
    }

    async fn read_chunked(&mut self) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line().await?;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| format!("bad chunk size line {line:?}"))?;
            if size == 0 {
                // Trailers, up to the blank line.
                while !self.read_line().await?.is_empty() {}
                return Ok(body);
            }
            body.extend(self.read_exact(size).await?);
            if !self.read_line().await?.is_empty() {
                return Err("chunk data not followed by CRLF".into());
            }
        }
    }

    async fn read_to_end(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    /// The next response, its body framed as RFC 9112 §6.3 says: none for 1xx, 204, 304 and
    /// answers to HEAD; else chunked, else Content-Length, else until the connection closes.
    async fn try_read_response(&mut self, to_head: bool) -> Result<RawResponse, String> {
        let head = self
            .read_head()
            .await
            .ok_or("connection closed before a response")?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default().to_owned();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_owned();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        if !version.starts_with("HTTP/1.") {
            return Err(format!("bad status line {status_line:?}"));
        }
        let headers: Vec<(String, String)> = lines
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                (name.trim().to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        let no_body = to_head || (100..200).contains(&status) || status == 204 || status == 304;
        if no_body {
            return Ok(response);
        }
        let chunked = response
            .all("transfer-encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"));
        response.body = if chunked {
            self.read_chunked().await?
        } else if let Some(length) = response.header("content-length") {
            let length = length
                .parse()
                .map_err(|_| format!("bad Content-Length {length:?}"))?;
            self.read_exact(length).await?
        } else {
            self.read_to_end().await
        };
        Ok(response)
    }

    /// [`Self::try_read_response`] within the deadline, or the test fails.
    async fn response_to(&mut self, to_head: bool) -> RawResponse {
        tokio::time::timeout(DEADLINE, self.try_read_response(to_head))
            .await
            .expect("a response within the deadline")
            .unwrap_or_else(|e| panic!("a well-formed response: {e}"))
    }

    async fn response(&mut self) -> RawResponse {
        self.response_to(false).await
    }

    /// The next final (non-1xx) response: interim ones may come in any number.
    async fn final_response(&mut self) -> RawResponse {
        loop {
            let answer = self.response().await;
            if answer.status >= 200 {
                return answer;
            }
        }
    }

    /// True when the peer has closed the connection (end of stream or reset) and sent
    /// nothing more; false if more bytes arrive.
    async fn closes(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let more = tokio::time::timeout(DEADLINE, self.fill())
            .await
            .expect("the connection closes within the deadline");
        !more
    }
}

#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Names in lower case, in the order received, repeats kept.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// True when the answer announces that the connection closes after it.
    fn closes_connection(&self) -> bool {
        self.all("connection")
            .iter()
            .flat_map(|v| v.split(','))
            .any(|option| option.trim().eq_ignore_ascii_case("close"))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The Content-Length of a request head, 0 when absent.
fn content_length(head: &str) -> usize {
    head.split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

/// The path and query of a request head's request line.
fn target(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or_default()
}

// === helpers: upstreams ===

/// A well-behaved model-server stand-in (hyper):
/// - `/echo`: streams the request body back (no length: chunked);
/// - `/doc`: [`DOC`] with its Content-Length, for GET and HEAD alike.
async fn upstream_handler(req: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
    let response = Response::builder().header("x-seen-method", req.method().as_str());
    let response = match req.uri().path() {
        "/echo" => response.body(req.into_body().map_err(BoxError::from).boxed()),
        "/doc" => response.header("content-length", DOC.len()).body(full(DOC)),
        _ => response.status(404).body(full("no such path")),
    };
    Ok(response.expect("valid response"))
}

async fn start_upstream() -> SocketAddr {
    serve_http1(upstream_handler).await
}

/// A scripted upstream: every accepted connection runs `script` on a task of its own.
async fn start_raw_upstream<F, Fut>(script: F) -> SocketAddr
where
    F: Fn(Wire) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    serve_each(move |stream| script(Wire::new(stream))).await
}

/// Reads one request (head and Content-Length body) on an upstream connection; `None`
/// when the proxy closed it.
async fn next_request(wire: &mut Wire) -> Option<(String, Vec<u8>)> {
    let head = wire.read_head().await?;
    let body = wire.read_exact(content_length(&head)).await.ok()?;
    Some((head, body))
}

// === helpers: the proxy ===

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: model\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: model\r\n\r\n").into_bytes()
}

// === connection management ===

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let proxy = start_proxy(start_upstream().await, &[]).await;
    let mut client = Wire::connect(proxy.addr).await;
    let second_body = pattern(20_000, 3);
    let mut three = post("/echo", b"the first request");
    three.extend(post("/echo", &second_body));
    three.extend(get("/doc"));
    client.send(&three).await;

    let first = client.response().await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "the first request");
    let second = client.response().await;
    assert_eq!(second.status, 200);
    assert!(second.body == second_body, "second echo differs");
    let third = client.response().await;
    assert_eq!(third.status, 200);
    assert_eq!(third.body, DOC);
    proxy.shutdown().await;
}

#[tokio::test]
async fn http10_closes_unless_kept_alive() {
    let proxy = start_proxy(start_upstream().await, &[]).await;

    // No keep-alive: the answer, then the proxy closes.
    let mut client = Wire::connect(proxy.addr).await;
    client
        .send(b"GET /doc HTTP/1.0\r\nHost: model\r\n\r\n")
        .await;
    let answer = client.response().await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, DOC);
    assert!(client.closes().await, "HTTP/1.0 without keep-alive closes");

    // A body of unknown length to an HTTP/1.0 client, which cannot take chunks: it must
    // come whole (close-delimited or with a length), then the connection closes.
    let mut client = Wire::connect(proxy.addr).await;
    let data = pattern(50_000, 5);
    let mut request = format!(
        "POST /echo HTTP/1.0\r\nHost: model\r\nContent-Length: {}\r\n\r\n",
        data.len()
    )
    .into_bytes();
    request.extend_from_slice(&data);
    client.send(&request).await;
    let answer = client.response().await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.header("transfer-encoding").is_none(),
        "no chunks to an HTTP/1.0 client: {:?}",
        answer.headers
    );
    assert!(answer.body == data, "HTTP/1.0 echo differs");
    assert!(client.closes().await);

    // Keep-alive asked for: a second request on the same connection works.
    let mut client = Wire::connect(proxy.addr).await;
    for _ in 0..2 {
        client
            .send(b"GET /doc HTTP/1.0\r\nHost: model\r\nConnection: keep-alive\r\n\r\n")
            .await;
        let answer = client.response().await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, DOC);
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn expect_100_continue_gets_an_interim_answer_before_the_body() {
    let proxy = start_proxy(start_upstream().await, &[]).await;
    let mut client = Wire::connect(proxy.addr).await;
    let body = b"sent after 100 Continue";
    client
        .send(
            format!(
                "POST /echo HTTP/1.1\r\nHost: model\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await;
    // A client waits for this before sending the body (curl does, for a second).
    let interim = client.response().await;
    assert_eq!(interim.status, 100, "{interim:?}");
    client.send(body).await;
    let answer = client.final_response().await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, body);
    // The connection is still usable.
    client.send(&get("/doc")).await;
    assert_eq!(client.response().await.body, DOC);
    proxy.shutdown().await;
}

#[tokio::test]
async fn upstream_closing_idle_keep_alive_connections_is_not_an_error() {
    // Answers one request per connection, with a length and no `Connection: close`, then
    // closes. Targets ending in `now` are closed right after the answer (the close can
    // arrive with it); the others are handed to the test, which closes them once the
    // answer is through, so the proxy holds them as idle and learns of the close only when
    // it next uses them: the keep-alive race every pooling proxy must handle.
    let (parked, mut to_close) = mpsc::unbounded_channel();
    let upstream = start_raw_upstream(move |mut wire| {
        let parked = parked.clone();
        async move {
            if let Some((head, _)) = next_request(&mut wire).await {
                let body = format!("path {}", target(&head));
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = wire.write(answer.as_bytes()).await;
                if !body.ends_with("now") {
                    let _ = parked.send(wire);
                }
            }
        }
    })
    .await;
    let proxy = start_proxy(upstream, &[]).await;
    let mut client = Wire::connect(proxy.addr).await;
    // POSTs too: one cannot be sent twice, so the proxy must notice the close before
    // writing, not retry after.
    for path in ["/one", "/two-now", "/three", "/four", "/five-now", "/six"] {
        if path.len() % 2 == 0 {
            client.send(&post(path, b"{}")).await;
        } else {
            client.send(&get(path)).await;
        }
        let answer = client.response().await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
        assert_eq!(answer.text(), format!("path {path}"));
        if !path.ends_with("now") {
            let idle = tokio::time::timeout(DEADLINE, to_close.recv())
                .await
                .expect("the upstream connection is handed over")
                .expect("the upstream is running");
            drop(idle);
        }
        // Time for the upstream's close to reach the proxy before the next request.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proxy.shutdown().await;
}

/// An upstream whose first connection answers one request and then takes the next one in
/// full and closes without answering (a model that crashed mid-request); later connections
/// answer every request. Each request line it reads is sent on the channel.
async fn start_upstream_failing_the_second_request() -> (SocketAddr, mpsc::UnboundedReceiver<String>)
{
    let (seen, requests) = mpsc::unbounded_channel();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let upstream = start_raw_upstream(move |mut wire| {
        let seen = seen.clone();
        let first = connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        async move {
            let mut served = 0;
            while let Some((head, _)) = next_request(&mut wire).await {
                let _ = seen.send(head.split("\r\n").next().unwrap_or_default().to_owned());
                if first && served == 1 {
                    return;
                }
                served += 1;
                let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if wire.write(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (upstream, requests)
}

#[tokio::test]
async fn a_request_that_reached_the_model_is_resent_only_if_idempotent() {
    for (request, method, resent) in [
        (post("/predict", b"{}"), "POST", false),
        (get("/status"), "GET", true),
    ] {
        let (upstream, mut seen) = start_upstream_failing_the_second_request().await;
        let proxy = start_proxy(upstream, &[]).await;
        let mut client = Wire::connect(proxy.addr).await;
        client.send(&get("/warm")).await;
        assert_eq!(client.response().await.status, 200);
        client.send(&request).await;
        let answer = client.response().await;
        assert_eq!(
            answer.status,
            if resent { 200 } else { 502 },
            "{method}: {}",
            answer.text()
        );
        // The connection stays usable either way.
        client.send(&get("/after")).await;
        assert_eq!(client.response().await.status, 200, "{method}");
        proxy.shutdown().await;
        let mut lines = Vec::new();
        while let Ok(line) = seen.try_recv() {
            lines.push(line);
        }
        let sent = lines
            .iter()
            .filter(|l| l.starts_with(method) && !l.contains("/warm") && !l.contains("/after"))
            .count();
        assert_eq!(sent, if resent { 2 } else { 1 }, "{method}: {lines:?}");
    }
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_request_in_flight() {
    let (arrived, mut arrivals) = mpsc::unbounded_channel();
    let upstream = start_raw_upstream(move |mut wire| {
        let arrived = arrived.clone();
        async move {
            while next_request(&mut wire).await.is_some() {
                let _ = arrived.send(());
                tokio::time::sleep(Duration::from_millis(500)).await;
                let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nlate but here";
                if wire.write(answer).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let proxy = start_proxy(upstream, &[]).await;
    let addr = proxy.addr;
    let mut client = Wire::connect(addr).await;
    client.send(&get("/slow")).await;
    tokio::time::timeout(DEADLINE, arrivals.recv())
        .await
        .expect("the request reaches the upstream")
        .expect("the upstream is running");

    // Shutdown begins while the upstream is still thinking.
    let stopped = tokio::spawn(proxy.shutdown());
    let answer = client.response().await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "late but here");
    tokio::time::timeout(DEADLINE, stopped)
        .await
        .expect("shutdown finishes within the deadline")
        .expect("shutdown does not panic");
    assert!(client.closes().await, "the drained connection is closed");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "new connections are refused after shutdown"
    );
}

// === bodies and their framing ===

#[tokio::test]
async fn close_delimited_upstream_answers_arrive_whole() {
    let data = pattern(300_000, 7);
    let sent = data.clone();
    let upstream = start_raw_upstream(move |mut wire| {
        let sent = sent.clone();
        async move {
            if next_request(&mut wire).await.is_some() {
                let mut answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
                answer.extend_from_slice(&sent);
                let _ = wire.write(&answer).await;
                wire.finish_writing().await;
            }
        }
    })
    .await;
    let proxy = start_proxy(upstream, &[]).await;
    let mut client = Wire::connect(proxy.addr).await;
    client.send(&get("/stream")).await;
    let answer = client.response().await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), data.len());
    assert!(answer.body == data, "close-delimited body differs");
    proxy.shutdown().await;
}

#[tokio::test]
async fn head_answers_carry_no_body() {
    let proxy = start_proxy(start_upstream().await, &[]).await;
    let mut client = Wire::connect(proxy.addr).await;
    client
        .send(b"HEAD /doc HTTP/1.1\r\nHost: model\r\n\r\n")
        .await;
    let head = client.response_to(true).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("x-seen-method"), Some("HEAD"));
    let length = head.header("content-length");
    assert!(
        length.is_none() || length == Some(DOC.len().to_string().as_str()),
        "HEAD keeps the GET's length or none: {length:?}"
    );
    // Body bytes after the HEAD answer would be read as the next status line here.
    client.send(&get("/doc")).await;
    let answer = client.response().await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, DOC);
    proxy.shutdown().await;
}

#[tokio::test]
async fn no_content_and_not_modified_carry_no_body() {
    // Keep-alive; the 304 names the length of the document it stands for, as RFC 9110
    // §8.6 allows, with no body following.
    let upstream = start_raw_upstream(|mut wire| async move {
        while let Some((head, _)) = next_request(&mut wire).await {
            let answer: &[u8] = match target(&head) {
                "/204" => b"HTTP/1.1 204 No Content\r\nX-Kind: nothing\r\n\r\n",
                "/304" => {
                    b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 10\r\n\r\n"
                }
                _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            };
            if wire.write(answer).await.is_err() {
                return;
            }
        }
    })
    .await;
    let proxy = start_proxy(upstream, &[]).await;
    let mut client = Wire::connect(proxy.addr).await;
    for _ in 0..2 {
        client.send(&get("/204")).await;
        let answer = client.response().await;
        assert_eq!(answer.status, 204);
        assert_eq!(answer.header("x-kind"), Some("nothing"));
        client.send(&get("/304")).await;
        let answer = client.response().await;
        assert_eq!(answer.status, 304);
        assert_eq!(answer.header("etag"), Some("\"v1\""));
        // Stray body bytes would break this next answer's status line.
        client.send(&get("/ok")).await;
        let answer = client.response().await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), "ok");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_early_upstream_answer_reaches_a_client_still_uploading() {
    // Reads the head only, refuses the body, and closes. It drains a little first, as
    // servers do (nginx's lingering close), so its close does not reset the connection
    // before the proxy has read the answer.
    let upstream = start_raw_upstream(|mut wire| async move {
        if wire.read_head().await.is_some() {
            let answer =
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large";
            let _ = wire.write(answer).await;
            wire.finish_writing().await;
            let mut drained = 0;
            while drained < 1024 * 1024 && wire.fill().await {
                drained += wire.buf.len();
                wire.buf.clear();
            }
        }
    })
    .await;
    let proxy = start_proxy(upstream, &[]).await;
    let mut client = Wire::connect(proxy.addr).await;
    let mut writer = client.write.take().expect("the write half");
    let size = 5 * 1024 * 1024;
    let upload = tokio::spawn(async move {
        let head =
            format!("POST /upload HTTP/1.1\r\nHost: model\r\nContent-Length: {size}\r\n\r\n");
        if writer.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let data = pattern(size, 9);
        for chunk in data.chunks(64 * 1024) {
            // The proxy may stop reading once the answer is in: errors end the upload.
            if writer.write_all(chunk).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
    });
    // Read while the upload goes on: a client that reads only after writing everything
    // would deadlock against any proxy that stops reading a refused body.
    let answer = client.response().await;
    upload.abort();
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert_eq!(answer.text(), "too large");
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_answer_before_the_body_leaves_the_upload_whole_and_the_connection_usable() {
    // Answers as soon as the head is in, then reads and drops the body and stays open for
    // the next request, as nginx's `return` does: a client streaming a large upload must
    // be able to finish it and go on using its connection.
    let upstream = start_raw_upstream(|mut wire| async move {
        while let Some(head) = wire.read_head().await {
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 2);
            let _ = wire.write(answer.as_bytes()).await;
            let _ = wire.write(b"ok").await;
            if wire.read_exact(content_length(&head)).await.is_err() {
                return;
            }
        }
    })
    .await;
    let proxy = start_proxy(upstream, &[]).await;
    let mut client = Wire::connect(proxy.addr).await;
    let mut writer = client.write.take().expect("the write half");
    let size = 8 * 1024 * 1024;
    let upload = tokio::spawn(async move {
        let head =
            format!("POST /upload HTTP/1.1\r\nHost: model\r\nContent-Length: {size}\r\n\r\n");
        writer.write_all(head.as_bytes()).await?;
        for chunk in pattern(size, 5).chunks(64 * 1024) {
            writer.write_all(chunk).await?;
        }
        Ok::<_, std::io::Error>(writer)
    });
    let answer = client.response().await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), "ok");
    let writer = tokio::time::timeout(DEADLINE, upload)
        .await
        .expect("the upload ends within the deadline")
        .expect("the upload task runs")
        .expect("every byte of the upload was taken");
    client.write = Some(writer);
    assert!(!answer.closes_connection(), "the connection stays usable");
    client.send(&post("/again", b"second")).await;
    let again = client.response().await;
    assert_eq!(again.status, 200);
    assert_eq!(again.text(), "ok");
    proxy.shutdown().await;
}

#[tokio::test]
async fn chunked_framing_wins_over_content_length() {
    let proxy = start_proxy(start_upstream().await, &[]).await;
    let mut client = Wire::connect(proxy.addr).await;
    // Content-Length framing would end the body after "5\r\n" and read the rest as a
    // second request: the classic request-smuggling ambiguity (RFC 9112 §6.3 item 3).
    client
        .send(
            b"POST /echo HTTP/1.1\r\nHost: model\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await;
    let answer = client.response().await;
    match answer.status {
        400 => {}
        200 => {
            // What the echo upstream saw is what it sent back.
            assert_eq!(answer.text(), "hello", "the body is the de-chunked bytes");
            // Closing after such a request is the safe choice (hyper does); a connection
            // kept open must have stayed in step, reading the next request from the
            // right place.
            if answer.closes_connection() {
                assert!(client.closes().await, "closes as announced");
            } else {
                client.send(&get("/doc")).await;
                let next = client.response().await;
                assert_eq!(next.status, 200);
                assert_eq!(next.body, DOC);
            }
        }
        other => panic!("status {other}: {}", answer.text()),
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_get_501_and_never_reach_the_model() {
    let (seen, mut requests) = mpsc::unbounded_channel();
    let upstream = start_raw_upstream(move |mut wire| {
        let seen = seen.clone();
        async move {
            while let Some((head, _)) = next_request(&mut wire).await {
                let _ = seen.send(head);
            }
        }
    })
    .await;
    let proxy = start_proxy(upstream, &[]).await;
    for codings in [
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked, gzip",
        "Transfer-Encoding: chunked;q=1",
    ] {
        let mut client = Wire::connect(proxy.addr).await;
        let request = format!(
            "POST /echo HTTP/1.1\r\nHost: model\r\n{codings}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        client.send(request.as_bytes()).await;
        let answer = client.response().await;
        assert_eq!(answer.status, 501, "{codings}: {}", answer.text());
        assert!(
            answer.text().contains("unsupported_transfer_encoding"),
            "{codings}"
        );
        assert!(answer.closes_connection(), "{codings}");
        assert!(client.closes().await, "{codings}");
    }
    proxy.shutdown().await;
    assert!(requests.try_recv().is_err(), "the model saw none of them");
}

#[tokio::test]
async fn transfer_encoding_on_an_http10_request_gets_400() {
    let proxy = start_proxy(start_upstream().await, &[]).await;
    let mut client = Wire::connect(proxy.addr).await;
    client
        .send(b"POST /echo HTTP/1.0\r\nHost: model\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await;
    let answer = client.response().await;
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert!(
        answer.text().contains("\"bad_request\""),
        "{}",
        answer.text()
    );
    assert!(client.closes().await);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_answer_with_both_length_and_chunked_framing_closes_its_upstream_connection() {
    // Each connection reports how many requests it carried once the proxy closes it.
    let (carried, mut per_connection) = mpsc::unbounded_channel();
    let upstream = start_raw_upstream(move |mut wire| {
        let carried = carried.clone();
        async move {
            let mut count = 0;
            while next_request(&mut wire).await.is_some() {
                count += 1;
                let answer = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
                if wire.write(answer.as_bytes()).await.is_err() {
                    break;
                }
            }
            let _ = carried.send(count);
        }
    })
    .await;
    let proxy = start_proxy(upstream, &[]).await;
    let mut client = Wire::connect(proxy.addr).await;
    for _ in 0..2 {
        client.send(&get("/ambiguous")).await;
        let answer = client.response().await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), "hello", "chunked framing wins");
        let closed = tokio::time::timeout(DEADLINE, per_connection.recv())
            .await
            .expect("the proxy closes the upstream connection after the answer");
        assert_eq!(closed, Some(1));
    }
    proxy.shutdown().await;
}

// === heads ===

#[tokio::test]
async fn repeated_response_headers_and_encoded_targets_pass_verbatim() {
    // Echoes the request line it saw as the body.
    let upstream = start_raw_upstream(|mut wire| async move {
        while let Some((head, _)) = next_request(&mut wire).await {
            let line = head.split("\r\n").next().unwrap_or_default().to_owned();
            let answer = format!(
                "HTTP/1.1 200 OK\r\nSet-Cookie: a=1; Path=/\r\nSet-Cookie: b=2; HttpOnly\r\nContent-Length: {}\r\n\r\n{line}",
                line.len()
            );
            if wire.write(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let proxy = start_proxy(upstream, &[]).await;
    let mut client = Wire::connect(proxy.addr).await;
    for path in [
        "/echo/a%20b?x=1&y=%2F",
        "/v1/models/iris:predict?q=%E2%9C%93&q=2",
    ] {
        client.send(&get(path)).await;
        let answer = client.response().await;
        assert_eq!(answer.status, 200);
        // Cookies are never folded into one line (RFC 9110 §5.3): both, in order.
        assert_eq!(
            answer.all("set-cookie"),
            ["a=1; Path=/", "b=2; HttpOnly"],
            "{:?}",
            answer.headers
        );
        let line = answer.text();
        let mut parts = line.split(' ');
        assert_eq!(parts.next(), Some("GET"), "{line}");
        assert_eq!(parts.next(), Some(path), "the target passes verbatim");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_oversized_head_is_refused_and_the_proxy_keeps_serving() {
    let proxy = start_proxy(start_upstream().await, &[]).await;
    // 1 MiB: over any sane head limit (hyper's is about 400 KiB, the planned one 128 KiB).
    let mut request = b"GET /doc HTTP/1.1\r\nHost: model\r\nX-Huge: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    let mut client = Wire::connect(proxy.addr).await;
    let mut writer = client.write.take().expect("the write half");
    // Written on the side: the proxy may refuse halfway and stop reading.
    let upload = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        // Kept open: a refusal must not depend on the client finishing.
        writer
    });
    let refused = tokio::time::timeout(DEADLINE, client.try_read_response(false))
        .await
        .expect("the proxy answers or closes within the deadline");
    upload.abort();
    match refused {
        // Closed without an answer (or reset while the head was still coming).
        Err(closed) => assert!(
            closed.contains("closed") || closed.contains("ended"),
            "{closed}"
        ),
        Ok(answer) => assert!(
            matches!(answer.status, 400 | 431),
            "status {}: {}",
            answer.status,
            answer.text()
        ),
    }
    // Other connections are served as before.
    let mut client = Wire::connect(proxy.addr).await;
    client.send(&get("/doc")).await;
    let answer = client.response().await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, DOC);
    proxy.shutdown().await;
}

// === malformed input ===

/// Well-formed requests that the mutations below start from: bodies of each framing,
/// headers the proxy acts on, and two requests pipelined.
const TEMPLATES: [&[u8]; 5] = [
    b"GET /doc HTTP/1.1\r\nHost: model\r\nX-Request-Id: abc\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: model\r\nContent-Length: 11\r\n\r\nhello world",
    b"POST /echo HTTP/1.1\r\nHost: model\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: model\r\nConnection: keep-alive, x-drop\r\nX-Drop: 1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    b"GET /doc HTTP/1.1\r\nHost: model\r\n\r\nPOST /echo HTTP/1.1\r\nHost: model\r\nContent-Length: 3\r\n\r\nabc",
];

/// Chunked bodies that a lenient parser lets through and the model server (hyper here;
/// h11 too) refuses: the proxy must refuse them itself, with a 400.
const DISPUTED: [&[u8]; 4] = [
    b"POST /echo HTTP/1.1\r\nHost: model\r\nTransfer-Encoding: chunked\r\n\r\n5 x=1\r\nhello\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: model\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nno colon\r\n\r\n",
    b"POST /doc HTTP/1.1\r\nHost: model\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n: no name\r\n\r\n",
    b"POST /doc HTTP/1.1\r\nHost: model\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx-t: a\x01b\r\n\r\n",
];

/// Bytes that matter to an HTTP/1.1 parser, and a few that should not appear at all.
const INTERESTING: &[u8] = b"\r\n :;\t\0\x7f\xff,\"/0159aAfFzZ-";

/// One to three random edits of `template`: a byte replaced (anywhere, or where the
/// framing is), bytes removed, a byte inserted, a line repeated, or the end cut off.
fn mutate(rng: &mut StdRng, template: &[u8]) -> Vec<u8> {
    let mut bytes = template.to_vec();
    for _ in 0..rng.random_range(1..=3) {
        if bytes.is_empty() {
            break;
        }
        let at = rng.random_range(0..bytes.len());
        let pick = INTERESTING[rng.random_range(0..INTERESTING.len())];
        match rng.random_range(0..6) {
            0 => bytes[at] = pick,
            1 => {
                // Where the framing is: a CR, LF, colon, semicolon or space.
                let framing: Vec<usize> = (0..bytes.len())
                    .filter(|&i| b"\r\n:; ".contains(&bytes[i]))
                    .collect();
                if !framing.is_empty() {
                    bytes[framing[rng.random_range(0..framing.len())]] = pick;
                }
            }
            2 => {
                let end = (at + rng.random_range(1..=4)).min(bytes.len());
                bytes.drain(at..end);
            }
            3 => bytes.insert(at, pick),
            4 => {
                // The line around `at`, CRLF included, written twice.
                let start = bytes[..at]
                    .windows(2)
                    .rposition(|w| w == b"\r\n")
                    .map_or(0, |i| i + 2);
                let end = find(&bytes[at..], b"\r\n").map_or(bytes.len(), |i| at + i + 2);
                let line = bytes[start..end].to_vec();
                bytes.splice(start..start, line);
            }
            _ => bytes.truncate(at),
        }
    }
    bytes
}

#[tokio::test]
async fn mutated_requests_get_an_answer_or_a_close_and_the_model_is_never_blamed() {
    let proxy = start_proxy(start_upstream().await, &["--timeout", "5s"]).await;
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut requests: Vec<Vec<u8>> = DISPUTED.iter().map(|r| r.to_vec()).collect();
    requests.extend((0..400).map(|i| mutate(&mut rng, TEMPLATES[i % TEMPLATES.len()])));
    for (case, request) in requests.into_iter().enumerate() {
        let shown = String::from_utf8_lossy(&request).into_owned();
        let mut client = Wire::connect(proxy.addr).await;
        // The disputed ones whole, so the proxy reads their bodies before it forwards
        // anything: sent in pieces, a model may answer before the bad bytes come. The
        // others in up to three writes: a parser must not care where the reads split.
        let disputed = case < DISPUTED.len();
        let mut rest = &request[..];
        for _ in 0..if disputed { 0 } else { rng.random_range(0..3) } {
            let at = rng.random_range(0..=rest.len());
            client.send(&rest[..at]).await;
            rest = &rest[at..];
            tokio::task::yield_now().await;
        }
        // The client may be refused halfway; its writes failing is no failure.
        let _ = client.write(rest).await;
        client.finish_writing().await;
        let statuses = tokio::time::timeout(DEADLINE, async {
            let mut statuses = Vec::new();
            loop {
                match client.try_read_response(false).await {
                    Ok(answer) => statuses.push(answer.status),
                    Err(e) if e.starts_with("bad status line") => {
                        panic!("case {case}, {shown:?}: {e}")
                    }
                    // Closed, or cut inside an answer whose request body was broken.
                    Err(_) => return statuses,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("case {case}, {shown:?}: no answer or close in time"));
        // A 5xx would blame a model that is fine: the proxy passed on something it should
        // have refused itself.
        assert!(
            statuses.iter().all(|s| *s < 500 || *s == 501 || *s == 505),
            "case {case}, {shown:?}: statuses {statuses:?}"
        );
        if disputed {
            assert_eq!(statuses, [400], "case {case}, {shown:?}");
        }
    }
    // Still serving.
    let mut client = Wire::connect(proxy.addr).await;
    client.send(&post("/echo", b"fine")).await;
    let answer = client.response().await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, b"fine");
    proxy.shutdown().await;
}

/// Answers a model server might send: each framing, interim answers, trailers.
const ANSWERS: [&[u8]; 6] = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
];

#[tokio::test]
async fn mutated_answers_reach_the_client_well_formed_or_not_at_all() {
    // The answer to give next; each upstream connection gives one and closes.
    let next = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let upstream = start_raw_upstream({
        let next = next.clone();
        move |mut wire| {
            let next = next.clone();
            async move {
                if next_request(&mut wire).await.is_some() {
                    let answer = next.lock().expect("not poisoned").clone();
                    let _ = wire.write(&answer).await;
                }
            }
        }
    })
    .await;
    let proxy = start_proxy(upstream, &["--timeout", "5s"]).await;
    let mut rng = StdRng::seed_from_u64(0xa115);
    for case in 0..300 {
        let answer = mutate(&mut rng, ANSWERS[case % ANSWERS.len()]);
        let shown = String::from_utf8_lossy(&answer).into_owned();
        *next.lock().expect("not poisoned") = answer;
        let mut client = Wire::connect(proxy.addr).await;
        client.send(&get("/predict")).await;
        let outcome = tokio::time::timeout(DEADLINE, async {
            loop {
                match client.try_read_response(false).await {
                    Ok(answer) if answer.status < 200 => {}
                    other => return other,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("case {case}, {shown:?}: no answer or close in time"));
        // What the client gets is HTTP: a whole answer (the model's or the proxy's 502),
        // or an answer cut short by a close, never bytes it cannot frame.
        if let Err(e) = outcome {
            assert!(
                e.starts_with("connection closed") || e.starts_with("stream ended"),
                "case {case}, {shown:?}: {e}"
            );
        }
    }
    // Still serving.
    *next.lock().expect("not poisoned") = ANSWERS[0].to_vec();
    let mut client = Wire::connect(proxy.addr).await;
    client.send(&get("/predict")).await;
    let answer = client.response().await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, b"hello");
    proxy.shutdown().await;
}
