//! A fault-injecting HTTP proxy: put it between the worker and a fake (Whisper, Gemini,
//! PostgREST) and a share of requests fail the way real services fail: 429 with Retry-After,
//! 500, a slow reply, or a connection dropped without an answer. Everything else is forwarded
//! unchanged. Counts what it injected.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// Shares (0..=1) of requests that get each fault.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultPlan {
    pub rate_limited: f64,
    pub server_error: f64,
    pub slow: f64,
    pub dropped: f64,
    /// How long a slow reply is held before it is forwarded.
    pub slow_by: Duration,
    /// When set, only requests of this method (`GET`, `PATCH`, …) are slowed.
    pub slow_method: Option<&'static str>,
}

/// What one proxy injected.
#[derive(Debug, Default)]
pub struct FaultCounts {
    pub requests: AtomicU64,
    pub rate_limited: AtomicU64,
    pub server_error: AtomicU64,
    pub slow: AtomicU64,
    pub dropped: AtomicU64,
}

impl FaultCounts {
    pub fn injected(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
            + self.server_error.load(Ordering::Relaxed)
            + self.slow.load(Ordering::Relaxed)
            + self.dropped.load(Ordering::Relaxed)
    }

    pub fn line(&self) -> String {
        format!(
            "{:>6} requests {:>4} × 429 {:>4} × 500 {:>4} slow {:>4} dropped",
            self.requests.load(Ordering::Relaxed),
            self.rate_limited.load(Ordering::Relaxed),
            self.server_error.load(Ordering::Relaxed),
            self.slow.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed)
        )
    }
}

pub struct FaultyProxy {
    pub addr: SocketAddr,
    pub counts: Arc<FaultCounts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for Dropped {}

impl FaultyProxy {
    /// Proxies `http://addr/…` to `upstream` (e.g. `http://127.0.0.1:1234`) with `plan`.
    pub async fn start(upstream: &str, plan: FaultPlan) -> FaultyProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(FaultCounts::default());
        let upstream = upstream.trim_end_matches('/').to_string();
        let client = reqwest::Client::new();
        let task = tokio::spawn({
            let counts = Arc::clone(&counts);
            async move {
                while let Ok((socket, _)) = listener.accept().await {
                    let (counts, upstream, client) =
                        (Arc::clone(&counts), upstream.clone(), client.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            forward(
                                req,
                                plan,
                                Arc::clone(&counts),
                                upstream.clone(),
                                client.clone(),
                            )
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(socket), service)
                            .await;
                    });
                }
            }
        });
        FaultyProxy { addr, counts, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn forward(
    req: Request<Incoming>,
    plan: FaultPlan,
    counts: Arc<FaultCounts>,
    upstream: String,
    client: reqwest::Client,
) -> Result<Response<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    counts.requests.fetch_add(1, Ordering::Relaxed);
    let roll = fastrand::f64();
    let mut edge = plan.rate_limited;
    if roll < edge {
        counts.rate_limited.fetch_add(1, Ordering::Relaxed);
        return Ok(reply(
            429,
            &[("retry-after", "1")],
            "{\"error\":{\"message\":\"Rate limit reached\",\"type\":\"requests\",\"code\":\"rate_limit_exceeded\"}}",
        ));
    }
    edge += plan.server_error;
    if roll < edge {
        counts.server_error.fetch_add(1, Ordering::Relaxed);
        return Ok(reply(
            500,
            &[],
            "{\"error\":{\"message\":\"internal error\"}}",
        ));
    }
    edge += plan.dropped;
    if roll < edge {
        counts.dropped.fetch_add(1, Ordering::Relaxed);
        return Err(Box::new(Dropped));
    }
    edge += plan.slow;
    let slowed = plan.slow_method.is_none_or(|m| req.method().as_str() == m);
    if roll < edge && slowed {
        counts.slow.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(plan.slow_by).await;
    }

    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let url = format!(
        "{upstream}{}",
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut out = client.request(parts.method, url).body(body);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            out = out.header(name, value);
        }
    }
    let answer = out.send().await?;
    let mut response = Response::builder().status(answer.status().as_u16());
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" {
            response = response.header(name, value);
        }
    }
    Ok(response.body(Full::new(answer.bytes().await?))?)
}

fn reply(status: u16, headers: &[(&str, &str)], body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}
