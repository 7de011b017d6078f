//! Test harness: real `cascade server` processes on 127.0.0.1 with OS-assigned ports.
#![allow(dead_code)]

pub mod errors;
pub mod proxy;

use cascade_client::Client;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `cascade` binary built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cascade")
}

/// A running server process.
pub struct Node {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub grpc: String,
    pub http: Option<String>,
    pub extra: Vec<String>,
    /// Environment variables the server process gets on top of the test's.
    pub env: Vec<(String, String)>,
    /// gRPC port to listen on (0: any; set after the first start so restarts keep the
    /// address a cluster knows this node by).
    pub grpc_port: u16,
}

impl Node {
    /// Starts a node on `dir` with extra flags.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Node {
        Self::start_on_port_with_env(dir, 0, extra, &[])
    }

    /// Starts a node on `dir` with extra flags and environment variables.
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Node {
        Self::start_on_port_with_env(dir, 0, extra, env)
    }

    /// Starts a node on `dir` whose gRPC listener is on `port` (0: any), with extra flags and
    /// environment variables.
    pub fn start_on_port_with_env(
        dir: &Path,
        port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Node {
        let mut node = Node {
            child: None,
            dir: dir.to_path_buf(),
            grpc: String::new(),
            http: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            grpc_port: port,
        };
        node.spawn();
        node
    }

    /// Starts a node on `dir` whose gRPC listener is on `port`.
    pub fn start_on_port(dir: &Path, port: u16, extra: &[&str]) -> Node {
        Self::start_on_port_with_env(dir, port, extra, &[])
    }

    /// Starts a node on `dir`.
    pub fn start(dir: &Path) -> Node {
        Self::start_with(dir, &[])
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(bin());
        cmd.arg("server")
            .arg("--data-dir")
            .arg(&self.dir)
            .args([
                "--grpc-addr",
                &format!("127.0.0.1:{}", self.grpc_port),
                "--http-addr",
                "127.0.0.1:0",
            ])
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(
                "CASCADE_LOG",
                std::env::var("CASCADE_TEST_LOG").unwrap_or_else(|_| "warn,openraft=off".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start cascade server");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "server did not become ready");
            let line = lines
                .next()
                .expect("server exited before it was ready")
                .expect("read stdout");
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["event"] == "ready"
            {
                self.grpc = v["grpc_addr"].as_str().expect("grpc addr").to_string();
                self.http = v["http_addr"].as_str().map(str::to_string);
                break;
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }

    /// A client of this node.
    pub async fn client(&self) -> Client {
        Client::connect(&self.grpc).await.expect("connect")
    }

    /// SIGKILL: a crash. Nothing is flushed or closed.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill");
            c.wait().expect("wait");
        }
    }

    /// SIGTERM and wait for a graceful exit; returns the exit status code. Blocks the calling
    /// thread: call it from a multi-threaded runtime so this process's client connections
    /// keep being served (the server waits for them to drain, up to its grace period).
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let pid = c.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "server did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the node again on the same directory and gRPC port (a cluster member keeps its
    /// address), with a new HTTP port.
    pub fn restart_same_port(&mut self) {
        assert!(self.child.is_none(), "stop or kill the node first");
        self.grpc_port = self
            .grpc
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("grpc port");
        self.spawn();
    }

    /// SIGSTOP / SIGCONT: a node that hangs without dying.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
    }

    /// Starts the node again on the same directory (new ports).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the node first");
        self.spawn();
    }

    /// Runs the CLI against this node; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        cli(&self.grpc, args, stdin)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Failure detection fast enough that cluster tests do not wait on the defaults.
pub const FAST: &[&str] = &["--heartbeat-ms", "200", "--session-timeout-ms", "1200"];

/// Starts one node per directory as a cluster: node 1 bootstraps, the others join through it.
pub fn start_cluster(dirs: &[tempfile::TempDir]) -> Vec<Node> {
    start_cluster_with(dirs, &[])
}

/// [`start_cluster`] with extra flags for every node.
pub fn start_cluster_with(dirs: &[tempfile::TempDir], extra: &[&str]) -> Vec<Node> {
    let mut nodes = Vec::new();
    let mut first = vec!["--node-id", "1"];
    first.extend_from_slice(FAST);
    first.extend_from_slice(extra);
    nodes.push(Node::start_with(dirs[0].path(), &first));
    let seed = nodes[0].grpc.clone();
    for (i, d) in dirs.iter().enumerate().skip(1) {
        let id = (i + 1).to_string();
        let mut args = vec!["--node-id", id.as_str(), "--seeds", seed.as_str()];
        args.extend_from_slice(FAST);
        args.extend_from_slice(extra);
        nodes.push(Node::start_with(d.path(), &args));
    }
    nodes
}

/// Starts `cascade server` on `dir` (gRPC on `grpc`, with `extra` flags) expecting it to refuse
/// to start: waits up to 30 s for it to exit and returns what it printed. Panics, naming
/// `what`, if it is still running then (it started when it should not have).
pub fn server_refusing_to_start(
    dir: &Path,
    grpc: &str,
    extra: &[String],
    what: &str,
) -> std::process::Output {
    let mut child = Command::new(bin())
        .arg("server")
        .arg("--data-dir")
        .arg(dir)
        .args(["--grpc-addr", grpc, "--http-addr", "127.0.0.1:0"])
        .args(extra)
        .env("CASCADE_LOG", "warn,openraft=off")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} started");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// Runs `cascade ARGS --brokers addr`, feeding `stdin`.
pub fn cli(brokers: &str, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(bin())
        .args(args)
        .args(["--brokers", brokers])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cascade");
    {
        let mut input = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).expect("write stdin");
        }
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One encoded batch of `values` with the given producer fields (id, epoch, base sequence).
pub fn producer_batch(values: &[&str], producer: (i64, i16, i32)) -> bytes::Bytes {
    let mut b = cascade_record::BatchBuilder::new();
    for v in values {
        b.push(cascade_record::Record {
            timestamp: 1,
            key: None,
            value: Some(v.as_bytes()),
            headers: &[],
        });
    }
    let mut bytes = b.finish();
    cascade_record::header::set_producer(&mut bytes, producer.0, producer.1, producer.2);
    bytes::Bytes::from(bytes)
}

/// Every (offset, value) of a partition, read with a partition consumer, checking density.
pub async fn read_partition(client: &Client, topic: &str, partition: u32) -> Vec<(u64, Vec<u8>)> {
    let end = client
        .list_offsets(
            topic,
            vec![partition],
            cascade_client::proto::OffsetSpec::Latest,
            0,
        )
        .await
        .expect("list offsets")[0]
        .offset;
    let mut c = cascade_client::PartitionConsumer::new(client.clone(), topic, partition, 0);
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    while c.position() < end {
        for r in c.poll(Duration::from_millis(100)).await.expect("poll") {
            assert_eq!(r.offset, out.len() as u64, "offsets must be dense from 0");
            out.push((r.offset, r.value.map(|v| v.to_vec()).unwrap_or_default()));
        }
    }
    out
}

/// A `cascade gateway` process (the REST API alone) in front of `brokers`.
pub struct Gateway {
    pub child: Child,
    pub http: String,
}

impl Gateway {
    /// Starts a gateway on an OS-assigned loopback port; returns once it is ready.
    pub fn start(brokers: &str) -> Gateway {
        let mut child = Command::new(bin())
            .args([
                "gateway",
                "--brokers",
                brokers,
                "--http-addr",
                "127.0.0.1:0",
            ])
            .env("CASCADE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start cascade gateway");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let http = loop {
            assert!(Instant::now() < deadline, "gateway did not become ready");
            let line = lines.next().expect("gateway exited").unwrap();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["event"] == "ready"
            {
                break v["http_addr"].as_str().unwrap().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Gateway { child, http }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A counter or gauge from a node's `/metrics` (0 if absent).
pub fn metric(node: &Node, name: &str) -> f64 {
    use std::io::{Read, Write};
    let Some(http) = &node.http else { return 0.0 };
    let Ok(mut s) = std::net::TcpStream::connect(http) else {
        return 0.0;
    };
    let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
