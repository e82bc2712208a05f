//! `queue serve`: the web dashboard standalone, with `/metrics` and
//! `/healthz`, on a server that bounds what a client can hold: a header
//! read timeout per connection, and the dashboard's request timeout and
//! limit on requests at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Args;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use queue::prometheus::PrometheusExporter;
use queue::Backend;

use crate::ops::{queue_name, Target};

/// Options of `queue serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    target: Target,
    /// Address to listen on. Anything but a loopback address needs a
    /// token.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// Demand this token (at least 16 characters) on every request but
    /// /healthz: a `Bearer` header, or `?token=` once in the browser,
    /// which opens a session cookie.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "QUEUE_WEB_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Show everything, change nothing: actions are hidden and refused.
    #[arg(long)]
    read_only: bool,
    /// Always show this queue (repeat for more): for backends that cannot
    /// list their queues (RabbitMQ).
    #[arg(long = "queue", value_name = "QUEUE")]
    queues: Vec<String>,
    /// Also answer requests for this host name (repeat for more), beside
    /// 127.0.0.1, localhost and [::1]: the name a reverse proxy forwards.
    /// Without a token other names are refused (421), which stops DNS
    /// rebinding; with a token any name is answered unless some are
    /// listed.
    #[arg(long = "allow-host", value_name = "HOST")]
    allowed_hosts: Vec<String>,
    /// Close a connection whose request headers have not all arrived
    /// within this time.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    header_read_timeout: Duration,
    /// Answer 408 to a request not done within this time.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Serve at most this many requests at once; others wait their turn.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_concurrent_requests: usize,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    queue::config::parse_duration("duration", text)
        .map_err(|e| e.to_string())
        .and_then(|d| {
            if d.is_zero() {
                Err("must be more than zero".to_owned())
            } else {
                Ok(d)
            }
        })
}

/// How long one answer of `/healthz` is reused: a flood of probes costs
/// the broker one check a second.
const HEALTH_CACHE: Duration = Duration::from_secs(1);
/// How long a shutdown waits for open requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// `/healthz`: healthy or unhealthy, nothing else (the broker's error,
/// with its host and port, stays in the dashboard behind the token).
struct Health {
    backend: Arc<dyn Backend>,
    last: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

impl Health {
    async fn answer(&self) -> Response {
        let healthy = {
            let mut last = self.last.lock().await;
            match *last {
                Some((at, healthy)) if at.elapsed() < HEALTH_CACHE => healthy,
                _ => {
                    let healthy = self.backend.admin().health().await.healthy;
                    *last = Some((Instant::now(), healthy));
                    healthy
                }
            }
        };
        let (status, body) = if healthy {
            (StatusCode::OK, "healthy\n")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n")
        };
        let mut response = (status, body).into_response();
        queue_web::set_safety_headers(response.headers_mut());
        response
    }
}

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let token = args.token.filter(|t| !t.is_empty());
    if !args.bind.ip().is_loopback() && token.is_none() {
        return Err(crate::ops::input(format!(
            "refusing to serve on {} without a token: anyone who can reach it could purge queues; \
             pass --token (or set QUEUE_WEB_TOKEN), or bind 127.0.0.1",
            args.bind
        )));
    }
    let queues = args
        .queues
        .iter()
        .map(|q| queue_name(q))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let backend = args.target.connect().await?;
    let exporter =
        PrometheusExporter::install().context("could not install the metrics exporter")?;
    let name = backend.capabilities().backend;
    let mut dashboard = queue_web::Dashboard::for_backend(name, backend.clone())
        .read_only(args.read_only)
        .request_timeout(args.request_timeout)
        .max_concurrent_requests(args.max_concurrent_requests)
        .route(
            "/metrics",
            get(move || {
                let exporter = exporter.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        exporter.render(),
                    )
                }
            }),
        );
    if !args.allowed_hosts.is_empty() {
        dashboard = dashboard.allowed_hosts(args.allowed_hosts.iter().cloned());
    }
    // The Schedules page: QUEUE_COORDINATION_URL's store when it is set
    // (RabbitMQ, SQS and Kafka keep none of their own), else the backend's.
    if let Some(store) = queue::coordination_for(&*backend)
        .await
        .context("could not connect to the coordination store")?
    {
        let schedules = queue::schedules::Schedules::with_store(backend.clone(), store);
        dashboard = dashboard.schedules(name, schedules);
    }
    for queue in queues {
        dashboard = dashboard.queue(name, queue);
    }
    if let Some(token) = &token {
        dashboard = dashboard.token(token.clone()).context("bad --token")?;
    }
    // /healthz is open (load balancers carry no token) and says only
    // healthy or unhealthy.
    let health = Arc::new(Health {
        backend,
        last: tokio::sync::Mutex::new(None),
    });
    let app = axum::Router::new()
        .route(
            "/healthz",
            get(move || {
                let health = health.clone();
                async move { health.answer().await }
            }),
        )
        .merge(dashboard.router());
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("could not listen on {}", args.bind))?;
    let local = listener.local_addr()?;
    // The address on stdout (scripts and tests read it), notes on stderr.
    println!("http://{local}/");
    eprintln!(
        "serving the dashboard of {name} on http://{local}/{}{} (Ctrl-C stops)",
        if token.is_some() {
            " (token required)"
        } else {
            ""
        },
        if args.read_only { ", read-only" } else { "" }
    );
    run_server(listener, app, args.header_read_timeout).await;
    Ok(())
}

/// Serve `app` on `listener` until Ctrl-C, each connection with hyper's
/// header read timeout (axum's own `serve` sets none), then let open
/// requests finish for a few seconds.
async fn run_server(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    header_timeout: Duration,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: try again shortly
                    // rather than spin.
                    eprintln!("could not accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that stalls or hangs up ends its own connection.
            let _ = connection.await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
}
