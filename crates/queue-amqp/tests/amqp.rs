//! RabbitMQ-specific behaviour beyond the conformance suite, against the
//! machine's broker (`QUEUE_TEST_AMQP_URL`).

use std::time::Duration;

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use queue_amqp::AmqpBackend;
use queue_core::{Backend, ConsumerOptions, ErrorKind, Message, QueueName, QueueOptions};
use queue_testkit::broker_url;

fn unique(prefix: &str) -> QueueName {
    let id = queue_core::MessageId::new().as_uuid().simple().to_string();
    QueueName::new(format!("{prefix}-{}", &id[id.len() - 12..])).expect("queue name")
}

fn plain(url: &str) -> String {
    let mut url = url::Url::parse(url).expect("amqp URL");
    url.set_query(None);
    if url.path().is_empty() || url.path() == "/" {
        url.set_path("/%2f");
    }
    url.to_string()
}

/// A queue another tool declared with other arguments: the backend uses it
/// as it is; asking it to declare its own arguments is a `Config` error
/// naming the argument, and the connection stays up for everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_declared_elsewhere_is_used_and_a_mismatch_is_a_config_error() {
    let Some(url) = broker_url("QUEUE_TEST_AMQP_URL") else {
        return;
    };
    let queue = unique("qt-foreign-decl");
    let conn = Connection::connect(&plain(&url), ConnectionProperties::default())
        .await
        .expect("lapin connects");
    let channel = conn.create_channel().await.expect("channel");
    // A plain durable classic queue: no priorities, no dead-letter queue.
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .expect("declare elsewhere");

    let backend = AmqpBackend::connect(&url).await.expect("connect");
    let producer = backend
        .producer(&queue)
        .await
        .expect("an existing queue is used as it is");
    producer.send(Message::new("hello")).await.expect("send");

    let err = backend
        .admin()
        .ensure_queue(&queue, &QueueOptions::default())
        .await
        .expect_err("the queue has other arguments");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(
        err.message().contains("x-max-priority") || err.message().contains("inequivalent"),
        "{err}"
    );
    assert!(err.message().contains("other arguments"), "{err}");

    // The connection is still up: the same backend carries on.
    producer
        .send(Message::new("again"))
        .await
        .expect("send after the error");
    let consumer = backend
        .consumer(&queue, ConsumerOptions::default())
        .await
        .expect("consumer");
    let mut got = Vec::new();
    while got.len() < 2 {
        let batch = consumer
            .receive(10, Duration::from_secs(10))
            .await
            .expect("receive");
        assert!(!batch.is_empty(), "both messages arrive");
        got.extend(batch);
    }
    for d in got {
        d.ack().await.expect("ack");
    }
    drop(consumer);
    backend.admin().delete_queue(&queue).await.expect("delete");
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "done".into()).await;
}

/// A wrong password is an `Auth` error that names the address and never
/// the password.
#[tokio::test]
async fn a_wrong_password_is_an_auth_error_without_the_password() {
    let Some(url) = broker_url("QUEUE_TEST_AMQP_URL") else {
        return;
    };
    let mut bad = url::Url::parse(&url).expect("url");
    bad.set_username("guest").expect("user");
    bad.set_password(Some("hunter2-wrong")).expect("password");
    let err = AmqpBackend::connect(bad.as_str())
        .await
        .expect_err("a wrong password is refused");
    let text = format!("{err} {err:?}");
    assert!(
        matches!(err.kind(), ErrorKind::Auth | ErrorKind::Connection),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}
