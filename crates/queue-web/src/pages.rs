//! The router, the pages and the JSON API's reads.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{FromRequestParts, OriginalUri, Path, Query, State as Extract};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use queue_core::store::millis_since_epoch;
use queue_core::{
    DeadLetter, ErrorKind, JobCursor, JobPage, JobQuery, JobRecord, JobStatus, MessageId,
    QueueName, QueueStats, WorkerInfo,
};
use serde::{Deserialize, Serialize};

use crate::html::{ago, cut, duration, esc, payload, rate, url_part, Frame};
use crate::sampler::{Overview, RatePoint};
use crate::{actions, assets, security, svg, State};

pub(crate) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/", get(overview_page))
        .route("/queues/{backend}/{queue}", get(queue_page))
        .route(
            "/queues/{backend}/{queue}/{action}",
            post(actions::queue_form),
        )
        .route("/jobs", get(jobs_page))
        .route("/jobs/{id}", get(job_page))
        .route("/jobs/{id}/{action}", post(actions::job_form))
        .route("/workers", get(workers_page))
        .route("/assets/app.js", get(assets::app_js))
        .route("/assets/style.css", get(assets::style_css))
        .route("/api/session", get(api_session))
        .route("/api/overview", get(api_overview))
        .route("/api/queues/{backend}/{queue}", get(api_queue))
        .route(
            "/api/queues/{backend}/{queue}/dead-letters",
            get(api_dead_letters),
        )
        .route(
            "/api/queues/{backend}/{queue}/{action}",
            post(actions::queue_api),
        )
        .route("/api/jobs", get(api_jobs))
        .route("/api/jobs/{id}", get(api_job))
        .route("/api/jobs/{id}/{action}", post(actions::job_api))
        .route("/api/workers", get(api_workers))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security::guard,
        ))
        .with_state(state)
}

/// Where the router is mounted, and whether only `<main>` is wanted (a
/// live refresh).
pub(crate) struct Ctx {
    pub(crate) base: String,
    partial: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let inner = parts.uri.path().to_owned();
        let original = parts
            .extensions
            .get::<OriginalUri>()
            .map(|u| u.0.path().to_owned())
            .unwrap_or_else(|| inner.clone());
        let base = original
            .strip_suffix(inner.as_str())
            .unwrap_or(original.as_str())
            .trim_end_matches('/')
            .to_owned();
        let partial = parts.headers.contains_key("x-queue-partial");
        Ok(Ctx { base, partial })
    }
}

impl Ctx {
    pub(crate) fn frame<'a>(&'a self, state: &'a State) -> Frame<'a> {
        Frame {
            base: &self.base,
            csrf: &state.csrf,
            read_only: state.read_only,
            refresh_ms: state.refresh.as_millis(),
        }
    }

    fn render(&self, state: &State, title: &str, active: &str, main: String) -> Response {
        if self.partial {
            return Html(main).into_response();
        }
        Html(self.frame(state).page(title, active, &main)).into_response()
    }
}

/// An error as a page or as JSON, with a status that says what went wrong.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn page(self, ctx: &Ctx, state: &State) -> Response {
        let main = format!(
            "<h1>{}</h1><p class=\"error\">{}</p>",
            self.status,
            esc(&self.message)
        );
        let mut response = ctx.render(state, "error", "", main);
        *response.status_mut() = self.status;
        response
    }

    pub(crate) fn json(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl From<queue_core::Error> for Failure {
    fn from(e: queue_core::Error) -> Self {
        let status = match e.kind() {
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::InvalidInput
            | ErrorKind::InvalidQueueName
            | ErrorKind::Decode
            | ErrorKind::Config => StatusCode::BAD_REQUEST,
            ErrorKind::Unsupported => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_GATEWAY,
        };
        Failure::new(status, e.to_string())
    }
}

pub(crate) fn queue_of(
    state: &State,
    backend: &str,
    queue: &str,
) -> Result<(Arc<dyn queue_core::Backend>, QueueName), Failure> {
    let b = state.backend(backend).ok_or_else(|| {
        Failure::new(
            StatusCode::NOT_FOUND,
            format!("no backend named {backend:?}"),
        )
    })?;
    let q = QueueName::new(queue).map_err(Failure::from)?;
    Ok((b.clone(), q))
}

pub(crate) fn job_id(id: &str) -> Result<MessageId, Failure> {
    id.parse::<MessageId>().map_err(Failure::from)
}

async fn not_found(ctx: Ctx, Extract(state): Extract<Arc<State>>) -> Response {
    Failure::new(StatusCode::NOT_FOUND, "no such page").page(&ctx, &state)
}

// ------------------------------------------------------------ overview

fn state_badge(stats: &QueueStats) -> &'static str {
    if stats.paused {
        "<span class=\"badge paused\">paused</span>"
    } else {
        "<span class=\"badge ok\">running</span>"
    }
}

fn oldest(stats: &QueueStats) -> String {
    stats.oldest_ready_age.map_or("–".to_owned(), duration)
}

fn overview_main(ctx: &Ctx, overview: &Overview) -> String {
    let base = esc(&ctx.base);
    let mut out = String::from("<h1>Queues</h1><section class=\"backends\">");
    for b in &overview.backends {
        let health = if b.healthy {
            format!(
                "<span class=\"badge ok\">healthy</span> {} ms",
                b.latency_ms
            )
        } else {
            format!(
                "<span class=\"badge bad\">unhealthy</span> <span class=\"error\">{}</span>",
                esc(b.error.as_deref().unwrap_or(""))
            )
        };
        let _ = write!(
            out,
            "<p><strong>{}</strong> ({}) {health}{}{}</p>",
            esc(&b.name),
            esc(&b.kind),
            if b.approximate {
                " <span class=\"note\">counts are estimates</span>"
            } else {
                ""
            },
            b.queues_note
                .as_deref()
                .map(|n| format!(" <span class=\"note\">{}</span>", esc(n)))
                .unwrap_or_default()
        );
    }
    out.push_str("</section><h2>Jobs per second, up to the last hour (all queues)</h2>");
    out.push_str(&svg::rate_chart(&overview.history, overview.sampled_at_ms));
    out.push_str(
        "<h2>By queue</h2><table id=\"queues\"><thead><tr><th>Queue</th><th>Backend</th><th>State</th>\
         <th class=\"n\">Ready</th><th class=\"n\">Delayed</th><th class=\"n\">In flight</th>\
         <th class=\"n\">Dead</th><th class=\"n\">Oldest</th><th class=\"n\">Processed/s</th>\
         <th class=\"n\">Failed/s</th></tr></thead><tbody>",
    );
    if overview.queues.is_empty() {
        out.push_str("<tr><td colspan=\"10\" class=\"note\">no queues yet</td></tr>");
    }
    for q in &overview.queues {
        let link = format!(
            "{base}/queues/{}/{}",
            url_part(&q.backend),
            url_part(q.queue.as_str())
        );
        let _ = write!(
            out,
            "<tr data-queue=\"{}\"><td><a href=\"{link}\">{}</a></td><td>{}</td>",
            esc(q.queue.as_str()),
            esc(q.queue.as_str()),
            esc(&q.backend)
        );
        match &q.stats {
            Some(s) => {
                let _ = write!(
                    out,
                    "<td>{}</td><td class=\"n ready\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                     <td class=\"n dead\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                    state_badge(s),
                    s.ready,
                    s.delayed,
                    s.in_flight,
                    s.dead,
                    oldest(s),
                    rate(q.processed_per_second),
                    rate(q.failed_per_second)
                );
            }
            None => {
                let _ = write!(
                    out,
                    "<td colspan=\"8\" class=\"error\">{}</td></tr>",
                    esc(q.error.as_deref().unwrap_or("no stats"))
                );
            }
        }
    }
    out.push_str("</tbody></table>");
    out
}

async fn overview_page(ctx: Ctx, Extract(state): Extract<Arc<State>>) -> Response {
    let overview = state.sampler.overview(&state).await;
    ctx.render(&state, "Queues", "Queues", overview_main(&ctx, &overview))
}

async fn api_overview(Extract(state): Extract<Arc<State>>) -> Response {
    Json(state.sampler.overview(&state).await.as_ref().clone()).into_response()
}

#[derive(Serialize)]
struct Session<'a> {
    csrf: &'a str,
    read_only: bool,
    refresh_ms: u128,
}

async fn api_session(Extract(state): Extract<Arc<State>>) -> Response {
    Json(Session {
        csrf: &state.csrf,
        read_only: state.read_only,
        refresh_ms: state.refresh.as_millis(),
    })
    .into_response()
}

// --------------------------------------------------------- queue detail

#[derive(Deserialize)]
pub(crate) struct Paging {
    offset: Option<usize>,
    limit: Option<usize>,
}

const DEAD_PAGE: usize = 20;
/// Dead letters are read oldest first from the start: pages end here.
const DEAD_MAX: usize = 10_000;

/// One dead letter as the API shows it.
#[derive(Serialize)]
struct DeadLetterView {
    id: String,
    reason: String,
    attempts: u32,
    last_error: Option<String>,
    dead_lettered_at_ms: u64,
    created_at_ms: u64,
    priority: String,
    /// The payload: its JSON, or text, or `null` for bytes that are neither.
    payload_json: Option<serde_json::Value>,
    payload_text: Option<String>,
    payload_hex: Option<String>,
    payload_bytes: usize,
}

fn dead_letter_view(d: &DeadLetter) -> DeadLetterView {
    let bytes = &d.message.payload;
    let json = serde_json::from_slice::<serde_json::Value>(bytes).ok();
    let text = match &json {
        Some(_) => None,
        None => std::str::from_utf8(bytes).ok().map(str::to_owned),
    };
    let hex = (json.is_none() && text.is_none()).then(|| {
        bytes
            .iter()
            .take(4096)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    });
    DeadLetterView {
        id: d.message.id.to_string(),
        reason: d.reason.to_string(),
        attempts: d.attempts,
        last_error: d.last_error.clone(),
        dead_lettered_at_ms: millis_since_epoch(d.dead_lettered_at),
        created_at_ms: millis_since_epoch(d.message.created_at),
        priority: d.message.priority.to_string(),
        payload_json: json,
        payload_text: text,
        payload_hex: hex,
        payload_bytes: bytes.len(),
    }
}

struct DeadPage {
    items: Vec<DeadLetter>,
    offset: usize,
    limit: usize,
    more: bool,
}

async fn dead_page(
    backend: &dyn queue_core::Backend,
    queue: &QueueName,
    paging: &Paging,
) -> Result<DeadPage, Failure> {
    let limit = paging.limit.unwrap_or(DEAD_PAGE).clamp(1, 500);
    let offset = paging.offset.unwrap_or(0).min(DEAD_MAX);
    let want = (offset + limit + 1).min(DEAD_MAX + 1);
    let mut all = backend.admin().dead_letters(queue, want).await?;
    let more = all.len() > offset + limit;
    let items: Vec<DeadLetter> = all.drain(offset.min(all.len())..).take(limit).collect();
    Ok(DeadPage {
        items,
        offset,
        limit,
        more,
    })
}

fn queue_main(
    ctx: &Ctx,
    state: &State,
    backend_name: &str,
    queue: &QueueName,
    stats: &QueueStats,
    history: &[RatePoint],
    dead: &DeadPage,
) -> String {
    let frame = ctx.frame(state);
    let path = format!(
        "/queues/{}/{}",
        url_part(backend_name),
        url_part(queue.as_str())
    );
    let mut out = format!(
        "<h1>{} <span class=\"note\">on {}</span> {}</h1>",
        esc(queue.as_str()),
        esc(backend_name),
        state_badge(stats)
    );
    let _ = write!(
        out,
        "<table id=\"counts\"><tr><th>Ready</th><td class=\"n ready\">{}</td><th>Delayed</th><td class=\"n\">{}</td>\
         <th>In flight</th><td class=\"n\">{}</td><th>Dead</th><td class=\"n dead\">{}</td>\
         <th>Oldest ready</th><td class=\"n\">{}</td></tr>\
         <tr><th>Enqueued</th><td class=\"n\">{}</td><th>Acked</th><td class=\"n\">{}</td>\
         <th>Retried</th><td class=\"n\">{}</td><th>Dead-lettered</th><td class=\"n\">{}</td>\
         <th>Expired</th><td class=\"n\">{}</td></tr></table>",
        stats.ready,
        stats.delayed,
        stats.in_flight,
        stats.dead,
        oldest(stats),
        stats.enqueued_total,
        stats.acked_total,
        stats.retried_total,
        stats.dead_lettered_total,
        stats.expired_total
    );
    out.push_str("<p class=\"actions\">");
    if stats.paused {
        out.push_str(&frame.button(
            &format!("{path}/resume"),
            &[],
            "Resume",
            &format!("Resume {queue}?"),
            "resume",
        ));
    } else {
        out.push_str(&frame.button(
            &format!("{path}/pause"),
            &[],
            "Pause",
            &format!("Pause {queue}? Its workers stop taking jobs."),
            "pause",
        ));
    }
    out.push_str(&frame.button(
        &format!("{path}/purge"),
        &[],
        "Purge",
        &format!("Purge {queue}? Every ready and delayed job is deleted."),
        "danger purge",
    ));
    if stats.dead > 0 {
        out.push_str(&frame.button(
            &format!("{path}/redrive"),
            &[],
            "Redrive all dead letters",
            &format!("Put every dead letter of {queue} back on the queue?"),
            "redrive-all",
        ));
    }
    out.push_str("</p><h2>Jobs per second, up to the last hour</h2>");
    out.push_str(&svg::rate_chart(
        history,
        millis_since_epoch(SystemTime::now()),
    ));
    let _ = write!(
        out,
        "<h2>Dead letters ({})</h2><table id=\"dead-letters\"><thead><tr><th>Id</th><th>Reason</th>\
         <th class=\"n\">Attempts</th><th>Last error</th><th>Dead since</th><th>Payload</th><th></th></tr></thead><tbody>",
        stats.dead
    );
    if dead.items.is_empty() {
        out.push_str("<tr><td colspan=\"7\" class=\"note\">none</td></tr>");
    }
    for d in &dead.items {
        let id = d.message.id.to_string();
        let _ = write!(
            out,
            "<tr data-id=\"{id}\"><td><code>{id}</code></td><td>{}</td><td class=\"n\">{}</td>\
             <td class=\"error\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.reason.to_string()),
            d.attempts,
            esc(&cut(d.last_error.as_deref().unwrap_or(""), 500)),
            ago(d.dead_lettered_at),
            payload(&d.message.payload, 2048),
            frame.button(
                &format!("{path}/redrive"),
                &[("id", &id)],
                "Redrive",
                &format!("Put dead letter {id} back on {queue}?"),
                "redrive-one",
            )
        );
    }
    out.push_str("</tbody></table><p class=\"pager\">");
    let base = esc(&ctx.base);
    if dead.offset > 0 {
        let _ = write!(
            out,
            "<a href=\"{base}{path}?offset={}\">← Newer page</a> ",
            dead.offset.saturating_sub(dead.limit)
        );
    }
    if dead.more {
        let _ = write!(
            out,
            "<a href=\"{base}{path}?offset={}\" rel=\"next\">Next page →</a>",
            dead.offset + dead.limit
        );
    }
    out.push_str("</p>");
    out
}

async fn queue_data(
    state: &State,
    backend: &str,
    queue: &str,
    paging: &Paging,
) -> Result<(QueueName, QueueStats, Vec<RatePoint>, DeadPage), Failure> {
    let (b, q) = queue_of(state, backend, queue)?;
    let stats = b.admin().stats(&q).await?;
    let history = state.sampler.history(backend, &q).await;
    let dead = dead_page(&*b, &q, paging).await?;
    Ok((q, stats, history, dead))
}

async fn queue_page(
    ctx: Ctx,
    Extract(state): Extract<Arc<State>>,
    Path((backend, queue)): Path<(String, String)>,
    Query(paging): Query<Paging>,
) -> Response {
    match queue_data(&state, &backend, &queue, &paging).await {
        Ok((q, stats, history, dead)) => {
            let main = queue_main(&ctx, &state, &backend, &q, &stats, &history, &dead);
            ctx.render(&state, q.as_str(), "Queues", main)
        }
        Err(f) => f.page(&ctx, &state),
    }
}

async fn api_queue(
    Extract(state): Extract<Arc<State>>,
    Path((backend, queue)): Path<(String, String)>,
    Query(paging): Query<Paging>,
) -> Response {
    match queue_data(&state, &backend, &queue, &paging).await {
        Ok((q, stats, history, dead)) => Json(serde_json::json!({
            "backend": backend,
            "queue": q,
            "stats": stats,
            "history": history,
            "dead_letters": {
                "items": dead.items.iter().map(dead_letter_view).collect::<Vec<_>>(),
                "offset": dead.offset,
                "limit": dead.limit,
                "more": dead.more,
            },
        }))
        .into_response(),
        Err(f) => f.json(),
    }
}

async fn api_dead_letters(
    Extract(state): Extract<Arc<State>>,
    Path((backend, queue)): Path<(String, String)>,
    Query(paging): Query<Paging>,
) -> Response {
    let result = async {
        let (b, q) = queue_of(&state, &backend, &queue)?;
        dead_page(&*b, &q, &paging).await
    }
    .await;
    match result {
        Ok(dead) => Json(serde_json::json!({
            "items": dead.items.iter().map(dead_letter_view).collect::<Vec<_>>(),
            "offset": dead.offset,
            "limit": dead.limit,
            "more": dead.more,
        }))
        .into_response(),
        Err(f) => f.json(),
    }
}

// ----------------------------------------------------------------- jobs

#[derive(Deserialize, Default)]
pub(crate) struct JobFilters {
    status: Option<String>,
    queue: Option<String>,
    search: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

fn job_query(filters: &JobFilters) -> Result<JobQuery, Failure> {
    let mut query = JobQuery::new().with_limit(filters.limit.unwrap_or(25));
    if let Some(status) = filters.status.as_deref().filter(|s| !s.is_empty()) {
        query = query.with_status(status.parse::<JobStatus>()?);
    }
    if let Some(queue) = filters.queue.as_deref().filter(|s| !s.is_empty()) {
        query = query.with_queue(QueueName::new(queue)?);
    }
    if let Some(search) = &filters.search {
        query = query.with_search(search.clone());
    }
    if let Some(cursor) = filters.cursor.as_deref().filter(|s| !s.is_empty()) {
        query = query.after(cursor.parse::<JobCursor>()?);
    }
    Ok(query)
}

pub(crate) fn store_of(state: &State) -> Result<&Arc<dyn queue_core::JobStore>, Failure> {
    state.store.as_ref().ok_or_else(|| {
        Failure::new(
            StatusCode::NOT_IMPLEMENTED,
            "this dashboard has no job store (Dashboard::job_store); jobs are tracked by the application that submits them",
        )
    })
}

async fn list_jobs(state: &State, filters: &JobFilters) -> Result<JobPage, Failure> {
    let query = job_query(filters)?;
    Ok(store_of(state)?.list(&query).await?)
}

fn status_badge(status: JobStatus) -> String {
    let class = match status {
        JobStatus::Completed => "ok",
        JobStatus::Dead | JobStatus::Failed => "bad",
        JobStatus::Retry | JobStatus::Cancelled => "paused",
        _ => "",
    };
    format!("<span class=\"badge {class}\">{status}</span>")
}

fn jobs_main(ctx: &Ctx, filters: &JobFilters, page: Result<JobPage, Failure>) -> String {
    let base = esc(&ctx.base);
    let current = filters.status.as_deref().unwrap_or("");
    let mut options = String::from("<option value=\"\">any status</option>");
    for status in JobStatus::ALL {
        let _ = write!(
            options,
            "<option value=\"{s}\"{sel}>{s}</option>",
            s = status.as_str(),
            sel = if current == status.as_str() {
                " selected"
            } else {
                ""
            }
        );
    }
    let mut out = format!(
        "<h1>Jobs</h1><form class=\"filters\" method=\"get\" action=\"{base}/jobs\">\
         <select name=\"status\" aria-label=\"status\">{options}</select>\
         <input name=\"queue\" placeholder=\"queue\" value=\"{}\" aria-label=\"queue\">\
         <input name=\"search\" type=\"search\" placeholder=\"search name, error, id\" value=\"{}\" aria-label=\"search\">\
         <button type=\"submit\">Filter</button></form>",
        esc(filters.queue.as_deref().unwrap_or("")),
        esc(filters.search.as_deref().unwrap_or(""))
    );
    let page = match page {
        Ok(page) => page,
        Err(f) => {
            let _ = write!(out, "<p class=\"error\">{}</p>", esc(&f.message));
            return out;
        }
    };
    out.push_str(
        "<table id=\"jobs\"><thead><tr><th>Id</th><th>Name</th><th>Queue</th><th>Status</th>\
         <th class=\"n\">Attempts</th><th>Created</th><th>Last error</th></tr></thead><tbody>",
    );
    if page.jobs.is_empty() {
        out.push_str("<tr><td colspan=\"7\" class=\"note\">no jobs match</td></tr>");
    }
    for job in &page.jobs {
        let id = job.id.to_string();
        let _ = write!(
            out,
            "<tr data-id=\"{id}\"><td><a href=\"{base}/jobs/{id}\"><code>{}</code></a></td><td>{}</td><td>{}</td>\
             <td>{}</td><td class=\"n\">{}/{}</td><td>{}</td><td class=\"error\">{}</td></tr>",
            &id[..8],
            esc(job.name.as_deref().unwrap_or("–")),
            esc(job.queue.as_str()),
            status_badge(job.status),
            job.attempts,
            job.max_attempts,
            ago(job.created_at),
            esc(&cut(job.last_error.as_deref().unwrap_or(""), 200))
        );
    }
    out.push_str("</tbody></table>");
    if let Some(next) = page.next {
        let mut link = format!("{base}/jobs?cursor={}", url_part(&next.to_string()));
        for (name, value) in [
            ("status", &filters.status),
            ("queue", &filters.queue),
            ("search", &filters.search),
        ] {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                let _ = write!(link, "&amp;{name}={}", url_part(v));
            }
        }
        let _ = write!(
            out,
            "<p class=\"pager\"><a href=\"{link}\" rel=\"next\">Next page →</a></p>"
        );
    }
    out
}

async fn jobs_page(
    ctx: Ctx,
    Extract(state): Extract<Arc<State>>,
    Query(filters): Query<JobFilters>,
) -> Response {
    let page = list_jobs(&state, &filters).await;
    let main = jobs_main(&ctx, &filters, page);
    ctx.render(&state, "Jobs", "Jobs", main)
}

async fn api_jobs(
    Extract(state): Extract<Arc<State>>,
    Query(filters): Query<JobFilters>,
) -> Response {
    match list_jobs(&state, &filters).await {
        Ok(page) => Json(page).into_response(),
        Err(f) => f.json(),
    }
}

async fn get_job(state: &State, id: &str) -> Result<JobRecord, Failure> {
    let id = job_id(id)?;
    store_of(state)?
        .get(id)
        .await?
        .ok_or_else(|| queue_core::store::not_tracked(id).into())
}

fn job_main(ctx: &Ctx, state: &State, job: &JobRecord) -> String {
    let frame = ctx.frame(state);
    let id = job.id.to_string();
    let time = |at: Option<SystemTime>| at.map_or("–".to_owned(), ago);
    let mut out = format!(
        "<h1>Job <code>{id}</code> {}</h1><dl class=\"fields\">\
         <dt>Name</dt><dd>{}</dd><dt>Queue</dt><dd>{}</dd><dt>Priority</dt><dd>{}</dd>\
         <dt>Attempts</dt><dd>{} of {}</dd><dt>Idempotency key</dt><dd>{}</dd></dl>",
        status_badge(job.status),
        esc(job.name.as_deref().unwrap_or("–")),
        esc(job.queue.as_str()),
        job.priority,
        job.attempts,
        job.max_attempts,
        esc(job.idempotency_key.as_deref().unwrap_or("–")),
    );
    out.push_str("<h2>Timeline</h2><ol class=\"timeline\">");
    let _ = write!(out, "<li>submitted {}</li>", time(Some(job.created_at)));
    if let Some(started) = job.started_at {
        let _ = write!(
            out,
            "<li>attempt {} started {}</li>",
            job.attempts,
            ago(started)
        );
    }
    for failure in &job.errors {
        let _ = write!(
            out,
            "<li>attempt {} failed {}: <pre class=\"error\">{}</pre></li>",
            failure.attempt,
            ago(failure.at),
            esc(&cut(&failure.error, 4000))
        );
    }
    if let (Some(error), true) = (&job.last_error, job.errors.is_empty()) {
        let _ = write!(
            out,
            "<li>last error: <pre class=\"error\">{}</pre></li>",
            esc(&cut(error, 4000))
        );
    }
    let _ = write!(
        out,
        "<li>{} {}</li></ol>",
        job.status,
        time(job.finished_at.or(Some(job.updated_at)))
    );
    if let Some(result) = &job.result {
        let pretty = serde_json::to_string_pretty(result).unwrap_or_default();
        let _ = write!(
            out,
            "<h2>Result</h2><pre class=\"json\">{}</pre>",
            esc(&cut(&pretty, 8000))
        );
    }
    out.push_str("<p class=\"actions\">");
    if job.status == JobStatus::Dead {
        out.push_str(&frame.button(
            &format!("/jobs/{id}/retry"),
            &[],
            "Retry now",
            &format!("Run job {id} again now?"),
            "retry",
        ));
    }
    out.push_str(&frame.button(
        &format!("/jobs/{id}/delete"),
        &[],
        "Forget",
        &format!("Forget the record of job {id}?"),
        "danger delete",
    ));
    out.push_str("</p>");
    out
}

async fn job_page(
    ctx: Ctx,
    Extract(state): Extract<Arc<State>>,
    Path(id): Path<String>,
) -> Response {
    match get_job(&state, &id).await {
        Ok(job) => {
            let main = job_main(&ctx, &state, &job);
            ctx.render(&state, "Job", "Jobs", main)
        }
        Err(f) => f.page(&ctx, &state),
    }
}

async fn api_job(Extract(state): Extract<Arc<State>>, Path(id): Path<String>) -> Response {
    match get_job(&state, &id).await {
        Ok(job) => Json(job).into_response(),
        Err(f) => f.json(),
    }
}

// -------------------------------------------------------------- workers

async fn all_workers(state: &State) -> (Vec<(String, WorkerInfo)>, Vec<String>) {
    let mut workers = Vec::new();
    let mut notes = Vec::new();
    for (name, backend) in &state.backends {
        match backend.admin().workers().await {
            Ok(list) => workers.extend(list.into_iter().map(|w| (name.clone(), w))),
            Err(e) if e.kind() == ErrorKind::Unsupported => notes.push(format!(
                "{name} ({}) holds no worker registry",
                backend.capabilities().backend
            )),
            Err(e) => notes.push(format!("{name}: could not list workers: {e}")),
        }
    }
    (workers, notes)
}

async fn workers_page(ctx: Ctx, Extract(state): Extract<Arc<State>>) -> Response {
    let (workers, notes) = all_workers(&state).await;
    let mut out = String::from(
        "<h1>Workers</h1><table id=\"workers\"><thead><tr><th>Id</th><th>Backend</th><th>Queue</th>\
         <th>Host</th><th class=\"n\">Pid</th><th class=\"n\">Concurrency</th><th class=\"n\">In flight</th>\
         <th class=\"n\">Completed</th><th class=\"n\">Failed</th><th>Up</th><th>Heartbeat</th></tr></thead><tbody>",
    );
    if workers.is_empty() {
        out.push_str("<tr><td colspan=\"11\" class=\"note\">no live workers</td></tr>");
    }
    let now = SystemTime::now();
    for (backend, w) in &workers {
        let beat = now.duration_since(w.last_heartbeat).unwrap_or_default();
        let late = beat > w.heartbeat_interval * 2;
        let _ = write!(
            out,
            "<tr data-id=\"{}\"><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td>{}</td><td{}>{} ago</td></tr>",
            esc(&w.id),
            esc(&cut(&w.id, 8)),
            esc(backend),
            esc(w.queue.as_str()),
            esc(&w.host),
            w.pid,
            w.concurrency,
            w.in_flight,
            w.completed,
            w.failed,
            duration(now.duration_since(w.started_at).unwrap_or_default()),
            if late { " class=\"error\"" } else { "" },
            duration(Duration::from_millis(beat.as_millis() as u64 / 100 * 100)),
        );
    }
    out.push_str("</tbody></table>");
    for note in notes {
        let _ = write!(out, "<p class=\"note\">{}</p>", esc(&note));
    }
    ctx.render(&state, "Workers", "Workers", out)
}

async fn api_workers(Extract(state): Extract<Arc<State>>) -> Response {
    let (workers, notes) = all_workers(&state).await;
    let workers: Vec<serde_json::Value> = workers
        .into_iter()
        .map(|(backend, w)| {
            let mut v = serde_json::to_value(w).unwrap_or_default();
            v["backend"] = serde_json::Value::String(backend);
            v
        })
        .collect();
    Json(serde_json::json!({ "workers": workers, "notes": notes })).into_response()
}
