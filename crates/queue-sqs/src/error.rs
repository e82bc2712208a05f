//! The one mapping from SDK errors to the queue's error kinds.

use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use queue_core::{Error, ErrorKind};

/// The kind of an SQS error code. Codes of the JSON protocol and of the
/// older query protocol (`AWS.SimpleQueueService.*`) both appear.
pub(crate) fn kind_of_code(code: &str) -> ErrorKind {
    let code = code.strip_prefix("AWS.SimpleQueueService.").unwrap_or(code);
    match code {
        "NonExistentQueue" | "QueueDoesNotExist" => ErrorKind::NotFound,
        "AccessDenied"
        | "AccessDeniedException"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException"
        | "MissingAuthenticationToken"
        | "InvalidSecurity"
        | "ExpiredToken"
        | "KmsAccessDenied"
        | "KmsDisabled"
        | "KmsNotFound"
        | "KmsInvalidKeyUsage"
        | "KmsInvalidState" => ErrorKind::Auth,
        "RequestThrottled"
        | "ThrottlingException"
        | "Throttling"
        | "KmsThrottled"
        | "OverLimit"
        | "PurgeQueueInProgress"
        | "QueueDeletedRecently" => ErrorKind::Throttled,
        "ServiceUnavailable" | "InternalError" | "InternalFailure" => ErrorKind::Connection,
        "ReceiptHandleIsInvalid" | "InvalidReceiptHandle" | "MessageNotInflight" => {
            ErrorKind::LeaseLost
        }
        "QueueAlreadyExists"
        | "QueueNameExists"
        | "InvalidAttributeName"
        | "InvalidAttributeValue" => ErrorKind::Config,
        "InvalidMessageContents"
        | "InvalidParameterValue"
        | "InvalidParameterValueException"
        | "MissingParameter"
        | "InvalidBatchEntryId"
        | "BatchEntryIdsNotDistinct"
        | "EmptyBatchRequest"
        | "TooManyEntriesInBatchRequest"
        | "UnsupportedOperation" => ErrorKind::InvalidInput,
        "BatchRequestTooLong" => ErrorKind::PayloadTooLarge,
        _ => ErrorKind::Other,
    }
}

/// The one place an SDK error becomes a queue [`Error`]: the kind decides
/// retrying, the service's message is kept (it names queues and
/// attributes, never credentials), the region and endpoint are named.
pub(crate) fn classify(
    e: SdkError<
        impl ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        impl std::fmt::Debug + Send + Sync + 'static,
    >,
    doing: &str,
    address: &str,
) -> Error {
    let (kind, detail) = match &e {
        SdkError::TimeoutError(_) => (ErrorKind::Timeout, "timed out".to_owned()),
        SdkError::DispatchFailure(d) if d.is_timeout() => {
            (ErrorKind::Timeout, "timed out".to_owned())
        }
        SdkError::DispatchFailure(d) if d.is_user() => (
            ErrorKind::Config,
            format!("the request could not be sent: {}", source_text(&e)),
        ),
        SdkError::DispatchFailure(_) => (
            ErrorKind::Connection,
            format!("connection failed: {}", source_text(&e)),
        ),
        SdkError::ResponseError(_) => (
            ErrorKind::Connection,
            format!("unreadable response: {}", source_text(&e)),
        ),
        SdkError::ConstructionFailure(_) => {
            let text = source_text(&e);
            // Missing credentials fail while the request is built.
            let kind = if text.contains("credential") || text.contains("identity") {
                ErrorKind::Auth
            } else {
                ErrorKind::Config
            };
            (kind, text)
        }
        _ => {
            let code = e.code().unwrap_or("unknown");
            let message = e.message().unwrap_or_default();
            (kind_of_code(code), format!("{code}: {message}"))
        }
    };
    Error::new(kind, format!("sqs at {address}: {doing} failed: {detail}")).with_source(e)
}

/// The chain of sources of `e`, joined: the SDK's own `Display` says only
/// "dispatch failure", the cause is deeper.
fn source_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        next = cause.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

/// An error for one entry of a batch call that failed on its own.
pub(crate) fn entry_error(code: &str, message: Option<&str>, doing: &str, address: &str) -> Error {
    Error::new(
        kind_of_code(code),
        format!(
            "sqs at {address}: {doing} failed: {code}: {}",
            message.unwrap_or_default()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_of_both_protocols_map_the_same() {
        for (code, kind) in [
            (
                "AWS.SimpleQueueService.NonExistentQueue",
                ErrorKind::NotFound,
            ),
            ("QueueDoesNotExist", ErrorKind::NotFound),
            ("InvalidClientTokenId", ErrorKind::Auth),
            ("ThrottlingException", ErrorKind::Throttled),
            ("RequestThrottled", ErrorKind::Throttled),
            (
                "AWS.SimpleQueueService.PurgeQueueInProgress",
                ErrorKind::Throttled,
            ),
            ("ReceiptHandleIsInvalid", ErrorKind::LeaseLost),
            ("QueueAlreadyExists", ErrorKind::Config),
            ("InvalidParameterValue", ErrorKind::InvalidInput),
            (
                "AWS.SimpleQueueService.BatchRequestTooLong",
                ErrorKind::PayloadTooLarge,
            ),
            ("SomethingNew", ErrorKind::Other),
        ] {
            assert_eq!(kind_of_code(code), kind, "{code}");
        }
        assert!(kind_of_code("RequestThrottled").is_retryable());
    }
}
