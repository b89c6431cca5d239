//! Unread notification and highlight counts per (user, room), as `/sync` reports them,
//! split by thread for clients that ask (`unread_thread_notifications`).
//!
//! What counts is what the user's push rules say ([`crate::services::push`]): an event
//! whose actions `notify` counts, `set_tweak: highlight` also as a highlight. The user's
//! own events never count, and one of their own events marks their earlier events of the
//! same thread read (sending is reading, as the spec says). An event is read when the user's
//! receipts cover it ([`ReadMarks::is_read`]: the unthreaded receipt for everything, the
//! `main` receipt for the main timeline, a thread's receipt for that thread).
//!
//! Each (user, room) caches the notifying events after the user's unthreaded receipt with
//! the stream position it has examined, so a sync evaluates only the events that arrived
//! since (O(new events)); a receipt moving forwards only drops entries, it never rescans.
//! The first count examines the newest [`MAX_UNREAD_SCAN`] events after the receipt at
//! most, and an entry keeps at most [`MAX_ITEMS`] notifying events (the count saturates
//! there). Evaluating here, at sync time, is what makes the counts exact at every sync
//! (the spec wants an event's count in the same response as the event); the background
//! evaluation ([`crate::services::notifications`]) stores `/notifications` and pushes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedUserId, UserId};

use crate::error::Result;
use crate::rooms::{Room, Rooms, SharedEvent};
use crate::services::push::{self, PushRules, UserRules};
use crate::services::receipts::ReadMarks;

/// Most recent events examined when counting from scratch.
pub const MAX_UNREAD_SCAN: usize = 200;
/// Notifying events an entry keeps (the counts saturate there).
pub const MAX_ITEMS: usize = 1_000;
/// Cached entries before the cache starts over (bounds memory; entries are cheap to redo).
const MAX_ENTRIES: usize = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub notifications: u64,
    pub highlights: u64,
}

impl Counts {
    fn add(&mut self, highlight: bool) {
        self.notifications += 1;
        self.highlights += u64::from(highlight);
    }
}

/// A room's counts: in all, in the main timeline, and per thread root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomCounts {
    pub total: Counts,
    pub main: Counts,
    pub threads: BTreeMap<String, Counts>,
}

#[derive(Clone)]
struct Item {
    pos: u64,
    highlight: bool,
    thread: Option<Arc<str>>,
}

#[derive(Clone)]
struct Entry {
    /// The unthreaded receipt the items are after.
    floor: Option<u64>,
    /// The last stream position examined.
    upto: u64,
    /// Oldest first.
    items: VecDeque<Item>,
    /// The items' counts (all of them: each is after `floor`), kept up to date with them, so
    /// that a user without threaded receipts (most) is answered without a pass over a
    /// thousand items per sync.
    all: Counts,
    /// How many items are in threads.
    in_threads: usize,
}

impl Entry {
    fn new(floor: Option<u64>, upto: u64) -> Self {
        Self { floor, upto, items: VecDeque::new(), all: Counts::default(), in_threads: 0 }
    }

    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::Own { pos, thread } => {
                self.retain(|i| i.pos > pos || i.thread.as_deref() != thread.as_deref());
            }
            Effect::Notify(item) => {
                if self.items.len() >= MAX_ITEMS
                    && let Some(oldest) = self.items.pop_front()
                {
                    self.uncount(&oldest);
                }
                self.all.add(item.highlight);
                self.in_threads += usize::from(item.thread.is_some());
                self.items.push_back(item);
            }
            Effect::Nothing => {}
        }
    }

    fn retain(&mut self, keep: impl Fn(&Item) -> bool) {
        self.items.retain(keep);
        self.all = Counts::default();
        self.in_threads = 0;
        for item in &self.items {
            self.all.add(item.highlight);
            self.in_threads += usize::from(item.thread.is_some());
        }
    }

    fn uncount(&mut self, item: &Item) {
        self.all.notifications -= 1;
        self.all.highlights -= u64::from(item.highlight);
        self.in_threads -= usize::from(item.thread.is_some());
    }
}

/// One (user, room)'s entry, counted under its own lock.
type Cell = Arc<tokio::sync::Mutex<Option<Entry>>>;

#[derive(Default)]
pub struct Unread {
    cache: Mutex<Cache>,
}

/// The entries by user and room (looked up without building a key: every sync of a joined
/// room that moved asks), hashed with foldhash.
#[derive(Default)]
struct Cache {
    by_user: FastMap<OwnedUserId, FastMap<OwnedRoomId, Cell>>,
    /// Entries in all.
    entries: usize,
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What one event does to a user's counts.
enum Effect {
    /// The user's own event: their earlier events of its thread are read.
    Own {
        pos: u64,
        thread: Option<Arc<str>>,
    },
    Notify(Item),
    Nothing,
}

/// Everything counting needs besides the events.
pub struct CountCtx<'a> {
    pub rooms: &'a Rooms,
    pub push: &'a PushRules,
    pub room: &'a Room,
    pub user: &'a UserId,
    pub rules: &'a UserRules,
    pub marks: &'a ReadMarks,
}

impl CountCtx<'_> {
    async fn effect(&self, pos: u64, event_id: &str) -> Result<Effect> {
        let Some(SharedEvent { record, pdu }) = self.rooms.shared_event(event_id).await? else {
            return Ok(Effect::Nothing);
        };
        if pdu.sender != self.user
            && (record.redacted_by.is_some()
                || (pdu.state_key.is_none() && self.rooms.ignores(self.user, &pdu.sender).await?))
        {
            return Ok(Effect::Nothing);
        }
        // Prepared once per event for every member (flattened, its thread, the shared
        // outcome of the rules that do not depend on the user).
        let prepared = self.push.prepared(self.rooms, self.room, pos, &pdu).await?;
        if pdu.sender == self.user {
            return Ok(Effect::Own { pos, thread: prepared.thread.clone() });
        }
        let actions = prepared.evaluate(self.rules, &pdu.sender, self.room, self.user).await;
        let (notify, highlight) = push::notify_highlight(&actions);
        if !notify {
            return Ok(Effect::Nothing);
        }
        Ok(Effect::Notify(Item { pos, highlight, thread: prepared.thread.clone() }))
    }
}

impl Unread {
    /// The counts of the user in the room as of stream position `current`.
    pub async fn counts(&self, c: &CountCtx<'_>, current: u64) -> Result<RoomCounts> {
        // Each entry is counted under its own lock, in place (an entry may list a thousand
        // events: no copy): a concurrent count of the same user and room (two devices woken
        // by the same event) waits for this one and then finds it up to date.
        let cell = {
            let mut cache = self.cache.lock();
            let known = cache.by_user.get(c.user).and_then(|rooms| rooms.get(&c.room.id));
            match known {
                Some(cell) => cell.clone(),
                None => {
                    if cache.entries >= MAX_ENTRIES {
                        *cache = Cache::default();
                    }
                    cache.entries += 1;
                    let rooms = cache.by_user.entry(c.user.to_owned()).or_default();
                    rooms.entry(c.room.id.clone()).or_default().clone()
                }
            }
        };
        let mut slot = cell.lock().await;
        let floor = c.marks.unthreaded;
        let reusable = slot.as_ref().is_some_and(|e| e.floor <= floor && e.upto <= current);
        if !reusable {
            *slot = Some(self.count_from_scratch(c, current).await?);
        } else if let Some(e) = slot.as_mut() {
            if e.floor < floor {
                e.retain(|i| floor.is_none_or(|f| i.pos > f));
                e.floor = floor;
            }
            if e.upto < current {
                // Only what arrived since the last count, oldest first.
                let ids = c
                    .rooms
                    .room_events(
                        c.room,
                        Some(e.upto.max(floor.unwrap_or(0))),
                        Some(current + 1),
                        false,
                        MAX_UNREAD_SCAN + 1,
                    )
                    .await?;
                if ids.len() > MAX_UNREAD_SCAN {
                    *e = self.count_from_scratch(c, current).await?;
                } else {
                    // Judged first, applied after: an error leaves the entry as it was.
                    let mut effects = Vec::with_capacity(ids.len());
                    for (pos, id) in ids {
                        effects.push(c.effect(pos, &id).await?);
                    }
                    for effect in effects {
                        e.apply(effect);
                    }
                    e.upto = current;
                }
            }
        }
        Ok(slot.as_ref().map(|e| tally(e, c.marks)).unwrap_or_default())
    }

    /// Examines the newest events after the unthreaded receipt, up to `current`.
    async fn count_from_scratch(&self, c: &CountCtx<'_>, current: u64) -> Result<Entry> {
        let floor = c.marks.unthreaded;
        let mut ids =
            c.rooms.room_events(c.room, floor, Some(current + 1), true, MAX_UNREAD_SCAN).await?;
        ids.reverse();
        let mut entry = Entry::new(floor, current);
        for (pos, id) in ids {
            entry.apply(c.effect(pos, &id).await?);
        }
        Ok(entry)
    }

    /// Forgets the cached counts of a user (their push rules changed).
    pub fn forget_user(&self, user: &UserId) {
        let mut cache = self.cache.lock();
        if let Some(rooms) = cache.by_user.remove(user) {
            cache.entries -= rooms.len();
        }
    }
}

/// The counts of the unread items.
fn tally(entry: &Entry, marks: &ReadMarks) -> RoomCounts {
    // Every item is after the unthreaded receipt: without `main` or thread receipts, and
    // with no item in a thread, all of them are unread, in the main timeline.
    if marks.main.is_none() && marks.threads.is_empty() && entry.in_threads == 0 {
        return RoomCounts { total: entry.all, main: entry.all, threads: BTreeMap::new() };
    }
    let mut counts = RoomCounts::default();
    for item in &entry.items {
        if marks.is_read(item.pos, item.thread.as_deref()) {
            continue;
        }
        counts.total.add(item.highlight);
        match &item.thread {
            None => counts.main.add(item.highlight),
            Some(root) => counts.threads.entry(root.to_string()).or_default().add(item.highlight),
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(pos: u64, highlight: bool, thread: Option<&str>) -> Item {
        Item { pos, highlight, thread: thread.map(Arc::from) }
    }

    fn entry_of(items: Vec<Item>) -> Entry {
        let mut entry = Entry::new(None, 10);
        for item in items {
            entry.apply(Effect::Notify(item));
        }
        entry
    }

    #[test]
    fn receipts_partition_counts_by_thread() {
        let entry = entry_of(vec![
            item(1, false, None),
            item(2, true, Some("$root")),
            item(3, false, None),
            item(4, false, Some("$root")),
            item(5, false, Some("$other")),
        ]);
        let none = ReadMarks::default();
        let all = tally(&entry, &none);
        assert_eq!(all.total, Counts { notifications: 5, highlights: 1 });
        assert_eq!(all.main, Counts { notifications: 2, highlights: 0 });
        assert_eq!(all.threads["$root"], Counts { notifications: 2, highlights: 1 });
        // `main` covers the main timeline only; a thread receipt its thread only.
        let mut marks = ReadMarks { main: Some(3), ..Default::default() };
        marks.threads.insert("$root".into(), Some(2));
        let some = tally(&entry, &marks);
        assert_eq!(some.main, Counts::default());
        assert_eq!(some.threads["$root"], Counts { notifications: 1, highlights: 0 });
        assert_eq!(some.total.notifications, 2);
        // The unthreaded receipt covers everything up to it.
        let marks = ReadMarks { unthreaded: Some(4), ..Default::default() };
        assert_eq!(tally(&entry, &marks).total, Counts { notifications: 1, highlights: 0 });
    }

    /// The counts kept with the items equal a pass over them, through evictions and reads.
    #[test]
    fn kept_counts_follow_the_items() {
        let brute = |e: &Entry| {
            let mut c = Counts::default();
            for i in &e.items {
                c.add(i.highlight);
            }
            c
        };
        let mut entry = Entry::new(None, 0);
        for pos in 1..=(MAX_ITEMS as u64 + 10) {
            entry.apply(Effect::Notify(item(pos, pos % 7 == 0, None)));
        }
        assert_eq!(entry.items.len(), MAX_ITEMS);
        assert_eq!(entry.all, brute(&entry));
        let none = ReadMarks::default();
        assert_eq!(tally(&entry, &none).total, brute(&entry));
        assert_eq!(tally(&entry, &none).main, brute(&entry));
        entry.apply(Effect::Own { pos: 500, thread: None });
        assert_eq!(entry.all, brute(&entry));
        assert_eq!(tally(&entry, &none).total.notifications, MAX_ITEMS as u64 + 10 - 500);
        // A `main` receipt takes the full pass.
        let marks = ReadMarks { main: Some(600), ..Default::default() };
        assert_eq!(tally(&entry, &marks).total.notifications, MAX_ITEMS as u64 + 10 - 600);
    }

    #[test]
    fn own_event_reads_its_thread_only() {
        let mut entry = entry_of(vec![item(1, false, None), item(2, false, Some("$t"))]);
        entry.apply(Effect::Own { pos: 3, thread: None });
        assert_eq!(entry.items.len(), 1);
        assert_eq!(entry.items[0].thread.as_deref(), Some("$t"));
        entry.apply(Effect::Own { pos: 4, thread: Some(Arc::from("$t")) });
        assert!(entry.items.is_empty());
    }
}
