//! The memory backend's URL (`memory://`) and options, validated into [`Settings`].

use std::time::Duration;

use super::DEFAULT_MAX_PAYLOAD;
use crate::config::{QueueConfig, DEFAULT_IDEMPOTENCY_WINDOW, DEFAULT_LEASE};
use crate::error::Result;

/// What the memory backend takes from a configuration.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    pub(super) max_payload: usize,
    pub(super) idempotency_window: Duration,
    pub(super) lease: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_payload: DEFAULT_MAX_PAYLOAD,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
            lease: DEFAULT_LEASE,
        }
    }
}

impl Settings {
    /// `max_payload`, `idempotency_window` and `lease` apply; any other
    /// parameter is an error naming it.
    pub(super) fn from_config(config: &QueueConfig) -> Result<Settings> {
        config.expect_scheme("memory", &["memory"])?;
        config.reject_unknown_params("memory", &[])?;
        Ok(Settings {
            max_payload: config.max_payload.unwrap_or(DEFAULT_MAX_PAYLOAD),
            idempotency_window: config.idempotency_window,
            lease: config.lease,
        })
    }
}
