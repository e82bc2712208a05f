//! The backend's URL and options, validated into [`Settings`].

use std::time::Duration;

use queue_core::{Error, QueueConfig, Result};

use crate::{DEFAULT_PREFIX, REDIS_MAX_VALUE};

/// The URL schemes of this backend: plain and TLS.
pub(crate) const SCHEMES: [&str; 2] = ["redis", "rediss"];

/// URL parameters this backend reads besides the common ones.
const PARAMS: [&str; 2] = ["prefix", "tls_ca"];

/// What the backend needs from a validated `redis://` configuration.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) client: redis::Client,
    pub(crate) prefix: String,
    /// The common `request_timeout`: longest wait for one reply.
    pub(crate) response_timeout: Duration,
    /// `host:port`, for errors (never the credentials).
    pub(crate) address: String,
}

impl Settings {
    /// Validate the Redis part of `config`: every error names its field
    /// and never quotes a credential.
    pub(crate) fn from_config(config: &QueueConfig) -> Result<Settings> {
        config.expect_scheme("redis", &SCHEMES)?;
        let mut rest = config.clone();
        let prefix = rest.take_param("prefix");
        let tls_ca = rest.take_param("tls_ca");
        rest.reject_unknown_params("redis", &PARAMS)?;
        let prefix = match prefix {
            None => DEFAULT_PREFIX.to_owned(),
            Some(p) if valid_prefix(&p) => p,
            Some(p) => {
                return Err(Error::config(format!(
                    "prefix: must be 1 to 64 of [A-Za-z0-9_:.-], got {p:?}"
                )))
            }
        };
        let response_timeout = config.request_timeout;
        if config.url.hosts().len() > 1 {
            return Err(Error::config(
                "url: the redis backend connects to one host (Redis Cluster and Sentinel are not supported yet)",
            ));
        }
        if config.max_payload.is_some_and(|max| max > REDIS_MAX_VALUE) {
            return Err(Error::config(format!(
                "max_payload: must be 1 to {REDIS_MAX_VALUE} bytes on redis (its largest value)"
            )));
        }
        let mut url = config.url.expose().clone();
        if url.scheme() == "rediss" && !cfg!(feature = "tls") {
            return Err(Error::config(
                "url: rediss:// needs TLS: enable feature `tls` of crate `queue-redis` (feature `redis-tls` of crate `queue`)",
            ));
        }
        url.set_query(None);
        url.set_fragment(None);
        let address = config.url.address();
        let client = open_client(&url, tls_ca.as_deref())?;
        Ok(Settings {
            client,
            prefix,
            response_timeout,
            address,
        })
    }
}

/// The Redis client for `url`; with `tls_ca` (a PEM file), TLS trusts that
/// certificate authority instead of the system's roots.
fn open_client(url: &url::Url, tls_ca: Option<&str>) -> Result<redis::Client> {
    // The client's message may quote the URL: keep only the kind.
    let not_redis =
        |e: redis::RedisError| Error::config(format!("url: not a Redis URL ({:?})", e.kind()));
    match tls_ca {
        None => redis::Client::open(url.as_str()).map_err(not_redis),
        Some(path) if url.scheme() != "rediss" => Err(Error::config(format!(
            "tls_ca: {path:?} is only used with rediss:// URLs"
        ))),
        #[cfg(feature = "tls")]
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                Error::config(format!("tls_ca: cannot read {path:?}")).with_source(e)
            })?;
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            redis::Client::build_with_tls(url.as_str(), certificates).map_err(|e| {
                Error::config(format!(
                    "tls_ca: {path:?} is not a usable PEM certificate ({:?})",
                    e.kind()
                ))
            })
        }
        #[cfg(not(feature = "tls"))]
        Some(_) => Err(Error::config(
            "tls_ca: TLS needs feature `tls` of crate `queue-redis`",
        )),
    }
}

fn valid_prefix(prefix: &str) -> bool {
    (1..=64).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RedisBackend;
    use queue_core::ErrorKind;

    #[tokio::test]
    async fn bad_urls_are_config_errors_naming_the_field() {
        for (url, field) in [
            (
                "redis://u:hunter2@127.0.0.1:6379?prefix=a%20b",
                "prefix: must be",
            ),
            (
                "redis://u:hunter2@127.0.0.1:6379?request_timeout=0s",
                "request_timeout: must be",
            ),
            (
                "redis://u:hunter2@127.0.0.1:6379?shards=2",
                "shards: unknown option",
            ),
            (
                "redis://u:hunter2@127.0.0.1:6379?max_payload=600000000",
                "max_payload: must be",
            ),
            (
                "redis://u:hunter2@127.0.0.1:6379?tls_ca=/ca.pem",
                "tls_ca: \"/ca.pem\" is only used with rediss://",
            ),
            (
                "redis://u:hunter2@127.0.0.1:6379,127.0.0.1:6380",
                "url: the redis backend connects to one host",
            ),
            ("memory://", "url: the redis backend takes"),
        ] {
            let err = RedisBackend::connect(url).await.unwrap_err();
            let text = format!("{err} {err:?}");
            assert_eq!(err.kind(), ErrorKind::Config, "{text}");
            assert!(err.message().starts_with(field), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[cfg(not(feature = "tls"))]
    #[tokio::test]
    async fn rediss_without_tls_names_the_feature() {
        let err = RedisBackend::connect("rediss://127.0.0.1:6380")
            .await
            .unwrap_err();
        assert!(err.message().contains("feature `tls`"), "{err}");
    }

    #[test]
    fn prefixes_follow_the_rule() {
        assert!(valid_prefix("queue"));
        assert!(valid_prefix("app:v2.queue-x"));
        assert!(!valid_prefix(""));
        assert!(!valid_prefix("a{b}"));
        assert!(!valid_prefix(&"x".repeat(65)));
    }
}
