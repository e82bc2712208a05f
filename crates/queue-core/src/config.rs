//! Configuration from a URL and `QUEUE_*` environment variables, validated.
//!
//! ```
//! use queue_core::config::QueueConfig;
//! use std::time::Duration;
//!
//! let config = QueueConfig::from_url("redis://app:s3cret@127.0.0.1:6379/0?lease=45s").unwrap();
//! assert_eq!(config.scheme(), "redis");
//! assert_eq!(config.lease, Duration::from_secs(45));
//! // Credentials never show.
//! assert!(!format!("{config:?}").contains("s3cret"));
//! assert_eq!(config.url.to_string(), "redis://app:***@127.0.0.1:6379/0?lease=45s");
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use url::Url;
use validator::{Validate, ValidationError, ValidationErrors, ValidationErrorsKind};

use crate::error::{Error, ErrorKind, Result};
use crate::message::QueueName;

/// Default lease (visibility timeout) of a delivery.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Default longest wait for one broker reply.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default idempotency window: how long a key is remembered.
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(300);
/// Shortest lease accepted.
pub const MIN_LEASE: Duration = Duration::from_millis(100);
/// Longest lease accepted (the SQS maximum).
pub const MAX_LEASE: Duration = Duration::from_secs(12 * 60 * 60);

/// Fragments that mark a query parameter as secret: any parameter whose
/// name contains one (`password`, `sasl.password`, `aws_secret_access_key`,
/// `api_key`, `token`, ...) is never shown. Over-redacting a harmless
/// parameter is the safe side of this rule.
const SECRET_FRAGMENTS: [&str; 7] = [
    "pass",
    "secret",
    "token",
    "key",
    "credential",
    "auth",
    "sig",
];

/// Whether the value of query parameter `name` must never be shown.
pub fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_FRAGMENTS
        .iter()
        .any(|fragment| name.contains(fragment))
}

/// A URL whose password and secret query parameters never appear in
/// `Debug` or `Display`. [`SecretUrl::expose`] gives the real one to a client.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl {
    url: Url,
    /// Further `host:port` entries of a comma-separated host list
    /// (`kafka://a:9092,b:9092`), which `Url` itself cannot hold.
    more_hosts: Vec<String>,
}

impl SecretUrl {
    /// Parse `input`. The error never echoes the input, which may hold a password.
    pub fn parse(input: &str) -> Result<SecretUrl> {
        let (first, more_hosts) = split_host_list(input);
        let url = Url::parse(&first)
            .map_err(|e| Error::config(format!("url: malformed URL ({e})")).with_source(e))?;
        Ok(SecretUrl { url, more_hosts })
    }

    /// The real URL, credentials included: only for handing to a client
    /// library. For a host list, this holds the first host; see [`SecretUrl::hosts`].
    pub fn expose(&self) -> &Url {
        &self.url
    }

    /// Every `host:port` the URL names (several for `kafka://a:1,b:2`).
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts = vec![self.address()];
        hosts.extend(self.more_hosts.iter().cloned());
        hosts
    }

    /// The URL with secrets replaced by `***`.
    pub fn redacted(&self) -> String {
        let mut url = self.url.clone();
        if url.password().is_some() {
            // Cannot fail: a URL with a password has a host.
            let _ = url.set_password(Some("***"));
        }
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let secret = is_secret_param(&k);
                    (
                        k.into_owned(),
                        if secret {
                            "***".to_owned()
                        } else {
                            v.into_owned()
                        },
                    )
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        let mut text = url.to_string().replace("%2A%2A%2A", "***");
        if !self.more_hosts.is_empty() {
            let first = self.address();
            if let Some(at) = text.find(&first) {
                text.insert_str(at + first.len(), &format!(",{}", self.more_hosts.join(",")));
            }
        }
        text
    }

    /// `host:port` pairs named by the URL, for error messages (no credentials).
    pub fn address(&self) -> String {
        match (self.url.host_str(), self.url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            _ => self.url.scheme().to_owned(),
        }
    }
}

/// Split `scheme://[user@]h1:p1,h2:p2/...` into the URL with only `h1:p1`
/// and the list of the others.
fn split_host_list(input: &str) -> (Cow<'_, str>, Vec<String>) {
    let Some(start) = input.find("://").map(|i| i + 3) else {
        return (Cow::Borrowed(input), Vec::new());
    };
    let end = input[start..]
        .find(['/', '?', '#'])
        .map_or(input.len(), |i| start + i);
    let authority = &input[start..end];
    let hosts_at = authority.rfind('@').map_or(0, |i| i + 1);
    let hosts = &authority[hosts_at..];
    if !hosts.contains(',') {
        return (Cow::Borrowed(input), Vec::new());
    }
    let mut parts = hosts.split(',').map(str::trim);
    let first = parts.next().unwrap_or_default();
    let more = parts.filter(|h| !h.is_empty()).map(str::to_owned).collect();
    let rebuilt = format!("{}{}{}", &input[..start + hosts_at], first, &input[end..]);
    (Cow::Owned(rebuilt), more)
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Settings shared by every backend, validated.
///
/// Build it with [`QueueConfig::from_url`] or [`QueueConfig::from_env`].
/// URL query parameters set the same fields (`?lease=30s&max_payload=65536`);
/// parameters a backend understands itself stay in
/// [`params`](QueueConfig::params), and a backend rejects any it does not know.
#[derive(Clone, PartialEq, Eq, Validate)]
#[non_exhaustive]
pub struct QueueConfig {
    /// The broker URL (credentials redacted when shown). Its scheme picks
    /// the backend, among those registered ([`crate::registry`]).
    pub url: SecretUrl,
    /// Default lease of a delivery (`lease`, `QUEUE_LEASE`), 100ms to 12h.
    #[validate(custom(function = "validate_lease"))]
    pub lease: Duration,
    /// Lower the backend's payload limit (`max_payload`, `QUEUE_MAX_PAYLOAD`), bytes.
    #[validate(range(
        min = 1,
        max = 1_073_741_824,
        message = "must be 1 to 1073741824 bytes"
    ))]
    pub max_payload: Option<usize>,
    /// How long an idempotency key is remembered (`idempotency_window`,
    /// `QUEUE_IDEMPOTENCY_WINDOW`), 1s to 7 days.
    #[validate(custom(function = "validate_idempotency_window"))]
    pub idempotency_window: Duration,
    /// Limit for establishing a connection (`connect_timeout`,
    /// `QUEUE_CONNECT_TIMEOUT`), 100ms to 5 minutes.
    #[validate(custom(function = "validate_connect_timeout"))]
    pub connect_timeout: Duration,
    /// Longest wait for one broker reply (`request_timeout`,
    /// `QUEUE_REQUEST_TIMEOUT`), 100ms to 10 minutes, default 10 s. A broker
    /// that stops answering fails calls with a retryable `Timeout` or
    /// `Connection` error within it (plus a blocking receive's own wait).
    #[validate(custom(function = "validate_request_timeout"))]
    pub request_timeout: Duration,
    /// The queue used when none is named (`queue`, `QUEUE_DEFAULT_QUEUE`).
    pub default_queue: Option<QueueName>,
    /// Backend-specific URL parameters, not yet interpreted.
    pub params: BTreeMap<String, String>,
}

impl fmt::Debug for QueueConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let params: BTreeMap<&str, &str> = self
            .params
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if is_secret_param(k) {
                        "***"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("QueueConfig")
            .field("url", &self.url)
            .field("lease", &self.lease)
            .field("max_payload", &self.max_payload)
            .field("idempotency_window", &self.idempotency_window)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("default_queue", &self.default_queue)
            .field("params", &params)
            .finish()
    }
}

/// Environment variables read by [`QueueConfig::from_env`].
pub const ENV_VARS: [&str; 7] = [
    "QUEUE_URL",
    "QUEUE_LEASE",
    "QUEUE_MAX_PAYLOAD",
    "QUEUE_IDEMPOTENCY_WINDOW",
    "QUEUE_CONNECT_TIMEOUT",
    "QUEUE_REQUEST_TIMEOUT",
    "QUEUE_DEFAULT_QUEUE",
];

impl QueueConfig {
    /// Parse and validate a URL, with settings from its query.
    pub fn from_url(input: &str) -> Result<QueueConfig> {
        let url = SecretUrl::parse(input)?;
        let mut config = QueueConfig {
            url,
            lease: DEFAULT_LEASE,
            max_payload: None,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
            connect_timeout: Duration::from_secs(5),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            default_queue: None,
            params: BTreeMap::new(),
        };
        let pairs: Vec<(String, String)> = config
            .url
            .expose()
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        for (key, value) in pairs {
            if !config.apply(&key, &key, &value)? {
                config.params.insert(key, value);
            }
        }
        config.check()?;
        Ok(config)
    }

    /// Read `QUEUE_URL` (default `memory://`) and the other `QUEUE_*`
    /// variables of [`ENV_VARS`], which override the URL's query.
    pub fn from_env() -> Result<QueueConfig> {
        QueueConfig::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`from_env`](QueueConfig::from_env) with a custom variable lookup (for tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<QueueConfig> {
        let url = lookup("QUEUE_URL").unwrap_or_else(|| "memory://".to_owned());
        let mut config = QueueConfig::from_url(&url)
            .map_err(|e| Error::config(e.message().replacen("url:", "QUEUE_URL:", 1)))?;
        for (var, key) in [
            ("QUEUE_LEASE", "lease"),
            ("QUEUE_MAX_PAYLOAD", "max_payload"),
            ("QUEUE_IDEMPOTENCY_WINDOW", "idempotency_window"),
            ("QUEUE_CONNECT_TIMEOUT", "connect_timeout"),
            ("QUEUE_REQUEST_TIMEOUT", "request_timeout"),
            ("QUEUE_DEFAULT_QUEUE", "queue"),
        ] {
            if let Some(value) = lookup(var) {
                config.apply(var, key, &value)?;
            }
        }
        config.check()?;
        Ok(config)
    }

    /// Set a common field from its text; `false` if `key` is not a common field.
    fn apply(&mut self, field: &str, key: &str, value: &str) -> Result<bool> {
        match key {
            "lease" => self.lease = parse_duration(field, value)?,
            "idempotency_window" => self.idempotency_window = parse_duration(field, value)?,
            "connect_timeout" => self.connect_timeout = parse_duration(field, value)?,
            "request_timeout" => self.request_timeout = parse_duration(field, value)?,
            "max_payload" => {
                self.max_payload = Some(value.parse().map_err(|_| {
                    Error::config(format!(
                        "{field}: expected a number of bytes, got {value:?}"
                    ))
                })?)
            }
            "queue" => {
                self.default_queue = Some(QueueName::new(value).map_err(|e| {
                    Error::config(format!("{field}: {}", e.message())).with_source(e)
                })?)
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Validate every field, naming the first that is out of range.
    pub fn check(&self) -> Result<()> {
        self.validate().map_err(validation_error)
    }

    /// Take a backend parameter, or `None` if absent.
    pub fn take_param(&mut self, key: &str) -> Option<String> {
        self.params.remove(key)
    }

    /// The URL's scheme (`redis`, `amqps`, ...), which picks the backend.
    pub fn scheme(&self) -> &str {
        self.url.expose().scheme()
    }

    /// Fail unless the URL's scheme is one of `schemes`, naming them: a
    /// backend's own check that it was handed a URL for it.
    pub fn expect_scheme(&self, backend: &str, schemes: &[&str]) -> Result<()> {
        if schemes.contains(&self.scheme()) {
            return Ok(());
        }
        Err(Error::config(format!(
            "url: the {backend} backend takes {} URLs, got scheme {:?}",
            schemes
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(" or "),
            self.scheme()
        )))
    }

    /// Fail if backend parameters are left that `backend` did not take.
    pub fn reject_unknown_params(&self, backend: &str, known: &[&str]) -> Result<()> {
        match self.params.keys().next() {
            None => Ok(()),
            Some(key) => {
                let mut all: Vec<&str> = vec![
                    "lease",
                    "max_payload",
                    "idempotency_window",
                    "connect_timeout",
                    "request_timeout",
                    "queue",
                ];
                all.extend_from_slice(known);
                Err(Error::config(format!(
                    "{key}: unknown option for the {backend} backend; known options are {}",
                    all.join(", ")
                )))
            }
        }
    }
}

/// Parse a duration: `250ms`, `30s`, `5m`, `2h`, `7d`, or plain seconds.
///
/// ```
/// use queue_core::config::parse_duration;
/// use std::time::Duration;
/// assert_eq!(parse_duration("lease", "250ms").unwrap(), Duration::from_millis(250));
/// assert_eq!(parse_duration("lease", "90").unwrap(), Duration::from_secs(90));
/// assert!(parse_duration("lease", "soon").unwrap_err().to_string().contains("lease"));
/// ```
pub fn parse_duration(field: &str, value: &str) -> Result<Duration> {
    let bad = || {
        Error::config(format!(
            "{field}: expected a duration like 250ms, 30s, 5m, 2h or 7d, got {value:?}"
        ))
    };
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(bad)
}

fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) || ms == 0 {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

fn duration_in(
    d: &Duration,
    min: Duration,
    max: Duration,
    code: &'static str,
) -> Result<(), ValidationError> {
    if *d < min || *d > max {
        let mut err = ValidationError::new(code);
        err.message = Some(Cow::Owned(format!(
            "must be between {} and {}, got {}",
            format_duration(min),
            format_duration(max),
            format_duration(*d)
        )));
        return Err(err);
    }
    Ok(())
}

/// Check a lease given at run time (a consumer's or an `extend`): an
/// [`ErrorKind::InvalidInput`] error naming the allowed range otherwise.
pub fn check_lease(lease: Duration) -> Result<()> {
    validate_lease(&lease).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("lease: {}", e.message.as_deref().unwrap_or("out of range")),
        )
    })
}

/// `validator` check of a lease (100ms to 12h), for settings structs.
pub fn validate_lease(d: &Duration) -> Result<(), ValidationError> {
    duration_in(d, MIN_LEASE, MAX_LEASE, "lease_range")
}

fn validate_idempotency_window(d: &Duration) -> Result<(), ValidationError> {
    duration_in(
        d,
        Duration::from_secs(1),
        Duration::from_secs(7 * 86_400),
        "window_range",
    )
}

fn validate_connect_timeout(d: &Duration) -> Result<(), ValidationError> {
    duration_in(
        d,
        Duration::from_millis(100),
        Duration::from_secs(300),
        "timeout_range",
    )
}

fn validate_request_timeout(d: &Duration) -> Result<(), ValidationError> {
    duration_in(
        d,
        Duration::from_millis(100),
        Duration::from_secs(600),
        "timeout_range",
    )
}

/// Turn `validator` errors into one [`ErrorKind::Config`] error whose message
/// names every failing field (`field: why`), sorted by field name.
pub fn validation_error(errors: ValidationErrors) -> Error {
    let mut parts = Vec::new();
    collect(&errors, "", &mut parts);
    parts.sort();
    Error::new(ErrorKind::Config, parts.join("; ")).with_source(errors)
}

fn collect(errors: &ValidationErrors, prefix: &str, parts: &mut Vec<String>) {
    for (field, kind) in errors.errors() {
        let name = if prefix.is_empty() {
            field.to_string()
        } else {
            format!("{prefix}.{field}")
        };
        match kind {
            ValidationErrorsKind::Field(list) => {
                for e in list {
                    let why = e
                        .message
                        .as_deref()
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("invalid ({})", e.code));
                    let name = if name == "__all__" { "options" } else { &name };
                    parts.push(format!("{name}: {why}"));
                }
            }
            ValidationErrorsKind::Struct(inner) => collect(inner, &name, parts),
            ValidationErrorsKind::List(map) => {
                for (index, inner) in map {
                    collect(inner, &format!("{name}[{index}]"), parts);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn every_scheme_parses_and_picks_nothing_yet() {
        for (url, scheme) in [
            ("memory://", "memory"),
            ("redis://127.0.0.1:6379", "redis"),
            ("rediss://h:6380", "rediss"),
            ("amqp://guest:guest@127.0.0.1:5672/%2f", "amqp"),
            ("kafka://127.0.0.1:9092,127.0.0.1:9093", "kafka"),
            ("sqs://us-east-1?endpoint=http://127.0.0.1:4566", "sqs"),
            ("postgres://u@h/db", "postgres"),
        ] {
            assert_eq!(
                QueueConfig::from_url(url).unwrap().scheme(),
                scheme,
                "{url}"
            );
        }
        let config = QueueConfig::from_url("nope://u:hunter2@h").unwrap();
        let err = config
            .expect_scheme("redis", &["redis", "rediss"])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.message().contains("redis:// or rediss://")
                && err.message().contains("scheme \"nope\""),
            "{err}"
        );
        assert!(!format!("{err:?}").contains("hunter2"));
    }

    #[test]
    fn bad_urls_are_typed_and_never_leak_credentials() {
        for (url, fragment) in [
            ("not a url", "url: malformed URL"),
            (
                "redis://u:hunter2@h?lease=0s",
                "lease: must be between 100ms and 43200s, got 0ms",
            ),
            (
                "redis://u:hunter2@h?lease=forever",
                "lease: expected a duration",
            ),
            (
                "redis://u:hunter2@h?max_payload=0",
                "max_payload: must be 1",
            ),
            ("redis://u:hunter2@h?queue=bad%20name", "queue: queue name"),
            (
                "amqp://u:hunter2@h?idempotency_window=9999d",
                "idempotency_window: must be between",
            ),
            ("redis://:hunter2@[::1", "url: malformed URL"),
        ] {
            let err = QueueConfig::from_url(url).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{url}");
            let text = format!("{err} {err:?}");
            assert!(text.contains(fragment), "{url}: {text}");
            assert!(!text.contains("hunter2"), "{url} leaked: {text}");
        }
    }

    #[test]
    fn debug_and_display_redact_passwords_and_secret_params() {
        let config = QueueConfig::from_url(
            "sqs://us-east-1?endpoint=http://127.0.0.1:5000&aws_secret_access_key=abc123&token=t0k&sasl.password=pw9&api_key=k3y",
        )
        .unwrap();
        let text = format!("{config:?} {}", config.url);
        for secret in ["abc123", "t0k", "pw9", "k3y"] {
            assert!(!text.contains(secret), "{secret} shown in {text}");
        }
        assert!(text.contains("endpoint=http"), "{text}");
        let config = QueueConfig::from_url("amqp://user:pa55@h:5672/vh").unwrap();
        assert_eq!(config.url.to_string(), "amqp://user:***@h:5672/vh");
        assert_eq!(config.url.expose().password(), Some("pa55"));
        assert_eq!(config.url.address(), "h:5672");
    }

    #[test]
    fn host_lists_are_kept() {
        let config = QueueConfig::from_url("kafka://u:pw@10.0.0.1:9092, b:9093/?lease=5s").unwrap();
        assert_eq!(config.url.hosts(), ["10.0.0.1:9092", "b:9093"]);
        assert_eq!(
            config.url.to_string(),
            "kafka://u:***@10.0.0.1:9092,b:9093/?lease=5s"
        );
    }

    #[test]
    fn environment_overrides_the_url_query() {
        let config = QueueConfig::from_lookup(lookup(&[
            ("QUEUE_URL", "redis://127.0.0.1?lease=10s"),
            ("QUEUE_LEASE", "2m"),
            ("QUEUE_DEFAULT_QUEUE", "emails"),
        ]))
        .unwrap();
        assert_eq!(config.lease, Duration::from_secs(120));
        assert_eq!(config.default_queue.unwrap().as_str(), "emails");

        let config = QueueConfig::from_lookup(lookup(&[])).unwrap();
        assert_eq!(config.scheme(), "memory");

        let err = QueueConfig::from_lookup(lookup(&[("QUEUE_LEASE", "13h")])).unwrap_err();
        assert!(err.message().starts_with("lease: must be between"), "{err}");
        let err = QueueConfig::from_lookup(lookup(&[("QUEUE_LEASE", "x")])).unwrap_err();
        assert!(
            err.message()
                .starts_with("QUEUE_LEASE: expected a duration"),
            "{err}"
        );
        let err = QueueConfig::from_lookup(lookup(&[("QUEUE_URL", "not a url")])).unwrap_err();
        assert!(
            err.message().starts_with("QUEUE_URL: malformed URL"),
            "{err}"
        );
    }

    #[test]
    fn unknown_backend_params_are_rejected_by_name() {
        let config = QueueConfig::from_url("memory://?colour=blue").unwrap();
        let err = config.reject_unknown_params("memory", &[]).unwrap_err();
        assert!(err
            .message()
            .starts_with("colour: unknown option for the memory backend"));
    }
}
