//! The schedules screen: every backend's periodic job schedules (from its
//! coordination store, or the [`Schedules`] the application gave) with
//! their last and next tick, and pause, resume, trigger now and remove.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State as Extract;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::future::join_all;
use queue_core::store::millis_since_epoch;
use queue_core::Backend;
use queue_worker::schedules::{Misfire, ScheduleInfo, Schedules};

use crate::html::{cut, duration, esc, from_now, url_part, utc};
use crate::request::Ctx;
use crate::State;

/// Characters of a schedule's payload the page shows.
const PAYLOAD_PREVIEW: usize = 120;

/// The schedules shown under one name: a backend's own (from its
/// coordination store), the ones the application gave
/// ([`Dashboard::schedules`](crate::Dashboard::schedules)), or none.
pub(crate) struct ScheduleSet {
    pub(crate) backend: String,
    /// The backend's kind (`memory`, `redis`), when the name is one of
    /// the dashboard's backends.
    kind: Option<&'static str>,
    pub(crate) schedules: Option<Schedules>,
}

impl ScheduleSet {
    /// Why there are no schedules here.
    pub(crate) fn no_store_note(&self) -> String {
        format!(
            "schedules need a coordination store, which {} does not keep: give one with \
             Dashboard::schedules (Schedules::with_store)",
            self.kind.unwrap_or("this backend")
        )
    }
}

/// One set per backend (the given schedules, else the backend's own
/// store's, else none), then the given ones whose name is no backend's.
pub(crate) fn sets(
    backends: &[(String, Arc<dyn Backend>)],
    mut given: Vec<(String, Schedules)>,
) -> Vec<ScheduleSet> {
    let mut sets: Vec<ScheduleSet> = backends
        .iter()
        .map(|(name, backend)| {
            let schedules = match given.iter().position(|(n, _)| n == name) {
                Some(i) => Some(given.remove(i).1),
                // The only error is "this backend keeps no store", which
                // the page says in its own words.
                None => Schedules::new(backend.clone()).ok(),
            };
            ScheduleSet {
                backend: name.clone(),
                kind: Some(backend.capabilities().backend),
                schedules,
            }
        })
        .collect();
    sets.extend(given.into_iter().map(|(backend, schedules)| ScheduleSet {
        backend,
        kind: None,
        schedules: Some(schedules),
    }));
    sets
}

/// What one set holds now.
enum Listing {
    NoStore,
    Failed(String),
    Listed(Vec<ScheduleInfo>),
}

/// Every set's schedules, read from the stores at once.
async fn list_all(state: &State) -> Vec<(&ScheduleSet, Listing)> {
    join_all(state.schedules.iter().map(|set| async move {
        let listing = match &set.schedules {
            None => Listing::NoStore,
            Some(schedules) => match schedules.list().await {
                Ok(list) => Listing::Listed(list),
                Err(e) => Listing::Failed(format!("could not list schedules: {e}")),
            },
        };
        (set, listing)
    }))
    .await
}

/// `30s`, `1h 30m`, `1d 2h 3m 4s 5ms`: every part, so an interval is
/// never shown rounded.
fn interval(d: Duration) -> String {
    let ms = d.as_millis();
    let parts = [
        (ms / 86_400_000, "d"),
        (ms / 3_600_000 % 24, "h"),
        (ms / 60_000 % 60, "m"),
        (ms / 1000 % 60, "s"),
        (ms % 1000, "ms"),
    ];
    let shown: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if shown.is_empty() {
        "0s".to_owned()
    } else {
        shown.join(" ")
    }
}

fn when(info: &ScheduleInfo) -> String {
    let spec = info.schedule.spec();
    match (spec.expression(), spec.interval()) {
        (Some(expression), _) => format!(
            "<code>{}</code> <span class=\"tz\">{}</span>",
            esc(expression),
            esc(spec.time_zone().unwrap_or("UTC"))
        ),
        (None, Some(every)) => format!("every {}", interval(every)),
        (None, None) => esc(&spec.to_string()),
    }
}

fn misfire(info: &ScheduleInfo) -> String {
    let policy = match info.schedule.misfire() {
        Misfire::Skip => "skip missed ticks".to_owned(),
        Misfire::Once => "fire once for missed ticks".to_owned(),
        Misfire::Each { max } => format!("fire each missed tick (the last {max})"),
    };
    format!(
        "{policy}<br><span class=\"note\">grace {}</span>",
        duration(info.schedule.grace())
    )
}

fn schedule_row(ctx: &Ctx, state: &State, set: &ScheduleSet, info: &ScheduleInfo) -> String {
    let frame = ctx.frame(state);
    let schedule = &info.schedule;
    let name = schedule.name();
    let queue = schedule.job().queue();
    let queue_cell = if set.kind.is_some() {
        format!(
            "<a href=\"{}/queues/{}/{}\">{}</a>",
            esc(&ctx.base),
            url_part(&set.backend),
            url_part(queue.as_str()),
            esc(queue.as_str())
        )
    } else {
        esc(queue.as_str())
    };
    let payload = String::from_utf8_lossy(schedule.job().payload());
    let state_badge = if schedule.is_paused() {
        "<span class=\"badge paused\">paused</span>"
    } else {
        "<span class=\"badge ok\">active</span>"
    };
    let last = info.last_tick.map_or("–".to_owned(), |at| {
        format!("{} <span class=\"note\">{}</span>", utc(at), from_now(at))
    });
    let next = match info.next_tick {
        Some(at) => format!("{} <span class=\"note\">{}</span>", utc(at), from_now(at)),
        None if schedule.is_paused() => "<span class=\"note\">paused</span>".to_owned(),
        None => "<span class=\"note\">none</span>".to_owned(),
    };
    let path = format!("/schedules/{}/{}", url_part(&set.backend), url_part(name));
    let mut actions = if schedule.is_paused() {
        frame.button(
            &format!("{path}/resume"),
            &[],
            "Resume",
            &format!(
                "Resume schedule {name}? It fires from its next tick; ticks missed while paused are not sent."
            ),
            "resume",
        )
    } else {
        frame.button(
            &format!("{path}/pause"),
            &[],
            "Pause",
            &format!("Pause schedule {name}? It stops firing until resumed."),
            "pause",
        )
    };
    actions.push_str(&frame.button(
        &format!("{path}/trigger"),
        &[],
        "Trigger now",
        &format!("Send one job of schedule {name} to {queue} now?"),
        "trigger",
    ));
    actions.push_str(&frame.button(
        &format!("{path}/remove"),
        &[],
        "Remove",
        &format!("Remove schedule {name}? It stops firing for good."),
        "danger remove",
    ));
    format!(
        "<tr data-schedule=\"{}\"><td class=\"name\">{}</td><td class=\"when\">{}</td>\
         <td class=\"job\">{queue_cell}<br><code class=\"payload\">{}</code></td><td class=\"misfire\">{}</td>\
         <td class=\"state\">{state_badge}</td><td class=\"last\">{last}</td><td class=\"next\">{next}</td>\
         <td class=\"actions\">{actions}</td></tr>",
        esc(name),
        esc(name),
        when(info),
        esc(&cut(&payload, PAYLOAD_PREVIEW)),
        misfire(info),
    )
}

fn schedules_main(ctx: &Ctx, state: &State, listed: &[(&ScheduleSet, Listing)]) -> String {
    let mut out = String::from("<h1>Schedules</h1>");
    if listed.is_empty() {
        out.push_str("<p class=\"note\">no backends</p>");
    }
    for (set, listing) in listed {
        let _ = write!(
            out,
            "<section class=\"schedules\" data-backend=\"{}\"><h2>{}{}</h2>",
            esc(&set.backend),
            esc(&set.backend),
            set.kind
                .map(|k| format!(" <span class=\"note\">({})</span>", esc(k)))
                .unwrap_or_default()
        );
        match listing {
            Listing::NoStore => {
                let _ = write!(
                    out,
                    "<p class=\"note no-store\">{}</p>",
                    esc(&set.no_store_note())
                );
            }
            Listing::Failed(error) => {
                let _ = write!(out, "<p class=\"error\">{}</p>", esc(error));
            }
            Listing::Listed(infos) => {
                out.push_str(
                    "<table class=\"schedules\"><thead><tr><th>Name</th><th>When</th><th>Job</th>\
                     <th>Missed ticks</th><th>State</th><th>Last tick</th><th>Next tick (UTC)</th>\
                     <th></th></tr></thead><tbody>",
                );
                if infos.is_empty() {
                    out.push_str("<tr><td colspan=\"8\" class=\"note\">no schedules</td></tr>");
                }
                for info in infos {
                    out.push_str(&schedule_row(ctx, state, set, info));
                }
                out.push_str("</tbody></table>");
            }
        }
        out.push_str("</section>");
    }
    out
}

/// A schedule as the API shows it: its record (name, spec, job, misfire,
/// grace, paused, times) with its last and next tick in Unix
/// milliseconds.
pub(crate) fn schedule_json(info: &ScheduleInfo) -> serde_json::Value {
    let mut value = serde_json::to_value(&info.schedule).unwrap_or_default();
    value["last_tick_ms"] = info.last_tick.map(millis_since_epoch).into();
    value["next_tick_ms"] = info.next_tick.map(millis_since_epoch).into();
    value
}

pub(crate) async fn schedules_page(ctx: Ctx, Extract(state): Extract<Arc<State>>) -> Response {
    let listed = list_all(&state).await;
    let main = schedules_main(&ctx, &state, &listed);
    ctx.render(&state, "Schedules", "Schedules", main)
}

pub(crate) async fn api_schedules(Extract(state): Extract<Arc<State>>) -> Response {
    let backends: Vec<serde_json::Value> = list_all(&state)
        .await
        .into_iter()
        .map(|(set, listing)| {
            let (schedules, note, error) = match listing {
                Listing::NoStore => (None, Some(set.no_store_note()), None),
                Listing::Failed(e) => (None, None, Some(e)),
                Listing::Listed(infos) => (
                    Some(infos.iter().map(schedule_json).collect::<Vec<_>>()),
                    None,
                    None,
                ),
            };
            serde_json::json!({
                "backend": set.backend,
                "kind": set.kind,
                "schedules": schedules,
                "note": note,
                "error": error,
            })
        })
        .collect();
    Json(serde_json::json!({ "backends": backends })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_show_every_part() {
        assert_eq!(interval(Duration::from_secs(30)), "30s");
        assert_eq!(interval(Duration::from_millis(1500)), "1s 500ms");
        assert_eq!(interval(Duration::from_secs(90_061)), "1d 1h 1m 1s");
        assert_eq!(interval(Duration::from_secs(3600)), "1h");
    }
}
