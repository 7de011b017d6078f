//! Cascade's broker: everything one node does with topics and groups.
//!
//! ```text
//!  gRPC (grpc::)  ──►  Broker ──► Metadata (commands → state; file today, Raft later)
//!                        │
//!                        ├──► TopicHandle ──► Partition actor thread ──► cascade_log::Log
//!                        │                      (appends, group commit)   ▲
//!                        │                                                 │ LogReader (fetch,
//!                        │                                                 │ no actor hop)
//!                        └──► GroupCoordinator ──► __consumer_offsets partitions
//! ```
//!
//! The logic (`broker`, `produce`, `fetch`, `group`) speaks in plain Rust types and
//! [`BrokerError`]; the `grpc` module is the only place that knows the wire types and maps
//! errors to statuses. Requests reach partitions only through [`Broker::partition`] and
//! metadata only through [`Metadata`], which is what lets the cluster take over placement and
//! leadership without rewriting the request paths.

pub mod broker;
pub mod controller;
pub mod epochs;
pub mod error;
pub mod fetch;
mod formation;
mod forward;
pub mod group;
pub mod grpc;
mod housekeeping;
pub mod lag;
pub mod metadata;
pub mod partition;
pub mod produce;
pub mod raft;
mod read_coalescer;
mod reconcile;
pub mod replication;
mod state_file;

pub use broker::{Broker, BrokerConfig, TopicHandle};
pub use error::{BrokerError, Result};
pub use metadata::{ClusterMetadata, Metadata, TopicMeta};
