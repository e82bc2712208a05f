//! The backend's URL and options, validated into [`Settings`].

use std::str::FromStr;

use queue_core::{Error, QueueConfig, Result};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::DEFAULT_SCHEMA;

pub(crate) const SCHEMES: [&str; 2] = ["postgres", "postgresql"];

/// The URL parameters this backend reads besides the common ones.
const PARAMS: [&str; 6] = [
    "schema",
    "pool_size",
    "sslmode",
    "sslrootcert",
    "application_name",
    "migrate",
];

/// Most connections one backend opens (`pool_size`), by default.
pub const DEFAULT_POOL_SIZE: u32 = 10;

pub(crate) struct Settings {
    pub(crate) connect: PgConnectOptions,
    pub(crate) schema: String,
    pub(crate) pool_size: u32,
    pub(crate) migrate: bool,
    /// `host:port`, for errors (never the credentials).
    pub(crate) address: String,
}

impl std::fmt::Debug for Settings {
    // The connect options hold the password: only the address is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("address", &self.address)
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("migrate", &self.migrate)
            .finish_non_exhaustive()
    }
}

impl Settings {
    pub(crate) fn from_config(config: &QueueConfig) -> Result<Settings> {
        config.expect_scheme("postgres", &SCHEMES)?;
        let mut rest = config.clone();
        let schema = rest.take_param("schema");
        let pool_size = rest.take_param("pool_size");
        let sslmode = rest.take_param("sslmode");
        let sslrootcert = rest.take_param("sslrootcert");
        let application_name = rest.take_param("application_name");
        let migrate = rest.take_param("migrate");
        rest.reject_unknown_params("postgres", &PARAMS)?;
        let schema = match schema {
            None => DEFAULT_SCHEMA.to_owned(),
            Some(s) => check_schema(&s)?,
        };
        let pool_size = match pool_size {
            None => DEFAULT_POOL_SIZE,
            Some(text) => match text.parse::<u32>() {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => {
                    return Err(Error::config(format!(
                        "pool_size: must be 1 to 1000 connections, got {text:?}"
                    )))
                }
            },
        };
        let migrate = match migrate.as_deref() {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(Error::config(format!(
                    "migrate: must be true or false, got {other:?}"
                )))
            }
        };
        if config.url.hosts().len() > 1 {
            return Err(Error::config(
                "url: the postgres backend connects to one host",
            ));
        }
        // sqlx reads the URL without the parameters taken above (which it
        // would refuse or misread), then the TLS ones are set here.
        let mut url = config.url.expose().clone();
        url.set_query(None);
        url.set_fragment(None);
        // The driver's message may quote the URL: keep only the kind.
        let mut connect = PgConnectOptions::from_str(url.as_str())
            .map_err(|_| Error::config("url: not a PostgreSQL URL"))?;
        let ssl_mode = match sslmode.as_deref() {
            None => None,
            Some(mode) => Some(
                PgSslMode::from_str(mode)
                    .map_err(|_| Error::config(format!(
                        "sslmode: must be disable, allow, prefer, require, verify-ca or verify-full, got {mode:?}"
                    )))?,
            ),
        };
        let needs_tls = matches!(
            ssl_mode,
            Some(PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull)
        );
        if needs_tls && !cfg!(feature = "tls") {
            return Err(Error::config(
                "sslmode: TLS needs feature `tls` of crate `queue-postgres` (feature `postgres-tls` of crate `queue`)",
            ));
        }
        // Without TLS compiled in, never try it.
        let ssl_mode = ssl_mode.unwrap_or(if cfg!(feature = "tls") {
            PgSslMode::Prefer
        } else {
            PgSslMode::Disable
        });
        connect = connect.ssl_mode(ssl_mode);
        if let Some(path) = sslrootcert {
            if !std::path::Path::new(&path).is_file() {
                return Err(Error::config(format!(
                    "sslrootcert: {path:?} is not a readable file"
                )));
            }
            connect = connect.ssl_root_cert(path);
        }
        connect = connect.application_name(application_name.as_deref().unwrap_or("queue"));
        Ok(Settings {
            connect,
            schema,
            pool_size,
            migrate,
            address: config.url.address(),
        })
    }
}

/// The longest schema name: the notification channel `queue_jobs:<schema>`
/// must fit PostgreSQL's 63-byte identifiers.
pub const MAX_SCHEMA_LEN: usize = 52;

/// A schema name: 1 to [`MAX_SCHEMA_LEN`] lowercase ASCII letters, digits
/// or `_`, starting with a letter or `_` (so it needs no quoting anywhere).
pub(crate) fn check_schema(name: &str) -> Result<String> {
    let fits = (1..=MAX_SCHEMA_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
        && !name.starts_with("pg_");
    if fits {
        Ok(name.to_owned())
    } else {
        Err(Error::config(format!(
            "schema: must be 1 to {MAX_SCHEMA_LEN} of [a-z0-9_], not starting with a digit or pg_, got {name:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use queue_core::ErrorKind;

    fn settings(url: &str) -> Result<Settings> {
        Settings::from_config(&QueueConfig::from_url(url)?)
    }

    #[test]
    fn defaults_and_parameters() {
        let s = settings("postgres://u:pw@db.example:6543/app").expect("valid");
        assert_eq!(
            (s.schema.as_str(), s.pool_size, s.migrate),
            ("queue", DEFAULT_POOL_SIZE, true)
        );
        assert_eq!(s.address, "db.example:6543");
        let s = settings("postgresql://127.0.0.1/test?schema=jobs_2&pool_size=3&migrate=false")
            .expect("valid");
        assert_eq!(
            (s.schema.as_str(), s.pool_size, s.migrate),
            ("jobs_2", 3, false)
        );
    }

    #[test]
    fn bad_urls_are_config_errors_naming_the_field_without_the_password() {
        for (url, field) in [
            (
                "postgres://u:hunter2@h/db?schema=Bad-Name",
                "schema: must be",
            ),
            ("postgres://u:hunter2@h/db?schema=pg_x", "schema: must be"),
            (
                "postgres://u:hunter2@h/db?schema=a_schema_name_longer_than_fifty_two_bytes_in_all_xyzw",
                "schema: must be 1 to 52",
            ),
            (
                "postgres://u:hunter2@h/db?pool_size=0",
                "pool_size: must be",
            ),
            (
                "postgres://u:hunter2@h/db?pool_size=lots",
                "pool_size: must be",
            ),
            (
                "postgres://u:hunter2@h/db?migrate=maybe",
                "migrate: must be",
            ),
            (
                "postgres://u:hunter2@h/db?sslmode=sometimes",
                "sslmode: must be",
            ),
            ("postgres://u:hunter2@h/db?colour=red", "colour"),
            ("postgres://u:hunter2@h1,h2/db", "url:"),
        ] {
            let error = settings(url).expect_err(url);
            assert_eq!(error.kind(), ErrorKind::Config, "{url}");
            assert!(
                error.message().contains(field),
                "{url}: {}",
                error.message()
            );
            assert!(
                !error.message().contains("hunter2"),
                "{url}: {}",
                error.message()
            );
        }
        #[cfg(not(feature = "tls"))]
        {
            let error = settings("postgres://h/db?sslmode=require").expect_err("no tls");
            assert!(
                error.message().contains("feature `tls`"),
                "{}",
                error.message()
            );
        }
    }
}
