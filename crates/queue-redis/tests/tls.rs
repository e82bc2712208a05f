//! `rediss://` against a real TLS Redis: a `redis-server` started here on a
//! free port with a certificate signed by a throwaway CA
//! (`queue_testkit::certs`), trusted through the `tls_ca` URL parameter.

#![cfg(feature = "tls")]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use queue_core::{Backend, ConsumerOptions, ErrorKind, Message, QueueName};
use queue_redis::RedisBackend;

struct TlsRedis {
    child: tokio::process::Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Start a TLS-only redis-server; `None` (with the reason printed) when this
/// machine cannot (no redis-server or openssl).
async fn start() -> Option<TlsRedis> {
    if !support::have("redis-server") || !support::have("openssl") {
        return None;
    }
    let dir = std::env::temp_dir().join(format!("queue-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    queue_testkit::certs::make_test_certificates(&dir);
    // A port found free may be taken before the server binds it: try another.
    for _ in 0..3 {
        let port = support::free_port();
        if let Some(child) = spawn_server(&dir, port).await {
            return Some(TlsRedis { child, port, dir });
        }
    }
    panic!("the TLS redis-server did not start on three ports");
}

/// Start redis-server with TLS only, on `port`.
async fn spawn_server(dir: &Path, port: u16) -> Option<tokio::process::Child> {
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let args: Vec<String> = [
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--tls-port",
        &port.to_string(),
        "--tls-auth-clients",
        "no",
        "--tls-cert-file",
        &path("server.crt"),
        "--tls-key-file",
        &path("server.key"),
        "--tls-ca-cert-file",
        &path("ca.crt"),
        "--dir",
        &path(""),
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect();
    support::spawn_redis(&args).await
}

#[tokio::test]
async fn rediss_round_trip_with_a_private_ca() {
    let Some(server) = start().await else {
        return;
    };
    let ca = server.dir.join("ca.crt");
    let url = format!(
        "rediss://127.0.0.1:{}?tls_ca={}",
        server.port,
        ca.to_string_lossy()
    );
    let backend = RedisBackend::connect(&url).await.expect("connect over TLS");
    let queue = QueueName::new("tls-round-trip").unwrap();
    backend
        .producer(&queue)
        .await
        .expect("producer")
        .send(Message::new("over tls"))
        .await
        .expect("send");
    let consumer = backend
        .consumer(&queue, ConsumerOptions::default())
        .await
        .expect("consumer");
    let got = consumer
        .receive(10, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload().as_ref(), b"over tls");
    for d in got {
        d.ack().await.expect("ack");
    }
    assert!(backend.admin().health().await.healthy);

    // Without the CA, the server's certificate is not trusted.
    let untrusted = format!("rediss://127.0.0.1:{}?connect_timeout=3s", server.port);
    let err = RedisBackend::connect(&untrusted).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    // And a plain client on the TLS port gets no Redis answers.
    let plain = format!("redis://127.0.0.1:{}?connect_timeout=2s", server.port);
    assert!(RedisBackend::connect(&plain).await.is_err());
    // A CA file that does not exist is a config error naming the field.
    let missing = format!("rediss://127.0.0.1:{}?tls_ca=/nonexistent.pem", server.port);
    let err = RedisBackend::connect(&missing).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().starts_with("tls_ca"), "{err}");
}
