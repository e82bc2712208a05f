//! The whole conformance suite against an SQS-compatible server
//! (`QUEUE_TEST_SQS_URL`; `cargo xtask test` starts `moto_server`), once
//! per queue type (standard, FIFO). The fault cases connect through the testkit's fault
//! proxy, placed in the URL's `endpoint`. moto keeps everything in memory,
//! so the broker-restart case has no persistent server to kill.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::MessageAttributeValue;
use queue_core::{Backend, Error, ErrorKind, QueueName, Result};
use queue_sqs::SqsBackend;
use queue_testkit::{broker_url, Harness};

struct SqsHarness {
    url: String,
}

impl SqsHarness {
    /// Standard cases: `QUEUE_TEST_SQS_URL`. FIFO cases:
    /// `QUEUE_TEST_SQS_FIFO_URL` (`cargo xtask test` starts a second moto
    /// for them, so the two suites do not share one Python process), else
    /// the standard URL.
    fn from_env(queue_type: &'static str) -> Option<SqsHarness> {
        let url = match std::env::var("QUEUE_TEST_SQS_FIFO_URL") {
            Ok(url) if queue_type == "fifo" && !url.is_empty() => url,
            _ => broker_url("QUEUE_TEST_SQS_URL")?,
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        Some(SqsHarness {
            url: format!("{url}{sep}queue_type={queue_type}"),
        })
    }

    fn endpoint(&self) -> Option<url::Url> {
        let url = url::Url::parse(&self.url).ok()?;
        let endpoint = url
            .query_pairs()
            .find(|(k, _)| k == "endpoint")
            .map(|(_, v)| v.into_owned())?;
        url::Url::parse(&endpoint).ok()
    }

    fn with_param(&self, key: &str, value: &str) -> String {
        let mut url = url::Url::parse(&self.url).expect("the test URL parses");
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != key)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(pairs)
            .append_pair(key, value);
        url.to_string()
    }
}

#[async_trait]
impl Harness for SqsHarness {
    fn name(&self) -> &'static str {
        "sqs"
    }

    fn url(&self) -> String {
        self.url.clone()
    }

    async fn connect(&self, url: &str) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(SqsBackend::connect(url).await?))
    }

    fn unreachable_url(&self) -> Option<String> {
        // Port 1 on loopback: nothing listens there.
        Some(self.with_param("endpoint", "http://127.0.0.1:1"))
    }

    /// moto's server (werkzeug) closes every connection after its reply.
    fn connections_persist(&self) -> bool {
        false
    }

    /// moto's FIFO queues take over a minute for 10,000 messages on this
    /// machine (every receive walks the queue for message groups that are
    /// not in flight), so on a local stand-in (an `endpoint` in the URL)
    /// they move 2,000; against AWS itself, the full 10,000.
    fn competing_messages(&self) -> usize {
        let fifo = self.url.contains("queue_type=fifo");
        if fifo && self.endpoint().is_some() {
            2_000
        } else {
            10_000
        }
    }

    fn broker_addr(&self) -> Option<SocketAddr> {
        let endpoint = self.endpoint()?;
        let host = endpoint.host_str()?.to_owned();
        (host, endpoint.port_or_known_default()?)
            .to_socket_addrs()
            .ok()?
            .next()
    }

    fn url_via(&self, addr: SocketAddr) -> String {
        self.with_param("endpoint", &format!("http://{addr}"))
    }

    /// Sends a message whose metadata attribute holds the foreign bytes,
    /// with the SDK client (SQS bodies are text, so raw bytes cannot be a
    /// body): the backend must dead-letter it with reason `decode`.
    async fn inject_foreign(&self, queue: &QueueName, payload: &[u8]) -> Option<Result<()>> {
        let send = async {
            let backend = SqsBackend::connect(&self.url).await?;
            let client = backend.client();
            let failed = |e: String| Error::new(ErrorKind::Connection, e);
            let name = queue_sqs::queue_name(queue, backend.queue_type());
            let url = client
                .get_queue_url()
                .queue_name(name)
                .send()
                .await
                .map_err(|e| failed(format!("{e:?}")))?
                .queue_url()
                .unwrap_or_default()
                .to_owned();
            let meta = MessageAttributeValue::builder()
                .data_type("Binary")
                .binary_value(Blob::new(payload.to_vec()))
                .build()
                .map_err(|e| failed(e.to_string()))?;
            let mut send = client
                .send_message()
                .queue_url(url)
                .message_body("not an envelope")
                .message_attributes("queue-meta", meta);
            if backend.queue_type() == queue_sqs::QueueType::Fifo {
                send = send
                    .message_group_id("foreign")
                    .message_deduplication_id("foreign-1");
            }
            send.send().await.map_err(|e| failed(format!("{e:?}")))?;
            Ok(())
        };
        Some(send.await)
    }

    async fn connect_with_native_delay_limit(
        &self,
        limit: Duration,
    ) -> Option<Result<Arc<dyn Backend>>> {
        let url = self.with_param("max_native_delay", &format!("{}s", limit.as_secs().max(1)));
        Some(self.connect(&url).await)
    }
}

mod standard {
    use super::SqsHarness;
    queue_testkit::conformance_suite!(SqsHarness::from_env("standard"));
}

mod fifo {
    use super::SqsHarness;
    queue_testkit::conformance_suite!(SqsHarness::from_env("fifo"));
}
