//! A queue's screen: its counts, actions, rate chart and dead letters.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, Query, State as Extract};
use axum::response::{IntoResponse, Response};
use axum::Json;
use queue_core::store::millis_since_epoch;
use queue_core::{
    DeadLetter, DeadLetterCursor, DeadLetterPage, DeadLetterQuery, QueueName, QueueStats,
};
use serde::{Deserialize, Serialize};

use super::{oldest, state_badge};
use crate::html::{ago, cut, esc, payload, url_part};
use crate::request::{queue_of, Ctx, Failure};
use crate::sampler::RatePoint;
use crate::{svg, State};

#[derive(Deserialize)]
pub(crate) struct Paging {
    cursor: Option<String>,
    limit: Option<usize>,
}

/// Dead letters a page shows by default, and at most.
const DEAD_PAGE: usize = 20;
const DEAD_PAGE_MAX: usize = 100;
/// Bytes of each dead letter's payload the dashboard reads and shows; the
/// real length and a `truncated` flag say how much more there is.
pub(crate) const PREVIEW_BYTES: usize = 4096;

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
    /// The payload's preview: its JSON, or text, or hex for bytes that
    /// are neither.
    payload_json: Option<serde_json::Value>,
    payload_text: Option<String>,
    payload_hex: Option<String>,
    /// The whole payload's length.
    payload_bytes: usize,
    /// Whether the preview is shorter than the payload.
    truncated: bool,
}

fn dead_letter_view(d: &DeadLetter) -> DeadLetterView {
    let bytes = &d.message.payload;
    let truncated = d.truncated();
    let json = serde_json::from_slice::<serde_json::Value>(bytes).ok();
    let text = match &json {
        Some(_) => None,
        None => d.payload_text().map(str::to_owned),
    };
    let hex = (json.is_none() && text.is_none()).then(|| {
        bytes
            .iter()
            .take(PREVIEW_BYTES)
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
        payload_bytes: d.payload_len,
        truncated,
    }
}

/// One page of dead letters, as previews, and where it started.
struct DeadPage {
    page: Arc<DeadLetterPage>,
    cursor: Option<DeadLetterCursor>,
    limit: usize,
}

/// Never more than one page of previews from the broker, read at most
/// once every few seconds however many viewers refresh it.
async fn dead_page(
    state: &State,
    backend_name: &str,
    backend: &dyn queue_core::Backend,
    queue: &QueueName,
    paging: &Paging,
) -> Result<DeadPage, Failure> {
    let limit = paging.limit.unwrap_or(DEAD_PAGE).clamp(1, DEAD_PAGE_MAX);
    let mut query = DeadLetterQuery::new(limit).with_preview(PREVIEW_BYTES);
    let cursor = paging
        .cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(str::parse::<DeadLetterCursor>)
        .transpose()?;
    if let Some(cursor) = &cursor {
        query = query.after(cursor.clone());
    }
    let page = state
        .dead_pages
        .get(backend_name, backend, queue, &query)
        .await?;
    Ok(DeadPage {
        page,
        cursor,
        limit,
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
    if dead.page.letters.is_empty() {
        out.push_str("<tr><td colspan=\"7\" class=\"note\">none</td></tr>");
    }
    for d in &dead.page.letters {
        let id = d.message.id.to_string();
        let _ = write!(
            out,
            "<tr data-id=\"{id}\"><td><code>{id}</code></td><td>{}</td><td class=\"n\">{}</td>\
             <td class=\"error\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.reason.to_string()),
            d.attempts,
            esc(&cut(d.last_error.as_deref().unwrap_or(""), 500)),
            ago(d.dead_lettered_at),
            payload(d, 2048),
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
    if dead.cursor.is_some() {
        let _ = write!(out, "<a href=\"{base}{path}\">← First page</a> ");
    }
    if let Some(next) = &dead.page.next {
        let _ = write!(
            out,
            "<a href=\"{base}{path}?cursor={}\" rel=\"next\">Next page →</a>",
            url_part(next.as_str())
        );
    }
    out.push_str("</p>");
    out
}

/// The queue's counts from the sampler's latest sample (shared by every
/// viewer, at most one a second), read directly only for a queue the
/// sample does not hold.
async fn queue_stats(
    state: &State,
    backend_name: &str,
    backend: &dyn queue_core::Backend,
    queue: &QueueName,
) -> Result<QueueStats, Failure> {
    let overview = state.sampler.overview(state).await;
    let sampled = overview
        .queues
        .iter()
        .find(|v| v.backend == backend_name && v.queue == *queue)
        .and_then(|v| v.stats);
    match sampled {
        Some(stats) => Ok(stats),
        None => Ok(backend.admin().stats(queue).await?),
    }
}

async fn queue_data(
    state: &State,
    backend: &str,
    queue: &str,
    paging: &Paging,
) -> Result<(QueueName, QueueStats, Vec<RatePoint>, DeadPage), Failure> {
    let (b, q) = queue_of(state, backend, queue)?;
    let stats = queue_stats(state, backend, &*b, &q).await?;
    let history = state.sampler.history(backend, &q).await;
    let dead = dead_page(state, backend, &*b, &q, paging).await?;
    Ok((q, stats, history, dead))
}

fn dead_json(dead: &DeadPage) -> serde_json::Value {
    serde_json::json!({
        "items": dead.page.letters.iter().map(dead_letter_view).collect::<Vec<_>>(),
        "limit": dead.limit,
        "next": dead.page.next,
    })
}

pub(crate) async fn queue_page(
    ctx: Ctx,
    Extract(state): Extract<Arc<State>>,
    Path((backend, queue)): Path<(String, String)>,
    Query(paging): Query<Paging>,
) -> Result<Response, Failure> {
    let (q, stats, history, dead) = queue_data(&state, &backend, &queue, &paging).await?;
    let main = queue_main(&ctx, &state, &backend, &q, &stats, &history, &dead);
    Ok(ctx.render(&state, q.as_str(), "Queues", main))
}

pub(crate) async fn api_queue(
    Extract(state): Extract<Arc<State>>,
    Path((backend, queue)): Path<(String, String)>,
    Query(paging): Query<Paging>,
) -> Result<Response, Failure> {
    let (q, stats, history, dead) = queue_data(&state, &backend, &queue, &paging).await?;
    Ok(Json(serde_json::json!({
        "backend": backend,
        "queue": q,
        "stats": stats,
        "history": history,
        "dead_letters": dead_json(&dead),
    }))
    .into_response())
}

pub(crate) async fn api_dead_letters(
    Extract(state): Extract<Arc<State>>,
    Path((backend, queue)): Path<(String, String)>,
    Query(paging): Query<Paging>,
) -> Result<Response, Failure> {
    let (b, q) = queue_of(&state, &backend, &queue)?;
    let dead = dead_page(&state, &backend, &*b, &q, &paging).await?;
    Ok(Json(dead_json(&dead)).into_response())
}
