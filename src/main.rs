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
    let cli = cutover::cli::Cli::parse();
    cutover::cli::run(cli).await
}
