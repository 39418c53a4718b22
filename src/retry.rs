//! The one place that decides what to do with an error.
//!
//! ```text
//!   Error ──kind──▶ policy() ──▶ Retry  (transient: back off with jitter, try again)
//!                            ├─▶ Park   (poison data: dead-letter it, move on)
//!                            └─▶ Fatal  (operator must act: stop with a clear message)
//! ```
//!
//! Call sites never inspect error strings; they ask [`policy`] and obey. Backoff is
//! exponential with full jitter (via the maintained `backon` crate), bounded by
//! [`BackoffSettings`].

use std::future::Future;
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

/// The schedule of one retry loop. After each failed attempt, [`Attempts::after`] waits the
/// next delay when the policy retries the error, or hands the error back. Every retry loop in
/// cutover is one of these, so none of them branches on an error kind itself.
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

    /// After a failed attempt: sleep and return `Ok` if `e` is worth another attempt, else
    /// return `e`. Every retry is logged with the error and the delay chosen.
    pub async fn after(&mut self, what: &str, e: Error) -> Result<(), Error> {
        let Some(delay) = self.next_delay(&e) else {
            return Err(e);
        };
        tracing::warn!(what, error = %e, kind = %e.kind(), attempt = self.failed, delay_ms = delay.as_millis() as u64, "retrying");
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

/// Run `op` until it succeeds or fails with an error the policy does not retry.
pub async fn with_backoff<T, F, Fut>(
    what: &str,
    settings: BackoffSettings,
    mut op: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut attempts = Attempts::new(settings);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => attempts.after(what, e).await?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn transient_kinds_retry_data_parks_rest_fatal() {
        assert_eq!(policy(ErrorKind::Connection), Decision::Retry);
        assert_eq!(policy(ErrorKind::Unavailable), Decision::Retry);
        assert_eq!(policy(ErrorKind::Timeout), Decision::Retry);
        assert_eq!(policy(ErrorKind::Data), Decision::Park);
        assert_eq!(policy(ErrorKind::Auth), Decision::Fatal);
        assert_eq!(policy(ErrorKind::Config), Decision::Fatal);
    }

    #[tokio::test]
    async fn retries_transient_until_success_and_stops_on_fatal() {
        let calls = AtomicUsize::new(0);
        let settings = BackoffSettings {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
            max_attempts: 10,
        };
        let out = with_backoff("t", settings, || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            if n < 3 {
                Err(Error::new(ErrorKind::Connection, "down"))
            } else {
                Ok(n)
            }
        })
        .await
        .unwrap();
        assert_eq!(out, 3);

        let fatal_calls = AtomicUsize::new(0);
        let err = with_backoff("t", settings, || async {
            fatal_calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Error::new(ErrorKind::Auth, "denied"))
        })
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Auth);
        assert_eq!(fatal_calls.load(Ordering::SeqCst), 1);
    }
}
