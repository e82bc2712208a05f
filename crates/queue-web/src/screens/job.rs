//! One job's screen: its fields, the timeline of its attempts, its
//! result, and retry or forget.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, State as Extract};
use axum::response::{IntoResponse, Response};
use axum::Json;
use queue_core::{JobRecord, JobStatus};

use super::status_badge;
use crate::html::{ago, cut, esc};
use crate::request::{job_id, store_of, Ctx, Failure};
use crate::State;

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

pub(crate) async fn job_page(
    ctx: Ctx,
    Extract(state): Extract<Arc<State>>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let job = get_job(&state, &id).await?;
    let main = job_main(&ctx, &state, &job);
    Ok(ctx.render(&state, "Job", "Jobs", main))
}

pub(crate) async fn api_job(
    Extract(state): Extract<Arc<State>>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    Ok(Json(get_job(&state, &id).await?).into_response())
}
