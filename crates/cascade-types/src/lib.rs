//! Plain data shared by Cascade's server and client crates: validated topic and group names,
//! per-topic configuration with Kafka's key names, and the key partitioner.
//!
//! No IO and no async here: everything is a value that parses and validates itself, so the CLI,
//! the client and the broker reject the same bad input with the same words.

mod config;
mod name;
mod partitioner;

pub use config::{FlushMode, TopicConfig, TopicConfigError};
pub use name::{NameError, validate_group_id, validate_topic_name};
pub use partitioner::{murmur2, partition_for_key};
