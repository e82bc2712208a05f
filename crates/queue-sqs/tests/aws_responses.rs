//! Behaviours of AWS SQS that moto does not show, tested against recorded
//! responses: a loopback HTTP server answers each SQS operation with the
//! JSON AWS sends (shapes from the SQS API reference), and records the
//! requests the backend makes.
//!
//! - AWS refuses a receipt handle whose message was received again since
//!   (moto still deletes with it): an ack that SQS refuses so is
//!   `LeaseLost`, never success.
//! - AWS remembers a FIFO deduplication id for five minutes even after the
//!   message is deleted (moto forgets it): every copy the backend makes of
//!   a message it holds carries a fresh id, or AWS would drop the copy.
//!
//! And one behaviour of the backend best seen call by call: settles fill
//! whole `DeleteMessageBatch` calls (what AWS bills).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use queue_core::{Backend, ConsumerOptions, ErrorKind, Message, QueueName};
use queue_sqs::SqsBackend;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One request the backend made: the operation and its JSON body.
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

/// Answers an operation's request body with a JSON reply.
type Answer = Arc<dyn Fn(&str, &Value) -> Value + Send + Sync>;

/// A loopback server speaking SQS's JSON protocol with canned answers.
async fn replay(answer: Answer) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (answer, record) = (answer.clone(), record.clone());
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                loop {
                    let mut target = String::new();
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let trimmed = line.trim_end();
                        if trimmed.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = trimmed.split_once(':') {
                            match name.to_ascii_lowercase().as_str() {
                                "x-amz-target" => target = value.trim().to_owned(),
                                "content-length" => length = value.trim().parse().unwrap_or(0),
                                _ => {}
                            }
                        }
                    }
                    let mut body = vec![0u8; length];
                    if read.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let operation = target.trim_start_matches("AmazonSQS.").to_owned();
                    let reply = answer(&operation, &request).to_string();
                    record.lock().expect("lock").push((operation, request));
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\nContent-Length: {}\r\n\r\n{reply}",
                        reply.len()
                    );
                    if write.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), seen)
}

/// `GetQueueUrl` answered for any name.
fn queue_url(endpoint: &str, request: &Value) -> Value {
    let name = request["QueueName"].as_str().unwrap_or_default();
    json!({ "QueueUrl": format!("{endpoint}/000000000000/{name}") })
}

fn backend_url(endpoint: &str, queue_type: &str) -> String {
    format!("sqs://AKIDEXAMPLE:secret@us-east-1?endpoint={endpoint}&queue_type={queue_type}&settle_linger=1ms")
}

#[tokio::test]
async fn an_ack_aws_refuses_for_a_stale_receipt_handle_is_lease_lost() {
    let endpoint = Arc::new(Mutex::new(String::new()));
    let at = endpoint.clone();
    let (url, seen) = replay(Arc::new(move |operation, request| {
        let endpoint = at.lock().expect("lock").clone();
        match operation {
            "GetQueueUrl" => queue_url(&endpoint, request),
            "ReceiveMessage" => json!({ "Messages": [{
                "MessageId": "5fea7756-0ea4-451a-a703-a558b933e274",
                "ReceiptHandle": "MbZj6wDWli+JvwwJaBV+3dcjk2YW2vA3+STFFljTM8tJJg6HRG6PYSasuWXPJB+Cw",
                "MD5OfBody": "5d41402abc4b2a76b9719d911017c592",
                "Body": "hello",
                "Attributes": { "ApproximateReceiveCount": "1", "SentTimestamp": "1764547200000" }
            }]}),
            // What SQS answers for a handle whose message was received
            // again since: the entry fails, the call succeeds.
            "DeleteMessageBatch" => json!({
                "Successful": [],
                "Failed": [{
                    "Id": request["Entries"][0]["Id"],
                    "SenderFault": true,
                    "Code": "ReceiptHandleIsInvalid",
                    "Message": "The input receipt handle \"MbZj6wDWli+JvwwJaBV+3dcjk2YW2vA3+STFFljTM8tJJg6HRG6PYSasuWXPJB+Cw\" is not a valid receipt handle."
                }]
            }),
            _ => json!({}),
        }
    }))
    .await;
    *endpoint.lock().expect("lock") = url.clone();
    let backend = SqsBackend::connect(&backend_url(&url, "standard"))
        .await
        .expect("connect");
    let queue = QueueName::new("jobs").expect("name");
    let consumer = backend
        .consumer(&queue, ConsumerOptions::default())
        .await
        .expect("consumer");
    let mut got = consumer.receive(1, Duration::ZERO).await.expect("receive");
    let delivery = got.pop().expect("one message");
    assert_eq!(delivery.payload().as_ref(), b"hello");
    let err = delivery.ack().await.expect_err("SQS refused the delete");
    assert_eq!(err.error.kind(), ErrorKind::LeaseLost, "{}", err.error);
    assert!(!err.error.message().contains("secret"), "{}", err.error);
    let deletes = seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|(op, _)| op == "DeleteMessageBatch")
        .count();
    assert_eq!(deletes, 1);
}

#[tokio::test]
async fn fifo_copies_carry_fresh_deduplication_ids() {
    let endpoint = Arc::new(Mutex::new(String::new()));
    let at = endpoint.clone();
    // The message the producer sent, handed back by ReceiveMessage as SQS
    // would: same body and attributes.
    let sent: Arc<Mutex<Option<Value>>> = Arc::default();
    let stored = sent.clone();
    let (url, seen) = replay(Arc::new(move |operation, request| {
        let endpoint = at.lock().expect("lock").clone();
        match operation {
            "GetQueueUrl" => queue_url(&endpoint, request),
            "SendMessage" => {
                stored.lock().expect("lock").get_or_insert(request.clone());
                json!({ "MessageId": "0a1b2c3d-0000-4000-8000-000000000001", "MD5OfMessageBody": "", "SequenceNumber": "1" })
            }
            "ReceiveMessage" => {
                let sent = stored.lock().expect("lock").clone().unwrap_or(Value::Null);
                json!({ "Messages": [{
                    "MessageId": "0a1b2c3d-0000-4000-8000-000000000001",
                    "ReceiptHandle": "AQEB-first-receipt",
                    "MD5OfBody": "",
                    "Body": sent["MessageBody"],
                    "MessageAttributes": sent["MessageAttributes"],
                    "Attributes": {
                        "ApproximateReceiveCount": "1",
                        "SentTimestamp": "1764547200000",
                        "MessageGroupId": sent["MessageGroupId"],
                        "MessageDeduplicationId": sent["MessageDeduplicationId"]
                    }
                }]})
            }
            "SendMessageBatch" => json!({
                "Successful": request["Entries"].as_array().into_iter().flatten().map(|e| json!({
                    "Id": e["Id"], "MessageId": "0a1b2c3d-0000-4000-8000-000000000002", "MD5OfMessageBody": "", "SequenceNumber": "2"
                })).collect::<Vec<_>>(),
                "Failed": []
            }),
            "DeleteMessageBatch" => json!({
                "Successful": request["Entries"].as_array().into_iter().flatten().map(|e| json!({ "Id": e["Id"] })).collect::<Vec<_>>(),
                "Failed": []
            }),
            _ => json!({}),
        }
    }))
    .await;
    *endpoint.lock().expect("lock") = url.clone();
    let backend = SqsBackend::connect(&backend_url(&url, "fifo"))
        .await
        .expect("connect");
    let queue = QueueName::new("orders").expect("name");
    backend
        .producer(&queue)
        .await
        .expect("producer")
        .send(
            Message::new("charge order 42")
                .with_ordering_key("customer-7")
                .with_idempotency_key("order-42"),
        )
        .await
        .expect("send");
    let original = sent.lock().expect("lock").clone().expect("sent");
    assert_eq!(original["MessageDeduplicationId"], "order-42");
    assert_eq!(original["MessageGroupId"], "customer-7");

    let consumer = backend
        .consumer(&queue, ConsumerOptions::default())
        .await
        .expect("consumer");
    let delivery = consumer
        .receive(1, Duration::ZERO)
        .await
        .expect("receive")
        .pop()
        .expect("the message comes back");
    assert_eq!(delivery.attempt(), 1);
    delivery
        .nack_with_error(Duration::ZERO, "card declined")
        .await
        .expect("nack");

    let seen = seen.lock().expect("lock");
    let copies: Vec<&Value> = seen
        .iter()
        .filter(|(op, _)| op == "SendMessageBatch")
        .flat_map(|(_, r)| r["Entries"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(copies.len(), 1, "{seen:?}");
    let copy = copies[0];
    assert_eq!(
        copy["MessageGroupId"], "customer-7",
        "the copy keeps its group"
    );
    let dedup = copy["MessageDeduplicationId"].as_str().expect("a dedup id");
    assert_ne!(
        dedup, "order-42",
        "the copy would be dropped as a duplicate"
    );
    assert!(
        copy.get("DelaySeconds").is_none(),
        "FIFO queues take no per-message delay"
    );
    let ops: Vec<&str> = seen.iter().map(|(op, _)| op.as_str()).collect();
    let copied = ops.iter().position(|&op| op == "SendMessageBatch");
    let deleted = ops.iter().position(|&op| op == "DeleteMessageBatch");
    assert!(
        copied < deleted,
        "the copy is sent before the original goes: {ops:?}"
    );
}

/// Settles fill whole `DeleteMessageBatch` calls: ten waiting make a call
/// at once, and fewer wait for later settles to join them rather than
/// making a short call of their own (the three left from a burst of
/// thirteen go out with the next seven: two calls of ten, not 10 + 3 + 7).
#[tokio::test]
async fn settles_fill_whole_delete_calls() {
    let endpoint = Arc::new(Mutex::new(String::new()));
    let at = endpoint.clone();
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (url, seen) = replay(Arc::new(move |operation, request| {
        let endpoint = at.lock().expect("lock").clone();
        match operation {
            "GetQueueUrl" => queue_url(&endpoint, request),
            "ReceiveMessage" => {
                let first = received.fetch_add(10, std::sync::atomic::Ordering::SeqCst);
                json!({ "Messages": (first..first + 10).map(|i| json!({
                    "MessageId": format!("5fea7756-0ea4-451a-a703-{i:012}"),
                    "ReceiptHandle": format!("receipt-{i}"),
                    "MD5OfBody": "",
                    "Body": format!("job {i}"),
                    "Attributes": { "ApproximateReceiveCount": "1", "SentTimestamp": "1764547200000" }
                })).collect::<Vec<_>>() })
            }
            "DeleteMessageBatch" => json!({
                "Successful": request["Entries"].as_array().into_iter().flatten().map(|e| json!({ "Id": e["Id"] })).collect::<Vec<_>>(),
                "Failed": []
            }),
            _ => json!({}),
        }
    }))
    .await;
    *endpoint.lock().expect("lock") = url.clone();
    let backend = SqsBackend::connect(&format!(
        "sqs://AKIDEXAMPLE:secret@us-east-1?endpoint={url}&settle_linger=1s"
    ))
    .await
    .expect("connect");
    let queue = QueueName::new("jobs").expect("name");
    let consumer = backend
        .consumer(&queue, ConsumerOptions::default())
        .await
        .expect("consumer");
    let mut deliveries = Vec::new();
    while deliveries.len() < 20 {
        deliveries.extend(consumer.receive(10, Duration::ZERO).await.expect("receive"));
    }
    let later = deliveries.split_off(13);
    let mut acks: futures_util::stream::FuturesUnordered<_> =
        deliveries.into_iter().map(|d| d.ack()).collect();
    // The first ten go in one call at once, without waiting the linger.
    for _ in 0..10 {
        acks.next().await.expect("an ack").expect("acked");
    }
    // The other three wait for these seven, within the linger.
    acks.extend(later.into_iter().map(|d| d.ack()));
    while let Some(acked) = acks.next().await {
        acked.expect("acked");
    }
    let calls: Vec<usize> = seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|(op, _)| op == "DeleteMessageBatch")
        .map(|(_, r)| r["Entries"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(calls, [10, 10]);
}
