//! Private RabbitMQ nodes for the tests that need a broker of their own
//! (a restart, TLS): their own node name, ports and data directory, so
//! killing one never touches the machine's broker.

#![allow(dead_code)] // each test binary uses its part

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use queue_core::{Error, ErrorKind, Result};
use queue_testkit::BrokerProcess;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The RabbitMQ start script of Debian's package (run directly, as the
/// current user, with every path pointed into a private directory).
pub(crate) const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
/// Its control script, to reach a private node by name.
pub(crate) const RABBITMQCTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

pub(crate) use queue_testkit::host::{free_port, have};

/// A private RabbitMQ node. With TLS it also listens for `amqps://` on
/// `tls_port` with the certificates of `queue_testkit::certs` in its
/// directory.
pub(crate) struct PrivateRabbit {
    name: String,
    pub(crate) port: u16,
    pub(crate) tls_port: Option<u16>,
    dist_port: u16,
    pub(crate) dir: PathBuf,
    queue_type: &'static str,
    child: Option<tokio::process::Child>,
}

impl PrivateRabbit {
    /// Start a node; `None` (with the reason printed) when this machine
    /// has no RabbitMQ (or no `openssl` for TLS) and the run is not
    /// required.
    pub(crate) async fn launch(queue_type: &'static str, tls: bool) -> Option<Result<Self>> {
        if !have(RABBITMQ_SERVER) || (tls && !have("openssl")) {
            return None;
        }
        let tail = queue_core::MessageId::new().as_uuid().simple().to_string();
        let tail = &tail[tail.len() - 12..];
        let dir = std::env::temp_dir().join(format!("queue-rabbit-{tail}"));
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).expect("temp dir");
        }
        std::fs::write(dir.join("plugins"), "[].").expect("plugins file");
        if tls {
            queue_testkit::certs::make_test_certificates(&dir);
        }
        let mut broker = PrivateRabbit {
            name: format!("qt{tail}@localhost"),
            port: 0,
            tls_port: None,
            dist_port: 0,
            dir,
            queue_type,
            child: None,
        };
        // A port found free may be taken before the node binds it.
        for _ in 0..3 {
            broker.port = free_port();
            broker.dist_port = free_port();
            broker.tls_port = tls.then(free_port);
            if broker.start().await.is_ok() {
                return Some(Ok(broker));
            }
        }
        Some(Err(Error::new(
            ErrorKind::Connection,
            "a private rabbitmq node did not start on three ports",
        )))
    }

    /// The node's configuration file: empty, or the TLS listener.
    fn write_config(&self) -> PathBuf {
        let path = self.dir.join("rabbitmq.conf");
        let mut text = String::new();
        if let Some(tls_port) = self.tls_port {
            let file = |name: &str| self.dir.join(name).to_string_lossy().into_owned();
            text = format!(
                "listeners.ssl.1 = 127.0.0.1:{tls_port}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                file("ca.crt"),
                file("server.crt"),
                file("server.key"),
            );
        }
        std::fs::write(&path, text).expect("write rabbitmq.conf");
        path
    }

    /// Kill the node's whole process group (the start script and the
    /// Erlang VM it runs) with SIGKILL.
    async fn kill_group(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = tokio::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status()
                    .await;
            }
            let _ = child.wait().await;
        }
    }
}

#[async_trait]
impl BrokerProcess for PrivateRabbit {
    fn url(&self) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}?queue_type={}",
            self.port, self.queue_type
        )
    }

    /// SIGKILL, after the node wrote its metadata log to disk. RabbitMQ
    /// 3.10 keeps metadata (queue declarations) in Mnesia, whose log
    /// caches writes for up to two seconds: a queue declared just before
    /// a SIGKILL was gone after the restart (twice in about twenty
    /// clean-clone runs), which tests the broker, not this library.
    /// Messages are not involved: a confirmed message is on disk already.
    async fn kill(&mut self) -> Result<()> {
        let synced = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(RABBITMQCTL)
                .current_dir(&self.dir)
                .env("HOME", &self.dir)
                .args(["-n", &self.name, "eval", "mnesia:sync_log()."])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output(),
        )
        .await;
        match synced {
            Ok(Ok(out)) if out.status.success() => {}
            other => eprintln!(
                "could not sync the private node's metadata log before the kill: {other:?}"
            ),
        }
        self.kill_group().await;
        Ok(())
    }

    /// Starts the node and returns once it prints that the broker started
    /// (it boots in 5 to 15 seconds here).
    async fn start(&mut self) -> Result<()> {
        let config = self.write_config();
        let dir = &self.dir;
        let mut child = tokio::process::Command::new(RABBITMQ_SERVER)
            .current_dir(dir)
            .env("HOME", dir)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("plugins"))
            .env("RABBITMQ_CONFIG_FILE", config)
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("none.config"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("none-env"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::new(ErrorKind::Other, format!("spawn rabbitmq-server: {e}")))?;
        let stdout = child.stdout.take().expect("piped stdout");
        self.child = Some(child);
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(90), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Starting broker") && line.contains("completed") {
                    return true;
                }
            }
            false
        })
        .await;
        // Keep reading its output so the node never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        if ready == Ok(true) {
            Ok(())
        } else {
            self.kill_group().await;
            Err(Error::new(
                ErrorKind::Connection,
                format!(
                    "a private rabbitmq node did not start on port {}",
                    self.port
                ),
            ))
        }
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        if let Some(pid) = self.child.as_ref().and_then(|c| c.id()) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
