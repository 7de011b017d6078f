//! The client-side subcommands of `cascade`: `topic`, `produce`, `consume`, `group`,
//! `cluster` and `bench`. Each talks to the cluster only through `cascade-client`, prints
//! tables for people and, with `--output json`, JSON for programs, and exits non-zero with a
//! one-line message on any error.

pub mod bench;
pub mod cluster;
pub mod consume;
pub mod group;
pub mod output;
pub mod produce;
pub mod topic;

use clap::Args;
use tokio::sync::watch;

/// Options every client command takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Brokers to start from (comma-separated host:port): the first that answers tells the
    /// client the rest of the cluster, and requests then go to each partition's leader.
    #[arg(
        long,
        env = "CASCADE_BROKERS",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub brokers: String,
    /// Output format: text (for people) or json (one object per line, for programs).
    #[arg(long, value_enum, default_value_t = output::Format::Text, global = true)]
    pub output: output::Format,
}

impl Common {
    /// Connects to the cluster.
    pub async fn connect(&self) -> anyhow::Result<cascade_client::Client> {
        Ok(cascade_client::Client::connect(&self.brokers).await?)
    }
}

/// A flag that turns true when the user asks a long-running command to stop: Ctrl-C, or
/// SIGTERM on Unix (what `timeout`, `docker stop` and Kubernetes send). The command finishes
/// the step it is in (prints what it fetched, commits, leaves its group) and exits 0. A second
/// request exits at once with status 130, for when finishing takes too long.
pub fn stop_requested() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        if !stop_signal().await {
            // Keep the sender: a closed channel would wake every waiter at once, for ever.
            std::future::pending::<()>().await;
        }
        let _ = tx.send(true);
        if stop_signal().await {
            eprintln!("stopping at once");
            std::process::exit(130);
        }
    });
    rx
}

/// Waits for Ctrl-C or SIGTERM; false if signals cannot be received here.
async fn stop_signal() -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return false;
        };
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.is_ok(),
            r = term.recv() => r.is_some(),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.is_ok()
    }
}
