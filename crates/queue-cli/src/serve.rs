//! `queue serve`: the web dashboard standalone, with `/metrics` and
//! `/healthz`.

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Args;
use queue::prometheus::PrometheusExporter;

use crate::ops::{input, queue_name, Target};

/// Options of `queue serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    target: Target,
    /// Address to listen on. Anything but a loopback address needs a
    /// token.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// Demand this token on every request (a `Bearer` header, or
    /// `?token=` once in the browser).
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
}

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let token = args.token.filter(|t| !t.is_empty());
    if !args.bind.ip().is_loopback() && token.is_none() {
        return Err(input(format!(
            "refusing to serve on {} without a token: anyone who can reach it could purge queues; \
             pass --token (or set QUEUE_WEB_TOKEN), or bind 127.0.0.1",
            args.bind
        )));
    }
    if let Some(token) = &token {
        if token.len() < 16 {
            return Err(input("the token must be at least 16 characters"));
        }
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
    let mut dashboard =
        queue_web::Dashboard::for_backend(name, backend.clone()).read_only(args.read_only);
    for queue in queues {
        dashboard = dashboard.queue(name, queue);
    }
    if let Some(token) = &token {
        dashboard = dashboard.token(token.clone());
    }
    let metrics_token = token.clone();
    let health_backend = backend.clone();
    let app = dashboard
        .router()
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let exporter = exporter.clone();
                let token = metrics_token.clone();
                async move {
                    if token
                        .as_deref()
                        .is_some_and(|t| !queue_web::bearer_matches(&headers, t))
                    {
                        return (StatusCode::UNAUTHORIZED, "a token is required\n".to_owned())
                            .into_response();
                    }
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        exporter.render(),
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let backend = health_backend.clone();
                async move {
                    let health = backend.admin().health().await;
                    let status = if health.healthy {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, axum::Json(health)).into_response()
                }
            }),
        );
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
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("the server failed")?;
    Ok(())
}
