//! Server configuration: command-line flags, each also read from `CASCADE_<FLAG>` in the
//! environment, and from a TOML file given with `--config`. Precedence: flag, then
//! environment, then file, then default. Everything is validated before anything starts.

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Flags of `cascade server`.
#[derive(Debug, Clone, Args, Default)]
pub struct ServerArgs {
    /// TOML file with any of the settings below (keys as the flag names with underscores,
    /// e.g. data_dir = "/var/lib/cascade"). Flags and environment override it.
    #[arg(long, env = "CASCADE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Where logs, metadata and offsets are stored. [default: ./cascade-data]
    #[arg(long, env = "CASCADE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Address of the HTTP listener (/healthz, /readyz, /metrics). [default: 0.0.0.0:8082]
    #[arg(long, env = "CASCADE_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,

    /// Do not start the HTTP listener.
    #[arg(long, env = "CASCADE_NO_HTTP")]
    pub no_http: bool,

    /// Address of the gRPC listener. [default: 0.0.0.0:50051]
    #[arg(long, env = "CASCADE_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,

    /// This node's id in the cluster. [default: 1]
    #[arg(long, env = "CASCADE_NODE_ID")]
    pub node_id: Option<u32>,

    /// gRPC address other nodes and clients use to reach this node. [default: the gRPC
    /// listener's address, with 127.0.0.1 for an unspecified host]
    #[arg(long, env = "CASCADE_ADVERTISED_GRPC_ADDR")]
    pub advertised_grpc_addr: Option<String>,

    /// Partitions of the internal __consumer_offsets topic (fixed when the node is first
    /// started). [default: 4]
    #[arg(long, env = "CASCADE_OFFSETS_PARTITIONS")]
    pub offsets_partitions: Option<u32>,

    /// How often retention deletes old segments, in seconds. [default: 30]
    #[arg(long, env = "CASCADE_RETENTION_CHECK_SECS")]
    pub retention_check_secs: Option<u64>,

    /// Largest gRPC request accepted, in bytes. [default: 16777216]
    #[arg(long, env = "CASCADE_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,

    /// Log format: "text" or "json". [default: text]
    #[arg(long, env = "CASCADE_LOG_FORMAT")]
    pub log_format: Option<String>,
}

/// The same settings as read from a TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    http_addr: Option<SocketAddr>,
    no_http: Option<bool>,
    grpc_addr: Option<SocketAddr>,
    node_id: Option<u32>,
    advertised_grpc_addr: Option<String>,
    offsets_partitions: Option<u32>,
    retention_check_secs: Option<u64>,
    max_request_bytes: Option<usize>,
    log_format: Option<String>,
}

/// Validated server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Data directory.
    pub data_dir: PathBuf,
    /// HTTP listener, if any.
    pub http_addr: Option<SocketAddr>,
    /// gRPC listener.
    pub grpc_addr: SocketAddr,
    /// Node id.
    pub node_id: u32,
    /// Advertised gRPC address.
    pub advertised_grpc_addr: String,
    /// Offsets topic partitions.
    pub offsets_partitions: u32,
    /// Retention check interval.
    pub retention_check: Duration,
    /// Largest request.
    pub max_request_bytes: usize,
    /// "text" or "json".
    pub log_format: String,
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

impl ServerArgs {
    /// Merges flags, environment and file, applies defaults and validates.
    pub fn resolve(&self) -> Result<ServerConfig> {
        let file = match &self.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let grpc_addr = self
            .grpc_addr
            .or(file.grpc_addr)
            .unwrap_or_else(|| "0.0.0.0:50051".parse().expect("valid"));
        let no_http = self.no_http || file.no_http.unwrap_or(false);
        let http_addr = (!no_http).then(|| {
            self.http_addr
                .or(file.http_addr)
                .unwrap_or_else(|| "0.0.0.0:8082".parse().expect("valid"))
        });
        let advertised = self
            .advertised_grpc_addr
            .clone()
            .or(file.advertised_grpc_addr)
            .unwrap_or_else(|| {
                if grpc_addr.ip().is_unspecified() {
                    format!("127.0.0.1:{}", grpc_addr.port())
                } else {
                    grpc_addr.to_string()
                }
            });
        let log_format = self
            .log_format
            .clone()
            .or(file.log_format)
            .unwrap_or_else(|| "text".into());
        if !matches!(log_format.as_str(), "text" | "json") {
            bail!("--log-format must be text or json, got {log_format:?}");
        }
        let node_id = self.node_id.or(file.node_id).unwrap_or(1);
        let offsets_partitions = self
            .offsets_partitions
            .or(file.offsets_partitions)
            .unwrap_or(4);
        if offsets_partitions == 0 || offsets_partitions > 1000 {
            bail!("--offsets-partitions must be between 1 and 1000");
        }
        let retention = self
            .retention_check_secs
            .or(file.retention_check_secs)
            .unwrap_or(30);
        if retention == 0 {
            bail!("--retention-check-secs must be > 0");
        }
        let max_request_bytes = self
            .max_request_bytes
            .or(file.max_request_bytes)
            .unwrap_or(16 << 20);
        if max_request_bytes < 1024 {
            bail!("--max-request-bytes must be at least 1024");
        }
        Ok(ServerConfig {
            data_dir: self
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./cascade-data")),
            http_addr,
            grpc_addr,
            node_id,
            advertised_grpc_addr: advertised,
            offsets_partitions,
            retention_check: Duration::from_secs(retention),
            max_request_bytes,
            log_format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_file_and_flags() {
        let c = ServerArgs::default().resolve().unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./cascade-data"));
        assert_eq!(c.grpc_addr.port(), 50051);
        assert_eq!(c.http_addr.unwrap().port(), 8082);
        assert_eq!(c.advertised_grpc_addr, "127.0.0.1:50051");

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "data_dir = \"/x\"\nnode_id = 7\nno_http = true\n").unwrap();
        let args = ServerArgs {
            config: Some(f.clone()),
            node_id: Some(9),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/x"));
        assert_eq!(c.node_id, 9, "flags beat the file");
        assert!(c.http_addr.is_none());

        std::fs::write(&f, "data_dirr = \"/x\"\n").unwrap();
        let err = ServerArgs {
            config: Some(f),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{err:#}").contains("data_dirr"), "{err:#}");
        let err = ServerArgs {
            log_format: Some("xml".into()),
            ..Default::default()
        }
        .resolve();
        assert!(err.is_err());
    }
}
