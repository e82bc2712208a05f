//! `amqps://` against a real TLS RabbitMQ: a private node started here
//! with a TLS listener on a free port and a certificate signed by a
//! throwaway CA (`queue_testkit::certs`), trusted through the `tls_ca` URL
//! parameter.

#![cfg(feature = "tls")]

mod support;

use std::time::Duration;

use queue_amqp::AmqpBackend;
use queue_core::{Backend, ConsumerOptions, ErrorKind, Message, QueueName};
use support::PrivateRabbit;

#[tokio::test]
async fn amqps_round_trip_with_a_private_ca() {
    let Some(node) = PrivateRabbit::launch("classic", true).await else {
        return;
    };
    let node = node.expect("start a private rabbitmq node with TLS");
    let port = node.tls_port.expect("the node listens for TLS");
    let ca = node.dir.join("ca.crt");
    let url = format!(
        "amqps://guest:guest@127.0.0.1:{port}?tls_ca={}",
        ca.to_string_lossy()
    );
    let backend = AmqpBackend::connect(&url).await.expect("connect over TLS");
    let queue = QueueName::new("tls-round-trip").unwrap();
    backend
        .producer(&queue)
        .await
        .expect("producer")
        .send(Message::new("over tls"))
        .await
        .expect("send (confirmed over TLS)");
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
    backend.close().await.expect("close");

    // Without the CA, the node's certificate is not trusted.
    let untrusted = format!("amqps://guest:guest@127.0.0.1:{port}?connect_timeout=3s");
    let err = AmqpBackend::connect(&untrusted).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(!err.message().contains("guest:guest"), "{err}");
    // A plain client on the TLS port gets no AMQP answers.
    let plain = format!("amqp://guest:guest@127.0.0.1:{port}?connect_timeout=2s");
    assert!(AmqpBackend::connect(&plain).await.is_err());
    // A CA file that does not exist is a config error naming the field.
    let missing = format!("amqps://guest:guest@127.0.0.1:{port}?tls_ca=/nonexistent.pem");
    let err = AmqpBackend::connect(&missing).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("tls_ca"), "{err}");
}
