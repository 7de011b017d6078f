//! The `cascade` binary's client commands against a real server: topic administration in text
//! and JSON, produce from standard input with keys and headers, consume by partition, by offset
//! and in a group (with committed offsets and resets), cluster status, error exits, `--help`
//! everywhere, and the data-directory lock.

mod common;

use cascade_types::partition_for_key;
use common::{Node, bin};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the CLI and requires success; returns stdout.
#[track_caller]
fn ok(node: &Node, args: &[&str], stdin: Option<&str>) -> String {
    let (code, out, err) = node.cli(args, stdin);
    assert_eq!(code, 0, "cascade {args:?} failed: {err}");
    out
}

/// One JSON value per non-empty line.
#[track_caller]
fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[track_caller]
fn json_one(out: &str) -> Value {
    let mut v = json_lines(out);
    assert_eq!(v.len(), 1, "expected one JSON line: {out}");
    v.pop().unwrap()
}

/// Runs the CLI expecting failure: a non-zero exit, nothing on stdout, and exactly one line on
/// stderr starting with "error:"; returns that line.
#[track_caller]
fn fails(node: &Node, args: &[&str], stdin: Option<&str>) -> String {
    let (code, out, err) = node.cli(args, stdin);
    assert_ne!(code, 0, "cascade {args:?} should fail; stdout: {out}");
    assert!(out.trim().is_empty(), "cascade {args:?} printed: {out}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "cascade {args:?}: one line on stderr, got: {err}"
    );
    assert!(lines[0].starts_with("error:"), "cascade {args:?}: {err}");
    lines[0].to_string()
}

fn topic_names(node: &Node, internal: bool) -> BTreeSet<String> {
    let mut args = vec!["topic", "list", "--output", "json"];
    if internal {
        args.push("--internal");
    }
    json_lines(&ok(node, &args, None))
        .iter()
        .map(|t| t["name"].as_str().expect("name").to_string())
        .collect()
}

fn describe(node: &Node, topic: &str) -> Value {
    json_one(&ok(
        node,
        &["topic", "describe", topic, "--output", "json"],
        None,
    ))
}

#[test]
fn topic_commands_in_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());

    let out = ok(
        &node,
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "3",
            "--config",
            "retention.ms=3600000",
        ],
        None,
    );
    assert!(
        out.contains("Created topic orders with 3 partition(s)."),
        "{out}"
    );
    let t = json_one(&ok(
        &node,
        &[
            "topic",
            "create",
            "json-t",
            "-p",
            "2",
            "-c",
            "flush=never",
            "--output",
            "json",
        ],
        None,
    ));
    assert_eq!(t["name"], "json-t");
    assert_eq!(t["replication_factor"], 1);
    assert_eq!(t["internal"], false);
    assert!(!t["topic_id"].as_str().unwrap().is_empty());
    assert_eq!(t["configs"]["flush"], "never");
    assert_eq!(
        t["configs"]["retention.ms"], "604800000",
        "defaults listed too"
    );
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p["partition"], i);
        assert_eq!(p["leader"], 1);
        assert_eq!(p["replicas"], serde_json::json!([1]));
        assert_eq!(p["isr"], serde_json::json!([1]));
        assert_eq!(p["high_watermark"], 0);
        assert_eq!(p["log_start_offset"], 0);
        assert_eq!(p["log_end_offset"], 0);
        assert!(p["size_bytes"].is_u64());
        assert!(p["leader_epoch"].is_i64());
    }
    // --if-not-exists makes a duplicate a success that changes nothing.
    let out = ok(
        &node,
        &["topic", "create", "orders", "-p", "7", "--if-not-exists"],
        None,
    );
    assert!(out.contains("already exists"), "{out}");
    assert_eq!(
        describe(&node, "orders")["partitions"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // list, text and JSON, with and without internal topics.
    let text = ok(&node, &["topic", "list"], None);
    assert!(text.lines().next().unwrap().starts_with("TOPIC"), "{text}");
    assert!(text.contains("orders") && text.contains("json-t"), "{text}");
    assert!(!text.contains("__consumer_offsets"), "{text}");
    let listed = json_lines(&ok(&node, &["topic", "list", "--output", "json"], None));
    let by_name: BTreeMap<&str, &Value> = listed
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t))
        .collect();
    assert_eq!(
        by_name.keys().copied().collect::<Vec<_>>(),
        ["json-t", "orders"]
    );
    assert_eq!(by_name["orders"]["partitions"], 3);
    assert_eq!(by_name["orders"]["replication_factor"], 1);
    assert_eq!(by_name["orders"]["internal"], false);
    assert!(!topic_names(&node, true).contains("__consumer_offsets"));
    // The internal offsets topic is created on the first group request.
    fails(&node, &["group", "describe", "nobody"], None);
    assert!(topic_names(&node, true).contains("__consumer_offsets"));

    // describe, text and JSON.
    let text = ok(&node, &["topic", "describe", "orders"], None);
    assert!(text.contains("Topic: orders"), "{text}");
    assert!(text.contains("partitions: 3"), "{text}");
    assert!(text.contains("retention.ms=3600000"), "{text}");
    assert!(text.contains("HIGH-WATERMARK"), "{text}");
    let d = describe(&node, "orders");
    assert_eq!(d["configs"]["retention.ms"], "3600000");
    assert_eq!(d["partitions"].as_array().unwrap().len(), 3);

    // alter: settings, partitions, reset.
    let a = json_one(&ok(
        &node,
        &[
            "topic",
            "alter",
            "orders",
            "--config",
            "retention.ms=1000",
            "--config",
            "segment.bytes=1048576",
            "--output",
            "json",
        ],
        None,
    ));
    assert_eq!(a["configs"]["retention.ms"], "1000");
    assert_eq!(a["configs"]["segment.bytes"], "1048576");
    let a = json_one(&ok(
        &node,
        &[
            "topic",
            "alter",
            "orders",
            "--partitions",
            "5",
            "--output",
            "json",
        ],
        None,
    ));
    assert_eq!(a["partitions"].as_array().unwrap().len(), 5);
    let text = ok(
        &node,
        &["topic", "alter", "orders", "--reset-config", "retention.ms"],
        None,
    );
    assert!(text.contains("Topic: orders"), "{text}");
    let d = describe(&node, "orders");
    assert_eq!(
        d["configs"]["retention.ms"], "604800000",
        "reset to the default"
    );
    assert_eq!(d["configs"]["segment.bytes"], "1048576", "others kept");
    assert_eq!(d["partitions"].as_array().unwrap().len(), 5);

    // delete, JSON and text.
    let del = json_one(&ok(
        &node,
        &["topic", "delete", "json-t", "--output", "json"],
        None,
    ));
    assert_eq!(del, serde_json::json!({"deleted": "json-t"}));
    let out = ok(&node, &["topic", "delete", "orders"], None);
    assert!(out.contains("Deleted topic orders."), "{out}");
    assert!(topic_names(&node, false).is_empty());
    let e = fails(&node, &["topic", "describe", "orders"], None);
    assert!(e.contains("unknown topic"), "{e}");
}

/// The consumed records of one `consume --output json` run, checking every field's shape.
fn consumed(out: &str, topic: &str) -> Vec<Value> {
    let recs = json_lines(out);
    for r in &recs {
        let obj = r.as_object().expect("object");
        let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from([
                "topic",
                "partition",
                "offset",
                "timestamp",
                "key",
                "value",
                "headers"
            ]),
            "{r}"
        );
        assert_eq!(r["topic"], topic);
        assert!(r["partition"].is_u64() && r["offset"].is_u64(), "{r}");
        assert!(r["timestamp"].as_i64().unwrap() > 1_500_000_000_000, "{r}");
        assert!(r["key"].is_string() || r["key"].is_null(), "{r}");
        assert!(r["value"].is_string(), "{r}");
        assert!(r["headers"].is_object(), "{r}");
    }
    recs
}

fn at(r: &Value) -> (u64, u64) {
    (
        r["partition"].as_u64().unwrap(),
        r["offset"].as_u64().unwrap(),
    )
}

#[test]
fn produce_from_stdin_and_consume() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    ok(&node, &["topic", "create", "keyed", "-p", "4"], None);

    let mut input = String::new();
    for i in 0..40 {
        input.push_str(&format!("user-{i}:value {i}: with a colon\n"));
    }
    input.push_str("a line without a separator\n");
    let out = ok(
        &node,
        &[
            "produce",
            "keyed",
            "--key-separator",
            ":",
            "--header",
            "source=cli-test",
            "--output",
            "json",
        ],
        Some(&input),
    );
    assert_eq!(
        json_one(&out),
        serde_json::json!({"topic": "keyed", "produced": 41})
    );

    // Per partition, from the beginning: every keyed line is on its key's partition.
    let mut all: BTreeMap<(u64, u64), Value> = BTreeMap::new();
    for p in 0..4u32 {
        let out = ok(
            &node,
            &[
                "consume",
                "keyed",
                "--partition",
                &p.to_string(),
                "--from-beginning",
                "--output",
                "json",
            ],
            None,
        );
        let recs = consumed(&out, "keyed");
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(r["partition"], p);
            assert_eq!(r["offset"], i, "dense offsets from 0");
            assert_eq!(r["headers"], serde_json::json!({"source": "cli-test"}));
            match r["key"].as_str() {
                Some(key) => {
                    assert_eq!(partition_for_key(key.as_bytes(), 4), p, "{r}");
                    let n = key.strip_prefix("user-").expect("key");
                    assert_eq!(
                        r["value"],
                        format!("value {n}: with a colon"),
                        "split at the first separator"
                    );
                }
                None => assert_eq!(r["value"], "a line without a separator"),
            }
            assert!(all.insert(at(r), r.clone()).is_none());
        }
    }
    assert_eq!(all.len(), 41, "every line once");
    let keys: BTreeSet<&str> = all.values().filter_map(|r| r["key"].as_str()).collect();
    assert_eq!(keys.len(), 40);
    assert_eq!(all.values().filter(|r| r["key"].is_null()).count(), 1);

    // Every partition at once.
    let out = ok(
        &node,
        &["consume", "keyed", "--from-beginning", "--output", "json"],
        None,
    );
    let everything: BTreeMap<(u64, u64), Value> = consumed(&out, "keyed")
        .into_iter()
        .map(|r| (at(&r), r))
        .collect();
    assert_eq!(everything, all);

    // --max-messages.
    let out = ok(
        &node,
        &[
            "consume",
            "keyed",
            "--from-beginning",
            "--max-messages",
            "5",
            "--output",
            "json",
        ],
        None,
    );
    assert_eq!(consumed(&out, "keyed").len(), 5);
    // --offset with --partition starts there.
    let p0 = all.keys().filter(|(p, _)| *p == 0).count() as u64;
    assert!(p0 >= 3, "partition 0 has a few records");
    let out = ok(
        &node,
        &[
            "consume",
            "keyed",
            "--partition",
            "0",
            "--offset",
            "2",
            "--output",
            "json",
        ],
        None,
    );
    let recs = consumed(&out, "keyed");
    assert_eq!(recs.len() as u64, p0 - 2);
    assert_eq!(recs[0]["offset"], 2);
    // Text output with the key.
    let out = ok(
        &node,
        &[
            "consume",
            "keyed",
            "--partition",
            "0",
            "--from-beginning",
            "--key-separator",
            "=",
        ],
        None,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len() as u64, p0);
    for (i, line) in lines.iter().enumerate() {
        let r = &all[&(0, i as u64)];
        assert_eq!(
            *line,
            format!(
                "{}={}",
                r["key"].as_str().unwrap_or(""),
                r["value"].as_str().unwrap()
            )
        );
    }
    // Without --from-beginning only new events are read: there are none.
    let out = ok(&node, &["consume", "keyed", "--output", "json"], None);
    assert!(out.trim().is_empty(), "{out}");

    // --partition on produce.
    ok(
        &node,
        &[
            "produce",
            "keyed",
            "--partition",
            "3",
            "--key-separator",
            ":",
        ],
        Some("user-0:pinned\n"),
    );
    let out = ok(
        &node,
        &[
            "consume",
            "keyed",
            "--partition",
            "3",
            "--from-beginning",
            "--output",
            "json",
        ],
        None,
    );
    let last = consumed(&out, "keyed").pop().unwrap();
    assert_eq!(
        (last["key"].as_str(), last["value"].as_str()),
        (Some("user-0"), Some("pinned"))
    );
}

fn group_describe(node: &Node, group: &str) -> Value {
    json_one(&ok(
        node,
        &["group", "describe", group, "--output", "json"],
        None,
    ))
}

/// Starts `cascade ARGS --brokers ...` with its output captured, for a command that runs until
/// it is stopped.
fn spawn_cli(node: &Node, args: &[&str]) -> std::process::Child {
    Command::new(bin())
        .args(args)
        .args(["--brokers", node.grpc.as_str()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cascade")
}

/// Reads lines of `child`'s stdout until `n` arrived (on a thread, so a stuck child fails the
/// test instead of hanging it).
fn read_lines(
    child: &mut std::process::Child,
    n: usize,
) -> (Vec<String>, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let lines = (0..n)
        .map(|_| {
            rx.recv_timeout(Duration::from_secs(20))
                .expect("an event line in time")
        })
        .collect();
    (lines, rx)
}

/// Sends `signal` (e.g. "INT") to `child` and waits for its exit status.
fn signal_and_wait(child: &mut std::process::Child, signal: &str) -> Option<i32> {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args([&format!("-{signal}"), pid.as_str()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIG{signal}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctrl_c_stops_a_following_consumer_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    ok(&node, &["topic", "create", "live", "-p", "2"], None);
    let input: String = (0..10).map(|i| format!("event {i}\n")).collect();
    ok(&node, &["produce", "live"], Some(&input));
    // Partition 0 must hold something to print: the printed lines show the consumer is up
    // (an idempotent producer may have sent every unkeyed event to partition 1).
    ok(
        &node,
        &["produce", "live", "--partition", "0"],
        Some("on zero\n"),
    );

    // One partition, followed: Ctrl-C ends it with status 0 after what it printed.
    let mut follow = spawn_cli(
        &node,
        &[
            "consume",
            "live",
            "--from-beginning",
            "--partition",
            "0",
            "--follow",
        ],
    );
    let high = describe(&node, "live")["partitions"][0]["high_watermark"]
        .as_u64()
        .unwrap() as usize;
    let (_, _rx) = read_lines(&mut follow, high);
    assert_eq!(signal_and_wait(&mut follow, "INT"), Some(0));

    // A group member, followed: Ctrl-C commits what it printed and leaves the group at once
    // (no member left behind until its session times out).
    let mut member = spawn_cli(
        &node,
        &[
            "consume",
            "live",
            "--group",
            "g",
            "--from-beginning",
            "--follow",
        ],
    );
    let (printed, _rx) = read_lines(&mut member, 10);
    assert_eq!(printed.len(), 10);
    assert_eq!(signal_and_wait(&mut member, "INT"), Some(0));
    let d = group_describe(&node, "g");
    assert_eq!(d["members"], serde_json::json!([]), "{d}");
    assert_eq!(d["total_lag"], 0, "{d}");

    // SIGTERM (timeout, docker stop, Kubernetes) is handled the same way.
    let mut member = spawn_cli(&node, &["consume", "live", "--group", "g2", "--follow"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(signal_and_wait(&mut member, "TERM"), Some(0));
    assert_eq!(
        group_describe(&node, "g2")["members"],
        serde_json::json!([])
    );
}

#[test]
fn group_consume_commits_and_resets() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    ok(&node, &["topic", "create", "gt", "-p", "2"], None);
    let input: String = (0..20).map(|i| format!("event {i}\n")).collect();
    ok(&node, &["produce", "gt"], Some(&input));
    let values: BTreeSet<String> = (0..20).map(|i| format!("event {i}")).collect();
    let group_consume = |group: &str, extra: &[&str]| -> Vec<Value> {
        let mut args = vec![
            "consume",
            "gt",
            "--group",
            group,
            "--from-beginning",
            "--output",
            "json",
        ];
        args.extend_from_slice(extra);
        consumed(&ok(&node, &args, None), "gt")
    };
    let value_set = |recs: &[Value]| -> BTreeSet<String> {
        recs.iter()
            .map(|r| r["value"].as_str().unwrap().to_string())
            .collect()
    };

    let first = group_consume("g1", &[]);
    assert_eq!(first.len(), 20);
    assert_eq!(value_set(&first), values);
    // Offsets were committed: nothing new the second time.
    let again = group_consume("g1", &["--idle-ms", "1000"]);
    assert!(again.is_empty(), "{again:?}");
    let d = group_describe(&node, "g1");
    assert_eq!(d["group"], "g1");
    assert_eq!(d["state"], "empty");
    assert_eq!(d["members"], serde_json::json!([]));
    assert_eq!(d["total_lag"], 0, "{d}");
    let lag = d["lag"].as_array().unwrap();
    assert_eq!(lag.len(), 2);
    for l in lag {
        assert_eq!(l["topic"], "gt");
        assert_eq!(l["committed_offset"], l["high_watermark"], "{l}");
        assert_eq!(l["lag"], 0);
    }
    let groups = json_lines(&ok(&node, &["group", "list", "--output", "json"], None));
    assert!(groups.iter().any(|g| g["group"] == "g1"), "{groups:?}");
    let text = ok(&node, &["group", "describe", "g1"], None);
    assert!(text.contains("Group: g1"), "{text}");

    // A dry run shows the new offsets and changes nothing.
    let dry = json_lines(&ok(
        &node,
        &[
            "group",
            "reset-offsets",
            "g1",
            "--topic",
            "gt",
            "--to-earliest",
            "--output",
            "json",
        ],
        None,
    ));
    assert_eq!(dry.len(), 2);
    assert!(
        dry.iter()
            .all(|o| o["offset"] == 0 && o["applied"] == false)
    );
    assert_eq!(group_describe(&node, "g1")["total_lag"], 0);
    let text = ok(
        &node,
        &[
            "group",
            "reset-offsets",
            "g1",
            "--topic",
            "gt",
            "--to-earliest",
        ],
        None,
    );
    assert!(text.contains("dry run"), "{text}");
    assert_eq!(group_describe(&node, "g1")["total_lag"], 0);
    // --execute applies it.
    let done = json_lines(&ok(
        &node,
        &[
            "group",
            "reset-offsets",
            "g1",
            "--topic",
            "gt",
            "--to-earliest",
            "--execute",
            "--output",
            "json",
        ],
        None,
    ));
    assert_eq!(done.len(), 2);
    assert!(
        done.iter()
            .all(|o| o["offset"] == 0 && o["applied"] == true && o["topic"] == "gt")
    );
    assert_eq!(group_describe(&node, "g1")["total_lag"], 20);
    let reread = group_consume("g1", &[]);
    assert_eq!(reread.len(), 20, "everything re-read after the reset");
    assert_eq!(value_set(&reread), values);
    assert_eq!(group_describe(&node, "g1")["total_lag"], 0);

    // --max-messages in a group commits exactly what was printed.
    let part = group_consume("g2", &["--max-messages", "7"]);
    assert_eq!(part.len(), 7);
    assert_eq!(group_describe(&node, "g2")["total_lag"], 13);
    let rest = group_consume("g2", &[]);
    assert_eq!(rest.len(), 13);
    let part_at: BTreeSet<(u64, u64)> = part.iter().map(at).collect();
    let rest_at: BTreeSet<(u64, u64)> = rest.iter().map(at).collect();
    assert!(part_at.is_disjoint(&rest_at), "nothing read twice");
    let mut both = value_set(&part);
    both.extend(value_set(&rest));
    assert_eq!(both, values);

    // Deleting a group removes it and its offsets.
    ok(&node, &["group", "delete", "g2"], None);
    let e = fails(&node, &["group", "describe", "g2"], None);
    assert!(e.contains("g2"), "{e}");
}

#[test]
fn cluster_status() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    ok(&node, &["topic", "create", "st", "-p", "2"], None);
    fails(&node, &["group", "describe", "warmup"], None);
    let c = json_one(&ok(&node, &["cluster", "status", "--output", "json"], None));
    assert!(!c["cluster_id"].as_str().unwrap().is_empty());
    assert_eq!(c["controller_id"], 1);
    let brokers = c["brokers"].as_array().unwrap();
    assert_eq!(brokers.len(), 1);
    assert_eq!(brokers[0]["node_id"], 1);
    assert_eq!(brokers[0]["alive"], true);
    assert_eq!(brokers[0]["grpc_addr"], node.grpc.as_str());
    assert_eq!(
        brokers[0]["http_addr"].as_str(),
        node.http.as_deref(),
        "{c}"
    );
    assert_eq!(c["under_replicated_partitions"], 0);
    assert_eq!(c["offline_partitions"], 0);
    let parts = c["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "internal topics only with --internal: {c}");
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p["topic"], "st");
        assert_eq!(p["partition"], i);
        assert_eq!(p["leader"], 1);
        assert_eq!(p["under_replicated"], false);
    }
    let c = json_one(&ok(
        &node,
        &["cluster", "status", "--internal", "--output", "json"],
        None,
    ));
    assert!(
        c["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["topic"] == "__consumer_offsets")
    );
    let text = ok(&node, &["cluster", "status"], None);
    assert!(text.contains("controller: node 1"), "{text}");
    assert!(text.contains("Under-replicated partitions: 0"), "{text}");
}

#[test]
fn cluster_status_waits_for_nodes_that_are_still_starting() {
    // A port nothing listens on yet: the node starts on it after the command does.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let brokers = format!("127.0.0.1:{port}");
    let waiting = Command::new(bin())
        .args([
            "cluster",
            "status",
            "--wait-for-nodes",
            "1",
            "--output",
            "json",
        ])
        .args(["--brokers", brokers.as_str()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let dir = tempfile::tempdir().unwrap();
    let _node = Node::start_on_port(dir.path(), port, &[]);
    let out = waiting.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let status = json_one(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(status["brokers"][0]["alive"], true, "{status}");

    // More nodes than the cluster has: a clear error once the wait runs out.
    let (code, _, err) = common::cli(
        &brokers,
        &[
            "cluster",
            "status",
            "--wait-for-nodes",
            "2",
            "--wait-timeout-secs",
            "1",
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("2 live nodes not seen within 1 s (1 alive)"),
        "{err}"
    );
}

#[test]
fn errors_exit_non_zero_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    ok(&node, &["topic", "create", "t", "-p", "2"], None);
    ok(&node, &["produce", "t", "--partition", "0"], Some("a\nb\n"));
    fails(&node, &["group", "describe", "warmup"], None);
    let before = describe(&node, "t");

    let long = "n".repeat(250);
    let cases: Vec<(Vec<&str>, Option<&str>, &str)> = vec![
        (vec!["topic", "describe", "nope"], None, "unknown topic"),
        (vec!["topic", "delete", "nope"], None, "unknown topic"),
        (
            vec!["topic", "alter", "nope", "-c", "retention.ms=1"],
            None,
            "unknown topic",
        ),
        (vec!["produce", "nope"], Some("x\n"), "unknown topic"),
        (vec!["consume", "nope"], None, "unknown topic"),
        (
            vec!["consume", "nope", "--group", "g"],
            None,
            "unknown topic",
        ),
        (vec!["topic", "create", "a b"], None, "only ASCII letters"),
        (vec!["topic", "create", &long], None, "maximum"),
        (vec!["topic", "create", ".."], None, "reserved"),
        (vec!["topic", "create", "__x"], None, "reserved"),
        (vec!["topic", "create", "t"], None, "already exists"),
        (
            vec!["topic", "create", "u", "-p", "0"],
            None,
            "partition count",
        ),
        (
            vec!["topic", "create", "u", "-r", "2"],
            None,
            "replication factor",
        ),
        (
            vec!["topic", "create", "u", "-c", "retention.ms=soon"],
            None,
            "retention.ms",
        ),
        (
            vec!["topic", "create", "u", "-c", "no.such=1"],
            None,
            "unknown topic config",
        ),
        (
            vec!["topic", "create", "u", "-c", "novalue"],
            None,
            "key=value",
        ),
        (
            vec!["topic", "alter", "t", "-c", "flush=sometimes"],
            None,
            "flush",
        ),
        (
            vec!["topic", "alter", "t", "--partitions", "1"],
            None,
            "must be larger",
        ),
        (vec!["topic", "alter", "t"], None, "nothing to change"),
        (
            vec!["topic", "delete", "__consumer_offsets"],
            None,
            "internal",
        ),
        (
            vec!["consume", "t", "--partition", "2"],
            None,
            "no partition 2",
        ),
        (
            vec!["produce", "t", "--partition", "5"],
            Some("x\n"),
            "no partition 5",
        ),
        (
            vec!["consume", "t", "--partition", "0", "--offset", "3"],
            None,
            "out of range",
        ),
        (
            vec!["produce", "t", "--header", "nokv"],
            Some("x\n"),
            "key=value",
        ),
        (vec!["group", "describe", "nope"], None, "does not exist"),
        (vec!["group", "delete", "nope"], None, "does not exist"),
        (
            vec!["group", "reset-offsets", "g", "--topic", "t"],
            None,
            "--to-earliest",
        ),
        (
            vec![
                "group",
                "reset-offsets",
                "g",
                "--topic",
                "nope",
                "--to-earliest",
            ],
            None,
            "unknown topic",
        ),
    ];
    for (args, stdin, want) in &cases {
        let line = fails(&node, args, *stdin);
        assert!(
            line.contains(want),
            "cascade {args:?}: {line:?} should mention {want:?}"
        );
    }
    // No reachable broker.
    let (code, out, err) = common::cli("127.0.0.1:1", &["topic", "list"], None);
    assert_ne!(code, 0);
    assert!(out.is_empty());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error:") && err.contains("connect"),
        "{err}"
    );

    // Nothing changed.
    assert_eq!(describe(&node, "t"), before);
    assert_eq!(topic_names(&node, false), BTreeSet::from(["t".to_string()]));
    let groups = json_lines(&ok(&node, &["group", "list", "--output", "json"], None));
    assert!(groups.is_empty(), "{groups:?}");
}

#[test]
fn help_works_for_every_subcommand() {
    let commands: &[&[&str]] = &[
        &[],
        &["server"],
        &["gateway"],
        &["topic"],
        &["topic", "create"],
        &["topic", "list"],
        &["topic", "describe"],
        &["topic", "alter"],
        &["topic", "delete"],
        &["produce"],
        &["consume"],
        &["group"],
        &["group", "list"],
        &["group", "describe"],
        &["group", "reset-offsets"],
        &["group", "delete"],
        &["cluster"],
        &["cluster", "status"],
        &["bench"],
        &["bench", "produce"],
        &["bench", "consume"],
        &["bench", "e2e"],
    ];
    for cmd in commands {
        let out = Command::new(bin())
            .args(*cmd)
            .arg("--help")
            .stdin(Stdio::null())
            .output()
            .expect("run cascade");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "cascade {cmd:?} --help: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("Usage: cascade"),
            "cascade {cmd:?} --help: {stdout}"
        );
        if let Some(last) = cmd.last() {
            assert!(stdout.contains(last), "cascade {cmd:?} --help: {stdout}");
        }
        // Each command lists the options it reads and no other: the client options belong to
        // the client commands (and the gateway, which is a client of the brokers), never to
        // `server`, which does not read them.
        let Some(&first) = cmd.first() else { continue };
        let client_cmd = !matches!(first, "server" | "gateway");
        assert_eq!(
            stdout.contains("--brokers"),
            client_cmd || first == "gateway",
            "cascade {cmd:?} --help and --brokers: {stdout}"
        );
        assert_eq!(
            stdout.contains("--output"),
            client_cmd,
            "cascade {cmd:?} --help and --output: {stdout}"
        );
    }
    let out = Command::new(bin()).arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("cascade "));
}

#[test]
fn client_options_go_before_or_after_the_subcommand_and_never_to_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    for args in [
        vec![
            "topic",
            "--brokers",
            node.grpc.as_str(),
            "list",
            "--output",
            "json",
        ],
        vec![
            "topic",
            "list",
            "--brokers",
            node.grpc.as_str(),
            "--output",
            "json",
        ],
        vec![
            "topic",
            "--output",
            "json",
            "list",
            "--brokers",
            node.grpc.as_str(),
        ],
    ] {
        let out = Command::new(bin()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "cascade {args:?}: {out:?}");
    }
    // `server` refuses a client option rather than ignoring it.
    let out = Command::new(bin())
        .args(["server", "--brokers", "127.0.0.1:1", "--data-dir"])
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--brokers"),
        "{out:?}"
    );
}

#[test]
fn a_second_server_on_the_same_data_dir_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let mut second = Command::new(bin())
        .arg("server")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .env("CASCADE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a second server");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("the second server did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "the second server must fail");
    assert!(stderr.contains("error:"), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("ready"),
        "the second server never became ready"
    );
    // The first one is unharmed.
    let c = json_one(&ok(&node, &["cluster", "status", "--output", "json"], None));
    assert_eq!(c["brokers"][0]["grpc_addr"], node.grpc.as_str());
}
