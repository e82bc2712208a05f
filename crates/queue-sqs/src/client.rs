//! The SDK client, the queue URL cache, queue creation, and the request
//! counter.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_sqs::config::retry::RetryConfig;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RuntimeComponents,
};
use aws_sdk_sqs::types::QueueAttributeName;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use queue_core::{Error, ErrorKind, QueueName, Result};

use crate::config::{QueueType, Settings};
use crate::error::classify;
use crate::wire;

/// Counts the HTTP requests the backend's SDK client sends (retries
/// included), in all and per SQS operation: what SQS bills.
/// [`SqsBackend::requests`](crate::SqsBackend::requests) hands it out; the
/// bench reads it per job.
#[derive(Debug, Clone, Default)]
pub struct RequestCounter {
    total: Arc<AtomicU64>,
    by_operation: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl RequestCounter {
    /// Requests sent so far.
    pub fn get(&self) -> u64 {
        self.total.load(AtomicOrdering::Relaxed)
    }

    /// Requests sent so far per operation (`SendMessageBatch`,
    /// `ReceiveMessage`, ...).
    pub fn by_operation(&self) -> BTreeMap<String, u64> {
        self.by_operation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "queue-sqs request counter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.total.fetch_add(1, AtomicOrdering::Relaxed);
        let operation = cfg.load::<Metadata>().map_or("unknown", Metadata::name);
        *self
            .by_operation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(operation.to_owned())
            .or_default() += 1;
        Ok(())
    }
}

/// The SDK client with what every call needs.
#[derive(Debug)]
pub(crate) struct Sqs {
    pub(crate) client: aws_sdk_sqs::Client,
    pub(crate) settings: Settings,
    pub(crate) requests: RequestCounter,
    /// SQS queue name -> queue URL, for queues known to exist.
    urls: Mutex<HashMap<String, Arc<str>>>,
}

/// The URLs of a queue and its dead-letter queue.
#[derive(Debug, Clone)]
pub(crate) struct QueueUrls {
    pub(crate) main: Arc<str>,
    pub(crate) dlq: Arc<str>,
}

impl Sqs {
    /// Build the client: rustls (ring) over hyper, the region and
    /// endpoint of the URL, credentials from the URL or the AWS chain,
    /// `connect_timeout` and `request_timeout` per attempt, three attempts.
    pub(crate) async fn new(settings: Settings) -> Result<Sqs> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(settings.connect_timeout)
            .operation_attempt_timeout(settings.request_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .http_client(http)
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(3));
        if let Some(profile) = &settings.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(c) = &settings.credentials {
            loader = loader.credentials_provider(Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.clone(),
                c.session_token.clone(),
                None,
                "queue-sqs url",
            ));
        }
        let sdk = loader.load().await;
        let requests = RequestCounter::default();
        let config = aws_sdk_sqs::config::Builder::from(&sdk)
            .interceptor(requests.clone())
            .build();
        Ok(Sqs {
            client: aws_sdk_sqs::Client::from_conf(config),
            settings,
            requests,
            urls: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn address(&self) -> &str {
        &self.settings.address
    }

    pub(crate) fn queue_type(&self) -> QueueType {
        self.settings.queue_type
    }

    /// The per-call override for a receive waiting up to `wait`: its
    /// attempt may take the wait plus the usual request timeout.
    pub(crate) fn receive_timeouts(&self, wait: Duration) -> aws_sdk_sqs::config::Builder {
        aws_sdk_sqs::config::Builder::new().timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(self.settings.connect_timeout)
                .operation_attempt_timeout(wait + self.settings.request_timeout)
                .build(),
        )
    }

    fn cached(&self, name: &str) -> Option<Arc<str>> {
        self.urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn remember(&self, name: &str, url: &str) -> Arc<str> {
        let url: Arc<str> = Arc::from(url);
        self.urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), url.clone());
        url
    }

    /// Forget the URLs of `queue` and its dead-letter queue (deleted).
    pub(crate) fn forget(&self, queue: &QueueName) {
        let mut urls = self.urls.lock().unwrap_or_else(|p| p.into_inner());
        urls.remove(&wire::queue_name(queue, self.queue_type()));
        urls.remove(&wire::dlq_name(queue, self.queue_type()));
    }

    /// The URL of SQS queue `name`, `None` if it does not exist.
    pub(crate) async fn lookup(&self, name: &str) -> Result<Option<Arc<str>>> {
        if let Some(url) = self.cached(name) {
            return Ok(Some(url));
        }
        match self.client.get_queue_url().queue_name(name).send().await {
            Ok(out) => Ok(out.queue_url().map(|url| self.remember(name, url))),
            Err(e) => {
                let e = classify(e, &format!("looking up queue {name:?}"), self.address());
                if e.kind() == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The name of every SQS queue the account holds in this region
    /// (`ListQueues`, a page of 1,000 at a time).
    pub(crate) async fn list_names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .list_queues()
                .max_results(1000)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| classify(e, "listing queues", self.address()))?;
            names.extend(
                out.queue_urls()
                    .iter()
                    .filter_map(|url| url.rsplit('/').next())
                    .map(str::to_owned),
            );
            match out.next_token() {
                Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                _ => return Ok(names),
            }
        }
    }

    /// The URLs of `queue` and its dead-letter queue, creating both if
    /// missing.
    pub(crate) async fn urls(&self, queue: &QueueName) -> Result<QueueUrls> {
        let name = wire::queue_name(queue, self.queue_type());
        let dlq = wire::dlq_name(queue, self.queue_type());
        if let (Some(main), Some(dlq)) = (self.cached(&name), self.cached(&dlq)) {
            return Ok(QueueUrls { main, dlq });
        }
        self.ensure(queue).await
    }

    /// The URLs of `queue` and its dead-letter queue if both exist.
    pub(crate) async fn existing(&self, queue: &QueueName) -> Result<QueueUrls> {
        let name = wire::queue_name(queue, self.queue_type());
        let dlq = wire::dlq_name(queue, self.queue_type());
        match (self.lookup(&name).await?, self.lookup(&dlq).await?) {
            (Some(main), Some(dlq)) => Ok(QueueUrls { main, dlq }),
            _ => Err(Error::new(
                ErrorKind::NotFound,
                format!("sqs at {}: queue {name:?} does not exist", self.address()),
            )),
        }
    }

    /// Create `queue`'s dead-letter queue, then the queue with a redrive
    /// policy pointing at it, where missing.
    pub(crate) async fn ensure(&self, queue: &QueueName) -> Result<QueueUrls> {
        let name = wire::queue_name(queue, self.queue_type());
        let dlq_name = wire::dlq_name(queue, self.queue_type());
        let dlq = match self.lookup(&dlq_name).await? {
            Some(url) => url,
            None => self.create(&dlq_name, None).await?,
        };
        let main = match self.lookup(&name).await? {
            Some(url) => url,
            None => {
                let arn = self
                    .client
                    .get_queue_attributes()
                    .queue_url(&*dlq)
                    .attribute_names(QueueAttributeName::QueueArn)
                    .send()
                    .await
                    .map_err(|e| {
                        classify(
                            e,
                            &format!("reading the ARN of {dlq_name:?}"),
                            self.address(),
                        )
                    })?
                    .attributes()
                    .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::Other,
                            format!("sqs at {}: no ARN for queue {dlq_name:?}", self.address()),
                        )
                    })?;
                let policy = format!(
                    r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":{}}}"#,
                    self.settings.max_receive_count
                );
                self.create(&name, Some(policy)).await?
            }
        };
        Ok(QueueUrls { main, dlq })
    }

    /// `CreateQueue`: durable for 14 days, the size limit of the settings,
    /// FIFO attributes on FIFO queues. A queue that exists with other
    /// attributes is a `Config` error.
    async fn create(&self, name: &str, redrive_policy: Option<String>) -> Result<Arc<str>> {
        let mut request = self
            .client
            .create_queue()
            .queue_name(name)
            .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
            .attributes(
                QueueAttributeName::MaximumMessageSize,
                self.settings.max_message.to_string(),
            )
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                wire::whole_seconds(self.settings.lease).to_string(),
            );
        if self.queue_type() == QueueType::Fifo {
            request = request
                .attributes(QueueAttributeName::FifoQueue, "true")
                .attributes(QueueAttributeName::ContentBasedDeduplication, "false");
        }
        if let Some(policy) = redrive_policy {
            request = request.attributes(QueueAttributeName::RedrivePolicy, policy);
        }
        match request.send().await {
            Ok(out) => {
                let url = out.queue_url().ok_or_else(|| {
                    Error::new(
                        ErrorKind::Other,
                        format!(
                            "sqs at {}: CreateQueue gave no URL for {name:?}",
                            self.address()
                        ),
                    )
                })?;
                Ok(self.remember(name, url))
            }
            Err(e) => {
                let e = classify(e, &format!("creating queue {name:?}"), self.address());
                if e.kind() == ErrorKind::Config {
                    Err(Error::new(
                        ErrorKind::Config,
                        format!(
                            "{} (the queue exists with other attributes: created elsewhere or with other options; delete it or use the same options)",
                            e.message()
                        ),
                    ))
                } else {
                    Err(e)
                }
            }
        }
    }
}
