//! What tests that start brokers of their own need from the machine:
//! whether a tool is installed, and a free loopback port.

use std::process::{Command, Stdio};

/// Whether `tool` is here (a path that exists, or a command that starts);
/// a missing tool fails a required run (`QUEUE_TEST_REQUIRED=1`) and
/// otherwise skips with the reason printed.
pub fn have(tool: &str) -> bool {
    let found = if tool.starts_with('/') {
        std::path::Path::new(tool).exists()
    } else {
        Command::new(tool)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if found {
        return true;
    }
    let required = std::env::var("QUEUE_TEST_REQUIRED").is_ok_and(|v| v == "1");
    assert!(!required, "{tool} is missing and QUEUE_TEST_REQUIRED=1");
    eprintln!("skipping: {tool} is not installed");
    false
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}
