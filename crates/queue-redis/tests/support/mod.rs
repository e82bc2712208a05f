//! Private `redis-server` processes for the tests that need a broker of
//! their own (TLS, restarts): started on a free port, awaited by the line
//! the server prints when it is ready.

#![allow(dead_code)] // each test binary uses its part

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Whether `tool` runs here; a missing tool fails a required run and
/// otherwise skips with the reason printed.
pub(crate) fn have(tool: &str) -> bool {
    if std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok()
    {
        return true;
    }
    let required = std::env::var("QUEUE_TEST_REQUIRED").is_ok_and(|v| v == "1");
    assert!(!required, "{tool} is missing and QUEUE_TEST_REQUIRED=1");
    eprintln!("skipping: {tool} is not installed");
    false
}

/// A loopback port free at the time of asking.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

/// Start `redis-server` with `args`; `None` if it exits (a taken port)
/// before it says it is ready.
pub(crate) async fn spawn_redis(args: &[String]) -> Option<Child> {
    let mut child = Command::new("redis-server")
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start redis-server");
    // The server says when it listens: wait for that line, not a timer.
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("Ready to accept connections") {
                return true;
            }
        }
        false
    })
    .await;
    if ready != Ok(true) {
        let _ = child.start_kill();
        return None;
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Some(child)
}
