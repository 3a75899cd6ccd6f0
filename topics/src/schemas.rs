//! `schemas check` / `schemas register`: every record type the catalogue puts on a topic is
//! registered under its subject `<topic>-<record full name>` (TopicRecordNameStrategy), but only
//! after a BACKWARD compatibility check against the subject's latest version: consumers on the
//! new schema must still read every record already in the topic. An incompatible change is
//! refused with the field that breaks it, and nothing is registered.
//!
//! The check runs here (`boxoffice_avro::compat`), not only in the registry: a registry with no
//! compatibility rule configured (Apicurio's default) would accept anything. A subject that does
//! not exist yet is new and passes. The schemas come from the `boxoffice-avro` crate, or from a
//! directory of `.avsc` files (`--schemas-dir`) to vet a change before it is merged.
//!
//! The registry is reached through its Confluent-compatible REST API with plain HTTP.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use boxoffice_avro::registry::RegistryArgs;
use serde::{Deserialize, Serialize};

use crate::catalogue::Catalogue;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "schema registry is unreachable at {url} (set --schema-registry-url / SCHEMA_REGISTRY_URL and --schema-registry-timeout, or start the stack with `scripts/stack up`): {reason}"
    )]
    Unreachable { url: String, reason: String },
    #[error("schema registry at {url} answered {status} to {what}: {body}")]
    Registry {
        url: String,
        what: String,
        status: u16,
        body: String,
    },
    #[error("cannot read schema {file}: {reason}")]
    Local { file: String, reason: String },
    #[error("no schema for {records}, which the catalogue lists (known records: {known})")]
    Missing { records: String, known: String },
    #[error("cannot compare {subject} with its registered version: {reason}")]
    Compare { subject: String, reason: String },
}

/// One record schema this run would register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSchema {
    pub full_name: String,
    /// Where it came from (a file name), for messages.
    pub origin: String,
    pub avsc: String,
}

/// The schemas compiled into `boxoffice-avro`.
pub fn embedded() -> BTreeMap<String, LocalSchema> {
    boxoffice_avro::schemas::all()
        .iter()
        .map(|s| {
            (
                s.full_name.to_string(),
                LocalSchema {
                    full_name: s.full_name.to_string(),
                    origin: format!("avro/schemas/{}", s.file_name),
                    avsc: s.avsc.to_string(),
                },
            )
        })
        .collect()
}

/// Every `.avsc` file in `dir`, keyed by the record's full name (namespace + name).
pub fn from_dir(dir: &Path) -> Result<BTreeMap<String, LocalSchema>, SchemaError> {
    let local = |file: &Path, reason: String| SchemaError::Local {
        file: file.display().to_string(),
        reason,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| local(dir, e.to_string()))?;
    let mut out = BTreeMap::new();
    for entry in entries {
        let path = entry.map_err(|e| local(dir, e.to_string()))?.path();
        if path.extension().is_none_or(|e| e != "avsc") {
            continue;
        }
        let avsc = std::fs::read_to_string(&path).map_err(|e| local(&path, e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(&avsc).map_err(|e| local(&path, format!("not JSON: {e}")))?;
        let name = json["name"]
            .as_str()
            .ok_or_else(|| local(&path, "no `name`".to_owned()))?;
        let full_name = match json["namespace"].as_str() {
            Some(ns) if !name.contains('.') => format!("{ns}.{name}"),
            _ => name.to_owned(),
        };
        out.insert(
            full_name.clone(),
            LocalSchema {
                full_name,
                origin: path.display().to_string(),
                avsc,
            },
        );
    }
    Ok(out)
}

/// One subject to check: topic, record and the schema to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub subject: String,
    pub topic: String,
    pub schema: LocalSchema,
}

/// The subjects of every record on every catalogue topic; fails naming records with no schema.
pub fn subjects(
    catalogue: &Catalogue,
    schemas: &BTreeMap<String, LocalSchema>,
) -> Result<Vec<Subject>, SchemaError> {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for topic in &catalogue.topics {
        for record in &topic.records {
            match schemas.get(record) {
                Some(schema) => out.push(Subject {
                    subject: format!("{}-{record}", topic.name),
                    topic: topic.name.clone(),
                    schema: schema.clone(),
                }),
                None => missing.push(format!("{record} (on {})", topic.name)),
            }
        }
    }
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(SchemaError::Missing {
            records: missing.join(", "),
            known: schemas.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }
}

/// A field that breaks compatibility, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Breakage {
    pub field: String,
    pub reason: String,
}

/// What the registry has compared with what this run would register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    /// The subject does not exist yet: any schema is acceptable.
    New,
    /// The latest version is this schema.
    Unchanged { version: i64, id: i64 },
    /// A new version that can read everything the latest version wrote.
    Compatible { latest_version: i64 },
    /// Refused: consumers on this schema could not read records written with the latest.
    Incompatible {
        latest_version: i64,
        breaks: Vec<Breakage>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubjectCheck {
    pub subject: String,
    pub topic: String,
    pub record: String,
    #[serde(flatten)]
    pub status: Status,
}

impl SubjectCheck {
    pub fn is_incompatible(&self) -> bool {
        matches!(self.status, Status::Incompatible { .. })
    }
}

/// The latest registered version of a subject.
#[derive(Debug, Clone, Deserialize)]
pub struct Registered {
    pub id: i64,
    pub version: i64,
    pub schema: String,
}

/// A client for the registry's Confluent-compatible API.
#[derive(Debug)]
pub struct Registry {
    url: String,
    client: reqwest::Client,
}

/// The content type the Confluent API speaks.
const SR_JSON: &str = "application/vnd.schemaregistry.v1+json";

impl Registry {
    pub fn new(args: &RegistryArgs) -> Result<Registry, SchemaError> {
        Registry::with_timeout(&args.url, args.timeout)
    }

    pub fn with_timeout(url: &str, timeout: Duration) -> Result<Registry, SchemaError> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| SchemaError::Unreachable {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Registry {
            url: url.trim_end_matches('/').to_owned(),
            client,
        })
    }

    fn unreachable(&self, e: reqwest::Error) -> SchemaError {
        // reqwest's own message is only "error sending request"; the cause (connection
        // refused, timed out) is further down the chain.
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            reason.push_str(": ");
            reason.push_str(&cause.to_string());
            source = cause.source();
        }
        SchemaError::Unreachable {
            url: self.url.clone(),
            reason,
        }
    }

    async fn refused(&self, what: String, response: reqwest::Response) -> SchemaError {
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        SchemaError::Registry {
            url: self.url.clone(),
            what,
            status,
            body,
        }
    }

    /// The latest version of `subject`, or `None` when the subject does not exist.
    pub async fn latest(&self, subject: &str) -> Result<Option<Registered>, SchemaError> {
        let response = self
            .client
            .get(format!("{}/subjects/{subject}/versions/latest", self.url))
            .header(reqwest::header::ACCEPT, SR_JSON)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(self
                .refused(format!("reading the latest version of {subject}"), response)
                .await);
        }
        response
            .json()
            .await
            .map(Some)
            .map_err(|e| self.unreachable(e))
    }

    /// Registers `avsc` under `subject`; returns the schema id.
    pub async fn register(&self, subject: &str, avsc: &str) -> Result<i64, SchemaError> {
        #[derive(Deserialize)]
        struct Id {
            id: i64,
        }
        let response = self
            .client
            .post(format!("{}/subjects/{subject}/versions", self.url))
            .header(reqwest::header::CONTENT_TYPE, SR_JSON)
            .header(reqwest::header::ACCEPT, SR_JSON)
            .json(&serde_json::json!({ "schema": avsc, "schemaType": "AVRO" }))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !response.status().is_success() {
            return Err(self
                .refused(format!("registering {subject}"), response)
                .await);
        }
        let id: Id = response.json().await.map_err(|e| self.unreachable(e))?;
        Ok(id.id)
    }
}

/// Whether two schema texts are the same JSON document (whitespace and key order aside).
fn same_schema(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Decides the status of one subject from its latest registered version. Pure.
pub fn judge(subject: &Subject, latest: Option<&Registered>) -> Result<Status, SchemaError> {
    let Some(latest) = latest else {
        return Ok(Status::New);
    };
    if same_schema(&latest.schema, &subject.schema.avsc) {
        return Ok(Status::Unchanged {
            version: latest.version,
            id: latest.id,
        });
    }
    let violations =
        boxoffice_avro::compat::backward_violations(&latest.schema, &subject.schema.avsc).map_err(
            |e| SchemaError::Compare {
                subject: subject.subject.clone(),
                reason: e.to_string(),
            },
        )?;
    if violations.is_empty() {
        Ok(Status::Compatible {
            latest_version: latest.version,
        })
    } else {
        Ok(Status::Incompatible {
            latest_version: latest.version,
            breaks: violations
                .into_iter()
                .map(|v| Breakage {
                    field: v.field.to_string(),
                    reason: v.reason.to_string(),
                })
                .collect(),
        })
    }
}

/// Checks every subject against the registry.
pub async fn check(
    registry: &Registry,
    subjects: &[Subject],
    mut progress: impl FnMut(&str),
) -> Result<Vec<SubjectCheck>, SchemaError> {
    let mut out = Vec::with_capacity(subjects.len());
    for (i, subject) in subjects.iter().enumerate() {
        progress(&format!(
            "[{}/{}] checking {}",
            i + 1,
            subjects.len(),
            subject.subject
        ));
        let latest = registry.latest(&subject.subject).await?;
        out.push(SubjectCheck {
            subject: subject.subject.clone(),
            topic: subject.topic.clone(),
            record: subject.schema.full_name.clone(),
            status: judge(subject, latest.as_ref())?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(avsc: &str) -> Subject {
        Subject {
            subject: "t-ns.R".into(),
            topic: "t".into(),
            schema: LocalSchema {
                full_name: "ns.R".into(),
                origin: "R.avsc".into(),
                avsc: avsc.into(),
            },
        }
    }

    fn registered(schema: &str) -> Registered {
        Registered {
            id: 7,
            version: 2,
            schema: schema.into(),
        }
    }

    const V1: &str =
        r#"{"type":"record","name":"R","namespace":"ns","fields":[{"name":"a","type":"string"}]}"#;

    #[test]
    fn a_subject_that_does_not_exist_is_new() {
        assert_eq!(judge(&subject(V1), None).unwrap(), Status::New);
    }

    #[test]
    fn the_same_schema_reformatted_is_unchanged() {
        let reformatted = V1.replace(',', ",\n  ");
        assert_eq!(
            judge(&subject(&reformatted), Some(&registered(V1))).unwrap(),
            Status::Unchanged { version: 2, id: 7 }
        );
    }

    #[test]
    fn a_field_added_with_a_default_is_compatible() {
        let v2 = r#"{"type":"record","name":"R","namespace":"ns","fields":[{"name":"a","type":"string"},{"name":"b","type":"int","default":0}]}"#;
        assert_eq!(
            judge(&subject(v2), Some(&registered(V1))).unwrap(),
            Status::Compatible { latest_version: 2 }
        );
    }

    #[test]
    fn a_field_added_without_a_default_is_incompatible_and_named() {
        let v2 = r#"{"type":"record","name":"R","namespace":"ns","fields":[{"name":"a","type":"string"},{"name":"seats","type":"int"}]}"#;
        let Status::Incompatible {
            latest_version,
            breaks,
        } = judge(&subject(v2), Some(&registered(V1))).unwrap()
        else {
            panic!("expected incompatible")
        };
        assert_eq!(latest_version, 2);
        assert!(
            breaks.iter().any(|b| b.field.contains("seats")),
            "{breaks:?}"
        );
    }

    #[test]
    fn every_catalogue_record_has_a_schema_and_every_schema_a_topic() {
        let catalogue = Catalogue::load(&crate::catalogue::repo_catalogue(), "local").unwrap();
        let schemas = embedded();
        let subjects = subjects(&catalogue, &schemas).unwrap();
        let used: std::collections::BTreeSet<&str> = subjects
            .iter()
            .map(|s| s.schema.full_name.as_str())
            .collect();
        let unused: Vec<&String> = schemas
            .keys()
            .filter(|k| !used.contains(k.as_str()))
            .collect();
        assert!(unused.is_empty(), "schemas on no topic: {unused:?}");
        assert!(
            subjects
                .iter()
                .any(|s| s.subject == "booking.commands-boxoffice.BookingRequested")
        );
    }

    #[test]
    fn a_record_without_a_schema_is_named() {
        let catalogue = Catalogue::load(&crate::catalogue::repo_catalogue(), "local").unwrap();
        let err = subjects(&catalogue, &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("boxoffice.BookingRequested (on booking.commands)"),
            "{err}"
        );
    }
}
