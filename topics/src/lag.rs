//! Consumer lag, a first version: for each consumer group, topic and partition with a committed
//! offset, the committed offset, the end offset (high watermark) and the difference. Dashboards
//! come later; this answers "is anyone falling behind" from a terminal or a script.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::cluster::{Cluster, ClusterError, MetadataView, Watermarks};

/// One row of the lag report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LagRow {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    pub end: i64,
    /// `end - committed`, never negative (a committed offset past the end means the topic was
    /// recreated or truncated; that is not lag).
    pub lag: i64,
}

/// Builds rows from committed offsets and watermarks; partitions without a commit are skipped.
pub fn rows(
    group: &str,
    committed: &[(String, i32, Option<i64>)],
    watermarks: &BTreeMap<(String, i32), Watermarks>,
) -> Vec<LagRow> {
    committed
        .iter()
        .filter_map(|(topic, partition, offset)| {
            let committed = (*offset)?;
            let end = watermarks.get(&(topic.clone(), *partition))?.high;
            Some(LagRow {
                group: group.to_owned(),
                topic: topic.clone(),
                partition: *partition,
                committed,
                end,
                lag: (end - committed).max(0),
            })
        })
        .collect()
}

/// Reads the lag of `groups` (every group on the cluster when empty) on `topics`.
pub async fn report(
    cluster: &Cluster,
    metadata: &MetadataView,
    groups: &[String],
    topics: &[String],
    mut progress: impl FnMut(&str),
) -> Result<Vec<LagRow>, ClusterError> {
    let groups = if groups.is_empty() {
        cluster.groups().await?
    } else {
        groups.to_vec()
    };
    let partitions: Vec<(String, i32)> = topics
        .iter()
        .filter_map(|t| metadata.topics.get(t).map(|m| (t, m)))
        .flat_map(|(t, m)| m.partitions.iter().map(move |p| (t.clone(), p.id)))
        .collect();
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let mut committed_by_group = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        progress(&format!(
            "[{}/{}] committed offsets of {group}",
            i + 1,
            groups.len()
        ));
        let committed = cluster.committed(group, partitions.clone()).await?;
        committed_by_group.push((group.clone(), committed));
    }
    // Watermarks only where some group has a commit: a cluster full of idle topics stays cheap.
    let needed: BTreeSet<(String, i32)> = committed_by_group
        .iter()
        .flat_map(|(_, rows)| {
            rows.iter()
                .filter(|(_, _, o)| o.is_some())
                .map(|(t, p, _)| (t.clone(), *p))
        })
        .collect();
    let watermarks = cluster.watermarks(needed.into_iter().collect()).await?;
    Ok(committed_by_group
        .iter()
        .flat_map(|(group, committed)| rows(group, committed, &watermarks))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_end_minus_committed_and_uncommitted_partitions_are_skipped() {
        let committed = vec![
            ("t".to_owned(), 0, Some(3)),
            ("t".to_owned(), 1, None),
            ("t".to_owned(), 2, Some(9)),
        ];
        let watermarks = BTreeMap::from([
            (("t".to_owned(), 0), Watermarks { low: 0, high: 10 }),
            (("t".to_owned(), 1), Watermarks { low: 0, high: 5 }),
            (("t".to_owned(), 2), Watermarks { low: 0, high: 4 }),
        ]);
        let rows = rows("g", &committed, &watermarks);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (
                rows[0].partition,
                rows[0].committed,
                rows[0].end,
                rows[0].lag
            ),
            (0, 3, 10, 7)
        );
        assert_eq!(rows[1].lag, 0, "a commit past the end is not negative lag");
    }
}
