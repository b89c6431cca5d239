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

use std::collections::{BTreeMap, HashMap};
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
    items: Vec<Item>,
}

impl Entry {
    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::Own { pos, thread } => {
                self.items.retain(|i| i.pos > pos || i.thread.as_deref() != thread.as_deref());
            }
            Effect::Notify(item) => {
                if self.items.len() >= MAX_ITEMS {
                    self.items.remove(0);
                }
                self.items.push(item);
            }
            Effect::Nothing => {}
        }
    }
}

/// One (user, room)'s entry, counted under its own lock.
type Cell = Arc<tokio::sync::Mutex<Option<Entry>>>;

#[derive(Default)]
pub struct Unread {
    cache: Mutex<HashMap<(OwnedUserId, OwnedRoomId), Cell>>,
}

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
        let key = (c.user.to_owned(), c.room.id.clone());
        // Each entry is counted under its own lock, in place (an entry may list a thousand
        // events: no copy): a concurrent count of the same user and room (two devices woken
        // by the same event) waits for this one and then finds it up to date.
        let cell = {
            let mut cache = self.cache.lock();
            if cache.len() >= MAX_ENTRIES && !cache.contains_key(&key) {
                cache.clear();
            }
            cache.entry(key).or_default().clone()
        };
        let mut slot = cell.lock().await;
        let floor = c.marks.unthreaded;
        let reusable = slot.as_ref().is_some_and(|e| e.floor <= floor && e.upto <= current);
        if !reusable {
            *slot = Some(self.count_from_scratch(c, current).await?);
        } else if let Some(e) = slot.as_mut() {
            if e.floor < floor {
                e.items.retain(|i| floor.is_none_or(|f| i.pos > f));
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
        let mut entry = Entry { floor, upto: current, items: Vec::new() };
        for (pos, id) in ids {
            entry.apply(c.effect(pos, &id).await?);
        }
        Ok(entry)
    }

    /// Forgets the cached counts of a user (their push rules changed).
    pub fn forget_user(&self, user: &UserId) {
        self.cache.lock().retain(|(u, _), _| u != user);
    }
}

/// The counts of the unread items.
fn tally(entry: &Entry, marks: &ReadMarks) -> RoomCounts {
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

    #[test]
    fn receipts_partition_counts_by_thread() {
        let entry = Entry {
            floor: None,
            upto: 10,
            items: vec![
                item(1, false, None),
                item(2, true, Some("$root")),
                item(3, false, None),
                item(4, false, Some("$root")),
                item(5, false, Some("$other")),
            ],
        };
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

    #[test]
    fn own_event_reads_its_thread_only() {
        let mut entry = Entry {
            floor: None,
            upto: 10,
            items: vec![item(1, false, None), item(2, false, Some("$t"))],
        };
        entry.apply(Effect::Own { pos: 3, thread: None });
        assert_eq!(entry.items.len(), 1);
        assert_eq!(entry.items[0].thread.as_deref(), Some("$t"));
        entry.apply(Effect::Own { pos: 4, thread: Some(Arc::from("$t")) });
        assert!(entry.items.is_empty());
    }
}
