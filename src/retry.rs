//! The one place that decides what to do with an error.
//!
//! ```text
//!   Error ──kind──▶ policy() ──▶ Retry  (transient: back off with jitter, try again)
//!                            ├─▶ Park   (poison data: dead-letter it, move on)
//!                            └─▶ Fatal  (operator must act: stop with a clear message)
//! ```
//!
//! Call sites never inspect error strings or kinds to decide a retry; they ask [`policy`] (or
//! [`Attempts`], the one retry loop's schedule, which asks it) and obey. Backoff is exponential
//! with full jitter (via the maintained `backon` crate), bounded by [`BackoffSettings`].

use std::time::Duration;

use backon::ExponentialBuilder;

use crate::error::{Error, ErrorKind};

/// What to do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Transient: retry with backoff.
    Retry,
    /// The record is bad and will never succeed: park it (dead-letter topic) and continue.
    Park,
    /// Stop: an operator must change something (config, privileges, server settings).
    Fatal,
}

/// The retry policy, by error kind.
pub fn policy(kind: ErrorKind) -> Decision {
    match kind {
        ErrorKind::Connection | ErrorKind::Unavailable | ErrorKind::Timeout => Decision::Retry,
        ErrorKind::Data => Decision::Park,
        ErrorKind::Config
        | ErrorKind::Auth
        | ErrorKind::Schema
        | ErrorKind::Conflict
        | ErrorKind::NotFound
        | ErrorKind::Environment
        | ErrorKind::Io
        | ErrorKind::Internal => Decision::Fatal,
    }
}

/// Exponential backoff bounds. `max_attempts = 0` means retry forever.
#[derive(Debug, Clone, Copy)]
pub struct BackoffSettings {
    pub initial: Duration,
    pub max: Duration,
    pub max_attempts: usize,
}

impl Default for BackoffSettings {
    fn default() -> Self {
        BackoffSettings {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            max_attempts: 0,
        }
    }
}

impl BackoffSettings {
    /// The delay schedule: exponential from `initial` to `max`, with jitter (backon), endless
    /// when `max_attempts` is 0. Every retry loop in cutover draws its delays from here.
    pub fn builder(&self) -> ExponentialBuilder {
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.initial)
            .with_max_delay(self.max)
            .with_jitter();
        if self.max_attempts == 0 {
            builder.without_max_times()
        } else {
            builder.with_max_times(self.max_attempts)
        }
    }

    /// A fresh iterator of delays (see [`BackoffSettings::builder`]).
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        use backon::BackoffBuilder;
        self.builder().build()
    }
}

/// The schedule of one retry loop. After each failed attempt, [`Attempts::next_delay`] gives
/// the delay to wait when the policy retries the error (and attempts remain), or `None`: give
/// up with the error. Every retry loop in cutover (the sink's batch, the reconnect loop of
/// `cutover capture`/`apply`/`run`) draws from one of these.
pub struct Attempts {
    settings: BackoffSettings,
    delays: Box<dyn Iterator<Item = Duration> + Send>,
    /// Failed attempts so far (since the last reset).
    pub failed: u32,
}

impl Attempts {
    pub fn new(settings: BackoffSettings) -> Attempts {
        Attempts {
            settings,
            delays: Box::new(settings.delays()),
            failed: 0,
        }
    }

    /// Start the schedule over (after a period of healthy running).
    pub fn reset(&mut self) {
        self.delays = Box::new(self.settings.delays());
        self.failed = 0;
    }

    /// The delay before the next attempt if the policy retries `e` and attempts remain;
    /// `None`: give up with `e`.
    pub fn next_delay(&mut self, e: &Error) -> Option<Duration> {
        if policy(e.kind()) != Decision::Retry {
            return None;
        }
        let delay = match self.settings.max_attempts {
            0 => Some(self.delays.next().unwrap_or(self.settings.max)),
            _ => self.delays.next(),
        }?;
        self.failed += 1;
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_kinds_retry_data_parks_rest_fatal() {
        assert_eq!(policy(ErrorKind::Connection), Decision::Retry);
        assert_eq!(policy(ErrorKind::Unavailable), Decision::Retry);
        assert_eq!(policy(ErrorKind::Timeout), Decision::Retry);
        assert_eq!(policy(ErrorKind::Data), Decision::Park);
        assert_eq!(policy(ErrorKind::Auth), Decision::Fatal);
        assert_eq!(policy(ErrorKind::Config), Decision::Fatal);
    }

    #[test]
    fn attempts_delay_transient_errors_within_bounds_and_give_up_on_the_rest() {
        let settings = BackoffSettings {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
            max_attempts: 3,
        };
        let mut a = Attempts::new(settings);
        let down = Error::new(ErrorKind::Connection, "down");
        for n in 1..=3 {
            let d = a.next_delay(&down).expect("transient errors are retried");
            assert!(d <= Duration::from_millis(10), "{d:?}");
            assert_eq!(a.failed, n);
        }
        assert_eq!(a.next_delay(&down), None, "max_attempts bounds the loop");
        a.reset();
        assert!(a.next_delay(&down).is_some(), "reset starts over");
        assert_eq!(a.next_delay(&Error::new(ErrorKind::Auth, "denied")), None);
        assert_eq!(a.next_delay(&Error::new(ErrorKind::Data, "poison")), None);

        let mut endless = Attempts::new(BackoffSettings {
            max_attempts: 0,
            ..settings
        });
        for _ in 0..50 {
            assert!(endless.next_delay(&down).is_some());
        }
    }
}
