//! The `cascade` binary's server side: configuration (flags, environment, TOML file) and the
//! node runtime that ties the broker, the gRPC services and the HTTP listener (REST API and
//! ops endpoints) together, and the stateless REST gateway.

pub mod config;
pub mod gateway;
pub mod server;
