//! The daemon's HTTP side: `/health` and `/ready` on PORT, Prometheus `/metrics` on METRICS_PORT.
//!
//! `/health` answers 200 whenever the process runs (Fly's check and Docker's HEALTHCHECK: a
//! worker busy on a job is healthy). `/ready` probes each dependency with a short timeout and
//! answers JSON with `healthy`, `degraded` (answered, but slowly) or `unhealthy` per check and
//! its latency, status 503 when any check is unhealthy.
//!
//! The public port is reachable by anyone, so every connection is bounded ([`ServeLimits`]):
//! request headers must arrive within a few seconds (a client trickling a byte every 5 s is
//! closed; without a timer hyper enforces none), a connection lives at most half a minute, and
//! beyond a connection cap new connections are closed at once instead of queueing behind slow
//! ones. `/metrics` is served only on its own port, never here.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::BoxFuture;
use crate::error::{Error, Result};

/// One dependency `/ready` and `audio-worker check` probe.
pub trait Probe: Send + Sync {
    /// "redis", "s3", "supabase", …
    fn name(&self) -> &'static str;
    /// Succeeds when the dependency answers as expected.
    fn probe(&self) -> BoxFuture<'_, Result<()>>;
}

/// A probe answering later than this is `degraded`.
pub const SLOW_PROBE: Duration = Duration::from_millis(1000);
/// A probe not answering within this is `unhealthy`.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Degraded,
    Unhealthy,
}

/// The outcome of one probe.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub name: &'static str,
    pub status: Health,
    pub latency_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The failure's code (`None`: healthy, or no answer in time), which tells `check` whether
    /// the dependency refused us or could not be reached.
    #[serde(skip)]
    pub code: Option<crate::error::ErrorCode>,
}

/// All probes and the overall status (the worst of them).
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub status: Health,
    pub checks: Vec<CheckReport>,
}

/// Runs every probe concurrently (one task each), each bounded by [`PROBE_TIMEOUT`].
pub async fn check_all(probes: &[Arc<dyn Probe>]) -> Readiness {
    let tasks: Vec<_> = probes
        .iter()
        .map(|p| {
            let p = Arc::clone(p);
            tokio::spawn(async move {
                let started = Instant::now();
                let outcome = tokio::time::timeout(PROBE_TIMEOUT, p.probe()).await;
                let latency = started.elapsed();
                let (status, error, code) = match outcome {
                    Ok(Ok(())) if latency > SLOW_PROBE => (Health::Degraded, None, None),
                    Ok(Ok(())) => (Health::Healthy, None, None),
                    Ok(Err(e)) => (Health::Unhealthy, Some(e.to_string()), Some(e.code)),
                    Err(_) => (
                        Health::Unhealthy,
                        Some(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
                        None,
                    ),
                };
                CheckReport {
                    name: p.name(),
                    status,
                    latency_ms: latency.as_millis() as u64,
                    error,
                    code,
                }
            })
        })
        .collect();
    let mut checks = Vec::with_capacity(tasks.len());
    for (task, probe) in tasks.into_iter().zip(probes) {
        checks.push(task.await.unwrap_or_else(|e| CheckReport {
            name: probe.name(),
            status: Health::Unhealthy,
            latency_ms: 0,
            error: Some(format!("the probe crashed: {e}")),
            code: None,
        }));
    }
    let status = checks
        .iter()
        .map(|c| c.status)
        .max_by_key(|s| *s as u8)
        .unwrap_or(Health::Healthy);
    Readiness { status, checks }
}

/// What an HTTP server answers.
pub trait Routes: Send + Sync + 'static {
    fn handle(&self, path: &str) -> BoxFuture<'_, Response<Full<Bytes>>>;
}

/// `/health` and `/ready`. The probes are set once the worker has connected (Redis may be
/// down at start): until then `/health` answers and `/ready` says not ready.
#[derive(Default)]
pub struct HealthRoutes {
    pub probes: std::sync::OnceLock<Vec<Arc<dyn Probe>>>,
}

impl HealthRoutes {
    /// Routes that are ready to probe `probes` at once.
    pub fn with_probes(probes: Vec<Arc<dyn Probe>>) -> HealthRoutes {
        let routes = HealthRoutes::default();
        let _ = routes.probes.set(probes);
        routes
    }
}

/// `/ready` before the worker has reached Redis.
fn starting() -> Readiness {
    Readiness {
        status: Health::Unhealthy,
        checks: vec![CheckReport {
            name: "redis",
            status: Health::Unhealthy,
            latency_ms: 0,
            error: Some("starting: Redis is not reachable yet".into()),
            code: None,
        }],
    }
}

impl Routes for HealthRoutes {
    fn handle(&self, path: &str) -> BoxFuture<'_, Response<Full<Bytes>>> {
        let path = path.to_string();
        Box::pin(async move {
            match path.as_str() {
                "/health" => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
                "/ready" => {
                    let readiness = match self.probes.get() {
                        Some(probes) => check_all(probes).await,
                        None => starting(),
                    };
                    let status = if readiness.status == Health::Unhealthy {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    };
                    json(status, &readiness)
                }
                _ => text(StatusCode::NOT_FOUND, "not found\n"),
            }
        })
    }
}

/// Prometheus' text format on `/metrics`.
pub struct MetricsRoutes(pub metrics_exporter_prometheus::PrometheusHandle);

impl Routes for MetricsRoutes {
    fn handle(&self, path: &str) -> BoxFuture<'_, Response<Full<Bytes>>> {
        let found = path == "/metrics";
        Box::pin(async move {
            if !found {
                return text(StatusCode::NOT_FOUND, "not found\n");
            }
            let mut response = text(StatusCode::OK, &self.0.render());
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        })
    }
}

fn json(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r
}

/// What one server lets a connection take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// The whole request head must arrive within this (hyper's header read timeout).
    pub header_read_timeout: Duration,
    /// A connection, keep-alive included, is shut down (gracefully) after this.
    pub connection_lifetime: Duration,
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
}

impl ServeLimits {
    /// The public port's limits: probes and health checks are one small request each.
    pub const PUBLIC: ServeLimits = ServeLimits {
        header_read_timeout: Duration::from_secs(5),
        connection_lifetime: Duration::from_secs(30),
        max_connections: 64,
    };
}

/// Binds `addr` now (so a taken port fails at start) and serves `routes` until `shutdown`,
/// within `limits`.
pub async fn serve(
    addr: SocketAddr,
    routes: Arc<dyn Routes>,
    limits: ServeLimits,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("cannot listen on {addr}"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("listener address", e))?;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let task = tokio::spawn(async move {
        let mut shutdown = shutdown;
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            let Ok((stream, _)) = accepted else { continue };
            // Over the cap: close at once (dropping the stream) rather than queue.
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                continue;
            };
            let routes = Arc::clone(&routes);
            tokio::spawn(async move {
                serve_connection(stream, routes, limits).await;
                drop(slot);
            });
        }
    });
    Ok((local, task))
}

/// One connection: HTTP/1 with the header read timeout, shut down after its lifetime.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    routes: Arc<dyn Routes>,
    limits: ServeLimits,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let routes = Arc::clone(&routes);
        async move { Ok::<_, Infallible>(routes.handle(req.uri().path()).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = tokio::time::sleep(limits.connection_lifetime) => {
            // Finish a response in flight, then close; a silent client is closed now.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}

/// `audio-worker health`: GETs `url` and succeeds on a 2xx (the Docker HEALTHCHECK, so the image
/// needs no curl).
pub async fn get_ok(url: &str, timeout: Duration) -> Result<()> {
    let response = reqwest::Client::new()
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| {
            Error::new(
                crate::ErrorCode::Internal,
                format!("{url} did not answer: {e}"),
            )
        })?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(Error::new(
            crate::ErrorCode::Internal,
            format!("{url} answered {}", response.status()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    struct Fixed(&'static str, Duration, bool);

    impl Probe for Fixed {
        fn name(&self) -> &'static str {
            self.0
        }
        fn probe(&self) -> BoxFuture<'_, Result<()>> {
            Box::pin(async move {
                tokio::time::sleep(self.1).await;
                if self.2 {
                    Ok(())
                } else {
                    Err(Error::new(ErrorCode::Internal, "refused"))
                }
            })
        }
    }

    /// A raw HTTP/1 GET of `/health`; the status line's code.
    async fn health(addr: SocketAddr) -> Option<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.ok()?;
        reply.split(' ').nth(1)?.parse().ok()
    }

    /// Issue 15, item 12: five clients trickling a header byte every 5 s are closed by the
    /// header read timeout, `/health` answers all the while, and `/metrics` is not served here.
    #[tokio::test]
    async fn slow_header_clients_are_closed_and_health_still_answers() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let routes = Arc::new(HealthRoutes::with_probes(vec![]));
        let (addr, _task) = serve(
            ([127, 0, 0, 1], 0).into(),
            routes,
            ServeLimits::PUBLIC,
            stop,
        )
        .await
        .unwrap();
        let started = std::time::Instant::now();
        let tricklers: Vec<_> = (0..5)
            .map(|_| {
                tokio::spawn(async move {
                    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                    for b in b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: "
                        .iter()
                        .cycle()
                    {
                        if s.write_all(&[*b]).await.is_err() {
                            break;
                        }
                        let mut buf = [0u8; 64];
                        // Closed by the server: a read of 0 bytes (or a reset) within 5 s.
                        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                            Ok(Ok(0)) | Ok(Err(_)) => break,
                            Ok(Ok(_)) => break, // an error reply (408) then close
                            Err(_) => {}
                        }
                    }
                    started.elapsed()
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(health(addr).await, Some(200), "health answers beside them");
        for t in tricklers {
            let lived = t.await.unwrap();
            assert!(
                lived < Duration::from_secs(12),
                "a trickler lived {lived:?}"
            );
        }
        assert_eq!(health(addr).await, Some(200));
        let r = HealthRoutes::default().handle("/metrics").await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    /// Beyond the cap a connection is closed at once; the slots come back when others close.
    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_at_once() {
        use tokio::io::AsyncReadExt;
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let limits = ServeLimits {
            max_connections: 2,
            header_read_timeout: Duration::from_secs(2),
            ..ServeLimits::PUBLIC
        };
        let routes = Arc::new(HealthRoutes::default());
        let (addr, _task) = serve(([127, 0, 0, 1], 0).into(), routes, limits, stop)
            .await
            .unwrap();
        let mut idle = Vec::new();
        for _ in 0..2 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(1), extra.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
        // The idle ones time out after 2 s; then there is room again.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(health(addr).await, Some(200));
        let r = HealthRoutes::default().handle("/ready").await;
        assert_eq!(
            r.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready before Redis"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_is_the_worst_check_and_probes_run_together() {
        let started = tokio::time::Instant::now();
        let probes: Vec<Arc<dyn Probe>> = vec![
            Arc::new(Fixed("fast", Duration::from_millis(5), true)),
            Arc::new(Fixed("slow", Duration::from_millis(1500), true)),
        ];
        let r = check_all(&probes).await;
        assert_eq!(r.status, Health::Degraded);
        assert_eq!(r.checks[0].status, Health::Healthy);
        assert_eq!(r.checks[1].status, Health::Degraded);
        assert!(started.elapsed() < Duration::from_millis(1600));

        let probes: Vec<Arc<dyn Probe>> = vec![
            Arc::new(Fixed("down", Duration::ZERO, false)),
            Arc::new(Fixed("hung", Duration::from_secs(60), true)),
        ];
        let r = check_all(&probes).await;
        assert_eq!(r.status, Health::Unhealthy);
        assert_eq!(
            r.checks[0].error.as_deref(),
            Some("error[INTERNAL]: refused")
        );
        assert!(r.checks[1].error.as_deref().unwrap().contains("no answer"));
    }
}
