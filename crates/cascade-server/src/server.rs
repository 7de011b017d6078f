//! `cascade server`: lock the data directory, start the HTTP listener (health and metrics
//! first, so orchestrators can watch recovery; the REST API of [`cascade_rest`] answers 503
//! until the broker is open), open the broker, serve gRPC, and on SIGTERM or Ctrl-C stop in
//! this order (a controlled shutdown, as Kafka's):
//! 1. hand every leadership to another in-sync replica (up to 5 s), still serving everything;
//! 2. refuse new client requests (`UNAVAILABLE`, retriable; `/readyz` 503) and give those
//!    already admitted a moment to finish;
//! 3. close every log cleanly and leave the metadata Raft group, still answering the other
//!    nodes meanwhile (a node that stopped serving them first would stop hearing the Raft
//!    leader and call an election the cluster does not need); once Raft begins stopping,
//!    peers' Raft messages get `UNAVAILABLE` (see `cascade_broker::raft::gated`);
//! 4. stop the listeners (connections still open after a grace period are closed).

use crate::config::ServerConfig;
use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use cascade_broker::controller::ControllerService;
use cascade_broker::grpc::{AdminService, ConsumersService, GroupsService, RecordsService};
use cascade_broker::replication::ReplicationService;
use cascade_broker::{Broker, BrokerConfig};
use cascade_log::fs::FileSystem;
use cascade_proto::internal::controller_server::ControllerServer;
use cascade_proto::internal::raft_server::RaftServer;
use cascade_proto::internal::replication_server::ReplicationServer;
use cascade_proto::v1::admin_server::AdminServer;
use cascade_proto::v1::consumers_server::ConsumersServer;
use cascade_proto::v1::groups_server::GroupsServer;
use cascade_proto::v1::records_server::RecordsServer;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long client requests admitted before the node stopped admitting them get to finish
/// (their partitions have moved to other leaders by then, so they end quickly).
const REQUEST_DRAIN: Duration = Duration::from_millis(500);

/// How long connections may stay open once the listeners stop.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Holds the data directory's lock for the life of the process.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Takes an exclusive lock on `<data_dir>/LOCK`, so two servers never share one directory.
pub fn lock_data_dir(dir: &Path) -> Result<DataDirLock> {
    cascade_log::fs::FileSystem::create_dir_all_durable(&cascade_log::fs::StdFs, dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    let path = dir.join("LOCK");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if file.try_lock().is_err() {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        anyhow::bail!(
            "data directory {} is in use by another cascade server (pid {}); stop it or use another --data-dir",
            dir.display(),
            holder.trim()
        );
    }
    file.set_len(0)?;
    write!(file, "{}", std::process::id())?;
    Ok(DataDirLock { _file: file })
}

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("seconds".into()),
                    &[
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ],
                )
                .expect("non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

#[derive(Clone)]
struct HttpState {
    ready: Arc<AtomicBool>,
    metrics: PrometheusHandle,
}

/// Health, readiness and metrics endpoints.
fn ops_router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(s): State<HttpState>| async move {
                if s.ready.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ready\n").into_response()
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<HttpState>| async move {
                s.metrics.run_upkeep();
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    s.metrics.render(),
                )
            }),
        )
        .with_state(state)
}

/// Answers REST requests with 503 until the broker is open (and after shutdown begins); the
/// ops endpoints always answer.
async fn ready_gate(
    State(ready): State<Arc<AtomicBool>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let ops = matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics");
    if ops || ready.load(Ordering::SeqCst) {
        next.run(req).await
    } else {
        cascade_rest::error::ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            cascade_rest::error::codes::UNAVAILABLE,
            "the node is starting or stopping",
        )
        .into_response()
    }
}

/// Resolves when SIGTERM or SIGINT arrives.
pub(crate) async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Every gRPC service of a node. The public API answers UNAVAILABLE (retriable) until `ready`
/// (the broker has joined its cluster and opened its partitions), and again once shutdown
/// begins; the internal services serve from the start, because peers need them while this
/// node joins.
pub fn grpc_router(
    broker: &Arc<Broker>,
    max: usize,
    ready: Arc<AtomicBool>,
) -> tonic::transport::server::Router {
    let gate = move |req: tonic::Request<()>| {
        if ready.load(Ordering::SeqCst) {
            Ok(req)
        } else {
            Err(cascade_proto::status(
                tonic::Code::Unavailable,
                cascade_proto::v1::ErrorCode::LeaderNotAvailable,
                "the node is starting or stopping",
            ))
        }
    };
    use tonic::service::interceptor::InterceptedService as Gated;
    // HTTP/2's default 64 KiB flow-control windows would stall every request or fetch larger
    // than that for a round trip; batches and fetches are routinely 100 KiB to MiBs.
    tonic::transport::Server::builder()
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        // Larger frames than HTTP/2's 16 KiB default: a 1 MiB batch is 16 frames, not 64.
        .max_frame_size(Some(1 << 20))
        .add_service(Gated::new(
            AdminServer::new(AdminService::new(broker.clone())).max_decoding_message_size(max),
            gate.clone(),
        ))
        .add_service(Gated::new(
            RecordsServer::new(RecordsService::new(broker.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(256 << 20),
            gate.clone(),
        ))
        .add_service(Gated::new(
            GroupsServer::new(GroupsService::new(broker.clone())).max_decoding_message_size(max),
            gate.clone(),
        ))
        .add_service(Gated::new(
            ConsumersServer::new(ConsumersService::new(broker.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(256 << 20),
            gate,
        ))
        .add_service(
            RaftServer::new(broker.metadata().raft_service())
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
        )
        .add_service(ControllerServer::new(ControllerService::new(
            broker.clone(),
        )))
        .add_service(
            ReplicationServer::new(ReplicationService::new(broker.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(256 << 20),
        )
}

/// The file systems the node's data lives on: `(partitions, metadata)`. The real one,
/// wrapped for testing by the layers the testing-only flags ask for. The in-memory layer
/// (`--unsynced-writes-in-memory`) covers both, so a kill is a power cut of the metadata Raft
/// files too; disk faults (`--fault-file`) reach only the partitions, outermost, so a failing
/// write never reaches the in-memory layer.
///
/// The in-memory layer governs the whole data directory: before anything else opens a file
/// there, it undoes the name operations (and shrinks) a kill of the previous run left without
/// the fsync that makes them durable, as a power cut would.
fn storage(
    cfg: &ServerConfig,
    stop: &CancellationToken,
) -> Result<(Arc<dyn FileSystem>, Arc<dyn FileSystem>)> {
    let mut fs: Arc<dyn FileSystem> = Arc::new(cascade_log::fs::StdFs);
    if cfg.unsynced_writes_in_memory {
        tracing::warn!(
            "unsynced writes and names are held in memory: a kill is a power cut (testing only)"
        );
        let lazy = cascade_log::fs::LazyFs::recover(fs, &cfg.data_dir).with_context(|| {
            format!(
                "undoing what a kill left unsynced in {}",
                cfg.data_dir.display()
            )
        })?;
        fs = Arc::new(lazy);
    }
    let meta = fs.clone();
    if let Some(path) = &cfg.fault_file {
        fs = injected_disk_faults(fs, path.clone(), stop.clone());
    }
    Ok((fs, meta))
}

/// The partition storage of a fault-injection run: `inner` behind a switch that
/// follows the control file at `path` (see `--fault-file`), polled every 100 ms until `stop`.
/// A missing file means healthy; text that does not parse is reported and leaves the fault in
/// force unchanged.
fn injected_disk_faults(
    inner: Arc<dyn FileSystem>,
    path: PathBuf,
    stop: CancellationToken,
) -> Arc<dyn FileSystem> {
    use cascade_log::fs::{DiskFault, FaultSwitch, FaultyFs};
    tracing::warn!(control = %path.display(), "disk fault injection is on (testing only)");
    let switch = Arc::new(FaultSwitch::default());
    let fs = Arc::new(FaultyFs::new(inner, switch.clone()));
    tokio::spawn(async move {
        let mut last_text = String::new();
        while !stop.is_cancelled() {
            let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
            if text != last_text {
                match DiskFault::parse(&text) {
                    Ok(fault) => {
                        let was = switch.set(fault);
                        tracing::warn!(%was, now = %fault, "injected disk fault changed");
                    }
                    Err(e) => {
                        tracing::error!(control = %path.display(), error = %e, "bad disk fault")
                    }
                }
                last_text = text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    fs
}

/// Runs a node until a signal or `stop` is cancelled.
pub async fn run(cfg: ServerConfig, stop: CancellationToken) -> Result<()> {
    let _lock = lock_data_dir(&cfg.data_dir)?;
    let metrics = metrics_handle();
    let grpc_listener = TcpListener::bind(cfg.grpc_addr)
        .await
        .with_context(|| format!("binding the gRPC listener to {}", cfg.grpc_addr))?;
    let grpc_local = grpc_listener.local_addr()?;
    let ready = Arc::new(AtomicBool::new(false));
    // The listeners stop after the broker (see the module docs), not at the signal.
    let serving = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut http_local = None;
    if let Some(addr) = cfg.http_addr {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the HTTP listener to {addr}"))?;
        http_local = Some(listener.local_addr()?);
        // The REST API reaches this node like any client, over gRPC: the listener is bound
        // already, and the client connects on first use.
        let own_grpc = if grpc_local.ip().is_unspecified() {
            format!("127.0.0.1:{}", grpc_local.port())
        } else {
            grpc_local.to_string()
        };
        let rest = cascade_rest::RestState::new(cascade_client::Client::connect_lazy(&own_grpc)?);
        let router = cascade_rest::router_with(
            rest,
            ops_router(HttpState {
                ready: ready.clone(),
                metrics,
            }),
        )
        .layer(axum::middleware::from_fn_with_state(
            ready.clone(),
            ready_gate,
        ));
        let serving = serving.clone();
        tasks.spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(serving.cancelled_owned())
                .await
                .context("HTTP server")
        });
    }
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = signal() => tracing::info!("signal received: shutting down"),
                _ = stop.cancelled() => {}
            }
            stop.cancel();
        });
    }
    let advertised = if cfg.grpc_addr.port() == 0 && cfg.advertised_grpc_addr.ends_with(":0") {
        format!("127.0.0.1:{}", grpc_local.port())
    } else {
        cfg.advertised_grpc_addr.clone()
    };
    let (log_fs, meta_fs) = storage(&cfg, &stop)?;
    let broker = Broker::open(BrokerConfig {
        data_dir: cfg.data_dir.clone(),
        node_id: cfg.node_id,
        advertised_grpc_addr: advertised,
        advertised_http_addr: http_local.map(|a| a.to_string()).unwrap_or_default(),
        offsets_partitions: cfg.offsets_partitions,
        retention_check_interval: cfg.retention_check,
        default_topic_config: Default::default(),
        seeds: cfg.seeds.clone(),
        heartbeat_interval: cfg.heartbeat,
        session_timeout: cfg.session_timeout,
        replica_lag_max: cfg.replica_lag_max,
        offsets_replication_factor: cfg.offsets_replication_factor,
        log_fs,
        meta_fs,
    })
    .await
    .context("opening the broker")?;
    let grpc = grpc_router(&broker, cfg.max_request_bytes, ready.clone());
    let grpc_stop = serving.clone();
    tasks.spawn(async move {
        // Our own listener (bound before the broker starts, so port conflicts fail fast) means
        // tonic's `tcp_nodelay` does not apply: set it per connection, or Nagle's algorithm
        // and delayed ACKs add ~40 ms to small responses.
        use tokio_stream::StreamExt;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener).map(|s| {
            s.inspect(|s| {
                let _ = s.set_nodelay(true);
            })
        });
        grpc.serve_with_incoming_shutdown(incoming, grpc_stop.cancelled_owned())
            .await
            .context("gRPC server")
    });
    tokio::select! {
        r = broker.start() => r.context("starting the broker")?,
        _ = stop.cancelled() => {
            broker.shutdown().await;
            serving.cancel();
            return Ok(());
        }
    }
    ready.store(true, Ordering::SeqCst);
    // Machine-readable line for scripts and tests that start the server on port 0.
    tracing::info!(
        grpc = %grpc_local,
        http = %http_local.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        data_dir = %cfg.data_dir.display(),
        "cascade is ready"
    );
    println!(
        "{}",
        serde_json::json!({"event": "ready", "grpc_addr": grpc_local.to_string(),
            "http_addr": http_local.map(|a| a.to_string())})
    );
    let mut result = Ok(());
    tokio::select! {
        _ = stop.cancelled() => {}
        Some(r) = tasks.join_next() => {
            // A listener failed: stop everything.
            if let Ok(Err(e)) = r { result = Err(e); }
            stop.cancel();
        }
    }
    // Leadership moves to other in-sync replicas while this node still serves them, so clients
    // of its partitions only retry.
    broker
        .hand_off_leadership(std::time::Duration::from_secs(5))
        .await;
    ready.store(false, Ordering::SeqCst);
    tokio::time::sleep(REQUEST_DRAIN).await;
    broker.begin_shutdown();
    broker.shutdown().await;
    serving.cancel();
    // A client that keeps a connection open must not keep the node from exiting.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while let Some(r) = tasks.join_next().await {
            if let Ok(Err(e)) = r
                && result.is_ok()
            {
                result = Err(e);
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            grace_secs = SHUTDOWN_GRACE.as_secs(),
            "connections still open after the grace period: closing them"
        );
        tasks.abort_all();
    }
    tracing::info!("stopped cleanly");
    result
}
