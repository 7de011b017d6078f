//! `cascade`: the one binary. `cascade server` runs a broker node, `cascade gateway` a
//! stateless REST gateway; the other subcommands are clients of a running cluster.

use anyhow::Result;
use cascade_cli::{Common, bench, cluster, consume, group, produce, topic};
use cascade_server::{config::ServerArgs, gateway, server};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Cascade: a distributed, persistent event-streaming service.
#[derive(Debug, Parser)]
#[command(name = "cascade", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a broker node (with no flags: a single-node cluster in ./cascade-data).
    Server(ServerArgs),
    /// Run a stateless REST gateway in front of the brokers given with --brokers.
    Gateway(gateway::GatewayArgs),
    // The client commands below each take the client options (`--brokers`, `--output`), before
    // or after their own subcommand; `server` and `gateway` do not, so their `--help` lists
    // only what they read.
    /// Create, list, describe, alter and delete topics.
    Topic {
        #[command(subcommand)]
        cmd: topic::TopicCmd,
        #[command(flatten)]
        common: Common,
    },
    /// Write lines of standard input to a topic, one event per line.
    Produce {
        #[command(flatten)]
        args: produce::ProduceArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Print a topic's events to standard output.
    Consume {
        #[command(flatten)]
        args: consume::ConsumeArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Inspect consumer groups, their lag, and reset their offsets.
    Group {
        #[command(subcommand)]
        cmd: group::GroupCmd,
        #[command(flatten)]
        common: Common,
    },
    /// Show the cluster's nodes and partition health.
    Cluster {
        #[command(subcommand)]
        cmd: cluster::ClusterCmd,
        #[command(flatten)]
        common: Common,
    },
    /// Measure throughput and latency.
    Bench {
        #[command(subcommand)]
        cmd: bench::BenchCmd,
        #[command(flatten)]
        common: Common,
    },
}

/// The server's default log filter. openraft narrates every election and snapshot at info, so
/// only its warnings are kept; its replication logs every failed RPC to an unreachable peer
/// (about two lines a second per dead peer, for as long as it is down), so those are off and
/// the broker logs each peer's reachability changes instead (`raft::network`).
const SERVER_LOG: &str = "info,openraft=warn,openraft::replication=off,\
    openraft::engine::handler::replication_handler=off";

/// openraft logs each failed RPC of an election or a leadership check to an unreachable peer
/// at ERROR ("while requesting vote", "timeout", "timeout while confirming leadership"): with
/// one node down, every election of the others wrote error lines, and a whole-cluster stop
/// ended in them. A peer's reachability is already logged once per change by the broker's Raft
/// transport (`raft::network`). These events are the raft_core errors whose fields are exactly
/// `error` and `target` (the peer); openraft's other errors (storage, a stopped core) have
/// other fields and are kept.
fn is_peer_rpc_failure(meta: &tracing::Metadata<'_>) -> bool {
    if meta.target() != "openraft::core::raft_core" || *meta.level() != tracing::Level::ERROR {
        return false;
    }
    let mut fields: Vec<&str> = meta.fields().iter().map(|f| f.name()).collect();
    fields.sort_unstable();
    fields == ["error", "message", "target"]
}

fn init_tracing(json: bool, default: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_env("CASCADE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only for a person at a terminal: in a file, `docker logs` or a log collector the
    // escape codes are noise. NO_COLOR (no-color.org) turns it off everywhere.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let quiet = tracing_subscriber::filter::filter_fn(|meta| !is_peer_rpc_failure(meta));
    if json {
        builder.json().finish().with(quiet).init();
    } else {
        builder.finish().with(quiet).init();
    }
}

/// Makes glibc's allocator keep freed memory for reuse. By default it hands the top of a heap
/// back to the kernel once 128 KiB are free and maps every allocation above a moving threshold
/// afresh, so the ~100 KiB buffers of every produce request and fetch response kept landing on
/// new pages that the kernel had to fault in and zero: about a fifth of the broker's CPU at
/// 1 KiB × 100 batches (BENCHMARKS.md). Memory is still returned once more than
/// `TRIM` is free at the top of a heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_allocator() {
    const TRIM: libc::c_int = 64 << 20;
    const MMAP_ABOVE: libc::c_int = 32 << 20;
    // SAFETY: mallopt only sets allocator parameters; it is called before any other thread
    // exists. A refusal (return 0) leaves glibc's defaults, which work, only slower.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_ABOVE);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() {
    tune_allocator();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the async runtime");
    let result: Result<()> = runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => {
                let cfg = args.resolve()?;
                init_tracing(cfg.log_format == "json", SERVER_LOG);
                server::run(cfg, Default::default()).await
            }
            Command::Gateway(args) => {
                let cfg = args.resolve()?;
                init_tracing(cfg.log_format == "json", "info");
                gateway::run(cfg, Default::default()).await
            }
            Command::Topic { cmd, common } => {
                init_tracing(false, "warn");
                topic::run(cmd, &common).await
            }
            Command::Produce { args, common } => {
                init_tracing(false, "warn");
                produce::run(args, &common).await
            }
            Command::Consume { args, common } => {
                init_tracing(false, "warn");
                consume::run(args, &common).await
            }
            Command::Group { cmd, common } => {
                init_tracing(false, "warn");
                group::run(cmd, &common).await
            }
            Command::Cluster { cmd, common } => {
                init_tracing(false, "warn");
                cluster::run(cmd, &common).await
            }
            Command::Bench { cmd, common } => {
                init_tracing(false, "warn");
                bench::run(cmd, &common).await
            }
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_openraft_peer_rpc_failures_are_dropped() {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt;
        // Records the messages of the events that get through the filter.
        #[derive(Clone, Default)]
        struct Seen(Arc<Mutex<Vec<String>>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Seen {
            fn on_event(
                &self,
                e: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                self.0
                    .lock()
                    .unwrap()
                    .push(e.metadata().name().to_string() + " " + e.metadata().target());
            }
        }
        let seen = Seen::default();
        let quiet = tracing_subscriber::filter::filter_fn(|meta| !super::is_peer_rpc_failure(meta));
        let subscriber = tracing_subscriber::registry()
            .with(quiet)
            .with(seen.clone());
        tracing::subscriber::with_default(subscriber, || {
            let peer = "3";
            let err = "Unreachable node";
            // openraft's shapes (core/raft_core.rs): dropped...
            tracing::error!(target: "openraft::core::raft_core", error = %err, target = %peer, "while requesting vote");
            tracing::error!(target: "openraft::core::raft_core", { error = %err, target = %peer }, "timeout");
            // ...and kept: another raft_core error, a warning of the same shape, our own errors.
            tracing::error!(target: "openraft::core::raft_core", error = %err, "quit RaftCore::main on error");
            tracing::warn!(target: "openraft::core::raft_core", error = %err, target = %peer, "a warning");
            tracing::error!(target: "cascade_broker::raft", error = %err, target = %peer, "ours");
        });
        assert_eq!(
            seen.0.lock().unwrap().len(),
            3,
            "{:?}",
            seen.0.lock().unwrap()
        );
    }

    #[test]
    fn the_default_server_log_filter_parses() {
        // EnvFilter::new would drop a malformed directive without a word.
        tracing_subscriber::EnvFilter::try_new(super::SERVER_LOG).expect("SERVER_LOG parses");
    }
}
