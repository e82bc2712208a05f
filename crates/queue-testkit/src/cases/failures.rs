//! Failed attempts: dead letters after the last attempt or on request,
//! redrive, error texts kept to a bounded size, and attempts at the top
//! of their range.

use std::collections::HashSet;
use std::time::Duration;

use queue_core::error::MAX_ERROR_TEXT;
use queue_core::{
    DeadLetterCursor, DeadLetterQuery, DeadLetterReason, ErrorKind, Message, MessageId, Redrive,
};

use super::{assert_unsupported, dead_letters, receive_one, send, send_numbered, QUIET, SOON};
use crate::harness::{receive_n, Ctx};

/// Case 17: after the last attempt the message sits in the dead-letter queue
/// with its attempts, last error and reason.
pub async fn max_attempts_dead_letters(ctx: &Ctx) {
    let queue = ctx.queue();
    let id = send(ctx, &queue, Message::new("doomed").with_max_attempts(2)).await;
    let consumer = ctx.consumer(&queue, None).await;
    for attempt in 1..=2u32 {
        let d = receive_one(&*consumer, "delivery").await;
        assert_eq!(d.attempt(), attempt);
        if attempt == 2 {
            assert_eq!(
                d.message().last_error.as_deref(),
                Some("boom 1"),
                "last error travels"
            );
        }
        d.nack_with_error(Duration::ZERO, format!("boom {attempt}"))
            .await
            .expect("nack");
    }
    let rest = consumer.receive(10, QUIET).await.expect("receive");
    assert!(rest.is_empty(), "no delivery after the last attempt");
    let dead = dead_letters(ctx, &queue).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let entry = &dead[0];
    assert_eq!(entry.message.id, id);
    assert_eq!(entry.reason, DeadLetterReason::MaxAttempts);
    assert_eq!(entry.attempts, 2);
    assert_eq!(entry.last_error.as_deref(), Some("boom 2"));
    assert_eq!(entry.message.payload.as_ref(), b"doomed");
}

/// Case 18: `dead_letter(reason)` goes straight there.
pub async fn dead_letter_explicit(ctx: &Ctx) {
    let queue = ctx.queue();
    let id = send(ctx, &queue, Message::new("poison")).await;
    let consumer = ctx.consumer(&queue, None).await;
    let d = receive_one(&*consumer, "delivery").await;
    d.dead_letter(DeadLetterReason::Rejected("bad data".into()))
        .await
        .expect("dead_letter");
    let dead = dead_letters(ctx, &queue).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, id);
    assert_eq!(
        dead[0].reason,
        DeadLetterReason::Rejected("bad data".into())
    );
    assert_eq!(dead[0].attempts, 1);
    let rest = consumer
        .receive(10, Duration::from_millis(500))
        .await
        .expect("receive");
    assert!(rest.is_empty());
}

/// Case 19: dead letters can be listed, inspected and moved back, then are processed normally.
pub async fn redrive(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    let ids = send_numbered(&*producer, "dead", 3).await;
    let consumer = ctx.consumer(&queue, None).await;
    for d in receive_n(&*consumer, 3, SOON).await {
        d.dead_letter(DeadLetterReason::Rejected("to redrive".into()))
            .await
            .expect("dead_letter");
    }
    let admin = ctx.backend().admin();
    let dead = admin.dead_letters(&queue, 10).await.expect("list");
    assert_eq!(dead.len(), 3);
    if !ctx.caps().redrive.is_available() {
        return assert_unsupported(admin.redrive(&queue, Redrive::All).await, "redrive");
    }
    let moved = admin
        .redrive(&queue, Redrive::Ids(vec![ids[1]]))
        .await
        .expect("redrive one");
    assert_eq!(moved, 1);
    let back = receive_one(&*consumer, "redriven message").await;
    assert_eq!(back.message().id, ids[1]);
    assert_eq!(back.attempt(), 1, "redrive starts a fresh attempt count");
    back.ack().await.expect("ack");
    assert_eq!(
        admin
            .redrive(&queue, Redrive::All)
            .await
            .expect("redrive all"),
        2
    );
    let rest = receive_n(&*consumer, 2, SOON).await;
    let rest_ids: HashSet<MessageId> = rest.iter().map(|d| d.message().id).collect();
    assert_eq!(rest_ids, HashSet::from([ids[0], ids[2]]));
    for d in rest {
        d.ack().await.expect("ack");
    }
    assert!(admin
        .dead_letters(&queue, 10)
        .await
        .expect("list")
        .is_empty());
}

/// Case 55: dead letters are read a page at a time after a cursor, as
/// previews: every letter once across the pages, oldest first, each
/// payload cut to the preview with its real length kept; a cursor the
/// backend did not make is refused.
pub async fn dead_letter_pages(ctx: &Ctx) {
    const LETTERS: usize = 5;
    const PAYLOAD: usize = 3000;
    const PREVIEW: usize = 100;
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    let mut ids = Vec::new();
    for n in 0..LETTERS {
        let mut body = format!("letter {n} ").into_bytes();
        body.resize(PAYLOAD, b'.');
        ids.push(producer.send(Message::new(body)).await.expect("send"));
    }
    let consumer = ctx.consumer(&queue, None).await;
    for d in receive_n(&*consumer, LETTERS, SOON).await {
        d.dead_letter(DeadLetterReason::Rejected("paged".into()))
            .await
            .expect("dead_letter");
    }
    let admin = ctx.backend().admin();
    let mut seen = Vec::new();
    let mut query = DeadLetterQuery::new(2).with_preview(PREVIEW);
    for page_number in 0.. {
        assert!(page_number <= LETTERS, "the pages never end");
        let page = admin
            .dead_letter_page(&queue, &query)
            .await
            .expect("a page of dead letters");
        assert!(
            page.letters.len() <= 2,
            "{} letters in a page of 2",
            page.letters.len()
        );
        for letter in page.letters {
            assert_eq!(letter.message.payload.len(), PREVIEW);
            assert_eq!(letter.payload_len, PAYLOAD);
            assert!(letter.truncated());
            let n = ids
                .iter()
                .position(|id| *id == letter.message.id)
                .expect("a letter of this queue");
            let text = letter.payload_text().expect("text");
            assert!(text.starts_with(&format!("letter {n} ")), "{text}");
            seen.push((letter.dead_lettered_at, n));
        }
        match page.next {
            Some(next) => query = query.after(next),
            None => break,
        }
    }
    let mut found: Vec<usize> = seen.iter().map(|(_, n)| *n).collect();
    assert!(
        seen.windows(2).all(|w| w[0].0 <= w[1].0),
        "oldest first: {seen:?}"
    );
    found.sort_unstable();
    assert_eq!(found, (0..LETTERS).collect::<Vec<_>>(), "every letter once");
    // Whole letters without a preview.
    let whole = admin.dead_letters(&queue, 10).await.expect("list");
    assert_eq!(whole.len(), LETTERS);
    assert!(whole
        .iter()
        .all(|l| l.message.payload.len() == PAYLOAD && !l.truncated()));
    let none = admin
        .dead_letter_page(&queue, &DeadLetterQuery::new(0))
        .await;
    assert_eq!(
        none.map(|p| p.letters.len()).map_err(|e| e.kind()),
        Err(ErrorKind::InvalidInput),
        "a page of no letters never moves its cursor"
    );
    let foreign = DeadLetterQuery::new(2).after(DeadLetterCursor::new("not-a-cursor"));
    let refused = admin.dead_letter_page(&queue, &foreign).await;
    assert_eq!(
        refused.map(|p| p.letters.len()).map_err(|e| e.kind()),
        Err(ErrorKind::InvalidInput)
    );
}

/// Case 40: an error text of a megabyte is kept to a few KiB, cut on a
/// character boundary and saying so, in the next delivery and in the dead
/// letter; a rejection's detail likewise.
pub async fn error_text_capped(ctx: &Ctx) {
    let queue = ctx.queue();
    let huge = "é".repeat(512 * 1024);
    send(ctx, &queue, Message::new("noisy").with_max_attempts(2)).await;
    let consumer = ctx.consumer(&queue, None).await;
    let first = receive_one(&*consumer, "delivery").await;
    first
        .nack_with_error(Duration::ZERO, &huge)
        .await
        .expect("nack with a 1 MiB error");
    let second = receive_one(&*consumer, "redelivery").await;
    let kept = second
        .message()
        .last_error
        .clone()
        .expect("the error travels");
    assert!(kept.len() <= MAX_ERROR_TEXT, "{} bytes kept", kept.len());
    assert!(kept.starts_with("éé"), "cut on a character boundary");
    assert!(
        kept.contains("truncated from 1048576 bytes"),
        "says so: {}",
        &kept[kept.len() - 40..]
    );
    second
        .dead_letter(DeadLetterReason::Rejected(huge.clone()))
        .await
        .expect("dead-letter with a 1 MiB reason");
    let dead = dead_letters(ctx, &queue).await;
    assert_eq!(dead.len(), 1);
    match &dead[0].reason {
        DeadLetterReason::Rejected(detail) => {
            assert!(
                detail.len() <= MAX_ERROR_TEXT,
                "{} bytes kept",
                detail.len()
            );
            assert!(detail.contains("truncated"));
        }
        other => panic!("reason {other:?}"),
    }
}

/// Case 56: attempts at the top of their range. A producer's `attempt`
/// and `max_attempts` travel on every backend: a message sent at attempt
/// `u32::MAX - 1` (of `u32::MAX`) comes back from a nack at `u32::MAX`;
/// nacked there, and one sent at `u32::MAX`, are dead-lettered
/// (`max_attempts`, `u32::MAX` attempts), with no overflow and no further
/// delivery.
pub async fn attempt_at_max(ctx: &Ctx) {
    let queue = ctx.queue();
    let at = |attempt: u32, payload: &'static str| {
        let mut message = Message::new(payload).with_max_attempts(u32::MAX);
        message.attempt = attempt;
        message
    };
    let one_left = send(ctx, &queue, at(u32::MAX - 1, "one left")).await;
    let consumer = ctx.consumer(&queue, None).await;
    let first = receive_one(&*consumer, "delivery at u32::MAX - 1").await;
    assert_eq!(first.message().id, one_left);
    assert_eq!(
        first.attempt(),
        u32::MAX - 1,
        "the producer's attempt travels"
    );
    assert_eq!(first.message().max_attempts, u32::MAX);
    first
        .nack(Duration::ZERO)
        .await
        .expect("nack at u32::MAX - 1");
    let last = receive_one(&*consumer, "redelivery at u32::MAX").await;
    assert_eq!(last.message().id, one_left);
    assert_eq!(last.attempt(), u32::MAX, "the next attempt is u32::MAX");
    last.nack_with_error(Duration::ZERO, "out of attempts")
        .await
        .expect("nack at u32::MAX");
    let none_left = send(ctx, &queue, at(u32::MAX, "none left")).await;
    let top = receive_one(&*consumer, "delivery at u32::MAX").await;
    assert_eq!((top.message().id, top.attempt()), (none_left, u32::MAX));
    top.nack(Duration::from_secs(1))
        .await
        .expect("nack at u32::MAX");
    let rest = consumer.receive(10, QUIET).await.expect("receive");
    assert!(
        rest.is_empty(),
        "nothing comes back after the last attempt: {:?}",
        rest.iter().map(|d| d.attempt()).collect::<Vec<_>>()
    );
    let dead = dead_letters(ctx, &queue).await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    for id in [one_left, none_left] {
        let letter = dead
            .iter()
            .find(|l| l.message.id == id)
            .unwrap_or_else(|| panic!("{id} is dead-lettered: {dead:?}"));
        assert_eq!(letter.reason, DeadLetterReason::MaxAttempts);
        assert_eq!(letter.attempts, u32::MAX);
        assert_eq!(letter.message.attempt, u32::MAX);
    }
    let one_left = dead
        .iter()
        .find(|l| l.message.id == one_left)
        .expect("found");
    assert_eq!(one_left.last_error.as_deref(), Some("out of attempts"));
}
