//! Logging setup: `tracing` with text or JSON lines on stderr.
//!
//! One line per meaningful event; fields, not prose. Secrets cannot appear: configuration
//! types that hold them print redacted (see `config::secret`). `RUST_LOG` overrides the
//! configured level when set.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber. `format` is `text` or `json`. Safe to call twice (the second
/// call is ignored), so tests and subcommands can both call it.
pub fn init(format: &str, level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if format == "json" {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(false)
                    .with_target(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(true)
                    // Colours only for a human at a terminal, never into log files.
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    let _ = result;
}
