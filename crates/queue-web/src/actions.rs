//! Changes: pause, resume, purge and redrive a queue; retry and forget a
//! job; pause, resume, trigger and remove a schedule. Each is a POST with the CSRF token, refused in read-only mode,
//! from a page form (answered with a redirect back) or from the JSON API.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Form, Path, State as Extract};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use queue_core::store::not_tracked;
use queue_core::{MessageId, Redrive};
use queue_worker::JobScheduler;
use serde::Deserialize;

use crate::html::url_part;
use crate::request::{job_id, queue_of, schedules_of, store_of, Ctx, Failure};
use crate::screens::schedules::schedule_json;
use crate::{security, State};

/// What can be done to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueueAction {
    Pause,
    Resume,
    Purge,
    Redrive,
}

impl FromStr for QueueAction {
    type Err = Failure;

    fn from_str(action: &str) -> Result<Self, Failure> {
        match action {
            "pause" => Ok(QueueAction::Pause),
            "resume" => Ok(QueueAction::Resume),
            "purge" => Ok(QueueAction::Purge),
            "redrive" => Ok(QueueAction::Redrive),
            other => Err(Failure::not_found(format!(
                "no queue action {other:?} (pause, resume, purge, redrive)"
            ))),
        }
    }
}

/// What can be done to a tracked job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobAction {
    Retry,
    Delete,
}

impl FromStr for JobAction {
    type Err = Failure;

    fn from_str(action: &str) -> Result<Self, Failure> {
        match action {
            "retry" => Ok(JobAction::Retry),
            "delete" => Ok(JobAction::Delete),
            other => Err(Failure::not_found(format!(
                "no job action {other:?} (retry, delete)"
            ))),
        }
    }
}

/// What can be done to a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScheduleAction {
    Pause,
    Resume,
    Trigger,
    Remove,
}

impl FromStr for ScheduleAction {
    type Err = Failure;

    fn from_str(action: &str) -> Result<Self, Failure> {
        match action {
            "pause" => Ok(ScheduleAction::Pause),
            "resume" => Ok(ScheduleAction::Resume),
            "trigger" => Ok(ScheduleAction::Trigger),
            "remove" => Ok(ScheduleAction::Remove),
            other => Err(Failure::not_found(format!(
                "no schedule action {other:?} (pause, resume, trigger, remove)"
            ))),
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct ActionForm {
    csrf: Option<String>,
    id: Option<String>,
}

#[derive(Deserialize, Default)]
struct ActionBody {
    /// Dead letters to redrive (all when absent).
    ids: Option<Vec<String>>,
}

/// Run `work` to its end even if the request's caller stops waiting (a
/// timeout, a closed connection): a redrive between its copy and its
/// delete must not stop half-way. The request waits for its answer.
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, Failure>> + Send + 'static,
) -> Result<T, Failure> {
    tokio::spawn(work).await.map_err(|e| {
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the action stopped: {e}"),
        )
    })?
}

/// Run `action` on a queue; what it did, as JSON.
async fn run_queue_action(
    state: Arc<State>,
    backend: String,
    queue: String,
    action: QueueAction,
    ids: Option<Vec<String>>,
) -> Result<serde_json::Value, Failure> {
    let (b, q) = queue_of(&state, &backend, &queue)?;
    let admin = b.admin();
    let done = match action {
        QueueAction::Pause => {
            admin.pause(&q).await?;
            serde_json::json!({ "paused": true })
        }
        QueueAction::Resume => {
            admin.resume(&q).await?;
            serde_json::json!({ "paused": false })
        }
        QueueAction::Purge => serde_json::json!({ "purged": admin.purge(&q).await? }),
        QueueAction::Redrive => {
            let which = match ids {
                None => Redrive::All,
                Some(ids) => Redrive::Ids(
                    ids.iter()
                        .map(|id| job_id(id))
                        .collect::<Result<Vec<MessageId>, Failure>>()?,
                ),
            };
            serde_json::json!({ "redriven": admin.redrive(&q, which).await? })
        }
    };
    state.sampler.invalidate().await;
    state.dead_pages.invalidate().await;
    Ok(done)
}

/// Run `action` on a tracked job; what it did, as JSON.
async fn run_job_action(
    state: Arc<State>,
    id: MessageId,
    action: JobAction,
) -> Result<serde_json::Value, Failure> {
    let store = store_of(&state)?.clone();
    match action {
        JobAction::Retry => {
            if let Some(manager) = &state.manager {
                manager.retry_job(id).await?;
            } else {
                let record = store.get(id).await?.ok_or_else(|| not_tracked(id))?;
                let backend = backend_holding(&state, &record.queue).await;
                JobScheduler::new(backend, store).retry(id).await?;
            }
            Ok(serde_json::json!({ "retried": id }))
        }
        JobAction::Delete => {
            if !store.delete(id).await? {
                return Err(not_tracked(id).into());
            }
            Ok(serde_json::json!({ "deleted": id }))
        }
    }
}

/// Run `action` on a schedule; what it did, as JSON.
async fn run_schedule_action(
    state: Arc<State>,
    backend: String,
    name: String,
    action: ScheduleAction,
) -> Result<serde_json::Value, Failure> {
    let schedules = schedules_of(&state, &backend)?;
    Ok(match action {
        ScheduleAction::Pause | ScheduleAction::Resume => {
            let info = if action == ScheduleAction::Pause {
                schedules.pause(&name).await?
            } else {
                schedules.resume(&name).await?
            };
            serde_json::json!({
                "paused": info.schedule.is_paused(),
                "schedule": schedule_json(&info),
            })
        }
        ScheduleAction::Trigger => {
            let id = schedules.trigger(&name).await?;
            state.sampler.invalidate().await;
            serde_json::json!({ "triggered": id })
        }
        ScheduleAction::Remove => {
            if !schedules.remove(&name).await? {
                return Err(Failure::not_found(format!("no schedule named {name:?}")));
            }
            serde_json::json!({ "removed": name })
        }
    })
}

/// The backend that lists `queue`, else the first.
async fn backend_holding(
    state: &State,
    queue: &queue_core::QueueName,
) -> Arc<dyn queue_core::Backend> {
    for (_, backend) in &state.backends {
        if let Ok(queues) = backend.admin().queues().await {
            if queues.contains(queue) {
                return backend.clone();
            }
        }
    }
    state.backends[0].1.clone()
}

pub(crate) async fn queue_form(
    ctx: Ctx,
    Extract(state): Extract<Arc<State>>,
    Path((backend, queue, action)): Path<(String, String, String)>,
    Form(form): Form<ActionForm>,
) -> Result<Response, Failure> {
    security::allow_change(&state, form.csrf.as_deref())?;
    let action: QueueAction = action.parse()?;
    let ids = form.id.map(|id| vec![id]);
    let back = format!(
        "{}/queues/{}/{}",
        ctx.base,
        url_part(&backend),
        url_part(&queue)
    );
    detached(run_queue_action(state, backend, queue, action, ids)).await?;
    Ok(Redirect::to(&back).into_response())
}

pub(crate) async fn job_form(
    ctx: Ctx,
    Extract(state): Extract<Arc<State>>,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Result<Response, Failure> {
    security::allow_change(&state, form.csrf.as_deref())?;
    let action: JobAction = action.parse()?;
    detached(run_job_action(state, job_id(&id)?, action)).await?;
    let back = match action {
        JobAction::Delete => format!("{}/jobs", ctx.base),
        JobAction::Retry => format!("{}/jobs/{}", ctx.base, url_part(&id)),
    };
    Ok(Redirect::to(&back).into_response())
}

pub(crate) async fn schedule_form(
    ctx: Ctx,
    Extract(state): Extract<Arc<State>>,
    Path((backend, name, action)): Path<(String, String, String)>,
    Form(form): Form<ActionForm>,
) -> Result<Response, Failure> {
    security::allow_change(&state, form.csrf.as_deref())?;
    let action: ScheduleAction = action.parse()?;
    detached(run_schedule_action(state, backend, name, action)).await?;
    Ok(Redirect::to(&format!("{}/schedules", ctx.base)).into_response())
}

fn csrf_header(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-csrf-token").and_then(|v| v.to_str().ok())
}

pub(crate) async fn queue_api(
    Extract(state): Extract<Arc<State>>,
    Path((backend, queue, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    security::allow_change(&state, csrf_header(&headers))?;
    let action: QueueAction = action.parse()?;
    let body: ActionBody = if body.is_empty() {
        ActionBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Failure::bad_request(format!("the body is not {{\"ids\": [...]}}: {e}")))?
    };
    let done = detached(run_queue_action(state, backend, queue, action, body.ids)).await?;
    Ok(Json(done).into_response())
}

pub(crate) async fn job_api(
    Extract(state): Extract<Arc<State>>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    security::allow_change(&state, csrf_header(&headers))?;
    let action: JobAction = action.parse()?;
    let done = detached(run_job_action(state, job_id(&id)?, action)).await?;
    Ok(Json(done).into_response())
}

pub(crate) async fn schedule_api(
    Extract(state): Extract<Arc<State>>,
    Path((backend, name, action)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    security::allow_change(&state, csrf_header(&headers))?;
    let action: ScheduleAction = action.parse()?;
    let done = detached(run_schedule_action(state, backend, name, action)).await?;
    Ok(Json(done).into_response())
}
