//! The cluster under test as Docker containers, driven through the `docker` command line.
//!
//! [`Cluster`] owns one private bridge network with its own /24 subnet and one container per
//! node at a fixed address (`.11`, `.12`, …), each advertising that address so the host
//! reaches every node directly. Every node's `/data` is a bind mount of `<data_root>/n<id>`,
//! so its logs can be read offline after the run.
//!
//! Invariants:
//! - Everything created is recorded in the [`Cluster`] before the next step runs, and
//!   dropping the [`Cluster`] removes it (containers, then the network) unless `keep` is set:
//!   cleanup happens on success, on error, on panic, and when Ctrl-C drops the run.
//! - [`Node::state`], [`Node::disk`] and [`Node::dropping_to`] mirror what was done to each
//!   node, so [`Cluster::heal_all`] undoes exactly the faults in force.
//! - Every `docker` call has a timeout: a wedged daemon fails the run rather than hanging it.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The gRPC port every node listens on.
pub const GRPC_PORT: u16 = 50051;
/// The HTTP port every node listens on (`/readyz`).
pub const HTTP_PORT: u16 = 8082;
/// A disk without an injected fault (the control file's text).
pub const DISK_HEALTHY: &str = "healthy";
/// Longest a single `docker` command may take.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `docker args...` and returns its standard output, or an error with its stderr.
///
/// The command runs on the blocking pool under coreutils' `timeout`, which kills a `docker`
/// that hangs. (Not tokio's process support: enabling that feature of the workspace's tokio
/// would rebuild every crate above tokio just for this binary.)
pub async fn docker(args: &[&str]) -> Result<String> {
    let out = run_docker(args).await?;
    if !out.status.success() {
        bail!(
            "docker {} failed{}: {}",
            args.join(" "),
            if out.status.code() == Some(124) {
                " (timed out)"
            } else {
                ""
            },
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

async fn run_docker(args: &[&str]) -> Result<std::process::Output> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("timeout")
            .arg(DOCKER_TIMEOUT.as_secs().to_string())
            .arg("docker")
            .args(&args)
            .stdin(Stdio::null())
            .output()
    })
    .await?
    .context("running docker under timeout (are docker and coreutils installed?)")
}

/// The same, blocking: for cleanup from `Drop`, where there is no runtime to await on.
fn docker_blocking(args: &[&str]) -> bool {
    std::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What has been done to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Running and connected.
    Running,
    /// Killed or stopped.
    Down,
    /// Stopped with SIGSTOP.
    Paused,
    /// Disconnected from the network.
    Disconnected,
}

/// One node's container.
#[derive(Debug, Clone)]
pub struct Node {
    /// Node id (1-based).
    pub id: u32,
    /// Container name.
    pub name: String,
    /// Its address on the private network.
    pub ip: String,
    /// What was last done to it.
    pub state: NodeState,
    /// A disk fault switched on through its control file (`healthy` when none).
    pub disk: String,
    /// Peers its outgoing packets are dropped to (an asymmetric partition).
    pub dropping_to: Vec<u32>,
    /// Its wall clock's offset as libfaketime reads it (`+0` when true).
    pub clock: String,
}

impl Node {
    /// The gRPC address clients and other nodes use.
    pub fn grpc_addr(&self) -> String {
        format!("{}:{GRPC_PORT}", self.ip)
    }
}

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Number of nodes.
    pub nodes: u32,
    /// Image to run.
    pub image: String,
    /// Host directory holding each node's data directory.
    pub data_root: PathBuf,
    /// Leave containers and network behind.
    pub keep: bool,
    /// Prefix of names and label value (unique per run).
    pub run_id: String,
    /// Run the pods of this rendered StatefulSet instead (see [`crate::pod`]): their names,
    /// headless DNS names, arguments and environment, all started at once.
    pub pod: Option<crate::pod::PodTemplate>,
}

/// A running cluster; see the module docs.
#[derive(Debug)]
pub struct Cluster {
    /// The network's name ("" until created).
    pub network: String,
    /// The subnet's first three octets, e.g. "172.30.17".
    pub subnet: String,
    /// The nodes, by id order.
    pub nodes: Vec<Node>,
    image: String,
    data_root: PathBuf,
    keep: bool,
    run_id: String,
    removed: bool,
    /// Where the image holds libfaketime (its `cascade.faketime` label), if it does: then
    /// every node preloads it, reading its wall clock's offset from `/data/clock`.
    pub faketime: Option<String>,
    /// The StatefulSet whose pods the nodes are, if any.
    pub pod: Option<crate::pod::PodTemplate>,
}

/// What a node's clock file holds when its clock is right.
pub const CLOCK_RIGHT: &str = "+0";

impl Cluster {
    /// Creates the network and containers, starts the first node, waits until it is ready,
    /// then starts the others and waits for them.
    pub async fn start(spec: &ClusterSpec) -> Result<Self> {
        let mut c = Self {
            network: String::new(),
            subnet: String::new(),
            nodes: Vec::new(),
            image: spec.image.clone(),
            data_root: spec.data_root.clone(),
            keep: spec.keep,
            run_id: spec.run_id.clone(),
            removed: false,
            faketime: None,
            pod: spec.pod.clone(),
        };
        let label = docker(&[
            "image",
            "inspect",
            "-f",
            "{{index .Config.Labels \"cascade.faketime\"}}",
            &spec.image,
        ])
        .await?;
        let label = label.trim();
        if !label.is_empty() && label != "<no value>" {
            c.faketime = Some(label.to_string());
        }
        c.create_network().await?;
        for id in 1..=spec.nodes {
            c.create_node(id).await?;
        }
        if c.pod.is_some() {
            // A StatefulSet with `podManagementPolicy: Parallel`: every pod at once, and the
            // cluster forms once they all answer.
            for id in 1..=spec.nodes {
                c.start_node(id).await?;
            }
            for id in 1..=spec.nodes {
                c.wait_ready(id, Duration::from_secs(90)).await?;
            }
            return Ok(c);
        }
        c.start_node(1).await?;
        c.wait_ready(1, Duration::from_secs(60)).await?;
        for id in 2..=spec.nodes {
            c.start_node(id).await?;
        }
        for id in 2..=spec.nodes {
            c.wait_ready(id, Duration::from_secs(60)).await?;
        }
        Ok(c)
    }

    /// Picks a free 172.30.x.0/24: the first few candidates derive from the process id, and a
    /// subnet some other network already uses makes `network create` fail, so try the next.
    async fn create_network(&mut self) -> Result<()> {
        let name = self.run_id.clone();
        let first = std::process::id() % 250;
        let mut last = None;
        for i in 0..20 {
            let octet = (first + i * 13) % 250 + 1;
            let subnet = format!("172.30.{octet}");
            let r = docker(&[
                "network",
                "create",
                "--driver",
                "bridge",
                "--subnet",
                &format!("{subnet}.0/24"),
                "--label",
                &format!("cascade-chaos={}", self.run_id),
                &name,
            ])
            .await;
            match r {
                Ok(_) => {
                    self.network = name;
                    self.subnet = subnet;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried at least once")).context("creating the test network")
    }

    async fn create_node(&mut self, id: u32) -> Result<()> {
        if let Some(t) = self.pod.clone() {
            return self.create_pod(id, &t).await;
        }
        let name = format!("{}-n{id}", self.run_id);
        let ip = format!("{}.{}", self.subnet, 10 + id);
        let data = self.data_dir(id);
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        // Run as the owner of the data root (the invoking user, who created it), so the files in
        // the bind mount are ours to read and delete afterwards.
        let meta = std::fs::metadata(&self.data_root)
            .with_context(|| format!("reading {}", self.data_root.display()))?;
        let user = format!("{}:{}", meta.uid(), meta.gid());
        let node_id = id.to_string();
        let advertised = format!("{ip}:{GRPC_PORT}");
        let seeds = format!("{}.11:{GRPC_PORT}", self.subnet);
        let mount = format!("{}:/data", data.display());
        let label = format!("cascade-chaos={}", self.run_id);
        // With libfaketime in the image, the node's wall clock (not its monotonic clock, as an
        // NTP step leaves it) reads the offset in its clock file, re-read every second.
        let clock = data.join("clock");
        std::fs::write(&clock, CLOCK_RIGHT)
            .with_context(|| format!("writing {}", clock.display()))?;
        let preload = self
            .faketime
            .as_ref()
            .map(|lib| format!("LD_PRELOAD={lib}"));
        // The nodes' log filter, when one is asked for (`CASCADE_NODE_LOG`, e.g.
        // `info,cascade_broker=debug`, to see the controller's decisions in `n<id>.log`).
        let node_log = std::env::var("CASCADE_NODE_LOG")
            .ok()
            .map(|f| format!("CASCADE_LOG={f}"));
        let mut env: Vec<&str> = Vec::new();
        if let Some(f) = &node_log {
            env.extend(["-e", f.as_str()]);
        }
        if let Some(p) = &preload {
            env.extend([
                "-e",
                p.as_str(),
                "-e",
                "FAKETIME_TIMESTAMP_FILE=/data/clock",
                "-e",
                "FAKETIME_DONT_FAKE_MONOTONIC=1",
                "-e",
                "FAKETIME_CACHE_DURATION=1",
            ]);
        }
        let mut args = vec![
            "create",
            "--name",
            &name,
            "--network",
            &self.network,
            "--ip",
            &ip,
            "--label",
            &label,
            "--user",
            &user,
            "-v",
            &mount,
            // Healthchecks would only add processes to a busy machine; readiness is probed here.
            "--no-healthcheck",
        ];
        args.extend(env);
        args.extend([
            &self.image,
            "server",
            "--node-id",
            &node_id,
            "--data-dir",
            "/data",
            "--grpc-addr",
            "0.0.0.0:50051",
            "--http-addr",
            "0.0.0.0:8082",
            "--advertised-grpc-addr",
            &advertised,
            // Partition storage fails on command: see `Cluster::set_disk`.
            "--fault-file",
            "/data/disk-fault",
            // Unsynced partition writes live in the process, so every SIGKILL is a power cut:
            // what was not fsynced is gone, as it would be from a page cache.
            "--unsynced-writes-in-memory",
        ]);
        // Node 1 bootstraps the cluster; the others join through it (and later rejoin from
        // their data, whichever nodes are up).
        if id > 1 {
            args.extend(["--seeds", &seeds]);
        }
        docker(&args).await?;
        self.record_node(id, name, ip);
        Ok(())
    }

    /// Creates node `id` as the StatefulSet's pod `id - 1`: its host name, its headless DNS
    /// names as network aliases, its expanded arguments and environment, a read-only root
    /// file system with a `/tmp` of its own and no capabilities, as the manifest asks. The
    /// data directory is a bind mount like every node's (so the checker reads the replicas
    /// afterwards), and the container runs as the invoking user for the same reason, not as
    /// the manifest's user 65532.
    async fn create_pod(&mut self, id: u32, t: &crate::pod::PodTemplate) -> Result<()> {
        let pod = t.pod(id - 1);
        let name = format!("{}-{}", self.run_id, pod.name);
        let ip = format!("{}.{}", self.subnet, 10 + id);
        let data = self.data_dir(id);
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let meta = std::fs::metadata(&self.data_root)
            .with_context(|| format!("reading {}", self.data_root.display()))?;
        let mut args: Vec<String> = [
            "create",
            "--name",
            &name,
            "--hostname",
            &pod.name,
            "--network",
            &self.network,
            "--ip",
            &ip,
            "--label",
            &format!("cascade-chaos={}", self.run_id),
            "--user",
            &format!("{}:{}", meta.uid(), meta.gid()),
            "-v",
            &format!("{}:/data", data.display()),
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--no-healthcheck",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for a in &pod.aliases {
            args.extend(["--network-alias".into(), a.clone()]);
        }
        let node_log = std::env::var("CASCADE_NODE_LOG").ok();
        for (k, v) in &pod.env {
            let v = match (k.as_str(), &node_log) {
                ("CASCADE_LOG", Some(f)) => f.clone(),
                _ => v.clone(),
            };
            args.extend(["-e".into(), format!("{k}={v}")]);
        }
        args.push(self.image.clone());
        args.extend(pod.args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&args).await?;
        self.record_node(id, name, ip);
        Ok(())
    }

    /// The name node `id` advertises (a pod's `<pod>.<service>.<ns>.svc:50051`), mapped to the
    /// address the host reaches it at, for a client on the host (see
    /// `Client::with_address_overrides`); empty unless the nodes are a StatefulSet's pods.
    pub fn advertised_overrides(&self) -> std::collections::HashMap<String, String> {
        let Some(t) = &self.pod else {
            return Default::default();
        };
        self.nodes
            .iter()
            .flat_map(|n| {
                let pod = t.pod(n.id - 1);
                let advertised = pod
                    .args
                    .iter()
                    .find_map(|a| {
                        a.strip_prefix("--advertised-grpc-addr=")
                            .map(str::to_string)
                    })
                    .or_else(|| {
                        pod.env
                            .iter()
                            .find(|(k, _)| k == "CASCADE_ADVERTISED_GRPC_ADDR")
                            .map(|(_, v)| v.clone())
                    });
                advertised.map(|a| (a, n.grpc_addr()))
            })
            .collect()
    }

    /// Stops node `id` as Kubernetes stops a pod: SIGTERM, then SIGKILL after the grace
    /// period (the manifest's, else 30 s). Returns whether it exited within the grace period.
    pub async fn stop_graceful(&mut self, id: u32) -> Result<bool> {
        let grace = self.pod.as_ref().map_or(30, |t| t.grace_secs);
        let name = self.node(id).name.clone();
        let started = Instant::now();
        docker(&["stop", "-t", &grace.to_string(), &name]).await?;
        self.set(id, NodeState::Down);
        Ok(started.elapsed() < Duration::from_secs(grace))
    }

    /// Replaces node `id`'s container with one of `image` (same name, address, data and
    /// arguments), as a StatefulSet's rolling update does; the node must be stopped. Nodes
    /// created later use `image` too.
    pub async fn replace_image(&mut self, id: u32, image: &str) -> Result<()> {
        let name = self.node(id).name.clone();
        // The old container's log goes with it: keep it beside the others.
        let old = self.logs(id).await.unwrap_or_default();
        let path = self.data_root.join(format!(
            "n{id}-before-{}.log",
            image.replace([':', '/'], "_")
        ));
        std::fs::write(&path, old).with_context(|| format!("writing {}", path.display()))?;
        docker(&["rm", "-f", &name]).await?;
        self.image = image.to_string();
        self.create_node(id).await
    }

    /// Records node `id`'s new container (replacing the old record, as after an upgrade).
    fn record_node(&mut self, id: u32, name: String, ip: String) {
        let node = Node {
            id,
            name,
            ip,
            state: NodeState::Down,
            disk: DISK_HEALTHY.into(),
            dropping_to: Vec::new(),
            clock: CLOCK_RIGHT.into(),
        };
        match self.nodes.get_mut(id as usize - 1) {
            Some(n) => *n = node,
            None => self.nodes.push(node),
        }
    }

    /// The host directory mounted as node `id`'s `/data`.
    pub fn data_dir(&self, id: u32) -> PathBuf {
        self.data_root.join(format!("n{id}"))
    }

    /// The node with this id.
    pub fn node(&self, id: u32) -> &Node {
        &self.nodes[id as usize - 1]
    }

    fn set(&mut self, id: u32, state: NodeState) {
        self.nodes[id as usize - 1].state = state;
    }

    /// Every node's gRPC address, comma-separated (a client's broker list).
    pub fn brokers(&self) -> String {
        self.nodes
            .iter()
            .map(Node::grpc_addr)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts a created or stopped node.
    pub async fn start_node(&mut self, id: u32) -> Result<()> {
        docker(&["start", &self.node(id).name.clone()]).await?;
        self.set(id, NodeState::Running);
        Ok(())
    }

    /// SIGKILL; with the nodes' in-memory layer for unsynced writes, a power cut of the node.
    pub async fn kill(&mut self, id: u32) -> Result<()> {
        docker(&["kill", "-s", "KILL", &self.node(id).name.clone()]).await?;
        self.set(id, NodeState::Down);
        Ok(())
    }

    /// Stops the node's broker process with SIGSTOP: it hangs with its connections open, as a
    /// stalled machine does. (SIGSTOP rather than `docker pause`: the cgroup freezer sometimes
    /// fails to freeze a process inside an fsync, which would fail the run for the harness's
    /// sake.)
    pub async fn pause(&mut self, id: u32) -> Result<()> {
        docker(&["kill", "-s", "STOP", &self.node(id).name.clone()]).await?;
        self.set(id, NodeState::Paused);
        Ok(())
    }

    /// Resumes a stopped node (SIGCONT).
    pub async fn unpause(&mut self, id: u32) -> Result<()> {
        docker(&["kill", "-s", "CONT", &self.node(id).name.clone()]).await?;
        self.set(id, NodeState::Running);
        Ok(())
    }

    /// Cuts the node off the network: from the other nodes and from the host alike.
    pub async fn disconnect(&mut self, id: u32) -> Result<()> {
        let name = self.node(id).name.clone();
        docker(&[
            "network",
            "disconnect",
            "--force",
            &self.network.clone(),
            &name,
        ])
        .await?;
        self.set(id, NodeState::Disconnected);
        Ok(())
    }

    /// Reconnects a node at its own address.
    pub async fn connect(&mut self, id: u32) -> Result<()> {
        let (name, ip) = (self.node(id).name.clone(), self.node(id).ip.clone());
        docker(&[
            "network",
            "connect",
            "--ip",
            &ip,
            &self.network.clone(),
            &name,
        ])
        .await?;
        self.set(id, NodeState::Running);
        Ok(())
    }

    /// Switches node `id`'s disk fault through its control file (`eio`, `full`, `slow MS` or
    /// [`DISK_HEALTHY`]; the server polls it every 100 ms, so the fault is certainly in force
    /// a moment after this returns).
    pub async fn set_disk(&mut self, id: u32, fault: &str) -> Result<()> {
        let path = self.data_dir(id).join("disk-fault");
        std::fs::write(&path, fault).with_context(|| format!("writing {}", path.display()))?;
        self.nodes[id as usize - 1].disk = fault.to_string();
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(())
    }

    /// Sets node `id`'s wall-clock offset (libfaketime's syntax: `+2h`, `-90s`, `+0`); the node
    /// re-reads it every second, so the step is in force a moment after this returns.
    pub async fn set_clock(&mut self, id: u32, offset: &str) -> Result<()> {
        let path = self.data_dir(id).join("clock");
        std::fs::write(&path, offset).with_context(|| format!("writing {}", path.display()))?;
        self.nodes[id as usize - 1].clock = offset.to_string();
        tokio::time::sleep(Duration::from_millis(1300)).await;
        Ok(())
    }

    /// Runs `iptables args...` inside node `id`'s network namespace (from the host, so the
    /// image needs no iptables and the container no extra capability).
    async fn iptables(&self, id: u32, args: &[&str]) -> Result<()> {
        let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &self.node(id).name]).await?;
        let pid = pid.trim().to_string();
        if pid == "0" {
            bail!("node {id} is not running: no network namespace to change");
        }
        let mut cmd = vec!["-t", pid.as_str(), "-n", "iptables"];
        cmd.extend_from_slice(args);
        let out = tokio::task::spawn_blocking({
            let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
            move || std::process::Command::new("nsenter").args(&cmd).output()
        })
        .await?
        .context("running nsenter (asymmetric partitions need root and nsenter)")?;
        if !out.status.success() {
            bail!(
                "iptables {args:?} in node {id}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Drops every packet node `from` sends to node `to`, while packets from `to` still
    /// arrive: `to` hears `from`'s requests time out and `from` hears `to`'s requests but
    /// cannot answer them (one direction of a link gone, as a bad switch port or a one-way
    /// firewall rule does).
    pub async fn drop_packets(&mut self, from: u32, to: u32) -> Result<()> {
        let ip = self.node(to).ip.clone();
        self.iptables(from, &["-A", "OUTPUT", "-d", &ip, "-j", "DROP"])
            .await?;
        self.nodes[from as usize - 1].dropping_to.push(to);
        Ok(())
    }

    /// Undoes whatever fault is in force on every node.
    pub async fn heal_all(&mut self) -> Result<()> {
        for id in 1..=self.nodes.len() as u32 {
            match self.node(id).state {
                NodeState::Running => {}
                NodeState::Down => self.start_node(id).await?,
                NodeState::Paused => self.unpause(id).await?,
                NodeState::Disconnected => self.connect(id).await?,
            }
            if !self.node(id).dropping_to.is_empty() {
                // A node restarted since got a new network namespace without the rules.
                self.iptables(id, &["-F", "OUTPUT"]).await?;
                self.nodes[id as usize - 1].dropping_to.clear();
            }
            if self.node(id).disk != DISK_HEALTHY {
                self.set_disk(id, DISK_HEALTHY).await?;
            }
            if self.node(id).clock != CLOCK_RIGHT {
                self.set_clock(id, CLOCK_RIGHT).await?;
            }
        }
        Ok(())
    }

    /// Stops every node gracefully (SIGTERM, then SIGKILL after 10 s), so logs are closed.
    pub async fn stop_all(&mut self) -> Result<()> {
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        let mut args = vec!["stop", "-t", "10"];
        args.extend(names.iter().map(String::as_str));
        docker(&args).await?;
        for id in 1..=self.nodes.len() as u32 {
            self.set(id, NodeState::Down);
        }
        Ok(())
    }

    /// Waits until node `id` answers `GET /readyz` with 200.
    pub async fn wait_ready(&self, id: u32, timeout: Duration) -> Result<()> {
        let addr = format!("{}:{HTTP_PORT}", self.node(id).ip);
        let deadline = Instant::now() + timeout;
        let mut polls = 0u32;
        loop {
            if http_ok(&addr, "/readyz").await {
                return Ok(());
            }
            polls += 1;
            // A node that exited (bad flags, a refused data directory) will never be ready:
            // say so now rather than after the whole timeout.
            let exited = polls.is_multiple_of(10)
                && docker(&["inspect", "-f", "{{.State.Running}}", &self.node(id).name])
                    .await
                    .is_ok_and(|r| r == "false");
            if exited || Instant::now() >= deadline {
                let logs = self.logs(id).await.unwrap_or_default();
                let tail: Vec<&str> = logs.lines().rev().take(20).collect();
                bail!(
                    "node {id} ({addr}) {}; last log lines:\n{}",
                    if exited {
                        "exited".to_string()
                    } else {
                        format!("not ready after {timeout:?}")
                    },
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The node's stdout and stderr so far.
    pub async fn logs(&self, id: u32) -> Result<String> {
        let out = run_docker(&["logs", &self.node(id).name]).await?;
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok(s)
    }

    /// Writes every node's container log to `<dir>/n<id>.log`.
    pub async fn save_logs(&self, dir: &Path) -> Result<()> {
        for n in &self.nodes {
            let text = self.logs(n.id).await?;
            std::fs::write(dir.join(format!("n{}.log", n.id)), text)?;
        }
        Ok(())
    }

    /// Removes containers and network now (idempotent); with `keep`, only says what is left.
    pub fn remove(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        if self.keep {
            eprintln!(
                "--keep: left containers {} and network {} (data in {}); remove them with:\n  \
                 docker rm -f $(docker ps -aq --filter label=cascade-chaos={}) && docker network rm {}",
                self.nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                self.network,
                self.data_root.display(),
                self.run_id,
                self.network
            );
            return;
        }
        for n in &self.nodes {
            // A paused container cannot always be removed at once: thaw it first.
            if n.state == NodeState::Paused {
                docker_blocking(&["kill", "-s", "CONT", &n.name]);
            }
            docker_blocking(&["rm", "-f", "-v", &n.name]);
        }
        if !self.network.is_empty() {
            docker_blocking(&["network", "rm", &self.network]);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.remove();
    }
}

/// `GET path` over plain HTTP/1.0; true on a 200 answer within a second.
pub async fn http_ok(addr: &str, path: &str) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = vec![0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        let head = String::from_utf8_lossy(&buf[..n]).into_owned();
        Some(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}

/// Whether an image is present locally (nothing can be pulled).
pub async fn image_exists(image: &str) -> bool {
    docker(&["image", "inspect", "--format", "{{.Id}}", image])
        .await
        .is_ok()
}
