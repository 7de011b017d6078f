//! [`BrokerError`]: every way a broker operation fails, shaped for the caller.
//!
//! Each variant knows its [`ErrorCode`] (the machine-readable reason) and its gRPC status
//! class; the one conversion to `tonic::Status` lives in `grpc::`, so the logic never builds
//! wire errors itself.

use cascade_log::LogError;
use cascade_proto::LeaderHint;
use cascade_proto::v1::ErrorCode;
use tonic::Code;

/// Result alias for broker operations.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

/// An error from the broker's logic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The topic does not exist.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// The partition does not exist.
    #[error("topic {topic:?} has no partition {partition} (it has {count})")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: i64,
        /// How many the topic has.
        count: u32,
    },
    /// A topic with that name exists.
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    /// The topic name breaks the naming rules.
    #[error("{0}")]
    InvalidTopicName(#[from] cascade_types::NameError),
    /// A topic configuration entry was refused.
    #[error("{0}")]
    InvalidConfig(#[from] cascade_types::TopicConfigError),
    /// A bad partition count.
    #[error("{0}")]
    InvalidPartitions(String),
    /// A bad replication factor.
    #[error("{0}")]
    InvalidReplicationFactor(String),
    /// Any other malformed request.
    #[error("{0}")]
    InvalidRequest(String),
    /// A batch or record failed validation.
    #[error("invalid record batch: {0}")]
    InvalidRecord(String),
    /// A batch larger than the topic's `max.message.bytes`.
    #[error("record batch of {size} bytes exceeds max.message.bytes = {max} of topic {topic:?}")]
    RecordTooLarge {
        /// The topic.
        topic: String,
        /// The batch size.
        size: usize,
        /// The limit.
        max: u32,
    },
    /// The offset is outside the log.
    #[error(
        "offset {requested} is out of range for {topic}/{partition}: valid offsets are [{start}, {end}]"
    )]
    OffsetOutOfRange {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The offset asked for.
        requested: u64,
        /// Log start offset.
        start: u64,
        /// Log end offset.
        end: u64,
    },
    /// The group member is not known (never joined, left, or evicted).
    #[error("member {member:?} is not in group {group:?}; rejoin with member_epoch 0")]
    UnknownMember {
        /// The group.
        group: String,
        /// The member id.
        member: String,
    },
    /// The member's epoch is stale.
    #[error("member {member:?} of group {group:?} has epoch {got}, current is {current}; rejoin")]
    FencedMemberEpoch {
        /// The group.
        group: String,
        /// The member.
        member: String,
        /// The epoch sent.
        got: i32,
        /// The epoch the coordinator holds.
        current: i32,
    },
    /// A bad group id.
    #[error("{0}")]
    InvalidGroupId(cascade_types::NameError),
    /// No such group.
    #[error("group {0:?} does not exist")]
    GroupNotFound(String),
    /// The group has members, so the operation is refused.
    #[error("group {0:?} has active members; stop them first")]
    GroupNotEmpty(String),
    /// A consumer instance with that name exists in the group.
    #[error("consumer instance {name:?} already exists in group {group:?}")]
    ConsumerExists {
        /// The group.
        group: String,
        /// The instance name.
        name: String,
    },
    /// No such consumer instance (never created, deleted, or expired).
    #[error("consumer instance {name:?} not found in group {group:?}")]
    UnknownConsumer {
        /// The group.
        group: String,
        /// The instance name.
        name: String,
    },
    /// A seek or commit named a partition the instance does not own.
    #[error("partition {topic}/{partition} is not assigned to this consumer instance")]
    PartitionNotAssigned {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
    },
    /// The operation did not finish in time.
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// The broker is stopping.
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// The storage engine failed.
    #[error("storage error: {0}")]
    Storage(#[source] LogError),
    /// Metadata could not be persisted or loaded.
    #[error("metadata error: {0}")]
    Metadata(String),
    /// This node does not lead the partition.
    #[error("node {node} is not the leader of {topic}/{partition}{}", hint_text(.leader))]
    NotLeader {
        /// This node.
        node: u32,
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The leader, if known.
        leader: Option<LeaderHint>,
    },
    /// This node still leads the partition at an older epoch than the client knows: it has
    /// been replaced and not heard yet. Reported as `NOT_LEADER`.
    #[error(
        "node {node} leads {topic}/{partition} at epoch {epoch}, but the request knows epoch {requested}: a newer leader has taken over"
    )]
    StaleLeader {
        /// This node.
        node: u32,
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// This node's leader epoch.
        epoch: i32,
        /// The epoch the request named.
        requested: i32,
    },
    /// The partition has no leader right now.
    #[error(
        "{topic}/{partition} has no leader right now (election under way or no in-sync replica alive)"
    )]
    LeaderNotAvailable {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
    },
    /// A request carried an older leader epoch than the partition's.
    #[error("leader epoch {got} of {topic}/{partition} is fenced: current epoch is {current}")]
    FencedLeaderEpoch {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The epoch sent.
        got: i32,
        /// The current epoch.
        current: i32,
    },
    /// The in-sync set is smaller than `min.insync.replicas`.
    #[error("{topic}/{partition} has {isr} in-sync replicas, fewer than min.insync.replicas = {min}{}", if *.after_append { " (the records were written on the leader but are not acknowledged)" } else { "" })]
    NotEnoughReplicas {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// In-sync replicas now.
        isr: usize,
        /// The topic's minimum.
        min: u32,
        /// True when the set shrank while the produce waited.
        after_append: bool,
    },
    /// This node does not coordinate the group.
    #[error("node {node} does not coordinate group {group:?}{}", hint_text(.coordinator))]
    NotCoordinator {
        /// This node.
        node: u32,
        /// The group.
        group: String,
        /// The coordinator, if known.
        coordinator: Option<LeaderHint>,
    },
    /// Another node (the controller, a partition leader) refused the request; its reason
    /// is passed on unchanged.
    #[error("{message}")]
    Remote {
        /// The reason.
        code: ErrorCode,
        /// The status class.
        status: Code,
        /// The message.
        message: String,
        /// Its leader hint, if any.
        hint: Option<LeaderHint>,
    },
    /// The metadata controller (Raft leader) is unknown or unreachable.
    #[error("no metadata controller is available: {0}")]
    NoController(String),
    /// This node's replica could not be opened.
    #[error("node {node}'s replica of {topic}/{partition} is offline: {reason}")]
    ReplicaOffline {
        /// This node.
        node: u32,
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Why it could not be opened.
        reason: String,
    },
    /// An idempotent batch does not follow the producer's last one on the partition.
    #[error(
        "out-of-order sequence from producer {producer_id} (epoch {epoch}): expected {expected}, got {got}; nothing was written"
    )]
    OutOfOrderSequence {
        /// The producer.
        producer_id: i64,
        /// Its epoch.
        epoch: i16,
        /// The sequence the partition expects next.
        expected: i32,
        /// The batch's first sequence.
        got: i32,
    },
    /// Another instance re-initialised the producer id with a newer epoch.
    #[error(
        "producer {producer_id} epoch {epoch} is fenced: epoch {current} is current (another instance took over)"
    )]
    ProducerFenced {
        /// The producer.
        producer_id: i64,
        /// The epoch used.
        epoch: i16,
        /// The newer epoch.
        current: i16,
    },
    /// The producer id is unknown here.
    #[error("unknown producer id {producer_id}: {detail}")]
    UnknownProducerId {
        /// The producer.
        producer_id: i64,
        /// Why.
        detail: String,
    },
    /// The producer epoch was never issued for the id.
    #[error("producer {producer_id} has epoch {current}; epoch {epoch} was never issued")]
    InvalidProducerEpoch {
        /// The producer.
        producer_id: i64,
        /// The epoch used.
        epoch: i16,
        /// The current epoch.
        current: i16,
    },
}

fn hint_text(h: &Option<LeaderHint>) -> String {
    match h {
        Some(h) => format!("; node {} at {} is", h.node_id, h.grpc_addr),
        None => String::new(),
    }
}

impl BrokerError {
    /// The error another node answered, as this node reports it. A status without a Cascade
    /// reason (the node is down or unreachable) is `NoController`-like: retriable.
    pub fn from_remote(s: &tonic::Status) -> Self {
        match cascade_proto::error_code_of(s) {
            Some(code) => Self::Remote {
                code,
                status: s.code(),
                message: s.message().to_string(),
                hint: cascade_proto::leader_hint_of(s),
            },
            None => Self::NoController(format!("{}: {}", s.code(), s.message())),
        }
    }

    /// Where the caller should retry, for `NotLeader` and `NotCoordinator`.
    pub fn leader_hint(&self) -> Option<&LeaderHint> {
        match self {
            Self::Remote { hint, .. } => hint.as_ref(),
            Self::NotLeader { leader, .. } => leader.as_ref(),
            Self::NotCoordinator { coordinator, .. } => coordinator.as_ref(),
            _ => None,
        }
    }
}

impl BrokerError {
    /// The machine-readable reason.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownTopic(_) => ErrorCode::UnknownTopic,
            Self::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            Self::TopicExists(_) => ErrorCode::TopicAlreadyExists,
            Self::InvalidTopicName(_) => ErrorCode::InvalidTopicName,
            Self::InvalidConfig(_) => ErrorCode::InvalidConfig,
            Self::InvalidPartitions(_) => ErrorCode::InvalidPartitions,
            Self::InvalidReplicationFactor(_) => ErrorCode::InvalidReplicationFactor,
            Self::InvalidRequest(_) => ErrorCode::InvalidRequest,
            Self::InvalidRecord(_) => ErrorCode::InvalidRecord,
            Self::RecordTooLarge { .. } => ErrorCode::RecordTooLarge,
            Self::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            Self::UnknownMember { .. } => ErrorCode::UnknownMember,
            Self::FencedMemberEpoch { .. } => ErrorCode::FencedMemberEpoch,
            Self::InvalidGroupId(_) => ErrorCode::InvalidGroupId,
            Self::GroupNotFound(_) => ErrorCode::GroupNotFound,
            Self::GroupNotEmpty(_) => ErrorCode::GroupNotEmpty,
            Self::ConsumerExists { .. } => ErrorCode::ConsumerInstanceExists,
            Self::UnknownConsumer { .. } => ErrorCode::UnknownConsumerInstance,
            Self::PartitionNotAssigned { .. } => ErrorCode::PartitionNotAssigned,
            Self::Timeout(_) => ErrorCode::Timeout,
            Self::ShuttingDown => ErrorCode::ShuttingDown,
            Self::Storage(_) => ErrorCode::StorageError,
            Self::Metadata(_) => ErrorCode::Internal,
            Self::NotLeader { .. } | Self::StaleLeader { .. } => ErrorCode::NotLeader,
            Self::LeaderNotAvailable { .. } | Self::NoController(_) => {
                ErrorCode::LeaderNotAvailable
            }
            Self::FencedLeaderEpoch { .. } => ErrorCode::FencedLeaderEpoch,
            Self::NotEnoughReplicas { .. } => ErrorCode::NotEnoughReplicas,
            Self::NotCoordinator { .. } => ErrorCode::NotCoordinator,
            Self::Remote { code, .. } => *code,
            Self::ReplicaOffline { .. } => ErrorCode::StorageError,
            Self::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequence,
            Self::ProducerFenced { .. } => ErrorCode::ProducerFenced,
            Self::UnknownProducerId { .. } => ErrorCode::UnknownProducerId,
            Self::InvalidProducerEpoch { .. } => ErrorCode::InvalidProducerEpoch,
        }
    }

    /// The gRPC status class.
    pub fn grpc_code(&self) -> Code {
        if let Self::Remote { status, .. } = self {
            return *status;
        }
        match self.code() {
            ErrorCode::UnknownTopic
            | ErrorCode::UnknownPartition
            | ErrorCode::GroupNotFound
            | ErrorCode::UnknownMember
            | ErrorCode::UnknownConsumerInstance => Code::NotFound,
            ErrorCode::TopicAlreadyExists | ErrorCode::ConsumerInstanceExists => {
                Code::AlreadyExists
            }
            ErrorCode::PartitionNotAssigned => Code::FailedPrecondition,
            ErrorCode::OffsetOutOfRange => Code::OutOfRange,
            ErrorCode::RecordTooLarge | ErrorCode::RequestTooLarge => Code::InvalidArgument,
            ErrorCode::FencedMemberEpoch | ErrorCode::GroupNotEmpty => Code::FailedPrecondition,
            ErrorCode::Timeout => Code::DeadlineExceeded,
            ErrorCode::ShuttingDown
            | ErrorCode::NotLeader
            | ErrorCode::NotEnoughReplicas
            | ErrorCode::LeaderNotAvailable
            | ErrorCode::NotCoordinator => Code::Unavailable,
            ErrorCode::FencedLeaderEpoch
            | ErrorCode::OutOfOrderSequence
            | ErrorCode::ProducerFenced
            | ErrorCode::UnknownProducerId => Code::FailedPrecondition,
            ErrorCode::StorageError | ErrorCode::Internal => Code::Internal,
            _ => Code::InvalidArgument,
        }
    }
}

impl From<LogError> for BrokerError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::InvalidBatch { .. }
            | LogError::TooLarge { .. }
            | LogError::InvalidProducerFields { .. }
            | LogError::MixedDuplicates { .. } => Self::InvalidRecord(e.to_string()),
            LogError::OutOfOrderSequence {
                producer_id,
                epoch,
                expected,
                got,
            } => Self::OutOfOrderSequence {
                producer_id,
                epoch,
                expected,
                got,
            },
            LogError::ProducerFenced {
                producer_id,
                epoch,
                current,
            } => Self::ProducerFenced {
                producer_id,
                epoch,
                current,
            },
            LogError::UnknownProducerId {
                producer_id,
                sequence,
            } => Self::UnknownProducerId {
                producer_id,
                detail: format!(
                    "this partition has no state for it (it expired after being idle, or this is not its first batch here) and the batch starts at sequence {sequence}, not 0"
                ),
            },
            other => Self::Storage(other),
        }
    }
}
