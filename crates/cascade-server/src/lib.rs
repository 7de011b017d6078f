//! The `cascade` binary's server side: configuration (flags, environment, TOML file) and the
//! node runtime that ties the broker, the gRPC services and the HTTP listener together.

pub mod config;
pub mod server;
