//! What the sync streams share: positions handed out to concurrent writers and published in
//! order ([`Positions`]), and an in-memory index of what changed when ([`ChangeLog`]).
//!
//! A stream (receipts, typing, presence…) plugs into `/sync` like this: its writer takes a
//! position from [`Positions::reserve`], makes the change durable (or not, for in-memory
//! streams), records it in its [`ChangeLog`] (keyed by room or by user) and publishes the
//! position, then wakes the users concerned through `rooms::notify::Notifier`. Its reader
//! answers "did K change after P" and "what changed after P" from the change log, so a sync
//! touches only what moved.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;

use std::time::Duration;

use parking_lot::{Mutex, RwLock};

/// Stream positions for writers that run concurrently (each makes its own change durable,
/// without a lock held across the fsync), published in order: the published position is
/// the highest one below which every reserved position has been published or abandoned, so
/// a reader that sees position P sees every change ≤ P.
pub struct Positions {
    inner: Mutex<PositionsInner>,
}

struct PositionsInner {
    last_reserved: u64,
    published: u64,
    in_flight: BTreeSet<u64>,
}

impl Positions {
    pub fn new(start: u64) -> Self {
        Self {
            inner: Mutex::new(PositionsInner {
                last_reserved: start,
                published: start,
                in_flight: BTreeSet::new(),
            }),
        }
    }

    /// The published position.
    pub fn current(&self) -> u64 {
        self.inner.lock().published
    }

    /// A new position; it is published by [`Reserved::publish`] (or skipped when the
    /// reservation is dropped, e.g. because the write failed).
    pub fn reserve(&self) -> Reserved<'_> {
        let mut inner = self.inner.lock();
        inner.last_reserved += 1;
        let pos = inner.last_reserved;
        inner.in_flight.insert(pos);
        Reserved { positions: self, pos, done: false }
    }

    fn finish(&self, pos: u64) {
        let mut inner = self.inner.lock();
        inner.in_flight.remove(&pos);
        inner.published = match inner.in_flight.first() {
            Some(first) => first - 1,
            None => inner.last_reserved,
        };
    }
}

/// A reserved stream position.
pub struct Reserved<'a> {
    positions: &'a Positions,
    pub pos: u64,
    done: bool,
}

impl Reserved<'_> {
    /// Marks the change at this position visible (durable and in the caches); the published
    /// position moves up to it once every earlier reservation is done too.
    pub fn publish(mut self) {
        self.done = true;
        self.positions.finish(self.pos);
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.positions.finish(self.pos);
        }
    }
}

/// The latest change position of each key (a room, a user), and the keys by position, for
/// changes after `floor`. Bounded: past `capacity` keys the oldest are forgotten and the
/// floor rises; a question about a position below the floor answers "maybe changed".
pub struct ChangeLog<K> {
    inner: RwLock<ChangeLogInner<K>>,
    capacity: usize,
}

struct ChangeLogInner<K> {
    /// Positions ≤ floor are not covered: everything may have changed there.
    floor: u64,
    by_key: HashMap<K, u64>,
    by_pos: BTreeMap<u64, Vec<K>>,
}

impl<K: Eq + Hash + Clone> ChangeLog<K> {
    /// A log that knows every change after `floor` (the stream's position at start-up).
    pub fn new(floor: u64, capacity: usize) -> Self {
        Self {
            inner: RwLock::new(ChangeLogInner {
                floor,
                by_key: HashMap::new(),
                by_pos: BTreeMap::new(),
            }),
            capacity: capacity.max(1),
        }
    }

    /// Records that `key` changed at `pos`. Concurrent writers may record out of order: a
    /// key keeps its highest position.
    pub fn record(&self, key: K, pos: u64) {
        let mut inner = self.inner.write();
        if inner.by_key.get(&key).is_some_and(|old| *old >= pos) {
            return;
        }
        if let Some(old) = inner.by_key.insert(key.clone(), pos)
            && old != pos
            && let Some(keys) = inner.by_pos.get_mut(&old)
        {
            keys.retain(|k| *k != key);
            if keys.is_empty() {
                inner.by_pos.remove(&old);
            }
        }
        let keys = inner.by_pos.entry(pos).or_default();
        if !keys.contains(&key) {
            keys.push(key);
        }
        while inner.by_key.len() > self.capacity {
            let Some((oldest, keys)) = inner.by_pos.pop_first() else { break };
            for k in keys {
                inner.by_key.remove(&k);
            }
            inner.floor = inner.floor.max(oldest);
        }
    }

    /// Whether `key` may have changed after `since`.
    pub fn changed(&self, key: &K, since: u64) -> bool {
        let inner = self.inner.read();
        since < inner.floor || inner.by_key.get(key).is_some_and(|pos| *pos > since)
    }

    /// The keys that changed in `(since, upto]`, or `None` when `since` is older than what
    /// the log covers (then anything may have changed).
    pub fn changed_between(&self, since: u64, upto: u64) -> Option<Vec<K>> {
        let inner = self.inner.read();
        if since < inner.floor {
            return None;
        }
        if since >= upto {
            return Some(Vec::new());
        }
        Some(
            inner
                .by_pos
                .range(since + 1..=upto)
                .flat_map(|(_, keys)| keys.iter().cloned())
                .collect(),
        )
    }
}

/// What a deadline-driven timer task needs of its service (typing expiry, presence timers).
pub trait Deadlines: Send + Sync + 'static {
    /// The earliest deadline, if any.
    fn next_deadline(&self) -> Option<tokio::time::Instant>;
    /// Notified when an earlier deadline is set.
    fn timer(&self) -> std::sync::Arc<tokio::sync::Notify>;
    /// Handles what is due at `now`.
    fn fire(&self, now: tokio::time::Instant);
}

/// The one timer task of a [`Deadlines`] service: sleeps until the earliest deadline (or
/// until an earlier one is set; at most a minute, to notice the service is gone), fires what
/// is due, and ends once the service is dropped (it holds it only weakly while it sleeps).
pub async fn run_deadlines<T: Deadlines>(service: std::sync::Weak<T>) {
    loop {
        let (next, timer) = {
            let Some(service) = service.upgrade() else { return };
            (service.next_deadline(), service.timer())
        };
        let until = next.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(60));
        let _ = tokio::time::timeout_at(until, timer.notified()).await;
        let Some(service) = service.upgrade() else { return };
        service.fire(tokio::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_publish_in_order_whatever_order_writers_finish_in() {
        let positions = Positions::new(10);
        let a = positions.reserve();
        let b = positions.reserve();
        let c = positions.reserve();
        assert_eq!((a.pos, b.pos, c.pos), (11, 12, 13));
        c.publish();
        assert_eq!(positions.current(), 10, "11 and 12 are still being written");
        drop(a); // a failed write gives its position up
        assert_eq!(positions.current(), 11);
        b.publish();
        assert_eq!(positions.current(), 13);
    }

    #[test]
    fn a_change_log_answers_by_key_and_by_range_and_forgets_the_oldest() {
        let log = ChangeLog::new(5, 2);
        assert!(log.changed(&"x", 4), "before the floor anything may have changed");
        assert!(!log.changed(&"x", 5));
        log.record("a", 6);
        log.record("b", 7);
        log.record("a", 8);
        assert!(log.changed(&"a", 7) && !log.changed(&"a", 8) && !log.changed(&"b", 7));
        assert_eq!(log.changed_between(5, 8), Some(vec!["b", "a"]));
        assert_eq!(log.changed_between(7, 7), Some(vec![]));
        log.record("c", 9); // three keys: the oldest ("b" at 7) is forgotten
        assert_eq!(log.changed_between(6, 9), None, "7 is below the floor now");
        assert_eq!(log.changed_between(7, 9), Some(vec!["a", "c"]));
        assert!(log.changed(&"b", 6));
        log.record("a", 7); // a concurrent writer's earlier position, recorded later
        assert!(log.changed(&"a", 7), "a keeps its latest position (8)");
        assert_eq!(log.changed_between(7, 9), Some(vec!["a", "c"]));
    }
}
