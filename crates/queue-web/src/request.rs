//! What every handler shares about its request: where the dashboard is
//! mounted and whether only `<main>` is wanted, the error every handler
//! returns (an `IntoResponse` type, so handlers use `?`), and the lookups
//! of a backend, queue, job id, job store and schedules from path
//! segments.

use std::sync::Arc;

use axum::extract::{FromRequestParts, OriginalUri, Request, State as Extract};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use queue_core::{ErrorKind, MessageId, QueueName};

use crate::html::{esc, Frame};
use crate::State;

/// Where the router is mounted, and whether only `<main>` is wanted (a
/// live refresh).
pub(crate) struct Ctx {
    /// The mount path, without a trailing slash (`""` at the root).
    pub(crate) base: String,
    partial: bool,
}

impl Ctx {
    fn of(parts: &Parts) -> Ctx {
        let inner = parts.uri.path();
        let original = parts
            .extensions
            .get::<OriginalUri>()
            .map_or(inner, |u| u.0.path());
        let partial = parts.headers.contains_key("x-queue-partial");
        Ctx {
            base: mount_point(original, inner),
            partial,
        }
    }

    pub(crate) fn frame<'a>(&'a self, state: &'a State) -> Frame<'a> {
        Frame {
            base: &self.base,
            csrf: &state.csrf,
            read_only: state.read_only,
            refresh_ms: state.refresh.as_millis(),
        }
    }

    /// A page around `main`, or `main` alone for a live refresh.
    pub(crate) fn render(
        &self,
        state: &State,
        title: &str,
        active: &str,
        main: String,
    ) -> Response {
        if self.partial {
            return Html(main).into_response();
        }
        Html(self.frame(state).page(title, active, &main)).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Ctx::of(parts))
    }
}

/// Where the dashboard is mounted, without a trailing slash (`""` at the
/// root): the `original` path without the `inner` one the router saw
/// (axum's `nest` routes `/admin/queues` to `/`, so the whole original
/// path is the mount point then).
pub(crate) fn mount_point(original: &str, inner: &str) -> String {
    original
        .strip_suffix(inner)
        .unwrap_or(original)
        .trim_end_matches('/')
        .to_owned()
}

/// Why a request failed, with the status that says so. As a response it
/// is JSON (`{"error": ...}`); on the pages' routes [`render_page_errors`]
/// turns it into an error page.
#[derive(Debug, Clone)]
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

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::NOT_FOUND, message)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::FORBIDDEN, message)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        response.extensions_mut().insert(self);
        response
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

/// On the pages' routes: a [`Failure`] answer becomes an error page in
/// the dashboard's frame.
pub(crate) async fn render_page_errors(
    Extract(state): Extract<Arc<State>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let ctx = Ctx::of(&parts);
    let response = next.run(Request::from_parts(parts, body)).await;
    match response.extensions().get::<Failure>() {
        Some(failure) => {
            let main = format!(
                "<h1>{}</h1><p class=\"error\">{}</p>",
                failure.status,
                esc(&failure.message)
            );
            let mut page = ctx.render(&state, "error", "", main);
            *page.status_mut() = failure.status;
            page
        }
        None => response,
    }
}

/// The backend named `backend` and the queue named `queue`.
pub(crate) fn queue_of(
    state: &State,
    backend: &str,
    queue: &str,
) -> Result<(Arc<dyn queue_core::Backend>, QueueName), Failure> {
    let b = state
        .backend(backend)
        .ok_or_else(|| Failure::not_found(format!("no backend named {backend:?}")))?;
    let q = QueueName::new(queue)?;
    Ok((b.clone(), q))
}

pub(crate) fn job_id(id: &str) -> Result<MessageId, Failure> {
    Ok(id.parse::<MessageId>()?)
}

/// The dashboard's job store.
pub(crate) fn store_of(state: &State) -> Result<&Arc<dyn queue_core::JobStore>, Failure> {
    state.store.as_ref().ok_or_else(|| {
        Failure::new(
            StatusCode::NOT_IMPLEMENTED,
            "this dashboard has no job store (Dashboard::job_store); jobs are tracked by the application that submits them",
        )
    })
}

/// The schedules shown under the name `backend`.
pub(crate) fn schedules_of<'a>(
    state: &'a State,
    backend: &str,
) -> Result<&'a queue_worker::schedules::Schedules, Failure> {
    let set = state
        .schedules
        .iter()
        .find(|set| set.backend == backend)
        .ok_or_else(|| Failure::not_found(format!("no backend named {backend:?}")))?;
    set.schedules
        .as_ref()
        .ok_or_else(|| Failure::new(StatusCode::NOT_IMPLEMENTED, set.no_store_note()))
}
