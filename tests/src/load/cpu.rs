//! Where the CPU goes during a load run: snapshots of `/proc` (the machine, the stack's JVMs by
//! their pid files, this process's threads grouped by name) and the per-run summary line the
//! load generators print ("ingest 0.61 cores (108 µs/202)").
//!
//! Thread groups: the load generators run ingest on a runtime whose threads are named `srv`,
//! the booking processor on `proc`, the HTTP client on `cli`; librdkafka names its own `rdk:*`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// Linux's clock tick for `/proc/*/stat` times (`getconf CLK_TCK`).
pub const CLOCK_TICKS: f64 = 100.0;

/// CPU time (user + system), in clock ticks, from a `/proc/.../stat` line.
fn stat_ticks(stat: &str) -> Option<(String, u64)> {
    // pid (comm) state ppid ... : comm may hold spaces; fields after ')' start at `state`.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based) of the whole line: 11 and 12 after comm.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// A snapshot of CPU time: the machine, the stack's processes, this process by thread group.
#[derive(Debug, Clone, Default)]
pub struct CpuSnapshot {
    at: Option<Instant>,
    /// (busy, total) ticks of all cores.
    machine: (u64, u64),
    /// Ticks per stack service.
    services: BTreeMap<String, u64>,
    /// Ticks per thread of this process, keyed by (thread id, group).
    threads: BTreeMap<(String, &'static str), u64>,
}

impl CpuSnapshot {
    /// Takes a snapshot; `stack` are the stack's services and pids ([`stack_pids`]).
    pub fn take(stack: &[(String, u32)]) -> CpuSnapshot {
        let mut snap = CpuSnapshot {
            at: Some(Instant::now()),
            ..CpuSnapshot::default()
        };
        if let Ok(stat) = std::fs::read_to_string("/proc/stat")
            && let Some(line) = stat.lines().next()
        {
            let values: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            let total: u64 = values.iter().take(8).sum();
            let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
            snap.machine = (total.saturating_sub(idle), total);
        }
        for (name, pid) in stack {
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                && let Some((_, ticks)) = stat_ticks(&stat)
            {
                snap.services.insert(name.clone(), ticks);
            }
        }
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                if let Ok(stat) = std::fs::read_to_string(task.path().join("stat"))
                    && let Some((comm, ticks)) = stat_ticks(&stat)
                {
                    let tid = task.file_name().to_string_lossy().into_owned();
                    snap.threads.insert((tid, thread_group(&comm)), ticks);
                }
            }
        }
        snap
    }

    /// Ticks per thread group between `before` and `self`, thread by thread (a thread that
    /// ended in between, like an idle blocking-pool thread, is left out instead of making its
    /// group's total go down).
    fn groups_since(&self, before: &CpuSnapshot) -> BTreeMap<String, u64> {
        let mut groups = BTreeMap::new();
        for (key, ticks) in &self.threads {
            let earlier = before.threads.get(key).copied().unwrap_or(0);
            *groups.entry(key.1.to_owned()).or_default() += ticks.saturating_sub(earlier);
        }
        groups
    }

    /// Two lines: how busy the machine was, and the cores (and µs per `unit`, `count` of
    /// them) each stack service and thread group used since `before`.
    pub fn summary_since(&self, before: &CpuSnapshot, count: u64, unit: &str) -> [String; 2] {
        let wall = match (before.at, self.at) {
            (Some(b), Some(a)) => a.duration_since(b).as_secs_f64().max(1e-3),
            _ => 1.0,
        };
        let (busy, total) = (
            self.machine.0.saturating_sub(before.machine.0),
            self.machine.1.saturating_sub(before.machine.1),
        );
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let machine = format!(
            "machine: {:.0}% of {} cores busy; load average now {}",
            if total > 0 {
                100.0 * busy as f64 / total as f64
            } else {
                0.0
            },
            cores,
            load_average()
        );
        let per_unit = |ticks: u64| {
            if count == 0 {
                0.0
            } else {
                ticks as f64 / CLOCK_TICKS * 1e6 / count as f64
            }
        };
        let mut parts = Vec::new();
        let mut known = 0u64;
        let services = self.services.iter().map(|(name, ticks)| {
            let earlier = before.services.get(name).copied().unwrap_or(0);
            (name.clone(), ticks.saturating_sub(earlier))
        });
        for (name, ticks) in services.chain(self.groups_since(before)) {
            known += ticks;
            parts.push(format!(
                "{name} {:.2} cores ({:.0} µs/{unit})",
                ticks as f64 / CLOCK_TICKS / wall,
                per_unit(ticks)
            ));
        }
        let rest = (busy as f64 - known as f64).max(0.0);
        parts.push(format!(
            "everything else {:.2} cores",
            rest / CLOCK_TICKS / wall
        ));
        [machine, format!("cpu: {}", parts.join("; "))]
    }
}

fn thread_group(comm: &str) -> &'static str {
    if comm.starts_with("srv") {
        "ingest (srv)"
    } else if comm.starts_with("proc") {
        "booking processor (proc)"
    } else if comm.starts_with("cli") {
        "load client (cli)"
    } else if comm.starts_with("rdk:") {
        "librdkafka (rdk:*)"
    } else {
        "other threads"
    }
}

/// The stack's services and their pids (`<stack>/<service>/<service>.pid`).
pub fn stack_pids(dir: &Path) -> Vec<(String, u32)> {
    ["kafka", "cassandra", "registry"]
        .iter()
        .filter_map(|name| {
            let pid = std::fs::read_to_string(dir.join(name).join(format!("{name}.pid"))).ok()?;
            Some(((*name).to_owned(), pid.trim().parse().ok()?))
        })
        .collect()
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Resident memory of this process, in MiB (`VmRSS`), 0 when unknown.
pub fn resident_mib() -> f64 {
    status_mib("self", "VmRSS").unwrap_or(0.0)
}

/// A memory figure (`VmRSS`, `VmHWM`, ...) of process `pid` (or `self`) from
/// `/proc/<pid>/status`, in MiB; `None` when the process or the field is gone.
pub fn status_mib(pid: &str, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    let kib: f64 = value.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_spaces_in_the_name_are_read() {
        let line = "4242 (rdk:broker 1) S 1 2 3 4 5 6 7 8 9 10 120 30 0 0 20 0 1 0";
        assert_eq!(stat_ticks(line), Some(("rdk:broker 1".to_owned(), 150)));
        assert_eq!(stat_ticks("garbage"), None);
    }

    #[test]
    fn threads_are_grouped_by_their_runtime_name() {
        assert_eq!(thread_group("srv-3"), "ingest (srv)");
        assert_eq!(thread_group("proc"), "booking processor (proc)");
        assert_eq!(thread_group("rdk:main"), "librdkafka (rdk:*)");
        assert_eq!(thread_group("tokio-runtime-w"), "other threads");
    }
}
