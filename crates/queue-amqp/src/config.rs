//! The backend's URL and options, validated into [`Settings`].

use std::time::Duration;

use queue_core::config::parse_duration;
use queue_core::{Error, QueueConfig, Result};

use crate::{DEFAULT_CONSUMER_TIMEOUT, DEFAULT_PREFETCH, MAX_FRAME_PAYLOAD};

/// The URL schemes of this backend: plain and TLS.
pub(crate) const SCHEMES: [&str; 2] = ["amqp", "amqps"];

/// URL parameters this backend reads besides the common ones.
const PARAMS: [&str; 5] = [
    "queue_type",
    "prefetch",
    "consumer_timeout",
    "heartbeat",
    "tls_ca",
];

/// The queue type the URL chose (`queue_type`): each has its own
/// capability table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// Classic queues: native priorities (`x-max-priority`), redeliveries
    /// counted on nack only.
    Classic,
    /// Quorum queues: replicated, an exact redelivery count
    /// (`x-delivery-count`), no priorities (RabbitMQ 3.x).
    Quorum,
}

impl QueueType {
    /// The name in URLs, capability tables and `x-queue-type`.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// What the backend needs from a validated `amqp://` configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The URI lapin connects to: credentials, host, port, vhost and the
    /// heartbeat; none of our own parameters.
    pub(crate) uri: String,
    /// PEM of a private certificate authority for `amqps://`.
    pub(crate) tls_ca: Option<String>,
    pub(crate) queue_type: QueueType,
    /// `basic.qos` prefetch of each consumer.
    pub(crate) prefetch: u16,
    /// The broker's `consumer_timeout`: the longest a delivery may stay
    /// unacked before the broker closes the channel.
    pub(crate) consumer_timeout: Duration,
    /// `host:port`, for errors (never the credentials).
    pub(crate) address: String,
    /// The heartbeat interval asked of the broker.
    pub(crate) heartbeat: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) lease: Duration,
    pub(crate) max_payload: usize,
}

impl Settings {
    /// Validate the AMQP part of `config`: every error names its field and
    /// never quotes a credential.
    pub(crate) fn from_config(config: &QueueConfig) -> Result<Settings> {
        config.expect_scheme("amqp", &SCHEMES)?;
        let mut rest = config.clone();
        let queue_type = rest.take_param("queue_type");
        let prefetch = rest.take_param("prefetch");
        let consumer_timeout = rest.take_param("consumer_timeout");
        let heartbeat = rest.take_param("heartbeat");
        let tls_ca = rest.take_param("tls_ca");
        rest.reject_unknown_params("amqp", &PARAMS)?;
        let queue_type = match queue_type.as_deref() {
            None | Some("classic") => QueueType::Classic,
            Some("quorum") => QueueType::Quorum,
            Some(other) => {
                return Err(Error::config(format!(
                    "queue_type: must be classic or quorum, got {other:?}"
                )))
            }
        };
        let prefetch =
            match prefetch {
                None => DEFAULT_PREFETCH,
                Some(p) => p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| {
                    Error::config(format!("prefetch: must be 1 to 65535, got {p:?}"))
                })?,
            };
        let consumer_timeout = match consumer_timeout {
            None => DEFAULT_CONSUMER_TIMEOUT,
            Some(t) => {
                let t = parse_duration("consumer_timeout", &t)?;
                if t < Duration::from_secs(1) || t > Duration::from_secs(7 * 24 * 3600) {
                    return Err(Error::config(format!(
                        "consumer_timeout: must be 1s to 7d (the broker's consumer_timeout), got {t:?}"
                    )));
                }
                t
            }
        };
        // Missed heartbeats are how a silent broker is noticed: two
        // intervals without a frame close the connection.
        let heartbeat = match heartbeat {
            None => (config.request_timeout.as_secs() / 2).clamp(1, 60),
            Some(h) => h
                .parse::<u64>()
                .ok()
                .filter(|h| (1..=600).contains(h))
                .ok_or_else(|| {
                    Error::config(format!("heartbeat: must be 1 to 600 seconds, got {h:?}"))
                })?,
        };
        if config.url.hosts().len() > 1 {
            return Err(Error::config(
                "url: the amqp backend connects to one host (a load balancer in front of a cluster is the usual setup)",
            ));
        }
        if config
            .max_payload
            .is_some_and(|max| max > MAX_FRAME_PAYLOAD)
        {
            return Err(Error::config(format!(
                "max_payload: must be 1 to {MAX_FRAME_PAYLOAD} bytes on amqp (RabbitMQ's max_message_size default)"
            )));
        }
        let url = config.url.expose();
        let tls = url.scheme() == "amqps";
        if tls && !cfg!(feature = "tls") {
            return Err(Error::config(
                "url: amqps:// needs TLS: enable feature `tls` of crate `queue-amqp` (feature `amqp-tls` of crate `queue`)",
            ));
        }
        let tls_ca = match tls_ca {
            None => None,
            Some(path) if !tls => {
                return Err(Error::config(format!(
                    "tls_ca: {path:?} is only used with amqps:// URLs"
                )))
            }
            Some(path) => Some(std::fs::read_to_string(&path).map_err(|e| {
                Error::config(format!("tls_ca: cannot read {path:?}")).with_source(e)
            })?),
        };
        let host = url.host_str().unwrap_or("localhost");
        let port = url.port().unwrap_or(if tls { 5671 } else { 5672 });
        let address = format!("{host}:{port}");
        let mut uri = url.clone();
        uri.set_fragment(None);
        uri.set_query(Some(&format!("heartbeat={heartbeat}")));
        // lapin reads an empty path as the vhost "": the usual default is "/".
        if uri.path().is_empty() || uri.path() == "/" {
            uri.set_path("/%2f");
        }
        Ok(Settings {
            uri: uri.to_string(),
            tls_ca,
            queue_type,
            prefetch,
            consumer_timeout,
            address,
            heartbeat: Duration::from_secs(heartbeat),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            lease: config.lease,
            max_payload: config.max_payload.unwrap_or(crate::DEFAULT_MAX_PAYLOAD),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AmqpBackend;
    use queue_core::ErrorKind;

    #[tokio::test]
    async fn bad_urls_are_config_errors_naming_the_field() {
        for (url, field) in [
            (
                "amqp://u:hunter2@127.0.0.1:5672?queue_type=stream",
                "queue_type: must be",
            ),
            (
                "amqp://u:hunter2@127.0.0.1:5672?prefetch=0",
                "prefetch: must be",
            ),
            (
                "amqp://u:hunter2@127.0.0.1:5672?prefetch=70000",
                "prefetch: must be",
            ),
            (
                "amqp://u:hunter2@127.0.0.1:5672?consumer_timeout=0s",
                "consumer_timeout: must be",
            ),
            (
                "amqp://u:hunter2@127.0.0.1:5672?consumer_timeout=soon",
                "consumer_timeout: expected",
            ),
            (
                "amqp://u:hunter2@127.0.0.1:5672?heartbeat=0",
                "heartbeat: must be",
            ),
            (
                "amqp://u:hunter2@127.0.0.1:5672?shards=2",
                "shards: unknown option",
            ),
            (
                "amqp://u:hunter2@127.0.0.1:5672?max_payload=600000000",
                "max_payload: must be",
            ),
            (
                "amqp://u:hunter2@127.0.0.1:5672?tls_ca=/ca.pem",
                "tls_ca: \"/ca.pem\" is only used with amqps://",
            ),
            (
                "amqp://u:hunter2@127.0.0.1:5672,127.0.0.1:5673",
                "url: the amqp backend connects to one host",
            ),
            ("redis://127.0.0.1", "url: the amqp backend takes"),
        ] {
            let err = AmqpBackend::connect(url).await.unwrap_err();
            let text = format!("{err} {err:?}");
            assert_eq!(err.kind(), ErrorKind::Config, "{text}");
            assert!(err.message().starts_with(field), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn settings_keep_credentials_out_of_the_address_and_default_the_vhost() {
        let config = QueueConfig::from_url("amqp://guest:guest@127.0.0.1?queue_type=quorum")
            .expect("config");
        let settings = Settings::from_config(&config).expect("settings");
        assert_eq!(settings.address, "127.0.0.1:5672");
        assert_eq!(settings.queue_type, QueueType::Quorum);
        assert!(settings.uri.contains("/%2f"), "{}", settings.uri);
        assert!(settings.uri.contains("heartbeat=5"), "{}", settings.uri);
        let config = QueueConfig::from_url("amqp://127.0.0.1:5673/jobs").expect("config");
        let settings = Settings::from_config(&config).expect("settings");
        assert!(settings.uri.contains("/jobs?"), "{}", settings.uri);
        assert_eq!(settings.prefetch, DEFAULT_PREFETCH);
        assert_eq!(settings.consumer_timeout, DEFAULT_CONSUMER_TIMEOUT);
    }
}
