//! The jobs screen: tracked jobs by status and queue, with a search and
//! a cursor to page on.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Query, State as Extract};
use axum::response::{IntoResponse, Response};
use axum::Json;
use queue_core::{JobCursor, JobPage, JobQuery, JobStatus, QueueName};
use serde::Deserialize;

use super::status_badge;
use crate::html::{ago, cut, esc, url_part};
use crate::request::{store_of, Ctx, Failure};
use crate::State;

#[derive(Deserialize, Default)]
pub(crate) struct JobFilters {
    status: Option<String>,
    queue: Option<String>,
    search: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

fn job_query(filters: &JobFilters) -> Result<JobQuery, Failure> {
    let mut query = JobQuery::new().with_limit(filters.limit.unwrap_or(25));
    if let Some(status) = filters.status.as_deref().filter(|s| !s.is_empty()) {
        query = query.with_status(status.parse::<JobStatus>()?);
    }
    if let Some(queue) = filters.queue.as_deref().filter(|s| !s.is_empty()) {
        query = query.with_queue(QueueName::new(queue)?);
    }
    if let Some(search) = &filters.search {
        query = query.with_search(search.clone());
    }
    if let Some(cursor) = filters.cursor.as_deref().filter(|s| !s.is_empty()) {
        query = query.after(cursor.parse::<JobCursor>()?);
    }
    Ok(query)
}

async fn list_jobs(state: &State, filters: &JobFilters) -> Result<JobPage, Failure> {
    let query = job_query(filters)?;
    Ok(store_of(state)?.list(&query).await?)
}

fn jobs_main(ctx: &Ctx, filters: &JobFilters, page: Result<JobPage, Failure>) -> String {
    let base = esc(&ctx.base);
    let current = filters.status.as_deref().unwrap_or("");
    let mut options = String::from("<option value=\"\">any status</option>");
    for status in JobStatus::ALL {
        let _ = write!(
            options,
            "<option value=\"{s}\"{sel}>{s}</option>",
            s = status.as_str(),
            sel = if current == status.as_str() {
                " selected"
            } else {
                ""
            }
        );
    }
    let mut out = format!(
        "<h1>Jobs</h1><form class=\"filters\" method=\"get\" action=\"{base}/jobs\">\
         <select name=\"status\" aria-label=\"status\">{options}</select>\
         <input name=\"queue\" placeholder=\"queue\" value=\"{}\" aria-label=\"queue\">\
         <input name=\"search\" type=\"search\" placeholder=\"search name, error, id\" value=\"{}\" aria-label=\"search\">\
         <button type=\"submit\">Filter</button></form>",
        esc(filters.queue.as_deref().unwrap_or("")),
        esc(filters.search.as_deref().unwrap_or(""))
    );
    let page = match page {
        Ok(page) => page,
        Err(f) => {
            let _ = write!(out, "<p class=\"error\">{}</p>", esc(&f.message));
            return out;
        }
    };
    out.push_str(
        "<table id=\"jobs\"><thead><tr><th>Id</th><th>Name</th><th>Queue</th><th>Status</th>\
         <th class=\"n\">Attempts</th><th>Created</th><th>Last error</th></tr></thead><tbody>",
    );
    if page.jobs.is_empty() {
        out.push_str("<tr><td colspan=\"7\" class=\"note\">no jobs match</td></tr>");
    }
    for job in &page.jobs {
        let id = job.id.to_string();
        let _ = write!(
            out,
            "<tr data-id=\"{id}\"><td><a href=\"{base}/jobs/{id}\"><code>{}</code></a></td><td>{}</td><td>{}</td>\
             <td>{}</td><td class=\"n\">{}/{}</td><td>{}</td><td class=\"error\">{}</td></tr>",
            &id[..8],
            esc(job.name.as_deref().unwrap_or("–")),
            esc(job.queue.as_str()),
            status_badge(job.status),
            job.attempts,
            job.max_attempts,
            ago(job.created_at),
            esc(&cut(job.last_error.as_deref().unwrap_or(""), 200))
        );
    }
    out.push_str("</tbody></table>");
    if let Some(next) = page.next {
        let mut link = format!("{base}/jobs?cursor={}", url_part(&next.to_string()));
        for (name, value) in [
            ("status", &filters.status),
            ("queue", &filters.queue),
            ("search", &filters.search),
        ] {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                let _ = write!(link, "&amp;{name}={}", url_part(v));
            }
        }
        let _ = write!(
            out,
            "<p class=\"pager\"><a href=\"{link}\" rel=\"next\">Next page →</a></p>"
        );
    }
    out
}

pub(crate) async fn jobs_page(
    ctx: Ctx,
    Extract(state): Extract<Arc<State>>,
    Query(filters): Query<JobFilters>,
) -> Response {
    // A bad filter is shown above the (empty) list, not as an error page.
    let page = list_jobs(&state, &filters).await;
    let main = jobs_main(&ctx, &filters, page);
    ctx.render(&state, "Jobs", "Jobs", main)
}

pub(crate) async fn api_jobs(
    Extract(state): Extract<Arc<State>>,
    Query(filters): Query<JobFilters>,
) -> Result<Response, Failure> {
    Ok(Json(list_jobs(&state, &filters).await?).into_response())
}
