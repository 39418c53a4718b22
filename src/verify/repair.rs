//! What a sink's comparison covers, and how a difference is repaired: shared by `cutover
//! verify` and `cutover reconcile`.
//!
//! Repair goes through the pipeline, never around it: a missing or different row is re-emitted
//! by a no-op `UPDATE` of its key on the source (capture sends the whole row again, every sink
//! applies it); an extra target row is deleted under this pipeline's verify origin, so a
//! back-sync capturing the target never sends the delete back.

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::{key_in, Plan, TableReport};
use crate::config::{Config, Unmapped};
use crate::database::ident::{qualified, quote};
use crate::error::{Error, Result};

/// Every source table sink `i` maps (configured mappings, plus every captured table when it
/// maps unmapped tables as themselves), sorted.
pub async fn tables(cfg: &Config, i: usize, src: &Client) -> Result<Vec<String>> {
    let sink = &cfg.sinks[i];
    let mut t: Vec<String> = sink.tables.iter().map(|m| m.source.clone()).collect();
    if sink.unmapped_tables == Unmapped::Identity {
        t.extend(crate::capture::setup::captured_tables(cfg, src).await?);
    }
    t.sort();
    t.dedup();
    Ok(t)
}

/// Repair the differences of `r`: `(rows re-emitted on the source, target rows deleted)`.
pub async fn repair(
    cfg: &Config,
    src: &tokio_postgres::Client,
    dst: &tokio_postgres::Client,
    plan: &Plan,
    r: &TableReport,
) -> Result<(u64, u64)> {
    let src_key: Vec<String> = plan.key.iter().map(|(s, _)| s.clone()).collect();
    let dst_key: Vec<String> = plan.key.iter().map(|(_, t)| t.clone()).collect();
    let mut reemitted = 0;
    let resend: Vec<Vec<Option<String>>> = r.missing.iter().chain(&r.different).cloned().collect();
    for chunk in resend.chunks(500) {
        let mut params = Vec::new();
        let w = key_in(&src_key, &plan.key_types, chunk, &mut params);
        let k0 = quote(&src_key[0]);
        let sql = format!(
            "UPDATE {} AS t SET {k0} = t.{k0} WHERE {w}",
            qualified(&plan.source)
        );
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        reemitted += src
            .execute(&sql, &refs)
            .await
            .map_err(|e| Error::postgres(format!("re-emitting rows of {}", plan.source), e))?;
    }
    let mut deleted = 0;
    if !r.extra.is_empty() {
        // Under a cutover origin: a back-sync capturing this target never sends these back.
        let origin = crate::database::origin::bind(
            dst,
            &cfg.name,
            crate::database::origin::VERIFY_WRITER,
            None,
        )
        .await?;
        for chunk in r.extra.chunks(500) {
            for t in &plan.targets {
                let mut params = Vec::new();
                let w = key_in(&dst_key, &plan.key_types, chunk, &mut params);
                let sql = format!("DELETE FROM {} AS t WHERE {w}", qualified(t));
                let refs: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                deleted += dst
                    .execute(&sql, &refs)
                    .await
                    .map_err(|e| Error::postgres(format!("deleting extra rows of {t}"), e))?;
            }
        }
        tracing::info!(origin, deleted, "extra target rows deleted");
    }
    Ok((reemitted, deleted))
}
