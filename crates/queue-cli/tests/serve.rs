//! `queue serve` as a process: what it refuses to start with, the
//! dashboard, `/metrics` and `/healthz` behind it, and what bounds a
//! client's hold on it: `/healthz` answers healthy or unhealthy only, from
//! a check at most once a second; every route carries the safety headers;
//! a connection that never finishes its request headers is closed.

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::net::ToSocketAddrs;

use queue_testkit::broker_url;
use queue_testkit::proxy::{FaultProxy, Mode};

/// Run `queue serve` with `args` on a free loopback port; the child and
/// the address it printed.
fn serve(args: &[&str], token: Option<&str>) -> (Child, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_queue"));
    command
        .args(["serve", "--bind", "127.0.0.1:0"])
        .args(args)
        .env_remove("QUEUE_URL")
        .env_remove("QUEUE_WEB_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(token) = token {
        command.env("QUEUE_WEB_TOKEN", token);
    }
    let mut child = command.spawn().expect("run queue serve");
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("the address");
    let addr = first
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    assert!(!addr.is_empty(), "queue serve printed no address");
    (child, addr)
}

/// Run `checks`, then stop the server whatever happened.
fn with_server(mut child: Child, checks: impl FnOnce() + std::panic::UnwindSafe) {
    let outcome = std::panic::catch_unwind(checks);
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// One answer: status, headers (lowercase names) and body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on `addr` with an optional bearer token.
fn http_get(addr: &str, path: &str, token: Option<&str>) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("write");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read");
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn assert_safety_headers(reply: &Reply, what: &str) {
    let csp = reply.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'none'"), "{what}: CSP {csp:?}");
    assert_eq!(
        reply.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(reply.header("x-frame-options"), Some("DENY"), "{what}");
}

#[test]
fn serve_refuses_an_open_address_without_a_token_and_a_short_token() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_queue"))
            .args(args)
            .env("QUEUE_URL", "memory://")
            .env_remove("QUEUE_WEB_TOKEN")
            .output()
            .expect("run queue")
    };
    let out = run(&["serve", "--bind", "0.0.0.0:0"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("without a token"), "{stderr}");
    let out = run(&["serve", "--bind", "0.0.0.0:0", "--token", "short"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("at least 16 bytes"), "{stderr}");
    assert!(
        !stderr.contains("short"),
        "the token is not printed: {stderr}"
    );
}

#[test]
fn serve_runs_the_dashboard_with_metrics_and_health() {
    let token = "a-token-of-sixteen-or-more";
    let (child, addr) = serve(&["--url", "memory://"], Some(token));
    with_server(child, || {
        assert_eq!(
            http_get(&addr, "/", None).status,
            401,
            "the token is required"
        );
        let page = http_get(&addr, "/", Some(token));
        assert_eq!(page.status, 200);
        assert!(page.body.contains("<h1>Queues</h1>"), "{}", page.body);
        let health = http_get(&addr, "/healthz", None);
        assert_eq!((health.status, health.body.as_str()), (200, "healthy\n"));
        let metrics = http_get(&addr, "/metrics", None);
        assert_eq!(metrics.status, 401);
        let metrics = http_get(&addr, "/metrics", Some(token));
        assert_eq!(metrics.status, 200);
        for (what, reply) in [
            ("/", &page),
            ("/healthz", &health),
            ("/metrics", &metrics),
            ("a refusal", &http_get(&addr, "/metrics", None)),
        ] {
            assert_safety_headers(reply, what);
        }
    });
}

#[test]
fn healthz_says_only_unhealthy_and_not_why() {
    let Some(url) = broker_url("QUEUE_TEST_REDIS_URL") else {
        return;
    };
    // Redis behind a proxy that goes silent once the server is up.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let upstream = url
        .trim_start_matches("redis://")
        .split(['/', '?'])
        .next()
        .expect("host:port")
        .to_socket_addrs()
        .expect("resolve")
        .next()
        .expect("an address");
    let proxy = runtime
        .block_on(FaultProxy::start(upstream))
        .expect("start the proxy");
    let through = format!("redis://{}?request_timeout=500ms", proxy.addr());
    let (child, addr) = serve(&["--url", &through], None);
    with_server(child, || {
        assert_eq!(http_get(&addr, "/healthz", None).body, "healthy\n");
        proxy.set_mode(Mode::Blackhole);
        proxy.cut();
        std::thread::sleep(Duration::from_millis(1100));
        let health = http_get(&addr, "/healthz", None);
        assert_eq!(health.status, 503, "{}", health.body);
        assert_eq!(health.body, "unhealthy\n", "nothing but the verdict");
        assert_safety_headers(&health, "/healthz");
    });
}

/// Calls of `command` Redis has served since it started.
fn redis_calls(url: &str, command: &str) -> u64 {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client.get_connection().expect("connect to redis");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .expect("INFO commandstats");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn healthz_checks_the_broker_at_most_once_a_second() {
    let Some(url) = broker_url("QUEUE_TEST_REDIS_URL") else {
        return;
    };
    let (child, addr) = serve(&["--url", &url], None);
    with_server(child, || {
        assert_eq!(http_get(&addr, "/healthz", None).status, 200);
        let before = redis_calls(&url, "ping");
        let started = Instant::now();
        for _ in 0..40 {
            assert_eq!(http_get(&addr, "/healthz", None).status, 200);
        }
        let seconds = started.elapsed().as_secs() + 1;
        let pings = redis_calls(&url, "ping") - before;
        assert!(
            pings <= seconds + 1,
            "40 probes in under {seconds} s made {pings} PINGs"
        );
    });
}

#[test]
fn a_connection_that_never_finishes_its_headers_is_closed() {
    let (child, addr) = serve(&["--url", "memory://", "--header-read-timeout", "1s"], None);
    with_server(child, || {
        let mut stream = TcpStream::connect(&addr).expect("connect");
        // Half a request, then silence: a slow-loris client.
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .expect("write");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let started = Instant::now();
        let mut buffer = [0u8; 512];
        let closed = loop {
            match stream.read(&mut buffer) {
                // Closed (an error answer may come first).
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        assert!(
            closed,
            "the connection was still open after {:?}",
            started.elapsed()
        );
    });
}
