//! Input refused with a typed error, and bytes that are not ours:
//! oversize payloads, invalid queue names, foreign messages, bad
//! configuration, reserved headers.

use std::time::Duration;

use bytes::Bytes;
use queue_core::{
    envelope, DeadLetterReason, ErrorKind, Job, JobOptions, Message, QueueName, QueueOptions,
};
use queue_worker::Worker;

use super::{assert_kind, dead_letters, send, until, LEASE, QUIET, SOON};
use crate::harness::{receive_n, Ctx};

/// Appends `query` to a URL.
fn with_query(url: &str, query: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{query}")
}

/// Case 27: an oversize message is a typed error before any network call.
/// The limit counts the payload with its metadata (`Message::wire_size`).
pub async fn payload_too_large(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    let max = ctx.caps().max_payload;
    let text = assert_kind(
        producer.send(Message::new(vec![7u8; max + 1])).await,
        ErrorKind::PayloadTooLarge,
        "send",
    );
    assert!(text.contains(&max.to_string()), "{text} names the limit");
    let batch = producer
        .send_batch(vec![Message::new("ok"), Message::new(vec![7u8; max + 1])])
        .await;
    if let Err(e) = &batch {
        assert!(
            !e.is_partial(),
            "a message that fails the check sends nothing: {e}"
        );
    }
    assert_kind(
        batch.map_err(queue_core::Error::from),
        ErrorKind::PayloadTooLarge,
        "send_batch",
    );
    // A lowered limit from the URL applies the same way, metadata included.
    let backend = ctx
        .harness()
        .connect(&with_query(&ctx.harness().url(), "max_payload=1024"))
        .await
        .expect("connect");
    assert_eq!(backend.capabilities().max_payload, 1024);
    let small = ctx.queue_on(&backend);
    let p = backend.producer(&small).await.expect("producer");
    let fits = 1024 - Message::new(Vec::new()).wire_size();
    let over = Message::new(vec![0u8; fits + 1]);
    assert_eq!(over.wire_size(), 1025);
    assert_kind(
        p.send(over).await,
        ErrorKind::PayloadTooLarge,
        "lowered limit",
    );
    let header = Message::new(vec![0u8; fits - 10]).with_header("tenant", "acme-corp");
    assert_kind(
        p.send(header).await,
        ErrorKind::PayloadTooLarge,
        "headers count against the limit",
    );
    p.send(Message::new(vec![0u8; fits]))
        .await
        .expect("exactly at the lowered limit");
    // Nothing oversize was queued.
    let consumer = backend
        .consumer(&small, Default::default())
        .await
        .expect("consumer");
    let got = receive_n(&*consumer, 2, Duration::from_secs(2)).await;
    assert_eq!(got.len(), 1);
    for d in got {
        d.ack().await.expect("ack");
    }
}

/// Case 28: an invalid queue name is a typed error naming the rule.
pub async fn invalid_queue_name(ctx: &Ctx) {
    for bad in [
        "",
        "has space",
        "dot.ted",
        "-leading",
        "ünï",
        "a/b",
        &"x".repeat(65),
    ] {
        let err = QueueName::new(bad).expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::InvalidQueueName);
        assert!(
            err.to_string().contains("1 to 64 ASCII letters, digits"),
            "{err}"
        );
    }
    // The longest valid name works on the backend end to end.
    let long = ctx.queue_of_len(64);
    ctx.producer(&long)
        .await
        .send(Message::new("x"))
        .await
        .expect("send to the longest name");
    let consumer = ctx.consumer(&long, None).await;
    for d in receive_n(&*consumer, 1, SOON).await {
        d.ack().await.expect("ack");
    }
    assert_eq!(long.as_str().len(), 64);
}

/// Case 29: bytes written by a plain client are delivered raw or
/// dead-lettered with reason `decode`; never a panic or an endless loop.
pub async fn foreign_message(ctx: &Ctx) {
    let junk: &[u8] = b"\xff\xfe not an envelope \x00";
    assert_eq!(
        envelope::decode(&Bytes::from_static(b"\xff\xfe not an envelope \x00"))
            .unwrap_err()
            .kind(),
        ErrorKind::Decode
    );
    let queue = ctx.queue();
    // Make the queue exist before a plain client writes next to it.
    ctx.backend()
        .admin()
        .ensure_queue(&queue, &QueueOptions::default())
        .await
        .expect("ensure queue");
    match ctx.harness().inject_foreign(&queue, junk).await {
        None => {
            eprintln!(
                "in-process backend: no plain client can write foreign bytes; checked the decoder"
            );
        }
        Some(result) => {
            result.expect("inject foreign bytes");
            let consumer = ctx.consumer(&queue, Some(LEASE)).await;
            let got = consumer
                .receive(10, Duration::from_secs(3))
                .await
                .expect("receive never fails on foreign bytes");
            if let Some(d) = got.into_iter().next() {
                assert_eq!(d.payload().as_ref(), junk, "delivered as the raw payload");
                d.ack().await.expect("ack a raw delivery");
            } else {
                let dead = dead_letters(ctx, &queue).await;
                assert_eq!(dead.len(), 1, "not delivered, so dead-lettered");
                assert_eq!(dead[0].reason, DeadLetterReason::Decode);
            }
            let again = consumer.receive(10, LEASE + QUIET).await.expect("receive");
            assert!(again.is_empty(), "foreign bytes came back: an endless loop");
        }
    }
    // A typed worker meeting bytes that are not its job type dead-letters
    // them with reason `decode`, once, without retrying.
    let typed = ctx.queue();
    let id = send(ctx, &typed, Message::new(junk.to_vec())).await;
    let worker = Worker::builder(ctx.backend().clone(), typed.clone())
        .handler(|_job: Job<u32>| async { Ok::<_, std::io::Error>(()) })
        .start()
        .await
        .expect("start worker");
    let mut events = worker.subscribe();
    let buried = until(&mut events, SOON, || worker.stats().dead_lettered == 1).await;
    let stats = worker.stats();
    worker.shutdown().await.expect("shutdown");
    assert!(
        buried,
        "the undecodable job was not dead-lettered: {stats:?}"
    );
    assert_eq!(
        (stats.started, stats.completed, stats.in_flight),
        (1, 0, 0),
        "{stats:?}"
    );
    let dead = dead_letters(ctx, &typed).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, id);
    assert_eq!(dead[0].reason, DeadLetterReason::Decode);
    assert_eq!(dead[0].message.payload.as_ref(), junk, "the bytes are kept");
}

/// Case 30: malformed URL, unknown scheme, out-of-range option: typed
/// errors naming the field; credentials absent from the message.
pub async fn bad_config(ctx: &Ctx) {
    let url = ctx.harness().url();
    let scheme = url.split("://").next().unwrap_or_default().to_owned();
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or_default();
    // Put a known password into the URL, replacing any credentials.
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let hosts = rest[..authority_end].rsplit('@').next().unwrap_or_default();
    let hosts = if hosts.is_empty() { "localhost" } else { hosts };
    let secret_url = format!(
        "{scheme}://qtuser:hunter2@{hosts}{}",
        &rest[authority_end..]
    );
    for (input, field) in [
        (with_query(&secret_url, "lease=0s"), "lease"),
        (with_query(&secret_url, "lease=soon"), "lease"),
        (with_query(&secret_url, "max_payload=-1"), "max_payload"),
        (
            with_query(&secret_url, "connect_timeout=99d"),
            "connect_timeout",
        ),
        (
            with_query(&secret_url, "no_such_option=1"),
            "no_such_option",
        ),
        ("nope://qtuser:hunter2@host".to_owned(), "scheme"),
        (format!("{scheme}://qtuser:hunter2@[::1"), "url"),
    ] {
        let err = match ctx.harness().connect(&input).await {
            Ok(_) => panic!("{field}: a bad URL connected"),
            Err(e) => e,
        };
        let text = format!("{err} {err:?}");
        assert_eq!(err.kind(), ErrorKind::Config, "{field}: {text}");
        assert!(err.message().contains(field), "{field} not named in {text}");
        assert!(!text.contains("hunter2"), "password leaked: {text}");
    }
}

/// Case 41: the header namespace `x-queue-` is the library's own: a user
/// header in it is refused before any network call, naming it; the
/// library's job headers and other names pass.
pub async fn reserved_headers(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    for name in ["x-queue-attempt", "X-Queue-Whatever"] {
        let text = assert_kind(
            producer
                .send(Message::new("x").with_header(name, "1"))
                .await,
            ErrorKind::InvalidInput,
            name,
        );
        assert!(text.contains(name) && text.contains("reserved"), "{text}");
        let batch = producer
            .send_batch(vec![
                Message::new("ok"),
                Message::new("x").with_header(name, "1"),
            ])
            .await;
        assert_kind(
            batch.map_err(queue_core::Error::from),
            ErrorKind::InvalidInput,
            name,
        );
    }
    let job = Job::encode(
        &"typed".to_owned(),
        &JobOptions::default().with_timeout(Duration::from_secs(5)),
    )
    .expect("encode")
    .with_header("x-queued-by", "ops");
    let id = producer.send(job).await.expect("library headers pass");
    let consumer = ctx.consumer(&queue, None).await;
    let got = receive_n(&*consumer, 2, Duration::from_secs(2)).await;
    assert_eq!(got.len(), 1, "only the valid message was queued");
    assert_eq!(got[0].message().id, id);
    assert_eq!(got[0].message().headers["x-queued-by"], "ops");
    for d in got {
        d.ack().await.expect("ack");
    }
}
