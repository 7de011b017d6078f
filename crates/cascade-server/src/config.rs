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

    /// This node's id in the cluster (1 or more), or `auto`: the ordinal at the end of the
    /// host name plus one, as a Kubernetes StatefulSet names its pods (`cascade-0` → 1,
    /// `cascade-2` → 3). [default: 1]
    #[arg(long, env = "CASCADE_NODE_ID", value_parser = parse_node_id)]
    pub node_id: Option<NodeIdSpec>,

    /// Same as `--node-id auto`.
    #[arg(
        long,
        env = "CASCADE_NODE_ID_FROM_HOSTNAME",
        conflicts_with = "node_id"
    )]
    pub node_id_from_hostname: bool,

    /// gRPC address other nodes and clients use to reach this node. [default: the gRPC
    /// listener's address, with 127.0.0.1 for an unspecified host]
    #[arg(long, env = "CASCADE_ADVERTISED_GRPC_ADDR")]
    pub advertised_grpc_addr: Option<String>,

    /// Members of an existing cluster to join (host:port of their gRPC listeners, comma
    /// separated). Only used when this node has no cluster state yet; without seeds a new
    /// node bootstraps a new cluster of its own. A restarted node rejoins from its data.
    #[arg(long, env = "CASCADE_SEEDS", value_delimiter = ',')]
    pub seeds: Option<Vec<String>>,

    /// Heartbeat interval to the controller, in milliseconds. [default: 400]
    #[arg(long, env = "CASCADE_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,

    /// A broker silent this long (ms) is fenced: its partitions get new leaders and it
    /// leaves the in-sync sets until it is back. [default: 2500]
    #[arg(long, env = "CASCADE_SESSION_TIMEOUT_MS")]
    pub session_timeout_ms: Option<u64>,

    /// A follower that has not caught up with its leader for this long (ms) leaves the
    /// in-sync set. [default: 5000]
    #[arg(long, env = "CASCADE_REPLICA_LAG_MAX_MS")]
    pub replica_lag_max_ms: Option<u64>,

    /// Replication factor of __consumer_offsets, capped at the live brokers when it is
    /// created (on first use). [default: 3]
    #[arg(long, env = "CASCADE_OFFSETS_REPLICATION_FACTOR")]
    pub offsets_replication_factor: Option<u32>,

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

    /// Testing only: a control file through which a fault-injection harness makes this node's
    /// partition storage fail. Polled every 100 ms; its text is empty or `healthy`, `eio`
    /// (writes and fsyncs fail), `full` (writes fail with ENOSPC) or `slow MS` (each fsync
    /// waits MS first). Never set it in production.
    #[arg(long, env = "CASCADE_FAULT_FILE")]
    pub fault_file: Option<PathBuf>,

    /// Testing only: hold writes (partition logs, the metadata Raft files, the small state
    /// files) in process memory until they are fsynced, and undo at the next start the file
    /// creates, removals and renames whose directory was not fsynced (journaled in
    /// `<data-dir>/.lazyfs/`), so that killing the process loses what a power cut would
    /// (power-loss tests). Never set it in production.
    #[arg(long, env = "CASCADE_UNSYNCED_WRITES_IN_MEMORY")]
    pub unsynced_writes_in_memory: bool,
}

/// How `--node-id` names this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeIdSpec {
    /// A fixed id.
    Fixed(u32),
    /// From the host name's ordinal (see [`node_id_from_hostname`]).
    Auto,
}

fn parse_node_id(s: &str) -> std::result::Result<NodeIdSpec, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(NodeIdSpec::Auto);
    }
    match s.parse::<u32>() {
        Ok(0) => Err("node ids start at 1".into()),
        Ok(n) => Ok(NodeIdSpec::Fixed(n)),
        Err(_) => Err(format!(
            "expected a number (1 or more) or `auto`, got {s:?}"
        )),
    }
}

/// The node id a host name gives: its trailing ordinal plus one (`cascade-0` → 1,
/// `cascade-12.cascade-headless` → 13: only the first label counts).
pub fn node_id_from_hostname(host: &str) -> Result<u32> {
    let label = host.split('.').next().unwrap_or_default();
    let ordinal = label
        .rsplit_once('-')
        .map(|(_, n)| n)
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .with_context(|| {
            format!(
                "--node-id auto: the host name {host:?} does not end in -<ordinal> \
                 (as a StatefulSet's pods do: cascade-0, cascade-1, ...); give --node-id a number"
            )
        })?;
    let n: u32 = ordinal
        .parse()
        .with_context(|| format!("--node-id auto: ordinal {ordinal:?} of {host:?} is too large"))?;
    n.checked_add(1)
        .with_context(|| format!("--node-id auto: ordinal {n} of {host:?} is too large"))
}

/// This machine's host name: `$HOSTNAME` (set in every container), else the kernel's.
fn hostname() -> Result<String> {
    if let Ok(h) = std::env::var("HOSTNAME")
        && !h.trim().is_empty()
    {
        return Ok(h.trim().to_string());
    }
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("--node-id auto: reading the host name")?;
    Ok(h.trim().to_string())
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
    seeds: Option<Vec<String>>,
    heartbeat_ms: Option<u64>,
    session_timeout_ms: Option<u64>,
    replica_lag_max_ms: Option<u64>,
    offsets_replication_factor: Option<u32>,
}

/// Validated server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Cluster members to join when this node has no cluster state.
    pub seeds: Vec<String>,
    /// Heartbeat interval to the controller.
    pub heartbeat: Duration,
    /// Broker session timeout.
    pub session_timeout: Duration,
    /// Longest a follower may lag before leaving the in-sync set.
    pub replica_lag_max: Duration,
    /// Replication factor of `__consumer_offsets`.
    pub offsets_replication_factor: u32,
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
    /// Disk-fault control file (testing only).
    pub fault_file: Option<PathBuf>,
    /// Unsynced partition writes held in memory (testing only).
    pub unsynced_writes_in_memory: bool,
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
        let node_id = match (self.node_id, self.node_id_from_hostname) {
            (Some(NodeIdSpec::Auto), _) | (None, true) => node_id_from_hostname(&hostname()?)?,
            (Some(NodeIdSpec::Fixed(n)), _) => n,
            (None, false) => file.node_id.unwrap_or(1),
        };
        if node_id == 0 {
            bail!("node ids start at 1 (node_id = 0 in the config file)");
        }
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
        let seeds: Vec<String> = self
            .seeds
            .clone()
            .or(file.seeds)
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        for s in &seeds {
            if !s.contains(':') {
                bail!("--seeds entries must be host:port, got {s:?}");
            }
        }
        let heartbeat = self.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(400);
        let session = self
            .session_timeout_ms
            .or(file.session_timeout_ms)
            .unwrap_or(2500);
        if heartbeat == 0 || session < 2 * heartbeat {
            bail!(
                "--session-timeout-ms ({session}) must be at least twice --heartbeat-ms ({heartbeat}), which must be > 0"
            );
        }
        let lag = self
            .replica_lag_max_ms
            .or(file.replica_lag_max_ms)
            .unwrap_or(5000);
        if lag < 100 {
            bail!("--replica-lag-max-ms must be at least 100");
        }
        let offsets_rf = self
            .offsets_replication_factor
            .or(file.offsets_replication_factor)
            .unwrap_or(3);
        if offsets_rf == 0 {
            bail!("--offsets-replication-factor must be at least 1");
        }
        Ok(ServerConfig {
            seeds,
            heartbeat: Duration::from_millis(heartbeat),
            session_timeout: Duration::from_millis(session),
            replica_lag_max: Duration::from_millis(lag),
            offsets_replication_factor: offsets_rf,
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
            fault_file: self.fault_file.clone(),
            unsynced_writes_in_memory: self.unsynced_writes_in_memory,
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
            node_id: Some(NodeIdSpec::Fixed(9)),
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

    /// A StatefulSet's pod names give the node ids; anything else is refused with a way out.
    #[test]
    fn node_ids_come_from_the_pod_ordinal() {
        assert_eq!(node_id_from_hostname("cascade-0").unwrap(), 1);
        assert_eq!(node_id_from_hostname("cascade-2").unwrap(), 3);
        assert_eq!(
            node_id_from_hostname("my-events-12.cascade.ns.svc").unwrap(),
            13
        );
        for bad in [
            "cascade",
            "cascade-",
            "cascade-x1",
            "node-4294967295",
            "",
            "a.b-1",
        ] {
            let e = node_id_from_hostname(bad).expect_err(bad).to_string();
            assert!(e.contains("--node-id"), "{bad}: {e}");
        }
        assert_eq!(parse_node_id("auto"), Ok(NodeIdSpec::Auto));
        assert_eq!(parse_node_id("7"), Ok(NodeIdSpec::Fixed(7)));
        assert!(parse_node_id("0").is_err());
        assert!(parse_node_id("seven").is_err());
    }
}
