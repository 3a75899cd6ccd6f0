//! Where the real services are. In order of preference:
//! 1. `KAFKA_BOOTSTRAP_SERVERS`, `SCYLLA_URI` and `SCHEMA_REGISTRY_URL` (the local stack started
//!    by `scripts/stack up`, or anything else the developer points at);
//! 2. containers started through testcontainers when a Docker engine answers;
//! 3. otherwise a failure with one message that says how to start the stack.
//!
//! The choice is made once per test binary; containers live until the binary exits.

use std::path::Path;
use std::time::Duration;

use boxoffice_avro::registry::RegistryArgs;
use boxoffice_store::session::ScyllaArgs;
use boxoffice_topics::kafka::KafkaArgs;
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use testcontainers_modules::kafka::apache::{self, Kafka};
use testcontainers_modules::scylladb::ScyllaDB;
use tokio::sync::OnceCell;

pub const KAFKA_ENV: &str = "KAFKA_BOOTSTRAP_SERVERS";
pub const SCYLLA_ENV: &str = "SCYLLA_URI";
pub const REGISTRY_ENV: &str = "SCHEMA_REGISTRY_URL";

const HOW_TO_START: &str = "boxoffice's integration tests need real Kafka, a CQL store and a schema registry, and none was found.\n\
    Run every test with `scripts/test` (it starts and stops the stack), or start the stack yourself:\n  \
    scripts/stack up && eval \"$(scripts/stack env)\" && cargo test\n\
    (or run a Docker engine, and testcontainers starts them).";

/// Addresses of the three real services a test talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Services {
    pub kafka_bootstrap: String,
    pub scylla_uri: String,
    pub registry_url: String,
}

impl Services {
    /// Kafka settings as every binary takes them, with timeouts suited to a local test.
    pub fn kafka(&self) -> KafkaArgs {
        KafkaArgs {
            bootstrap_servers: self.kafka_bootstrap.clone(),
            timeout: Duration::from_secs(15),
        }
    }

    pub fn scylla(&self) -> ScyllaArgs {
        ScyllaArgs {
            uri: self.scylla_uri.clone(),
            timeout: Duration::from_secs(15),
        }
    }

    pub fn registry(&self) -> RegistryArgs {
        RegistryArgs {
            url: self.registry_url.clone(),
            timeout: Duration::from_secs(15),
        }
    }
}

/// What the environment says, decided without I/O so it can be tested.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    Environment(Services),
    Containers,
}

/// Picks where the services come from. All three variables set: use them. Some set: that is a
/// mistake worth naming. None set: containers if Docker answers, else the how-to message.
pub fn choose_source(
    var: impl Fn(&str) -> Option<String>,
    docker_available: bool,
) -> Result<Source, String> {
    let values: Vec<(&str, Option<String>)> = [KAFKA_ENV, SCYLLA_ENV, REGISTRY_ENV]
        .into_iter()
        .map(|name| (name, var(name).filter(|v| !v.trim().is_empty())))
        .collect();
    let missing: Vec<&str> = values
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(n, _)| *n)
        .collect();
    match missing.len() {
        0 => {
            let mut it = values.into_iter().filter_map(|(_, v)| v);
            // All three are present: `missing` is empty.
            let (Some(kafka_bootstrap), Some(scylla_uri), Some(registry_url)) =
                (it.next(), it.next(), it.next())
            else {
                unreachable!("three values checked present above");
            };
            Ok(Source::Environment(Services {
                kafka_bootstrap,
                scylla_uri,
                registry_url,
            }))
        }
        3 if docker_available => Ok(Source::Containers),
        3 => Err(HOW_TO_START.to_owned()),
        _ => Err(format!(
            "{} set but {} missing: set all three (`eval \"$(scripts/stack env)\"`) or none.",
            [KAFKA_ENV, SCYLLA_ENV, REGISTRY_ENV]
                .into_iter()
                .filter(|n| !missing.contains(n))
                .collect::<Vec<_>>()
                .join(", "),
            missing.join(", ")
        )),
    }
}

/// Docker answers when `DOCKER_HOST` is set or the default socket accepts a connection.
fn docker_available() -> bool {
    if std::env::var_os("DOCKER_HOST").is_some() {
        return true;
    }
    let socket = Path::new("/var/run/docker.sock");
    socket.exists() && std::os::unix::net::UnixStream::connect(socket).is_ok()
}

/// Containers are kept for the life of the test binary (testcontainers' reaper removes them
/// after it exits).
struct Containers {
    _kafka: ContainerAsync<Kafka>,
    _scylla: ContainerAsync<ScyllaDB>,
    _registry: ContainerAsync<GenericImage>,
}

static SERVICES: OnceCell<Result<(Services, Option<Containers>), String>> = OnceCell::const_new();

/// The services for this test binary; panics (failing the test) with a clear message when there
/// are none.
pub async fn services() -> &'static Services {
    let resolved = SERVICES.get_or_init(resolve).await;
    match resolved {
        Ok((services, _)) => services,
        Err(message) => panic!("{message}"),
    }
}

async fn resolve() -> Result<(Services, Option<Containers>), String> {
    match choose_source(|name| std::env::var(name).ok(), docker_available())? {
        Source::Environment(services) => Ok((services, None)),
        Source::Containers => start_containers()
            .await
            .map(|(services, containers)| (services, Some(containers)))
            .map_err(|e| {
                format!(
                    "Docker answered but the test containers did not start: {e}\n\n{HOW_TO_START}"
                )
            }),
    }
}

async fn start_containers() -> anyhow::Result<(Services, Containers)> {
    let kafka = Kafka::default()
        .with_jvm_image()
        .with_tag("4.1.1")
        .start()
        .await?;
    let scylla = ScyllaDB::default().start().await?;
    let registry = GenericImage::new("apicurio/apicurio-registry", "3.3.3")
        .with_exposed_port(8080.tcp())
        .with_wait_for(WaitFor::message_on_stdout("Installed features"))
        .with_env_var("APICURIO_CCOMPAT_LEGACY_ID_MODE_ENABLED", "true")
        .start()
        .await?;
    let services = Services {
        kafka_bootstrap: format!(
            "127.0.0.1:{}",
            kafka.get_host_port_ipv4(apache::KAFKA_PORT).await?
        ),
        scylla_uri: format!("127.0.0.1:{}", scylla.get_host_port_ipv4(9042).await?),
        registry_url: format!(
            "http://127.0.0.1:{}/apis/ccompat/v7",
            registry.get_host_port_ipv4(8080).await?
        ),
    };
    Ok((
        services,
        Containers {
            _kafka: kafka,
            _scylla: scylla,
            _registry: registry,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn all_three_variables_win_even_with_docker() {
        let source = choose_source(
            vars(&[
                (KAFKA_ENV, "k:1"),
                (SCYLLA_ENV, "s:2"),
                (REGISTRY_ENV, "http://r:3"),
            ]),
            true,
        )
        .unwrap();
        assert_eq!(
            source,
            Source::Environment(Services {
                kafka_bootstrap: "k:1".into(),
                scylla_uri: "s:2".into(),
                registry_url: "http://r:3".into()
            })
        );
    }

    #[test]
    fn no_variables_and_docker_means_containers() {
        assert_eq!(choose_source(vars(&[]), true).unwrap(), Source::Containers);
    }

    #[test]
    fn no_variables_and_no_docker_says_how_to_start_the_stack() {
        let message = choose_source(vars(&[]), false).unwrap_err();
        assert!(message.contains("scripts/stack up"), "{message}");
        assert!(message.contains("scripts/test"), "{message}");
    }

    #[test]
    fn a_partial_environment_names_what_is_missing() {
        let message =
            choose_source(vars(&[(KAFKA_ENV, "k:1"), (SCYLLA_ENV, " ")]), true).unwrap_err();
        assert!(message.contains("KAFKA_BOOTSTRAP_SERVERS set"), "{message}");
        assert!(
            message.contains("SCYLLA_URI, SCHEMA_REGISTRY_URL missing"),
            "{message}"
        );
    }
}
