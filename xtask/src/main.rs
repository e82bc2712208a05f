//! Project automation, run as `cargo xtask <command>`.
//!
//! - `cargo xtask test`: start the services the tests need, export their
//!   URLs with `QUEUE_TEST_REQUIRED=1`, and run the workspace tests.
//! - `cargo xtask ci`: format check, clippy with `-D warnings`, docs with
//!   `-D warnings`, then `test`.
//! - `cargo xtask bench <name>`: run a benchmark (`memory`, `worker`).
//!
//! It stays thin: it starts services and runs cargo; test logic lives in tests.

#![forbid(unsafe_code)]

use std::env;
use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test             start services, run every workspace test (the README's test command)
  ci               fmt --check, clippy -D warnings, doc -D warnings, then test
  bench <name>     run a benchmark: memory (backend), worker (worker pool on memory)";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("ci") => ci(),
        Some("bench") => bench(args.get(1).map(String::as_str)),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}\n\n{USAGE}")),
        None => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Run `cargo` with `args` (and extra environment), failing on a non-zero exit.
fn cargo(args: &[&str], envs: &[(&str, &str)]) -> Result<(), String> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .envs(envs.iter().copied())
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo {} failed ({status})", args.join(" ")))
    }
}

fn test(extra: &[String]) -> Result<(), String> {
    // Broker suites arrive with their backend crates; each exports its
    // QUEUE_TEST_<BACKEND>_URL here after starting or checking its service.
    let mut args = vec!["test", "--workspace", "--all-features"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args, &[("QUEUE_TEST_REQUIRED", "1")])
}

fn ci() -> Result<(), String> {
    cargo(&["fmt", "--all", "--", "--check"], &[])?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    cargo(
        &["doc", "--workspace", "--no-deps", "--all-features"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    test(&[])
}

fn bench(backend: Option<&str>) -> Result<(), String> {
    match backend {
        Some("memory") => cargo(&["bench", "-p", "queue-testkit", "--bench", "memory"], &[]),
        Some(other) => Err(format!(
            "no benchmark for backend {other:?}; available: memory"
        )),
        None => Err(format!("bench needs a backend\n\n{USAGE}")),
    }
}
