//! The chaos suite's long mode: repeats faults during large flash sales on a private stack and
//! prints what every run showed; exit 1 when a run fails its checks (or, with
//! `--expect-violations`, when none does: the negative control).
//!
//! ```sh
//! cargo build --release --workspace --bins
//! target/release/chaos --fault store --runs 10 --requests 20000 --capacity 1000
//! target/release/chaos --fault store --runs 3 --recovery-source trust-store --expect-violations
//! ```

use std::process::ExitCode;
use std::time::Duration;

use boxoffice_tests::chaos::sale::SaleConfig;
use boxoffice_tests::chaos::{Fault, RunConfig, Suite};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "chaos", about = "boxoffice's chaos suite, long mode")]
struct Cli {
    /// Faults to inject, each in its own run (default: every fault).
    #[arg(long, value_enum, value_delimiter = ',')]
    fault: Vec<Fault>,
    /// Runs per fault.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    requests: u64,
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    capacity: u32,
    /// Requests started per second.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    rate: u32,
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    concurrency: u64,
    /// Fans registered.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    fans: u64,
    /// When the fault hits after the sale started (e.g. `1s`).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    fault_at: Duration,
    /// How long what was killed stays down.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    down_for: Duration,
    /// How long the broker stays down in its runs (longer than the services' retry budget).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    broker_down_for: Duration,
    /// The booking processor's recovery: `log`, or `trust-store` (the negative control).
    #[arg(long, default_value = "log", value_parser = ["log", "trust-store"])]
    recovery_source: String,
    /// Succeed only if some run fails its checks (the negative control's expectation).
    #[arg(long)]
    expect_violations: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chaos: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let faults = if cli.fault.is_empty() {
        Fault::ALL.to_vec()
    } else {
        cli.fault.clone()
    };
    let mut suite = Suite::start(
        "chaos_long",
        usize::try_from(cli.fans)?,
        &cli.recovery_source,
    )
    .await?;
    let config = RunConfig {
        capacity: cli.capacity,
        sale: SaleConfig {
            requests: usize::try_from(cli.requests)?,
            rate: cli.rate,
            concurrency: usize::try_from(cli.concurrency)?,
            give_up_after: Duration::from_secs(180),
        },
        fault_at: cli.fault_at,
        down_for: cli.down_for,
        broker_down_for: cli.broker_down_for,
    };
    let mut failed = 0;
    let mut total = 0;
    let (mut store_runs, mut loss_seen) = (0, 0);
    for fault in faults {
        for run in 1..=cli.runs {
            let report = suite.run(fault, config).await?;
            total += 1;
            println!("run {run}/{} {}", cli.runs, report.summary());
            if !report.ok() {
                failed += 1;
            }
            if fault.kills_store() {
                store_runs += 1;
                loss_seen += usize::from(report.loss_observed);
            }
        }
    }
    println!("{failed} of {total} runs failed their checks");
    if store_runs > 0 {
        println!(
            "the store lost acknowledged writes (seen and repaired) in {loss_seen} of {store_runs} store runs"
        );
    }
    let ok = if cli.expect_violations {
        failed > 0
    } else {
        failed == 0
    };
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
