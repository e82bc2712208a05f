//! Property tests of the two parsers that read bytes and text from
//! outside: the envelope decoder and the URL configuration parser.
//! Arbitrary input never panics, and what is written reads back the same.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use proptest::prelude::*;
use queue_core::config::{parse_duration, QueueConfig};
use queue_core::trace::TraceContext;
use queue_core::{envelope, ErrorKind, Message, MessageId, Priority};

fn priority() -> impl Strategy<Value = Priority> {
    prop_oneof![
        Just(Priority::Low),
        Just(Priority::Normal),
        Just(Priority::High),
        Just(Priority::Urgent)
    ]
}

/// Whole milliseconds since the epoch, as the envelope keeps them.
fn time() -> impl Strategy<Value = SystemTime> {
    (0u64..4_102_444_800_000).prop_map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
}

prop_compose! {
    fn message()(
        id in any::<[u8; 16]>(),
        payload in proptest::collection::vec(any::<u8>(), 0..256),
        headers in proptest::collection::btree_map("[a-zA-Z0-9_.-]{1,12}", "\\PC{0,16}", 0..6),
        priority in priority(),
        attempt in 1u32..1000,
        max_attempts in 1u32..1000,
        created_at in time(),
        not_before in proptest::option::of(time()),
        expires_at in proptest::option::of(time()),
        idempotency_key in proptest::option::of("\\PC{0,24}"),
        last_error in proptest::option::of("\\PC{0,64}"),
        ordering_key in proptest::option::of("\\PC{0,24}"),
        trace in proptest::option::of((1u128.., 1u64.., any::<bool>())),
    ) -> Message {
        let mut m = Message::new(payload)
            .with_id(MessageId::from_bytes(id))
            .with_priority(priority)
            .with_max_attempts(max_attempts);
        for (k, v) in headers {
            m = m.with_header(k, v);
        }
        m.attempt = attempt;
        m.created_at = created_at;
        m.not_before = not_before;
        m.expires_at = expires_at;
        m.idempotency_key = idempotency_key.map(Into::into);
        m.last_error = last_error;
        m.ordering_key = ordering_key.map(Into::into);
        m.trace = trace.map(|(trace_id, span_id, sampled)| TraceContext { trace_id, span_id, sampled });
        m
    }
}

proptest! {
    #[test]
    fn any_message_round_trips_through_the_envelope(message in message()) {
        let encoded = envelope::encode(&message);
        prop_assert_eq!(encoded.len(), envelope::encoded_len(&message));
        prop_assert_eq!(encoded.len(), message.wire_size());
        let decoded = envelope::decode(&encoded).expect("an encoded message decodes");
        prop_assert_eq!(decoded, message);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = envelope::decode(&Bytes::from(bytes)) {
            prop_assert_eq!(e.kind(), ErrorKind::Decode);
        }
    }

    #[test]
    fn corrupted_envelopes_never_panic_the_decoder(
        message in message(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = envelope::encode(&message).to_vec();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let len = cut.index(bytes.len() + 1);
        bytes.truncate(len);
        if let Err(e) = envelope::decode(&Bytes::from(bytes)) {
            prop_assert_eq!(e.kind(), ErrorKind::Decode);
        }
    }

    #[test]
    fn arbitrary_urls_never_panic_the_parser(input in "\\PC{0,80}") {
        if let Err(e) = QueueConfig::from_url(&input) {
            prop_assert_eq!(e.kind(), ErrorKind::Config);
        }
    }

    #[test]
    fn passwords_never_show_in_config_or_errors(
        scheme in prop_oneof![Just("redis"), Just("amqp"), Just("kafka"), Just("sqs"), Just("nope")],
        secret in "[a-z]{6}[0-9]{6}",
        query in proptest::collection::vec(("[a-z_]{1,12}", "[a-zA-Z0-9]{0,8}"), 0..4),
    ) {
        let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let url = format!("{scheme}://user:{secret}@127.0.0.1:1234/?{}", query.join("&"));
        let shown = match QueueConfig::from_url(&url) {
            Ok(config) => format!("{config:?} {}", config.url),
            Err(e) => format!("{e} {e:?}"),
        };
        prop_assert!(!shown.contains(&secret), "{} shown in {}", secret, shown);
        let secret_param = format!("{scheme}://h:1/?api_token={secret}");
        let shown = match QueueConfig::from_url(&secret_param) {
            Ok(config) => format!("{config:?} {}", config.url),
            Err(e) => format!("{e} {e:?}"),
        };
        prop_assert!(!shown.contains(&secret), "{} shown in {}", secret, shown);
    }

    #[test]
    fn durations_round_trip(value in 0u64..1_000_000, unit in prop_oneof![Just("ms"), Just("s"), Just("m"), Just("h"), Just("d")]) {
        let parsed = parse_duration("lease", &format!("{value}{unit}")).expect("a well-formed duration");
        let ms = match unit { "ms" => 1, "s" => 1000, "m" => 60_000, "h" => 3_600_000, _ => 86_400_000 };
        prop_assert_eq!(parsed, Duration::from_millis(value * ms));
    }
}
