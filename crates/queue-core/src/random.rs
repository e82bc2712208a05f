//! The per-thread generator behind message ids, backoff jitter and trace
//! ids: seeded once from the OS, so none of them costs a system call.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use uuid::Uuid;

thread_local! {
    /// (last millisecond, counter within it, generator state)
    static STATE: Cell<(u64, u128, u64)> = Cell::new((0, 0, seed()));
}

fn seed() -> u64 {
    // The 62 random bits of a v7 UUID made by the uuid crate from the OS.
    let bytes = Uuid::now_v7().into_bytes();
    u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"))
}

/// splitmix64: fast, and plenty for the random part of an id.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const COUNTER_BITS: u32 = 74;

/// A random u64 from the per-thread generator (for jitter and span ids).
fn next_u64() -> u64 {
    STATE.with(|cell| {
        let (ms, counter, mut rng) = cell.get();
        let value = next_random(&mut rng);
        cell.set((ms, counter, rng));
        value
    })
}

pub(crate) fn next_uuid_v7() -> Uuid {
    next_uuid_v7_at(SystemTime::now())
}

/// A v7 UUID for the time `now` (one clock read serves a message's id and
/// its `created_at`).
pub(crate) fn next_uuid_v7_at(now: SystemTime) -> Uuid {
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    STATE.with(|cell| {
        let (last_ms, counter, mut rng) = cell.get();
        let (ms, counter) = if now_ms > last_ms {
            // Start low in the counter space so increments never overflow within a millisecond.
            let start =
                (u128::from(next_random(&mut rng)) << 8) & ((1u128 << (COUNTER_BITS - 2)) - 1);
            (now_ms, start)
        } else if counter + 1 < (1u128 << COUNTER_BITS) {
            (last_ms, counter + 1)
        } else {
            // Counter exhausted (or the clock went back): borrow the next millisecond.
            (last_ms + 1, 0)
        };
        cell.set((ms, counter, rng));
        let rand_a = ((counter >> 62) & 0xfff) as u16;
        let rand_b = (counter & ((1u128 << 62) - 1)) as u64;
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        bytes[6..8].copy_from_slice(&(0x7000 | rand_a).to_be_bytes());
        bytes[8..].copy_from_slice(&((0b10u64 << 62) | rand_b).to_be_bytes());
        Uuid::from_bytes(bytes)
    })
}

/// A uniform random number in `[0, 1)` (for backoff jitter); not for secrets.
pub fn random_unit() -> f64 {
    (next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// A random u64 (for trace and span ids); not for secrets.
pub fn random_u64() -> u64 {
    next_u64()
}
