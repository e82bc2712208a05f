//! The connection to RabbitMQ, rebuilt when it breaks, and the shared
//! publishing channel (publisher confirms on).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use queue_core::{Error, ErrorKind, Result};
use tokio::sync::Mutex;

use crate::config::Settings;
use crate::error::{classify, timed_out};

/// One live connection and what hangs off it.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) conn: Connection,
    publisher: Mutex<Option<Channel>>,
}

impl Live {
    pub(crate) fn is_up(&self) -> bool {
        self.conn.status().connected()
    }
}

/// The connection manager: hands out the live connection, reconnecting
/// (one caller at a time) when it is gone.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) settings: Settings,
    current: Mutex<Option<Arc<Live>>>,
}

/// A message on its way to the broker: where to, and the AMQP message.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) routing_key: String,
    pub(crate) body: bytes::Bytes,
    pub(crate) properties: BasicProperties,
}

impl Link {
    pub(crate) fn new(settings: Settings) -> Link {
        Link {
            settings,
            current: Mutex::new(None),
        }
    }

    pub(crate) fn address(&self) -> &str {
        &self.settings.address
    }

    /// Run one broker call within the request timeout, classifying its error.
    pub(crate) async fn call<T>(
        &self,
        doing: &str,
        call: impl Future<Output = lapin::Result<T>>,
    ) -> Result<T> {
        let limit = self.settings.request_timeout;
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(classify(e, doing, self.address())),
            Err(_) => Err(timed_out(doing, self.address(), limit)),
        }
    }

    /// The live connection, connecting first if there is none or it broke.
    pub(crate) async fn live(&self) -> Result<Arc<Live>> {
        let mut current = self.current.lock().await;
        if let Some(live) = current.as_ref().filter(|live| live.is_up()) {
            return Ok(live.clone());
        }
        if let Some(old) = current.take() {
            // Make sure the old socket is gone, so the broker hands its
            // unacked deliveries back.
            let closing = old.conn.close(320, "reconnecting".into());
            let _ = tokio::time::timeout(Duration::from_millis(200), closing).await;
        }
        let live = Arc::new(self.connect().await?);
        *current = Some(live.clone());
        Ok(live)
    }

    async fn connect(&self) -> Result<Live> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("queue-amqp {}", std::process::id()).into());
        let runtime = lapin::runtime::default_runtime()
            .map_err(|e| classify(e, "starting the client runtime", self.address()))?;
        let tls = lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: self.settings.tls_ca.clone(),
        };
        let connect = Connection::connect_with_config(&self.settings.uri, properties, tls, runtime);
        let limit = self.settings.connect_timeout;
        let conn = match tokio::time::timeout(limit, connect).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(classify(e, "connecting", self.address())),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Connection,
                    format!("amqp at {}: no connection within {limit:?}", self.address()),
                ))
            }
        };
        Ok(Live {
            conn,
            publisher: Mutex::new(None),
        })
    }

    /// A fresh channel on the live connection.
    /// A connection that closes under us (the broker closed it, or it
    /// broke between the check and the call) is replaced once.
    pub(crate) async fn channel(&self) -> Result<(Arc<Live>, Channel)> {
        let live = self.live().await?;
        match self
            .call("opening a channel", live.conn.create_channel())
            .await
        {
            Ok(channel) => Ok((live, channel)),
            Err(e) if e.kind() == ErrorKind::Connection || e.kind() == ErrorKind::Timeout => {
                self.discard(&live).await;
                let live = self.live().await?;
                let channel = self
                    .call("opening a channel", live.conn.create_channel())
                    .await?;
                Ok((live, channel))
            }
            Err(e) => Err(e),
        }
    }

    /// Forget `live` if it is still the current connection: the next call
    /// connects again.
    pub(crate) async fn discard(&self, live: &Arc<Live>) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, live)) {
            if let Some(old) = current.take() {
                let closing = old.conn.close(320, "reconnecting".into());
                let _ = tokio::time::timeout(Duration::from_millis(200), closing).await;
            }
        }
    }

    /// The shared publishing channel (confirms on), opened again after it
    /// or its connection closed.
    async fn publisher(&self) -> Result<Channel> {
        let live = self.live().await?;
        let mut slot = live.publisher.lock().await;
        if let Some(channel) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(channel.clone());
        }
        let channel = self
            .call("opening a channel", live.conn.create_channel())
            .await?;
        self.call(
            "turning on publisher confirms",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        *slot = Some(channel.clone());
        Ok(channel)
    }

    /// Publish every message and await the broker's confirm of each (the
    /// publishes are pipelined: one round trip for the lot). A message is
    /// accepted only when the broker acked it and it reached a queue; the
    /// error of the first that was not says why, with its index; the
    /// messages before it in `accepted`.
    pub(crate) async fn publish(&self, messages: &[Outgoing]) -> Result<(), PublishError> {
        let channel = self.publisher().await.map_err(PublishError::none)?;
        let mut confirms = Vec::with_capacity(messages.len());
        // One deadline for the whole batch (a timer per publish costs more
        // than the publish).
        let limit = self.settings.request_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let exchange = ShortString::from("");
        let published = tokio::time::timeout_at(deadline, async {
            // Up to `PUBLISH_WINDOW` publishes are handed to the client at
            // once, in order: their frames go out in one write instead of
            // one hand-off to the I/O loop per message.
            for (window, chunk) in messages.chunks(PUBLISH_WINDOW).enumerate() {
                let mut pending: Vec<_> = chunk
                    .iter()
                    .map(|message| {
                        Some(Box::pin(channel.basic_publish(
                            exchange.clone(),
                            ShortString::from(message.routing_key.as_str()),
                            options,
                            &message.body,
                            message.properties.clone(),
                        )))
                    })
                    .collect();
                let mut outcomes: Vec<Option<lapin::Result<lapin::PublisherConfirm>>> =
                    chunk.iter().map(|_| None).collect();
                // Polled in order, so the client numbers and sends them in
                // the batch's order.
                std::future::poll_fn(|cx| {
                    let mut done = true;
                    for (slot, outcome) in pending.iter_mut().zip(outcomes.iter_mut()) {
                        if let Some(publish) = slot {
                            match publish.as_mut().poll(cx) {
                                std::task::Poll::Ready(result) => {
                                    *outcome = Some(result);
                                    *slot = None;
                                }
                                std::task::Poll::Pending => done = false,
                            }
                        }
                    }
                    if done {
                        std::task::Poll::Ready(())
                    } else {
                        std::task::Poll::Pending
                    }
                })
                .await;
                for (offset, outcome) in outcomes.into_iter().enumerate() {
                    let index = window * PUBLISH_WINDOW + offset;
                    match outcome {
                        Some(Ok(confirm)) => confirms.push(confirm),
                        Some(Err(e)) => {
                            return Err(PublishError {
                                index,
                                error: classify(e, "publishing", self.address()),
                            })
                        }
                        None => {
                            return Err(PublishError {
                                index,
                                error: Error::new(
                                    ErrorKind::Other,
                                    "amqp: a publish was not finished",
                                ),
                            })
                        }
                    }
                }
            }
            Ok(())
        })
        .await;
        match published {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(PublishError {
                    index: confirms.len(),
                    error: timed_out("publishing", self.address(), limit),
                })
            }
        }
        for (index, confirm) in confirms.into_iter().enumerate() {
            let confirmation = match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(confirmation)) => confirmation,
                Ok(Err(e)) => {
                    return Err(PublishError {
                        index,
                        error: classify(e, "awaiting the publisher confirm", self.address()),
                    })
                }
                Err(_) => {
                    return Err(PublishError {
                        index,
                        error: timed_out("awaiting the publisher confirm", self.address(), limit),
                    })
                }
            };
            let routing_key = &messages[index].routing_key;
            match confirmation {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                    return Err(PublishError {
                        index,
                        error: Error::new(
                            ErrorKind::NotFound,
                            format!(
                                "amqp at {}: queue {routing_key:?} does not exist (the broker returned the message: {})",
                                self.address(),
                                returned.reply_text
                            ),
                        ),
                    });
                }
                Confirmation::Nack(None) => {
                    return Err(PublishError {
                        index,
                        error: Error::new(
                            ErrorKind::QueueFull,
                            format!(
                                "amqp at {}: the broker refused a message for {routing_key:?} (publisher nack: the queue is at its maximum length, or the broker could not store it); it was not stored",
                                self.address()
                            ),
                        ),
                    });
                }
                Confirmation::NotRequested => {
                    return Err(PublishError {
                        index,
                        error: Error::new(
                            ErrorKind::Other,
                            "amqp: publisher confirms are off on the publishing channel",
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Close the connection.
    pub(crate) async fn close(&self) {
        if let Some(live) = self.current.lock().await.take() {
            let closing = live.conn.close(200, "closed by the application".into());
            let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
        }
    }
}

/// How many publishes [`Link::publish`] hands to the client at once.
const PUBLISH_WINDOW: usize = 64;

/// A failed [`Link::publish`]: the messages before `index` were accepted;
/// the one at `index` (and any after it) may not have been.
#[derive(Debug)]
pub(crate) struct PublishError {
    pub(crate) index: usize,
    pub(crate) error: Error,
}

impl PublishError {
    fn none(error: Error) -> PublishError {
        PublishError { index: 0, error }
    }
}
