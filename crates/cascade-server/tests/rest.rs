//! REST API tests: handlers called in-process (`tower::ServiceExt::oneshot`) on a router whose
//! client talks to a real `cascade server` process, plus real HTTP to a node's listener and to a
//! `cascade gateway` process in front of it.

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use cascade_client::Client;
use cascade_client::proto::OffsetSpec;
use common::{Gateway, Node};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tower::ServiceExt;

const JSON_V2: &str = "application/vnd.kafka.json.v2+json";
const BINARY_V2: &str = "application/vnd.kafka.binary.v2+json";

/// Every test is bounded by this.
const TEST_LIMIT: Duration = Duration::from_secs(120);

struct Env {
    node: Node,
    client: Client,
    app: Router,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let client = node.client().await;
    let app = cascade_rest::router(
        cascade_rest::RestState::new(client.clone()).with_keep_alive(Duration::from_millis(200)),
    );
    Env {
        node,
        client,
        app,
        _dir: dir,
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts an error answer: status, error_code and the exact error body shape.
    #[track_caller]
    fn assert_error(&self, status: u16, code: u64) {
        let text = String::from_utf8_lossy(&self.body).into_owned();
        assert_eq!(self.status.as_u16(), status, "{text}");
        assert_eq!(
            self.headers["content-type"], "application/json",
            "error content type: {text}"
        );
        let v = self.json();
        let obj = v.as_object().expect("error body is an object");
        assert_eq!(obj.len(), 2, "only error_code and message: {text}");
        assert_eq!(v["error_code"], code, "{text}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{text}"
        );
    }
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(30),
        app.clone().oneshot(req.body(body.into()).unwrap()),
    )
    .await
    .expect("request answered in time")
    .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
        .await
        .expect("body in time")
        .unwrap()
        .to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(app: &Router, uri: &str) -> Answer {
    call(app, Method::GET, uri, &[], Body::empty()).await
}

async fn post_json(app: &Router, uri: &str, content_type: &str, body: &Value) -> Answer {
    call(
        app,
        Method::POST,
        uri,
        &[("content-type", content_type)],
        body.to_string(),
    )
    .await
}

async fn cluster_id(app: &Router) -> String {
    let a = get(app, "/v3/clusters").await;
    assert_eq!(a.status, StatusCode::OK);
    a.json()["data"][0]["cluster_id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn create_topic(app: &Router, name: &str, partitions: u32, configs: Value) -> Answer {
    let cid = cluster_id(app).await;
    post_json(
        app,
        &format!("/v3/clusters/{cid}/topics"),
        "application/json",
        &json!({"topic_name": name, "partitions_count": partitions, "replication_factor": 1, "configs": configs}),
    )
    .await
}

/// High watermarks of every partition of every topic named.
async fn watermarks(client: &Client, topics: &[&str]) -> Vec<(String, u32, u64)> {
    let mut out = Vec::new();
    for t in topics {
        for o in client
            .list_offsets(t, vec![], OffsetSpec::Latest, 0)
            .await
            .unwrap()
        {
            out.push((t.to_string(), o.partition, o.offset));
        }
    }
    out
}

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("test finished in time")
}

// ------------------------------------------------------------------------------------------

/// Reads SSE events (id, data) from a response body until `n` arrived or the time is up.
async fn read_events(body: &mut Body, n: usize, limit: Duration) -> (Vec<(String, Value)>, usize) {
    let deadline = Instant::now() + limit;
    let mut buf = String::new();
    let mut events = Vec::new();
    let mut comments = 0;
    while events.len() < n && Instant::now() < deadline {
        let frame = match tokio::time::timeout_at(deadline.into(), body.frame()).await {
            Ok(Some(Ok(f))) => f,
            _ => break,
        };
        if let Ok(data) = frame.into_data() {
            buf.push_str(std::str::from_utf8(&data).unwrap());
        }
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut data) = (None, None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(v.trim().to_string());
                } else if line.starts_with(':') {
                    comments += 1;
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                events.push((id, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    (events, comments)
}

async fn open_stream(app: &Router, uri: &str, headers: &[(&str, &str)]) -> Body {
    let mut req = Request::builder().uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    resp.into_body()
}

async fn subscriptions(node: &Node) -> f64 {
    let text = http(node.http.as_ref().unwrap(), "GET", "/metrics", &[], "")
        .await
        .2;
    text.lines()
        .find_map(|l| l.strip_prefix("cascade_subscriptions "))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_flow() {
    bounded(async {
        let e = env().await;
        let app = &e.app;
        let cid = cluster_id(app).await;
        let c = get(app, &format!("/v3/clusters/{cid}")).await;
        assert_eq!(c.json()["kind"], "KafkaCluster");

        // Create via v3.
        let created = create_topic(app, "orders", 3, json!([{"name": "retention.ms", "value": "86400000"}])).await;
        assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
        let t = created.json();
        assert_eq!(t["kind"], "KafkaTopic");
        assert_eq!(t["topic_name"], "orders");
        assert_eq!(t["partitions_count"], 3);
        assert_eq!(t["replication_factor"], 1);
        assert_eq!(t["cluster_id"], cid.as_str());
        assert!(t["configs"]["related"].as_str().unwrap().ends_with("/topics/orders/configs"));
        let got = get(app, &format!("/v3/clusters/{cid}/topics/orders")).await.json();
        assert_eq!(got["partitions_count"], 3);
        let list = get(app, &format!("/v3/clusters/{cid}/topics")).await.json();
        assert_eq!(list["kind"], "KafkaTopicList");
        assert!(list["data"].as_array().unwrap().iter().any(|t| t["topic_name"] == "orders"));
        let configs = get(app, &format!("/v3/clusters/{cid}/topics/orders/configs")).await.json();
        let retention = configs["data"].as_array().unwrap().iter().find(|c| c["name"] == "retention.ms").unwrap();
        assert_eq!(retention["value"], "86400000");
        assert_eq!(retention["is_default"], false);
        let parts = get(app, &format!("/v3/clusters/{cid}/topics/orders/partitions")).await.json();
        assert_eq!(parts["data"].as_array().unwrap().len(), 3);

        // v2 metadata.
        let names = get(app, "/topics").await.json();
        assert_eq!(names, json!(["orders"]), "internal topics are not listed");
        let t = get(app, "/topics/orders").await.json();
        assert_eq!(t["name"], "orders");
        assert_eq!(t["configs"]["retention.ms"], "86400000");
        assert_eq!(t["partitions"].as_array().unwrap().len(), 3);
        assert_eq!(t["partitions"][0]["replicas"][0], json!({"broker": 1, "leader": true, "in_sync": true}));
        let p = get(app, "/topics/orders/partitions/2").await.json();
        assert_eq!(p["partition"], 2);

        // Produce JSON to partition 0 (explicitly) and binary to partition 1.
        // Written by hand: key order and spacing as a client would send them.
        let body = format!(
            r#"{{"records": [ {{"value": {{ "order" : 1, "items": ["a", "b"] }}, "partition": 0}},
            {{"key": {{"customer": 7}}, "value": "second", "partition": 0, "headers": [{{"name": "trace", "value": "{}"}}]}},
            {{"value": null, "partition": 0}} ]}}"#,
            B64.encode("t-1")
        );
        let a = call(app, Method::POST, "/topics/orders", &[("content-type", JSON_V2)], body).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        assert_eq!(a.json(), json!({"offsets": [
            {"partition": 0, "offset": 0, "error_code": null, "error": null},
            {"partition": 0, "offset": 1, "error_code": null, "error": null},
            {"partition": 0, "offset": 2, "error_code": null, "error": null}],
            "key_schema_id": null, "value_schema_id": null}));
        let b = post_json(app, "/topics/orders/partitions/1", BINARY_V2, &json!({"records": [
            {"key": B64.encode("k"), "value": B64.encode([0u8, 159, 146, 150])},
            {"value": B64.encode("plain")},
        ]})).await;
        assert_eq!(b.status, StatusCode::OK, "{:?}", b.body);
        let offs: Vec<(u64, u64)> = b.json()["offsets"].as_array().unwrap().iter()
            .map(|o| (o["partition"].as_u64().unwrap(), o["offset"].as_u64().unwrap())).collect();
        assert_eq!(offs, vec![(1, 0), (1, 1)]);
        // Plain application/json is the json format.
        let c = post_json(app, "/topics/orders/partitions/2", "application/json", &json!({"records": [{"value": [1, 2]}]})).await;
        assert_eq!(c.status, StatusCode::OK);

        // Stored bytes: compact JSON text, key order kept.
        let recs = common::read_partition(&e.client, "orders", 0).await;
        assert_eq!(recs[0].1, br#"{"order":1,"items":["a","b"]}"#.to_vec());
        assert_eq!(recs[1].1, br#""second""#.to_vec());

        // Read back: json format.
        let r = call(app, Method::GET, "/topics/orders/partitions/0/records?offset=0", &[("accept", JSON_V2)], Body::empty()).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["content-type"], JSON_V2);
        let v = r.json();
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), 3);
        assert_eq!(arr[0]["value"], json!({"order": 1, "items": ["a", "b"]}));
        assert_eq!(arr[0]["key"], Value::Null);
        assert_eq!(arr[1]["key"], json!({"customer": 7}));
        assert_eq!(arr[1]["value"], "second");
        assert_eq!(arr[1]["headers"], json!([{"name": "trace", "value": B64.encode("t-1")}]));
        assert_eq!(arr[2]["value"], Value::Null);
        for (i, rec) in arr.iter().enumerate() {
            assert_eq!(rec["topic"], "orders");
            assert_eq!(rec["partition"], 0);
            assert_eq!(rec["offset"], i as u64);
            assert!(rec["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
        }
        // From an offset in the middle.
        let mid = call(app, Method::GET, "/topics/orders/partitions/0/records?offset=1", &[("accept", JSON_V2)], Body::empty()).await.json();
        assert_eq!(mid.as_array().unwrap().len(), 2);
        // Binary format (the default).
        let r = get(app, "/topics/orders/partitions/1/records?offset=0").await;
        assert_eq!(r.headers["content-type"], BINARY_V2);
        let v = r.json();
        assert_eq!(v[0]["key"], B64.encode("k"));
        assert_eq!(v[0]["value"], B64.encode([0u8, 159, 146, 150]));
        assert_eq!(v[1]["value"], B64.encode("plain"));
        // Binary data asked for as JSON: 406 40601, naming the offset.
        let bad = call(app, Method::GET, "/topics/orders/partitions/1/records?offset=0", &[("accept", JSON_V2)], Body::empty()).await;
        bad.assert_error(406, 40601);
        // Offsets endpoint.
        let o = get(app, "/topics/orders/partitions/0/offsets").await.json();
        assert_eq!(o, json!({"beginning_offset": 0, "end_offset": 3}));

        // Long poll: an empty partition answers [] after the timeout...
        let start = Instant::now();
        let empty = get(app, "/topics/orders/partitions/2/records?offset=1&timeout=300").await;
        assert_eq!(empty.json(), json!([]));
        assert!(start.elapsed() >= Duration::from_millis(250), "waited for the timeout");
        // ...and returns as soon as a record arrives.
        let app2 = app.clone();
        let poll = tokio::spawn(async move {
            let start = Instant::now();
            let a = call(&app2, Method::GET, "/topics/orders/partitions/2/records?offset=1&timeout=20000", &[("accept", JSON_V2)], Body::empty()).await;
            (a.json(), start.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        post_json(app, "/topics/orders/partitions/2", JSON_V2, &json!({"records": [{"value": "late"}]})).await;
        let (v, took) = poll.await.unwrap();
        assert_eq!(v[0]["value"], "late");
        assert_eq!(v[0]["offset"], 1);
        assert!(took < Duration::from_secs(10), "long poll woke on the record: {took:?}");

        // SSE: history from offset 0, then live records; ids are offsets.
        let mut body = open_stream(app, "/topics/orders/partitions/0/stream?offset=0&format=json", &[]).await;
        let (events, _) = read_events(&mut body, 3, Duration::from_secs(10)).await;
        let ids: Vec<&str> = events.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, vec!["0", "1", "2"]);
        assert_eq!(events[0].1["value"], json!({"order": 1, "items": ["a", "b"]}));
        post_json(app, "/topics/orders/partitions/0", JSON_V2, &json!({"records": [{"value": "live"}]})).await;
        let (events, _) = read_events(&mut body, 1, Duration::from_secs(10)).await;
        assert_eq!(events.len(), 1, "live record arrives on the open stream");
        assert_eq!(events[0].0, "3");
        assert_eq!(events[0].1["value"], "live");
        assert_eq!(events[0].1["offset"], 3);
        // Idle: keep-alive comments (interval 200 ms in this test).
        let (none, comments) = read_events(&mut body, 1, Duration::from_millis(700)).await;
        assert!(none.is_empty());
        assert!(comments >= 1, "keep-alive comments while idle");
        // Disconnect: the broker-side subscription ends.
        assert!(subscriptions(&e.node).await >= 1.0);
        drop(body);
        let deadline = Instant::now() + Duration::from_secs(10);
        while subscriptions(&e.node).await > 0.0 {
            assert!(Instant::now() < deadline, "subscription must end when the client goes away");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Resume with Last-Event-ID: 1 → from offset 2, even though ?offset=0 is still there.
        let mut body = open_stream(app, "/topics/orders/partitions/0/stream?offset=0", &[("last-event-id", "1")]).await;
        let (events, _) = read_events(&mut body, 2, Duration::from_secs(10)).await;
        let ids: Vec<&str> = events.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, vec!["2", "3"]);
        assert_eq!(events[1].1["value"], B64.encode("\"live\""), "binary by default");
        drop(body);
        // Without an offset the stream starts at the end: only new records.
        let mut body = open_stream(app, "/topics/orders/partitions/1/stream?format=binary", &[]).await;
        let (none, _) = read_events(&mut body, 1, Duration::from_millis(500)).await;
        assert!(none.is_empty());
        post_json(app, "/topics/orders/partitions/1", BINARY_V2, &json!({"records": [{"value": B64.encode("new")}]})).await;
        let (events, _) = read_events(&mut body, 1, Duration::from_secs(10)).await;
        assert_eq!(events[0].0, "2");
        assert_eq!(events[0].1["value"], B64.encode("new"));
        drop(body);

        // Delete via v3.
        let d = call(app, Method::DELETE, &format!("/v3/clusters/{cid}/topics/orders"), &[], Body::empty()).await;
        assert_eq!(d.status, StatusCode::NO_CONTENT);
        get(app, "/topics/orders").await.assert_error(404, 40401);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_and_write_nothing() {
    bounded(async {
        let e = env().await;
        let app = &e.app;
        let cid = cluster_id(app).await;
        assert_eq!(create_topic(app, "t", 2, json!([])).await.status, StatusCode::CREATED);
        assert_eq!(
            create_topic(app, "small", 2, json!([{"name": "max.message.bytes", "value": "1024"}])).await.status,
            StatusCode::CREATED
        );
        // Some data, so "nothing written" is checked against non-zero watermarks too.
        assert_eq!(post_json(app, "/topics/t", JSON_V2, &json!({"records": [{"value": 1, "partition": 0}, {"value": 2, "partition": 1}]})).await.status, StatusCode::OK);
        let before = watermarks(&e.client, &["t", "small"]).await;

        let ok = json!({"value": "fine", "partition": 0});
        let big = "x".repeat(2000);
        let bad_produce: Vec<(&str, &str, String, u16, u64)> = vec![
            ("/topics/t", JSON_V2, "{\"records\": [".into(), 400, 400),
            ("/topics/t", JSON_V2, "not json".into(), 400, 400),
            ("/topics/t", JSON_V2, "{}".into(), 400, 400),
            ("/topics/t", JSON_V2, json!({"records": {"value": 1}}).to_string(), 400, 400),
            ("/topics/t", "text/plain", json!({"records": [ok]}).to_string(), 415, 415),
            ("/topics/t", "application/vnd.kafka.avro.v2+json", json!({"records": [ok]}).to_string(), 415, 415),
            ("/topics/t", JSON_V2, json!({"records": []}).to_string(), 422, 422),
            ("/topics/t", BINARY_V2, json!({"records": [ok, {"key": "!!not base64!!", "value": null}]}).to_string(), 422, 42201),
            ("/topics/t", BINARY_V2, json!({"records": [{"key": 5}]}).to_string(), 422, 42201),
            ("/topics/t", BINARY_V2, json!({"records": [{"value": B64.encode("a")}, {"value": "%%%"}]}).to_string(), 422, 42202),
            ("/topics/t", BINARY_V2, json!({"records": [{"value": {"not": "a string"}}]}).to_string(), 422, 42202),
            ("/topics/t", JSON_V2, json!({"records": [ok, {"value": 1, "headers": [{"name": "h", "value": "***"}]}]}).to_string(), 422, 422),
            ("/topics/t", JSON_V2, json!({"records": [ok, {"value": 1, "partition": -1}]}).to_string(), 400, 400),
            ("/topics/t", JSON_V2, json!({"records": [ok, {"value": 1, "partition": "one"}]}).to_string(), 400, 400),
            ("/topics/t", JSON_V2, json!({"records": [ok, {"value": 1, "partition": 2}]}).to_string(), 404, 40402),
            ("/topics/nope", JSON_V2, json!({"records": [ok]}).to_string(), 404, 40401),
            ("/topics/bad%20name", JSON_V2, json!({"records": [ok]}).to_string(), 404, 40401),
            ("/topics/t/partitions/7", JSON_V2, json!({"records": [{"value": 1}]}).to_string(), 404, 40402),
            ("/topics/t/partitions/x", JSON_V2, json!({"records": [{"value": 1}]}).to_string(), 400, 400),
            ("/topics/t/partitions/-1", JSON_V2, json!({"records": [{"value": 1}]}).to_string(), 400, 400),
            ("/topics/t/partitions/1", JSON_V2, json!({"records": [{"value": 1, "partition": 0}]}).to_string(), 422, 422),
            // A record batch above the topic's max.message.bytes, next to a fine record for
            // the other partition: nothing at all is written.
            ("/topics/small", JSON_V2, json!({"records": [{"value": "ok", "partition": 1}, {"value": big, "partition": 0}]}).to_string(), 413, 413),
        ];
        for (uri, ct, body, status, code) in &bad_produce {
            let a = call(app, Method::POST, uri, &[("content-type", ct)], body.clone()).await;
            println!("{uri} {ct} {body:.60} -> {} {}", a.status, String::from_utf8_lossy(&a.body));
            a.assert_error(*status, *code);
        }
        // No content type at all.
        call(app, Method::POST, "/topics/t", &[], json!({"records": [ok]}).to_string()).await.assert_error(415, 415);
        // A bad Idempotency-Key.
        call(app, Method::POST, "/topics/t", &[("content-type", JSON_V2), ("idempotency-key", "has space")], json!({"records": [ok]}).to_string()).await.assert_error(400, 400);
        // A body above the 16 MiB limit.
        let huge = format!("{{\"records\":[{{\"value\":\"{}\"}}]}}", "y".repeat(17 << 20));
        call(app, Method::POST, "/topics/t", &[("content-type", JSON_V2)], huge).await.assert_error(413, 413);

        // Reads.
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16, u64);
        let bad_reads: Vec<Case> = vec![
            ("/topics/t/partitions/0/records", &[], 400, 400),
            ("/topics/t/partitions/0/records?offset=-1", &[], 400, 400),
            ("/topics/t/partitions/0/records?offset=abc", &[], 400, 400),
            ("/topics/t/partitions/0/records?offset=0&timeout=-5", &[], 400, 400),
            ("/topics/t/partitions/0/records?offset=99", &[], 416, 41601),
            ("/topics/t/partitions/9/records?offset=0", &[], 404, 40402),
            ("/topics/nope/partitions/0/records?offset=0", &[], 404, 40401),
            ("/topics/t/partitions/0/records?offset=0", &[("accept", "application/vnd.kafka.avro.v2+json")], 406, 406),
            ("/topics/t/partitions/0/stream?offset=99", &[], 416, 41601),
            ("/topics/t/partitions/0/stream?offset=0", &[("last-event-id", "x")], 400, 400),
            ("/topics/t/partitions/0/stream?format=xml", &[], 400, 400),
            ("/topics/t/partitions/0/stream", &[("last-event-id", "18446744073709551615")], 400, 400),
            ("/topics/t/partitions/0/stream", &[("last-event-id", "41")], 416, 41601),
            ("/topics/nope/partitions/0/stream", &[], 404, 40401),
            ("/topics/t/partitions/5/stream", &[], 404, 40402),
            ("/topics/nope", &[], 404, 40401),
            ("/topics/t/partitions/2", &[], 404, 40402),
            ("/topics/t/partitions/2/offsets", &[], 404, 40402),
            ("/no/such/route", &[], 404, 404),
            ("/v3/clusters/not-this-one/topics", &[], 404, 404),
            ("/v3/clusters/not-this-one", &[], 404, 404),
        ];
        for (uri, headers, status, code) in bad_reads {
            let a = call(app, Method::GET, uri, headers, Body::empty()).await;
            println!("GET {uri} -> {} {}", a.status, String::from_utf8_lossy(&a.body));
            a.assert_error(status, code);
        }
        let topic_uri = format!("/v3/clusters/{cid}/topics/nope");
        get(app, &topic_uri).await.assert_error(404, 40401);
        call(app, Method::DELETE, &topic_uri, &[], Body::empty()).await.assert_error(404, 40401);
        call(app, Method::PUT, "/topics", &[], Body::empty()).await.assert_error(405, 405);
        call(app, Method::DELETE, "/topics/t", &[], Body::empty()).await.assert_error(405, 405);

        // v3 create refusals.
        let topics_uri = format!("/v3/clusters/{cid}/topics");
        let bad_creates: Vec<(&str, String, u16, u64)> = vec![
            ("application/json", json!({"topic_name": "t", "partitions_count": 1}).to_string(), 400, 40002),
            ("application/json", json!({"topic_name": "bad name!", "partitions_count": 1}).to_string(), 400, 40002),
            ("application/json", json!({"topic_name": "zero", "partitions_count": 0}).to_string(), 400, 40002),
            ("application/json", json!({"topic_name": "rf", "replication_factor": 5}).to_string(), 400, 40002),
            ("application/json", json!({"topic_name": "cfg", "configs": [{"name": "retention.ms", "value": "soon"}]}).to_string(), 400, 40002),
            ("application/json", json!({"topic_name": "neg", "partitions_count": -1}).to_string(), 400, 400),
            ("application/json", json!({"partitions_count": 1}).to_string(), 400, 400),
            ("application/json", "{".into(), 400, 400),
            ("text/plain", json!({"topic_name": "x"}).to_string(), 415, 415),
        ];
        for (ct, body, status, code) in bad_creates {
            let a = call(app, Method::POST, &topics_uri, &[("content-type", ct)], body.clone()).await;
            println!("POST v3 {body} -> {} {}", a.status, String::from_utf8_lossy(&a.body));
            a.assert_error(status, code);
        }
        // validate_only creates nothing.
        let v = post_json(app, &topics_uri, "application/json", &json!({"topic_name": "dry", "validate_only": true})).await;
        assert_eq!(v.status, StatusCode::OK);
        get(app, "/topics/dry").await.assert_error(404, 40401);

        // Nothing was written, no topic was created.
        assert_eq!(watermarks(&e.client, &["t", "small"]).await, before);
        let names = get(app, "/topics").await.json();
        assert_eq!(names, json!(["small", "t"]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_partitioned_like_partition_for_key() {
    bounded(async {
        let e = env().await;
        let app = &e.app;
        assert_eq!(
            create_topic(app, "keyed", 6, json!([])).await.status,
            StatusCode::CREATED
        );
        let keys: Vec<String> = (0..60).map(|i| format!("customer-{i}")).collect();
        // Binary: the key bytes are the decoded base64.
        let records: Vec<Value> = keys
            .iter()
            .map(|k| json!({"key": B64.encode(k), "value": B64.encode(k)}))
            .collect();
        let a = post_json(
            app,
            "/topics/keyed",
            BINARY_V2,
            &json!({"records": records}),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        let offsets = a.json()["offsets"].as_array().unwrap().clone();
        let mut used = std::collections::BTreeSet::new();
        for (k, o) in keys.iter().zip(&offsets) {
            let p = cascade_types::partition_for_key(k.as_bytes(), 6);
            assert_eq!(o["partition"], p, "key {k}");
            used.insert(p);
        }
        assert!(used.len() > 3, "keys spread over partitions");
        // JSON: the key bytes are the key's compact JSON text.
        let records: Vec<Value> = keys
            .iter()
            .map(|k| json!({"key": {"id": k}, "value": 1}))
            .collect();
        let a = post_json(app, "/topics/keyed", JSON_V2, &json!({"records": records})).await;
        for (k, o) in keys.iter().zip(a.json()["offsets"].as_array().unwrap()) {
            let text = format!("{{\"id\":\"{k}\"}}");
            assert_eq!(
                o["partition"],
                cascade_types::partition_for_key(text.as_bytes(), 6)
            );
        }
        // Where the answer says, the data is: the record at (partition, offset) has the key.
        for (k, o) in keys.iter().zip(&offsets) {
            let uri = format!(
                "/topics/keyed/partitions/{}/records?offset={}&max_bytes=1",
                o["partition"], o["offset"]
            );
            let r = get(app, &uri).await.json();
            assert_eq!(r[0]["key"], B64.encode(k));
            assert_eq!(r[0]["offset"], o["offset"]);
        }
        // The Rust producer (the gRPC path) puts the same keys in the same partitions.
        let producer = cascade_client::Producer::new(e.client.clone(), "keyed", Default::default())
            .await
            .unwrap();
        for (k, o) in keys.iter().zip(&offsets).take(10) {
            let meta = producer
                .send(cascade_client::ProducerRecord::keyed(k.clone(), "x"))
                .await
                .unwrap();
            assert_eq!(o["partition"], meta.partition);
        }
        // Unkeyed records of one request share one partition; offsets are dense and ordered.
        let a = post_json(
            app,
            "/topics/keyed",
            JSON_V2,
            &json!({"records": [{"value": 1}, {"value": 2}, {"value": 3}]}),
        )
        .await;
        let o = a.json()["offsets"].as_array().unwrap().clone();
        assert!(o.iter().all(|x| x["partition"] == o[0]["partition"]));
        let first = o[0]["offset"].as_u64().unwrap();
        let got: Vec<u64> = o.iter().map(|x| x["offset"].as_u64().unwrap()).collect();
        assert_eq!(got, vec![first, first + 1, first + 2]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_writes_once_across_gateways() {
    bounded(async {
        let e = env().await;
        let app = &e.app;
        assert_eq!(create_topic(app, "idem", 3, json!([])).await.status, StatusCode::CREATED);
        // A second, independent REST router: another gateway replica.
        let other = cascade_rest::router(cascade_rest::RestState::new(
            Client::connect(&e.node.grpc).await.unwrap(),
        ));
        let body = json!({"records": [{"value": "a"}, {"key": "k", "value": "b"}, {"value": "c", "partition": 2}]}).to_string();
        let send = |app: Router, key: &'static str, body: String| async move {
            call(&app, Method::POST, "/topics/idem", &[("content-type", JSON_V2), ("idempotency-key", key)], body).await
        };
        let first = send(app.clone(), "order-1", body.clone()).await;
        assert_eq!(first.status, StatusCode::OK);
        let after_first = watermarks(&e.client, &["idem"]).await;
        let total = |w: &Vec<(String, u32, u64)>| w.iter().map(|x| x.2).sum::<u64>();
        assert_eq!(total(&after_first), 3);
        // Retries, on the same and on the other gateway, concurrently too: the first answer.
        let retries = futures::future::join_all((0..4).map(|i| {
            let app = if i % 2 == 0 { app.clone() } else { other.clone() };
            send(app, "order-1", body.clone())
        }))
        .await;
        for r in retries {
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.json(), first.json());
        }
        assert_eq!(watermarks(&e.client, &["idem"]).await, after_first, "written once");
        // The same key with other records: 422, nothing written.
        let other_body = json!({"records": [{"value": "different"}]}).to_string();
        send(other.clone(), "order-1", other_body.clone()).await.assert_error(422, 422);
        assert_eq!(watermarks(&e.client, &["idem"]).await, after_first);
        // A new key writes.
        let second = send(other.clone(), "order-2", other_body).await;
        assert_eq!(second.status, StatusCode::OK);
        assert_eq!(total(&watermarks(&e.client, &["idem"]).await), 4);
        // A refused request does not use up its key: the corrected retry writes.
        let bad = json!({"records": [{"value": 1, "partition": 9}]}).to_string();
        send(app.clone(), "order-3", bad).await.assert_error(404, 40402);
        let fixed = send(app.clone(), "order-3", json!({"records": [{"value": 1, "partition": 0}]}).to_string()).await;
        assert_eq!(fixed.status, StatusCode::OK);
        assert_eq!(total(&watermarks(&e.client, &["idem"]).await), 5);
        // Without a key, the same body writes again.
        for _ in 0..2 {
            let a = call(app, Method::POST, "/topics/idem", &[("content-type", JSON_V2)], body.clone()).await;
            assert_eq!(a.status, StatusCode::OK);
        }
        assert_eq!(total(&watermarks(&e.client, &["idem"]).await), 11);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_every_route() {
    bounded(async {
        let e = env().await;
        let a = get(&e.app, "/openapi.json").await;
        assert_eq!(a.status, StatusCode::OK);
        let doc = a.json();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().unwrap();
        let expected = [
            ("/topics", "get"),
            ("/topics/{topic}", "get"),
            ("/topics/{topic}", "post"),
            ("/topics/{topic}/partitions", "get"),
            ("/topics/{topic}/partitions/{partition}", "get"),
            ("/topics/{topic}/partitions/{partition}", "post"),
            ("/topics/{topic}/partitions/{partition}/offsets", "get"),
            ("/topics/{topic}/partitions/{partition}/records", "get"),
            ("/topics/{topic}/partitions/{partition}/stream", "get"),
            ("/v3/clusters", "get"),
            ("/v3/clusters/{cluster_id}", "get"),
            ("/v3/clusters/{cluster_id}/topics", "get"),
            ("/v3/clusters/{cluster_id}/topics", "post"),
            ("/v3/clusters/{cluster_id}/topics/{topic_name}", "get"),
            ("/v3/clusters/{cluster_id}/topics/{topic_name}", "delete"),
            (
                "/v3/clusters/{cluster_id}/topics/{topic_name}/configs",
                "get",
            ),
            (
                "/v3/clusters/{cluster_id}/topics/{topic_name}/partitions",
                "get",
            ),
            ("/consumers/{group}", "post"),
            ("/consumers/{group}/instances/{name}", "delete"),
            ("/consumers/{group}/instances/{name}/subscription", "post"),
            ("/consumers/{group}/instances/{name}/subscription", "get"),
            ("/consumers/{group}/instances/{name}/subscription", "delete"),
            ("/consumers/{group}/instances/{name}/assignments", "get"),
            ("/consumers/{group}/instances/{name}/assignments", "post"),
            ("/consumers/{group}/instances/{name}/records", "get"),
            ("/consumers/{group}/instances/{name}/offsets", "post"),
            ("/consumers/{group}/instances/{name}/offsets", "get"),
            ("/consumers/{group}/instances/{name}/positions", "post"),
            (
                "/consumers/{group}/instances/{name}/positions/beginning",
                "post",
            ),
            ("/consumers/{group}/instances/{name}/positions/end", "post"),
        ];
        for (path, method) in expected {
            let op = &paths.get(path).unwrap_or_else(|| panic!("{path} missing"))[method];
            assert!(op.is_object(), "{method} {path} missing");
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses
                    .keys()
                    .any(|s| s.starts_with('4') || s.starts_with('5')),
                "{method} {path} documents its errors"
            );
        }
        let n: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(
            n,
            expected.len(),
            "no undocumented extra operations, none missing"
        );
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for s in [
            "ErrorBody",
            "ProduceRequest",
            "ProduceRecord",
            "ProduceResponse",
            "RecordJson",
            "TopicV2",
            "TopicV3",
            "CreateTopicV3",
            "ClusterListV3",
            "CreateConsumerRequest",
            "CreateConsumerResponse",
            "SubscriptionRequest",
            "CommittedOffsetsResponse",
        ] {
            assert!(schemas.contains_key(s), "schema {s}");
        }
        let produce = &paths["/topics/{topic}"]["post"]["requestBody"]["content"];
        for ct in [JSON_V2, BINARY_V2, "application/json"] {
            assert!(produce.get(ct).is_some(), "produce accepts {ct}");
        }
        // Every route in the spec answers (not the 404 fallback).
        for (path, _) in expected {
            let uri = path
                .replace("{topic}", "none")
                .replace("{topic_name}", "none")
                .replace("{partition}", "0")
                .replace("{cluster_id}", "none")
                .replace("{group}", "none")
                .replace("{name}", "none");
            let a = get(&e.app, &uri).await;
            if a.status == StatusCode::NOT_FOUND {
                assert!(
                    !a.json()["message"].as_str().unwrap().contains("no route"),
                    "{uri}"
                );
            }
        }
        // The docs page is served from the binary (vendored Swagger UI).
        let docs = get(&e.app, "/docs/").await;
        assert_eq!(docs.status, StatusCode::OK);
        assert!(
            String::from_utf8_lossy(&docs.body).contains("swagger"),
            "Swagger UI page"
        );
        // The spec served equals the one the crate builds.
        assert_eq!(doc, serde_json::to_value(cascade_rest::openapi()).unwrap());
    })
    .await;
}

// ------------------------------------------------------------------------------------------
// Real HTTP: the node's own listener and a gateway process.

/// One HTTP/1.1 request over a fresh connection; returns (status, head, body).
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .expect("answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("a head");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
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
    (status, head.to_string(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_listener_and_gateway_process_serve_the_api() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let mut node = Node::start(dir.path());
        let node_http = node.http.clone().unwrap();
        // The node's listener: REST next to the ops endpoints.
        assert_eq!(http(&node_http, "GET", "/healthz", &[], "").await.0, 200);
        assert_eq!(http(&node_http, "GET", "/readyz", &[], "").await.0, 200);
        let (status, head, body) = http(&node_http, "GET", "/nowhere", &[], "").await;
        assert_eq!(status, 404);
        assert!(head.to_ascii_lowercase().contains("content-type: application/json"));
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error_code"], 404);
        let (_, _, clusters) = http(&node_http, "GET", "/v3/clusters", &[], "").await;
        let cid = serde_json::from_str::<Value>(&clusters).unwrap()["data"][0]["cluster_id"].as_str().unwrap().to_string();
        let create = json!({"topic_name": "gw", "partitions_count": 2}).to_string();
        let (status, _, _) = http(&node_http, "POST", &format!("/v3/clusters/{cid}/topics"), &[("content-type", "application/json")], &create).await;
        assert_eq!(status, 201);

        // A gateway in front of the node.
        let gw = Gateway::start(&node.grpc);
        assert_eq!(http(&gw.http, "GET", "/healthz", &[], "").await.0, 200);
        assert_eq!(http(&gw.http, "GET", "/readyz", &[], "").await.0, 200);
        let (status, _, body) = http(&gw.http, "GET", "/topics", &[], "").await;
        assert_eq!((status, body.as_str()), (200, "[\"gw\"]"));
        let produce = json!({"records": [{"key": "a", "value": {"n": 1}}, {"value": "x", "partition": 1}]}).to_string();
        let (status, _, body) = http(&gw.http, "POST", "/topics/gw", &[("content-type", JSON_V2), ("idempotency-key", "gw-1")], &produce).await;
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        // The same key through the node's own listener: the broker remembers it.
        let (_, _, again) = http(&node_http, "POST", "/topics/gw", &[("content-type", JSON_V2), ("idempotency-key", "gw-1")], &produce).await;
        assert_eq!(serde_json::from_str::<Value>(&again).unwrap(), answer);
        let p = answer["offsets"][0]["partition"].as_u64().unwrap();
        let (status, _, body) = http(&gw.http, "GET", &format!("/topics/gw/partitions/{p}/records?offset=0"), &[("accept", JSON_V2)], "").await;
        assert_eq!(status, 200);
        let recs: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(recs[0]["key"], "a");
        assert_eq!(recs[0]["value"], json!({"n": 1}));
        let in_p = answer["offsets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["partition"] == p)
            .count();
        assert_eq!(recs.as_array().unwrap().len(), in_p, "written once");
        let (status, _, body) = http(&gw.http, "GET", "/openapi.json", &[], "").await;
        assert_eq!(status, 200);
        assert!(serde_json::from_str::<Value>(&body).unwrap()["paths"]["/topics"].is_object());
        let metrics = http(&gw.http, "GET", "/metrics", &[], "").await.2;
        assert!(metrics.contains("cascade_http_requests_total"), "{metrics}");

        // SSE over a real socket: events arrive; closing the socket ends the subscription.
        {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(&gw.http).await.unwrap();
            let req = format!("GET /topics/gw/partitions/1/stream?offset=0&format=json HTTP/1.1\r\nhost: {}\r\n\r\n", gw.http);
            s.write_all(req.as_bytes()).await.unwrap();
            let mut got = String::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !got.contains("\"value\":\"x\"") {
                let mut buf = [0u8; 4096];
                let n = tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await.expect("event in time").unwrap();
                assert!(n > 0, "stream closed early: {got}");
                got.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            assert!(got.contains("text/event-stream"));
            assert!(got.contains("id: 0"));
            assert!(subscriptions(&node).await >= 1.0);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while subscriptions(&node).await > 0.0 {
            assert!(Instant::now() < deadline, "the subscription must end when the client disconnects");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Brokers gone: the gateway stays up but is not ready, and REST answers 503 JSON.
        let stopped = tokio::task::spawn_blocking(move || {
            node.stop();
            node
        })
        .await
        .unwrap();
        assert_eq!(http(&gw.http, "GET", "/healthz", &[], "").await.0, 200);
        assert_eq!(http(&gw.http, "GET", "/readyz", &[], "").await.0, 503);
        let (status, _, body) = http(&gw.http, "GET", "/topics", &[], "").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error_code"], 50302);
        drop(stopped);
    })
    .await;
}

/// Sends `head` and then all of `body` over a blocking socket before reading anything, as
/// Python's urllib and many other clients do, and returns what the server answered (or the
/// I/O error that ended the exchange).
fn send_all_then_read(addr: &str, head: &str, body: &[u8]) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// A chunked body of `n` bytes in 1 MiB chunks.
fn chunked(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + n / 1000 + 16);
    let chunk = vec![b'a'; 1 << 20];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len());
        out.extend_from_slice(format!("{k:x}\r\n").as_bytes());
        out.extend_from_slice(&chunk[..k]);
        out.extend_from_slice(b"\r\n");
        left -= k;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_its_413_even_when_the_client_sends_it_all_first() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(dir.path());
        let addr = node.http.clone().unwrap();
        // 27 MB, over the 16 MiB limit: far more than socket buffers hold, so a server that
        // closed without reading would reset the connection under the client's writes.
        let size = 27_000_000;
        let records = format!(
            "{{\"records\":[{{\"value\":\"{}\"}}]}}",
            "a".repeat(size - 30)
        );
        let with_length = format!(
            "POST /topics/big HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {JSON_V2}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            records.len()
        );
        let with_chunks = format!(
            "POST /topics/big HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {JSON_V2}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        let cases = [
            ("content-length", with_length, records.into_bytes()),
            ("chunked", with_chunks, chunked(size)),
        ];
        for (what, head, body) in cases {
            let a = addr.clone();
            let answer = tokio::task::spawn_blocking(move || send_all_then_read(&a, &head, &body))
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{what}: the exchange failed: {e}"));
            assert!(answer.starts_with("HTTP/1.1 413"), "{what}: {answer}");
            let json = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
            let json: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{what}: {e}: {answer}"));
            assert_eq!(json["error_code"], 413, "{what}");
        }

        // A client that asks first (Expect: 100-continue) gets the 413 without sending the body.
        let a = addr.clone();
        let answer = tokio::task::spawn_blocking(move || {
            let head = format!(
                "POST /topics/big HTTP/1.1\r\nhost: {a}\r\ncontent-type: {JSON_V2}\r\ncontent-length: {size}\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n"
            );
            send_all_then_read(&a, &head, b"")
        })
        .await
        .unwrap()
        .unwrap();
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

        // Nothing was written, and the node still serves.
        let (status, _, body) = http(&addr, "GET", "/topics", &[], "").await;
        assert_eq!((status, body.as_str()), (200, "[]"));
    })
    .await;
}
