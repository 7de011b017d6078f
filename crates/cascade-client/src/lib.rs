//! The Rust client for Cascade.
//!
//! - [`Client`]: a cluster-aware connection and every call of the public gRPC API (admin,
//!   records, groups, consumer instances). It starts from seed addresses, caches the
//!   cluster's metadata, sends each partition's requests to its leader and each group's to
//!   its coordinator, and retries leader changes, elections, restarts and short in-sync
//!   replica sets with bounded exponential backoff (module `retry`; budget
//!   [`Client::with_retry_budget`]). What is retried and what that guarantees (at-least-once
//!   for produce) is in [`Client`]'s docs and docs/grpc-api.md, "Talking to a cluster".
//! - [`Producer`]: batching per partition (size and linger), Kafka-compatible key partitioning,
//!   requests in flight, each batch to its partition's leader.
//! - [`PartitionConsumer`] and [`GroupConsumer`]: read one partition, or join a consumer group
//!   with server-side assignment, heartbeats and automatic or manual commits; both follow
//!   leader and coordinator moves.
//! - [`ClusterMetadata`]: the routing view ([`Client::metadata`], [`Client::leader_of`]).
//! - Errors are typed: [`Error`] (alias of [`ClientError`]), with the server's reason.
//!
//! ```no_run
//! # async fn demo() -> cascade_client::Result<()> {
//! use cascade_client::{Client, Producer, ProducerConfig, ProducerRecord};
//! let client = Client::connect("127.0.0.1:50051").await?;
//! client.create_topic("orders", 3, 1, Default::default()).await?;
//! let producer = Producer::new(client.clone(), "orders", ProducerConfig::default()).await?;
//! let at = producer.send(ProducerRecord::keyed("customer-7", "hello")).await?;
//! println!("written at {}/{}", at.partition, at.offset);
//! # Ok(()) }
//! ```

mod client;
mod consumer;
mod error;
mod instances;
mod metadata;
mod producer;
pub mod retry;

pub use cascade_proto::LeaderHint;
pub use cascade_proto::v1 as proto;
pub use client::{Acks, Client, Produced};
pub use consumer::{
    ConsumedRecord, GroupConfig, GroupConsumer, OffsetReset, PartitionConsumer, decode_records,
};
pub use error::{ClientError, ClientError as Error, Result};
pub use metadata::{BrokerInfo, ClusterMetadata, PartitionInfo};
pub use producer::{Producer, ProducerConfig, ProducerRecord, RecordMetadata};
