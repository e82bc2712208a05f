//! The backend's URL and options, validated into [`Settings`].
//!
//! `kafka://[USER:PASSWORD@]host:port[,host:port][?group=...&...]`
//! (`kafkas://` for TLS): the hosts are the bootstrap servers; a user and
//! password in the URL mean SASL (`sasl_mechanism`, PLAIN by default).

use std::time::Duration;

use queue_core::config::parse_duration;
use queue_core::{Error, QueueConfig, Result};
use rdkafka::config::ClientConfig;

/// The URL schemes of this backend: plain and TLS.
pub(crate) const SCHEMES: [&str; 2] = ["kafka", "kafkas"];

/// URL parameters this backend reads besides the common ones.
const PARAMS: [&str; 6] = [
    "group",
    "partitions",
    "replication",
    "retention",
    "sasl_mechanism",
    "tls_ca",
];

/// The SASL mechanisms librdkafka speaks without Kerberos.
const SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// SASL credentials from the URL; never shown.
#[derive(Clone)]
pub(crate) struct Sasl {
    pub(crate) mechanism: String,
    pub(crate) username: String,
    pub(crate) password: String,
}

impl std::fmt::Debug for Sasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sasl")
            .field("mechanism", &self.mechanism)
            .finish_non_exhaustive()
    }
}

/// What the backend needs from a validated `kafka://` configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `host:port,host:port`.
    pub(crate) servers: String,
    /// The consumer group prefix: a queue's group is `<group>.<queue>`.
    pub(crate) group: String,
    /// Partitions of a topic the backend creates.
    pub(crate) partitions: i32,
    /// Replication factor of a topic the backend creates (`None`: the
    /// broker's default).
    pub(crate) replication: Option<i32>,
    /// `retention.ms` of a topic the backend creates; `-1` keeps records
    /// until they are consumed and beyond (nothing expires unconsumed).
    pub(crate) retention_ms: i64,
    pub(crate) tls: bool,
    pub(crate) tls_ca: Option<String>,
    pub(crate) sasl: Option<Sasl>,
    /// The hosts, for errors (never the credentials).
    pub(crate) address: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) lease: Duration,
}

impl Settings {
    /// Validate the Kafka part of `config`: every error names its field
    /// and never quotes a credential.
    pub fn from_config(config: &QueueConfig) -> Result<Settings> {
        config.expect_scheme("kafka", &SCHEMES)?;
        let mut rest = config.clone();
        let group = rest.take_param("group");
        let partitions = rest.take_param("partitions");
        let replication = rest.take_param("replication");
        let retention = rest.take_param("retention");
        let sasl_mechanism = rest.take_param("sasl_mechanism");
        let tls_ca = rest.take_param("tls_ca");
        rest.reject_unknown_params("kafka", &PARAMS)?;
        let url = config.url.expose();
        let hosts = config.url.hosts();
        if url.host_str().is_none_or(str::is_empty)
            || hosts.iter().any(|h| h.rsplit_once(':').is_none())
        {
            return Err(Error::config(
                "url: expected kafka://host:port[,host:port], each host with its port",
            ));
        }
        if !(url.path().is_empty() || url.path() == "/") {
            return Err(Error::config(
                "url: a kafka:// URL names brokers only; give options as ?group=...",
            ));
        }
        let group = match group {
            None => "queue".to_owned(),
            Some(g)
                if !g.is_empty()
                    && g.len() <= 200
                    && g.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) =>
            {
                g
            }
            Some(g) => {
                return Err(Error::config(format!(
                    "group: 1 to 200 letters, digits, '.', '_' or '-', got {g:?}"
                )))
            }
        };
        let partitions = match partitions {
            None => 4,
            Some(p) => p
                .parse::<i32>()
                .ok()
                .filter(|p| (1..=10_000).contains(p))
                .ok_or_else(|| {
                    Error::config(format!("partitions: must be 1 to 10000, got {p:?}"))
                })?,
        };
        let replication = match replication.as_deref() {
            None | Some("default") => None,
            Some(r) => Some(
                r.parse::<i32>()
                    .ok()
                    .filter(|r| (1..=32_767).contains(r))
                    .ok_or_else(|| {
                        Error::config(format!(
                            "replication: must be 1 to 32767 or \"default\", got {r:?}"
                        ))
                    })?,
            ),
        };
        let retention_ms = match retention.as_deref() {
            None | Some("forever") => -1,
            Some(r) => {
                let d = parse_duration("retention", r)?;
                i64::try_from(d.as_millis())
                    .ok()
                    .filter(|ms| *ms >= 1)
                    .ok_or_else(|| {
                        Error::config(format!(
                            "retention: a positive duration or \"forever\", got {r:?}"
                        ))
                    })?
            }
        };
        let sasl = if url.username().is_empty() {
            if sasl_mechanism.is_some() {
                return Err(Error::config(
                    "sasl_mechanism: given without a user in the URL (kafka://USER:PASSWORD@host:port)",
                ));
            }
            None
        } else {
            let password = url.password().ok_or_else(|| {
                Error::config(
                    "url: a user in the URL needs a password (kafka://USER:PASSWORD@host:port)",
                )
            })?;
            let mechanism = sasl_mechanism.unwrap_or_else(|| "PLAIN".to_owned());
            if !SASL_MECHANISMS.contains(&mechanism.as_str()) {
                return Err(Error::config(format!(
                    "sasl_mechanism: must be one of {}, got {mechanism:?}",
                    SASL_MECHANISMS.join(", ")
                )));
            }
            Some(Sasl {
                mechanism,
                username: decode(url.username()),
                password: decode(password),
            })
        };
        let tls = url.scheme() == "kafkas";
        if tls_ca.is_some() && !tls {
            return Err(Error::config("tls_ca: needs a kafkas:// URL (TLS)"));
        }
        Ok(Settings {
            servers: hosts.join(","),
            group,
            partitions,
            replication,
            retention_ms,
            tls,
            tls_ca,
            sasl,
            address: hosts.join(","),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            lease: config.lease,
        })
    }

    /// The librdkafka settings every client of this backend shares:
    /// brokers, security, timeouts.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.servers)
            .set(
                "socket.connection.setup.timeout.ms",
                self.connect_timeout.as_millis().max(1000).to_string(),
            )
            .set("log_level", "3");
        let protocol = match (self.tls, self.sasl.is_some()) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        config.set("security.protocol", protocol);
        if let Some(ca) = &self.tls_ca {
            config.set("ssl.ca.location", ca);
        }
        if let Some(sasl) = &self.sasl {
            config
                .set("sasl.mechanisms", &sasl.mechanism)
                .set("sasl.username", &sasl.username)
                .set("sasl.password", &sasl.password);
        }
        config
    }

    /// The consumer group prefix (`group`): a queue's group is
    /// `<group>.<queue>`.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Partitions and replication factor (`None`: the broker's default)
    /// of the topics the backend creates.
    pub fn partitions(&self) -> (i32, Option<i32>) {
        (self.partitions, self.replication)
    }

    /// `retention.ms` of the topics the backend creates (`-1`: forever).
    pub fn retention_ms(&self) -> i64 {
        self.retention_ms
    }

    /// The lease a delivery starts with, and the bound on one broker call.
    pub fn timeouts(&self) -> (Duration, Duration) {
        (self.lease, self.request_timeout)
    }

    /// The SASL user, if the URL gave one (never the password).
    pub fn sasl_user(&self) -> Option<&str> {
        self.sasl.as_ref().map(|s| s.username.as_str())
    }

    /// The bootstrap servers, `host:port,host:port`.
    pub fn servers(&self) -> &str {
        &self.servers
    }

    /// The hosts, for errors and logs (never a credential).
    pub fn address(&self) -> &str {
        &self.address
    }
}

/// Percent-decode a URL user or password (lossy: invalid UTF-8 becomes
/// U+FFFD, which the broker then refuses as a wrong credential).
fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> Result<Settings> {
        Settings::from_config(&QueueConfig::from_url(url)?)
    }

    #[test]
    fn hosts_options_and_defaults() {
        let s = settings("kafka://127.0.0.1:9092,127.0.0.1:9093").expect("valid");
        assert_eq!(s.servers(), "127.0.0.1:9092,127.0.0.1:9093");
        assert_eq!((s.partitions, s.replication, s.retention_ms), (4, None, -1));
        assert_eq!(s.group, "queue");
        let s = settings("kafka://h:9092?group=billing&partitions=12&replication=3&retention=7d")
            .expect("valid");
        assert_eq!((s.partitions, s.replication), (12, Some(3)));
        assert_eq!(s.retention_ms, 7 * 24 * 3600 * 1000);
        let e = settings("kafka://h:9092?delay_hold=1m").expect_err("gone with the retry tiers");
        assert!(e.message().contains("delay_hold"), "{}", e.message());
    }

    #[test]
    fn sasl_and_tls_from_the_url() {
        let s = settings("kafkas://app:p%40ss@h:9093?sasl_mechanism=SCRAM-SHA-512&tls_ca=/ca.pem")
            .expect("valid");
        let sasl = s.sasl.clone().expect("sasl");
        assert_eq!(
            (sasl.username.as_str(), sasl.password.as_str()),
            ("app", "p@ss")
        );
        let config = s.client_config();
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("ssl.ca.location"), Some("/ca.pem"));
        assert!(
            !format!("{s:?}").contains("p@ss"),
            "the password is never shown"
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        for (url, field) in [
            ("kafka://h:9092?partitions=0", "partitions"),
            ("kafka://h:9092?replication=x", "replication"),
            ("kafka://h:9092?retention=soon", "retention"),
            ("kafka://h:9092?group=a%20b", "group"),
            ("kafka://h:9092?sasl_mechanism=PLAIN", "sasl_mechanism"),
            ("kafka://u:p@h:9092?sasl_mechanism=GSSAPI", "sasl_mechanism"),
            ("kafka://h:9092?tls_ca=/ca.pem", "tls_ca"),
            ("kafka://u@h:9092", "url"),
            ("kafka://h", "url"),
            ("kafka://h:9092/topic", "url"),
            ("kafka://h:9092?no_such=1", "no_such"),
        ] {
            let err = settings(url).expect_err(url);
            assert_eq!(err.kind(), queue_core::ErrorKind::Config, "{url}: {err}");
            assert!(err.message().contains(field), "{url}: {err}");
            assert!(!err.message().contains("p@ss"));
        }
    }
}
