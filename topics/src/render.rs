//! How results look: aligned plain-text tables for people, JSON for scripts, and the
//! terraform-like rendering of a plan. Pure string building; the CLI decides where it goes.

use std::fmt::Write as _;

use crate::plan::{Change, Permissions, Plan};

/// The `--output` choice of read commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// A plain-text table: columns padded to their widest cell, two spaces apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Table {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let columns = self
            .headers
            .len()
            .max(self.rows.iter().map(Vec::len).max().unwrap_or(0));
        let mut widths = vec![0; columns];
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.push_str(&" ".repeat(widths[i] - cell.chars().count()));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `retention.ms`-like values shown with a human duration beside them.
fn humanise(name: &str, value: &str) -> String {
    let is_ms = name.ends_with(".ms");
    match value.parse::<u64>() {
        Ok(ms) if is_ms && ms > 0 => {
            format!(
                "{value} ({})",
                humantime::format_duration(std::time::Duration::from_millis(ms))
            )
        }
        _ => value.to_owned(),
    }
}

/// The plan as a person reads it: one block per topic, `+` create, `~` update, `-` remove,
/// `!` refused or needs a flag, then a summary line.
pub fn plan_text(plan: &Plan, header: &str, permissions: Permissions) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}");
    if !plan.has_drift() && plan.refusals.is_empty() {
        let _ = writeln!(out, "\nNo changes. The cluster matches the catalogue.");
        return out;
    }
    let mut current: Option<&str> = None;
    for change in &plan.changes {
        let topic = change.topic();
        match change {
            Change::Create {
                partitions,
                replication_factor,
                configs,
                ..
            } => {
                let _ = writeln!(
                    out,
                    "\n  + create {topic}  (partitions {partitions}, replication {replication_factor})"
                );
                for (name, value) in configs {
                    let _ = writeln!(out, "        {name} = {}", humanise(name, value));
                }
                current = None;
                continue;
            }
            Change::Unmanaged { partitions, .. } => {
                let action = if permissions.delete_unmanaged {
                    "will be deleted (--delete-unmanaged)"
                } else {
                    "left alone; `apply --delete-unmanaged` or `delete` removes it"
                };
                let _ = writeln!(
                    out,
                    "\n  ? unmanaged {topic}  ({partitions} partitions; on the cluster, not in the catalogue: {action})"
                );
                current = None;
                continue;
            }
            _ => {}
        }
        if current != Some(topic) {
            let _ = writeln!(out, "\n  ~ update {topic}");
            current = Some(topic);
        }
        match change {
            Change::AddPartitions { from, to, key, .. } => {
                let _ = writeln!(out, "      ~ partitions {from} → {to}");
                let _ = writeln!(
                    out,
                    "        ! re-maps keys: records with the same {key} before and after the change land on different partitions{}",
                    if permissions.allow_key_remap {
                        " (allowed by --allow-key-remap)"
                    } else {
                        "; apply needs --allow-key-remap"
                    }
                );
            }
            Change::ChangeReplication { from, to, .. } => {
                let _ = writeln!(out, "      ~ replication factor {from} → {to}");
                let _ = writeln!(
                    out,
                    "        ! needs a partition reassignment (kafka-reassign-partitions.sh); apply will not do it"
                );
            }
            Change::SetConfig {
                name,
                from,
                overridden,
                to,
                ..
            } => {
                let from = match (from.as_deref(), overridden) {
                    (None, _) => "(unset)".to_owned(),
                    (Some(f), true) => humanise(name, f),
                    (Some(f), false) => format!("default {}", humanise(name, f)),
                };
                let _ = writeln!(out, "      ~ {name}: {from} → {}", humanise(name, to));
            }
            Change::RemoveOverride {
                name,
                value,
                default,
                ..
            } => {
                let back = default
                    .as_deref()
                    .map_or("the broker default".to_owned(), |d| humanise(name, d));
                let _ = writeln!(
                    out,
                    "      - {name} = {}  (override not in the catalogue; reverts to {back})",
                    humanise(name, value)
                );
            }
            Change::Create { .. } | Change::Unmanaged { .. } => {}
        }
    }
    if !plan.refusals.is_empty() {
        let _ = writeln!(
            out,
            "\nRefused (nothing will be applied until these are fixed):"
        );
        for refusal in &plan.refusals {
            let _ = writeln!(out, "  ! {refusal}");
        }
    }
    let s = plan.summary();
    let _ = writeln!(
        out,
        "\nPlan: {} to create, {} to update, {} unmanaged, {} refused.",
        s.create, s.update, s.unmanaged, s.refused
    );
    out
}

/// The plan as JSON: the changes, the refusals, the summary and whether anything drifted.
pub fn plan_json(plan: &Plan, env: &str, bootstrap: &str) -> serde_json::Value {
    serde_json::json!({
        "env": env,
        "bootstrap_servers": bootstrap,
        "drift": plan.has_drift(),
        "summary": plan.summary(),
        "changes": plan.changes,
        "refusals": plan.refusals.iter().map(|r| serde_json::json!({
            "refusal": r,
            "message": r.to_string(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::plan::Refusal;

    #[test]
    fn tables_align_columns_and_trim_trailing_space() {
        let mut table = Table::new(["TOPIC", "PARTITIONS", "KEY"]);
        table.row(["booking.commands", "6", "event_id"]);
        table.row(["x", "12", ""]);
        assert_eq!(
            table.render(),
            "TOPIC             PARTITIONS  KEY\nbooking.commands  6           event_id\nx                 12\n"
        );
    }

    #[test]
    fn the_plan_text_reads_like_terraform() {
        let plan = Plan {
            changes: vec![
                Change::Create {
                    topic: "a".into(),
                    partitions: 6,
                    replication_factor: 1,
                    configs: BTreeMap::from([("retention.ms".into(), "604800000".into())]),
                },
                Change::AddPartitions {
                    topic: "b".into(),
                    from: 3,
                    to: 6,
                    key: "event_id".into(),
                },
                Change::RemoveOverride {
                    topic: "b".into(),
                    name: "segment.ms".into(),
                    value: "1000".into(),
                    default: None,
                },
            ],
            refusals: vec![Refusal::PartitionDecrease {
                topic: "c".into(),
                from: 4,
                to: 2,
            }],
        };
        let text = plan_text(&plan, "Plan:", Permissions::default());
        assert!(
            text.contains("+ create a  (partitions 6, replication 1)"),
            "{text}"
        );
        assert!(text.contains("retention.ms = 604800000 (7days)"), "{text}");
        assert!(
            text.contains("~ update b\n      ~ partitions 3 → 6"),
            "{text}"
        );
        assert!(text.contains("apply needs --allow-key-remap"), "{text}");
        assert!(text.contains("- segment.ms = 1000 (1s)"), "{text}");
        assert!(text.contains("Kafka cannot remove partitions"), "{text}");
        assert!(
            text.contains("Plan: 1 to create, 1 to update, 0 unmanaged, 1 refused."),
            "{text}"
        );
    }

    #[test]
    fn a_clean_plan_says_so() {
        let text = plan_text(&Plan::default(), "Plan:", Permissions::default());
        assert!(text.contains("No changes."), "{text}");
    }

    #[test]
    fn plan_json_names_every_change_by_action() {
        let plan = Plan {
            changes: vec![Change::SetConfig {
                topic: "a".into(),
                name: "retention.ms".into(),
                from: None,
                overridden: false,
                to: "1".into(),
            }],
            refusals: vec![],
        };
        let json = plan_json(&plan, "local", "h:1");
        assert_eq!(json["drift"], true);
        assert_eq!(json["changes"][0]["action"], "set_config");
        assert_eq!(json["changes"][0]["to"], "1");
        assert_eq!(json["summary"]["update"], 1);
    }
}
