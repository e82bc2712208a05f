//! The backend's URL and options, validated into [`Settings`].
//!
//! `sqs://[ACCESS_KEY_ID:SECRET_ACCESS_KEY@]REGION[?endpoint=URL&...]`:
//! the host is the region; credentials come from the URL when it has them,
//! else from the standard AWS chain (environment, profile, container and
//! instance roles).

use std::time::Duration;

use queue_core::config::parse_duration;
use queue_core::{Error, QueueConfig, Result};

use crate::{
    DEFAULT_MAX_MESSAGE, DEFAULT_MAX_RECEIVE_COUNT, DEFAULT_SETTLE_LINGER, MAX_MESSAGE,
    MAX_NATIVE_DELAY, MAX_VISIBILITY,
};

/// The URL scheme of this backend.
pub(crate) const SCHEMES: [&str; 1] = ["sqs"];

/// URL parameters this backend reads besides the common ones.
const PARAMS: [&str; 7] = [
    "endpoint",
    "queue_type",
    "session_token",
    "profile",
    "max_receive_count",
    "settle_linger",
    "max_native_delay",
];

/// The queue type the URL chose (`queue_type`): each has its own
/// capability table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// Standard queues: nearly unlimited throughput, at-least-once, no
    /// order promised, per-message delays.
    Standard,
    /// FIFO queues (`.fifo`): order per message group (the ordering key),
    /// deduplication by idempotency key for five minutes.
    Fifo,
}

impl QueueType {
    /// The name in URLs and capability tables.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Standard => "standard",
            QueueType::Fifo => "fifo",
        }
    }
}

/// Static credentials from the URL.
#[derive(Clone)]
pub(crate) struct UrlCredentials {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: String,
    pub(crate) session_token: Option<String>,
}

impl std::fmt::Debug for UrlCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlCredentials").finish_non_exhaustive()
    }
}

/// What the backend needs from a validated `sqs://` configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) region: String,
    /// A custom endpoint (a local SQS-compatible server, a VPC endpoint).
    pub(crate) endpoint: Option<String>,
    pub(crate) credentials: Option<UrlCredentials>,
    /// A named profile of the shared AWS config files.
    pub(crate) profile: Option<String>,
    pub(crate) queue_type: QueueType,
    /// The redrive policy's `maxReceiveCount`.
    pub(crate) max_receive_count: u32,
    /// How long a settle waits for others to share its batch call.
    pub(crate) settle_linger: Duration,
    /// The longest delay sent natively; longer ones hop.
    pub(crate) max_native_delay: Duration,
    /// The largest message SQS is asked to take (`MaximumMessageSize`).
    pub(crate) max_message: usize,
    /// The table's `max_payload`: what [`Message::wire_size`] may reach.
    ///
    /// [`Message::wire_size`]: queue_core::Message::wire_size
    pub(crate) max_payload: usize,
    /// The region and endpoint, for errors (never the credentials).
    pub(crate) address: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) lease: Duration,
}

/// Bytes kept free under the SQS limit for the metadata attribute's
/// name and type, so a message within `max_payload` always fits.
pub(crate) const ATTRIBUTE_RESERVE: usize = 64;

impl Settings {
    /// Validate the SQS part of `config`: every error names its field and
    /// never quotes a credential.
    pub(crate) fn from_config(config: &QueueConfig) -> Result<Settings> {
        config.expect_scheme("sqs", &SCHEMES)?;
        let mut rest = config.clone();
        let endpoint = rest.take_param("endpoint");
        let queue_type = rest.take_param("queue_type");
        let session_token = rest.take_param("session_token");
        let profile = rest.take_param("profile");
        let max_receive_count = rest.take_param("max_receive_count");
        let settle_linger = rest.take_param("settle_linger");
        let max_native_delay = rest.take_param("max_native_delay");
        rest.reject_unknown_params("sqs", &PARAMS)?;
        let url = config.url.expose();
        let region = url.host_str().unwrap_or_default().to_owned();
        if region.is_empty()
            || !region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(Error::config(
                "url: the host of an sqs:// URL is the AWS region (sqs://eu-west-1), letters, digits and '-'",
            ));
        }
        if url.port().is_some() || !(url.path().is_empty() || url.path() == "/") {
            return Err(Error::config(
                "url: an sqs:// URL is sqs://REGION; give a custom server as ?endpoint=http://host:port",
            ));
        }
        let endpoint = match endpoint {
            None => None,
            Some(e) => {
                let parsed = url::Url::parse(&e)
                    .map_err(|_| Error::config("endpoint: expected an http:// or https:// URL"))?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                    return Err(Error::config(
                        "endpoint: expected an http:// or https:// URL with a host",
                    ));
                }
                if parsed.password().is_some() || !parsed.username().is_empty() {
                    return Err(Error::config(
                        "endpoint: credentials go in the sqs:// URL, not in the endpoint",
                    ));
                }
                Some(e.trim_end_matches('/').to_owned())
            }
        };
        let credentials = if url.username().is_empty() {
            if session_token.is_some() {
                return Err(Error::config(
                    "session_token: given without an access key in the URL (sqs://KEY_ID:SECRET@region)",
                ));
            }
            None
        } else {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let secret = url.password().ok_or_else(|| {
                Error::config("url: an access key id in the URL needs its secret (sqs://KEY_ID:SECRET@region)")
            })?;
            Some(UrlCredentials {
                access_key_id: decode(url.username()),
                secret_access_key: decode(secret),
                session_token,
            })
        };
        let queue_type = match queue_type.as_deref() {
            None | Some("standard") => QueueType::Standard,
            Some("fifo") => QueueType::Fifo,
            Some(other) => {
                return Err(Error::config(format!(
                    "queue_type: must be standard or fifo, got {other:?}"
                )))
            }
        };
        let max_receive_count = match max_receive_count {
            None => DEFAULT_MAX_RECEIVE_COUNT,
            Some(n) => n
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| {
                    Error::config(format!("max_receive_count: must be 1 to 1000, got {n:?}"))
                })?,
        };
        let settle_linger = match settle_linger {
            None => DEFAULT_SETTLE_LINGER,
            Some(l) => {
                let l = parse_duration("settle_linger", &l)?;
                if l > Duration::from_secs(1) {
                    return Err(Error::config(format!(
                        "settle_linger: must be at most 1s, got {l:?}"
                    )));
                }
                l
            }
        };
        let max_native_delay = match max_native_delay {
            None => MAX_NATIVE_DELAY,
            Some(d) => {
                let d = parse_duration("max_native_delay", &d)?;
                if d < Duration::from_secs(1) || d > MAX_NATIVE_DELAY {
                    return Err(Error::config(format!(
                        "max_native_delay: must be 1s to 900s (SQS's DelaySeconds limit), got {d:?}"
                    )));
                }
                Duration::from_secs(d.as_secs())
            }
        };
        let (max_message, max_payload) = match config.max_payload {
            None => (DEFAULT_MAX_MESSAGE, DEFAULT_MAX_MESSAGE - ATTRIBUTE_RESERVE),
            Some(p) if p <= DEFAULT_MAX_MESSAGE - ATTRIBUTE_RESERVE => (DEFAULT_MAX_MESSAGE, p),
            Some(p) if p <= MAX_MESSAGE - ATTRIBUTE_RESERVE => (MAX_MESSAGE, p),
            Some(p) => {
                return Err(Error::config(format!(
                    "max_payload: SQS takes messages up to {MAX_MESSAGE} bytes with their attributes, so at most {} here, got {p}",
                    MAX_MESSAGE - ATTRIBUTE_RESERVE
                )))
            }
        };
        if config.lease > MAX_VISIBILITY {
            return Err(Error::config(format!(
                "lease: SQS holds a message invisible for at most 12h, got {:?}",
                config.lease
            )));
        }
        let address = match &endpoint {
            Some(endpoint) => format!("{region} ({endpoint})"),
            None => region.clone(),
        };
        Ok(Settings {
            region,
            endpoint,
            credentials,
            profile,
            queue_type,
            max_receive_count,
            settle_linger,
            max_native_delay,
            max_message,
            max_payload,
            address,
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            lease: config.lease,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> Result<Settings> {
        Settings::from_config(&QueueConfig::from_url(url)?)
    }

    #[test]
    fn region_endpoint_and_credentials() {
        let s = settings("sqs://AKID:s%2Fcret@eu-west-1?endpoint=http://127.0.0.1:4566/")
            .expect("valid");
        assert_eq!(s.region, "eu-west-1");
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
        let creds = s.credentials.expect("credentials");
        assert_eq!(creds.access_key_id, "AKID");
        assert_eq!(creds.secret_access_key, "s/cret");
        assert_eq!(s.queue_type, QueueType::Standard);
        assert_eq!(s.max_payload, DEFAULT_MAX_MESSAGE - ATTRIBUTE_RESERVE);
        assert!(!format!("{:?}", settings("sqs://AKID:hunter2@eu-west-1")).contains("hunter2"));
    }

    #[test]
    fn bad_values_name_their_field() {
        for (url, field) in [
            ("sqs://eu-west-1?queue_type=lifo", "queue_type"),
            ("sqs://eu-west-1?endpoint=ftp://x", "endpoint"),
            ("sqs://eu-west-1?max_receive_count=0", "max_receive_count"),
            ("sqs://eu-west-1?max_native_delay=901s", "max_native_delay"),
            ("sqs://eu-west-1?settle_linger=2s", "settle_linger"),
            ("sqs://eu-west-1?max_payload=2000000", "max_payload"),
            ("sqs://eu-west-1?session_token=abc", "session_token"),
            ("sqs://eu-west-1:9324", "url"),
            ("sqs://AKID@eu-west-1", "url"),
            ("sqs://eu-west-1?no_such=1", "no_such"),
        ] {
            let err = settings(url).expect_err(url);
            assert_eq!(err.kind(), queue_core::ErrorKind::Config, "{url}: {err}");
            assert!(err.message().contains(field), "{url}: {err}");
        }
    }

    #[test]
    fn a_larger_payload_raises_the_queue_limit() {
        let s = settings("sqs://eu-west-1?max_payload=500000").expect("valid");
        assert_eq!((s.max_message, s.max_payload), (MAX_MESSAGE, 500_000));
    }
}
