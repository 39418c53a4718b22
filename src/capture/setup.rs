//! Source preparation: checks and idempotent creation of publication and slot, and catalog
//! lookups (primary keys, user types) the stream needs.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::codec::types::{builtin_kind, kind_for_catalog, PgKind};
use crate::config::SourceConfig;
use crate::database::ident::quote;
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Lsn, TableId};
use crate::state::slots;

/// Fail with an operator-actionable message unless the server can do logical decoding.
pub async fn check_server(client: &Client) -> Result<()> {
    let wal_level = crate::database::setting(client, "wal_level").await?;
    if wal_level != "logical" {
        return Err(Error::new(
            ErrorKind::Environment,
            format!("source: wal_level is {wal_level:?}; set wal_level = logical in postgresql.conf and restart PostgreSQL"),
        ));
    }
    Ok(())
}

/// What the publication should cover: `(schemas, tables)` as sorted `schema`/`schema.table`.
fn wanted(cfg: &SourceConfig) -> (Vec<String>, Vec<String>) {
    let mut schemas = cfg.schemas.clone();
    schemas.sort();
    schemas.dedup();
    let mut tables: Vec<String> = cfg
        .tables
        .iter()
        .map(|t| match t.split_once('.') {
            Some(_) => t.clone(),
            None => format!("public.{t}"),
        })
        .collect();
    tables.sort();
    tables.dedup();
    (schemas, tables)
}

fn publication_targets(schemas: &[String], tables: &[String]) -> String {
    let mut targets = Vec::new();
    if !schemas.is_empty() {
        let s: Vec<String> = schemas.iter().map(|s| quote(s)).collect();
        targets.push(format!("TABLES IN SCHEMA {}", s.join(", ")));
    }
    if !tables.is_empty() {
        let t: Vec<String> = tables
            .iter()
            .map(|t| {
                let (s, n) = t.split_once('.').unwrap_or(("public", t));
                format!("{}.{}", quote(s), quote(n))
            })
            .collect();
        targets.push(format!("TABLE {}", t.join(", ")));
    }
    targets.join(", ")
}

/// What the publication covers now (explicit schemas and tables), or `None` if it is missing.
async fn current_publication(
    client: &Client,
    name: &str,
) -> Result<Option<(Vec<String>, Vec<String>)>> {
    let Some(row) = client
        .query_opt(
            "SELECT oid, puballtables FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| Error::postgres("looking up publication", e))?
    else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    if row.get::<_, bool>(1) {
        return Err(Error::new(ErrorKind::Environment, format!("source.publication: {name} is FOR ALL TABLES; cutover manages its publication itself: choose another name or drop it")));
    }
    let schemas = client
        .query(
            "SELECT n.nspname::text FROM pg_publication_namespace pn JOIN pg_namespace n ON n.oid = pn.pnnspid WHERE pn.pnpubid = $1 ORDER BY 1",
            &[&oid],
        )
        .await
        .map_err(|e| Error::postgres("reading publication schemas", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let tables = client
        .query(
            "SELECT n.nspname || '.' || c.relname FROM pg_publication_rel pr JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE pr.prpubid = $1 ORDER BY 1",
            &[&oid],
        )
        .await
        .map_err(|e| Error::postgres("reading publication tables", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(Some((schemas, tables)))
}

/// What [`ensure_publication`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicationChange {
    Unchanged,
    Created,
    /// It existed with other schemas/tables than configured and was set to the configured ones.
    Reconciled,
}

/// Create the publication if missing ("already exists" is success); if it exists but covers
/// other schemas or tables than `source.schemas`/`source.tables`, set it to the configured
/// ones (`ALTER PUBLICATION ... SET`), so a config change takes effect on the next start.
pub async fn ensure_publication(client: &Client, cfg: &SourceConfig) -> Result<PublicationChange> {
    let (schemas, tables) = wanted(cfg);
    let targets = publication_targets(&schemas, &tables);
    let name = quote(&cfg.publication);
    let hint = "the source role needs CREATE on the database and ownership of the tables (or superuser for TABLES IN SCHEMA)";
    match current_publication(client, &cfg.publication).await? {
        Some(current) if current == (schemas.clone(), tables.clone()) => {
            Ok(PublicationChange::Unchanged)
        }
        Some(current) => {
            client
                .batch_execute(&format!("ALTER PUBLICATION {name} SET {targets}"))
                .await
                .map_err(|e| {
                    Error::postgres(format!("updating publication {}", cfg.publication), e)
                        .context(hint)
                })?;
            tracing::info!(publication = %cfg.publication, was = ?current, now = ?(schemas, tables), "publication reconciled with config");
            Ok(PublicationChange::Reconciled)
        }
        None => match client
            .batch_execute(&format!("CREATE PUBLICATION {name} FOR {targets}"))
            .await
        {
            Ok(()) => {
                tracing::info!(publication = %cfg.publication, "created publication");
                Ok(PublicationChange::Created)
            }
            Err(e) if e.code().map(|c| c.code()) == Some("42710") => {
                Ok(PublicationChange::Unchanged)
            }
            Err(e) => Err(
                Error::postgres(format!("creating publication {}", cfg.publication), e)
                    .context(hint),
            ),
        },
    }
}

/// The tables the publication covers now (tables added to a captured schema later are found
/// by their first Relation message).
pub async fn published_tables(client: &Client, publication: &str) -> Result<Vec<TableId>> {
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2",
            &[&publication],
        )
        .await
        .map_err(|e| Error::postgres(format!("tables of publication {publication}"), e))?;
    Ok(rows
        .iter()
        .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}

/// What capture may do when the slot it created is gone or invalidated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GapPolicy {
    /// Refuse to start, naming the loss and the ways on (the default).
    #[default]
    Refuse,
    /// `--accept-gap`: create a new slot from now and record the gap (who accepted it).
    Accept { by: String },
}

/// Create the slot if missing; check an existing one is usable. Returns its confirmed LSN.
///
/// A slot capture created is remembered in `cutover.capture_slots` (see
/// [`crate::state::slots`]): when it is missing or invalidated later, capture refuses to start
/// instead of silently creating a new one at the current WAL position, unless `gap` accepts
/// the loss, which is then recorded in `cutover.capture_gaps`.
pub async fn ensure_slot(
    client: &Client,
    pipeline: &str,
    slot: &str,
    gap: &GapPolicy,
) -> Result<Lsn> {
    crate::state::ensure_slots(client).await?;
    let memory = slots::remembered(client, pipeline, slot).await?;
    let row = client
        .query_opt(
            "SELECT plugin, database, confirmed_flush_lsn::text, wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| Error::postgres("looking up replication slot", e))?;
    let ways_on = "Ways on: start capture once with --accept-gap (a new slot from now; the gap is \
                   recorded in cutover.capture_gaps), then backfill every captured table \
                   (cutover backfill --table ...) so the target gets what was lost";
    if let Some(row) = row {
        let plugin: Option<String> = row.get(0);
        let db: Option<String> = row.get(1);
        let confirmed: Option<String> = row.get(2);
        let wal_status: Option<String> = row.get(3);
        if plugin.as_deref() != Some("pgoutput") {
            return Err(Error::new(ErrorKind::Environment, format!("source.slot: slot {slot} uses plugin {plugin:?}, not pgoutput: drop it or choose another slot name")));
        }
        let current: String = client
            .query_one("SELECT current_database()", &[])
            .await
            .map_err(|e| Error::postgres("current_database()", e))?
            .get(0);
        if db.as_deref() != Some(current.as_str()) {
            return Err(Error::new(
                ErrorKind::Environment,
                format!("source.slot: slot {slot} belongs to database {db:?}, not {current}"),
            ));
        }
        let lsn = confirmed
            .as_deref()
            .and_then(Lsn::parse)
            .unwrap_or_default();
        if wal_status.as_deref() == Some("lost") {
            let lost_after = memory
                .as_ref()
                .map_or(lsn.0, |m| m.confirmed_lsn.max(lsn.0));
            let GapPolicy::Accept { by } = gap else {
                return Err(Error::new(ErrorKind::Environment, format!("source.slot: slot {slot} is invalidated (WAL it needed was removed, max_slot_wal_keep_size): changes after {} were lost; drop the slot, recreate it and backfill. {ways_on}", Lsn(lost_after))));
            };
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await
                .map_err(|e| Error::postgres(format!("dropping invalidated slot {slot}"), e))?;
            let resumed = create_slot(client, slot).await?.unwrap_or_default();
            slots::remember(client, pipeline, slot, resumed.0).await?;
            slots::accept_gap(
                client,
                pipeline,
                slot,
                "invalidated",
                lost_after,
                resumed.0,
                by,
            )
            .await?;
            tracing::warn!(slot, lost_after = %Lsn(lost_after), resumed = %resumed, accepted_by = %by, "invalidated slot replaced (--accept-gap): changes in between are lost; backfill the captured tables");
            return Ok(resumed);
        }
        // An existing slot (created by this capture, or adopted): remembered from now on.
        slots::remember(client, pipeline, slot, lsn.0).await?;
        return Ok(lsn);
    }
    if let Some(m) = memory {
        let GapPolicy::Accept { by } = gap else {
            return Err(Error::new(ErrorKind::Environment, format!(
                "source.slot: slot {slot} is gone: capture created it and had it confirmed up to {} \
                 (recorded {}), and it was dropped behind cutover's back. Every change committed \
                 after that until a new slot exists never reaches the pipeline, so capture will not \
                 create one silently. {ways_on}",
                Lsn(m.confirmed_lsn),
                m.updated_at
            )));
        };
        let resumed = match create_slot(client, slot).await? {
            Some(l) => l,
            None => return Box::pin(ensure_slot(client, pipeline, slot, gap)).await,
        };
        slots::accept_gap(
            client,
            pipeline,
            slot,
            "dropped",
            m.confirmed_lsn,
            resumed.0,
            by,
        )
        .await?;
        tracing::warn!(slot, lost_after = %Lsn(m.confirmed_lsn), resumed = %resumed, accepted_by = %by, "dropped slot recreated (--accept-gap): changes in between are lost; backfill the captured tables");
        return Ok(resumed);
    }
    match create_slot(client, slot).await? {
        Some(lsn) => {
            slots::remember(client, pipeline, slot, lsn.0).await?;
            Ok(lsn)
        }
        // Created by someone else meanwhile: check it like any existing slot.
        None => Box::pin(ensure_slot(client, pipeline, slot, gap)).await,
    }
}

/// Create the logical slot; `None` if it exists already (another process won a race).
async fn create_slot(client: &Client, slot: &str) -> Result<Option<Lsn>> {
    match client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
    {
        Ok(row) => {
            let lsn: String = row.get(0);
            tracing::info!(slot, lsn = %lsn, "created replication slot");
            Ok(Some(Lsn::parse(&lsn).unwrap_or_default()))
        }
        Err(e) if e.code().map(|c| c.code()) == Some("42710") => Ok(None),
        Err(e) => Err(
            Error::postgres(format!("creating replication slot {slot}"), e)
                .context("the source role needs the REPLICATION attribute"),
        ),
    }
}

/// The source tables `cfg` captures that exist now: `source.tables` plus every table of
/// `source.schemas`, sorted.
pub async fn captured_tables(cfg: &crate::config::Config, client: &Client) -> Result<Vec<String>> {
    let mut t: Vec<String> = cfg.source.tables.clone();
    let rows = client
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname = ANY($1)",
            &[&cfg.source.schemas],
        )
        .await
        .map_err(|e| Error::postgres("listing the captured schemas' tables", e))?;
    t.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    t.sort();
    t.dedup();
    Ok(t)
}

/// Catalog lookups with caches: column kinds for user types, primary keys per relation.
#[derive(Default)]
pub struct Catalog {
    kinds: HashMap<(u32, i32), PgKind>,
    names: HashMap<(u32, i32), String>,
}

impl Catalog {
    /// The representation of a column of type `oid` with modifier `typmod`.
    pub async fn kind(&mut self, client: &Client, oid: u32, typmod: i32) -> Result<PgKind> {
        if let Some(k) = builtin_kind(oid, typmod) {
            return Ok(k);
        }
        if let Some(k) = self.kinds.get(&(oid, typmod)) {
            return Ok(k.clone());
        }
        let row = client
            .query_opt(
                "SELECT typtype::text, typcategory::text, typelem, typbasetype FROM pg_type WHERE oid = $1",
                &[&oid],
            )
            .await
            .map_err(|e| Error::postgres(format!("looking up type {oid}"), e))?;
        let kind = match row {
            None => PgKind::Text,
            Some(r) => {
                let typtype = r.get::<_, String>(0).bytes().next().unwrap_or(b'b');
                let cat = r.get::<_, String>(1).bytes().next().unwrap_or(b'U');
                let elem: u32 = r.get(2);
                let base: u32 = r.get(3);
                let inner_oid = if typtype == b'd' { base } else { elem };
                let inner = if inner_oid != 0 && inner_oid != oid {
                    Some(Box::pin(self.kind(client, inner_oid, typmod)).await?)
                } else {
                    None
                };
                kind_for_catalog(typtype, cat, inner)
            }
        };
        self.kinds.insert((oid, typmod), kind.clone());
        Ok(kind)
    }

    /// PostgreSQL's display name of a type with modifier (`format_type`), e.g. `numeric(10,2)`.
    pub async fn type_name(&mut self, client: &Client, oid: u32, typmod: i32) -> Result<String> {
        if let Some(n) = self.names.get(&(oid, typmod)) {
            return Ok(n.clone());
        }
        let name: String = client
            .query_one("SELECT format_type($1, $2)", &[&oid, &typmod])
            .await
            .map_err(|e| Error::postgres(format!("format_type({oid}, {typmod})"), e))?
            .get(0);
        self.names.insert((oid, typmod), name.clone());
        Ok(name)
    }

    /// Primary-key column names of relation `oid`, in key order.
    pub async fn primary_key(&self, client: &Client, oid: u32) -> Result<Vec<String>> {
        let rows = client
            .query(
                "SELECT a.attname FROM pg_index i \
                 JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
                &[&oid],
            )
            .await
            .map_err(|e| Error::postgres(format!("reading primary key of relation {oid}"), e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
