//! URL schemes to backends: each backend crate registers its own
//! [`Connector`], the way sqlx drivers install themselves, so a new backend
//! edits no list in this crate.
//!
//! The memory backend (`memory://`) is always registered. The umbrella
//! crate `queue` registers the backends its features compile in before its
//! `connect`; a program using backend crates directly calls [`register`]
//! once with each crate's `CONNECTOR`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> queue_core::Result<()> {
//! use queue_core::registry;
//! let backend = registry::connect("memory://").await?;
//! assert_eq!(backend.capabilities().backend, "memory");
//! let err = registry::connect("nope://h").await.unwrap_err();
//! assert!(err.message().contains("unknown scheme \"nope\""));
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use crate::config::QueueConfig;
use crate::error::{Error, Result};
use crate::memory::MemoryBackend;
use crate::traits::Backend;

/// What [`Connector::connect`] returns.
pub type ConnectFuture = Pin<Box<dyn Future<Output = Result<Arc<dyn Backend>>> + Send>>;

/// How a backend crate plugs into URL-based connection: its name, the
/// schemes it takes, and how to connect a validated configuration.
#[derive(Debug, Clone, Copy)]
pub struct Connector {
    /// The backend's name, as in its capability table.
    pub backend: &'static str,
    /// The URL schemes it takes (`redis`, `rediss`).
    pub schemes: &'static [&'static str],
    /// Connect the backend of a configuration whose scheme is one of
    /// `schemes`.
    pub connect: fn(QueueConfig) -> ConnectFuture,
}

fn connect_memory(config: QueueConfig) -> ConnectFuture {
    Box::pin(async move { Ok(Arc::new(MemoryBackend::from_config(&config)?) as Arc<dyn Backend>) })
}

/// The memory backend's connector (always registered).
pub const MEMORY: Connector = Connector {
    backend: "memory",
    schemes: &["memory"],
    connect: connect_memory,
};

static REGISTRY: RwLock<Vec<Connector>> = RwLock::new(Vec::new());

fn read<T>(f: impl FnOnce(&[Connector]) -> T) -> T {
    let guard = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
    if guard.is_empty() {
        return f(&[MEMORY]);
    }
    f(&guard)
}

/// Register `connector`; it replaces one registered for the same backend.
/// Registering the same connector again is harmless.
pub fn register(connector: Connector) {
    let mut registry = REGISTRY.write().unwrap_or_else(|p| p.into_inner());
    if registry.is_empty() {
        registry.push(MEMORY);
    }
    registry.retain(|c| c.backend != connector.backend);
    registry.push(connector);
}

/// Every registered scheme, in registration order.
pub fn schemes() -> Vec<&'static str> {
    read(|all| all.iter().flat_map(|c| c.schemes.iter().copied()).collect())
}

/// The connector of `scheme`, if one is registered.
pub fn connector(scheme: &str) -> Option<Connector> {
    read(|all| all.iter().find(|c| c.schemes.contains(&scheme)).copied())
}

/// Connect the backend a URL names.
pub async fn connect(url: &str) -> Result<Arc<dyn Backend>> {
    connect_config(QueueConfig::from_url(url)?).await
}

/// Connect the backend of a validated configuration; an unregistered scheme
/// is a [`Config`](crate::ErrorKind::Config) error naming the registered ones.
pub async fn connect_config(config: QueueConfig) -> Result<Arc<dyn Backend>> {
    match connector(config.scheme()) {
        Some(connector) => (connector.connect)(config).await,
        None => Err(unknown_scheme(config.scheme())),
    }
}

/// The error for a scheme no connector takes.
pub fn unknown_scheme(scheme: &str) -> Error {
    Error::config(format!(
        "url: unknown scheme {scheme:?}; registered schemes are {}",
        schemes().join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_nothing(_: QueueConfig) -> ConnectFuture {
        Box::pin(async { Err(Error::config("test backend connects nowhere")) })
    }

    #[tokio::test]
    async fn registered_schemes_connect_and_others_are_named() {
        register(Connector {
            backend: "test-registry",
            schemes: &["testreg"],
            connect: connect_nothing,
        });
        assert!(schemes().contains(&"memory"));
        assert!(schemes().contains(&"testreg"));
        let err = connect("testreg://h").await.unwrap_err();
        assert!(err.message().contains("connects nowhere"));
        let err = connect("postgres://u:hunter2@h/db").await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Config);
        assert!(
            err.message().contains("unknown scheme \"postgres\""),
            "{err}"
        );
        assert!(err.message().contains("memory"), "{err}");
        assert!(!format!("{err:?}").contains("hunter2"));
        assert!(connect("memory://").await.is_ok());
    }
}
