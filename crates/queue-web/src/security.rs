//! Headers on every answer, the access token, and the CSRF check.

use std::sync::Arc;

use axum::extract::{Request, State as Extract};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use serde::Serialize;

use crate::request::Failure;
use crate::State;

/// Scripts and styles only from the dashboard itself, no inline code, no
/// frames, forms only to itself.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

const COOKIE: &str = "queue_web_token";

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

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
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

/// Every request: the token when one is set; every answer: the safety
/// headers.
pub(crate) async fn guard(
    Extract(state): Extract<Arc<State>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = match &state.token {
        None => next.run(request).await,
        Some(token) => {
            let headers = request.headers();
            let presented = bearer(headers).or_else(|| cookie(headers));
            if presented.is_some_and(|p| same(p.as_bytes(), token.as_bytes())) {
                next.run(request).await
            } else {
                let query = request.uri().query().unwrap_or("");
                let (from_query, rest) = query_token(query);
                match from_query {
                    Some(t) if request.method() == Method::GET && same(t.as_bytes(), token.as_bytes()) => {
                        // Keep it in a cookie; drop it from the address bar.
                        let original = request
                            .extensions()
                            .get::<axum::extract::OriginalUri>()
                            .map(|u| u.0.clone())
                            .unwrap_or_else(|| request.uri().clone());
                        let path = original.path().to_owned();
                        let target = if rest.is_empty() {
                            path
                        } else {
                            format!("{path}?{rest}")
                        };
                        let mut response = Redirect::to(&target).into_response();
                        let cookie = format!(
                            "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
                        );
                        if let Ok(value) = HeaderValue::from_str(&cookie) {
                            response.headers_mut().insert(header::SET_COOKIE, value);
                        }
                        response
                    }
                    _ => (
                        StatusCode::UNAUTHORIZED,
                        [(header::WWW_AUTHENTICATE, "Bearer")],
                        "a token is required: open the dashboard with ?token=TOKEN, or send Authorization: Bearer TOKEN\n",
                    )
                        .into_response(),
                }
            }
        }
    };
    let headers = response.headers_mut();
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
        HeaderValue::from_static("no-referrer"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
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
            HeaderValue::from_static("x=1; queue_web_token=abc"),
        );
        assert_eq!(cookie(&headers), Some("abc"));
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"ab", b"abc"));
        assert_eq!(percent_decode("%3Cb%3E%"), "<b>%");
    }
}
