//! `cutover` binary: parse the command line and hand over to [`cutover::cli`].

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: per-event allocations (rows, keys, SQL parameters) made
/// malloc/free a quarter to a half of capture and sink CPU; docs/PERFORMANCE.md has the
/// before/after.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // Built with `--features failpoints` (the fault suite): FAILPOINTS=name=action;… arms the
    // named fail points (fail-rs syntax). Without the feature there are none.
    #[cfg(feature = "failpoints")]
    let _faults = fail::FailScenario::setup();
    let cli = cutover::cli::Cli::parse();
    cutover::cli::run(cli).await
}
