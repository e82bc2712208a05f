//! The handler with its payload type erased: the lanes run every job
//! through one [`ErasedHandler`], which decodes the message into the
//! handler's job type and starts its future inside the job's trace scope.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use queue_core::error::{BoxError, HandlerError, Result};
use queue_core::job::Job;
use queue_core::message::Message;
use queue_core::trace::TraceContext;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::Instrument;

/// What a handler returns, type-erased: the result as JSON, or the error.
pub(super) type HandlerFuture =
    Pin<Box<dyn Future<Output = std::result::Result<Option<serde_json::Value>, BoxError>> + Send>>;

/// A handler with its payload type erased: decodes the message, then runs.
pub(super) type ErasedHandler =
    Arc<dyn Fn(&Message, JobScope) -> Result<HandlerFuture> + Send + Sync>;

/// Where a handler runs: its trace context, the sender's, and its span.
pub(super) struct JobScope {
    pub(super) context: TraceContext,
    pub(super) parent: Option<TraceContext>,
    pub(super) span: tracing::Span,
}

/// Erase the payload, result and error types of `handler`.
pub(super) fn erase<T, F, Fut, R, E>(handler: F) -> ErasedHandler
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(Job<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<R, E>> + Send + 'static,
    R: Serialize + Send + 'static,
    E: Into<BoxError> + Send + 'static,
{
    Arc::new(move |message: &Message, scope: JobScope| {
        let job = Job::<T>::decode(message)?;
        let fut = handler(job);
        let fut = async move {
            match fut.await {
                Ok(value) => Ok(serde_json::to_value(value).ok().filter(|v| !v.is_null())),
                Err(e) => Err(into_boxed(e)),
            }
        };
        // One allocation per job: the handler's future inside its trace
        // scope and span.
        Ok(Box::pin(
            queue_core::trace::scope_with_parent(scope.context, scope.parent, fut)
                .instrument(scope.span),
        ) as HandlerFuture)
    })
}

/// Box a handler's error, keeping a [`HandlerError`] findable when it
/// travels inside an `anyhow::Error` (whose own boxing would hide it).
fn into_boxed<E: Into<BoxError> + 'static>(error: E) -> BoxError {
    let any: Box<dyn Any> = Box::new(error);
    match any.downcast::<anyhow::Error>() {
        Ok(error) => match error.downcast::<HandlerError>() {
            Ok(handler_error) => Box::new(handler_error),
            Err(error) => error.into(),
        },
        Err(any) => match any.downcast::<E>() {
            Ok(error) => (*error).into(),
            Err(_) => unreachable!("the box holds an E"),
        },
    }
}
