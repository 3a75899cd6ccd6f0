//! Schema registry settings shared by every binary (flag + environment variable, defaulting to
//! the local stack) and the startup reachability check that names the setting when it fails.

use std::time::Duration;

use schema_registry_converter::async_impl::schema_registry::{SrSettings, get_all_subjects};

/// The Confluent-compatible API of the local stack's Apicurio registry.
pub const DEFAULT_REGISTRY_URL: &str = "http://127.0.0.1:8081/apis/ccompat/v7";

/// Where the schema registry answers.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Base URL of the Confluent-compatible schema registry API (for Apicurio, the
    /// `/apis/ccompat/v7` path).
    #[arg(
        id = "schema_registry_url",
        long = "schema-registry-url",
        env = "SCHEMA_REGISTRY_URL",
        default_value = DEFAULT_REGISTRY_URL,
        value_parser = parse_registry_url,
    )]
    pub url: String,

    /// How long a registry call may take before it counts as failed (e.g. `5s`, `500ms`).
    #[arg(
        id = "schema_registry_timeout",
        long = "schema-registry-timeout",
        env = "SCHEMA_REGISTRY_TIMEOUT",
        default_value = "10s",
        value_parser = humantime::parse_duration,
    )]
    pub timeout: Duration,
}

/// The registry could not be used; every message names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "schema registry settings are invalid (--schema-registry-url / SCHEMA_REGISTRY_URL = {url}): {reason}"
    )]
    Settings { url: String, reason: String },
    #[error(
        "schema registry is unreachable at {url} (set --schema-registry-url / SCHEMA_REGISTRY_URL, or start the stack with `scripts/stack up`): {reason}"
    )]
    Unreachable { url: String, reason: String },
}

impl RegistryArgs {
    /// Settings for the converter's registry client, with this configuration's timeout.
    pub fn settings(&self) -> Result<SrSettings, RegistryError> {
        SrSettings::new_builder(self.url.clone())
            .no_proxy()
            .set_timeout(self.timeout)
            .build()
            .map_err(|e| RegistryError::Settings {
                url: self.url.clone(),
                reason: e.to_string(),
            })
    }

    /// Asks the registry for its subjects: proves the URL points at a Confluent-compatible API.
    /// Returns how many subjects are registered.
    pub async fn check(&self) -> Result<usize, RegistryError> {
        let settings = self.settings()?;
        let unreachable = |reason: String| RegistryError::Unreachable {
            url: self.url.clone(),
            reason,
        };
        match tokio::time::timeout(self.timeout, get_all_subjects(&settings)).await {
            Ok(Ok(subjects)) => Ok(subjects.len()),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable(format!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            ))),
        }
    }
}

/// Accepts an absolute http(s) URL; a trailing slash is dropped because the converter appends
/// `/subjects/...` itself.
pub fn parse_registry_url(raw: &str) -> Result<String, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "scheme must be http or https, not `{}`",
            url.scheme()
        ));
    }
    if url.host_str().is_none() {
        return Err("the URL has no host".to_owned());
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_url_accepts_http_and_drops_trailing_slash() {
        assert_eq!(
            parse_registry_url("http://127.0.0.1:8081/apis/ccompat/v7/").unwrap(),
            "http://127.0.0.1:8081/apis/ccompat/v7"
        );
    }

    #[test]
    fn registry_url_refuses_other_schemes_and_garbage() {
        assert!(
            parse_registry_url("ftp://host/x")
                .unwrap_err()
                .contains("scheme")
        );
        assert!(parse_registry_url("127.0.0.1:8081").is_err());
        assert!(
            parse_registry_url("not a url")
                .unwrap_err()
                .contains("not a URL")
        );
    }
}
