//! The Lua scripts, each with the shared prelude, and the key layout.

use std::sync::LazyLock;

use queue_core::QueueName;
use redis::Script;

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
    pub(crate) inbox: Script,
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
    inbox: with_prelude(include_str!("lua/inbox.lua")),
});

/// The suffixes of a queue's keys, in the order every script takes them.
pub(crate) const KEY_SUFFIXES: [&str; 15] = [
    "meta", "ready", "delayed", "leased", "msg", "stats", "ttl", "exp", "dead", "dmsg", "dinfo",
    "idem", "idemz", "inbox", "notify",
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

/// An invocation of `script` with all of `keys`.
pub(crate) fn invocation<'a>(script: &'a Script, keys: &[String]) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    for key in keys {
        invocation.key(key);
    }
    invocation
}
