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
//!   (`database::origin`); both captures drop transactions carrying such an origin. A change
//!   crosses to the other side at most once.
//! - **One owner per table and phase.** A sink drops the events of a table the other side owns
//!   (counted), so outside `dual` no row can conflict; in `dual` both directions run and every
//!   incoming change is checked against the target row first ([`conflict`]).
//! - **Convergence in `dual`.** A conflict is an incoming change whose before-image differs from
//!   the target's current row. Both sides resolve it with the same deterministic rule (owner
//!   wins, or later commit timestamp wins with ties to legacy and deletes beating updates), so
//!   both end with the same row. Every conflict is recorded, with both versions, in the
//!   target's `cutover.conflicts`, in the transaction that resolves it.
//! - **Gated, audited phase changes.** The phase of each table lives in legacy's
//!   `cutover.table_phases` (`state::phases`); `cutover phase set` changes it only when both
//!   directions are caught up and both sides agree on row count and checksum (or with
//!   `--force` and a reason, [`gate`]), and records every change in `cutover.phase_audit`.
//!
//! How it plugs into a sink: apply owns the `WriteGuard` interface (`apply::guard`); this
//! module's [`guard`] implements it for the two roles (admission by phase, settling by the
//! conflict policy), and [`start_sink`] gives every sink the guard its role needs.
//!
//! ```text
//!   cli ──▶ backsync::start_sink ──▶ apply::Sink::start(…, guard)
//!                 │                          │ begin / admit / settle / finish
//!                 └── guard_for(role) ──▶ RoleGuard ──▶ state::phases, conflict
//! ```

pub mod conflict;
pub mod gate;
pub mod guard;
pub mod handover;
pub mod owner;

use crate::apply::guard::{Unguarded, WriteGuard};
use crate::apply::service::Bounds;
use crate::apply::Sink;
use crate::config::{Config, ConflictPolicy, Direction, BACKSYNC_SINK};
use crate::database::Endpoint;
use crate::error::Result;
use crate::event::Side;
use crate::observe::Readiness;

/// What a sink is in the migration, when it takes part in back-sync.
#[derive(Debug, Clone)]
pub struct Role {
    /// The side this sink writes to; the incoming changes come from the other side.
    pub writes: Side,
    pub policy: ConflictPolicy,
    /// Where the phases live (the legacy database).
    pub control: Endpoint,
    /// Config path of the sink's target (`sinks[i].url`), for messages.
    pub target_field: String,
    /// The sink's target (the side this sink writes), and the side its changes come from:
    /// where a leak's resolution writes (`split`).
    pub target: Endpoint,
    pub incoming_side: Endpoint,
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
    let (i, sink) = cfg.sink_at(name).ok()?;
    let target = Endpoint::of_sink(sink, i);
    match cfg.direction {
        // Either way the incoming side is this configuration's source (the reverse
        // configuration's source is the new store).
        Direction::Forward if b.forward_sink == name => Some(Role {
            writes: Side::New,
            policy: b.conflict_policy,
            control: Endpoint::source(cfg),
            target_field: target.field.clone(),
            target,
            incoming_side: Endpoint::source(cfg),
        }),
        Direction::Reverse if name == BACKSYNC_SINK => Some(Role {
            writes: Side::Legacy,
            policy: b.conflict_policy,
            target_field: target.field.clone(),
            control: target.clone(),
            target,
            incoming_side: Endpoint::source(cfg),
        }),
        _ => None,
    }
}

/// The write guard sink `name` needs: its back-sync role's, or none for a plain sink.
pub fn guard_for(cfg: &Config, name: &str) -> Box<dyn WriteGuard> {
    match role_of(cfg, name) {
        Some(role) => Box::new(guard::RoleGuard::new(role, &cfg.name)),
        None => Box::new(Unguarded),
    }
}

/// Start sink `name` with the guard its part in the migration calls for (see [`guard_for`]);
/// `bounds` for a replay's bounded run.
pub async fn start_sink(
    cfg: &Config,
    name: &str,
    readiness: Readiness,
    bounds: Option<Bounds>,
) -> Result<Sink> {
    Sink::start(cfg, name, readiness, bounds, guard_for(cfg, name)).await
}
