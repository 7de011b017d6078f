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
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a broker node (with no flags: a single-node cluster in ./cascade-data).
    Server(ServerArgs),
    /// Run a stateless REST gateway in front of the brokers given with --brokers.
    Gateway(gateway::GatewayArgs),
    /// Create, list, describe, alter and delete topics.
    Topic {
        #[command(subcommand)]
        cmd: topic::TopicCmd,
    },
    /// Write lines of standard input to a topic, one event per line.
    Produce {
        #[command(flatten)]
        args: produce::ProduceArgs,
    },
    /// Print a topic's events to standard output.
    Consume {
        #[command(flatten)]
        args: consume::ConsumeArgs,
    },
    /// Inspect consumer groups, their lag, and reset their offsets.
    Group {
        #[command(subcommand)]
        cmd: group::GroupCmd,
    },
    /// Show the cluster's nodes and partition health.
    Cluster {
        #[command(subcommand)]
        cmd: cluster::ClusterCmd,
    },
    /// Measure throughput and latency.
    Bench {
        #[command(subcommand)]
        cmd: bench::BenchCmd,
    },
}

fn init_tracing(json: bool, default: &str) {
    let filter = EnvFilter::try_from_env("CASCADE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only for a person at a terminal: in a file, `docker logs` or a log collector the
    // escape codes are noise. NO_COLOR (no-color.org) turns it off everywhere.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() {
    let cli = Cli::parse();
    let common = cli.common;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the async runtime");
    let result: Result<()> = runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => {
                let cfg = args.resolve()?;
                init_tracing(cfg.log_format == "json", "info");
                server::run(cfg, Default::default()).await
            }
            Command::Gateway(args) => {
                let cfg = args.resolve(&common.brokers)?;
                init_tracing(cfg.log_format == "json", "info");
                gateway::run(cfg, Default::default()).await
            }
            Command::Topic { cmd } => {
                init_tracing(false, "warn");
                topic::run(cmd, &common).await
            }
            Command::Produce { args } => {
                init_tracing(false, "warn");
                produce::run(args, &common).await
            }
            Command::Consume { args } => {
                init_tracing(false, "warn");
                consume::run(args, &common).await
            }
            Command::Group { cmd } => {
                init_tracing(false, "warn");
                group::run(cmd, &common).await
            }
            Command::Cluster { cmd } => {
                init_tracing(false, "warn");
                cluster::run(cmd, &common).await
            }
            Command::Bench { cmd } => {
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
