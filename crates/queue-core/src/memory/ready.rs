//! A memory queue's ready messages: one lane per priority, and within a
//! lane, turns taken round-robin between the messages with no group and
//! each group ([`Message::with_group`]), so a group with a long backlog
//! does not hold back the others.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::message::Message;

/// The ready messages of one queue.
#[derive(Debug, Default)]
pub(super) struct Ready {
    lanes: [Lane; 4],
    len: usize,
    saw_groups: bool,
}

/// The ready messages of one priority.
#[derive(Debug, Default)]
struct Lane {
    /// Messages with no group, in the order they became ready.
    plain: VecDeque<Message>,
    /// Each group's messages, in the order they became ready.
    groups: HashMap<Arc<str>, VecDeque<Message>>,
    /// Whose turn comes next: `None` for the messages with no group, else a
    /// group. Empty while the lane has no group; otherwise each list that
    /// holds messages is here exactly once.
    turns: VecDeque<Option<Arc<str>>>,
}

/// How many deliveries of each group are leased now, and the most a
/// consumer takes of one group.
pub(super) struct GroupLimit<'a> {
    pub(super) active: &'a HashMap<Arc<str>, u32>,
    pub(super) limit: u32,
}

impl GroupLimit<'_> {
    fn full(&self, group: &str) -> bool {
        self.active.get(group).is_some_and(|&n| n >= self.limit)
    }
}

impl Lane {
    fn list(&mut self, turn: Option<&Arc<str>>) -> &mut VecDeque<Message> {
        match turn {
            None => &mut self.plain,
            Some(group) => self.groups.entry(group.clone()).or_default(),
        }
    }

    /// While the lane has no group, `turns` is empty and the plain list is
    /// a FIFO on its own. When the first group arrives, the plain list (if
    /// it holds messages) takes a turn first.
    fn start_turns(&mut self) {
        if self.groups.is_empty() && self.turns.is_empty() && !self.plain.is_empty() {
            self.turns.push_back(None);
        }
    }

    #[inline]
    fn push_back(&mut self, message: Message, group: Option<Arc<str>>) {
        match group {
            None if self.groups.is_empty() => self.plain.push_back(message),
            group => self.push_back_turns(message, group),
        }
    }

    /// [`push_back`](Self::push_back) where groups take turns.
    fn push_back_turns(&mut self, message: Message, group: Option<Arc<str>>) {
        let Some(group) = group else {
            if self.plain.is_empty() {
                self.turns.push_back(None);
            }
            self.plain.push_back(message);
            return;
        };
        self.start_turns();
        let list = self.groups.entry(group.clone()).or_default();
        if list.is_empty() {
            self.turns.push_back(Some(group));
        }
        list.push_back(message);
    }

    /// Put `message` first: its list's turn comes next.
    fn push_front(&mut self, message: Message, turn: Option<Arc<str>>) {
        if turn.is_none() && self.groups.is_empty() {
            self.plain.push_front(message);
            return;
        }
        if turn.is_some() {
            self.start_turns();
        }
        if let Some(at) = self.turns.iter().position(|t| *t == turn) {
            self.turns.remove(at);
        }
        self.list(turn.as_ref()).push_front(message);
        self.turns.push_front(turn);
    }

    /// The next message by turns, passing over groups at their limit.
    #[inline]
    fn pop(&mut self, limit: Option<&GroupLimit<'_>>) -> Option<Message> {
        if self.groups.is_empty() {
            self.plain.pop_front()
        } else {
            self.pop_turn(limit)
        }
    }

    /// [`pop`](Self::pop) where groups take turns.
    fn pop_turn(&mut self, limit: Option<&GroupLimit<'_>>) -> Option<Message> {
        let at = self.turns.iter().position(|turn| match (turn, limit) {
            (Some(group), Some(limit)) => !limit.full(group),
            _ => true,
        })?;
        let turn = self.turns.remove(at).expect("position is in range");
        let list = self.list(turn.as_ref());
        let message = list.pop_front();
        if list.is_empty() {
            if let Some(group) = &turn {
                self.groups.remove(group);
                if self.groups.is_empty() {
                    // Back to a plain FIFO.
                    self.turns.clear();
                }
            }
        } else {
            self.turns.push_back(turn);
        }
        message
    }

    fn lists(&self) -> impl Iterator<Item = &VecDeque<Message>> {
        std::iter::once(&self.plain).chain(self.groups.values())
    }

    fn retain(&mut self, mut keep: impl FnMut(&Message) -> bool) {
        self.plain.retain(&mut keep);
        self.groups.retain(|_, list| {
            list.retain(&mut keep);
            !list.is_empty()
        });
        if self.groups.is_empty() {
            self.turns.clear();
            return;
        }
        let (plain, groups) = (&self.plain, &self.groups);
        self.turns.retain(|turn| match turn {
            None => !plain.is_empty(),
            Some(group) => groups.contains_key(group),
        });
    }
}

impl Ready {
    /// How many messages are ready.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether a grouped message was ever queued here (until a purge):
    /// until then no lease needs counting per group.
    pub(super) fn saw_groups(&self) -> bool {
        self.saw_groups
    }

    /// Queue `message` last in its priority and group.
    #[inline]
    pub(super) fn push_back(&mut self, message: Message) {
        self.len += 1;
        let group = self.group_of(&message);
        self.lanes[message.priority.rank()].push_back(message, group);
    }

    /// Queue `message` first in its priority, its group's turn next.
    pub(super) fn push_front(&mut self, message: Message) {
        self.len += 1;
        let group = self.group_of(&message);
        self.lanes[message.priority.rank()].push_front(message, group);
    }

    /// The group of `message` (one header lookup, none for a message
    /// without headers), noting that groups are in use.
    #[inline]
    fn group_of(&mut self, message: &Message) -> Option<Arc<str>> {
        if message.headers.is_empty() {
            return None;
        }
        let group = message.group().map(Arc::from);
        if group.is_some() {
            self.saw_groups = true;
        }
        group
    }

    /// The next message of priority `rank`: by turns between groups,
    /// passing over groups at their limit.
    #[inline]
    pub(super) fn pop_rank(
        &mut self,
        rank: usize,
        limit: Option<&GroupLimit<'_>>,
    ) -> Option<Message> {
        let message = self.lanes[rank].pop(limit)?;
        self.len -= 1;
        Some(message)
    }

    /// The next message: highest priority first, then by turns between
    /// groups, passing over groups at their limit.
    #[cfg(test)]
    pub(super) fn pop(&mut self, limit: Option<&GroupLimit<'_>>) -> Option<Message> {
        (0..4).find_map(|rank| self.pop_rank(rank, limit))
    }

    /// The first message of each list (the oldest ready one is among them).
    pub(super) fn heads(&self) -> impl Iterator<Item = &Message> {
        self.lanes
            .iter()
            .flat_map(Lane::lists)
            .filter_map(VecDeque::front)
    }

    /// Keep only the messages `keep` says to.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Message) -> bool) {
        for lane in &mut self.lanes {
            lane.retain(&mut keep);
        }
        self.len = self
            .lanes
            .iter()
            .flat_map(Lane::lists)
            .map(VecDeque::len)
            .sum();
    }

    pub(super) fn clear(&mut self) {
        *self = Ready::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Priority;

    fn msg(group: Option<&str>, n: u32) -> Message {
        let m = Message::new(n.to_string().into_bytes());
        match group {
            Some(g) => m.with_group(g),
            None => m,
        }
    }

    fn label(m: &Message) -> String {
        format!(
            "{}{}",
            m.group().unwrap_or("-"),
            String::from_utf8_lossy(&m.payload)
        )
    }

    fn drain(ready: &mut Ready, limit: Option<&GroupLimit<'_>>) -> Vec<String> {
        std::iter::from_fn(|| ready.pop(limit))
            .map(|m| label(&m))
            .collect()
    }

    #[test]
    fn groups_take_turns_and_plain_messages_keep_fifo() {
        let mut ready = Ready::default();
        for n in 0..4 {
            ready.push_back(msg(Some("a"), n));
        }
        ready.push_back(msg(None, 0));
        ready.push_back(msg(Some("b"), 0));
        ready.push_back(msg(None, 1));
        ready.push_back(msg(Some("b"), 1));
        assert_eq!(ready.len(), 8);
        assert_eq!(
            drain(&mut ready, None),
            ["a0", "-0", "b0", "a1", "-1", "b1", "a2", "a3"]
        );
        assert!(ready.is_empty());
    }

    #[test]
    fn a_group_at_its_limit_is_passed_over_and_priority_comes_first() {
        let mut ready = Ready::default();
        ready.push_back(msg(Some("a"), 0));
        ready.push_back(msg(Some("a"), 1));
        ready.push_back(msg(Some("b"), 0));
        ready.push_back(msg(None, 9).with_priority(Priority::High));
        let active = HashMap::from([(Arc::<str>::from("a"), 2)]);
        let limit = GroupLimit {
            active: &active,
            limit: 2,
        };
        assert_eq!(drain(&mut ready, Some(&limit)), ["-9", "b0"]);
        assert_eq!(ready.len(), 2);
        assert_eq!(drain(&mut ready, None), ["a0", "a1"]);
    }

    #[test]
    fn a_message_put_back_in_front_goes_next_and_retain_keeps_turns_right() {
        let mut ready = Ready::default();
        ready.push_back(msg(Some("a"), 0));
        ready.push_back(msg(Some("b"), 0));
        ready.push_back(msg(Some("b"), 1));
        ready.push_front(msg(Some("b"), 7));
        assert_eq!(ready.heads().count(), 2);
        assert_eq!(label(&ready.pop(None).unwrap()), "b7");
        ready.push_front(msg(Some("b"), 7));
        ready.retain(|m| m.payload.as_ref() != b"0");
        assert_eq!(ready.len(), 2);
        assert_eq!(drain(&mut ready, None), ["b7", "b1"]);
    }
}
