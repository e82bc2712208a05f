//! The workers screen: every live worker of every backend's registry.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State as Extract;
use axum::response::{IntoResponse, Response};
use axum::Json;
use queue_core::{ErrorKind, WorkerInfo};

use crate::html::{cut, duration, esc};
use crate::request::Ctx;
use crate::State;

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

pub(crate) async fn workers_page(ctx: Ctx, Extract(state): Extract<Arc<State>>) -> Response {
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

pub(crate) async fn api_workers(Extract(state): Extract<Arc<State>>) -> Response {
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
