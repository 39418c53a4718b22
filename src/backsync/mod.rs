//! Back-sync and cutover phases: moving each table from "legacy is the source of truth" to "the
//! new store is", with a rollback that loses nothing.
//!
//! ```text
//!                 forward pipeline (capture legacy)            sink `<forward_sink>`
//!   legacy ──▶ <prefix>.<schema>.<table> ───────────────────▶ new store   (origin cutover:<p>:<sink>)
//!     ▲                                                           │
//!     │  sink `backsync` (origin cutover:<p>:backsync)            │ capture of the new store
//!     └──────────────── <prefix>.back.<schema>.<table> ◀──────────┘ (`cutover backsync`)
//!
//!   phase of a table   forward sink applies   backsync applies   owner (source of truth)
//!   forward            yes                    no                 legacy
//!   dual               yes (+ conflicts)      yes (+ conflicts)  legacy
//!   reverse            no                     yes                new store
//! ```
//!
//! Invariants:
//! - **No echo.** Every sink writes inside a replication-origin session named `cutover:…`
//!   ([`origin`]); both captures drop transactions carrying such an origin. A change crosses to
//!   the other side at most once.
//! - **One owner per table and phase.** A sink drops the events of a table the other side owns
//!   (counted), so outside `dual` no row can conflict; in `dual` both directions run and every
//!   incoming change is checked against the target row first ([`conflict`]).
//! - **Convergence in `dual`.** A conflict is an incoming change whose before-image differs from
//!   the target's current row. Both sides resolve it with the same deterministic rule (owner
//!   wins, or later commit timestamp wins with ties to legacy and deletes beating updates), so
//!   both end with the same row. Every conflict is recorded, with both versions, in the
//!   target's `cutover.conflicts`, in the transaction that resolves it.
//! - **Gated, audited phase changes.** The phase of each table lives in legacy's
//!   `cutover.table_phases` ([`phase`]); `cutover phase set` changes it only when both
//!   directions are caught up and both sides agree on row count and checksum (or with
//!   `--force` and a reason), and records every change in `cutover.phase_audit`.

pub mod conflict;
pub mod gate;
pub mod origin;
pub mod phase;

use crate::config::{Config, ConflictPolicy, Direction, BACKSYNC_SINK};
use crate::database::Endpoint;

/// The two databases of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Legacy,
    New,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Legacy => "legacy",
            Side::New => "new",
        }
    }
}

/// What a sink is in the migration, when it takes part in back-sync.
#[derive(Debug, Clone)]
pub struct Role {
    /// The side this sink writes to; the incoming changes come from the other side.
    pub writes: Side,
    pub policy: ConflictPolicy,
    /// Where the phases live (the legacy database).
    pub control: Endpoint,
}

impl Role {
    pub fn incoming(&self) -> Side {
        match self.writes {
            Side::Legacy => Side::New,
            Side::New => Side::Legacy,
        }
    }
}

/// The role of sink `name` in `cfg`: the forward sink of a configured back-sync writes the new
/// store; the `backsync` sink of the reverse configuration writes legacy; others have none.
pub fn role_of(cfg: &Config, name: &str) -> Option<Role> {
    let b = cfg.backsync.as_ref()?;
    match cfg.direction {
        Direction::Forward if b.forward_sink == name => Some(Role {
            writes: Side::New,
            policy: b.conflict_policy,
            control: crate::capture::stream::source_endpoint(cfg),
        }),
        Direction::Reverse if name == BACKSYNC_SINK => {
            let i = cfg.sinks.iter().position(|s| s.name == name)?;
            Some(Role {
                writes: Side::Legacy,
                policy: b.conflict_policy,
                control: crate::apply::service::target_endpoint(&cfg.sinks[i], i),
            })
        }
        _ => None,
    }
}
