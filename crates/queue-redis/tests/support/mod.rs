//! Private `redis-server` processes for the tests that need a broker of
//! their own (TLS, restarts): started on a free port, awaited by the line
//! the server prints when it is ready.

#![allow(dead_code)] // each test binary uses its part

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub(crate) use queue_testkit::host::{free_port, have};

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
