//! `cascade gateway`: the REST API of [`cascade_rest`] as its own process, in front of brokers
//! it reaches over gRPC. It keeps no state (even `Idempotency-Key` answers are kept by the
//! brokers), so it scales independently of them and any replica serves any request. It also serves `/healthz` (the process is up), `/readyz` (a broker answers) and
//! `/metrics`.

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use cascade_client::Client;
use clap::Args;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long `/readyz` waits for a broker.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long in-flight requests (and event streams) may take to finish after a stop signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Flags of `cascade gateway`.
#[derive(Debug, Clone, Args, Default)]
pub struct GatewayArgs {
    /// Brokers to start from (comma-separated host:port of their gRPC listeners): the first
    /// that answers tells the gateway the rest of the cluster. [default: 127.0.0.1:50051]
    #[arg(long, env = "CASCADE_BROKERS")]
    pub brokers: Option<String>,

    /// Address of the HTTP listener serving the REST API, /healthz, /readyz and /metrics.
    /// [default: 0.0.0.0:8082]
    #[arg(long, env = "CASCADE_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,

    /// Seconds between keep-alive comments on idle event streams. [default: 15]
    #[arg(long, env = "CASCADE_SSE_KEEP_ALIVE_SECS")]
    pub sse_keep_alive_secs: Option<u64>,

    /// Log format: "text" or "json". [default: text]
    #[arg(long, env = "CASCADE_LOG_FORMAT")]
    pub log_format: Option<String>,
}

/// Validated gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Brokers (comma-separated host:port).
    pub brokers: String,
    /// HTTP listener.
    pub http_addr: SocketAddr,
    /// Keep-alive interval of event streams.
    pub sse_keep_alive: Duration,
    /// "text" or "json".
    pub log_format: String,
}

impl GatewayArgs {
    /// Applies defaults and validates.
    pub fn resolve(&self) -> Result<GatewayConfig> {
        let brokers = self.brokers.as_deref().unwrap_or("127.0.0.1:50051");
        let log_format = self.log_format.clone().unwrap_or_else(|| "text".into());
        if !matches!(log_format.as_str(), "text" | "json") {
            bail!("--log-format must be text or json, got {log_format:?}");
        }
        let keep_alive = self.sse_keep_alive_secs.unwrap_or(15);
        if keep_alive == 0 {
            bail!("--sse-keep-alive-secs must be > 0");
        }
        if brokers.split(',').all(|b| b.trim().is_empty()) {
            bail!("--brokers must name at least one broker (host:port)");
        }
        Ok(GatewayConfig {
            brokers: brokers.to_string(),
            http_addr: self
                .http_addr
                .unwrap_or_else(|| "0.0.0.0:8082".parse().expect("valid")),
            sse_keep_alive: Duration::from_secs(keep_alive),
            log_format,
        })
    }
}

#[derive(Clone)]
struct OpsState {
    client: Client,
    metrics: PrometheusHandle,
}

fn ops_router(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(s): State<OpsState>| async move {
                match tokio::time::timeout(READY_TIMEOUT, s.client.describe_cluster()).await {
                    Ok(Ok(_)) => (StatusCode::OK, "ready\n".to_string()).into_response(),
                    Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n"))
                        .into_response(),
                    Err(_) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: brokers do not answer\n".to_string(),
                    )
                        .into_response(),
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<OpsState>| async move {
                s.metrics.run_upkeep();
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    s.metrics.render(),
                )
            }),
        )
        .with_state(state)
}

/// Runs a gateway until a signal or `stop` is cancelled.
pub async fn run(cfg: GatewayConfig, stop: CancellationToken) -> Result<()> {
    let metrics = crate::server::metrics_handle();
    let client = Client::connect_lazy(&cfg.brokers)?;
    let listener = TcpListener::bind(cfg.http_addr)
        .await
        .with_context(|| format!("binding the HTTP listener to {}", cfg.http_addr))?;
    let local = listener.local_addr()?;
    let rest = cascade_rest::RestState::new(client.clone()).with_keep_alive(cfg.sse_keep_alive);
    let router = cascade_rest::router_with(rest, ops_router(OpsState { client, metrics }));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = crate::server::signal() => tracing::info!("signal received: shutting down"),
                _ = stop.cancelled() => {}
            }
            stop.cancel();
        });
    }
    tracing::info!(http = %local, brokers = %cfg.brokers, "cascade gateway is ready");
    println!(
        "{}",
        serde_json::json!({"event": "ready", "http_addr": local.to_string(), "brokers": cfg.brokers})
    );
    let server =
        axum::serve(listener, router).with_graceful_shutdown(stop.clone().cancelled_owned());
    let mut serving = tokio::spawn(async move { server.await.context("HTTP server") });
    tokio::select! {
        r = &mut serving => return r.context("HTTP server task")?,
        _ = stop.cancelled() => {}
    }
    // Event streams never end by themselves: bound the wait for open connections.
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut serving).await {
        Ok(r) => r.context("HTTP server task")??,
        Err(_) => {
            tracing::warn!("connections still open after the grace period: closing them");
            serving.abort();
        }
    }
    tracing::info!("stopped cleanly");
    Ok(())
}
