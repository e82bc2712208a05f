//! The router: pages (whose failures render as error pages), the JSON
//! API, the assets, and the guard every request passes.

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::ServiceBuilder;
use tower_http::timeout::TimeoutLayer;

use crate::request::{render_page_errors, Failure};
use crate::screens::{job, jobs, overview, queue, schedules, workers};
use crate::{actions, assets, security, State};

/// What bounds the cost of requests: each is answered within
/// `request_timeout`, and at most `max_concurrent_requests` run at once
/// (one more is answered 503).
pub(crate) struct Limits {
    pub(crate) request_timeout: Duration,
    pub(crate) max_concurrent_requests: usize,
}

pub(crate) fn router(
    state: Arc<State>,
    limits: Limits,
    extra: Vec<(String, axum::routing::MethodRouter)>,
) -> Router {
    let pages = Router::new()
        .route("/", get(overview::overview_page))
        .route("/queues/{backend}/{queue}", get(queue::queue_page))
        .route(
            "/queues/{backend}/{queue}/{action}",
            post(actions::queue_form),
        )
        .route("/jobs", get(jobs::jobs_page))
        .route("/jobs/{id}", get(job::job_page))
        .route("/jobs/{id}/{action}", post(actions::job_form))
        .route("/workers", get(workers::workers_page))
        .route("/schedules", get(schedules::schedules_page))
        .route(
            "/schedules/{backend}/{name}/{action}",
            post(actions::schedule_form),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            render_page_errors,
        ));
    let api = Router::new()
        .route("/api/session", get(security::api_session))
        .route("/api/overview", get(overview::api_overview))
        .route("/api/queues/{backend}/{queue}", get(queue::api_queue))
        .route(
            "/api/queues/{backend}/{queue}/dead-letters",
            get(queue::api_dead_letters),
        )
        .route(
            "/api/queues/{backend}/{queue}/{action}",
            post(actions::queue_api),
        )
        .route("/api/jobs", get(jobs::api_jobs))
        .route("/api/jobs/{id}", get(job::api_job))
        .route("/api/jobs/{id}/{action}", post(actions::job_api))
        .route("/api/workers", get(workers::api_workers))
        .route("/api/schedules", get(schedules::api_schedules))
        .route(
            "/api/schedules/{backend}/{name}/{action}",
            post(actions::schedule_api),
        )
        .route("/assets/app.js", get(assets::app_js))
        .route("/assets/style.css", get(assets::style_css));
    let api = extra.into_iter().fold(api, |api, (path, route)| {
        api.route(&path, route.with_state(()))
    });
    // Outermost first: the guard, the timeout, then the limit on requests
    // at once, which answers 503 at once when every slot is taken (a
    // request never waits for a slot, so the timeout bounds all of it).
    api.merge(pages)
        .layer(
            ServiceBuilder::new()
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    security::guard,
                ))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    limits.request_timeout,
                ))
                .layer(HandleErrorLayer::new(busy))
                .layer(LoadShedLayer::new())
                .layer(GlobalConcurrencyLimitLayer::new(
                    limits.max_concurrent_requests,
                )),
        )
        .with_state(state)
}

/// Every slot is taken (or a layer failed): come back shortly.
async fn busy(_: tower::BoxError) -> Failure {
    Failure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the dashboard is serving as many requests as it takes at once: try again shortly",
    )
}

async fn not_found() -> Failure {
    Failure::not_found("no such page")
}
