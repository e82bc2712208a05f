//! A web dashboard for `queue`: every queue of every backend (depth by
//! state, the oldest job's wait, processed and failed per second with a
//! chart over the last hour, paused or running, backend health), a queue's
//! dead letters (redrive one or all, purge, pause and resume), tracked jobs
//! (by status, with a search; retry a dead one, forget one), the live
//! workers and the periodic job schedules (pause, resume, trigger now,
//! remove), as HTML pages and as a JSON API under the same router.
//!
//! Mount it in an axum app under any path, behind the app's own auth:
//!
//! ```no_run
//! # async fn f(backend: std::sync::Arc<dyn queue_core::Backend>) -> std::io::Result<()> {
//! use queue_web::Dashboard;
//!
//! let dashboard = Dashboard::for_backend("main", backend).router();
//! let app = axum::Router::new().nest("/admin/queues", dashboard);
//! // app.layer(your_auth_middleware) guards it like any other route.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! or run it standalone with `queue serve` (crate `queue-cli`), which adds
//! `/metrics` and `/healthz`.
//!
//! **Safety.** Without a token only loopback host names (`127.0.0.1`,
//! `localhost`, `[::1]`) and those of [`Dashboard::allowed_hosts`] are
//! answered (`421` otherwise), so a page that rebinds its name to
//! 127.0.0.1 cannot read the dashboard. Every page and answer carries a
//! strict Content-Security-Policy (scripts and styles only from the
//! dashboard's own two assets, no inline code, no frames) and `nosniff`;
//! payloads, errors and names are HTML-escaped everywhere. Every change is
//! a `POST` that carries the dashboard's CSRF token (a form field, or the
//! `x-csrf-token` header for the API) and comes from the dashboard's own
//! origin (a foreign `Origin` or `Sec-Fetch-Site: cross-site` is refused),
//! and the pages ask for confirmation first. [`Dashboard::read_only`]
//! hides every action and refuses every `POST`. [`Dashboard::token`]
//! (at least 16 bytes) demands a token on every request: a `Bearer`
//! header, or `?token=` once, which opens a session whose cookie holds a
//! random id scoped to the mount point. Requests are answered within
//! [`Dashboard::request_timeout`], and at most
//! [`Dashboard::max_concurrent_requests`] are served at once. `queue
//! serve` refuses to bind anything but loopback without a token.
//! docs/operations.md has the whole security table and what to do when
//! mounting.
//!
//! **Cost to the broker.** Samples are shared by every viewer and taken at
//! most once a second: a refresh costs one stats call per queue (one round
//! trip on Redis); queue lists and health checks are cached for ten
//! seconds. Dead letters are read a page of previews at a time, and a page
//! is shared by every viewer for three seconds. While nobody looks, a
//! sample every ten seconds keeps the hour's chart going. The Schedules
//! page reads each coordination store's schedule and tick records on
//! every refresh (two reads on Redis).
//!
//! **Schedules.** A backend that keeps a coordination store (memory,
//! Redis) shows the periodic job schedules in it; [`Dashboard::schedules`]
//! shows others (a store of another namespace, or one beside a broker
//! that keeps none), and a backend with neither shows a line saying
//! schedules need a store.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use queue_core::{Backend, JobStore, QueueName};
use queue_worker::schedules::Schedules;
use queue_worker::QueueManager;

mod actions;
mod assets;
mod dead_pages;
mod html;
mod request;
mod routes;
mod sampler;
mod screens;
mod security;
mod svg;

pub use sampler::{BackendView, Overview, QueueView, RatePoint};
pub use security::{bearer_matches, set_safety_headers, MIN_TOKEN_LEN};

/// Builds the dashboard's router: which backends it shows, its job store,
/// and its safety settings.
#[derive(Debug, Clone)]
#[must_use]
pub struct Dashboard {
    backends: Vec<(String, Arc<dyn Backend>)>,
    manager: Option<Arc<QueueManager>>,
    store: Option<Arc<dyn JobStore>>,
    queues: Vec<(String, QueueName)>,
    schedules: Vec<(String, Schedules)>,
    read_only: bool,
    token: Option<String>,
    allowed_hosts: Option<Vec<String>>,
    secure_cookie: bool,
    refresh: Duration,
    sample_every: Duration,
    request_timeout: Duration,
    max_concurrent_requests: usize,
    extra_routes: Vec<(String, axum::routing::MethodRouter)>,
}

/// Defaults every constructor shares.
const DEFAULT_REFRESH: Duration = Duration::from_secs(2);
const DEFAULT_SAMPLE_EVERY: Duration = Duration::from_secs(1);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 64;

impl Dashboard {
    fn new(
        backends: Vec<(String, Arc<dyn Backend>)>,
        manager: Option<Arc<QueueManager>>,
        store: Option<Arc<dyn JobStore>>,
    ) -> Self {
        Dashboard {
            backends,
            manager,
            store,
            queues: Vec::new(),
            schedules: Vec::new(),
            read_only: false,
            token: None,
            allowed_hosts: None,
            secure_cookie: false,
            refresh: DEFAULT_REFRESH,
            sample_every: DEFAULT_SAMPLE_EVERY,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            extra_routes: Vec::new(),
        }
    }

    /// A dashboard of one backend, named `name`, with the job store the
    /// backend keeps (`Backend::default_job_store`: Redis's shared store,
    /// memory's in-process one; none for the other brokers).
    pub fn for_backend(name: impl Into<String>, backend: Arc<dyn Backend>) -> Self {
        let store = backend.default_job_store();
        Dashboard::new(vec![(name.into(), backend)], None, store)
    }

    /// A dashboard of every backend of a [`QueueManager`], with its job
    /// store and the queues it routes or has used (beside the ones each
    /// backend lists).
    pub fn for_manager(manager: Arc<QueueManager>) -> Self {
        let backends = manager
            .backends()
            .map(|(name, b)| (name.to_owned(), b.clone()))
            .collect();
        let store = Some(manager.job_store().clone());
        Dashboard::new(backends, Some(manager), store)
    }

    /// Show another backend beside the others.
    pub fn backend(mut self, name: impl Into<String>, backend: Arc<dyn Backend>) -> Self {
        self.backends.push((name.into(), backend));
        self
    }

    /// Use `store` for the jobs pages (instead of the backend's own).
    pub fn job_store(mut self, store: Arc<dyn JobStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Always show `queue` of backend `backend`, for backends that cannot
    /// list their queues (RabbitMQ).
    pub fn queue(mut self, backend: impl Into<String>, queue: QueueName) -> Self {
        self.queues.push((backend.into(), queue));
        self
    }

    /// Show and manage `schedules` under the name `backend` on the
    /// Schedules page, instead of the schedules kept in that backend's
    /// own coordination store. Without this, each backend that keeps a
    /// store (memory, Redis: `Backend::coordination`) shows the schedules
    /// in it, and one that keeps none (RabbitMQ, SQS, Kafka) shows a line
    /// saying schedules need a store. Give the `Schedules` the
    /// application's runners were started from (or a clone of it) and a
    /// change made on the dashboard reaches them at once; a name that is
    /// none of the dashboard's backends gets a section of its own.
    ///
    /// ```
    /// # let backend = std::sync::Arc::new(queue_core::MemoryBackend::new());
    /// use queue_worker::schedules::Schedules;
    /// let schedules = Schedules::new(backend.clone())?; // or Schedules::with_store(backend, store)
    /// let dashboard = queue_web::Dashboard::for_backend("main", backend).schedules("main", schedules);
    /// # Ok::<(), queue_core::Error>(())
    /// ```
    pub fn schedules(mut self, backend: impl Into<String>, schedules: Schedules) -> Self {
        let backend = backend.into();
        self.schedules.retain(|(name, _)| *name != backend);
        self.schedules.push((backend, schedules));
        self
    }

    /// Hide every action and refuse every change (`403`).
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Demand `token` on every request: `Authorization: Bearer TOKEN`, or
    /// `?token=TOKEN` on a page once, which opens a session: an
    /// `HttpOnly`, `SameSite=Strict` cookie scoped to the mount point
    /// holding a random session id (never the token), valid for 12 hours,
    /// and a redirect to the page without the token.
    ///
    /// A token shorter than 16 bytes is refused with a
    /// [`Config`](queue_core::ErrorKind::Config) error.
    ///
    /// ```
    /// # let backend = std::sync::Arc::new(queue_core::MemoryBackend::new());
    /// let dashboard = queue_web::Dashboard::for_backend("main", backend);
    /// assert!(dashboard.clone().token("short").is_err());
    /// let dashboard = dashboard.token("a-long-random-secret-of-32-chars")?;
    /// # Ok::<(), queue_core::Error>(())
    /// ```
    pub fn token(mut self, token: impl Into<String>) -> Result<Self, queue_core::Error> {
        let token = token.into();
        if token.len() < security::MIN_TOKEN_LEN {
            return Err(queue_core::Error::new(
                queue_core::ErrorKind::Config,
                format!(
                    "the dashboard's token must be at least {} bytes (it is {})",
                    security::MIN_TOKEN_LEN,
                    token.len()
                ),
            ));
        }
        self.token = Some(token);
        Ok(self)
    }

    /// Answer requests naming these hosts (`admin.example.com`, or
    /// `admin.example.com:8443` for one port only) besides the loopback
    /// names. Without a token the dashboard answers only `127.0.0.1`,
    /// `localhost` and `[::1]` (any port) and refuses other `Host`s with
    /// `421`, so a web page that rebinds its own name to 127.0.0.1 cannot
    /// read it; mounted behind another name, list that name here. With a
    /// token, any host is answered unless a list is given. A change
    /// (`POST`) whose `Origin` is one of these hosts is accepted as the
    /// dashboard's own (a proxy that rewrites `Host`).
    pub fn allowed_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_hosts.get_or_insert_with(Vec::new).extend(
            hosts
                .into_iter()
                .map(|h| h.into().trim().to_ascii_lowercase()),
        );
        self
    }

    /// Mark the session cookie `Secure` always (default: only when the
    /// request came over TLS, as an `https` URI or a proxy's
    /// `X-Forwarded-Proto: https` says). A `Secure` cookie at the root
    /// path is named with the `__Host-` prefix.
    pub fn secure_cookie(mut self, secure: bool) -> Self {
        self.secure_cookie = secure;
        self
    }

    /// Answer `408` to a request not done within `timeout` (default
    /// 30 s): a slow broker cannot hold a connection open for ever.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Serve at most `max` requests at once (default 64, at least 1); a
    /// request beyond them is answered `503` at once (load shedding), so
    /// none waits unbounded for a slot.
    pub fn max_concurrent_requests(mut self, max: usize) -> Self {
        self.max_concurrent_requests = max.max(1);
        self
    }

    /// Serve `route` at `path` beside the dashboard's own, behind the
    /// same checks (host, origin, token, limits) and with the same safety
    /// headers: how `queue serve` adds `/metrics`.
    pub fn route(mut self, path: impl Into<String>, route: axum::routing::MethodRouter) -> Self {
        self.extra_routes.push((path.into(), route));
        self
    }

    /// How often open pages refresh themselves (default 2 s, at least
    /// 500 ms).
    pub fn refresh(mut self, every: Duration) -> Self {
        self.refresh = every.max(Duration::from_millis(500));
        self
    }

    /// Serve a sample younger than this to every viewer instead of
    /// taking a new one (default 1 s; zero samples on every request, as
    /// the web benchmark does to time a whole sample).
    pub fn sample_every(mut self, every: Duration) -> Self {
        self.sample_every = every;
        self
    }

    /// The router: pages at `/`, `/queues/{backend}/{queue}`, `/jobs`,
    /// `/jobs/{id}`, `/workers` and `/schedules`, the JSON API under `/api`, assets under
    /// `/assets`. Mount it with `Router::nest` under any path; links follow
    /// the mount point. Call it inside a tokio runtime (it starts the
    /// background sampler, which stops when the router is dropped).
    pub fn router(self) -> axum::Router {
        let schedules = screens::schedules::sets(&self.backends, self.schedules);
        let state = Arc::new(State {
            schedules,
            backends: self.backends,
            manager: self.manager,
            store: self.store,
            queues: self.queues,
            read_only: self.read_only,
            hosts: security::HostRule {
                any: self.token.is_some() && self.allowed_hosts.is_none(),
                allowed: self.allowed_hosts.unwrap_or_default(),
            },
            token: self.token,
            sessions: security::Sessions::default(),
            secure_cookie: self.secure_cookie,
            csrf: uuid::Uuid::new_v4().simple().to_string(),
            refresh: self.refresh,
            sampler: sampler::Sampler::new(self.sample_every),
            dead_pages: dead_pages::DeadPages::default(),
        });
        sampler::spawn_background(&state);
        routes::router(
            state,
            routes::Limits {
                request_timeout: self.request_timeout,
                max_concurrent_requests: self.max_concurrent_requests,
            },
            self.extra_routes,
        )
    }
}

/// What every handler shares.
pub(crate) struct State {
    pub(crate) backends: Vec<(String, Arc<dyn Backend>)>,
    pub(crate) manager: Option<Arc<QueueManager>>,
    pub(crate) store: Option<Arc<dyn JobStore>>,
    pub(crate) queues: Vec<(String, QueueName)>,
    pub(crate) schedules: Vec<screens::schedules::ScheduleSet>,
    pub(crate) read_only: bool,
    pub(crate) hosts: security::HostRule,
    pub(crate) token: Option<String>,
    pub(crate) sessions: security::Sessions,
    pub(crate) secure_cookie: bool,
    pub(crate) csrf: String,
    pub(crate) refresh: Duration,
    pub(crate) sampler: sampler::Sampler,
    pub(crate) dead_pages: dead_pages::DeadPages,
}

impl State {
    pub(crate) fn backend(&self, name: &str) -> Option<&Arc<dyn Backend>> {
        self.backends
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b)
    }
}
