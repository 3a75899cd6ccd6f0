//! The PostgreSQL row-lock baseline, the design a user would otherwise pick (pretix and alf.io
//! book with row locks): one transaction per booking on one hot event, a conditional `UPDATE`
//! of the event's counter plus an `INSERT` of the order, durable commits
//! (`synchronous_commit=on`), driven by `pgbench`. The scripts are in `tests/pg-baseline/`.
//!
//! [`run_hot_event`] starts a throwaway server (its own data directory and port, stopped and
//! removed at the end, on success or failure) so a benchmark can print its figures next to the
//! same run's. PostgreSQL refuses to run as root: as root, the server runs as the `postgres`
//! user through `runuser`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::Context;

const SCHEMA: &str = include_str!("../../pg-baseline/schema.sql");
const HOT_UPDATE: &str = include_str!("../../pg-baseline/hot_update.sql");

/// What to install when the tools are missing.
pub const INSTALL_HINT: &str = "PostgreSQL is not installed: sudo apt-get install -y postgresql \
     (Debian; it brings initdb, pg_ctl and pgbench), or pass --no-baseline to run without the \
     comparison";

/// One pgbench run's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct BaselineResult {
    /// Committed bookings per second.
    pub tps: f64,
    /// Mean latency per booking transaction, in milliseconds.
    pub latency_ms: f64,
    pub clients: u32,
    pub seconds: u64,
    /// `pgbench --version`.
    pub version: String,
}

/// Where the server and client programs are.
#[derive(Debug, Clone)]
pub struct Tools {
    initdb: PathBuf,
    pg_ctl: PathBuf,
    pgbench: PathBuf,
    psql: PathBuf,
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Finds the programs on the PATH or in Debian's `/usr/lib/postgresql/<version>/bin` (the
/// newest); `Err` with [`INSTALL_HINT`] when any is missing.
pub fn find_tools() -> Result<Tools, String> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.flatten().map(|d| d.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort_by_key(|dir| {
        dir.parent()
            .and_then(Path::file_name)
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    let find = |name: &str| {
        on_path(name)
            .or_else(|| {
                versions
                    .iter()
                    .rev()
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
            .ok_or_else(|| format!("{INSTALL_HINT} ({name} not found)"))
    };
    Ok(Tools {
        initdb: find("initdb")?,
        pg_ctl: find("pg_ctl")?,
        pgbench: find("pgbench")?,
        psql: find("psql")?,
    })
}

/// Reads `tps = ...` and `latency average = ... ms` from pgbench's report.
pub fn parse_pgbench(report: &str) -> Option<(f64, f64)> {
    let mut tps = None;
    let mut latency = None;
    for line in report.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("tps = ") {
            tps = rest.split_whitespace().next()?.parse().ok();
        } else if let Some(rest) = line.strip_prefix("latency average = ") {
            latency = rest.split_whitespace().next()?.parse().ok();
        }
    }
    Some((tps?, latency?))
}

fn is_root() -> bool {
    // `id -u`: no libc dependency for one number.
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .is_some_and(|uid| uid.trim() == "0")
}

fn checked(what: &str, output: std::io::Result<Output>) -> anyhow::Result<String> {
    let output = output.with_context(|| format!("running {what}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    anyhow::ensure!(
        output.status.success(),
        "{what} failed ({}): {text}",
        output.status
    );
    Ok(text)
}

/// A throwaway server; stopped and its directory removed when dropped.
struct Server {
    tools: Tools,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
    started: bool,
}

impl Server {
    /// A command that runs as the server's owner (`postgres` when this process is root).
    fn server_command(&self, program: &Path) -> Command {
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn start(tools: Tools) -> anyhow::Result<Server> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!(
            "boxoffice-pg-baseline-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut server = Server {
            tools,
            dir,
            port,
            as_postgres: is_root(),
            started: false,
        };
        if server.as_postgres {
            checked(
                "chown postgres",
                Command::new("chown")
                    .args(["postgres:"])
                    .arg(&server.dir)
                    .output(),
            )
            .context("PostgreSQL refuses to run as root and the `postgres` user is missing")?;
        }
        checked(
            "initdb",
            server
                .server_command(&server.tools.initdb)
                .arg("-D")
                .arg(server.data())
                .args(["-A", "trust", "-U", "postgres", "--no-sync"])
                .output(),
        )?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c shared_buffers=512MB -c max_connections=200",
            server.dir.display()
        );
        checked(
            "pg_ctl start",
            server
                .server_command(&server.tools.pg_ctl)
                .arg("-D")
                .arg(server.data())
                .arg("-l")
                .arg(server.dir.join("server.log"))
                .args(["-w", "-t", "60", "-o", &options, "start"])
                .output(),
        )?;
        server.started = true;
        Ok(server)
    }

    fn client(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        command
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres")
            .env("PGDATABASE", "postgres")
            // Durable commits: what the comparison is about.
            .env("PGOPTIONS", "-c synchronous_commit=on");
        command
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.started {
            let _ = self
                .server_command(&self.tools.pg_ctl)
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts a throwaway server, books `seconds` long on one hot event with `clients`
/// connections (pgbench, 2 threads), stops it; the figures.
pub fn run_hot_event(tools: Tools, seconds: u64, clients: u32) -> anyhow::Result<BaselineResult> {
    let version = checked(
        "pgbench --version",
        Command::new(&tools.pgbench).arg("--version").output(),
    )?
    .trim()
    .to_owned();
    let server = Server::start(tools)?;
    let schema = server.dir.join("schema.sql");
    let script = server.dir.join("hot_update.sql");
    std::fs::write(&schema, SCHEMA)?;
    std::fs::write(&script, HOT_UPDATE)?;
    checked(
        "psql (schema)",
        server
            .client(&server.tools.psql)
            .args(["-q", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(&schema)
            .output(),
    )?;
    // Bounded: pgbench stops after `-T` seconds.
    let report = checked(
        "pgbench",
        server
            .client(&server.tools.pgbench)
            .args(["-n", "-j", "2", "-c", &clients.to_string()])
            .args(["-T", &seconds.to_string(), "-f"])
            .arg(&script)
            .output(),
    )?;
    let (tps, latency_ms) =
        parse_pgbench(&report).with_context(|| format!("no tps in pgbench's report: {report}"))?;
    drop(server);
    Ok(BaselineResult {
        tps,
        latency_ms,
        clients,
        seconds,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_reports_are_read() {
        let report = "transaction type: hot_update.sql\nscaling factor: 1\n\
            number of clients: 32\nlatency average = 21.187 ms\n\
            initial connection time = 12.345 ms\n\
            tps = 1510.358934 (without initial connection time)\n";
        assert_eq!(parse_pgbench(report), Some((1510.358934, 21.187)));
        assert_eq!(parse_pgbench("pgbench: error: connection refused"), None);
        assert_eq!(
            parse_pgbench("tps = 12 (without initial connection time)"),
            None
        );
    }
}
