//! The overview: every backend's health, the rate chart over every queue,
//! and each queue's counts and rates.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State as Extract;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{oldest, state_badge};
use crate::html::{esc, rate, url_part};
use crate::request::Ctx;
use crate::sampler::Overview;
use crate::{svg, State};

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

pub(crate) async fn overview_page(ctx: Ctx, Extract(state): Extract<Arc<State>>) -> Response {
    let overview = state.sampler.overview(&state).await;
    ctx.render(&state, "Queues", "Queues", overview_main(&ctx, &overview))
}

pub(crate) async fn api_overview(Extract(state): Extract<Arc<State>>) -> Response {
    Json(state.sampler.overview(&state).await.as_ref().clone()).into_response()
}
