//! REST v2 consumer instances over real HTTP: a node's own listener, and a `cascade gateway`
//! process in front of it. The instances live on the broker, so an instance created through
//! one is used through the other.
//!
//! Every wait is bounded (records are polled until they arrive, up to a deadline) and no test
//! asserts on timing.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Gateway, Node, start_cluster};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const V2: &str = "application/vnd.kafka.v2+json";
const JSON_V2: &str = "application/vnd.kafka.json.v2+json";
const BINARY_V2: &str = "application/vnd.kafka.binary.v2+json";

/// Every test is bounded by this.
const TEST_LIMIT: Duration = Duration::from_secs(150);
/// Polling for records (or an assignment) gives up after this.
const WAIT: Duration = Duration::from_secs(30);

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("test finished in time");
}

/// An HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .map(String::as_str)
            .unwrap_or("")
    }

    /// Asserts a success status (with the body in the message otherwise).
    #[track_caller]
    fn ok(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "{}", self.body);
        self
    }

    /// Asserts an error answer: status, error_code, exactly `{error_code, message}`, JSON.
    #[track_caller]
    fn error(&self, status: u16, code: u64) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.content_type(), "application/json", "{}", self.body);
        let v = self.json();
        let obj = v.as_object().expect("error body is an object");
        assert_eq!(obj.len(), 2, "only error_code and message: {}", self.body);
        assert_eq!(v["error_code"], code, "{}", self.body);
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            self.body
        );
    }
}

/// A REST endpoint (a node's listener or a gateway).
#[derive(Clone)]
struct Rest {
    addr: String,
}

impl Rest {
    /// One HTTP/1.1 request over a fresh connection.
    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(&self.addr),
        )
        .await
        .expect("connect in time")
        .expect("connect");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(45), s.read_to_end(&mut buf))
            .await
            .expect("answer in time")
            .unwrap();
        let text = String::from_utf8(buf).expect("UTF-8 answer");
        let (head, rest) = text.split_once("\r\n\r\n").expect("a head");
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: BTreeMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let body = if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
            let mut out = String::new();
            let mut r = rest;
            while let Some((size, after)) = r.split_once("\r\n") {
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                if n == 0 {
                    break;
                }
                out.push_str(&after[..n]);
                r = &after[n + 2..];
            }
            out
        } else {
            rest.to_string()
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.call("GET", path, &[], "").await
    }

    async fn delete(&self, path: &str) -> Answer {
        self.call("DELETE", path, &[], "").await
    }

    /// POST (or another method) with a JSON body in the v2 content type.
    async fn send(&self, method: &str, path: &str, body: &Value) -> Answer {
        self.call(method, path, &[("content-type", V2)], &body.to_string())
            .await
    }

    async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send("POST", path, body).await
    }

    async fn create_topic(&self, name: &str, partitions: u32) {
        let cid = self.get("/v3/clusters").await.json()["data"][0]["cluster_id"]
            .as_str()
            .unwrap()
            .to_string();
        self.call(
            "POST",
            &format!("/v3/clusters/{cid}/topics"),
            &[("content-type", "application/json")],
            &json!({"topic_name": name, "partitions_count": partitions}).to_string(),
        )
        .await
        .ok(201);
    }

    async fn produce(&self, topic: &str, content_type: &str, records: Value) -> Value {
        let a = self
            .call(
                "POST",
                &format!("/topics/{topic}"),
                &[("content-type", content_type)],
                &json!({ "records": records }).to_string(),
            )
            .await;
        a.ok(200);
        a.json()
    }

    /// Creates an instance; returns its base path (`/consumers/{group}/instances/{name}`).
    async fn create(&self, group: &str, body: Value) -> String {
        let a = self.post(&format!("/consumers/{group}"), &body).await;
        a.ok(200);
        assert_eq!(a.content_type(), V2);
        let v = a.json();
        let name = v["instance_id"].as_str().unwrap();
        let path = format!("/consumers/{group}/instances/{name}");
        assert_eq!(v["base_uri"], format!("http://{}{path}", self.addr));
        path
    }

    async fn subscribe(&self, base: &str, topics: &[&str]) {
        self.post(
            &format!("{base}/subscription"),
            &json!({ "topics": topics }),
        )
        .await
        .ok(204);
    }

    /// One records request; asserts success and the content type.
    async fn read(&self, base: &str, accept: Option<&str>, expect_type: &str) -> Vec<Value> {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
        let a = self
            .call("GET", &format!("{base}/records?timeout=200"), &headers, "")
            .await;
        a.ok(200);
        assert_eq!(a.content_type(), expect_type, "{}", a.body);
        a.json().as_array().expect("a list of records").clone()
    }

    /// Reads until `n` records arrived (bounded); fails on more.
    async fn read_n(
        &self,
        base: &str,
        accept: Option<&str>,
        expect_type: &str,
        n: usize,
    ) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        let mut out = Vec::new();
        while out.len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} records arrived: {out:?}",
                out.len()
            );
            out.extend(self.read(base, accept, expect_type).await);
        }
        assert_eq!(out.len(), n, "no more than the records written: {out:?}");
        out
    }

    async fn assignment(&self, base: &str) -> BTreeSet<(String, u64)> {
        let a = self.get(&format!("{base}/assignments")).await;
        a.ok(200);
        assert_eq!(a.content_type(), V2);
        a.json()["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["topic"].as_str().unwrap().to_string(),
                    p["partition"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    async fn committed(&self, base: &str, partitions: Value) -> BTreeMap<(String, u64), u64> {
        let a = self
            .send(
                "GET",
                &format!("{base}/offsets"),
                &json!({ "partitions": partitions }),
            )
            .await;
        a.ok(200);
        assert_eq!(a.content_type(), V2);
        committed_map(&a.json())
    }
}

fn committed_map(v: &Value) -> BTreeMap<(String, u64), u64> {
    v["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .map(|o| {
            assert_eq!(o["metadata"].as_str().map(|_| ()), Some(()), "{o}");
            (
                (
                    o["topic"].as_str().unwrap().to_string(),
                    o["partition"].as_u64().unwrap(),
                ),
                o["offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn rest_of(node: &Node) -> Rest {
    Rest {
        addr: node.http.clone().expect("the node serves HTTP"),
    }
}

/// (partition, offset) of every record, checking the record shape on the way.
fn positions(records: &[Value], topic: &str) -> Vec<(u64, u64)> {
    records
        .iter()
        .map(|r| {
            let obj = r.as_object().unwrap();
            for field in [
                "topic",
                "key",
                "value",
                "partition",
                "offset",
                "timestamp",
                "headers",
            ] {
                assert!(obj.contains_key(field), "{field} in {r}");
            }
            assert_eq!(r["topic"], topic);
            (
                r["partition"].as_u64().unwrap(),
                r["offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_flow_json_and_binary() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(dir.path());
        let rest = rest_of(&node);
        rest.create_topic("orders", 2).await;
        rest.create_topic("blobs", 1).await;
        rest.produce(
            "orders",
            JSON_V2,
            json!([
                {"key": "alice", "value": {"amount": 10}, "partition": 0},
                {"key": "bob", "value": [1, 2], "partition": 1},
                {"value": "plain", "partition": 1},
            ]),
        )
        .await;
        rest.produce(
            "blobs",
            BINARY_V2,
            json!([{"key": B64.encode("k1"), "value": B64.encode([0u8, 159, 146, 150])},
                   {"value": B64.encode("second"), "headers": [{"name": "h", "value": B64.encode("v")}]}]),
        )
        .await;

        // A json consumer, as in the REST proxy's quick start.
        let base = rest
            .create(
                "billing",
                json!({"name": "c1", "format": "json", "auto.offset.reset": "earliest", "auto.commit.enable": "false"}),
            )
            .await;
        rest.subscribe(&base, &["orders"]).await;
        let sub = rest.get(&format!("{base}/subscription")).await;
        sub.ok(200);
        assert_eq!(sub.json(), json!({"topics": ["orders"]}));
        let recs = rest.read_n(&base, Some(JSON_V2), JSON_V2, 3).await;
        let mut by_key: BTreeMap<String, Value> = BTreeMap::new();
        for r in &recs {
            by_key.insert(r["key"].to_string(), r["value"].clone());
        }
        assert_eq!(by_key["\"alice\""], json!({"amount": 10}));
        assert_eq!(by_key["\"bob\""], json!([1, 2]));
        assert_eq!(by_key["null"], json!("plain"));
        let mut seen = positions(&recs, "orders");
        seen.sort();
        assert_eq!(seen, vec![(0, 0), (1, 0), (1, 1)]);
        assert_eq!(
            rest.assignment(&base).await,
            BTreeSet::from([("orders".into(), 0), ("orders".into(), 1)])
        );
        // Nothing more, and an Accept without an embedded format answers in the instance's.
        assert!(rest.read(&base, None, JSON_V2).await.is_empty());
        assert!(rest.read(&base, Some(V2), JSON_V2).await.is_empty());

        // Nothing committed yet (auto-commit off); commit every position.
        let both = json!([{"topic": "orders", "partition": 0}, {"topic": "orders", "partition": 1}]);
        assert!(rest.committed(&base, both.clone()).await.is_empty());
        let c = rest.call("POST", &format!("{base}/offsets"), &[], "").await;
        c.ok(200);
        assert_eq!(c.json(), json!([]));
        let committed = rest.committed(&base, both.clone()).await;
        assert_eq!(
            committed,
            BTreeMap::from([(("orders".into(), 0), 1), (("orders".into(), 1), 2)])
        );
        // Without a body: the instance's own partitions.
        let a = rest.get(&format!("{base}/offsets")).await;
        a.ok(200);
        assert_eq!(committed_map(&a.json()), committed);

        // Seek to the beginning and read everything again.
        rest.post(&format!("{base}/positions/beginning"), &json!({"partitions": both}))
            .await
            .ok(204);
        let again = rest.read_n(&base, Some(JSON_V2), JSON_V2, 3).await;
        let mut seen_again = positions(&again, "orders");
        seen_again.sort();
        assert_eq!(seen_again, seen);
        // Explicit commit: the offset named is the last record processed (Confluent's rule).
        rest.post(
            &format!("{base}/offsets"),
            &json!({"offsets": [{"topic": "orders", "partition": 1, "offset": 0, "metadata": "half"}]}),
        )
        .await
        .ok(200);
        let a = rest
            .send("GET", &format!("{base}/offsets"), &json!({"partitions": [{"topic": "orders", "partition": 1}]}))
            .await;
        a.ok(200);
        assert_eq!(
            a.json(),
            json!({"offsets": [{"topic": "orders", "partition": 1, "offset": 1, "metadata": "half"}]})
        );
        // Seek to an offset, to the end.
        rest.post(
            &format!("{base}/positions"),
            &json!({"offsets": [{"topic": "orders", "partition": 1, "offset": 1}]}),
        )
        .await
        .ok(204);
        let one = rest.read_n(&base, None, JSON_V2, 1).await;
        assert_eq!(positions(&one, "orders"), vec![(1, 1)]);
        rest.post(&format!("{base}/positions"), &json!({"offsets": [{"topic": "orders", "partition": 0, "offset": 0}]}))
            .await
            .ok(204);
        rest.post(&format!("{base}/positions/end"), &json!({"partitions": [{"topic": "orders", "partition": 0}]}))
            .await
            .ok(204);
        assert!(rest.read(&base, None, JSON_V2).await.is_empty());

        // Unsubscribe: no assignment, the instance lives on; then delete it.
        rest.delete(&format!("{base}/subscription")).await.ok(204);
        assert_eq!(rest.get(&format!("{base}/subscription")).await.json(), json!({"topics": []}));
        assert!(rest.assignment(&base).await.is_empty());
        rest.delete(&base).await.ok(204);
        rest.get(&format!("{base}/subscription")).await.error(404, 40403);
        rest.delete(&base).await.error(404, 40403);

        // A binary consumer (the default format), with a generated name.
        let bin = rest.create("archive", json!({"auto.offset.reset": "earliest"})).await;
        rest.subscribe(&bin, &["blobs"]).await;
        // Asking for json from a binary instance consumes nothing.
        rest.call("GET", &format!("{bin}/records?timeout=100"), &[("accept", JSON_V2)], "")
            .await
            .error(406, 40601);
        let recs = rest.read_n(&bin, Some(BINARY_V2), BINARY_V2, 2).await;
        assert_eq!(positions(&recs, "blobs"), vec![(0, 0), (0, 1)]);
        assert_eq!(recs[0]["key"], B64.encode("k1"));
        assert_eq!(recs[0]["value"], B64.encode([0u8, 159, 146, 150]));
        assert_eq!(recs[1]["key"], Value::Null);
        assert_eq!(recs[1]["headers"], json!([{"name": "h", "value": B64.encode("v")}]));
        // With auto-commit (the default), the next read commits the positions read.
        assert!(rest.read(&bin, None, BINARY_V2).await.is_empty());
        assert_eq!(
            rest.committed(&bin, json!([{"topic": "blobs", "partition": 0}])).await,
            BTreeMap::from([(("blobs".into(), 0), 2)])
        );
        rest.delete(&bin).await.ok(204);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_is_not_json_is_refused_and_not_lost() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(dir.path());
        let rest = rest_of(&node);
        rest.create_topic("mixed", 1).await;
        rest.produce(
            "mixed",
            BINARY_V2,
            json!([{"value": B64.encode([0xffu8, 0x00])}]),
        )
        .await;
        rest.produce("mixed", JSON_V2, json!([{"value": {"ok": true}}]))
            .await;
        let base = rest
            .create(
                "g",
                json!({"name": "j", "format": "json", "auto.offset.reset": "earliest"}),
            )
            .await;
        rest.subscribe(&base, &["mixed"]).await;
        // Each read meets the record that is not JSON: 406 40601, and the position stays.
        let deadline = Instant::now() + WAIT;
        let mut refusals = 0;
        while refusals < 2 {
            assert!(Instant::now() < deadline, "the bad record never came");
            let a = rest
                .call("GET", &format!("{base}/records?timeout=200"), &[], "")
                .await;
            if a.status == 200 {
                assert_eq!(a.json(), json!([]), "nothing before the bad record");
                continue;
            }
            a.error(406, 40601);
            assert!(
                a.json()["message"].as_str().unwrap().contains("offset 0"),
                "{}",
                a.body
            );
            refusals += 1;
        }
        // Seeking past it reads on.
        rest.post(
            &format!("{base}/positions"),
            &json!({"offsets": [{"topic": "mixed", "partition": 0, "offset": 1}]}),
        )
        .await
        .ok(204);
        let recs = rest.read_n(&base, None, JSON_V2, 1).await;
        assert_eq!(recs[0]["value"], json!({"ok": true}));
        assert_eq!(recs[0]["offset"], 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_a_group_share_the_partitions() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(dir.path());
        let rest = rest_of(&node);
        rest.create_topic("shared", 4).await;
        let a = rest
            .create(
                "workers",
                json!({"name": "a", "auto.offset.reset": "earliest"}),
            )
            .await;
        let b = rest
            .create(
                "workers",
                json!({"name": "b", "auto.offset.reset": "earliest"}),
            )
            .await;
        rest.subscribe(&a, &["shared"]).await;
        rest.subscribe(&b, &["shared"]).await;
        // Calls are heartbeats: read (nothing is written yet) until the group settles with
        // each instance owning a part and both together owning everything.
        let all: BTreeSet<(String, u64)> = (0..4).map(|p| ("shared".to_string(), p)).collect();
        let deadline = Instant::now() + WAIT;
        let (own_a, own_b) = loop {
            assert!(Instant::now() < deadline, "the group never settled");
            assert!(rest.read(&a, None, BINARY_V2).await.is_empty());
            assert!(rest.read(&b, None, BINARY_V2).await.is_empty());
            let (x, y) = (rest.assignment(&a).await, rest.assignment(&b).await);
            if !x.is_empty()
                && !y.is_empty()
                && x.is_disjoint(&y)
                && x.union(&y).cloned().collect::<BTreeSet<_>>() == all
            {
                break (x, y);
            }
        };
        // Five records per partition, values naming their partition.
        let records: Vec<Value> = (0..4)
            .flat_map(|p| {
                (0..5).map(move |i| json!({"value": format!("p{p}-{i}"), "partition": p}))
            })
            .collect();
        rest.produce("shared", JSON_V2, Value::Array(records)).await;
        let deadline = Instant::now() + WAIT;
        let mut got: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
        while got.values().map(Vec::len).sum::<usize>() < 20 {
            assert!(
                Instant::now() < deadline,
                "not every record arrived: {got:?}"
            );
            for (who, base) in [("a", &a), ("b", &b)] {
                let recs = rest.read(base, None, BINARY_V2).await;
                got.entry(who)
                    .or_default()
                    .extend(positions(&recs, "shared"));
            }
        }
        for (who, own) in [("a", &own_a), ("b", &own_b)] {
            let mine = &got[who];
            assert!(!mine.is_empty(), "{who} read nothing");
            for (p, _) in mine {
                assert!(
                    own.contains(&("shared".to_string(), *p)),
                    "{who} read partition {p} it does not own"
                );
            }
        }
        let mut union: Vec<(u64, u64)> = got.values().flatten().copied().collect();
        union.sort();
        let expected: Vec<(u64, u64)> = (0..4).flat_map(|p| (0..5).map(move |o| (p, o))).collect();
        assert_eq!(union, expected, "every record exactly once");
        rest.delete(&a).await.ok(204);
        rest.delete(&b).await.ok(204);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_created_on_a_node_is_used_through_a_gateway() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(dir.path());
        let on_node = rest_of(&node);
        let gw = Gateway::start(&node.grpc);
        let via_gw = Rest { addr: gw.http.clone() };
        on_node.create_topic("events", 2).await;
        let base = on_node
            .create("audit", json!({"name": "reader", "format": "json", "auto.offset.reset": "earliest", "auto.commit.enable": "false"}))
            .await;
        // The gateway knows it, with the settings given to the node.
        via_gw.subscribe(&base, &["events"]).await;
        assert_eq!(via_gw.get(&format!("{base}/subscription")).await.json(), json!({"topics": ["events"]}));
        on_node
            .produce("events", JSON_V2, json!([{"value": {"n": 1}, "partition": 0}, {"value": {"n": 2}, "partition": 1}]))
            .await;
        let recs = via_gw.read_n(&base, Some(JSON_V2), JSON_V2, 2).await;
        let mut values: Vec<Value> = recs.iter().map(|r| r["value"].clone()).collect();
        values.sort_by_key(|v| v["n"].as_u64());
        assert_eq!(values, vec![json!({"n": 1}), json!({"n": 2})]);
        // The positions advanced on the broker: the node reads nothing more.
        assert!(on_node.read(&base, None, JSON_V2).await.is_empty());
        on_node.call("POST", &format!("{base}/offsets"), &[], "").await.ok(200);
        let both = json!([{"topic": "events", "partition": 0}, {"topic": "events", "partition": 1}]);
        assert_eq!(
            via_gw.committed(&base, both).await,
            BTreeMap::from([(("events".into(), 0), 1), (("events".into(), 1), 1)])
        );
        // The base_uri a gateway gives names the gateway.
        let other = via_gw.create("audit", json!({"name": "second"})).await;
        on_node.get(&format!("{other}/subscription")).await.ok(200);
        via_gw.delete(&base).await.ok(204);
        on_node.get(&format!("{base}/assignments")).await.error(404, 40403);
        on_node.delete(&other).await.ok(204);
        via_gw.delete(&other).await.error(404, 40403);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_expire() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(dir.path());
        let rest = rest_of(&node);
        let client = node.client().await;
        rest.create_topic("t", 1).await;
        // consumer.instance.timeout.ms (a Cascade extension) is the idle timeout; numbers may
        // be strings, as REST proxy clients send them.
        let base = rest
            .create("idle", json!({"name": "sleepy", "consumer.instance.timeout.ms": "1000", "consumer.request.timeout.ms": 100}))
            .await;
        rest.subscribe(&base, &["t"]).await;
        // A read without `timeout` uses consumer.request.timeout.ms.
        assert!(rest.read(&base, None, BINARY_V2).await.is_empty());
        // Stay silent (every call on the instance is a heartbeat) and watch the group instead:
        // the instance is removed no later than its member.
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "the idle instance was never removed");
            match client.describe_group("idle").await {
                Ok(g) if !g.members.is_empty() => {}
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        rest.get(&format!("{base}/subscription")).await.error(404, 40403);
        // Its name is free again.
        rest.create("idle", json!({"name": "sleepy"})).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_a_json_4xx() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(dir.path());
        let rest = rest_of(&node);
        rest.create_topic("t", 2).await;
        rest.create_topic("other", 1).await;

        // Unknown instance, on every endpoint.
        let ghost = "/consumers/g/instances/ghost";
        let parts = json!({"partitions": [{"topic": "t", "partition": 0}]});
        let calls: Vec<(&str, String, Option<Value>)> = vec![
            ("DELETE", ghost.to_string(), None),
            (
                "POST",
                format!("{ghost}/subscription"),
                Some(json!({"topics": ["t"]})),
            ),
            ("GET", format!("{ghost}/subscription"), None),
            ("DELETE", format!("{ghost}/subscription"), None),
            ("GET", format!("{ghost}/assignments"), None),
            ("POST", format!("{ghost}/assignments"), Some(parts.clone())),
            ("GET", format!("{ghost}/records"), None),
            ("POST", format!("{ghost}/offsets"), None),
            ("GET", format!("{ghost}/offsets"), Some(parts.clone())),
            (
                "POST",
                format!("{ghost}/positions"),
                Some(json!({"offsets": [{"topic": "t", "partition": 0, "offset": 0}]})),
            ),
            (
                "POST",
                format!("{ghost}/positions/beginning"),
                Some(parts.clone()),
            ),
            (
                "POST",
                format!("{ghost}/positions/end"),
                Some(parts.clone()),
            ),
        ];
        for (method, path, body) in &calls {
            let a = match body {
                Some(b) => rest.send(method, path, b).await,
                None => rest.call(method, path, &[], "").await,
            };
            assert_eq!(a.status, 404, "{method} {path}: {}", a.body);
            a.error(404, 40403);
        }

        // Create.
        let base = rest
            .create(
                "g",
                json!({"name": "c", "format": "json", "auto.offset.reset": "earliest"}),
            )
            .await;
        let dup = rest.post("/consumers/g", &json!({"name": "c"})).await;
        dup.error(409, 40902);
        assert!(
            dup.json()["message"]
                .as_str()
                .unwrap()
                .contains("already exists")
        );
        // The same name in another group is another instance.
        rest.create("h", json!({"name": "c"})).await;
        for bad in [
            json!({"format": "avro"}),
            json!({"format": "xml"}),
            json!({"auto.offset.reset": "none"}),
            json!({"auto.commit.enable": "maybe"}),
            json!({"consumer.request.timeout.ms": -5}),
            json!({"consumer.request.timeout.ms": "soon"}),
            json!({"consumer.instance.timeout.ms": 10}),
            json!({"name": " "}),
        ] {
            rest.post("/consumers/g", &bad).await.error(422, 42204);
        }
        for body in ["{", "[1]", "[null, null]", "{\"name\": 5}", "\"x\"", "7"] {
            rest.call("POST", "/consumers/g", &[("content-type", V2)], body)
                .await
                .error(400, 400);
        }
        rest.call(
            "POST",
            "/consumers/g",
            &[("content-type", "text/plain")],
            "{}",
        )
        .await
        .error(415, 415);
        rest.post("/consumers/g", &json!({"name": "a/b"}))
            .await
            .error(400, 40002);
        rest.post("/consumers/%01", &json!({}))
            .await
            .error(400, 40002);

        // Subscribe.
        let sub = format!("{base}/subscription");
        rest.post(&sub, &json!({"topic_pattern": "t.*"}))
            .await
            .error(422, 422);
        rest.post(&sub, &json!({"topics": []}))
            .await
            .error(422, 422);
        rest.post(&sub, &json!({})).await.error(422, 422);
        rest.post(&sub, &json!({"topics": ["missing"]}))
            .await
            .error(404, 40401);
        rest.post(&sub, &json!({"topics": ["bad name!"]}))
            .await
            .error(404, 40401);
        rest.post(&sub, &json!({"topics": "t"}))
            .await
            .error(400, 400);
        rest.call("POST", &sub, &[("content-type", V2)], "{oops")
            .await
            .error(400, 400);
        rest.call("POST", &sub, &[], "{\"topics\": [\"t\"]}")
            .await
            .error(415, 415);
        rest.call("POST", &sub, &[("content-type", V2)], "")
            .await
            .error(400, 400);
        assert_eq!(
            rest.get(&sub).await.json(),
            json!({"topics": []}),
            "nothing changed"
        );
        // Commit and seek without a subscription: nothing is assigned.
        rest.post(
            &format!("{base}/offsets"),
            &json!({"offsets": [{"topic": "t", "partition": 0, "offset": 0}]}),
        )
        .await
        .error(409, 40903);
        rest.post(
            &format!("{base}/positions/beginning"),
            &json!({"partitions": [{"topic": "t", "partition": 0}]}),
        )
        .await
        .error(409, 40903);
        rest.subscribe(&base, &["t"]).await;

        // Records.
        let records = format!("{base}/records");
        for q in [
            "timeout=-1",
            "timeout=abc",
            "max_bytes=-1",
            "max_bytes=1.5",
            "timeout=99999999999999999999",
        ] {
            rest.get(&format!("{records}?{q}")).await.error(400, 400);
        }
        rest.call("GET", &records, &[("accept", BINARY_V2)], "")
            .await
            .error(406, 40601);
        rest.call(
            "GET",
            &records,
            &[("accept", "application/vnd.kafka.avro.v2+json")],
            "",
        )
        .await
        .error(406, 406);
        rest.call("GET", &records, &[("accept", "text/html")], "")
            .await
            .error(406, 406);
        // A huge timeout is capped, a huge max_bytes clamped: both are fine.
        rest.get(&format!("{records}?timeout=0&max_bytes=999999999999"))
            .await
            .ok(200);

        // Positions and offsets.
        let positions = format!("{base}/positions");
        rest.post(
            &positions,
            &json!({"offsets": [{"topic": "other", "partition": 0, "offset": 0}]}),
        )
        .await
        .error(409, 40903);
        rest.post(
            &positions,
            &json!({"offsets": [{"topic": "t", "partition": 9, "offset": 0}]}),
        )
        .await
        .error(409, 40903);
        rest.post(
            &positions,
            &json!({"offsets": [{"topic": "t", "partition": 0, "offset": -1}]}),
        )
        .await
        .error(400, 400);
        rest.post(
            &positions,
            &json!({"offsets": [{"topic": "t", "partition": -1, "offset": 0}]}),
        )
        .await
        .error(400, 400);
        rest.post(&positions, &json!({"partitions": []}))
            .await
            .error(400, 400);
        rest.call("POST", &positions, &[("content-type", V2)], "")
            .await
            .error(400, 400);
        rest.post(
            &format!("{positions}/end"),
            &json!({"partitions": [{"topic": "other", "partition": 0}]}),
        )
        .await
        .error(409, 40903);
        rest.post(&format!("{positions}/beginning"), &json!({"offsets": []}))
            .await
            .error(400, 400);
        let offsets = format!("{base}/offsets");
        rest.post(
            &offsets,
            &json!({"offsets": [{"topic": "other", "partition": 0, "offset": 0}]}),
        )
        .await
        .error(409, 40903);
        rest.post(
            &offsets,
            &json!({"offsets": [{"topic": "t", "partition": 0, "offset": u64::MAX}]}),
        )
        .await
        .error(422, 422);
        rest.post(
            &offsets,
            &json!({"offsets": [{"topic": "t", "partition": 0}]}),
        )
        .await
        .error(400, 400);
        rest.call("POST", &offsets, &[("content-type", V2)], "[")
            .await
            .error(400, 400);
        rest.call("POST", &offsets, &[("content-type", "text/plain")], "{}")
            .await
            .error(415, 415);
        rest.send("GET", &offsets, &json!({"partitions": "t"}))
            .await
            .error(400, 400);
        rest.call("GET", &offsets, &[("content-type", V2)], "{")
            .await
            .error(400, 400);
        // Unknown partitions have no committed offset.
        assert!(
            rest.committed(&base, json!([{"topic": "nope", "partition": 3}]))
                .await
                .is_empty()
        );
        // Manual assignment is not supported.
        rest.post(&format!("{base}/assignments"), &parts)
            .await
            .error(422, 422);
        // Wrong method, unknown route.
        rest.call("PUT", &sub, &[("content-type", V2)], "{}")
            .await
            .error(405, 405);
        rest.get(&format!("{base}/nowhere")).await.error(404, 404);

        // After all that, the instance still works.
        rest.produce("t", JSON_V2, json!([{"value": 1, "partition": 0}]))
            .await;
        let got = rest.read_n(&base, Some(JSON_V2), JSON_V2, 1).await;
        assert_eq!(got[0]["value"], 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_create_body_makes_a_binary_instance_with_a_fresh_name() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(dir.path());
        let rest = rest_of(&node);
        let first = rest.call("POST", "/consumers/anon", &[], "").await;
        first.ok(200);
        let second = rest
            .call(
                "POST",
                "/consumers/anon",
                &[("content-type", "application/json")],
                "null",
            )
            .await;
        second.ok(200);
        let (a, b) = (first.json(), second.json());
        assert_ne!(a["instance_id"], b["instance_id"]);
        let base = format!(
            "/consumers/anon/instances/{}",
            a["instance_id"].as_str().unwrap()
        );
        // Nothing to read yet (no subscription): an empty answer in the binary format.
        assert!(rest.read(&base, None, BINARY_V2).await.is_empty());
        // Group and instance names are percent-encoded in base_uri.
        let odd = rest
            .post("/consumers/my%20group", &json!({"name": "a b"}))
            .await;
        odd.ok(200);
        assert_eq!(
            odd.json()["base_uri"],
            format!("http://{}/consumers/my%20group/instances/a%20b", rest.addr)
        );
        rest.get("/consumers/my%20group/instances/a%20b/subscription")
            .await
            .ok(200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_subscribed_topic_leaves_the_instance_working() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(dir.path());
        let rest = rest_of(&node);
        rest.create_topic("gone", 2).await;
        rest.create_topic("stay", 1).await;
        rest.produce(
            "gone",
            JSON_V2,
            json!([{"value": 1, "partition": 0}, {"value": 2, "partition": 1}]),
        )
        .await;
        rest.produce("stay", JSON_V2, json!([{"value": 3}])).await;
        // Auto-commit (the default) commits the positions of partitions given up.
        let base = rest
            .create("g", json!({"name": "c", "auto.offset.reset": "earliest"}))
            .await;
        rest.subscribe(&base, &["gone", "stay"]).await;
        rest.read_n(&base, None, BINARY_V2, 3).await;
        let cid = rest.get("/v3/clusters").await.json()["data"][0]["cluster_id"]
            .as_str()
            .unwrap()
            .to_string();
        rest.delete(&format!("/v3/clusters/{cid}/topics/gone"))
            .await
            .ok(204);
        // The deleted topic's partitions are given up; every call keeps working.
        assert!(rest.read(&base, None, BINARY_V2).await.is_empty());
        assert_eq!(
            rest.assignment(&base).await,
            BTreeSet::from([("stay".into(), 0)])
        );
        rest.get(&format!("{base}/subscription")).await.ok(200);
        rest.produce("stay", JSON_V2, json!([{"value": 4}])).await;
        let more = rest.read_n(&base, None, BINARY_V2, 1).await;
        assert_eq!(positions(&more, "stay"), vec![(0, 1)]);
        rest.delete(&format!("{base}/subscription")).await.ok(204);
        rest.delete(&base).await.ok(204);
    })
    .await;
}

/// In a three-node cluster an instance lives on its group's coordinator, which leads (and
/// here, with one replica per partition, holds) only some of the partitions assigned to it:
/// the others are read from their leaders, and their starting positions come from there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_reads_partitions_led_by_other_nodes() {
    bounded(async {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let nodes = start_cluster(&dirs);
        let client = nodes[0].client().await;
        let deadline = Instant::now() + WAIT;
        while client
            .describe_cluster()
            .await
            .map_or(0, |d| d.brokers.len())
            < 3
        {
            assert!(
                Instant::now() < deadline,
                "the cluster never had three brokers"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Six partitions, one replica each: every node leads two and holds nothing else.
        client
            .create_topic("spread", 6, 1, BTreeMap::new())
            .await
            .expect("create topic");
        let leaders: BTreeSet<u32> = loop {
            let d = client.describe_cluster().await.expect("describe");
            let t = d.topics.iter().find(|t| t.name == "spread");
            let l: Vec<u32> = t.map_or(Vec::new(), |t| {
                t.partitions.iter().map(|p| p.leader).collect()
            });
            if l.len() == 6 && l.iter().all(|&x| x != 0) {
                break l.into_iter().collect();
            }
            assert!(Instant::now() < deadline, "partitions never got leaders");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(leaders.len(), 3, "leadership spread over the three nodes");
        // Records first, so the instance's starting positions (earliest) are read from the
        // leaders of partitions its node does not hold.
        let rest = rest_of(&nodes[0]);
        let records: Vec<Value> = (0..6)
            .flat_map(|p| {
                (0..3).map(move |i| json!({"value": format!("p{p}-{i}"), "partition": p}))
            })
            .collect();
        rest.produce("spread", JSON_V2, Value::Array(records)).await;
        let base = rest
            .create(
                "spreaders",
                json!({"name": "one", "auto.offset.reset": "earliest"}),
            )
            .await;
        rest.subscribe(&base, &["spread"]).await;
        let got = rest.read_n(&base, None, BINARY_V2, 18).await;
        let mut seen = positions(&got, "spread");
        seen.sort();
        let expected: Vec<(u64, u64)> = (0..6).flat_map(|p| (0..3).map(move |o| (p, o))).collect();
        assert_eq!(
            seen, expected,
            "every record of every partition exactly once"
        );
        // Later records arrive too, and commits cover every partition.
        rest.produce(
            "spread",
            JSON_V2,
            json!([{"value": "late", "partition": 5}]),
        )
        .await;
        let late = rest.read_n(&base, None, BINARY_V2, 1).await;
        assert_eq!(positions(&late, "spread"), vec![(5, 3)]);
        rest.call("POST", &format!("{base}/offsets"), &[], "")
            .await
            .ok(200);
        let all = Value::Array(
            (0..6)
                .map(|p| json!({"topic": "spread", "partition": p}))
                .collect(),
        );
        let committed = rest.committed(&base, all).await;
        let want: BTreeMap<(String, u64), u64> = (0..6)
            .map(|p| (("spread".to_string(), p), if p == 5 { 4 } else { 3 }))
            .collect();
        assert_eq!(committed, want);
        rest.delete(&base).await.ok(204);
    })
    .await;
}
