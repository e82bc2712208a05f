//! What every request passes before a handler sees it, and what every
//! answer carries:
//!
//! - the `Host` check: without a token only loopback names (and the hosts
//!   the application allows) are answered, so a page that rebinds its
//!   own name to 127.0.0.1 cannot read the dashboard (DNS rebinding);
//! - the `Origin` check on every change: a browser's cross-site `POST`
//!   is refused before the CSRF token is even looked at;
//! - the token, when one is set: a `Bearer` header, or a session cookie
//!   that `?token=` opens once (the cookie holds a random session id,
//!   never the token);
//! - the safety headers (CSP, `nosniff`, no frames, no referrer).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{OriginalUri, Request, State as Extract};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use serde::Serialize;

use crate::request::{mount_point, Failure};
use crate::State;

/// Scripts and styles only from the dashboard itself, no inline code, no
/// frames, forms only to itself.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// The session cookie's name, and its `__Host-` form (only possible with
/// `Secure` and `Path=/`).
const COOKIE: &str = "queue_web_session";
const HOST_COOKIE: &str = "__Host-queue_web_session";

/// How long a session opened with `?token=` lasts.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest go first.
const MAX_SESSIONS: usize = 4096;

/// The shortest token [`Dashboard::token`](crate::Dashboard::token) takes.
pub const MIN_TOKEN_LEN: usize = 16;

/// Compare without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `headers` carry `Authorization: Bearer <token>` (compared in
/// constant time), for routes a host adds beside the dashboard (`queue
/// serve`'s `/metrics`).
pub fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    bearer(headers).is_some_and(|presented| same(presented.as_bytes(), token.as_bytes()))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// The session ids the request's cookies carry.
fn cookies<'a>(headers: &'a HeaderMap) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE || name == HOST_COOKIE).then_some(value)
        })
}

/// The `token` query parameter, and the query without it.
fn query_token(query: &str) -> (Option<String>, String) {
    let mut token = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.strip_prefix("token=") {
            Some(t) => token = Some(percent_decode(t)),
            None => rest.push(pair),
        }
    }
    (token, rest.join("&"))
}

pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Which `Host` a request may name.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostRule {
    /// Names the application allowed (lowercase, with a port when one was
    /// given).
    pub(crate) allowed: Vec<String>,
    /// Any host (a token guards the dashboard and no list was given).
    pub(crate) any: bool,
}

/// A `Host` or `Origin` authority, lowercase: its host (an IPv6 address
/// in brackets) and its whole text. `None` unless it is a host with at
/// most a numeric port.
fn host_of(authority: &str) -> Option<(String, String)> {
    let whole = authority.trim().to_ascii_lowercase();
    let (host, port) = match whole.strip_prefix('[') {
        Some(rest) => {
            let (address, after) = rest.split_once(']')?;
            (format!("[{address}]"), after)
        }
        None => {
            let end = whole.find(':').unwrap_or(whole.len());
            (whole[..end].to_owned(), &whole[end..])
        }
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|p| {
            !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
        });
    (!host.is_empty() && port_ok).then_some((host, whole))
}

/// The authority a request was sent to: its `Host` header, or for HTTP/2
/// (which carries no `Host`) the URI's authority.
fn authority_of(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
}

impl HostRule {
    /// Whether `authority` is one of the hosts the application listed.
    fn listed(&self, authority: &str) -> bool {
        host_of(authority)
            .is_some_and(|(host, whole)| self.allowed.iter().any(|a| *a == host || *a == whole))
    }

    /// Whether `authority` may be answered: a loopback name (any port) or
    /// a listed host.
    fn allows_authority(&self, authority: &str) -> bool {
        let loopback = host_of(authority)
            .is_some_and(|(host, _)| matches!(host.as_str(), "127.0.0.1" | "localhost" | "[::1]"));
        loopback || self.listed(authority)
    }

    /// Whether `request` is answered.
    fn allows(&self, request: &Request) -> bool {
        self.any || authority_of(request).is_some_and(|a| self.allows_authority(a))
    }
}

/// Why a change (a `POST`) coming from a browser is refused: another
/// site sent it. Its `Origin` must be the authority the request was sent
/// to (host and port), or a listed host (behind a proxy that rewrites
/// `Host`). Requests without an `Origin` (scripts, curl) pass here and
/// still need the CSRF token. An opaque origin (`Origin: null`, which a
/// browser sends for a form posted under `Referrer-Policy: no-referrer`,
/// say one a proxy adds) passes only when the browser itself vouches
/// that the page is the dashboard's own (`Sec-Fetch-Site: same-origin`,
/// a header no page can set).
fn cross_site(request: &Request, rule: &HostRule) -> Option<&'static str> {
    let headers = request.headers();
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if site.is_some_and(|s| s.eq_ignore_ascii_case("cross-site")) {
        return Some("a cross-site request cannot change anything (Sec-Fetch-Site: cross-site)");
    }
    let origin = headers.get(header::ORIGIN)?;
    let Some(authority) = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, authority)| authority)
    else {
        if site.is_some_and(|s| s.eq_ignore_ascii_case("same-origin")) {
            return None;
        }
        return Some("a request from an opaque origin cannot change anything");
    };
    let own = authority_of(request).is_some_and(|to| to.eq_ignore_ascii_case(authority));
    if own || rule.listed(authority) {
        None
    } else {
        Some("a request from another origin cannot change anything")
    }
}

/// Open sessions: random ids (the cookie's value) with their expiry.
#[derive(Debug, Default)]
pub(crate) struct Sessions(Mutex<HashMap<String, Instant>>);

impl Sessions {
    fn open(&self) -> String {
        let id = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let now = Instant::now();
        let mut sessions = self.0.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, expires| *expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, expires)| **expires)
                .map(|(id, _)| id.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(id.clone(), now + SESSION_LIFETIME);
        id
    }

    fn valid<'a>(&self, mut presented: impl Iterator<Item = &'a str>) -> bool {
        let sessions = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        presented.any(|id| sessions.get(id).is_some_and(|expires| *expires > now))
    }
}

/// Where to send a browser after `?token=`: the same page under the
/// mount point, without the token. `inner` is the path inside the
/// dashboard; leading slashes and backslashes are collapsed, so
/// `//evil.example/` cannot become a redirect to another host.
fn redirect_target(base: &str, inner: &str, rest_of_query: &str) -> String {
    let base = base.trim_end_matches('/');
    let base = if base.starts_with("//") || base.starts_with("/\\") {
        ""
    } else {
        base
    };
    let rest = inner.trim_start_matches(['/', '\\']);
    let mut target = match (base.is_empty(), rest.is_empty()) {
        (true, _) => format!("/{rest}"),
        (false, true) => base.to_owned(),
        (false, false) => format!("{base}/{rest}"),
    };
    if !rest_of_query.is_empty() {
        target.push('?');
        target.push_str(rest_of_query);
    }
    target
}

/// Whether the request came over TLS (as far as the server can tell: an
/// `https` URI, or a proxy that says so).
fn over_tls(request: &Request) -> bool {
    request.uri().scheme_str() == Some("https")
        || request
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

/// The session cookie for `id`, scoped to the mount point.
fn session_cookie(id: &str, base: &str, secure: bool) -> String {
    let path = if base.is_empty() { "/" } else { base };
    let name = if secure && path == "/" {
        HOST_COOKIE
    } else {
        COOKIE
    };
    let mut cookie = format!("{name}={id}; HttpOnly; SameSite=Strict; Path={path}");
    if secure {
        cookie.push_str("; Secure");
    }
    cookie
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a token is required: open the dashboard with ?token=TOKEN, or send Authorization: Bearer TOKEN\n",
    )
        .into_response()
}

/// The mount point of the dashboard, from the request.
fn base_of(request: &Request) -> String {
    let inner = request.uri().path();
    let original = request
        .extensions()
        .get::<OriginalUri>()
        .map_or(inner, |u| u.0.path());
    mount_point(original, inner)
}

/// The token check: `None` to go on, or the answer instead (a redirect
/// that opens a session, or 401).
fn refuse_without_token(state: &State, token: &str, request: &Request) -> Option<Response> {
    let headers = request.headers();
    if bearer(headers).is_some_and(|p| same(p.as_bytes(), token.as_bytes()))
        || state.sessions.valid(cookies(headers))
    {
        return None;
    }
    let (from_query, rest) = query_token(request.uri().query().unwrap_or(""));
    match from_query {
        Some(t) if request.method() == Method::GET && same(t.as_bytes(), token.as_bytes()) => {
            // Open a session in a cookie; drop the token from the address bar.
            let base = base_of(request);
            let target = redirect_target(&base, request.uri().path(), &rest);
            let mut response = Redirect::to(&target).into_response();
            let secure = state.secure_cookie || over_tls(request);
            let cookie = session_cookie(&state.sessions.open(), &base, secure);
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            Some(response)
        }
        _ => Some(unauthorized()),
    }
}

/// Every request: the `Host`, the `Origin` of a change and the token;
/// every answer: the safety headers.
pub(crate) async fn guard(
    Extract(state): Extract<Arc<State>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = if !state.hosts.allows(&request) {
        (
            StatusCode::MISDIRECTED_REQUEST,
            "this dashboard does not answer for that host name (Dashboard::allowed_hosts)\n",
        )
            .into_response()
    } else if let Some(why) = (!matches!(*request.method(), Method::GET | Method::HEAD))
        .then(|| cross_site(&request, &state.hosts))
        .flatten()
    {
        Failure::forbidden(why).into_response()
    } else {
        match state
            .token
            .as_deref()
            .and_then(|token| refuse_without_token(&state, token, &request))
        {
            Some(answer) => answer,
            None => next.run(request).await,
        }
    };
    set_safety_headers(response.headers_mut());
    response
}

/// The safety headers every answer of the dashboard carries: a strict
/// Content-Security-Policy, `nosniff`, no framing, no referrer, and
/// `no-store` unless the answer set its own caching.
pub fn set_safety_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// A change is allowed only with the dashboard's CSRF token, and never
/// in read-only mode.
pub(crate) fn allow_change(state: &State, csrf: Option<&str>) -> Result<(), Failure> {
    if state.read_only {
        return Err(Failure::forbidden("the dashboard is read-only"));
    }
    match csrf {
        Some(c) if same(c.as_bytes(), state.csrf.as_bytes()) => Ok(()),
        Some(_) => Err(Failure::forbidden("the CSRF token is wrong")),
        None => Err(Failure::forbidden(
            "the CSRF token is missing (the x-csrf-token header, or the csrf form field)",
        )),
    }
}

#[derive(Serialize)]
struct Session<'a> {
    csrf: &'a str,
    read_only: bool,
    refresh_ms: u128,
}

/// The CSRF token and settings the pages' script needs.
pub(crate) async fn api_session(Extract(state): Extract<Arc<State>>) -> Response {
    Json(Session {
        csrf: &state.csrf,
        read_only: state.read_only,
        refresh_ms: state.refresh.as_millis(),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_query_and_cookies() {
        assert_eq!(
            query_token("a=1&token=s%20t&b=2"),
            (Some("s t".to_owned()), "a=1&b=2".to_owned())
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("x=1; queue_web_session=abc; __Host-queue_web_session=def"),
        );
        assert_eq!(cookies(&headers).collect::<Vec<_>>(), ["abc", "def"]);
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"ab", b"abc"));
        assert_eq!(percent_decode("%3Cb%3E%"), "<b>%");
    }

    #[test]
    fn redirects_stay_under_the_mount_point() {
        assert_eq!(redirect_target("", "//evil.example/", ""), "/evil.example/");
        assert_eq!(
            redirect_target("", "/\\evil.example", "a=1"),
            "/evil.example?a=1"
        );
        assert_eq!(
            redirect_target("/admin/queues", "//evil.example/x", ""),
            "/admin/queues/evil.example/x"
        );
        assert_eq!(redirect_target("/admin/queues", "/", ""), "/admin/queues");
        assert_eq!(redirect_target("", "/", ""), "/");
        assert_eq!(
            redirect_target("/admin/queues", "/jobs", "status=dead"),
            "/admin/queues/jobs?status=dead"
        );
    }

    #[test]
    fn hosts_loopback_and_allowed() {
        let rule = HostRule {
            allowed: vec!["admin.example".to_owned(), "other.example:8443".to_owned()],
            any: false,
        };
        for ok in [
            "127.0.0.1:8080",
            "LOCALHOST",
            "[::1]:80",
            "admin.example:9000",
            "other.example:8443",
        ] {
            assert!(rule.allows_authority(ok), "{ok}");
        }
        for refused in [
            "evil.example",
            "127.0.0.1.evil.example",
            "other.example:80",
            "[::2]",
        ] {
            assert!(!rule.allows_authority(refused), "{refused}");
        }
    }

    #[test]
    fn sessions_are_random_and_scoped() {
        let sessions = Sessions::default();
        let (a, b) = (sessions.open(), sessions.open());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(sessions.valid([a.as_str()].into_iter()));
        assert!(!sessions.valid(["nope"].into_iter()));
        assert_eq!(
            session_cookie("id", "/admin", false),
            "queue_web_session=id; HttpOnly; SameSite=Strict; Path=/admin"
        );
        assert_eq!(
            session_cookie("id", "", true),
            "__Host-queue_web_session=id; HttpOnly; SameSite=Strict; Path=/; Secure"
        );
    }
}
