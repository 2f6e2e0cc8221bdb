//! Helpers shared by the model-proxy test files: test bodies, deterministic data, and a
//! hyper HTTP/1.1 upstream serving a handler on a loopback port.
// Each test file uses its own subset of these.
#![allow(dead_code)]

use bytes::Bytes;
use ds_proxy::{ProxyArgs, RunningProxy};
use http::{Request, Response};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;

/// Deterministic, non-repeating bytes (xorshift), so a shifted or dropped chunk shows.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// Accepts connections on a loopback port until the test ends, each served by `serve` on a
/// task of its own.
pub async fn serve_each<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// Serves `handler` over HTTP/1.1 (hyper) on a loopback port until the test ends.
pub async fn serve_http1<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<TestBody>, Infallible>> + Send + 'static,
{
    serve_each(move |stream| {
        let handler = handler.clone();
        async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handler))
                .await;
        }
    })
    .await
}

/// A proxy on loopback ports in front of `upstream`, with `extra` flags.
pub async fn start_proxy(upstream: SocketAddr, extra: &[&str]) -> RunningProxy {
    let upstream = format!("http://{upstream}");
    let mut flags = vec![
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream,
    ];
    flags.extend_from_slice(extra);
    RunningProxy::start(ProxyArgs::from_flags(flags).expect("valid flags"))
        .await
        .expect("proxy starts")
}
