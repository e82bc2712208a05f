//! The attacks the dashboard refuses, each over plain HTTP as a browser or
//! a script would send it: DNS rebinding (a foreign `Host` without a
//! token), a cross-site change (a foreign `Origin`, or `Sec-Fetch-Site:
//! cross-site`, even with the CSRF token), a stolen or guessed cookie (the
//! session cookie is a random id scoped to the mount point, never the
//! token), an open redirect after `?token=`, a short token, and requests
//! that would hold the server (a request timeout and a limit on requests
//! at once).

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use queue_core::{Backend, ErrorKind, MemoryBackend, QueueName};
use queue_web::Dashboard;
use support::{get as http_get, request, serve};

const SECRET: &str = "a-long-enough-secret-token";

async fn memory_with_queue(name: &str) -> (Arc<MemoryBackend>, QueueName) {
    let backend = Arc::new(MemoryBackend::new());
    let queue = QueueName::new(name).expect("name");
    backend.producer(&queue).await.expect("producer");
    (backend, queue)
}

fn mounted(dashboard: Dashboard) -> axum::Router {
    axum::Router::new().nest("/admin/queues", dashboard.router())
}

async fn csrf(addr: std::net::SocketAddr, path: &str) -> String {
    http_get(addr, path).await.json()["csrf"]
        .as_str()
        .expect("csrf")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_only_loopback_host_names_are_answered() {
    let (backend, _) = memory_with_queue("hosts").await;
    let addr = serve(Dashboard::for_backend("mem", backend.clone()).router()).await;
    // A page on evil.example rebound to 127.0.0.1 sends its own name.
    for host in [
        "evil.example",
        "evil.example:8080",
        "127.0.0.1.evil.example",
    ] {
        for path in ["/api/session", "/", "/api/overview", "/assets/app.js"] {
            let reply = request(addr, "GET", path, &[("host", host)], "").await;
            assert_eq!(reply.status, 421, "{host} {path}: {}", reply.body);
            assert!(!reply.body.contains("csrf"), "{}", reply.body);
            assert!(reply.header("content-security-policy").is_some());
        }
    }
    let no_host = request(addr, "GET", "/api/session", &[("host", "")], "").await;
    assert_eq!(no_host.status, 421, "an empty Host: {}", no_host.body);
    for host in ["127.0.0.1:1234", "localhost", "LOCALHOST:80", "[::1]:8080"] {
        let reply = request(addr, "GET", "/api/session", &[("host", host)], "").await;
        assert_eq!(reply.status, 200, "{host}: {}", reply.body);
    }

    // A mounted dashboard lists the names it is reached by.
    let addr = serve(mounted(
        Dashboard::for_backend("mem", backend).allowed_hosts(["Dash.Example"]),
    ))
    .await;
    let named = request(
        addr,
        "GET",
        "/admin/queues/api/session",
        &[("host", "dash.example:443")],
        "",
    )
    .await;
    assert_eq!(named.status, 200, "{}", named.body);
    let other = request(
        addr,
        "GET",
        "/admin/queues/api/session",
        &[("host", "evil.example")],
        "",
    )
    .await;
    assert_eq!(other.status, 421);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_from_another_site_is_refused_even_with_the_csrf_token() {
    let (backend, queue) = memory_with_queue("origins").await;
    let addr = serve(Dashboard::for_backend("mem", backend.clone()).router()).await;
    let token = csrf(addr, "/api/session").await;
    let pause = "/api/queues/mem/origins/pause";
    let form = "/queues/mem/origins/pause";
    let foreign: [&[(&str, &str)]; 5] = [
        &[("origin", "http://evil.example")],
        &[("origin", "null")],
        &[("origin", "null"), ("sec-fetch-site", "same-site")],
        &[("origin", "http://127.0.0.1:1")],
        &[("sec-fetch-site", "cross-site")],
    ];
    for headers in foreign {
        let mut api = vec![("x-csrf-token", token.as_str())];
        api.extend_from_slice(headers);
        let reply = request(addr, "POST", pause, &api, "").await;
        assert_eq!(reply.status, 403, "{headers:?}: {}", reply.body);
        let mut page = vec![("content-type", "application/x-www-form-urlencoded")];
        page.extend_from_slice(headers);
        let body = format!("csrf={token}");
        let reply = request(addr, "POST", form, &page, &body).await;
        assert_eq!(reply.status, 403, "{headers:?}: {}", reply.body);
        assert!(!backend.admin().stats(&queue).await.expect("stats").paused);
    }
    // The dashboard's own pages: the same origin, or a script without one.
    let own = format!("http://{addr}");
    let reply = request(
        addr,
        "POST",
        pause,
        &[
            ("x-csrf-token", token.as_str()),
            ("origin", own.as_str()),
            ("sec-fetch-site", "same-origin"),
        ],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(backend.admin().stats(&queue).await.expect("stats").paused);
    let resume = "/api/queues/mem/origins/resume";
    let reply = request(addr, "POST", resume, &[("x-csrf-token", &token)], "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // An opaque origin the browser vouches for (a form posted under a
    // proxy's `Referrer-Policy: no-referrer`).
    let reply = request(
        addr,
        "POST",
        pause,
        &[
            ("x-csrf-token", token.as_str()),
            ("origin", "null"),
            ("sec-fetch-site", "same-origin"),
        ],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(backend.admin().stats(&queue).await.expect("stats").paused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_is_a_random_id_scoped_to_the_mount_point() {
    let backend = Arc::new(MemoryBackend::new());
    let dashboard = Dashboard::for_backend("mem", backend.clone())
        .token(SECRET)
        .expect("token");
    let addr = serve(mounted(dashboard)).await;
    let login = http_get(addr, &format!("/admin/queues/jobs?token={SECRET}")).await;
    assert_eq!(login.status, 303, "{}", login.body);
    let cookie = login.header("set-cookie").expect("a cookie").to_owned();
    assert!(
        !cookie.contains(SECRET),
        "the cookie holds the token: {cookie}"
    );
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/admin/queues"] {
        assert!(cookie.contains(attribute), "{attribute}: {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let pair = cookie.split(';').next().expect("name=value");
    let (name, id) = pair.split_once('=').expect("name=value");
    assert!(id.len() >= 32, "{id}");
    let page = request(addr, "GET", "/admin/queues", &[("cookie", pair)], "").await;
    assert_eq!(page.status, 200);
    // The token itself in a cookie, under the session's name or the name
    // earlier versions used, opens nothing; nor does a made-up id.
    for forged in [
        format!("{name}={SECRET}"),
        format!("queue_web_token={SECRET}"),
        format!("{name}={}", "0".repeat(id.len())),
    ] {
        let reply = request(addr, "GET", "/admin/queues", &[("cookie", &forged)], "").await;
        assert_eq!(reply.status, 401, "{forged}");
    }

    // Over TLS (as a proxy says), the cookie is Secure; at the root it
    // takes the __Host- prefix.
    let secure = request(
        addr,
        "GET",
        &format!("/admin/queues?token={SECRET}"),
        &[("x-forwarded-proto", "https")],
        "",
    )
    .await;
    let cookie = secure.header("set-cookie").expect("a cookie");
    assert!(
        cookie.contains("; Secure") && cookie.contains("Path=/admin/queues"),
        "{cookie}"
    );
    let root = serve(
        Dashboard::for_backend("mem", backend)
            .token(SECRET)
            .expect("token")
            .secure_cookie(true)
            .router(),
    )
    .await;
    let login = http_get(root, &format!("/?token={SECRET}")).await;
    let cookie = login.header("set-cookie").expect("a cookie");
    assert!(
        cookie.starts_with("__Host-") && cookie.contains("Path=/;") && cookie.contains("Secure"),
        "{cookie}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_login_never_redirects_to_another_host() {
    let backend = Arc::new(MemoryBackend::new());
    let dashboard = || {
        Dashboard::for_backend("mem", backend.clone())
            .token(SECRET)
            .expect("token")
    };
    let root = serve(dashboard().router()).await;
    let reply = http_get(root, &format!("//evil.example/?token={SECRET}")).await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    let location = reply.header("location").expect("a location");
    assert_eq!(location, "/evil.example/");
    let reply = http_get(root, &format!("///evil.example/x?a=1&token={SECRET}")).await;
    assert_eq!(reply.header("location"), Some("/evil.example/x?a=1"));

    let nested = serve(mounted(dashboard())).await;
    let reply = http_get(
        nested,
        &format!("/admin/queues//evil.example/?token={SECRET}"),
    )
    .await;
    assert_eq!(
        reply.header("location"),
        Some("/admin/queues/evil.example/"),
        "{}",
        reply.body
    );
    let reply = http_get(nested, &format!("/admin/queues?token={SECRET}")).await;
    assert_eq!(reply.header("location"), Some("/admin/queues"));
}

#[test]
fn a_short_token_is_refused() {
    let backend = Arc::new(MemoryBackend::new());
    let error = Dashboard::for_backend("mem", backend.clone())
        .token("fifteen-chars..")
        .expect_err("15 bytes");
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(error.to_string().contains("at least 16 bytes"), "{error}");
    assert!(!error.to_string().contains("fifteen"), "{error}");
    assert!(Dashboard::for_backend("mem", backend)
        .token("sixteen-chars...")
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_time_out_and_requests_at_once_are_bounded() {
    let backend = Arc::new(MemoryBackend::new());
    // A route that waits until the test lets it go, behind the
    // dashboard's own limits.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let entered = Arc::new(tokio::sync::Notify::new());
    let (held, inside) = (gate.clone(), entered.clone());
    let dashboard = Dashboard::for_backend("mem", backend)
        .request_timeout(Duration::from_secs(2))
        .max_concurrent_requests(1)
        .route(
            "/hold",
            get(move || {
                let (held, inside) = (held.clone(), inside.clone());
                async move {
                    inside.notify_one();
                    held.acquire().await.expect("open").forget();
                    "released"
                }
            }),
        );
    let addr = serve(dashboard.router()).await;

    // Nobody opens the gate: the request ends at the timeout.
    let started = tokio::time::Instant::now();
    let reply = http_get(addr, "/hold").await;
    assert_eq!(reply.status, 408, "{}", reply.body);
    assert!(started.elapsed() < Duration::from_secs(10));
    // Its handler said it was holding (a notification kept for us).
    entered.notified().await;

    // One request holds the only slot: a second is answered 503 at once
    // (it never waits unbounded for a slot), and once the slot is free
    // requests are served again.
    let first = tokio::spawn(async move { http_get(addr, "/hold").await });
    entered.notified().await;
    let busy = http_get(addr, "/api/session").await;
    assert_eq!(busy.status, 503, "{}", busy.body);
    assert!(busy.header("content-security-policy").is_some());
    gate.add_permits(1);
    assert_eq!(first.await.expect("first").status, 200);
    assert_eq!(http_get(addr, "/api/session").await.status, 200);
}
