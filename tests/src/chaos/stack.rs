//! A private copy of the local stack for the chaos suite: `scripts/stack` with its own state
//! directory (a temporary one) and its own ports, so killing its Kafka or its CQL store never
//! touches the developer's stack or another test's services. Its CQL store syncs the commit
//! log every 10 s (`periodic`), so a SIGKILL really loses what it acknowledged since. When the
//! suite fails, the stack is stopped but kept (its logs and the services' logs, for the
//! failure's story); otherwise it is purged.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::Context;

use crate::Services;
use crate::names;
use crate::receivers::repo_root;

/// The services of the stack, as `scripts/stack` names them.
pub const STORE: &str = "cassandra";
pub const BROKER: &str = "kafka";
pub const REGISTRY: &str = "registry";

/// The ports one private stack listens on (all on 127.0.0.1).
#[derive(Debug, Clone, Copy)]
pub struct StackPorts {
    pub kafka: u16,
    pub kafka_controller: u16,
    pub cql: u16,
    pub cassandra_storage: u16,
    pub registry: u16,
    pub registry_management: u16,
}

impl StackPorts {
    /// Six ports free right now (held together while choosing, so they differ).
    fn free() -> anyhow::Result<StackPorts> {
        let listeners: Vec<TcpListener> = (0..6)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()?;
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<Result<_, _>>()?;
        Ok(StackPorts {
            kafka: ports[0],
            kafka_controller: ports[1],
            cql: ports[2],
            cassandra_storage: ports[3],
            registry: ports[4],
            registry_management: ports[5],
        })
    }
}

/// A running private stack; `Drop` stops it and removes its state.
#[derive(Debug)]
pub struct PrivateStack {
    pub state: PathBuf,
    pub ports: StackPorts,
}

impl PrivateStack {
    /// A stack that is not started yet.
    pub fn new(name: &str) -> anyhow::Result<PrivateStack> {
        let state = std::env::temp_dir().join(names::unique(name));
        Ok(PrivateStack {
            state,
            ports: StackPorts::free()?,
        })
    }

    fn command(&self) -> Command {
        let mut command = Command::new(repo_root().join("scripts/stack"));
        let p = self.ports;
        command
            .current_dir(repo_root())
            // Never Docker, whatever the machine has: the faults are SIGKILLs of our JVMs.
            .env("BOXOFFICE_STACK", "local")
            .env("BOXOFFICE_STATE_DIR", &self.state)
            .env("BOXOFFICE_KAFKA_PORT", p.kafka.to_string())
            .env(
                "BOXOFFICE_KAFKA_CONTROLLER_PORT",
                p.kafka_controller.to_string(),
            )
            .env("BOXOFFICE_CQL_PORT", p.cql.to_string())
            .env(
                "BOXOFFICE_CASSANDRA_STORAGE_PORT",
                p.cassandra_storage.to_string(),
            )
            .env("BOXOFFICE_REGISTRY_PORT", p.registry.to_string())
            .env(
                "BOXOFFICE_REGISTRY_MANAGEMENT_PORT",
                p.registry_management.to_string(),
            )
            // A store that loses what the last period acknowledged when it is killed.
            .env("BOXOFFICE_CASSANDRA_COMMITLOG_SYNC", "periodic")
            .env("BOXOFFICE_CASSANDRA_COMMITLOG_PERIOD", "10000")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        let output = self
            .command()
            .args(args)
            .output()
            .with_context(|| format!("running scripts/stack {}", args.join(" ")))?;
        anyhow::ensure!(
            output.status.success(),
            "scripts/stack {} failed ({}):\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    /// Starts the named services (all three when empty) and waits until they are ready.
    pub fn up(&self, services: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["up"];
        args.extend_from_slice(services);
        self.run(&args)
    }

    /// SIGKILLs a service, as a crash or a power cut would stop it.
    pub fn kill(&self, service: &str) -> anyhow::Result<()> {
        self.run(&["kill", service])
    }

    /// Where its services answer, in the form the test harness and every binary take.
    pub fn services(&self) -> Services {
        let p = self.ports;
        Services {
            kafka_bootstrap: format!("127.0.0.1:{}", p.kafka),
            scylla_uri: format!("127.0.0.1:{}", p.cql),
            registry_url: format!("http://127.0.0.1:{}/apis/ccompat/v7", p.registry),
        }
    }

    /// The environment every binary needs to reach this stack.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let s = self.services();
        vec![
            ("KAFKA_BOOTSTRAP_SERVERS", s.kafka_bootstrap),
            ("SCYLLA_URI", s.scylla_uri),
            ("SCHEMA_REGISTRY_URL", s.registry_url),
        ]
    }

    /// The pid of a running service (for proof that a kill happened).
    pub fn pid(&self, service: &str) -> Option<u32> {
        std::fs::read_to_string(self.state.join(service).join(format!("{service}.pid")))
            .ok()
            .and_then(|pid| pid.trim().parse().ok())
    }
}

impl Drop for PrivateStack {
    fn drop(&mut self) {
        if !self.state.join(".boxoffice-stack").exists() {
            return;
        }
        if std::thread::panicking() {
            let _ = self.run(&["down"]);
            eprintln!(
                "the private stack is kept for inspection (logs under {}); remove it with \
                 BOXOFFICE_STATE_DIR={} scripts/stack down --purge",
                self.state.display(),
                self.state.display()
            );
            return;
        }
        if let Err(e) = self.run(&["down", "--purge"]) {
            eprintln!(
                "stopping the private stack in {}: {e:#}",
                self.state.display()
            );
        }
    }
}
