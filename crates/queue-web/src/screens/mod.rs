//! The dashboard's screens, one file each: each holds its page, its JSON
//! read and the HTML it draws.

use queue_core::{JobStatus, QueueStats};

use crate::html::duration;

pub(crate) mod job;
pub(crate) mod jobs;
pub(crate) mod overview;
pub(crate) mod queue;
pub(crate) mod schedules;
pub(crate) mod workers;

/// Paused or running.
fn state_badge(stats: &QueueStats) -> &'static str {
    if stats.paused {
        "<span class=\"badge paused\">paused</span>"
    } else {
        "<span class=\"badge ok\">running</span>"
    }
}

/// How long the oldest ready job has waited.
fn oldest(stats: &QueueStats) -> String {
    stats.oldest_ready_age.map_or("–".to_owned(), duration)
}

fn status_badge(status: JobStatus) -> String {
    let class = match status {
        JobStatus::Completed => "ok",
        JobStatus::Dead | JobStatus::Failed => "bad",
        JobStatus::Retry | JobStatus::Cancelled => "paused",
        _ => "",
    };
    format!("<span class=\"badge {class}\">{status}</span>")
}
