//! The record batch codec shared by every part of Cascade.
//!
//! Events travel and rest in *batches* laid out exactly as Kafka's RecordBatch v2 (magic 2):
//! a 61-byte header ([`header`]) followed by varint-framed records ([`record`]). Producers
//! build batches with [`BatchBuilder`]; the broker checks them once with [`validate_batch`],
//! writes the base offset into the header (outside the CRC, so no re-encoding) and stores the
//! bytes as they are; fetches return stored bytes and consumers walk them with [`Batches`].
//! Using Kafka's public layout means the later Kafka-protocol listener serves fetches straight
//! from disk.
//!
//! This crate does no IO and allocates nothing while decoding: every view borrows from the
//! caller's buffer. Decoders never panic on arbitrary input (a property test and a fuzz target
//! hold them to it).

mod batch;
mod builder;
mod error;
pub mod header;
pub mod record;
pub mod varint;

pub use batch::{Batch, Batches, Records, validate_batch};
pub use builder::{BatchBuilder, Record};
pub use error::DecodeError;
pub use header::{BatchHeader, Compression, HEADER_LEN};
pub use record::{HeadersRef, RecordRef};

#[cfg(test)]
mod tests;
