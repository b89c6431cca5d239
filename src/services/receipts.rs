//! Read receipts (`m.read`, `m.read.private`, threaded), delivered as `m.receipt` in the
//! ephemeral section of `/sync`, and the read position that drives unread counts.
//!
//! Each (room, user, type, thread) keeps its latest receipt: stored (CF `receipts`, one row
//! each) and held in memory per room, loaded from storage the first time the room is asked
//! about (one prefix scan). In memory each room has its receipts by user and by stream
//! position, so "the receipts that changed in (since, upto]" is a range of the latter
//! (O(changed)), and an initial sync of a 1 000-member room walks its ~2 000 receipts once.
//! Memory follows the rooms' memberships (two receipts per member plus threads, at most
//! [`MAX_THREADS`] threaded receipts per user, type and room: past it the oldest goes).
//!
//! Writes: each user's receipts are serialised by a striped lock (the "only forwards"
//! check and the write are one step); different users write concurrently, without a lock
//! held across the fsync, and RocksDB group-commits their batches. Positions come from a
//! [`Positions`]: a write is announced to the members' syncs (a private receipt: to its
//! owner only), then published, in that order.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{Map, Value, json};
use tokio::sync::OnceCell;

use crate::error::Result;
use crate::rooms::notify::{Change, Notifier, Stream};
use crate::services::streams::{ChangeLog, Positions};
use crate::storage::Store;
use crate::storage::receipts::ReceiptRecord;

/// The public read receipt, shared with the room.
pub const READ: &str = "m.read";
/// The private read receipt, seen by its owner only.
pub const READ_PRIVATE: &str = "m.read.private";
/// Threaded receipts (of a thread root, not `main`) a user keeps per type and room; a
/// receipt in one more thread replaces the oldest.
pub const MAX_THREADS: usize = 64;
/// Stripes of the per-user write lock.
const WRITE_STRIPES: usize = 256;
/// Rooms whose latest change the change log remembers.
const CHANGE_LOG_ROOMS: usize = 100_000;

/// A receipt to record: the event read (with its stream position) and the thread.
#[derive(Debug, Clone)]
pub struct NewReceipt {
    /// [`READ`] or [`READ_PRIVATE`].
    pub receipt_type: &'static str,
    /// `None`: unthreaded; `main` or a thread root's event ID.
    pub thread_id: Option<String>,
    pub event_id: String,
    pub event_pos: u64,
}

/// How far a user has read in a room, by thread (event stream positions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadMarks {
    /// The unthreaded receipt: everything up to it is read, in every thread.
    pub unthreaded: Option<u64>,
    /// The `main` receipt: the main timeline up to it is read.
    pub main: Option<u64>,
    /// Receipts in threads, by thread root.
    pub threads: HashMap<String, Option<u64>>,
    /// The receipt-stream position of the user's latest receipt in the room.
    pub latest_receipt: Option<u64>,
}

impl ReadMarks {
    /// Whether the event at `pos` in `thread` (`None`: the main timeline) is read.
    pub fn is_read(&self, pos: u64, thread: Option<&str>) -> bool {
        let threaded = match thread {
            None => self.main,
            Some(root) => self.threads.get(root).copied().flatten(),
        };
        self.unthreaded.max(threaded).is_some_and(|read| pos <= read)
    }
}

/// One room's receipts, by user and by receipt position.
#[derive(Default)]
struct RoomReceipts {
    by_user: HashMap<OwnedUserId, Vec<ReceiptRecord>>,
    /// Receipt position → its user (each current receipt has a position of its own).
    by_pos: BTreeMap<u64, OwnedUserId>,
}

impl RoomReceipts {
    fn insert(&mut self, user: &UserId, record: ReceiptRecord) {
        let list = self.by_user.entry(user.to_owned()).or_default();
        if let Some(i) = list.iter().position(|r| r.same_slot(&record)) {
            let old = list.swap_remove(i);
            self.by_pos.remove(&old.pos);
        }
        self.by_pos.insert(record.pos, user.to_owned());
        list.push(record);
    }

    fn remove(&mut self, user: &UserId, record: &ReceiptRecord) {
        if let Some(list) = self.by_user.get_mut(user)
            && let Some(i) = list.iter().position(|r| r.same_slot(record))
        {
            let old = list.swap_remove(i);
            self.by_pos.remove(&old.pos);
        }
    }

    fn of(&self, user: &UserId) -> &[ReceiptRecord] {
        self.by_user.get(user).map_or(&[], Vec::as_slice)
    }
}

pub struct Receipts {
    store: Arc<dyn Store>,
    notifier: Arc<Notifier>,
    positions: Positions,
    /// Which room's receipts changed when.
    changes: ChangeLog<OwnedRoomId>,
    /// Rooms' receipts, each loaded from storage on first use.
    rooms: Mutex<HashMap<OwnedRoomId, Arc<OnceCell<RwLock<RoomReceipts>>>>>,
    /// One writer per user at a time (by stripe).
    stripes: Vec<tokio::sync::Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Receipts {
    /// The receipt service, its stream at the highest position stored. Read positions of
    /// older databases become `m.read.private` receipts first (once).
    pub async fn load(store: Arc<dyn Store>, notifier: Arc<Notifier>) -> Result<Self> {
        let before = store.max_receipt_pos().await?;
        let moved = store.migrate_read_positions(before).await?;
        if moved > 0 {
            tracing::info!(moved, "read positions moved into private read receipts");
        }
        let pos = store.max_receipt_pos().await?;
        Ok(Self {
            store,
            notifier,
            positions: Positions::new(pos),
            changes: ChangeLog::new(pos, CHANGE_LOG_ROOMS),
            rooms: Mutex::new(HashMap::new()),
            stripes: (0..WRITE_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: Default::default(),
        })
    }

    /// The receipt stream's published position (the sync token's fifth part).
    pub fn current(&self) -> u64 {
        self.positions.current()
    }

    /// Whether receipts of the room changed after `since` (a position from the future,
    /// e.g. of another database, counts as changed).
    pub fn changed(&self, room: &RoomId, since: u64) -> bool {
        since > self.current() || self.changes.changed(&room.to_owned(), since)
    }

    /// The room's receipts, loaded on first use. Writers load before they write, so a load
    /// never misses a write that it races with.
    async fn room(&self, room: &RoomId) -> Result<Arc<OnceCell<RwLock<RoomReceipts>>>> {
        let cell = self.rooms.lock().entry(room.to_owned()).or_default().clone();
        cell.get_or_try_init(|| async {
            let mut receipts = RoomReceipts::default();
            for record in self.store.room_receipts(room.as_str()).await? {
                let Ok(user) = UserId::parse(&record.user_id) else { continue };
                receipts.insert(&user, record);
            }
            Ok::<_, crate::error::Error>(RwLock::new(receipts))
        })
        .await?;
        Ok(cell)
    }

    async fn lock_user(&self, user: &UserId) -> tokio::sync::MutexGuard<'_, ()> {
        let stripe = (self.hasher.hash_one(user) % WRITE_STRIPES as u64) as usize;
        self.stripes[stripe].lock().await
    }

    /// Records the user's receipts in a room (the caller checked membership and the
    /// events). A receipt for an event not after the current one of its type and thread
    /// changes nothing. Public receipts wake every joined member's sync, private ones the
    /// owner's.
    pub async fn set(
        &self,
        room: &RoomId,
        members: &(dyn Fn() -> Arc<HashMap<OwnedUserId, String>> + Send + Sync),
        user: &UserId,
        new: Vec<NewReceipt>,
    ) -> Result<()> {
        let _guard = self.lock_user(user).await;
        let cell = self.room(room).await?;
        let Some(receipts) = cell.get() else { return Ok(()) };
        let ts = crate::storage::now_ms();
        let mut records: Vec<ReceiptRecord> = Vec::new();
        let mut removed: Vec<ReceiptRecord> = Vec::new();
        let mut reservations = Vec::new();
        {
            let current = receipts.read();
            let mine = current.of(user);
            for n in new {
                let mut record = ReceiptRecord {
                    room_id: room.to_string(),
                    user_id: user.to_string(),
                    receipt_type: n.receipt_type.to_owned(),
                    thread_id: n.thread_id,
                    event_id: n.event_id,
                    event_pos: n.event_pos,
                    ts,
                    pos: 0,
                };
                let same = |r: &&ReceiptRecord| r.same_slot(&record);
                let existing = mine.iter().find(same).or_else(|| records.iter().find(same));
                if existing.is_some_and(|r| r.event_pos >= record.event_pos) {
                    continue; // receipts only move forwards
                }
                if existing.is_none() && record.thread_id.as_deref().is_some_and(|t| t != "main") {
                    let threaded = |r: &&ReceiptRecord| {
                        r.receipt_type == record.receipt_type
                            && r.thread_id.as_deref().is_some_and(|t| t != "main")
                            && !removed.iter().any(|x| x.same_slot(r))
                    };
                    if mine.iter().filter(threaded).count() >= MAX_THREADS
                        && let Some(oldest) = mine.iter().filter(threaded).min_by_key(|r| r.pos)
                    {
                        removed.push(oldest.clone());
                    }
                }
                let reserved = self.positions.reserve();
                record.pos = reserved.pos;
                reservations.push(reserved);
                records.retain(|r| !r.same_slot(&record));
                records.push(record);
            }
        }
        let Some(last) = records.iter().map(|r| r.pos).max() else { return Ok(()) };
        let public = records.iter().any(|r| r.receipt_type == READ);
        // A failed write drops the reservations: their positions are skipped.
        self.store.put_receipts(records.clone(), removed.clone()).await?;
        {
            let mut current = receipts.write();
            for r in &removed {
                current.remove(user, r);
            }
            for r in records {
                current.insert(user, r);
            }
        }
        // Announced before published: a sync that sees the position has been told.
        self.changes.record(room.to_owned(), last);
        let change = Change::room(Stream::Receipts, room, last);
        if public {
            // The members as of now, not of the request's start: a member who joined while
            // the receipt was written must be told too.
            let members = members();
            let joined = members.iter().filter(|(_, m)| m.as_str() == "join").map(|(u, _)| &**u);
            self.notifier.wake(joined, change);
        } else {
            self.notifier.wake([user], change);
        }
        for reserved in reservations {
            reserved.publish();
        }
        Ok(())
    }

    /// How far the user has read in the room, for unread counts: the latest of their own
    /// `m.read` and `m.read.private` receipts (unthreaded or `main`), as (event position,
    /// receipt position).
    pub async fn read_position(&self, room: &RoomId, user: &UserId) -> Result<Option<(u64, u64)>> {
        let cell = self.room(room).await?;
        let Some(receipts) = cell.get() else { return Ok(None) };
        let receipts = receipts.read();
        Ok(receipts
            .of(user)
            .iter()
            .filter(|r| r.thread_id.as_deref().is_none_or(|t| t == "main"))
            .map(|r| (r.event_pos, r.pos))
            .max())
    }

    /// Everything the user's own receipts say about what they read in the room (event
    /// positions; `m.read` and `m.read.private` alike, the later one counting), for unread
    /// counts per thread.
    pub async fn read_marks(&self, room: &RoomId, user: &UserId) -> Result<ReadMarks> {
        let cell = self.room(room).await?;
        let mut marks = ReadMarks::default();
        let Some(receipts) = cell.get() else { return Ok(marks) };
        let receipts = receipts.read();
        for r in receipts.of(user) {
            if r.receipt_type != READ && r.receipt_type != READ_PRIVATE {
                continue;
            }
            marks.latest_receipt = marks.latest_receipt.max(Some(r.pos));
            let slot = match r.thread_id.as_deref() {
                None => &mut marks.unthreaded,
                Some("main") => &mut marks.main,
                Some(root) => marks.threads.entry(root.to_owned()).or_default(),
            };
            *slot = (*slot).max(Some(r.event_pos));
        }
        Ok(marks)
    }

    /// The room's `m.receipt` event for `viewer`: the receipts that changed in
    /// `(since, upto]` (all current ones for `None`); private receipts only the viewer's own.
    pub async fn event(
        &self,
        room: &RoomId,
        viewer: &UserId,
        since: Option<u64>,
        upto: u64,
    ) -> Result<Option<Value>> {
        // A position from the future (another database's token): send the current ones.
        let since = since.filter(|s| *s <= upto);
        if let Some(since) = since
            && (since == upto || !self.changes.changed(&room.to_owned(), since))
        {
            return Ok(None);
        }
        let cell = self.room(room).await?;
        let Some(receipts) = cell.get() else { return Ok(None) };
        let receipts = receipts.read();
        let visible = |r: &ReceiptRecord| {
            r.pos <= upto && (r.receipt_type != READ_PRIVATE || r.user_id == viewer.as_str())
        };
        let mut chosen: Vec<&ReceiptRecord> = match since {
            Some(since) => receipts
                .by_pos
                .range(since + 1..=upto)
                .filter_map(|(pos, user)| receipts.of(user).iter().find(|r| r.pos == *pos))
                .filter(|r| visible(r))
                .collect(),
            None => receipts.by_user.values().flatten().filter(|r| visible(r)).collect(),
        };
        if chosen.is_empty() {
            return Ok(None);
        }
        // One user's receipts of one type on one event share a slot in the content: the
        // newest wins.
        chosen.sort_by_key(|r| r.pos);
        let mut content = Map::new();
        for r in chosen {
            let mut receipt = json!({"ts": r.ts});
            if let Some(thread) = &r.thread_id {
                receipt["thread_id"] = json!(thread);
            }
            let by_type = content.entry(r.event_id.clone()).or_insert_with(|| json!({}));
            let by_user = by_type
                .as_object_mut()
                .map(|m| m.entry(r.receipt_type.clone()).or_insert_with(|| json!({})));
            if let Some(Value::Object(users)) = by_user {
                users.insert(r.user_id.clone(), receipt);
            }
        }
        Ok(Some(json!({"type": "m.receipt", "content": content})))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::rocks::RocksStore;

    fn user(name: &str) -> OwnedUserId {
        UserId::parse(format!("@{name}:x")).unwrap()
    }

    fn read(kind: &'static str, thread: Option<&str>, event_pos: u64) -> NewReceipt {
        NewReceipt {
            receipt_type: kind,
            thread_id: thread.map(str::to_owned),
            event_id: format!("$e{event_pos}"),
            event_pos,
        }
    }

    async fn service(dir: &std::path::Path) -> (Receipts, Arc<Notifier>) {
        let store: Arc<dyn Store> = Arc::new(RocksStore::open(dir, 1).unwrap());
        let notifier = Arc::new(Notifier::default());
        (Receipts::load(store, notifier.clone()).await.unwrap(), notifier)
    }

    #[tokio::test]
    async fn receipts_move_forward_private_ones_stay_with_their_owner_and_only_they_wake() {
        let dir = tempfile::tempdir().unwrap();
        let (receipts, notifier) = service(dir.path()).await;
        let room = RoomId::parse("!r:x").unwrap();
        let (alice, bob) = (user("alice"), user("bob"));
        let members: HashMap<_, _> =
            [(alice.clone(), "join".to_owned()), (bob.clone(), "join".to_owned())].into();
        let bob_sync = notifier.subscribe(&bob);

        receipts
            .set(&room, &|| Arc::new(members.clone()), &alice, vec![read(READ_PRIVATE, None, 3)])
            .await
            .unwrap();
        assert!(bob_sync.take().is_empty(), "a private receipt wakes its owner only");
        let after_private = receipts.current();
        receipts
            .set(&room, &|| Arc::new(members.clone()), &alice, vec![read(READ, None, 2)])
            .await
            .unwrap();
        assert!(bob_sync.take().has(Stream::Receipts));
        let upto = receipts.current();
        // Backwards: nothing changes.
        receipts
            .set(&room, &|| Arc::new(members.clone()), &alice, vec![read(READ, None, 1)])
            .await
            .unwrap();
        assert_eq!(receipts.current(), upto);

        let all_bob = receipts.event(&room, &bob, None, upto).await.unwrap().unwrap();
        assert_eq!(all_bob["content"].as_object().unwrap().len(), 1, "{all_bob}");
        assert!(all_bob["content"]["$e2"]["m.read"]["@alice:x"]["ts"].is_u64());
        let all_alice = receipts.event(&room, &alice, None, upto).await.unwrap().unwrap();
        assert!(all_alice["content"]["$e3"]["m.read.private"]["@alice:x"].is_object());
        // Incremental: only what changed in (since, upto].
        let since_private = receipts.event(&room, &alice, Some(after_private), upto).await;
        let content = since_private.unwrap().unwrap()["content"].clone();
        assert!(content.get("$e3").is_none() && content.get("$e2").is_some(), "{content}");
        assert!(receipts.event(&room, &bob, Some(upto), upto).await.unwrap().is_none());
        assert!(!receipts.changed(&room, upto) && receipts.changed(&room, after_private));
        assert!(receipts.changed(&room, upto + 10), "a token from the future");
        // Unread counts follow the latest of the two.
        assert_eq!(receipts.read_position(&room, &alice).await.unwrap().map(|r| r.0), Some(3));
        assert_eq!(receipts.read_position(&room, &bob).await.unwrap(), None);

        // All of it comes back from storage.
        drop(receipts);
        let (again, _) = service(dir.path()).await;
        assert_eq!(again.current(), upto);
        assert_eq!(again.event(&room, &bob, None, upto).await.unwrap().unwrap(), all_bob);
    }

    #[tokio::test]
    async fn threads_are_kept_apart_and_bounded_per_user() {
        let dir = tempfile::tempdir().unwrap();
        let (receipts, _) = service(dir.path()).await;
        let room = RoomId::parse("!r:x").unwrap();
        let alice = user("alice");
        let members: HashMap<_, _> = [(alice.clone(), "join".to_owned())].into();
        receipts
            .set(&room, &|| Arc::new(members.clone()), &alice, vec![read(READ, Some("main"), 5)])
            .await
            .unwrap();
        for t in 0..=MAX_THREADS as u64 {
            let root = format!("$root{t}");
            receipts
                .set(
                    &room,
                    &|| Arc::new(members.clone()),
                    &alice,
                    vec![read(READ, Some(&root), 10 + t)],
                )
                .await
                .unwrap();
        }
        let upto = receipts.current();
        let event = receipts.event(&room, &alice, None, upto).await.unwrap().unwrap();
        let content = event["content"].as_object().unwrap();
        assert_eq!(content.len(), MAX_THREADS + 1, "main + the newest threads");
        assert!(content.get("$e10").is_none(), "the oldest thread went");
        assert_eq!(content["$e5"]["m.read"]["@alice:x"]["thread_id"], "main");
        // Threaded receipts (other than main) do not move the read position.
        assert_eq!(receipts.read_position(&room, &alice).await.unwrap().map(|r| r.0), Some(5));
        drop(receipts);
        let (again, _) = service(dir.path()).await;
        let reloaded = again.event(&room, &alice, None, upto).await.unwrap().unwrap();
        assert_eq!(reloaded, event, "the eviction was stored too");
    }

    /// Writers of different users race; a reader that follows the stream with incremental
    /// reads (since = the position it last read) ends with every user's latest receipt.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_incremental_reader_misses_nothing_while_writers_race() {
        let dir = tempfile::tempdir().unwrap();
        let (receipts, _) = service(dir.path()).await;
        let receipts = Arc::new(receipts);
        let room = RoomId::parse("!r:x").unwrap();
        let users: Vec<OwnedUserId> = (0..16).map(|i| user(&format!("u{i}"))).collect();
        let members: Arc<HashMap<_, _>> =
            Arc::new(users.iter().map(|u| (u.clone(), "join".to_owned())).collect());
        let viewer = user("viewer");
        let mut writers = Vec::new();
        for u in users.clone() {
            let (receipts, room, members) = (receipts.clone(), room.clone(), members.clone());
            writers.push(tokio::spawn(async move {
                for pos in 1..=20 {
                    receipts
                        .set(&room, &|| members.clone(), &u, vec![read(READ, None, pos)])
                        .await
                        .unwrap();
                }
            }));
        }
        let mut seen: HashMap<String, String> = HashMap::new();
        let mut since = 0;
        loop {
            let done = writers.iter().all(|w| w.is_finished());
            let upto = receipts.current();
            if let Some(event) = receipts.event(&room, &viewer, Some(since), upto).await.unwrap() {
                for (event_id, by_type) in event["content"].as_object().unwrap() {
                    for user in by_type["m.read"].as_object().unwrap().keys() {
                        seen.insert(user.clone(), event_id.clone());
                    }
                }
            }
            since = upto;
            if done && since == receipts.current() {
                break;
            }
            tokio::task::yield_now().await;
        }
        for u in &users {
            assert_eq!(seen.get(u.as_str()).map(String::as_str), Some("$e20"), "{u}");
        }
    }
}
