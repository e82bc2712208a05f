//! The Lua scripts, each with the shared prelude, and the key layout.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use queue_core::{QueueName, Result};
use redis::{Script, Value};

use crate::error::unexpected;

const PRELUDE: &str = include_str!("lua/prelude.lua");

/// Every queue script, compiled once (invoked by SHA, loaded on first use).
pub(crate) struct Scripts {
    pub(crate) send: Script,
    pub(crate) claim: Script,
    pub(crate) ack: Script,
    pub(crate) nack: Script,
    pub(crate) extend: Script,
    pub(crate) bury: Script,
    pub(crate) stats: Script,
    pub(crate) purge: Script,
    pub(crate) dead: Script,
    pub(crate) redrive: Script,
    pub(crate) release: Script,
}

fn with_prelude(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    send: with_prelude(include_str!("lua/send.lua")),
    claim: with_prelude(include_str!("lua/claim.lua")),
    ack: with_prelude(include_str!("lua/ack.lua")),
    nack: with_prelude(include_str!("lua/nack.lua")),
    extend: with_prelude(include_str!("lua/extend.lua")),
    bury: with_prelude(include_str!("lua/bury.lua")),
    stats: with_prelude(include_str!("lua/stats.lua")),
    purge: with_prelude(include_str!("lua/purge.lua")),
    dead: with_prelude(include_str!("lua/dead.lua")),
    redrive: with_prelude(include_str!("lua/redrive.lua")),
    release: with_prelude(include_str!("lua/release.lua")),
});

/// Most items one script call takes or returns (claims, acks, nacks, dead
/// letter pages, redrives, job-store cleanup): big enough that a batch is
/// one round trip, small enough that no script blocks the server long.
pub(crate) const SCRIPT_BATCH: usize = 1000;

/// The suffixes of a queue's keys, in the order every script takes them.
pub(crate) const KEY_SUFFIXES: [&str; 18] = [
    "meta", "ready", "delayed", "leased", "msg", "stats", "ttl", "exp", "dead", "dmsg", "dinfo",
    "idem", "idemz", "inbox", "notify", "gof", "gvt", "gact",
];

/// Position of the inbox key (plain clients may LPUSH there).
pub(crate) const INBOX: usize = 13;
/// Position of the notification list consumers block on.
pub(crate) const NOTIFY: usize = 14;
/// Position of the metadata hash.
pub(crate) const META: usize = 0;

/// The keys of one queue: `<prefix>:{<queue>}:<suffix>`. The braces make
/// `<queue>` the hash tag, so on Redis Cluster they live in one slot.
pub(crate) fn queue_keys(prefix: &str, queue: &QueueName) -> Vec<String> {
    KEY_SUFFIXES
        .iter()
        .map(|suffix| format!("{prefix}:{{{queue}}}:{suffix}"))
        .collect()
}

/// The set of queue names under `prefix` (`<prefix>:{queues}`), so
/// listing queues never scans the key space.
pub(crate) fn registry_key(prefix: &str) -> String {
    format!("{prefix}:{{queues}}")
}

/// An invocation of `script` with all of `keys`.
pub(crate) fn invocation<'a>(script: &'a Script, keys: &[String]) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    for key in keys {
        invocation.key(key);
    }
    invocation
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whole milliseconds of `d`, rounded up, plus one when not zero: the
/// server's clock reads whole milliseconds, so this keeps "not before" strict.
pub(crate) fn ms_after(d: Duration) -> u64 {
    if d.is_zero() {
        return 0;
    }
    let ms = d.as_micros().div_ceil(1000);
    u64::try_from(ms).unwrap_or(u64::MAX / 2) + 1
}

pub(crate) fn array(value: Value) -> Result<Vec<Value>> {
    match value {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        _ => Err(unexpected("an array")),
    }
}

pub(crate) fn bytes_of(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::Okay => Some(b"OK"),
        _ => None,
    }
}

pub(crate) fn int_of(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// The 1-based positions a settling script reports as lost.
pub(crate) fn lost_positions(reply: Value) -> Result<Vec<usize>> {
    array(reply)?
        .iter()
        .map(|v| {
            int_of(v)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| unexpected("positions"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_to_keep_not_before_strict() {
        assert_eq!(ms_after(Duration::ZERO), 0);
        assert_eq!(ms_after(Duration::from_micros(1)), 2);
        assert_eq!(ms_after(Duration::from_millis(250)), 251);
        assert_eq!(ms_after(Duration::from_micros(250_400)), 252);
    }
}
