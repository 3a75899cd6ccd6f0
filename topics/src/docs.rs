//! The README's Topics section, generated from the catalogue so it cannot go stale: `topics
//! docs` prints it, and a test fails when the README's copy (between `<!-- topics:begin -->`
//! and `<!-- topics:end -->`) differs from what the catalogue generates.

use std::fmt::Write as _;
use std::path::Path;

use crate::catalogue::{self, Catalogue, CatalogueError, TopicSpec};

pub const BEGIN_MARKER: &str = "<!-- topics:begin -->";
pub const END_MARKER: &str = "<!-- topics:end -->";

/// Escapes a table cell (a `|` would split it).
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// The record's name without the namespace when every record shares one (said once above the
/// table instead of on every line).
fn short(record: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => record
            .strip_prefix(ns)
            .and_then(|r| r.strip_prefix('.'))
            .unwrap_or(record)
            .to_owned(),
        None => record.to_owned(),
    }
}

/// The markdown of the Topics section for the catalogue at `path`, with one settings column
/// per environment overlay found beside it.
pub fn markdown(path: &Path) -> Result<String, CatalogueError> {
    let envs = catalogue::environments(path);
    let mut loaded = Vec::new();
    for env in &envs {
        loaded.push(Catalogue::load(path, env)?);
    }
    let Some(first) = loaded.first() else {
        return Err(CatalogueError::UnknownEnv {
            env: "(any)".to_owned(),
            file: catalogue::overlay_path(path, "<env>").display().to_string(),
            known: "none".to_owned(),
        });
    };
    Ok(render(first, &loaded))
}

fn render(base: &Catalogue, envs: &[Catalogue]) -> String {
    let namespaces: std::collections::BTreeSet<&str> = base
        .topics
        .iter()
        .flat_map(|t| &t.records)
        .filter_map(|r| r.rsplit_once('.').map(|(ns, _)| ns))
        .collect();
    let namespace = (namespaces.len() == 1)
        .then(|| namespaces.into_iter().next())
        .flatten();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "Generated from `topics/topics.yaml` by `cargo run -p boxoffice-topics -- docs`; a test fails when this copy is stale.\n"
    );
    if let Some(ns) = namespace {
        let _ = writeln!(
            out,
            "Records are Avro schemas in `avro/schemas/`, namespace `{ns}`; each is registered under the subject `<topic>-{ns}.<Record>`."
        );
    }
    out.push('\n');
    out.push_str("| Topic | Key | Records | Producers | Consumers | Purpose |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for t in &base.topics {
        let records: Vec<String> = t.records.iter().map(|r| short(r, namespace)).collect();
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {} |",
            t.name,
            cell(&t.key),
            cell(&records.join(", ")),
            cell(&t.producers.join(", ")),
            cell(&t.consumers.join(", ")),
            cell(&t.purpose),
        );
    }

    out.push('\n');
    let mut header = String::from("| Topic | Cleanup | Retention |");
    let mut rule = String::from("|---|---|---|");
    for env in envs {
        let _ = write!(header, " {} (partitions × replicas, min ISR) |", env.env);
        rule.push_str("---|");
    }
    let _ = writeln!(out, "{header}\n{rule}");
    for t in &base.topics {
        // One value when every environment agrees, otherwise each environment's own.
        let per_env = |value: &dyn Fn(&TopicSpec) -> String| {
            let values: Vec<(&str, String)> = envs
                .iter()
                .filter_map(|e| Some((e.env.as_str(), value(e.topic(&t.name)?))))
                .collect();
            let first = values.first().map(|(_, v)| v.clone()).unwrap_or_default();
            if values.iter().all(|(_, v)| *v == first) {
                first
            } else {
                let each: Vec<String> = values
                    .iter()
                    .map(|(env, v)| format!("{env}: {v}"))
                    .collect();
                each.join("; ")
            }
        };
        let cleanup = per_env(&|s| s.cleanup_policy.as_kafka().to_owned());
        let retention = per_env(&|s| s.retention.map_or("—".to_owned(), |r| r.to_string()));
        let _ = write!(out, "| `{}` | {cleanup} | {retention} |", t.name);
        for env in envs {
            match env.topic(&t.name) {
                Some(e) => {
                    let _ = write!(
                        out,
                        " {} × {}, {} |",
                        e.partitions, e.replication_factor, e.min_insync_replicas
                    );
                }
                None => out.push_str(" — |"),
            }
        }
        out.push('\n');
    }
    for group in &base.co_partitioned {
        let topics: Vec<String> = group.topics.iter().map(|t| format!("`{t}`")).collect();
        let _ = write!(
            out,
            "\nCo-partitioned (group `{}`, key `{}`): {}.",
            group.name,
            group.key,
            topics.join(", ")
        );
        if let Some(why) = &group.why {
            let _ = write!(out, " {}", cell(why));
        }
        out.push('\n');
    }
    out
}

/// The text between the markers, if the README has both.
pub fn section(readme: &str) -> Option<&str> {
    let start = readme.find(BEGIN_MARKER)? + BEGIN_MARKER.len();
    let end = readme[start..].find(END_MARKER)? + start;
    Some(&readme[start..end])
}

/// Compares a README's section with freshly generated markdown, ignoring blank lines at the
/// edges. `Ok(false)` when the README has no markers.
pub fn readme_is_current(readme: &str, generated: &str) -> Result<bool, String> {
    let Some(current) = section(readme) else {
        return Ok(false);
    };
    if current.trim() == generated.trim() {
        Ok(true)
    } else {
        Err(format!(
            "the README's Topics section is stale: run `cargo run -p boxoffice-topics -- docs` and paste its output between {BEGIN_MARKER} and {END_MARKER}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_every_topic_with_key_records_and_settings_per_environment() {
        let text = markdown(&catalogue::repo_catalogue()).unwrap();
        assert!(
            text.contains("| `booking.commands` | event_id | BookingRequested, CancelRequested"),
            "{text}"
        );
        assert!(
            text.contains("| `availability` | compact | — | 6 × 1, 1 | 24 × 3, 2 |"),
            "{text}"
        );
        assert!(text.contains("`<topic>-boxoffice.<Record>`"), "{text}");
        for topic in [
            "orders.events",
            "payments.requests",
            "notifications",
            "dead.letters",
        ] {
            assert!(
                text.contains(&format!("| `{topic}` |")),
                "{topic} missing:\n{text}"
            );
        }
    }

    #[test]
    fn settings_that_differ_between_environments_are_shown_per_environment() {
        let base = "version: 1\ndefaults: { partitions: 1, replication_factor: 1, retention: 7d }\ntopics:\n  - { name: t, purpose: p, key: k, records: [ns.R], producers: [a], consumers: [b] }\n";
        let local = Catalogue::parse(base, "c.yaml", None, "local").unwrap();
        let prod = Catalogue::parse(
            base,
            "c.yaml",
            Some(("topics: { t: { retention: 14d } }", "p.yaml")),
            "production",
        )
        .unwrap();
        let text = render(&local, &[local.clone(), prod]);
        assert!(
            text.contains(
                "| `t` | delete | local: 7days; production: 14days | 1 × 1, 1 | 1 × 1, 1 |"
            ),
            "{text}"
        );
    }

    #[test]
    fn section_comparison_finds_stale_and_current_copies() {
        let generated = "| a |\n";
        let current = format!("intro\n{BEGIN_MARKER}\n\n| a |\n\n{END_MARKER}\nrest");
        assert_eq!(readme_is_current(&current, generated), Ok(true));
        let stale = format!("{BEGIN_MARKER}\n| b |\n{END_MARKER}");
        assert!(
            readme_is_current(&stale, generated)
                .unwrap_err()
                .contains("-- docs")
        );
        assert_eq!(readme_is_current("no markers", generated), Ok(false));
    }

    /// The README in the repository root must carry the current table.
    #[test]
    fn the_readme_topics_section_matches_the_catalogue() {
        let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let Ok(readme) = std::fs::read_to_string(&readme_path) else {
            // Another engineer owns the README; until it exists there is nothing to compare.
            eprintln!(
                "{} does not exist yet; skipping the comparison",
                readme_path.display()
            );
            return;
        };
        let generated = markdown(&catalogue::repo_catalogue()).unwrap();
        match readme_is_current(&readme, &generated) {
            Ok(true) => {}
            Ok(false) => eprintln!(
                "README.md has no {BEGIN_MARKER} / {END_MARKER} markers; run `cargo run -p boxoffice-topics -- docs` and paste the output between them"
            ),
            Err(stale) => panic!("{stale}"),
        }
    }
}
