//! Fault injection for tests and chaos runs, switchable through this handle or through the admin
//! endpoint `/admin/faults` (which faults never affect):
//!
//! - `GET /admin/faults`: the current settings as JSON;
//! - `PUT /admin/faults` with any of `{"availability": "up"|"refuse"|"unavailable", "delayMs": n,
//!   "failWrite": {"nth": n, "code": 409|500} | null, "expireNextWatch": bool}`;
//! - `POST /admin/faults/drop-watches`: ends every open watch stream now;
//! - `POST /admin/faults/reset`: back to normal.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::ApiError;

/// Whether the server answers at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    #[default]
    Up,
    /// Connections are closed without an answer (the in-process service returns an error).
    Refuse,
    /// Every request gets `503 ServiceUnavailable`.
    Unavailable,
}

/// How an injected write failure answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteFailure {
    /// 1 = the next write fails, 2 = the one after, ...
    pub nth: u32,
    /// 409 (Conflict) or 500 (InternalError).
    pub code: u16,
}

/// The fault settings, as the admin endpoint shows and takes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultSettings {
    #[serde(default)]
    pub availability: Availability,
    #[serde(default)]
    pub delay_ms: u64,
    #[serde(default)]
    pub fail_write: Option<WriteFailure>,
    #[serde(default)]
    pub expire_next_watch: bool,
}

#[derive(Debug)]
struct State {
    settings: Mutex<FaultSettings>,
    drop_watches: watch::Sender<u64>,
}

/// A cheap, cloneable handle to the server's faults.
#[derive(Debug, Clone)]
pub struct Faults(Arc<State>);

impl Default for Faults {
    fn default() -> Self {
        Faults(Arc::new(State {
            settings: Mutex::default(),
            drop_watches: watch::channel(0).0,
        }))
    }
}

impl Faults {
    fn settings(&self) -> std::sync::MutexGuard<'_, FaultSettings> {
        self.0.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn current(&self) -> FaultSettings {
        self.settings().clone()
    }

    /// Replaces all settings at once.
    pub fn set(&self, settings: FaultSettings) {
        *self.settings() = settings;
    }

    pub fn reset(&self) {
        self.set(FaultSettings::default());
    }

    pub fn set_availability(&self, availability: Availability) {
        self.settings().availability = availability;
    }

    /// Delays every answer (and the start of every watch) by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.settings().delay_ms = delay.as_millis().try_into().unwrap_or(u64::MAX);
    }

    /// Makes the `nth` write from now fail with `code` (409 or 500).
    pub fn fail_nth_write(&self, nth: u32, code: u16) {
        self.settings().fail_write = Some(WriteFailure {
            nth: nth.max(1),
            code,
        });
    }

    /// The next watch request gets an in-stream `410 Expired` ERROR event.
    pub fn expire_next_watch(&self) {
        self.settings().expire_next_watch = true;
    }

    /// Ends every open watch stream now (clients see the stream end and re-watch).
    pub fn drop_watches(&self) {
        self.0.drop_watches.send_modify(|n| *n += 1);
    }

    pub(crate) fn watch_drops(&self) -> watch::Receiver<u64> {
        self.0.drop_watches.subscribe()
    }

    pub(crate) fn availability(&self) -> Availability {
        self.settings().availability
    }

    pub(crate) fn delay(&self) -> Duration {
        Duration::from_millis(self.settings().delay_ms)
    }

    pub(crate) fn take_expire_next_watch(&self) -> bool {
        std::mem::take(&mut self.settings().expire_next_watch)
    }

    /// Counts a write; the error to answer with if this is the failing one.
    pub(crate) fn count_write(&self) -> Option<ApiError> {
        let mut settings = self.settings();
        let failure = settings.fail_write.as_mut()?;
        if failure.nth > 1 {
            failure.nth -= 1;
            return None;
        }
        let code = failure.code;
        settings.fail_write = None;
        Some(if code == 409 {
            ApiError::new(
                409,
                "Conflict",
                "Operation cannot be fulfilled: injected conflict",
            )
        } else {
            ApiError::internal("Internal error occurred: injected failure")
        })
    }
}
