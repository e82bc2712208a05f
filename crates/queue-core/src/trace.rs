//! W3C trace context (`traceparent`) carried in message headers.
//!
//! [`Job::encode`](crate::Job::encode) sets `traceparent` automatically: a
//! child of the current context when the code runs inside a job handler (or
//! inside [`scope`]), a new trace otherwise. The worker parses it and runs
//! the handler inside a `tracing` span named `job` whose `trace_id` and
//! `parent_span_id` fields are the sender's, with a fresh `span_id`; the
//! handler reads its own context with [`current`]. A subscriber that bridges
//! to OpenTelemetry can take the ids from those span fields.
//!
//! ```
//! use queue_core::trace::TraceContext;
//! let parent = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
//! let child = parent.child();
//! assert_eq!(child.trace_id, parent.trace_id);
//! assert_ne!(child.span_id, parent.span_id);
//! assert!(child.to_traceparent().starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
//! ```

use std::fmt;
use std::future::Future;

/// The header that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// One span's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// 128-bit trace id, never zero.
    pub trace_id: u128,
    /// 64-bit span id, never zero.
    pub span_id: u64,
    /// Whether the trace is sampled (flag `01`).
    pub sampled: bool,
}

fn nonzero_u64() -> u64 {
    loop {
        let v = crate::random::random_u64();
        if v != 0 {
            return v;
        }
    }
}

impl TraceContext {
    /// A new trace with a new root span.
    pub fn new_root() -> Self {
        let trace_id = (u128::from(nonzero_u64()) << 64) | u128::from(crate::random::random_u64());
        TraceContext {
            trace_id,
            span_id: nonzero_u64(),
            sampled: true,
        }
    }

    /// A new span in the same trace, whose parent is this one.
    pub fn child(&self) -> Self {
        TraceContext {
            trace_id: self.trace_id,
            span_id: nonzero_u64(),
            sampled: self.sampled,
        }
    }

    /// Parse a version-00 `traceparent` value; `None` if malformed.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00"
            || parts.next().is_some()
            || trace.len() != 32
            || span.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        let trace_id = parse_hex(trace).filter(|&t| t != 0)?;
        let span_id = u64::try_from(parse_hex(span)?).ok().filter(|&s| s != 0)?;
        let flags = u8::try_from(parse_hex(flags)?).ok()?;
        Some(TraceContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` header value.
    pub fn to_traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

/// Lowercase or uppercase hex digits (at most 32) as a number; `None` for
/// any other character. Faster than `from_str_radix`, which matters once
/// per job.
fn parse_hex(digits: &str) -> Option<u128> {
    if digits.len() > 32 {
        return None;
    }
    digits.bytes().try_fold(0u128, |acc, b| {
        let nibble = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        };
        Some(acc << 4 | u128::from(nibble))
    })
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_traceparent())
    }
}

tokio::task_local! {
    /// (current span, its parent span if it came from a message)
    static CURRENT: (TraceContext, Option<TraceContext>);
}

/// The trace context of the running job handler (or [`scope`]), if any.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|ctx| ctx.0).ok()
}

/// The parent of the running job handler's span: the context its message
/// carried in `traceparent`.
pub fn parent() -> Option<TraceContext> {
    CURRENT.try_with(|ctx| ctx.1).ok().flatten()
}

/// Run `future` with `context` as the current trace context.
pub async fn scope<F: Future>(context: TraceContext, future: F) -> F::Output {
    CURRENT.scope((context, None), future).await
}

/// Run `future` as span `context` whose parent is `parent` (the worker
/// does this for every job).
pub async fn scope_with_parent<F: Future>(
    context: TraceContext,
    parent: Option<TraceContext>,
    future: F,
) -> F::Output {
    CURRENT.scope((context, parent), future).await
}

/// The context a message sent now should carry: a child of the current
/// context, or a new trace. With the `otel` feature, inside a `tracing`
/// span an OpenTelemetry layer records, that span itself (so the job's
/// span in the worker is its child).
pub fn for_send() -> TraceContext {
    #[cfg(feature = "otel")]
    if let Some(span) = otel::current() {
        return span;
    }
    current().map_or_else(TraceContext::new_root, |ctx| ctx.child())
}

/// The bridge to OpenTelemetry (feature `otel`), through the application's
/// `tracing-opentelemetry` layer (0.34, with `opentelemetry` 0.33): the
/// sender's span travels as the message's `traceparent`, and the worker
/// makes it the remote parent of the job's span. Without the layer
/// installed (or with the span filtered out) both do nothing.
#[cfg(feature = "otel")]
pub mod otel {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TraceContext;

    /// The OpenTelemetry span context of `span`, if a layer records it.
    pub fn of_span(span: &tracing::Span) -> Option<TraceContext> {
        let context = span.context();
        let span_ref = context.span();
        let own = span_ref.span_context();
        own.is_valid().then(|| TraceContext {
            trace_id: u128::from_be_bytes(own.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(own.span_id().to_bytes()),
            sampled: own.is_sampled(),
        })
    }

    /// The current `tracing` span's OpenTelemetry context, if any.
    pub fn current() -> Option<TraceContext> {
        of_span(&tracing::Span::current())
    }

    /// `parent` as a remote OpenTelemetry context.
    pub fn remote(parent: &TraceContext) -> opentelemetry::Context {
        let flags = if parent.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::NOT_SAMPLED
        };
        let remote = SpanContext::new(
            TraceId::from(parent.trace_id),
            SpanId::from(parent.span_id),
            flags,
            true,
            TraceState::NONE,
        );
        opentelemetry::Context::new().with_remote_span_context(remote)
    }

    /// Make `parent` (a message's sender) the parent of `span`, which must
    /// not have been entered yet, and return `span`'s own context: the
    /// job's, which messages it sends carry. `None` when no layer records
    /// the span.
    pub fn adopt(span: &tracing::Span, parent: Option<&TraceContext>) -> Option<TraceContext> {
        if let Some(parent) = parent {
            // An error means no layer records this span: nothing to link.
            span.set_parent(remote(parent)).ok()?;
        }
        of_span(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-abc-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        let root = TraceContext::new_root();
        assert_eq!(TraceContext::parse(&root.to_traceparent()), Some(root));
    }

    #[tokio::test]
    async fn sends_inside_a_scope_are_children() {
        assert_eq!(current(), None);
        let root = TraceContext::new_root();
        let sent = scope(root, async { for_send() }).await;
        assert_eq!(sent.trace_id, root.trace_id);
        assert_ne!(sent.span_id, root.span_id);
        assert_ne!(
            for_send().trace_id,
            root.trace_id,
            "outside a scope: a new trace"
        );
    }
}
