//! Changes: pause, resume, purge and redrive a queue; retry and forget a
//! job. Each is a POST with the CSRF token, refused in read-only mode,
//! from a page form (answered with a redirect back) or from the JSON API.

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
use crate::pages::{job_id, queue_of, store_of, Ctx, Failure};
use crate::{security, State};

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

/// What a queue action did.
async fn run_queue_action(
    state: &State,
    backend: &str,
    queue: &str,
    action: &str,
    ids: Option<Vec<String>>,
) -> Result<serde_json::Value, Failure> {
    let (b, q) = queue_of(state, backend, queue)?;
    let admin = b.admin();
    let done = match action {
        "pause" => {
            admin.pause(&q).await?;
            serde_json::json!({ "paused": true })
        }
        "resume" => {
            admin.resume(&q).await?;
            serde_json::json!({ "paused": false })
        }
        "purge" => serde_json::json!({ "purged": admin.purge(&q).await? }),
        "redrive" => {
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
        other => {
            return Err(Failure::new(
                StatusCode::NOT_FOUND,
                format!("no queue action {other:?} (pause, resume, purge, redrive)"),
            ))
        }
    };
    state.sampler.invalidate().await;
    Ok(done)
}

async fn run_job_action(
    state: &State,
    id: &str,
    action: &str,
) -> Result<serde_json::Value, Failure> {
    let id = job_id(id)?;
    let store = store_of(state)?.clone();
    match action {
        "retry" => {
            if let Some(manager) = &state.manager {
                manager.retry_job(id).await?;
            } else {
                let record = store.get(id).await?.ok_or_else(|| not_tracked(id))?;
                let backend = backend_holding(state, &record.queue).await;
                JobScheduler::new(backend, store).retry(id).await?;
            }
            Ok(serde_json::json!({ "retried": id }))
        }
        "delete" => {
            if !store.delete(id).await? {
                return Err(not_tracked(id).into());
            }
            Ok(serde_json::json!({ "deleted": id }))
        }
        other => Err(Failure::new(
            StatusCode::NOT_FOUND,
            format!("no job action {other:?} (retry, delete)"),
        )),
    }
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
) -> Response {
    if let Some((status, message)) = security::refuse_change(&state, form.csrf.as_deref()) {
        return Failure::new(status, message).page(&ctx, &state);
    }
    let ids = form.id.map(|id| vec![id]);
    match run_queue_action(&state, &backend, &queue, &action, ids).await {
        Ok(_) => Redirect::to(&format!(
            "{}/queues/{}/{}",
            ctx.base,
            url_part(&backend),
            url_part(&queue)
        ))
        .into_response(),
        Err(f) => f.page(&ctx, &state),
    }
}

pub(crate) async fn job_form(
    ctx: Ctx,
    Extract(state): Extract<Arc<State>>,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Some((status, message)) = security::refuse_change(&state, form.csrf.as_deref()) {
        return Failure::new(status, message).page(&ctx, &state);
    }
    match run_job_action(&state, &id, &action).await {
        Ok(_) if action == "delete" => Redirect::to(&format!("{}/jobs", ctx.base)).into_response(),
        Ok(_) => Redirect::to(&format!("{}/jobs/{}", ctx.base, url_part(&id))).into_response(),
        Err(f) => f.page(&ctx, &state),
    }
}

fn csrf_header(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-csrf-token").and_then(|v| v.to_str().ok())
}

pub(crate) async fn queue_api(
    Extract(state): Extract<Arc<State>>,
    Path((backend, queue, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some((status, message)) = security::refuse_change(&state, csrf_header(&headers)) {
        return Failure::new(status, message).json();
    }
    let body: ActionBody = if body.is_empty() {
        ActionBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(body) => body,
            Err(e) => {
                return Failure::new(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not {{\"ids\": [...]}}: {e}"),
                )
                .json()
            }
        }
    };
    match run_queue_action(&state, &backend, &queue, &action, body.ids).await {
        Ok(done) => Json(done).into_response(),
        Err(f) => f.json(),
    }
}

pub(crate) async fn job_api(
    Extract(state): Extract<Arc<State>>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some((status, message)) = security::refuse_change(&state, csrf_header(&headers)) {
        return Failure::new(status, message).json();
    }
    match run_job_action(&state, &id, &action).await {
        Ok(done) => Json(done).into_response(),
        Err(f) => f.json(),
    }
}
