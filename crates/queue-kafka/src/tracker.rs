//! Offsets of one assigned partition: which records are buffered, which
//! are handed out (under which lease), and the offset that may be
//! committed.
//!
//! The commit offset is the lowest record not yet settled, or one past the
//! highest fetched record when every fetched record is settled. Records
//! settle in any order; the commit offset only moves when the lowest
//! unsettled record settles, so a commit never passes an unfinished
//! record. Offsets need not be contiguous (transaction markers and
//! compaction leave gaps): the tracker only knows the offsets it fetched.

use std::collections::BTreeMap;
use std::time::SystemTime;

/// Where one fetched, unsettled record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// In the local buffer, not handed out.
    Buffered,
    /// Handed out under lease `token`, until `deadline`.
    Handed { token: u64, deadline: SystemTime },
}

/// Why a settle was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stale {
    /// The record is not handed out under this token (settled already,
    /// or its lease expired and it went out again).
    Lease,
}

/// One partition's offsets since it was assigned.
#[derive(Debug, Default)]
pub(crate) struct Track {
    unsettled: BTreeMap<i64, Slot>,
    /// One past the highest offset fetched (`None`: nothing fetched yet).
    fetched_end: Option<i64>,
    /// The last commit offset handed to the caller.
    committed: Option<i64>,
}

impl Track {
    /// A record was fetched into the buffer.
    pub(crate) fn fetched(&mut self, offset: i64) {
        // The first record fetched is where the group's position stands:
        // nothing moved yet.
        self.committed.get_or_insert(offset);
        self.unsettled.insert(offset, Slot::Buffered);
        self.fetched_end = Some(self.fetched_end.map_or(offset + 1, |e| e.max(offset + 1)));
    }

    /// The record at `offset` is handed out under `token` until `deadline`.
    pub(crate) fn hand(&mut self, offset: i64, token: u64, deadline: SystemTime) {
        if let Some(slot) = self.unsettled.get_mut(&offset) {
            *slot = Slot::Handed { token, deadline };
        }
    }

    /// Whether the record at `offset` is handed out under `token`.
    pub(crate) fn holds(&self, offset: i64, token: u64) -> bool {
        matches!(self.unsettled.get(&offset), Some(Slot::Handed { token: t, .. }) if *t == token)
    }

    /// Move the lease of `offset` (held under `token`) to `deadline`.
    pub(crate) fn extend(
        &mut self,
        offset: i64,
        token: u64,
        deadline: SystemTime,
    ) -> Result<(), Stale> {
        match self.unsettled.get_mut(&offset) {
            Some(Slot::Handed {
                token: t,
                deadline: d,
            }) if *t == token => {
                *d = deadline;
                Ok(())
            }
            _ => Err(Stale::Lease),
        }
    }

    /// The record at `offset`, held under `token`, is settled (acked, or
    /// its copy is safely elsewhere). Returns the new commit offset if it
    /// moved.
    pub(crate) fn settle(&mut self, offset: i64, token: u64) -> Result<Option<i64>, Stale> {
        if !self.holds(offset, token) {
            return Err(Stale::Lease);
        }
        self.unsettled.remove(&offset);
        Ok(self.advance())
    }

    /// Take the record at `offset` back from its holder (lease expired,
    /// or released): it is buffered again for another hand-out.
    pub(crate) fn take_back(&mut self, offset: i64, token: u64) -> Result<(), Stale> {
        if !self.holds(offset, token) {
            return Err(Stale::Lease);
        }
        self.unsettled.insert(offset, Slot::Buffered);
        Ok(())
    }

    /// Handed records whose lease ran out by `now`: (offset, token).
    pub(crate) fn expired(&self, now: SystemTime) -> Vec<(i64, u64)> {
        self.unsettled
            .iter()
            .filter_map(|(offset, slot)| match slot {
                Slot::Handed { token, deadline } if *deadline <= now => Some((*offset, *token)),
                _ => None,
            })
            .collect()
    }

    /// The earliest lease deadline of a handed record.
    pub(crate) fn next_deadline(&self) -> Option<SystemTime> {
        self.unsettled
            .values()
            .filter_map(|slot| match slot {
                Slot::Handed { deadline, .. } => Some(*deadline),
                Slot::Buffered => None,
            })
            .min()
    }

    /// Records between the commit offset and the fetch position that are
    /// settled already (they still count in the group's lag until the
    /// commit moves past them). Approximate where offsets have gaps.
    pub(crate) fn settled_uncommitted(&self) -> u64 {
        match (self.commit_offset(), self.fetched_end) {
            (Some(commit), Some(end)) => {
                let span = u64::try_from(end - commit).unwrap_or(0);
                span.saturating_sub(self.unsettled.len() as u64)
            }
            _ => 0,
        }
    }

    /// The offset that may be committed now: the lowest unsettled record,
    /// else one past the highest fetched.
    pub(crate) fn commit_offset(&self) -> Option<i64> {
        self.unsettled
            .first_key_value()
            .map(|(offset, _)| *offset)
            .or(self.fetched_end)
    }

    fn advance(&mut self) -> Option<i64> {
        let now = self.commit_offset();
        if now.is_some() && now != self.committed {
            self.committed = now;
            return now;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn out_of_order_settles_never_commit_past_an_unfinished_record() {
        let mut t = Track::default();
        for offset in 10..15 {
            t.fetched(offset);
            t.hand(offset, offset as u64, at(100));
        }
        assert_eq!(t.commit_offset(), Some(10));
        // 12 and 14 finish first: nothing may be committed past 10.
        assert_eq!(t.settle(12, 12), Ok(None));
        assert_eq!(t.settle(14, 14), Ok(None));
        assert_eq!(t.commit_offset(), Some(10));
        assert_eq!(
            t.settled_uncommitted(),
            2,
            "12 and 14 are done, not committed"
        );
        // 10 finishes: the commit moves to the next unfinished, 11.
        assert_eq!(t.settle(10, 10), Ok(Some(11)));
        // 11 finishes: 12 is done already, so 13.
        assert_eq!(t.settle(11, 11), Ok(Some(13)));
        // 13 finishes: everything fetched is done, one past 14.
        assert_eq!(t.settle(13, 13), Ok(Some(15)));
    }

    #[test]
    fn gaps_in_offsets_do_not_stall_the_commit() {
        let mut t = Track::default();
        for offset in [3, 7, 8] {
            t.fetched(offset);
            t.hand(offset, 1, at(100));
        }
        assert_eq!(t.settle(3, 1), Ok(Some(7)));
        assert_eq!(t.settle(8, 1), Ok(None));
        assert_eq!(t.settle(7, 1), Ok(Some(9)));
    }

    #[test]
    fn a_stale_token_settles_nothing() {
        let mut t = Track::default();
        t.fetched(0);
        t.hand(0, 1, at(10));
        assert_eq!(t.expired(at(9)), vec![]);
        assert_eq!(t.expired(at(10)), vec![(0, 1)]);
        // The lease ran out: the record goes out again under token 2.
        t.take_back(0, 1).expect("held");
        t.hand(0, 2, at(20));
        assert_eq!(
            t.settle(0, 1),
            Err(Stale::Lease),
            "the first holder's ack is stale"
        );
        assert_eq!(t.extend(0, 1, at(30)), Err(Stale::Lease));
        t.extend(0, 2, at(30)).expect("the new holder extends");
        assert_eq!(t.next_deadline(), Some(at(30)));
        assert_eq!(t.settle(0, 2), Ok(Some(1)));
        assert_eq!(t.settle(0, 2), Err(Stale::Lease), "settled once");
    }
}
