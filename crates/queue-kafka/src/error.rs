//! The one mapping from rdkafka errors to the queue's error kinds.

use queue_core::{Error, ErrorKind};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// The kind of a librdkafka or Kafka protocol error code.
pub(crate) fn kind_of_code(code: RDKafkaErrorCode) -> ErrorKind {
    use RDKafkaErrorCode as C;
    match code {
        C::BrokerTransportFailure
        | C::AllBrokersDown
        | C::Resolve
        | C::NetworkException
        | C::BrokerNotAvailable
        | C::LeaderNotAvailable
        | C::NotLeaderForPartition
        | C::CoordinatorNotAvailable
        | C::NotCoordinator => ErrorKind::Connection,
        C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut | C::TimedOutQueue => {
            ErrorKind::Timeout
        }
        C::ThrottlingQuotaExceeded | C::QueueFull => ErrorKind::Throttled,
        C::Authentication
        | C::SaslAuthenticationFailed
        | C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed => ErrorKind::Auth,
        C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition => ErrorKind::NotFound,
        C::MessageSizeTooLarge | C::MessageBatchTooLarge => ErrorKind::PayloadTooLarge,
        C::UnsupportedFeature | C::UnsupportedVersion => ErrorKind::Unsupported,
        C::InvalidConfig | C::InvalidReplicationFactor | C::InvalidPartitions => ErrorKind::Config,
        C::IllegalGeneration | C::UnknownMemberId | C::RebalanceInProgress | C::State => {
            ErrorKind::LeaseLost
        }
        _ => ErrorKind::Other,
    }
}

/// Classify an rdkafka error, saying what was being done (`context`);
/// rdkafka's own text names the broker and never a credential.
pub(crate) fn classify(error: KafkaError, context: &str) -> Error {
    let kind = match &error {
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => ErrorKind::Config,
        KafkaError::Canceled => ErrorKind::Closed,
        e => e
            .rdkafka_error_code()
            .map_or(ErrorKind::Other, kind_of_code),
    };
    Error::new(kind, format!("{context}: {error}")).with_source(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds() {
        for (code, kind) in [
            (RDKafkaErrorCode::AllBrokersDown, ErrorKind::Connection),
            (RDKafkaErrorCode::MessageTimedOut, ErrorKind::Timeout),
            (RDKafkaErrorCode::SaslAuthenticationFailed, ErrorKind::Auth),
            (
                RDKafkaErrorCode::UnknownTopicOrPartition,
                ErrorKind::NotFound,
            ),
            (
                RDKafkaErrorCode::MessageSizeTooLarge,
                ErrorKind::PayloadTooLarge,
            ),
            (RDKafkaErrorCode::UnsupportedVersion, ErrorKind::Unsupported),
            (RDKafkaErrorCode::IllegalGeneration, ErrorKind::LeaseLost),
        ] {
            assert_eq!(kind_of_code(code), kind, "{code:?}");
        }
        let e = classify(
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
            "sending to jobs",
        );
        assert_eq!(e.kind(), ErrorKind::PayloadTooLarge);
        assert!(e.message().starts_with("sending to jobs: "), "{e}");
    }
}
