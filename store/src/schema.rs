//! The CQL schema: the one place that creates boxoffice's keyspace and tables. Idempotent
//! (`IF NOT EXISTS` everywhere), so every binary may call [`ensure_schema`] at startup.
//!
//! The DDL must run on Apache Cassandra 5 (the local stack) and on ScyllaDB (users with Docker,
//! production): the `tablets` option only where the server has it, no ScyllaDB CQL extensions, no materialized views,
//! no secondary (SASI/SAI) indexes. Every read path has its own explicit query table instead
//! (`auth_by_email`, `orders_by_user`, `partition_events`, ...), written by the same code that
//! writes the base table.
//!
//! Replication is a setting (`--scylla-replication` / `SCYLLA_REPLICATION`):
//! - `SimpleStrategy:1` (the default): one copy, for the single local node.
//! - `NetworkTopologyStrategy:dc1=3,dc2=3`: production. Three replicas in every data centre, so
//!   `LOCAL_QUORUM` (the driver's default) survives one node down per data centre, and the
//!   booking processor's lightweight transactions (`LOCAL_SERIAL`) stay correct as long as all
//!   processors of one consumer group run in one data centre.
//!
//! `CREATE KEYSPACE IF NOT EXISTS` never changes an existing keyspace: changing replication later
//! is an operator's `ALTER KEYSPACE` followed by a full repair. [`ensure_schema`] logs a warning
//! when the existing keyspace's replication differs from the setting.
//!
//! ScyllaDB and tablets: recent ScyllaDB versions create keyspaces with tablets by default and
//! refuse lightweight transactions on them, and Cassandra rejects the `tablets` option. So
//! [`ensure_schema`] asks the server what it is ([`detect_server`]) and creates the keyspace
//! with `tablets = {'enabled': false}` on a ScyllaDB that has tablets, and without the option
//! elsewhere ([`keyspace_statement`]). An existing keyspace with tablets stops startup with
//! [`SchemaError::Tablets`]: tablets cannot be switched off later.
//!
//! Tables change through [`MIGRATIONS`], one ordered list of added columns.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use scylla::client::session::Session;
use scylla::errors::{ExecutionError, SchemaAgreementError};

/// The keyspace every binary uses unless told otherwise.
pub const DEFAULT_KEYSPACE: &str = "boxoffice";
/// One copy: right for the single local node, wrong for production.
pub const DEFAULT_REPLICATION: &str = "SimpleStrategy:1";
/// Cassandra's and ScyllaDB's limit on keyspace name length.
pub const MAX_KEYSPACE_LEN: usize = 48;

/// A keyspace name that is safe to interpolate into CQL: `[a-zA-Z0-9_]{1,48}`, normalised to
/// lowercase (what CQL does to unquoted names anyway) and always written quoted, so names that
/// start with a digit or are CQL keywords work too.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Keyspace(String);

/// A keyspace name that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid keyspace name {name:?}: {reason} (use 1 to 48 characters from a-z, A-Z, 0-9 and _)"
)]
pub struct KeyspaceError {
    pub name: String,
    pub reason: &'static str,
}

impl Keyspace {
    pub fn new(name: &str) -> Result<Self, KeyspaceError> {
        let fail = |reason| KeyspaceError {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() {
            return Err(fail("it is empty"));
        }
        if name.len() > MAX_KEYSPACE_LEN {
            return Err(fail("it is longer than 48 characters"));
        }
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(fail(
                "it contains a character other than a-z, A-Z, 0-9 and _",
            ));
        }
        Ok(Keyspace(name.to_ascii_lowercase()))
    }

    /// The (lowercase) name, as stored in `system_schema`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as written in CQL: quoted.
    pub fn cql(&self) -> String {
        format!("\"{}\"", self.0)
    }

    /// `"keyspace".table`, for statements.
    pub fn table(&self, table: &str) -> String {
        format!("\"{}\".{table}", self.0)
    }
}

impl FromStr for Keyspace {
    type Err = KeyspaceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Keyspace::new(s)
    }
}

impl fmt::Display for Keyspace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How many copies of the data the cluster keeps, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// `SimpleStrategy:<factor>`: for a single node or a single-rack test cluster.
    Simple { factor: u32 },
    /// `NetworkTopologyStrategy:<dc>=<factor>,...`: production, per data centre.
    NetworkTopology { datacenters: BTreeMap<String, u32> },
}

/// A replication setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid replication {value:?}: {reason} (expected `SimpleStrategy:1` or `NetworkTopologyStrategy:dc1=3,dc2=3`)"
)]
pub struct ReplicationError {
    pub value: String,
    pub reason: String,
}

/// Replication factors above this are certainly a typo.
const MAX_REPLICATION_FACTOR: u32 = 32;

fn parse_factor(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(0) => Err("a replication factor must be at least 1".to_owned()),
        Ok(n) if n > MAX_REPLICATION_FACTOR => Err(format!(
            "replication factor {n} is above {MAX_REPLICATION_FACTOR}"
        )),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{:?} is not a replication factor", text.trim())),
    }
}

impl FromStr for Replication {
    type Err = ReplicationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| ReplicationError {
            value: s.to_owned(),
            reason,
        };
        let (class, rest) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| fail("missing `:` after the strategy".to_owned()))?;
        match class.trim() {
            "SimpleStrategy" => Ok(Replication::Simple {
                factor: parse_factor(rest).map_err(fail)?,
            }),
            "NetworkTopologyStrategy" => {
                let mut datacenters = BTreeMap::new();
                for part in rest.split(',') {
                    let (dc, factor) = part.split_once('=').ok_or_else(|| {
                        fail(format!("{:?} is not `<datacenter>=<factor>`", part.trim()))
                    })?;
                    let dc = dc.trim();
                    let valid_dc = !dc.is_empty()
                        && dc
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                    if !valid_dc {
                        return Err(fail(format!(
                            "data centre name {dc:?} must be non-empty and use only a-z, A-Z, 0-9, _, - and ."
                        )));
                    }
                    let factor = parse_factor(factor).map_err(fail)?;
                    if datacenters.insert(dc.to_owned(), factor).is_some() {
                        return Err(fail(format!("data centre {dc:?} is named twice")));
                    }
                }
                Ok(Replication::NetworkTopology { datacenters })
            }
            other => Err(fail(format!(
                "unknown strategy {other:?} (SimpleStrategy or NetworkTopologyStrategy)"
            ))),
        }
    }
}

impl fmt::Display for Replication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Replication::Simple { factor } => write!(f, "SimpleStrategy:{factor}"),
            Replication::NetworkTopology { datacenters } => {
                let dcs: Vec<String> = datacenters
                    .iter()
                    .map(|(dc, n)| format!("{dc}={n}"))
                    .collect();
                write!(f, "NetworkTopologyStrategy:{}", dcs.join(","))
            }
        }
    }
}

impl Replication {
    /// The CQL map for `CREATE KEYSPACE ... WITH replication = <map>`.
    pub fn cql(&self) -> String {
        match self {
            Replication::Simple { factor } => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {factor}}}")
            }
            Replication::NetworkTopology { datacenters } => {
                let dcs: Vec<String> = datacenters
                    .iter()
                    .map(|(dc, n)| format!("'{dc}': {n}"))
                    .collect();
                format!("{{'class': 'NetworkTopologyStrategy', {}}}", dcs.join(", "))
            }
        }
    }

    /// Whether an existing keyspace's `system_schema.keyspaces.replication` map says the same.
    pub fn matches(&self, stored: &HashMap<String, String>) -> bool {
        let class = stored.get("class").map(String::as_str).unwrap_or_default();
        let class = class.rsplit('.').next().unwrap_or_default();
        let factors = || -> BTreeMap<String, u32> {
            stored
                .iter()
                .filter(|(k, _)| k.as_str() != "class")
                .filter_map(|(k, v)| Some((k.clone(), v.parse().ok()?)))
                .collect()
        };
        match self {
            Replication::Simple { factor } => {
                class == "SimpleStrategy"
                    && stored
                        .get("replication_factor")
                        .and_then(|v| v.parse().ok())
                        == Some(*factor)
            }
            Replication::NetworkTopology { datacenters } => {
                class == "NetworkTopologyStrategy" && factors() == *datacenters
            }
        }
    }
}

/// clap value parser for `--scylla-keyspace`.
pub fn parse_keyspace(value: &str) -> Result<Keyspace, KeyspaceError> {
    Keyspace::new(value)
}

/// clap value parser for `--scylla-replication`.
pub fn parse_replication(value: &str) -> Result<Replication, ReplicationError> {
    value.parse()
}

/// Where boxoffice keeps its tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaSettings {
    pub keyspace: Keyspace,
    pub replication: Replication,
}

impl SchemaSettings {
    /// The local default: keyspace `boxoffice`, one copy.
    pub fn local(keyspace: Keyspace) -> Self {
        SchemaSettings {
            keyspace,
            replication: Replication::Simple { factor: 1 },
        }
    }
}

/// The keyspace settings every binary takes (flags and environment variables).
#[derive(Debug, Clone, clap::Args)]
pub struct SchemaArgs {
    /// The keyspace holding boxoffice's tables (`[a-zA-Z0-9_]{1,48}`).
    #[arg(
        long = "scylla-keyspace",
        env = "SCYLLA_KEYSPACE",
        default_value = DEFAULT_KEYSPACE,
        value_parser = parse_keyspace,
    )]
    pub keyspace: Keyspace,

    /// Replication of the keyspace when it is created: `SimpleStrategy:1` (local) or
    /// `NetworkTopologyStrategy:dc1=3,dc2=3` (production).
    #[arg(
        long = "scylla-replication",
        env = "SCYLLA_REPLICATION",
        default_value = DEFAULT_REPLICATION,
        value_parser = parse_replication,
    )]
    pub replication: Replication,
}

impl SchemaArgs {
    pub fn settings(&self) -> SchemaSettings {
        SchemaSettings {
            keyspace: self.keyspace.clone(),
            replication: self.replication.clone(),
        }
    }
}

/// The schema could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("creating the schema failed at `{statement}`: {source}")]
    Statement {
        statement: String,
        #[source]
        source: ExecutionError,
    },
    #[error("the cluster did not agree on the schema: {0}")]
    Agreement(#[from] SchemaAgreementError),
    #[error(
        "keyspace {keyspace} uses ScyllaDB tablets, where lightweight transactions (the booking processor's fenced saves) are refused; recreate it with tablets = {{'enabled': false}} (boxoffice creates new keyspaces that way) or choose another --scylla-keyspace / SCYLLA_KEYSPACE"
    )]
    Tablets { keyspace: String },
}

/// Every table boxoffice creates, in creation order.
pub const TABLES: &[&str] = &[
    "auth_profiles",
    "auth_by_email",
    "auth_by_user_name",
    "users",
    "cate_events",
    "events",
    "tickets",
    "orders",
    "orders_by_user",
    "payments",
    "payment_histories",
    "payment_timers",
    "event_inventory",
    "partition_events",
    "users_by_created",
    "refresh_tokens",
    "auth_sessions",
    "payments_by_user",
    "payment_submissions",
    "payment_provider_events",
    "notifications",
    "webhook_endpoints",
    "notification_deliveries",
    "consumer_watermarks",
];

/// The table definitions (without keyspace): `(name, column list and key)`.
fn table_definitions() -> [(&'static str, &'static str); 24] {
    [
        // Sign-in identities; the password is an argon2 hash, never the password.
        (
            "auth_profiles",
            "user_id text PRIMARY KEY, email text, user_name text, password_hash text, \
             role text, created_at timestamp, email_verified_at timestamp, \
             password_changed_at timestamp",
        ),
        // Uniqueness of e-mail addresses and user names: claimed with `INSERT ... IF NOT EXISTS`.
        ("auth_by_email", "email text PRIMARY KEY, user_id text"),
        (
            "auth_by_user_name",
            "user_name text PRIMARY KEY, user_id text",
        ),
        (
            "users",
            "id text PRIMARY KEY, email text, user_name text, first_name text, last_name text, \
             birth_day date, mobile_phone text, created_at timestamp, updated_at timestamp",
        ),
        (
            "cate_events",
            "id text PRIMARY KEY, name text, is_free boolean",
        ),
        // The catalogue (the seed's "tickets" API): what organisers set. Times in ms (UTC).
        (
            "events",
            "id text PRIMARY KEY, name text, description text, venue text, category_id text, \
             starts_at timestamp, price_minor bigint, currency text, capacity int, \
             sale_starts_at timestamp, sale_ends_at timestamp, hold_seconds int, \
             max_per_order int, max_per_user int, created_at timestamp, updated_at timestamp",
        ),
        // Issued tickets, one row per slot of a confirmed order.
        (
            "tickets",
            "order_id text, ticket_id text, event_id text, user_id text, issued_at timestamp, \
             PRIMARY KEY (order_id, ticket_id)",
        ),
        // The read model of orders (written from `orders.events`).
        (
            "orders",
            "id text PRIMARY KEY, event_id text, user_id text, number_slot int, status text, \
             amount_minor bigint, currency text, hold_expires_at timestamp, payment_id text, \
             reason text, created_at timestamp, updated_at timestamp, \
             request_fingerprint text, idempotency_key text",
        ),
        // A user's orders, newest first (`GET v1/orders`).
        (
            "orders_by_user",
            "user_id text, created_at timestamp, order_id text, event_id text, number_slot int, \
             status text, amount_minor bigint, currency text, updated_at timestamp, \
             PRIMARY KEY ((user_id), created_at, order_id)) \
             WITH CLUSTERING ORDER BY (created_at DESC, order_id DESC",
        ),
        // One row per payment (id = `ids::payment_id(order_id)`): the read model's columns
        // first, then the payment processor's (see `payments`): the parked submission, the
        // charge and refund, the history counter, the applied offset and the write revision.
        (
            "payments",
            "id text PRIMARY KEY, order_id text, user_id text, amount_minor bigint, \
             currency text, status text, provider_reference text, created_at timestamp, \
             updated_at timestamp, \
             event_id text, hold_expires_at bigint, requested boolean, \
             payment_method_token text, submitted_user_id text, submitted_amount_minor bigint, \
             submitted_currency text, submitted_at bigint, charge_attempts int, \
             captured_minor bigint, failure_reason text, failure_detail text, refund_id text, \
             refund_amount_minor bigint, refund_reason text, refund_reference text, \
             refunded_minor bigint, history_seq int, applied_offset bigint, revision bigint",
        ),
        // Every status change of a payment, in order (`seq` orders changes within one ms).
        (
            "payment_histories",
            "payment_id text, at timestamp, seq int, status text, detail text, \
             PRIMARY KEY ((payment_id), at, seq)",
        ),
        // The payment processor's timers: when an unsettled payment (pending at the provider,
        // an answer lost, never submitted) must be looked at again, by the `payments.requests`
        // partition that owns it, so a processor given a partition loads them with one query.
        (
            "payment_timers",
            "topic text, kafka_partition int, payment_id text, due_at bigint, \
             PRIMARY KEY ((topic, kafka_partition), payment_id)",
        ),
        // The booking processor's state, one partition per event: event-level state in static
        // columns (one copy per partition), one row per decided order, and one index row per
        // save (`order_digests`, keys from `inventory::INDEX_ROW_PREFIX`). Written only by the
        // owner of the event's Kafka partition, in one conditional batch per save (see
        // `inventory`). Times in ms since the epoch.
        (
            "event_inventory",
            "event_id text, order_id text, \
             applied_offset bigint static, configured boolean static, name text static, \
             category_id text static, capacity int static, price_minor bigint static, \
             currency text static, sale_starts_at bigint static, sale_ends_at bigint static, \
             hold_ms bigint static, max_per_order int static, max_per_user int static, \
             updated_at bigint static, updated_by_record text static, held int static, \
             sold int static, sequence bigint static, decisions bigint static, \
             decision_digest text static, order_digests_complete boolean static, \
             order_digests blob, \
             user_id text, slots int, amount_minor bigint, order_currency text, \
             payment_id text, status text, hold_expires_at bigint, reject_reason text, \
             cancel_reason text, late boolean, refunded boolean, idempotency_key text, \
             PRIMARY KEY (event_id, order_id)",
        ),
        // Which events a booking processor must load when it is given a Kafka partition.
        (
            "partition_events",
            "topic text, kafka_partition int, event_id text, \
             PRIMARY KEY ((topic, kafka_partition), event_id)",
        ),
        // ingest: every user, newest first (`GET v1/users`); one partition (`bucket` = 0).
        (
            "users_by_created",
            "bucket int, created_at timestamp, user_id text, \
             PRIMARY KEY ((bucket), created_at, user_id)) \
             WITH CLUSTERING ORDER BY (created_at DESC, user_id DESC",
        ),
        // ingest: refresh tokens by SHA-256 (never the token), written with a TTL; `used` is
        // set once, by a lightweight transaction (rotation).
        (
            "refresh_tokens",
            "token_hash text PRIMARY KEY, user_id text, family_id text, expires_at timestamp, \
             used boolean, created_at timestamp",
        ),
        // ingest: login sessions (refresh-token families) that were revoked.
        (
            "auth_sessions",
            "family_id text PRIMARY KEY, user_id text, revoked boolean, revoked_at timestamp",
        ),
        // ingest: a user's payments, newest first (`GET v1/payments`), by the order's time.
        (
            "payments_by_user",
            "user_id text, created_at timestamp, payment_id text, order_id text, \
             amount_minor bigint, currency text, \
             PRIMARY KEY ((user_id), created_at, payment_id)) \
             WITH CLUSTERING ORDER BY (created_at DESC, payment_id DESC",
        ),
        // ingest: what a user submitted for a payment, before the payment processor has it.
        (
            "payment_submissions",
            "payment_id text PRIMARY KEY, order_id text, user_id text, amount_minor bigint, \
             currency text, submitted_at timestamp",
        ),
        // ingest: asynchronous payment provider events already received on
        // `POST v1/payments/webhook`, by the provider's event id (a provider retries deliveries
        // and may send one event twice). `forwarded` turns true once the event is on
        // `payments.requests`; a delivery that finds it true is acknowledged as a duplicate.
        (
            "payment_provider_events",
            "provider_event_id text PRIMARY KEY, payment_id text, order_id text, \
             event_type text, received_at timestamp, forwarded boolean",
        ),
        // In-app notifications per user, newest first (written by the notifier, read by
        // `GET v1/notifications`).
        (
            "notifications",
            "user_id text, created_at timestamp, notification_id text, kind text, \
             order_id text, event_id text, params map<text, text>, read boolean, \
             PRIMARY KEY ((user_id), created_at, notification_id)) \
             WITH CLUSTERING ORDER BY (created_at DESC, notification_id DESC",
        ),
        // A user's webhook endpoints (registered through the API, read by the notifier). The
        // secret keys the HMAC-SHA256 signature; a 410 answer sets `disabled`.
        (
            "webhook_endpoints",
            "user_id text, endpoint_id text, url text, secret text, description text, \
             disabled boolean, disabled_reason text, disabled_at timestamp, \
             created_at timestamp, PRIMARY KEY ((user_id), endpoint_id)",
        ),
        // The notifier's per-channel delivery state: one row per notification, channel
        // (`email`, `webhook`) and target (`email`: the address; `webhook`: the endpoint id).
        // `state` is PENDING while a send may be in flight, then SENT, SKIPPED, DISABLED or
        // DEAD (dead-lettered); `attempts` survives restarts, so the attempt bound does too.
        (
            "notification_deliveries",
            "notification_id text, channel text, target text, state text, attempts int, \
             detail text, updated_at timestamp, \
             PRIMARY KEY ((notification_id), channel, target)",
        ),
        (
            "consumer_watermarks",
            "consumer text, topic text, kafka_partition int, next_offset bigint, \
             updated_at timestamp, PRIMARY KEY ((consumer, topic, kafka_partition))",
        ),
    ]
}

/// Which CQL server answers. The keyspace DDL differs: ScyllaDB (2024.2 and later) creates
/// keyspaces with tablets by default and refuses lightweight transactions on them, which every
/// fenced save of the booking processor is; Cassandra rejects the `tablets` option outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CqlServer {
    Cassandra,
    /// `tablets`: the server knows the keyspace option (and defaults it on).
    Scylla {
        tablets: bool,
    },
}

impl fmt::Display for CqlServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CqlServer::Cassandra => f.write_str("Cassandra"),
            CqlServer::Scylla { tablets: true } => f.write_str("ScyllaDB (tablets)"),
            CqlServer::Scylla { tablets: false } => f.write_str("ScyllaDB (vnodes only)"),
        }
    }
}

/// Asks the server what it is: ScyllaDB has the table `system.scylla_local`, and those with
/// tablets have the column `system_schema.scylla_keyspaces.initial_tablets`.
pub async fn detect_server(session: &Session) -> Result<CqlServer, SchemaError> {
    let exists = |query: &'static str| async move {
        session
            .query_unpaged(query, &[])
            .await
            .map_err(|source| SchemaError::Statement {
                statement: query.to_owned(),
                source,
            })
            .map(|result| {
                result
                    .into_rows_result()
                    .map(|rows| rows.rows_num() > 0)
                    .unwrap_or(false)
            })
    };
    let scylla = exists(
        "SELECT table_name FROM system_schema.tables \
         WHERE keyspace_name = 'system' AND table_name = 'scylla_local'",
    )
    .await?;
    if !scylla {
        return Ok(CqlServer::Cassandra);
    }
    let tablets = exists(
        "SELECT column_name FROM system_schema.columns WHERE keyspace_name = 'system_schema' \
         AND table_name = 'scylla_keyspaces' AND column_name = 'initial_tablets'",
    )
    .await?;
    Ok(CqlServer::Scylla { tablets })
}

/// `CREATE KEYSPACE` for `server`: with tablets disabled where the server has them, so
/// lightweight transactions (the booking processor's fenced saves) work.
pub fn keyspace_statement(settings: &SchemaSettings, server: CqlServer) -> String {
    let tablets = match server {
        CqlServer::Scylla { tablets: true } => " AND tablets = {'enabled': false}",
        CqlServer::Scylla { tablets: false } | CqlServer::Cassandra => "",
    };
    format!(
        "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {}{tablets}",
        settings.keyspace.cql(),
        settings.replication.cql()
    )
}

/// The DDL [`ensure_schema`] runs on `server`, in order (migrations come after).
pub fn schema_statements(settings: &SchemaSettings, server: CqlServer) -> Vec<String> {
    let mut statements = vec![keyspace_statement(settings, server)];
    statements.extend(table_definitions().iter().map(|(name, body)| {
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({body})",
            settings.keyspace.table(name)
        )
    }));
    statements
}

/// A column added to a table after the table first shipped. The table definitions above
/// already carry it (new keyspaces get it from `CREATE TABLE`); `CREATE TABLE IF NOT EXISTS`
/// leaves an existing table alone, so [`apply_migrations`] adds it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddColumn {
    pub table: &'static str,
    pub column: &'static str,
    /// CQL type, with `static` where the column is one.
    pub cql_type: &'static str,
}

/// Every schema change since the first release, oldest first. Append only.
pub const MIGRATIONS: &[AddColumn] = &[
    AddColumn {
        table: "orders",
        column: "request_fingerprint",
        cql_type: "text",
    },
    AddColumn {
        table: "orders",
        column: "idempotency_key",
        cql_type: "text",
    },
    AddColumn {
        table: "webhook_endpoints",
        column: "description",
        cql_type: "text",
    },
    // The booking processor's decision count and digest, compared with booking.progress on
    // every assignment (see `inventory`).
    AddColumn {
        table: "event_inventory",
        column: "decisions",
        cql_type: "bigint static",
    },
    AddColumn {
        table: "event_inventory",
        column: "decision_digest",
        cql_type: "text static",
    },
    // ingest: when the account's email address was verified (null: not yet; it cannot book).
    AddColumn {
        table: "auth_profiles",
        column: "email_verified_at",
        cql_type: "timestamp",
    },
    // ingest: when the password was last reset; refresh tokens issued before it are refused.
    AddColumn {
        table: "auth_profiles",
        column: "password_changed_at",
        cql_type: "timestamp",
    },
    // The booking processor: each order's Idempotency-Key, so a key reused with another body
    // is recognised after a restore too.
    AddColumn {
        table: "event_inventory",
        column: "idempotency_key",
        cql_type: "text",
    },
    // The booking processor's order index (see `inventory::index`): whether every save of the
    // event wrote an index row, and the index rows' entries.
    AddColumn {
        table: "event_inventory",
        column: "order_digests_complete",
        cql_type: "boolean static",
    },
    AddColumn {
        table: "event_inventory",
        column: "order_digests",
        cql_type: "blob",
    },
];

/// `ALTER TABLE ... ADD` for one migration.
pub fn migration_statement(keyspace: &Keyspace, migration: &AddColumn) -> String {
    format!(
        "ALTER TABLE {} ADD {} {}",
        keyspace.table(migration.table),
        migration.column,
        migration.cql_type
    )
}

/// Adds every column of [`MIGRATIONS`] the keyspace lacks. Safe from several processes at
/// once: a column added concurrently between the check and the `ALTER` is only logged.
pub async fn apply_migrations(session: &Session, keyspace: &Keyspace) -> Result<(), SchemaError> {
    const EXISTS: &str = "SELECT column_name FROM system_schema.columns \
         WHERE keyspace_name = ? AND table_name = ? AND column_name = ?";
    for migration in MIGRATIONS {
        let exists = session
            .query_unpaged(
                EXISTS,
                (keyspace.as_str(), migration.table, migration.column),
            )
            .await
            .map_err(|source| SchemaError::Statement {
                statement: EXISTS.to_owned(),
                source,
            })?
            .into_rows_result()
            .map(|rows| rows.rows_num() > 0)
            .unwrap_or(false);
        if exists {
            continue;
        }
        let statement = migration_statement(keyspace, migration);
        if let Err(e) = session.query_unpaged(statement.as_str(), &[]).await {
            tracing::info!(%statement, error = %e, "ALTER TABLE failed (column added concurrently?)");
        }
    }
    session.await_schema_agreement().await?;
    Ok(())
}

/// Creates the keyspace and every table that does not exist yet, adds the columns of
/// [`MIGRATIONS`] that are missing, then waits until the whole cluster agrees on the schema.
/// Harmless to run again, and from several processes at once.
pub async fn ensure_schema(
    session: &Session,
    settings: &SchemaSettings,
) -> Result<(), SchemaError> {
    let server = detect_server(session).await?;
    // One at a time: concurrent DDL is what produces schema disagreements.
    for statement in schema_statements(settings, server) {
        session
            .query_unpaged(statement.as_str(), &[])
            .await
            .map_err(|source| SchemaError::Statement { statement, source })?;
    }
    session.await_schema_agreement().await?;
    apply_migrations(session, &settings.keyspace).await?;
    if server == (CqlServer::Scylla { tablets: true }) {
        refuse_tablets(session, &settings.keyspace).await?;
    }
    warn_on_replication_mismatch(session, settings).await;
    tracing::info!(
        keyspace = %settings.keyspace,
        replication = %settings.replication,
        %server,
        tables = TABLES.len(),
        "CQL schema ensured"
    );
    Ok(())
}

/// A keyspace made earlier with tablets (by hand, or by an older boxoffice) cannot take
/// lightweight transactions, and tablets cannot be switched off on an existing keyspace.
async fn refuse_tablets(session: &Session, keyspace: &Keyspace) -> Result<(), SchemaError> {
    const QUERY: &str =
        "SELECT initial_tablets FROM system_schema.scylla_keyspaces WHERE keyspace_name = ?";
    let initial = session
        .query_unpaged(QUERY, (keyspace.as_str(),))
        .await
        .map_err(|source| SchemaError::Statement {
            statement: QUERY.to_owned(),
            source,
        })?
        .into_rows_result()
        .ok()
        .and_then(|rows| rows.maybe_first_row::<(Option<i32>,)>().ok().flatten())
        .and_then(|(initial,)| initial);
    match initial {
        Some(_) => Err(SchemaError::Tablets {
            keyspace: keyspace.to_string(),
        }),
        None => Ok(()),
    }
}

async fn warn_on_replication_mismatch(session: &Session, settings: &SchemaSettings) {
    let stored = session
        .query_unpaged(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?",
            (settings.keyspace.as_str(),),
        )
        .await
        .ok()
        .and_then(|r| r.into_rows_result().ok())
        .and_then(|rows| {
            rows.maybe_first_row::<(HashMap<String, String>,)>()
                .ok()
                .flatten()
        });
    match stored {
        Some((stored,)) if !settings.replication.matches(&stored) => tracing::warn!(
            keyspace = %settings.keyspace,
            wanted = %settings.replication,
            existing = ?stored,
            "keyspace exists with a different replication; change it with ALTER KEYSPACE and a repair"
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_names_are_validated_and_lowercased() {
        assert_eq!(Keyspace::new("boxoffice").unwrap().as_str(), "boxoffice");
        assert_eq!(
            Keyspace::new("Box_Office_2").unwrap().as_str(),
            "box_office_2"
        );
        assert_eq!(Keyspace::new(&"k".repeat(48)).unwrap().as_str().len(), 48);
        assert_eq!(Keyspace::new("2024").unwrap().cql(), "\"2024\"");
        for bad in [
            "",
            "box-office",
            "box office",
            "ks;DROP",
            "ks\"",
            "é",
            &"k".repeat(49),
        ] {
            let err = Keyspace::new(bad).unwrap_err();
            assert!(err.to_string().contains("invalid keyspace name"), "{err}");
        }
        assert!(
            Keyspace::new(&"k".repeat(49))
                .unwrap_err()
                .to_string()
                .contains("longer than 48")
        );
    }

    #[test]
    fn replication_parses_both_strategies() {
        assert_eq!(
            "SimpleStrategy:1".parse::<Replication>().unwrap(),
            Replication::Simple { factor: 1 }
        );
        let nts: Replication = "NetworkTopologyStrategy: dc1=3, eu-west.2=2"
            .parse()
            .unwrap();
        assert_eq!(
            nts,
            Replication::NetworkTopology {
                datacenters: BTreeMap::from([("dc1".into(), 3), ("eu-west.2".into(), 2)])
            }
        );
        assert_eq!(nts.to_string(), "NetworkTopologyStrategy:dc1=3,eu-west.2=2");
        assert_eq!(
            nts.cql(),
            "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'eu-west.2': 2}"
        );
        assert_eq!(
            Replication::Simple { factor: 1 }.cql(),
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        );
        // Display round-trips through FromStr.
        assert_eq!(nts.to_string().parse::<Replication>().unwrap(), nts);
    }

    #[test]
    fn bad_replication_is_refused_with_the_reason() {
        for (bad, reason) in [
            ("SimpleStrategy", "missing `:`"),
            ("SimpleStrategy:0", "at least 1"),
            ("SimpleStrategy:x", "not a replication factor"),
            ("SimpleStrategy:99", "above 32"),
            ("LocalStrategy:1", "unknown strategy"),
            ("NetworkTopologyStrategy:", "not `<datacenter>=<factor>`"),
            ("NetworkTopologyStrategy:dc1", "not `<datacenter>=<factor>`"),
            ("NetworkTopologyStrategy:dc1=3,dc1=2", "named twice"),
            ("NetworkTopologyStrategy:d'c=3", "data centre name"),
            ("NetworkTopologyStrategy:=3", "data centre name"),
        ] {
            let err = bad.parse::<Replication>().unwrap_err().to_string();
            assert!(err.contains(reason), "{bad}: {err}");
            assert!(err.contains("NetworkTopologyStrategy:dc1=3,dc2=3"), "{err}");
        }
    }

    #[test]
    fn replication_compares_with_the_stored_map() {
        let stored = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let simple = Replication::Simple { factor: 1 };
        assert!(simple.matches(&stored(&[
            ("class", "org.apache.cassandra.locator.SimpleStrategy"),
            ("replication_factor", "1")
        ])));
        assert!(!simple.matches(&stored(&[
            ("class", "org.apache.cassandra.locator.SimpleStrategy"),
            ("replication_factor", "3")
        ])));
        let nts: Replication = "NetworkTopologyStrategy:dc1=3".parse().unwrap();
        assert!(nts.matches(&stored(&[
            (
                "class",
                "org.apache.cassandra.locator.NetworkTopologyStrategy"
            ),
            ("dc1", "3")
        ])));
        assert!(!nts.matches(&stored(&[
            (
                "class",
                "org.apache.cassandra.locator.NetworkTopologyStrategy"
            ),
            ("dc1", "3"),
            ("dc2", "3")
        ])));
    }

    #[test]
    fn args_default_to_the_local_keyspace_and_refuse_bad_values() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            schema: SchemaArgs,
        }
        // Only flags here: the environment of the test process must not matter.
        let cli = Cli::try_parse_from([
            "x",
            "--scylla-keyspace",
            "Shop",
            "--scylla-replication",
            "NetworkTopologyStrategy:dc1=3",
        ])
        .unwrap();
        assert_eq!(cli.schema.settings().keyspace.as_str(), "shop");
        let err = Cli::try_parse_from(["x", "--scylla-keyspace", "no-dashes"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid keyspace name"), "{err}");
        let err = Cli::try_parse_from(["x", "--scylla-replication", "SimpleStrategy:0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 1"), "{err}");
        assert_eq!(
            DEFAULT_REPLICATION.parse::<Replication>().unwrap(),
            Replication::Simple { factor: 1 }
        );
        assert_eq!(
            Keyspace::new(DEFAULT_KEYSPACE).unwrap().as_str(),
            "boxoffice"
        );
    }

    #[test]
    fn the_keyspace_disables_tablets_only_where_the_server_has_them() {
        let settings = SchemaSettings::local(Keyspace::new("ks").unwrap());
        let replication = "{'class': 'SimpleStrategy', 'replication_factor': 1}";
        assert_eq!(
            keyspace_statement(&settings, CqlServer::Cassandra),
            format!("CREATE KEYSPACE IF NOT EXISTS \"ks\" WITH replication = {replication}")
        );
        assert_eq!(
            keyspace_statement(&settings, CqlServer::Scylla { tablets: false }),
            format!("CREATE KEYSPACE IF NOT EXISTS \"ks\" WITH replication = {replication}")
        );
        assert_eq!(
            keyspace_statement(&settings, CqlServer::Scylla { tablets: true }),
            format!(
                "CREATE KEYSPACE IF NOT EXISTS \"ks\" WITH replication = {replication} \
                 AND tablets = {{'enabled': false}}"
            )
        );
    }

    #[test]
    fn every_migrated_column_is_also_in_its_table_definition() {
        let definitions = table_definitions();
        for m in MIGRATIONS {
            let (_, body) = definitions
                .iter()
                .find(|(name, _)| *name == m.table)
                .unwrap_or_else(|| panic!("migration of unknown table {}", m.table));
            let column = format!("{} {}", m.column, m.cql_type);
            assert!(body.contains(&column), "{} lacks `{column}`", m.table);
        }
        let ks = Keyspace::new("ks").unwrap();
        assert_eq!(
            migration_statement(&ks, &MIGRATIONS[3]),
            "ALTER TABLE \"ks\".event_inventory ADD decisions bigint static"
        );
    }

    #[test]
    fn the_ddl_is_idempotent_and_portable() {
        let settings = SchemaSettings::local(Keyspace::new("ks").unwrap());
        let statements = schema_statements(&settings, CqlServer::Cassandra);
        assert_eq!(statements.len(), 1 + TABLES.len());
        assert!(statements[0].starts_with("CREATE KEYSPACE IF NOT EXISTS \"ks\" WITH replication"));
        for (statement, table) in statements[1..].iter().zip(TABLES) {
            assert!(
                statement.starts_with(&format!("CREATE TABLE IF NOT EXISTS \"ks\".{table} (")),
                "{statement}"
            );
        }
        for statement in &statements {
            let lower = statement.to_lowercase();
            for forbidden in [
                "tablets",
                "materialized",
                "index",
                "using timeout",
                "bypass cache",
            ] {
                assert!(!lower.contains(forbidden), "{forbidden} in {statement}");
            }
        }
    }
}
