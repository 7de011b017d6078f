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
