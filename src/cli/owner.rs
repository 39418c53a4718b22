//! `cutover owner --share PCT --key V [--key V ...]` or `--keys-from FILE|-`: which side owns a
//! key under a share (the ownership function of `crate::backsync::owner`, the same as the SQL
//! `cutover.owner()` and the snippets in docs/BACKSYNC.md). `--table T` takes the share from
//! the table's phase (forward 0 %, reverse 100 %). One line per key:
//! `<key columns, tab-separated>\t<bucket>\t<owner>` (or `--json`).

use std::io::BufRead;
use std::process::ExitCode;

use super::{load_config, Cli};
use crate::backsync::owner::{self, share_bp};
use crate::error::{Error, Result};
use crate::state::phases::{self, Phase};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The new store's share of the table's keys, in percent (0-100, two decimals at most).
    #[arg(long, conflicts_with = "table")]
    pub share: Option<f64>,
    /// Take the share from this table's phase in legacy (forward 0 %, reverse 100 %).
    #[arg(long)]
    pub table: Option<String>,
    /// One key: its columns' PostgreSQL text forms, in primary-key order.
    #[arg(long = "key")]
    pub key: Vec<String>,
    /// Many keys, one per line, columns separated by tabs (`-`: standard input).
    #[arg(long, conflicts_with = "key")]
    pub keys_from: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let share = match (args.share, &args.table) {
        (Some(s), _) if !(0.0..=100.0).contains(&s) => {
            return Err(Error::config("--share: must be between 0 and 100"))
        }
        (Some(s), _) => share_bp(s),
        (None, Some(table)) => table_share(cli, table).await?,
        (None, None) => return Err(Error::config("--share or --table is required")),
    };
    let keys: Vec<Vec<String>> = match &args.keys_from {
        Some(path) => read_keys(path)?,
        None if args.key.is_empty() => {
            return Err(Error::config(
                "--key (one per key column) or --keys-from is required",
            ))
        }
        None => vec![args.key.clone()],
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    use std::io::Write;
    for k in &keys {
        let bucket = owner::bucket(k);
        let who = owner::owner(share, k).as_str();
        let line = if args.json {
            serde_json::json!({"key": k, "bucket": bucket, "owner": who, "share_bp": share})
                .to_string()
        } else {
            format!("{}\t{bucket}\t{who}", k.join("\t"))
        };
        writeln!(out, "{line}").map_err(|e| Error::internal(format!("writing: {e}")))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn read_keys(path: &str) -> Result<Vec<Vec<String>>> {
    let reader: Box<dyn BufRead> = if path == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(std::fs::File::open(path).map_err(
            |e| Error::config(format!("--keys-from {path}: {e}")),
        )?))
    };
    reader
        .lines()
        .map(|l| {
            l.map(|l| l.split('\t').map(str::to_string).collect())
                .map_err(|e| Error::config(format!("--keys-from {path}: {e}")))
        })
        .collect()
}

/// The share a table's phase gives the new store, in basis points.
async fn table_share(cli: &Cli, table: &str) -> Result<u32> {
    let cfg = load_config(cli)?;
    let legacy = crate::database::Endpoint::source(&cfg).connect().await?;
    crate::state::ensure_control(&legacy).await?;
    let phase = phases::load(&legacy, &cfg.name)
        .await?
        .get(table)
        .copied()
        .unwrap_or(Phase::Forward);
    match phase {
        Phase::Forward => Ok(0),
        Phase::Reverse => Ok(owner::BUCKETS),
        Phase::Dual => Err(Error::config(format!(
            "--table {table}: in dual both sides may write every key; give --share"
        ))),
        Phase::Split => {
            let steps = phases::steps(&legacy, &cfg.name).await?;
            Ok(steps
                .get(table)
                .and_then(|s| s.last())
                .map_or(0, |s| s.share_bp))
        }
    }
}
