//! `cascade-chaos`: the command line of the fault-test driver. Parses flags, runs
//! [`cascade_chaos::run::run`], prints the report, and exits 0 (pass), 1 (violations or
//! problems found) or 2 (the harness could not run). Ctrl-C and SIGTERM drop the run, whose
//! cluster guard removes containers and network on the way out.

use anyhow::Result;
use cascade_chaos::run::{Options, run};
use clap::{Parser, ValueEnum};
use std::time::Duration;

/// Fault tests of a Cascade cluster in Docker: kill -9, pause, network isolation and full
/// restarts under an acks=all workload of idempotent producers, checked by a history checker
/// (nothing acknowledged lost, nothing stored twice or out of its producer's send order).
#[derive(Debug, Parser)]
#[command(name = "cascade-chaos", version)]
struct Args {
    /// Broker nodes: 3 or 5 for a cluster; 1 runs the single-node server (kill, pause and
    /// restart faults only).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=5))]
    nodes: u32,
    /// Seconds of fault injection [default: 60, or 1800 with --soak].
    #[arg(long)]
    duration: Option<u64>,
    /// Seed of the fault schedule [default: from the clock]; printed for reproduction.
    #[arg(long)]
    seed: Option<u64>,
    /// Image to run (must be present locally: build it with deploy/build-image.sh).
    #[arg(long, default_value = "cascade:latest")]
    image: String,
    /// A long run (30 minutes unless --duration says otherwise).
    #[arg(long)]
    soak: bool,
    /// Leave containers, network and data directory behind for debugging.
    #[arg(long)]
    keep: bool,
    /// Partitions of the workload topic.
    #[arg(long, default_value_t = 6)]
    partitions: u32,
    /// Concurrent producers (idempotent, acks=all, up to 5 requests in flight per partition,
    /// each writing every partition).
    #[arg(long, default_value_t = 4)]
    producers: u32,
    /// Members of the consumer group.
    #[arg(long, default_value_t = 2)]
    consumers: u32,
    /// Instead of faults, run the pods of the StatefulSet in this rendered manifest (a JSON
    /// list of objects: `kubectl kustomize deploy/kubernetes/overlays/eks` converted, as
    /// `.ci/kubernetes` does) and roll them as Kubernetes does, under the same workload and
    /// checks; `--nodes` is then the StatefulSet's replica count.
    #[arg(long)]
    statefulset: Option<std::path::PathBuf>,
    /// With --statefulset: rolling restarts (SIGTERM each pod, highest ordinal first, the next
    /// once it is ready again).
    #[arg(long, default_value_t = 1)]
    restarts: u32,
    /// With --statefulset: start the pods on this image, then upgrade them to --image in a
    /// rolling update.
    #[arg(long)]
    upgrade_from: Option<String>,
    /// Report format on standard output (progress always goes to standard error).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CASCADE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rollout = match &args.statefulset {
        None => None,
        Some(path) => {
            let pod = std::fs::read_to_string(path)
                .map_err(anyhow::Error::from)
                .and_then(|j| cascade_chaos::pod::PodTemplate::from_rendered(&j))
                .unwrap_or_else(|e| {
                    eprintln!("cascade-chaos: --statefulset {}: {e:#}", path.display());
                    std::process::exit(2);
                });
            Some(cascade_chaos::rollout::Rollout {
                pod,
                from_image: args.upgrade_from.clone(),
                restarts: args.restarts,
            })
        }
    };
    let nodes = rollout.as_ref().map_or(args.nodes, |r| r.pod.replicas);
    if !matches!(nodes, 1 | 3 | 5) {
        eprintln!("--nodes (or the StatefulSet's replicas) must be 1, 3 or 5");
        std::process::exit(2);
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id())
    });
    let opts = Options {
        nodes,
        duration: Duration::from_secs(args.duration.unwrap_or(if args.soak { 1800 } else { 60 })),
        seed,
        image: args.image,
        keep: args.keep,
        partitions: args.partitions.max(1),
        producers: args.producers.max(1),
        consumers: args.consumers,
        quiet_ms: (1000, 3000),
        hold_ms: (2000, 5000),
        rollout,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the async runtime");
    let result: Result<_> = runtime.block_on(async {
        tokio::select! {
            r = run(&opts) => r,
            _ = shutdown() => Err(anyhow::anyhow!("interrupted; containers and network removed")),
        }
    });
    // Workload tasks still waiting on a dead connection must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(report) => {
            match args.output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("the report serialises")
                ),
                Output::Text => print!("{}", report.summary()),
            }
            if args.output == Output::Json {
                eprint!("{}", report.summary());
            }
            std::process::exit(if report.ok { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("cascade-chaos: {e:#} (seed {seed})");
            std::process::exit(2);
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
