//! The daemon's HTTP side: `/health` and `/ready` on PORT, Prometheus `/metrics` on METRICS_PORT.
//!
//! `/health` answers 200 whenever the process runs (Fly's check and Docker's HEALTHCHECK: a
//! worker busy on a job is healthy). `/ready` probes each dependency with a short timeout and
//! answers JSON with `healthy`, `degraded` (answered, but slowly) or `unhealthy` per check and
//! its latency, status 503 when any check is unhealthy.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
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
                let (status, error) = match outcome {
                    Ok(Ok(())) if latency > SLOW_PROBE => (Health::Degraded, None),
                    Ok(Ok(())) => (Health::Healthy, None),
                    Ok(Err(e)) => (Health::Unhealthy, Some(e.to_string())),
                    Err(_) => (
                        Health::Unhealthy,
                        Some(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
                    ),
                };
                CheckReport {
                    name: p.name(),
                    status,
                    latency_ms: latency.as_millis() as u64,
                    error,
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

/// `/health` and `/ready`.
pub struct HealthRoutes {
    pub probes: Vec<Arc<dyn Probe>>,
}

impl Routes for HealthRoutes {
    fn handle(&self, path: &str) -> BoxFuture<'_, Response<Full<Bytes>>> {
        let path = path.to_string();
        Box::pin(async move {
            match path.as_str() {
                "/health" => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
                "/ready" => {
                    let readiness = check_all(&self.probes).await;
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

/// Binds `addr` now (so a taken port fails at start) and serves `routes` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    routes: Arc<dyn Routes>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("cannot listen on {addr}"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("listener address", e))?;
    let task = tokio::spawn(async move {
        let mut shutdown = shutdown;
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            let Ok((stream, _)) = accepted else { continue };
            let routes = Arc::clone(&routes);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let routes = Arc::clone(&routes);
                    async move { Ok::<_, Infallible>(routes.handle(req.uri().path()).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((local, task))
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
