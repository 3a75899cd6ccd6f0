//! The plan: the difference between a catalogue and an observed cluster, as a list of changes
//! and a list of refusals. Pure: no I/O and no clock, so every rule here is unit-tested without
//! a broker; `cluster` observes and executes, this module decides.
//!
//! Rules:
//! - a catalogue topic missing from the cluster is created;
//! - more partitions in the catalogue is a partition increase, which re-maps keys and so is gated
//!   behind `--allow-key-remap`; fewer is refused (Kafka cannot remove partitions);
//! - a different replication factor is reported and never applied by this tool (it needs a
//!   partition reassignment);
//! - a managed config whose topic-level override differs is set; a topic-level override the
//!   catalogue does not list is removed (the topic falls back to the broker default);
//! - a topic in scope on the cluster but not in the catalogue is reported as unmanaged, and
//!   deleted only with `--delete-unmanaged`;
//! - a replication factor above the broker count, and co-partitioned topics that would end with
//!   different partition counts, are refused before anything is changed.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::catalogue::{Catalogue, TopicSpec};

/// What the cluster looked like when it was read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterSnapshot {
    pub brokers: usize,
    /// Topics in scope, by name.
    pub topics: BTreeMap<String, ObservedTopic>,
}

/// One topic as the cluster reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ObservedTopic {
    pub partitions: u32,
    /// The smallest replica count over the topic's partitions: a partially reassigned topic
    /// counts as under-replicated.
    pub replication_factor: u16,
    /// Topic-level overrides (config source: dynamic topic config).
    pub overrides: BTreeMap<String, String>,
    /// The value in force where there is no override (broker or built-in default), for display.
    pub defaults: BTreeMap<String, String>,
}

/// Which cluster topics the plan considers: names starting with `prefix`, never internal ones
/// (a leading `_`, e.g. `__consumer_offsets`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub prefix: String,
}

impl Scope {
    pub fn new(prefix: &str) -> Scope {
        Scope {
            prefix: prefix.to_owned(),
        }
    }

    pub fn contains(&self, topic: &str) -> bool {
        topic.starts_with(&self.prefix) && !topic.starts_with('_')
    }
}

/// One change the plan would make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Change {
    Create {
        topic: String,
        partitions: u32,
        replication_factor: u16,
        configs: BTreeMap<String, String>,
    },
    AddPartitions {
        topic: String,
        from: u32,
        to: u32,
        key: String,
    },
    ChangeReplication {
        topic: String,
        from: u16,
        to: u16,
    },
    SetConfig {
        topic: String,
        name: String,
        /// The value in force now: the topic's override, or else the default.
        from: Option<String>,
        /// Whether `from` is a topic override (else it is the broker or built-in default, and
        /// the change pins it on the topic).
        overridden: bool,
        to: String,
    },
    RemoveOverride {
        topic: String,
        name: String,
        value: String,
        default: Option<String>,
    },
    Unmanaged {
        topic: String,
        partitions: u32,
    },
}

impl Change {
    pub fn topic(&self) -> &str {
        match self {
            Change::Create { topic, .. }
            | Change::AddPartitions { topic, .. }
            | Change::ChangeReplication { topic, .. }
            | Change::SetConfig { topic, .. }
            | Change::RemoveOverride { topic, .. }
            | Change::Unmanaged { topic, .. } => topic,
        }
    }
}

/// A state the catalogue cannot reach on this cluster: nothing is applied while one exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Refusal {
    PartitionDecrease {
        topic: String,
        from: u32,
        to: u32,
    },
    ReplicationAboveBrokers {
        topic: String,
        replication_factor: u16,
        brokers: usize,
    },
    CoPartitionMismatch {
        group: String,
        partitions: BTreeMap<String, u32>,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::PartitionDecrease { topic, from, to } => write!(
                f,
                "{topic}: the catalogue wants {to} partitions but the topic has {from}; Kafka cannot remove partitions (recreate the topic, or raise the catalogue to {from})"
            ),
            Refusal::ReplicationAboveBrokers {
                topic,
                replication_factor,
                brokers,
            } => write!(
                f,
                "{topic}: replication factor {replication_factor} is above the {brokers} broker(s) of this cluster (wrong --env?)"
            ),
            Refusal::CoPartitionMismatch { group, partitions } => {
                let counts: Vec<String> =
                    partitions.iter().map(|(t, n)| format!("{t} {n}")).collect();
                write!(
                    f,
                    "co-partition group `{group}` would end with different partition counts ({}); its topics must match so one key lands on the same partition in each",
                    counts.join(", ")
                )
            }
        }
    }
}

/// What `apply` is allowed to do beyond the safe changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Add partitions to keyed topics, knowing keys move to other partitions.
    pub allow_key_remap: bool,
    /// Delete topics in scope that the catalogue does not list.
    pub delete_unmanaged: bool,
}

/// The changes and refusals for one catalogue against one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub refusals: Vec<Refusal>,
}

/// Counts for the summary line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub unmanaged: usize,
    pub refused: usize,
}

impl Plan {
    /// Whether the cluster differs from the catalogue in any way.
    pub fn has_drift(&self) -> bool {
        !self.changes.is_empty()
    }

    pub fn summary(&self) -> Summary {
        let mut updated: Vec<&str> = self
            .changes
            .iter()
            .filter(|c| !matches!(c, Change::Create { .. } | Change::Unmanaged { .. }))
            .map(Change::topic)
            .collect();
        updated.dedup();
        Summary {
            create: self
                .changes
                .iter()
                .filter(|c| matches!(c, Change::Create { .. }))
                .count(),
            update: updated.len(),
            unmanaged: self
                .changes
                .iter()
                .filter(|c| matches!(c, Change::Unmanaged { .. }))
                .count(),
            refused: self.refusals.len(),
        }
    }

    /// Reasons `apply` must stop before changing anything, given what the operator allowed.
    pub fn blockers(&self, permissions: Permissions) -> Vec<String> {
        let mut blockers: Vec<String> = self.refusals.iter().map(ToString::to_string).collect();
        for change in &self.changes {
            match change {
                Change::AddPartitions { topic, from, to, key } if !permissions.allow_key_remap => {
                    blockers.push(format!(
                        "{topic}: adding partitions ({from} → {to}) re-maps keys: records with the same {key} written before and after land on different partitions, breaking per-{key} ordering. Drain the producers and consumers first, then pass --allow-key-remap"
                    ));
                }
                Change::ChangeReplication { topic, from, to } => blockers.push(format!(
                    "{topic}: changing the replication factor ({from} → {to}) needs a partition reassignment, which this tool does not perform; use kafka-reassign-partitions.sh, then run plan again"
                )),
                _ => {}
            }
        }
        blockers
    }

    /// The changes `apply` carries out with these permissions (unmanaged topics are left alone
    /// unless their deletion is allowed).
    pub fn executable(&self, permissions: Permissions) -> Vec<&Change> {
        self.changes
            .iter()
            .filter(|c| !matches!(c, Change::Unmanaged { .. }) || permissions.delete_unmanaged)
            .collect()
    }
}

/// Normalises a config value so equal settings compare equal (`delete,compact` is
/// `compact,delete`; `TRUE` is `true`).
fn normalise(name: &str, value: &str) -> String {
    let value = value.trim();
    if name == "cleanup.policy" {
        let mut parts: Vec<String> = value
            .split(',')
            .map(|p| p.trim().to_ascii_lowercase())
            .filter(|p| !p.is_empty())
            .collect();
        parts.sort();
        return parts.join(",");
    }
    if value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false") {
        return value.to_ascii_lowercase();
    }
    value.to_owned()
}

/// Diffs one catalogue topic against what the cluster has.
fn diff_topic(
    spec: &TopicSpec,
    observed: &ObservedTopic,
    changes: &mut Vec<Change>,
    refusals: &mut Vec<Refusal>,
) {
    let topic = &spec.name;
    if spec.partitions > observed.partitions {
        changes.push(Change::AddPartitions {
            topic: topic.clone(),
            from: observed.partitions,
            to: spec.partitions,
            key: spec.key.clone(),
        });
    } else if spec.partitions < observed.partitions {
        refusals.push(Refusal::PartitionDecrease {
            topic: topic.clone(),
            from: observed.partitions,
            to: spec.partitions,
        });
    }
    if spec.replication_factor != observed.replication_factor {
        changes.push(Change::ChangeReplication {
            topic: topic.clone(),
            from: observed.replication_factor,
            to: spec.replication_factor,
        });
    }
    for (name, want) in &spec.configs {
        let have = observed.overrides.get(name);
        if have.map(|h| normalise(name, h)) != Some(normalise(name, want)) {
            changes.push(Change::SetConfig {
                topic: topic.clone(),
                name: name.clone(),
                from: have.or_else(|| observed.defaults.get(name)).cloned(),
                overridden: have.is_some(),
                to: want.clone(),
            });
        }
    }
    for (name, value) in &observed.overrides {
        if !spec.configs.contains_key(name) {
            changes.push(Change::RemoveOverride {
                topic: topic.clone(),
                name: name.clone(),
                value: value.clone(),
                default: observed.defaults.get(name).cloned(),
            });
        }
    }
}

/// Computes the plan that takes `snapshot` to `catalogue`, looking only at topics in `scope`.
pub fn plan(catalogue: &Catalogue, snapshot: &ClusterSnapshot, scope: &Scope) -> Plan {
    let mut changes = Vec::new();
    let mut refusals = Vec::new();

    for spec in &catalogue.topics {
        if usize::from(spec.replication_factor) > snapshot.brokers {
            refusals.push(Refusal::ReplicationAboveBrokers {
                topic: spec.name.clone(),
                replication_factor: spec.replication_factor,
                brokers: snapshot.brokers,
            });
        }
        match snapshot.topics.get(&spec.name) {
            None => changes.push(Change::Create {
                topic: spec.name.clone(),
                partitions: spec.partitions,
                replication_factor: spec.replication_factor,
                configs: spec.configs.clone(),
            }),
            Some(observed) => diff_topic(spec, observed, &mut changes, &mut refusals),
        }
    }

    // After the plan, an existing topic keeps the larger of its count and the catalogue's
    // (partitions only grow); a new one gets the catalogue's.
    for group in &catalogue.co_partitioned {
        let after: BTreeMap<String, u32> = group
            .topics
            .iter()
            .filter_map(|name| {
                let spec = catalogue.topic(name)?;
                let count = snapshot
                    .topics
                    .get(name)
                    .map_or(spec.partitions, |o| o.partitions.max(spec.partitions));
                Some((name.clone(), count))
            })
            .collect();
        let first = after.values().next().copied();
        if after.values().any(|n| Some(*n) != first) {
            refusals.push(Refusal::CoPartitionMismatch {
                group: group.name.clone(),
                partitions: after,
            });
        }
    }

    for (name, observed) in &snapshot.topics {
        if scope.contains(name) && catalogue.topic(name).is_none() {
            changes.push(Change::Unmanaged {
                topic: name.clone(),
                partitions: observed.partitions,
            });
        }
    }

    Plan { changes, refusals }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOGUE: &str = r#"
version: 1
defaults: { partitions: 3, replication_factor: 1, retention: 7d }
topics:
  - { name: commands, purpose: p, key: event_id, records: [a.B], producers: [x], consumers: [y], partitions: 6 }
  - { name: state, purpose: p, key: event_id, records: [a.C], producers: [x], consumers: [y], partitions: 6, cleanup_policy: compact }
  - { name: orders, purpose: p, key: order_id, records: [a.D], producers: [x], consumers: [y] }
co_partitioned:
  - { name: event, key: event_id, topics: [commands, state] }
"#;

    fn catalogue() -> Catalogue {
        Catalogue::parse(CATALOGUE, "test.yaml", None, "test").unwrap()
    }

    /// The cluster exactly as the catalogue wants it.
    fn matching(catalogue: &Catalogue) -> ClusterSnapshot {
        ClusterSnapshot {
            brokers: 1,
            topics: catalogue
                .topics
                .iter()
                .map(|t| {
                    (
                        t.name.clone(),
                        ObservedTopic {
                            partitions: t.partitions,
                            replication_factor: t.replication_factor,
                            overrides: t.configs.clone(),
                            defaults: BTreeMap::from([(
                                "retention.ms".to_owned(),
                                "604800000".to_owned(),
                            )]),
                        },
                    )
                })
                .collect(),
        }
    }

    fn observed<'a>(snapshot: &'a mut ClusterSnapshot, topic: &str) -> &'a mut ObservedTopic {
        snapshot.topics.get_mut(topic).unwrap()
    }

    #[test]
    fn an_empty_cluster_gets_every_topic_created_with_its_configs() {
        let plan = plan(
            &catalogue(),
            &ClusterSnapshot {
                brokers: 1,
                ..Default::default()
            },
            &Scope::default(),
        );
        assert!(plan.refusals.is_empty(), "{:?}", plan.refusals);
        let created: Vec<&str> = plan.changes.iter().map(Change::topic).collect();
        assert_eq!(created, ["commands", "state", "orders"]);
        let Change::Create {
            partitions,
            configs,
            ..
        } = &plan.changes[1]
        else {
            panic!("{:?}", plan.changes[1])
        };
        assert_eq!(*partitions, 6);
        assert_eq!(
            configs.get("cleanup.policy").map(String::as_str),
            Some("compact")
        );
        assert!(
            !configs.contains_key("retention.ms"),
            "compact-only topics get no retention"
        );
        assert_eq!(
            plan.summary(),
            Summary {
                create: 3,
                update: 0,
                unmanaged: 0,
                refused: 0
            }
        );
        assert!(plan.has_drift());
    }

    #[test]
    fn a_matching_cluster_has_no_drift() {
        let catalogue = catalogue();
        let plan = plan(&catalogue, &matching(&catalogue), &Scope::default());
        assert_eq!(plan, Plan::default());
        assert!(!plan.has_drift());
    }

    #[test]
    fn config_values_compare_after_normalising() {
        let mut catalogue = catalogue();
        catalogue.topics[0]
            .configs
            .insert("cleanup.policy".into(), "delete,compact".into());
        catalogue.topics[0]
            .configs
            .insert("unclean.leader.election.enable".into(), "false".into());
        let mut snapshot = matching(&catalogue);
        let commands = observed(&mut snapshot, "commands");
        commands
            .overrides
            .insert("cleanup.policy".into(), "compact,delete".into());
        commands
            .overrides
            .insert("unclean.leader.election.enable".into(), "FALSE".into());
        assert!(!plan(&catalogue, &snapshot, &Scope::default()).has_drift());

        observed(&mut snapshot, "commands")
            .overrides
            .insert("cleanup.policy".into(), "compact".into());
        assert!(plan(&catalogue, &snapshot, &Scope::default()).has_drift());
    }

    #[test]
    fn a_changed_config_is_set_and_a_foreign_override_removed() {
        let catalogue = catalogue();
        let mut snapshot = matching(&catalogue);
        let orders = observed(&mut snapshot, "orders");
        orders
            .overrides
            .insert("retention.ms".into(), "1000".into());
        orders.overrides.insert("segment.ms".into(), "60000".into());
        orders
            .defaults
            .insert("segment.ms".into(), "604800000".into());
        let plan = plan(&catalogue, &snapshot, &Scope::default());
        assert_eq!(
            plan.changes,
            vec![
                Change::SetConfig {
                    topic: "orders".into(),
                    name: "retention.ms".into(),
                    from: Some("1000".into()),
                    overridden: true,
                    to: "604800000".into()
                },
                Change::RemoveOverride {
                    topic: "orders".into(),
                    name: "segment.ms".into(),
                    value: "60000".into(),
                    default: Some("604800000".into())
                },
            ]
        );
        assert_eq!(
            plan.summary().update,
            1,
            "two changes on one topic count as one update"
        );
        assert!(
            plan.blockers(Permissions::default()).is_empty(),
            "config changes need no flag"
        );
    }

    #[test]
    fn a_missing_override_shows_the_default_it_replaces() {
        let catalogue = catalogue();
        let mut snapshot = matching(&catalogue);
        observed(&mut snapshot, "orders")
            .overrides
            .remove("retention.ms");
        let plan = plan(&catalogue, &snapshot, &Scope::default());
        assert_eq!(
            plan.changes,
            vec![Change::SetConfig {
                topic: "orders".into(),
                name: "retention.ms".into(),
                from: Some("604800000".into()),
                overridden: false,
                to: "604800000".into()
            }]
        );
    }

    #[test]
    fn adding_partitions_to_a_keyed_topic_needs_allow_key_remap() {
        let mut catalogue = catalogue();
        let snapshot = matching(&catalogue);
        catalogue.topics[2].partitions = 4;
        let plan = plan(&catalogue, &snapshot, &Scope::default());
        assert_eq!(
            plan.changes,
            vec![Change::AddPartitions {
                topic: "orders".into(),
                from: 3,
                to: 4,
                key: "order_id".into()
            }]
        );
        let blockers = plan.blockers(Permissions::default());
        assert_eq!(blockers.len(), 1);
        assert!(
            blockers[0].contains("--allow-key-remap") && blockers[0].contains("order_id"),
            "{blockers:?}"
        );
        assert!(
            plan.blockers(Permissions {
                allow_key_remap: true,
                ..Default::default()
            })
            .is_empty()
        );
    }

    #[test]
    fn fewer_partitions_than_the_cluster_is_refused() {
        let catalogue = catalogue();
        let mut snapshot = matching(&catalogue);
        observed(&mut snapshot, "orders").partitions = 5;
        let plan = plan(&catalogue, &snapshot, &Scope::default());
        assert_eq!(
            plan.refusals,
            vec![Refusal::PartitionDecrease {
                topic: "orders".into(),
                from: 5,
                to: 3
            }]
        );
        assert!(
            !plan
                .blockers(Permissions {
                    allow_key_remap: true,
                    delete_unmanaged: true
                })
                .is_empty()
        );
    }

    #[test]
    fn co_partitioned_topics_that_would_differ_are_refused() {
        let catalogue = catalogue();
        // `state` was grown behind the tool's back; `commands` does not exist yet and would be
        // created with 6: the group would end 6 vs 8.
        let mut snapshot = matching(&catalogue);
        snapshot.topics.remove("commands");
        observed(&mut snapshot, "state").partitions = 8;
        let plan = plan(&catalogue, &snapshot, &Scope::default());
        assert!(
            plan.refusals.contains(&Refusal::CoPartitionMismatch {
                group: "event".into(),
                partitions: BTreeMap::from([("commands".into(), 6), ("state".into(), 8)]),
            }),
            "{:?}",
            plan.refusals
        );
        let message = plan
            .blockers(Permissions {
                allow_key_remap: true,
                delete_unmanaged: true,
            })
            .join("\n");
        assert!(message.contains("co-partition group `event`"), "{message}");
    }

    #[test]
    fn growing_a_co_partition_group_together_is_allowed_with_the_flag() {
        let mut catalogue = catalogue();
        let snapshot = matching(&catalogue);
        catalogue.topics[0].partitions = 12;
        catalogue.topics[1].partitions = 12;
        let plan = plan(&catalogue, &snapshot, &Scope::default());
        assert!(plan.refusals.is_empty(), "{:?}", plan.refusals);
        assert_eq!(plan.changes.len(), 2);
        assert_eq!(
            plan.blockers(Permissions::default()).len(),
            2,
            "each keyed topic warns"
        );
        assert!(
            plan.blockers(Permissions {
                allow_key_remap: true,
                ..Default::default()
            })
            .is_empty()
        );
    }

    #[test]
    fn replication_above_the_broker_count_is_refused() {
        let mut catalogue = catalogue();
        catalogue.topics[2].replication_factor = 3;
        let plan = plan(
            &catalogue,
            &ClusterSnapshot {
                brokers: 1,
                ..Default::default()
            },
            &Scope::default(),
        );
        assert_eq!(
            plan.refusals,
            vec![Refusal::ReplicationAboveBrokers {
                topic: "orders".into(),
                replication_factor: 3,
                brokers: 1
            }]
        );
    }

    #[test]
    fn a_replication_change_is_reported_and_never_applied() {
        let catalogue = catalogue();
        let mut snapshot = matching(&catalogue);
        snapshot.brokers = 3;
        observed(&mut snapshot, "orders").replication_factor = 3;
        let plan = plan(&catalogue, &snapshot, &Scope::default());
        assert_eq!(
            plan.changes,
            vec![Change::ChangeReplication {
                topic: "orders".into(),
                from: 3,
                to: 1
            }]
        );
        let blockers = plan.blockers(Permissions {
            allow_key_remap: true,
            delete_unmanaged: true,
        });
        assert!(
            blockers[0].contains("kafka-reassign-partitions"),
            "{blockers:?}"
        );
    }

    #[test]
    fn unmanaged_topics_in_scope_are_reported_and_deleted_only_when_allowed() {
        let catalogue = catalogue().with_prefix("t1.");
        let mut snapshot = matching(&catalogue);
        snapshot.topics.insert(
            "t1.stray".into(),
            ObservedTopic {
                partitions: 2,
                ..Default::default()
            },
        );
        snapshot
            .topics
            .insert("other.topic".into(), ObservedTopic::default());
        snapshot
            .topics
            .insert("__consumer_offsets".into(), ObservedTopic::default());
        let plan = plan(&catalogue, &snapshot, &Scope::new("t1."));
        assert_eq!(
            plan.changes,
            vec![Change::Unmanaged {
                topic: "t1.stray".into(),
                partitions: 2
            }]
        );
        assert!(
            plan.blockers(Permissions::default()).is_empty(),
            "unmanaged topics never block"
        );
        assert!(plan.executable(Permissions::default()).is_empty());
        assert_eq!(
            plan.executable(Permissions {
                delete_unmanaged: true,
                ..Default::default()
            })
            .len(),
            1
        );
    }

    #[test]
    fn internal_topics_are_never_in_scope() {
        let scope = Scope::default();
        assert!(!scope.contains("__consumer_offsets"));
        assert!(!scope.contains("_schemas"));
        assert!(scope.contains("orders.events"));
        assert!(!Scope::new("p.").contains("orders.events"));
    }
}
