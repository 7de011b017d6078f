//! [`Client`]'s record calls, routed to partition leaders: produce (split across leaders when
//! a request spans several), fetch, list offsets, subscribe and follow.

use super::*;
use crate::error::partition_error;
use bytes::Bytes;
use futures::Stream;
use std::collections::BTreeMap;

impl Client {
    /// Sends a produce request (several partitions, typed records, an idempotency key);
    /// per-partition errors that retries did not cure are left in the answer.
    ///
    /// When all its partitions have one leader (always on a single node) the request goes
    /// there as it is. Otherwise it is split per partition, each part sent to its leader
    /// (concurrently) and the answers merged; entries with partition -1 are then placed by
    /// the client with the broker's rule (murmur2 of the key, one partition per request for
    /// unkeyed records), and an idempotency key `K` becomes `K/<partition>` per part.
    /// A part that fails other than per partition (e.g. its leader stayed unreachable) fails
    /// the whole call, although other parts may have been written.
    pub async fn produce(&self, req: pb::ProduceRequest) -> Result<pb::ProduceResponse> {
        let topic = req.topic.clone();
        self.prepare(Target::Partition(&topic, 0)).await;
        let first = req
            .partitions
            .iter()
            .find(|p| p.partition >= 0)
            .map_or(0, |p| p.partition as u32);
        let split = self.metadata().is_some_and(|m| needs_split(&m, &req));
        if !split {
            return self
                .call(Target::Partition(&topic, first), Repeatable, |ch| {
                    let req = req.clone();
                    let topic = &topic;
                    async move {
                        let resp = records_on(ch).produce(req).await?.into_inner();
                        all_refused(topic, &resp)?;
                        Ok(resp)
                    }
                })
                .await;
        }
        let count = self
            .metadata()
            .and_then(|m| m.partition_count(&topic))
            .unwrap_or(1)
            .max(1);
        let parts = split_by_partition(req, count);
        let sends = parts.into_iter().map(|(p, sub)| {
            let topic = &topic;
            async move {
                let r = self
                    .call(Target::Partition(topic, p), Repeatable, |ch| {
                        let sub = sub.clone();
                        async move {
                            let resp = records_on(ch).produce(sub).await?.into_inner();
                            all_refused(topic, &resp)?;
                            Ok(resp)
                        }
                    })
                    .await;
                (p, r)
            }
        });
        let mut results = Vec::new();
        for (p, r) in futures::future::join_all(sends).await {
            match r {
                Ok(resp) => results.extend(resp.results),
                Err(e) => match e.reason() {
                    // Refused per partition until the budget ran out: nothing was written.
                    Some(code) if is_partition_failure(&e) => {
                        results.push(pb::PartitionProduceResult {
                            partition: p,
                            error: Some(pb::Error {
                                code: code as i32,
                                message: e.to_string(),
                            }),
                            ..Default::default()
                        });
                    }
                    _ => return Err(e),
                },
            }
        }
        Ok(pb::ProduceResponse { results })
    }

    /// Appends encoded batches to one partition (at its leader, with retries: see the module
    /// docs on at-least-once).
    pub async fn produce_batches(
        &self,
        topic: &str,
        partition: u32,
        batches: Bytes,
        acks: Acks,
    ) -> Result<Produced> {
        let req = pb::ProduceRequest {
            topic: topic.into(),
            partitions: vec![pb::PartitionRecords {
                partition: partition as i32,
                batches,
                records: vec![],
            }],
            acks: acks as i32,
            timeout_ms: 0,
            idempotency_key: String::new(),
        };
        self.call(Target::Partition(topic, partition), Repeatable, |ch| {
            let req = req.clone();
            async move { first_result(topic, records_on(ch).produce(req).await?.into_inner()) }
        })
        .await
    }

    /// Asks the cluster for an idempotent producer id (`existing` None), or re-initialises
    /// `existing` (id, epoch): the cluster bumps its epoch and fences older instances. A new
    /// id is safe to ask for again after a lost answer (an id is wasted); a bump is not (it
    /// may have happened, and asking again with the old epoch is refused as fenced), so it is
    /// not resent after a transport failure.
    pub async fn init_producer_id(&self, existing: Option<(i64, i16)>) -> Result<(i64, i16)> {
        let req = pb::InitProducerIdRequest {
            producer_id: existing.map(|(id, _)| id),
            producer_epoch: existing.map(|(_, e)| i32::from(e)),
        };
        let idempotence = if existing.is_some() { Once } else { Repeatable };
        let r = self
            .call(Target::Any, idempotence, |ch| async move {
                Ok(records_on(ch).init_producer_id(req).await?.into_inner())
            })
            .await?;
        let epoch = i16::try_from(r.producer_epoch)
            .map_err(|_| ClientError::Decode(format!("producer epoch {}", r.producer_epoch)))?;
        Ok((r.producer_id, epoch))
    }

    /// Produces typed records; `partition` None lets the broker choose (key hash or sticky).
    pub async fn produce_records(
        &self,
        topic: &str,
        partition: Option<u32>,
        records: Vec<pb::Record>,
        acks: Acks,
    ) -> Result<Vec<Produced>> {
        let resp = self
            .produce(pb::ProduceRequest {
                topic: topic.into(),
                partitions: vec![pb::PartitionRecords {
                    partition: partition.map_or(-1, |p| p as i32),
                    batches: Bytes::new(),
                    records,
                }],
                acks: acks as i32,
                timeout_ms: 0,
                idempotency_key: String::new(),
            })
            .await?;
        resp.results
            .iter()
            .map(|r| {
                partition_error(topic, r.partition, r.error.as_ref())?;
                Ok(Produced {
                    partition: r.partition,
                    base_offset: r.base_offset,
                    last_offset: r.last_offset,
                })
            })
            .collect()
    }

    /// The newest leader epoch known for a partition: from fetch answers and the cached
    /// metadata, whichever is newer.
    pub(crate) fn known_leader_epoch(&self, topic: &str, partition: u32) -> Option<i32> {
        let seen = self
            .inner
            .leader_epochs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(topic.to_string(), partition))
            .copied();
        let cached = self
            .metadata()
            .and_then(|m| m.partition(topic, partition).map(|p| p.leader_epoch));
        seen.max(cached)
    }

    /// Notes the leader epoch a fetch answer came from.
    pub(crate) fn saw_leader_epoch(&self, topic: &str, partition: u32, epoch: i32) {
        let mut m = self
            .inner
            .leader_epochs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let e = m.entry((topic.to_string(), partition)).or_insert(epoch);
        *e = (*e).max(epoch);
    }

    /// Reads one partition from `offset` at its leader, waiting up to `max_wait` for data.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait: Duration,
    ) -> Result<pb::FetchedPartition> {
        let req = pb::FetchRequest {
            partitions: vec![pb::FetchPartition {
                topic: topic.into(),
                partition,
                position: Some(pb::fetch_partition::Position::Offset(offset)),
                max_bytes,
                current_leader_epoch: None,
            }],
            max_wait_ms: max_wait.as_millis().min(u128::from(u32::MAX)) as u32,
            min_bytes: 1,
            max_bytes,
        };
        self.call(Target::Partition(topic, partition), Repeatable, |ch| {
            let mut req = req.clone();
            // Per attempt: a retry after a refresh knows the newer epoch.
            req.partitions[0].current_leader_epoch = self.known_leader_epoch(topic, partition);
            async move {
                let mut resp = records_on(ch).fetch(req).await?.into_inner();
                let p = resp.partitions.pop().ok_or_else(|| {
                    ClientError::Decode("fetch response without partitions".into())
                })?;
                partition_error(topic, partition, p.error.as_ref())?;
                self.saw_leader_epoch(topic, partition, p.leader_epoch);
                Ok(p)
            }
        })
        .await
    }

    /// Sends a fetch of several partitions, all led by the node the first one routes to
    /// (see [`Client::route_key`]), once, without retries: the caller (a group consumer)
    /// handles per-partition and node failures by refreshing and fetching again.
    pub(crate) async fn fetch_once(
        &self,
        route_of: (&str, u32),
        req: pb::FetchRequest,
    ) -> Result<pb::FetchResponse> {
        let ch = self.resolve(Target::Partition(route_of.0, route_of.1), 0).1;
        Ok(records_on(ch).fetch(req).await?.into_inner())
    }

    /// Which node a partition's requests go to now, as a key that is equal for partitions
    /// with the same leader (None: the bootstrap connection).
    pub(crate) fn route_key(&self, topic: &str, partition: u32) -> Option<String> {
        match self.metadata()?.route_partition(topic, partition) {
            Route::Node(_, addr) => Some(addr),
            Route::Bootstrap => None,
        }
    }

    /// Makes sure metadata exists and knows `topic` (a refresh when needed).
    pub(crate) async fn ensure_topic(&self, topic: &str) {
        self.prepare(Target::Partition(topic, 0)).await;
    }

    /// Refreshes the metadata after a failure seen with the cache as it is now; an error
    /// means no broker answered.
    pub(crate) async fn invalidate(&self) -> Result<()> {
        let (version, _) = self.read_meta();
        self.refresh_since(version).await
    }

    /// Earliest, latest, or by-timestamp offsets of the given partitions (all when empty),
    /// each asked of its leader.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partitions: Vec<u32>,
        spec: pb::OffsetSpec,
        timestamp_ms: i64,
    ) -> Result<Vec<pb::PartitionOffset>> {
        self.prepare(Target::Partition(topic, 0)).await;
        let ask = |partitions: Vec<u32>| {
            let req = pb::ListOffsetsRequest {
                topic: topic.into(),
                partitions: partitions.clone(),
                spec: spec as i32,
                timestamp_ms,
            };
            let first = partitions.first().copied().unwrap_or(0);
            async move {
                self.call(Target::Partition(topic, first), Repeatable, |ch| {
                    let req = req.clone();
                    async move { Ok(records_on(ch).list_offsets(req).await?.into_inner().offsets) }
                })
                .await
            }
        };
        let meta = self.metadata();
        let wanted: Vec<u32> = match (&meta, partitions.is_empty()) {
            (Some(m), true) => (0..m.partition_count(topic).unwrap_or(0)).collect(),
            _ => partitions.clone(),
        };
        let one_leader = match &meta {
            Some(m) => {
                let mut routes = wanted.iter().map(|&p| m.route_partition(topic, p));
                let first = routes.next();
                routes.all(|r| Some(r) == first)
            }
            None => true,
        };
        if one_leader {
            return ask(partitions).await;
        }
        let mut out = Vec::new();
        for r in futures::future::join_all(wanted.into_iter().map(|p| ask(vec![p]))).await {
            out.extend(r?);
        }
        out.sort_by_key(|o| o.partition);
        Ok(out)
    }

    /// Follows a partition live from a position, at its leader. The stream ends when the
    /// leader changes or its node goes away; [`Client::follow`] reconnects by itself.
    pub async fn subscribe(
        &self,
        topic: &str,
        partition: u32,
        position: pb::subscribe_request::Position,
    ) -> Result<tonic::Streaming<pb::FetchedPartition>> {
        let req = pb::SubscribeRequest {
            topic: topic.into(),
            partition,
            position: Some(position),
            max_bytes: 0,
        };
        self.call(Target::Partition(topic, partition), Repeatable, |ch| {
            let req = req.clone();
            async move { Ok(records_on(ch).subscribe(req).await?.into_inner()) }
        })
        .await
    }

    /// Like [`Client::subscribe`], but the stream survives leader changes and node failures:
    /// it reconnects to the partition's (new) leader from the offset after the last message
    /// (from the original position when none arrived yet), within the retry budget per
    /// reconnection. Ends with an error that retries did not cure.
    pub fn follow(
        &self,
        topic: &str,
        partition: u32,
        position: pb::subscribe_request::Position,
    ) -> impl Stream<Item = Result<pb::FetchedPartition>> + Send + 'static {
        struct State {
            client: Client,
            topic: String,
            partition: u32,
            position: pb::subscribe_request::Position,
            upstream: Option<tonic::Streaming<pb::FetchedPartition>>,
            done: bool,
            /// Pause between reconnections, reset by every message: a stream that keeps
            /// breaking at once must not spin.
            backoff: Backoff,
        }
        let state = State {
            client: self.clone(),
            topic: topic.to_string(),
            partition,
            position,
            upstream: None,
            done: false,
            backoff: Backoff::default(),
        };
        futures::stream::unfold(state, |mut s| async move {
            use futures::StreamExt;
            loop {
                if s.done {
                    return None;
                }
                let Some(up) = s.upstream.as_mut() else {
                    match s.client.subscribe(&s.topic, s.partition, s.position).await {
                        Ok(up) => {
                            s.upstream = Some(up);
                            continue;
                        }
                        Err(e) => {
                            s.done = true;
                            return Some((Err(e), s));
                        }
                    }
                };
                let failure = match up.next().await {
                    Some(Ok(msg)) => {
                        match partition_error(&s.topic, s.partition, msg.error.as_ref()) {
                            Ok(()) => {
                                s.position =
                                    pb::subscribe_request::Position::Offset(msg.next_offset);
                                return Some((Ok(msg), s));
                            }
                            Err(e) => e,
                        }
                    }
                    Some(Err(status)) => ClientError::from(status),
                    // The node closed the stream (shutting down, leadership moved).
                    None => ClientError::Server {
                        code: tonic::Code::Unavailable,
                        reason: None,
                        message: "subscription closed by the broker".into(),
                        leader: None,
                    },
                };
                s.upstream = None;
                if failure.retry() == Retry::No {
                    s.done = true;
                    return Some((Err(failure), s));
                }
                tracing::debug!(topic = %s.topic, partition = s.partition, error = %failure,
                    "subscription interrupted: reconnecting");
                if failure.leader_hint().is_none()
                    && s.client.invalidate().await.is_err()
                    && failure.retry() == Retry::Ambiguous
                {
                    // No broker answers at all: the cluster is down, not moving.
                    s.done = true;
                    return Some((Err(failure), s));
                }
                let pause = s.backoff.next().unwrap_or_default();
                tokio::time::sleep(crate::retry::jitter(pause)).await;
            }
        })
    }
}

/// The first retriable refusal in a produce answer, when every partition was refused so:
/// then nothing was written and the whole request can be sent again. A partly refused answer
/// is returned as it is (resending it would write the accepted partitions twice).
fn all_refused(topic: &str, resp: &pb::ProduceResponse) -> Result<()> {
    let mut first = None;
    for r in &resp.results {
        match partition_error(topic, r.partition, r.error.as_ref()) {
            Err(e) if e.retry() == Retry::Refused => {
                first.get_or_insert(e);
            }
            _ => return Ok(()),
        }
    }
    first.map_or(Ok(()), Err)
}

fn first_result(topic: &str, resp: pb::ProduceResponse) -> Result<Produced> {
    let r = resp
        .results
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::Decode("produce response without results".into()))?;
    partition_error(topic, r.partition, r.error.as_ref())?;
    Ok(Produced {
        partition: r.partition,
        base_offset: r.base_offset,
        last_offset: r.last_offset,
    })
}

/// True for a failure of one partition's part (refused, possibly after retries): nothing of
/// it was written.
fn is_partition_failure(e: &ClientError) -> bool {
    match e {
        ClientError::Partition { .. } => true,
        ClientError::RetriesExhausted { last, .. } => is_partition_failure(last),
        _ => false,
    }
}

/// Whether a produce request spans more than one leader (then it is split per partition).
fn needs_split(m: &ClusterMetadata, req: &pb::ProduceRequest) -> bool {
    if m.single_node() {
        return false;
    }
    let count = m.partition_count(&req.topic).unwrap_or(0);
    let mut routes = Vec::new();
    for p in &req.partitions {
        if p.partition >= 0 {
            routes.push(m.route_partition(&req.topic, p.partition as u32));
        } else {
            // Placed by the broker: anywhere in the topic.
            routes.extend((0..count).map(|q| m.route_partition(&req.topic, q)));
        }
    }
    routes.windows(2).any(|w| w[0] != w[1])
}

/// Splits a produce request into one request per partition, placing records of entries
/// with partition -1 as the broker would (murmur2 of the key; one partition for the
/// request's unkeyed records). Keeps the order of entries within a partition.
fn split_by_partition(req: pb::ProduceRequest, partitions: u32) -> Vec<(u32, pb::ProduceRequest)> {
    let sticky = match req.idempotency_key.as_str() {
        "" => rand::random::<u32>() % partitions,
        k => cascade_types::partition_for_key(k.as_bytes(), partitions),
    };
    let mut by_partition: BTreeMap<u32, Vec<pb::PartitionRecords>> = BTreeMap::new();
    let mut order = Vec::new();
    let mut put = |p: u32, e: pb::PartitionRecords| {
        if !by_partition.contains_key(&p) {
            order.push(p);
        }
        by_partition.entry(p).or_default().push(e);
    };
    for e in req.partitions {
        if e.partition >= 0 {
            put(e.partition as u32, e);
            continue;
        }
        // Only typed records may have partition -1; batches with -1 go to partition 0's
        // leader, which refuses them as the broker always did.
        if e.records.is_empty() {
            put(0, e);
            continue;
        }
        let mut placed: BTreeMap<u32, Vec<pb::Record>> = BTreeMap::new();
        for r in e.records {
            let p = match &r.key {
                Some(k) => cascade_types::partition_for_key(k, partitions),
                None => sticky,
            };
            placed.entry(p).or_default().push(r);
        }
        for (p, records) in placed {
            put(
                p,
                pb::PartitionRecords {
                    partition: p as i32,
                    batches: Bytes::new(),
                    records,
                },
            );
        }
    }
    order
        .into_iter()
        .map(|p| {
            let sub = pb::ProduceRequest {
                topic: req.topic.clone(),
                partitions: by_partition.remove(&p).unwrap_or_default(),
                acks: req.acks,
                timeout_ms: req.timeout_ms,
                idempotency_key: if req.idempotency_key.is_empty() {
                    String::new()
                } else {
                    format!("{}/{p}", req.idempotency_key)
                },
            };
            (p, sub)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: Option<&'static str>) -> pb::Record {
        pb::Record {
            key: key.map(|k| Bytes::from_static(k.as_bytes())),
            value: Some(Bytes::from_static(b"v")),
            ..Default::default()
        }
    }

    fn entry(partition: i32, records: Vec<pb::Record>) -> pb::PartitionRecords {
        pb::PartitionRecords {
            partition,
            batches: Bytes::new(),
            records,
        }
    }

    #[test]
    fn split_places_records_like_the_broker() {
        let req = pb::ProduceRequest {
            topic: "t".into(),
            partitions: vec![
                entry(2, vec![rec(None)]),
                entry(-1, vec![rec(Some("alice")), rec(None), rec(Some("bob"))]),
                entry(2, vec![rec(Some("x"))]),
            ],
            acks: Acks::All as i32,
            timeout_ms: 7,
            idempotency_key: "k".into(),
        };
        let parts = split_by_partition(req, 4);
        let alice = cascade_types::partition_for_key(b"alice", 4);
        let bob = cascade_types::partition_for_key(b"bob", 4);
        let sticky = cascade_types::partition_for_key(b"k", 4);
        // Partition 2 first (first seen), with its two entries in order.
        assert_eq!(parts[0].0, 2);
        let p2 = &parts[0].1;
        let n2 = if alice == 2 || bob == 2 || sticky == 2 {
            3
        } else {
            2
        };
        assert!(p2.partitions.len() >= 2 && p2.partitions.len() <= n2);
        assert_eq!(p2.partitions[0].records[0].key, None);
        assert_eq!(
            p2.partitions.last().unwrap().records[0].key.as_deref(),
            Some(&b"x"[..])
        );
        for (p, sub) in &parts {
            assert_eq!(sub.idempotency_key, format!("k/{p}"));
            assert_eq!((sub.timeout_ms, sub.topic.as_str()), (7, "t"));
            assert!(sub.partitions.iter().all(|e| e.partition == *p as i32));
        }
        let placed = |key: Option<&[u8]>| {
            parts
                .iter()
                .find(|(_, sub)| {
                    sub.partitions.iter().any(|e| {
                        e.records
                            .iter()
                            .any(|r| r.key.as_deref() == key && key.is_some())
                    })
                })
                .map(|(p, _)| *p)
        };
        assert_eq!(placed(Some(b"alice")), Some(alice));
        assert_eq!(placed(Some(b"bob")), Some(bob));
        let total: usize = parts
            .iter()
            .flat_map(|(_, s)| &s.partitions)
            .map(|e| e.records.len())
            .sum();
        assert_eq!(total, 5, "no record lost or duplicated");
    }

    #[test]
    fn produce_is_resent_only_when_every_partition_was_refused() {
        let refused = |p: u32| pb::PartitionProduceResult {
            partition: p,
            error: Some(pb::Error {
                code: pb::ErrorCode::NotLeader as i32,
                message: "moved".into(),
            }),
            ..Default::default()
        };
        let ok = |p: u32| pb::PartitionProduceResult {
            partition: p,
            ..Default::default()
        };
        let all = pb::ProduceResponse {
            results: vec![refused(0), refused(1)],
        };
        assert_eq!(all_refused("t", &all).unwrap_err().retry(), Retry::Refused);
        let mixed = pb::ProduceResponse {
            results: vec![refused(0), ok(1)],
        };
        assert!(
            all_refused("t", &mixed).is_ok(),
            "partition 1 would be written twice"
        );
        assert!(all_refused("t", &pb::ProduceResponse::default()).is_ok());
    }

    #[test]
    fn needs_split_only_across_leaders() {
        let desc = |leaders: &[u32]| {
            ClusterMetadata::from_description(&pb::ClusterDescription {
                brokers: (1..=2)
                    .map(|n| pb::BrokerDescription {
                        node_id: n,
                        grpc_addr: format!("10.0.0.{n}:1"),
                        http_addr: String::new(),
                        alive: true,
                    })
                    .collect(),
                topics: vec![pb::TopicDescription {
                    name: "t".into(),
                    partitions: leaders
                        .iter()
                        .enumerate()
                        .map(|(i, l)| pb::PartitionDescription {
                            partition: i as u32,
                            leader: *l,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            })
        };
        let req = |parts: &[i32]| pb::ProduceRequest {
            topic: "t".into(),
            partitions: parts.iter().map(|p| entry(*p, vec![rec(None)])).collect(),
            ..Default::default()
        };
        let m = desc(&[1, 2, 1]);
        assert!(!needs_split(&m, &req(&[0, 2])), "both on node 1");
        assert!(needs_split(&m, &req(&[0, 1])));
        assert!(
            needs_split(&m, &req(&[-1])),
            "the broker could pick either node"
        );
        assert!(!needs_split(&desc(&[1, 1]), &req(&[-1])));
    }
}
