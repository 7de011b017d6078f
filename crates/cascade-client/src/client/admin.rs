//! [`Client`]'s admin calls: topics, their configuration and partitions, and the cluster
//! description. Admin requests go to any broker (the metadata group forwards them).

use super::*;
use std::collections::BTreeMap;

impl Client {
    /// Creates a topic. Not resent after a transport failure (it may have been created).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<pb::TopicDescription> {
        let req = pb::CreateTopicRequest {
            name: name.into(),
            partitions,
            replication_factor,
            configs: configs.into_iter().collect(),
            validate_only: false,
        };
        self.call(Target::Any, Once, |ch| {
            let req = req.clone();
            async move { Ok(admin_on(ch).create_topic(req).await?.into_inner()) }
        })
        .await
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let req = pb::DeleteTopicRequest { name: name.into() };
        self.call(Target::Any, Once, |ch| {
            let req = req.clone();
            async move { Ok(admin_on(ch).delete_topic(req).await.map(drop)?) }
        })
        .await
    }

    /// Lists topics.
    pub async fn list_topics(&self, include_internal: bool) -> Result<Vec<pb::TopicDescription>> {
        let req = pb::ListTopicsRequest { include_internal };
        self.call(Target::Any, Repeatable, |ch| async move {
            Ok(admin_on(ch).list_topics(req).await?.into_inner().topics)
        })
        .await
    }

    /// Describes a topic.
    pub async fn describe_topic(&self, name: &str) -> Result<pb::TopicDescription> {
        let req = pb::DescribeTopicRequest { name: name.into() };
        self.call(Target::Any, Repeatable, |ch| {
            let req = req.clone();
            async move { Ok(admin_on(ch).describe_topic(req).await?.into_inner()) }
        })
        .await
    }

    /// Raises a topic's partition count to `total`.
    pub async fn create_partitions(&self, name: &str, total: u32) -> Result<pb::TopicDescription> {
        let req = pb::CreatePartitionsRequest {
            name: name.into(),
            total,
        };
        self.call(Target::Any, Once, |ch| {
            let req = req.clone();
            async move { Ok(admin_on(ch).create_partitions(req).await?.into_inner()) }
        })
        .await
    }

    /// Sets and resets topic settings.
    pub async fn alter_topic_config(
        &self,
        name: &str,
        set: BTreeMap<String, String>,
        reset: Vec<String>,
    ) -> Result<pb::TopicDescription> {
        let req = pb::AlterTopicConfigRequest {
            name: name.into(),
            set: set.into_iter().collect(),
            reset,
        };
        self.call(Target::Any, Repeatable, |ch| {
            let req = req.clone();
            async move { Ok(admin_on(ch).alter_topic_config(req).await?.into_inner()) }
        })
        .await
    }

    /// An unclean leader election for `topic`/`partition` (see `Admin.ElectLeader`): elects
    /// `replica`, or with `None` the eligible replica whose log is longest. Sent once: a
    /// retry after an ambiguous failure would be refused anyway (the partition then has a
    /// usable in-sync replica, the one just elected).
    pub async fn elect_unclean_leader(
        &self,
        topic: &str,
        partition: u32,
        replica: Option<u32>,
    ) -> Result<pb::ElectLeaderResponse> {
        let req = pb::ElectLeaderRequest {
            topic: topic.into(),
            partition,
            unclean: true,
            replica: replica.unwrap_or(0),
        };
        self.call(Target::Any, Once, |ch| {
            let req = req.clone();
            async move { Ok(admin_on(ch).elect_leader(req).await?.into_inner()) }
        })
        .await
    }

    /// Nodes, controller and partition health.
    pub async fn describe_cluster(&self) -> Result<pb::ClusterDescription> {
        self.call(Target::Any, Repeatable, |ch| async move {
            Ok(admin_on(ch)
                .describe_cluster(pb::DescribeClusterRequest {})
                .await?
                .into_inner())
        })
        .await
    }

    /// Number of partitions of `topic`.
    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        Ok(self.describe_topic(topic).await?.partitions.len() as u32)
    }
}
