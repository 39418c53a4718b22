//! `cutover backsync`: the reverse pipeline. Captures the new store (its own slot and
//! publication from `[backsync]`, the same capture code) to `<prefix>.back.<schema>.<table>`,
//! and applies it to legacy through `backsync.mappings` with the sink `backsync` (the same
//! effectively-once progress, kept in legacy's `cutover.sink_progress`). Its monitor reports the
//! reverse slot and the back-sync's lag. Which tables flow back is decided per batch by the
//! table phases (`cutover phase`).

use std::process::ExitCode;

use super::run_all::run_pipeline;
use super::{load_config, Cli};
use crate::config::BACKSYNC_SINK;
use crate::error::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub gap: super::capture::GapArgs,
}

pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let cfg = load_config(cli)?.reverse()?;
    run_pipeline(
        &cfg,
        vec![BACKSYNC_SINK.to_string()],
        "backsync",
        args.gap.policy(),
    )
    .await
}
