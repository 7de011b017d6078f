//! [`Client`]'s consumer-group calls, routed to the group's coordinator: list, describe,
//! fetch/commit/reset offsets, delete, heartbeat.

use super::*;

impl Client {
    /// Lists consumer groups.
    pub async fn list_groups(&self) -> Result<Vec<pb::GroupSummary>> {
        self.call(Target::Any, Repeatable, |ch| async move {
            Ok(groups_on(ch)
                .list_groups(pb::ListGroupsRequest {})
                .await?
                .into_inner()
                .groups)
        })
        .await
    }

    /// Describes a group: members, assignments, lag.
    pub async fn describe_group(&self, group: &str) -> Result<pb::GroupDescription> {
        let req = pb::DescribeGroupRequest {
            group_id: group.into(),
        };
        self.call(Target::Group(group), Repeatable, |ch| {
            let req = req.clone();
            async move { Ok(groups_on(ch).describe_group(req).await?.into_inner()) }
        })
        .await
    }

    /// Committed offsets of a group (all when `partitions` is empty).
    pub async fn fetch_offsets(
        &self,
        group: &str,
        partitions: Vec<pb::TopicPartitions>,
    ) -> Result<Vec<pb::CommittedOffset>> {
        let req = pb::FetchOffsetsRequest {
            group_id: group.into(),
            partitions,
        };
        self.call(Target::Group(group), Repeatable, |ch| {
            let req = req.clone();
            async move { Ok(groups_on(ch).fetch_offsets(req).await?.into_inner().offsets) }
        })
        .await
    }

    /// Commits offsets (member id empty and epoch -1 for a group without members).
    pub async fn commit_offsets(
        &self,
        group: &str,
        member_id: &str,
        member_epoch: i32,
        offsets: Vec<pb::OffsetCommit>,
    ) -> Result<()> {
        let req = pb::CommitOffsetsRequest {
            group_id: group.into(),
            member_id: member_id.into(),
            member_epoch,
            offsets,
        };
        // Repeatable: committing the same offsets twice is committing them once.
        self.call(Target::Group(group), Repeatable, |ch| {
            let req = req.clone();
            async move { Ok(groups_on(ch).commit_offsets(req).await.map(drop)?) }
        })
        .await
    }

    /// Resets a memberless group's offsets.
    pub async fn reset_offsets(
        &self,
        req: pb::ResetOffsetsRequest,
    ) -> Result<Vec<pb::CommittedOffset>> {
        let group = req.group_id.clone();
        self.call(Target::Group(&group), Repeatable, |ch| {
            let req = req.clone();
            async move { Ok(groups_on(ch).reset_offsets(req).await?.into_inner().offsets) }
        })
        .await
    }

    /// Deletes a memberless group and its offsets.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        let req = pb::DeleteGroupRequest {
            group_id: group.into(),
        };
        self.call(Target::Group(group), Once, |ch| {
            let req = req.clone();
            async move { Ok(groups_on(ch).delete_group(req).await.map(drop)?) }
        })
        .await
    }

    /// One group heartbeat (join with empty id and epoch 0, leave with epoch -1), at the
    /// group's coordinator. A join resent after a transport failure may leave a member the
    /// coordinator then evicts after its session timeout.
    pub async fn heartbeat(&self, req: pb::HeartbeatRequest) -> Result<pb::HeartbeatResponse> {
        let group = req.group_id.clone();
        self.call(Target::Group(&group), Repeatable, |ch| {
            let req = req.clone();
            async move { Ok(groups_on(ch).heartbeat(req).await?.into_inner()) }
        })
        .await
    }
}
