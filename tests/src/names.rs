//! Unique names for topics, keyspaces, consumer groups and registry subjects, so tests can run
//! side by side against one shared stack without seeing each other's data.

/// `prefix` followed by a random suffix; only `[a-z0-9_]`, so the result is valid as a Kafka
/// topic, a CQL keyspace (at most 48 characters) and a registry subject alike.
pub fn unique(prefix: &str) -> String {
    let prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &suffix[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_valid_cql_identifiers() {
        let a = unique("Smoke-Test.kafka");
        let b = unique("Smoke-Test.kafka");
        assert_ne!(a, b);
        assert!(a.starts_with("smoke_test_kafka_"));
        assert!(a.len() <= 48);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
    }

    #[test]
    fn long_prefixes_are_cut_to_fit_a_keyspace_name() {
        assert!(unique(&"x".repeat(100)).len() <= 48);
    }
}
