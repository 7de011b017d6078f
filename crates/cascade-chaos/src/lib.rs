//! `cascade-chaos`: fault tests of a Cascade cluster running in Docker containers.
//!
//! A run starts N broker containers on a private network ([`docker`]), drives a workload of
//! idempotent producers and a consumer group through `cascade-client` that records every
//! record sent (producer, partition, send order, outcome) and every acknowledged commit
//! ([`workload`]), injects faults chosen by a seeded generator ([`faults`]), heals, reads every
//! partition back and every replica's log offline ([`replica`]), and hands it all to the
//! history checker ([`checker`]), whose verdict goes into the [`report`]. [`run`] ties the
//! steps together.
//!
//! The checker is pure and unit-tested with hand-made histories; everything else is exercised
//! by running the binary against a real image (see `docs/operations.md`).

pub mod checker;
pub mod docker;
pub mod faults;
pub mod pod;
pub mod replica;
pub mod report;
pub mod rollout;
pub mod run;
pub mod workload;
