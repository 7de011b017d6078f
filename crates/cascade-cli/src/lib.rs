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
    // Registered here, before this returns, not when the task below first runs: a signal
    // arriving in between would otherwise still kill the process the default way.
    let mut signals = StopSignals::register();
    tokio::spawn(async move {
        if !signals.next().await {
            // Keep the sender: a closed channel would wake every waiter at once, for ever.
            std::future::pending::<()>().await;
        }
        let _ = tx.send(true);
        if signals.next().await {
            eprintln!("stopping at once");
            std::process::exit(130);
        }
    });
    rx
}

/// Ctrl-C (SIGINT) and, on Unix, SIGTERM, registered with the runtime.
struct StopSignals {
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                int: signal(SignalKind::interrupt()).ok(),
                term: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Waits for the next stop signal; false if signals cannot be received here.
    async fn next(&mut self) -> bool {
        #[cfg(unix)]
        {
            match (&mut self.int, &mut self.term) {
                (Some(int), Some(term)) => tokio::select! {
                    r = int.recv() => r.is_some(),
                    r = term.recv() => r.is_some(),
                },
                (Some(int), None) => int.recv().await.is_some(),
                (None, Some(term)) => term.recv().await.is_some(),
                (None, None) => false,
            }
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c().await.is_ok()
        }
    }
}
