//! A room's newest events in memory (their positions and IDs), so that the hot readers of a
//! room's timeline — a sync woken by a new event, the unread counts of its members — answer
//! from memory instead of opening a storage iterator per member.
//!
//! Invariant: the index holds *every* event of the room at positions in `(floor, last]`,
//! where `last` is the room's newest published position. It starts empty with `floor` at the
//! room's last position (at start-up and for a new room); each event is pushed in its
//! `apply` (once durable, before its position is published), so nothing at or below a
//! published position can be missing; past [`RECENT_EVENTS`] the oldest is dropped and
//! `floor` moves up to it. A range that reaches at or below `floor` is answered from storage
//! (`Rooms::room_events`), except a newest-first read whose `limit` newest events are all here.

use std::collections::VecDeque;

/// Events kept per room: a sync that comes back within this many events of the room reads
/// its timeline from memory. Small, as every room that has seen an event since start-up
/// keeps its own.
pub const RECENT_EVENTS: usize = 48;

#[derive(Debug)]
pub struct Recent {
    /// Every event after this position is in `events`.
    floor: u64,
    /// `(position, event ID)`, ascending.
    events: VecDeque<(u64, String)>,
    /// For each of `events`: whether an event relating to it (`m.relates_to`) was published
    /// since. One that has none needs no relations bundle, and no read of the index.
    related: VecDeque<bool>,
}

impl Recent {
    /// An empty index for a room whose newest event is at `last_pos`.
    pub fn new(last_pos: u64) -> Self {
        Self { floor: last_pos, events: VecDeque::new(), related: VecDeque::new() }
    }

    /// A newly published event (positions only grow).
    pub fn push(&mut self, pos: u64, event_id: String) {
        let newest = self.events.back().map_or(self.floor, |(last, _)| *last);
        if pos <= newest {
            // Out of order (cannot happen: one event at a time per room, published in
            // order); start over from the newest known position rather than break the
            // invariant.
            self.events.clear();
            self.related.clear();
            self.floor = newest;
            return;
        }
        self.events.push_back((pos, event_id));
        self.related.push_back(false);
        if self.events.len() > RECENT_EVENTS
            && let Some((oldest, _)) = self.events.pop_front()
        {
            self.related.pop_front();
            self.floor = oldest;
        }
    }

    /// An event relating to `parent` was published (before its own position is).
    pub fn mark_related(&mut self, parent: &str) {
        if let Some(i) = self.events.iter().rposition(|(_, id)| id == parent)
            && let Some(flag) = self.related.get_mut(i)
        {
            *flag = true;
        }
    }

    /// Whether `event_id` is one of the recent events and nothing relates to it (`false`
    /// when unknown: the relations index must be read).
    pub fn known_unrelated(&self, event_id: &str) -> bool {
        self.events
            .iter()
            .rposition(|(_, id)| id == event_id)
            .is_some_and(|i| self.related.get(i) == Some(&false))
    }

    /// The events in `(after, before)`, as `Store::room_events` answers, if this index
    /// knows the answer.
    pub fn range(
        &self,
        after: Option<u64>,
        before: Option<u64>,
        reverse: bool,
        limit: usize,
    ) -> Option<Vec<(u64, String)>> {
        let low = after.unwrap_or(0);
        let high = before.unwrap_or(u64::MAX);
        let inside = |pos: &u64| *pos > low && *pos < high;
        let complete = low >= self.floor;
        if reverse {
            let newest: Vec<(u64, String)> = self
                .events
                .iter()
                .rev()
                .filter(|(pos, _)| inside(pos))
                .take(limit)
                .cloned()
                .collect();
            (complete || newest.len() == limit).then_some(newest)
        } else {
            complete.then(|| {
                self.events.iter().filter(|(pos, _)| inside(pos)).take(limit).cloned().collect()
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(events: &[(u64, String)]) -> Vec<u64> {
        events.iter().map(|(p, _)| *p).collect()
    }

    #[test]
    fn answers_only_ranges_it_holds_completely() {
        let mut r = Recent::new(10);
        for pos in [12, 15, 20] {
            r.push(pos, format!("${pos}"));
        }
        assert_eq!(ids(&r.range(Some(10), None, false, 10).unwrap()), vec![12, 15, 20]);
        assert_eq!(ids(&r.range(Some(12), Some(20), false, 10).unwrap()), vec![15]);
        assert_eq!(ids(&r.range(Some(12), Some(21), true, 10).unwrap()), vec![20, 15]);
        assert_eq!(ids(&r.range(Some(10), None, false, 2).unwrap()), vec![12, 15]);
        // Below the floor: unknown, unless the newest `limit` are all here.
        assert_eq!(r.range(Some(5), None, false, 10), None);
        assert_eq!(r.range(None, Some(21), true, 10), None);
        assert_eq!(ids(&r.range(None, Some(21), true, 2).unwrap()), vec![20, 15]);
        assert_eq!(ids(&r.range(Some(20), None, false, 10).unwrap()), Vec::<u64>::new());
    }

    #[test]
    fn relations_are_tracked_for_recent_events_only() {
        let mut r = Recent::new(0);
        r.push(1, "$a".into());
        r.push(2, "$b".into());
        assert!(r.known_unrelated("$a") && r.known_unrelated("$b"));
        r.mark_related("$a");
        r.mark_related("$unknown");
        assert!(!r.known_unrelated("$a") && r.known_unrelated("$b"));
        assert!(!r.known_unrelated("$unknown"), "not recent: the index must be read");
        for pos in 3..(RECENT_EVENTS as u64 + 3) {
            r.push(pos, format!("${pos}"));
        }
        assert!(!r.known_unrelated("$b"), "dropped from the recent events");
    }

    #[test]
    fn the_floor_rises_as_old_events_drop() {
        let mut r = Recent::new(0);
        for pos in 1..=(RECENT_EVENTS as u64 + 5) {
            r.push(pos, format!("${pos}"));
        }
        assert_eq!(r.floor, 5);
        assert_eq!(r.range(Some(4), None, false, 1000), None);
        assert_eq!(r.range(Some(5), None, false, 1000).unwrap().len(), RECENT_EVENTS);
        // An out-of-order push starts over instead of lying.
        let newest = RECENT_EVENTS as u64 + 5;
        r.push(3, "$3".into());
        assert_eq!(r.range(Some(5), None, false, 10), None);
        assert_eq!(r.range(Some(newest), None, false, 10).unwrap().len(), 0);
    }
}
