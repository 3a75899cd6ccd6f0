//! Every CQL statement ingest runs on its own tables, as one list of templates prepared once at
//! startup. In a template `{name}` stands for a table of the keyspace (`boxoffice_store`'s
//! `TABLES`) or for one of the column lists below, shared by the statements whose rows one
//! decoder reads. A statement with ` IF ` is a lightweight transaction and is not retried by
//! the driver; every other one is idempotent.

use boxoffice_store::schema::{Keyspace, TABLES};
use scylla::client::session::Session;
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;

use super::super::{StoreError, StoreResult};

/// Column lists a template names as `{name}`: each is the row shape of one decoder.
const COLUMN_LISTS: &[(&str, &str)] = &[
    (
        "event_columns",
        "id, name, description, venue, category_id, starts_at, price_minor, currency, capacity, \
         sale_starts_at, sale_ends_at, hold_seconds, max_per_order, max_per_user, created_at, \
         updated_at",
    ),
    (
        "endpoint_columns",
        "endpoint_id, url, description, secret, disabled, disabled_reason, disabled_at, created_at",
    ),
    (
        "provider_event_columns",
        "provider_event_id, payment_id, order_id, event_type, received_at, forwarded",
    ),
    (
        "order_columns",
        "id, event_id, user_id, number_slot, created_at, idempotency_key",
    ),
];

/// Declares `Statements` (one field a template) and prepares them all; written as a macro so
/// that each statement is named once, beside its text.
macro_rules! statements {
    ($($name:ident => $template:literal,)*) => {
        #[derive(Debug)]
        pub(super) struct Statements {
            $(pub(super) $name: PreparedStatement,)*
        }

        impl Statements {
            pub(super) async fn prepare(session: &Session, keyspace: &Keyspace) -> StoreResult<Self> {
                let mut statements = Self {
                    $($name: prepare(session, &expand($template, keyspace)?).await?,)*
                };
                // Reads that must see every lightweight transaction applied before them.
                statements.read_provider_event_serial.set_consistency(Consistency::LocalSerial);
                Ok(statements)
            }
        }

        #[cfg(test)]
        const TEMPLATES: &[&str] = &[$($template),*];
    };
}

statements! {
    ping => "SELECT now() FROM system.local",
    // accounts
    claim_email => "INSERT INTO {auth_by_email} (email, user_id) VALUES (?, ?) IF NOT EXISTS",
    claim_user_name => "INSERT INTO {auth_by_user_name} (user_name, user_id) VALUES (?, ?) IF NOT EXISTS",
    release_email => "DELETE FROM {auth_by_email} WHERE email = ? IF user_id = ?",
    release_user_name => "DELETE FROM {auth_by_user_name} WHERE user_name = ? IF user_id = ?",
    insert_profile => "INSERT INTO {auth_profiles} (user_id, email, user_name, password_hash, role, created_at, email_verified_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    insert_user => "INSERT INTO {users} (id, email, user_name, first_name, last_name, mobile_phone, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    insert_user_listing => "INSERT INTO {users_by_created} (bucket, created_at, user_id) VALUES (?, ?, ?)",
    email_owner => "SELECT user_id FROM {auth_by_email} WHERE email = ?",
    user_name_owner => "SELECT user_id FROM {auth_by_user_name} WHERE user_name = ?",
    read_profile => "SELECT password_hash, role, email_verified_at, password_changed_at FROM {auth_profiles} WHERE user_id = ?",
    set_email_verified => "UPDATE {auth_profiles} SET email_verified_at = ? WHERE user_id = ?",
    set_password_hash => "UPDATE {auth_profiles} SET password_hash = ?, password_changed_at = ? WHERE user_id = ?",
    read_user => "SELECT id, email, user_name, first_name, last_name, birth_day, mobile_phone, created_at, updated_at FROM {users} WHERE id = ?",
    update_user => "UPDATE {users} SET user_name = ?, first_name = ?, last_name = ?, birth_day = ?, mobile_phone = ?, updated_at = ? WHERE id = ?",
    update_profile_name => "UPDATE {auth_profiles} SET user_name = ? WHERE user_id = ?",
    set_role => "UPDATE {auth_profiles} SET role = ? WHERE user_id = ?",
    insert_refresh => "INSERT INTO {refresh_tokens} (token_hash, user_id, family_id, expires_at, used, created_at) VALUES (?, ?, ?, ?, false, ?) USING TTL ?",
    read_refresh => "SELECT user_id, family_id, expires_at, used, created_at FROM {refresh_tokens} WHERE token_hash = ?",
    consume_refresh => "UPDATE {refresh_tokens} SET used = true WHERE token_hash = ? IF used = false",
    revoke_family => "UPDATE {auth_sessions} SET revoked = true, revoked_at = ? WHERE family_id = ?",
    read_family => "SELECT revoked FROM {auth_sessions} WHERE family_id = ?",
    // catalog
    scan_events => "SELECT {event_columns} FROM {events}",
    read_event => "SELECT {event_columns} FROM {events} WHERE id = ?",
    insert_event => "INSERT INTO {events} ({event_columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    scan_categories => "SELECT id, name, is_free FROM {cate_events}",
    read_category => "SELECT id, name, is_free FROM {cate_events} WHERE id = ?",
    insert_category => "INSERT INTO {cate_events} (id, name, is_free) VALUES (?, ?, ?)",
    // orders: read only (the booking processor writes them, `boxoffice_store::orders`)
    read_order => "SELECT {order_columns} FROM {orders} WHERE id = ?",
    // payments
    insert_payment_listing => "INSERT INTO {payments_by_user} (user_id, created_at, payment_id, order_id, amount_minor, currency) VALUES (?, ?, ?, ?, ?, ?)",
    insert_submission => "INSERT INTO {payment_submissions} (payment_id, order_id, user_id, amount_minor, currency, submitted_at) VALUES (?, ?, ?, ?, ?, ?)",
    read_submission => "SELECT payment_id, order_id, user_id, amount_minor, currency, submitted_at FROM {payment_submissions} WHERE payment_id = ?",
    // webhooks; `disabled_at` is left unset on insert (no tombstone), `''` is "no reason".
    // The changes are lightweight transactions: an UPDATE without `IF EXISTS` would recreate
    // a row deleted meanwhile, without URL or secret, and every delivery to it would fail.
    list_endpoints => "SELECT {endpoint_columns} FROM {webhook_endpoints} WHERE user_id = ?",
    read_endpoint => "SELECT {endpoint_columns} FROM {webhook_endpoints} WHERE user_id = ? AND endpoint_id = ?",
    insert_endpoint => "INSERT INTO {webhook_endpoints} (user_id, endpoint_id, url, description, secret, disabled, disabled_reason, created_at) VALUES (?, ?, ?, ?, ?, false, '', ?)",
    delete_endpoint => "DELETE FROM {webhook_endpoints} WHERE user_id = ? AND endpoint_id = ? IF EXISTS",
    enable_endpoint => "UPDATE {webhook_endpoints} SET disabled = false, disabled_reason = '', disabled_at = null WHERE user_id = ? AND endpoint_id = ? IF EXISTS",
    set_endpoint_secret => "UPDATE {webhook_endpoints} SET secret = ? WHERE user_id = ? AND endpoint_id = ? IF EXISTS",
    // provider events; marking is an LWT like the claim: mixing Paxos and plain writes on one
    // row can order them wrongly when clocks disagree.
    claim_provider_event => "INSERT INTO {payment_provider_events} ({provider_event_columns}) VALUES (?, ?, ?, ?, ?, false) IF NOT EXISTS",
    read_provider_event_serial => "SELECT {provider_event_columns} FROM {payment_provider_events} WHERE provider_event_id = ?",
    mark_provider_event_forwarded => "UPDATE {payment_provider_events} SET forwarded = true WHERE provider_event_id = ? IF EXISTS",
}

/// Statements of one newest-first list: first page, older than a cursor, newer than a cursor.
#[derive(Debug)]
pub(super) struct PageStatements {
    pub(super) first: PreparedStatement,
    pub(super) next: PreparedStatement,
    pub(super) previous: PreparedStatement,
}

impl PageStatements {
    /// The three reads of `columns` from the list `table` keyed by `key`, ordered by
    /// `(at, id)` descending (the table's clustering order).
    async fn prepare(
        session: &Session,
        keyspace: &Keyspace,
        [table, columns, key, at, id]: [&str; 5],
    ) -> StoreResult<Self> {
        let from = format!(
            "SELECT {columns} FROM {} WHERE {key} = ?",
            known_table(keyspace, table)?
        );
        Ok(Self {
            first: prepare(session, &format!("{from} LIMIT ?")).await?,
            next: prepare(
                session,
                &format!("{from} AND ({at}, {id}) < (?, ?) LIMIT ?"),
            )
            .await?,
            previous: prepare(
                session,
                &format!("{from} AND ({at}, {id}) > (?, ?) ORDER BY {at} ASC, {id} ASC LIMIT ?"),
            )
            .await?,
        })
    }
}

/// The paged lists: users (admins), a user's orders, a user's payments.
#[derive(Debug)]
pub(super) struct Pages {
    pub(super) users: PageStatements,
    pub(super) orders: PageStatements,
    pub(super) payments: PageStatements,
}

impl Pages {
    pub(super) async fn prepare(session: &Session, keyspace: &Keyspace) -> StoreResult<Self> {
        let list = |spec| PageStatements::prepare(session, keyspace, spec);
        Ok(Self {
            users: list([
                "users_by_created",
                "user_id, created_at",
                "bucket",
                "created_at",
                "user_id",
            ])
            .await?,
            orders: list([
                "orders_by_user",
                "order_id, event_id, number_slot, created_at",
                "user_id",
                "created_at",
                "order_id",
            ])
            .await?,
            payments: list([
                "payments_by_user",
                "payment_id, order_id, amount_minor, currency, created_at",
                "user_id",
                "created_at",
                "payment_id",
            ])
            .await?,
        })
    }
}

async fn prepare(session: &Session, cql: &str) -> StoreResult<PreparedStatement> {
    let mut statement = session
        .prepare(cql.to_owned())
        .await
        .map_err(|e| StoreError::unavailable("preparing statements", format!("{e} ({cql})")))?;
    statement.set_is_idempotent(!cql.contains(" IF "));
    Ok(statement)
}

/// `table` qualified by the keyspace, when boxoffice creates such a table.
fn known_table(keyspace: &Keyspace, table: &str) -> StoreResult<String> {
    if TABLES.contains(&table) {
        Ok(keyspace.table(table))
    } else {
        Err(StoreError::corrupt(
            "preparing statements",
            format!("no table {table}"),
        ))
    }
}

/// The CQL of `template`: each `{name}` replaced by its column list or qualified table.
fn expand(template: &str, keyspace: &Keyspace) -> StoreResult<String> {
    let mut cql = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| open + c) else {
            break;
        };
        cql.push_str(&rest[..open]);
        let name = &rest[open + 1..close];
        match COLUMN_LISTS.iter().find(|(list, _)| *list == name) {
            Some((_, columns)) => cql.push_str(columns),
            None => cql.push_str(&known_table(keyspace, name)?),
        }
        rest = &rest[close + 1..];
    }
    cql.push_str(rest);
    Ok(cql)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyspace() -> Keyspace {
        "boxoffice".parse().expect("a valid keyspace name")
    }

    #[test]
    fn every_template_names_known_tables_and_lists_only() {
        for template in TEMPLATES {
            let cql = expand(template, &keyspace()).unwrap_or_else(|e| panic!("{template}: {e}"));
            assert!(!cql.contains(['{', '}']), "{cql}");
        }
    }

    #[test]
    fn names_become_qualified_tables_and_column_lists() {
        assert_eq!(
            expand(
                "SELECT {provider_event_columns} FROM {payment_provider_events}",
                &keyspace()
            )
            .expect("known names"),
            "SELECT provider_event_id, payment_id, order_id, event_type, received_at, forwarded \
             FROM \"boxoffice\".payment_provider_events"
        );
        assert!(expand("SELECT * FROM {no_such_table}", &keyspace()).is_err());
    }

    #[test]
    fn insert_columns_match_their_placeholders() {
        let columns = |name: &str| {
            COLUMN_LISTS
                .iter()
                .find(|(list, _)| *list == name)
                .expect("listed")
                .1
                .split(',')
                .count()
        };
        // Values: 16 for events.
        assert_eq!(columns("event_columns"), 16);
        assert_eq!(columns("provider_event_columns"), 6);
    }
}
