//! The `topics` binary: parse, set up logging, run, exit with the command's code. Everything
//! else lives in the library (`boxoffice_topics::cli`) so tests drive it in-process.

use std::process::ExitCode;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let exit = runtime.block_on(boxoffice_topics::run(
        std::env::args_os(),
        &mut out,
        &mut err,
    ));
    Ok(ExitCode::from(exit.code()))
}
