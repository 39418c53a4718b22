//! Continuous reconciliation: legacy and each sink's target compared all the time, every
//! confirmed difference kept in a ledger, parity exported, optional repair.
//!
//! ```text
//!   service ── pass ──▶ verify (chunk checksums, bisection, re-check after the lag)
//!      │                    │ differences still there after the lag
//!      │                    ▼
//!      │                ledger (cutover.discrepancies: open / converged / repaired)
//!      │                    │                         ▲
//!      └── metrics ◀────────┘      repair (auto) ─────┘  through verify::repair (the pipeline)
//! ```
//!
//! [`service`] runs the passes, [`ledger`] owns the ledger and pass history SQL, `metrics`
//! the `cutover_reconcile_*` series. The phase gate reads the ledger and the pass history
//! (`backsync::gate`) to require parity before `reverse`.

pub mod ledger;
mod metrics;
pub mod service;

pub use service::run;
