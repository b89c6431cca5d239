//! Per-user wake-ups for pending `/sync` long-polls, carrying *what* changed.
//!
//! A sync subscribes to its user's changes *before* it looks for news, so a change
//! committed in between still wakes it. Every writer of a sync stream calls [`Notifier::wake`]
//! with the users concerned and the [`Change`]: a room (an event, a receipt, typing), or one
//! of the per-user streams (account data, to-device, device lists, presence). Each pending
//! subscription accumulates the changes it was woken for, so a woken sync rebuilds only the
//! rooms and streams that moved (`Subscription::take`), not everything the user has.
//!
//! Cost: O(1) per concerned user with a pending sync, nothing for users who are not
//! syncing. A subscription holds at most [`MAX_PENDING_ROOMS`] rooms, past which it just
//! says "everything" (the sync then looks at every room, as a first pass does).
//!
//! **Parked subscriptions.** A client syncs in a loop: each response's `next_batch` is the
//! next request's `since`. Between the two, a response's subscription is *parked*
//! ([`Notifier::park`]) under the device and that token, and keeps collecting changes; the
//! next request with exactly that token *resumes* it ([`Notifier::resume`]) and looks only
//! at what it collected (plus what the previous response left uncovered), instead of a first
//! pass over every room and stream. So a wake-up in a 1 000-member room costs each member
//! one pass over what changed, not that plus a full pass. A parked subscription not resumed
//! within [`PARK_TTL`] is dropped (the next request then takes the full first pass).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use tokio::sync::Notify;

/// Rooms a subscription lists before it gives up and says "everything changed".
pub const MAX_PENDING_ROOMS: usize = 1_024;

/// How long a parked subscription waits for its device's next sync.
pub const PARK_TTL: Duration = Duration::from_secs(60);

/// The sync streams, each with its own positions (the parts of a sync token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Events = 0,
    AccountData = 1,
    ToDevice = 2,
    DeviceLists = 3,
    Receipts = 4,
    Typing = 5,
    Presence = 6,
}

impl Stream {
    pub const COUNT: usize = 7;
}

/// What a writer changed: the stream, the position it published, and for the streams of
/// rooms (events, receipts, typing) the room.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub stream: Stream,
    pub pos: u64,
    pub room: Option<&'a RoomId>,
}

impl<'a> Change<'a> {
    /// Something in a room: an event, receipts, typing.
    pub fn room(stream: Stream, room: &'a RoomId, pos: u64) -> Self {
        Self { stream, pos, room: Some(room) }
    }

    /// A change of one of the user's own streams (account data, to-device, device lists,
    /// presence).
    pub fn user(stream: Stream, pos: u64) -> Self {
        Self { stream, pos, room: None }
    }
}

/// What changed for a user since a subscription last looked.
#[derive(Debug, Default, Clone)]
pub struct Changes {
    /// Rooms where something changed (events, receipts, typing).
    pub rooms: HashSet<OwnedRoomId>,
    /// Too many rooms to list: look at all of them.
    pub all_rooms: bool,
    /// Per stream, the highest position a change was announced at (0: none).
    pub upto: [u64; Stream::COUNT],
}

impl Changes {
    fn record(&mut self, change: Change<'_>) {
        let slot = &mut self.upto[change.stream as usize];
        *slot = (*slot).max(change.pos.max(1));
        let Some(room) = change.room else { return };
        if self.all_rooms {
            return;
        }
        if self.rooms.len() >= MAX_PENDING_ROOMS {
            self.all_rooms = true;
            self.rooms = HashSet::new();
        } else {
            self.rooms.insert(room.to_owned());
        }
    }

    /// Whether a change of `stream` was announced.
    pub fn has(&self, stream: Stream) -> bool {
        self.upto[stream as usize] > 0
    }

    /// Whether a change of any room was announced.
    pub fn any_room(&self) -> bool {
        self.all_rooms || !self.rooms.is_empty()
    }

    /// Adds what `other` announced.
    pub fn merge(&mut self, other: Changes) {
        for (mine, theirs) in self.upto.iter_mut().zip(other.upto) {
            *mine = (*mine).max(theirs);
        }
        self.all_rooms |= other.all_rooms;
        if self.all_rooms {
            self.rooms = HashSet::new();
        } else {
            self.rooms.extend(other.rooms);
            if self.rooms.len() > MAX_PENDING_ROOMS {
                self.all_rooms = true;
                self.rooms = HashSet::new();
            }
        }
    }

    /// Whether every announced change is at or below the given positions (one per stream):
    /// a sync that read those positions has seen them all.
    pub fn covered_by(&self, positions: &[u64; Stream::COUNT]) -> bool {
        self.upto.iter().zip(positions).all(|(announced, seen)| announced <= seen)
    }

    /// Whether nothing changed at all.
    pub fn is_empty(&self) -> bool {
        self.upto.iter().all(|p| *p == 0) && !self.any_room()
    }
}

struct Subscriber {
    changes: Mutex<Changes>,
    notify: Notify,
}

/// One pending sync's view of its user's changes; dropping it unsubscribes.
pub struct Subscription {
    subscriber: Arc<Subscriber>,
}

impl Subscription {
    /// Waits until something changed since the last [`Subscription::take`] (or since the
    /// subscription began). Returns at once when a change is already pending.
    pub async fn changed(&self) {
        loop {
            if !self.subscriber.changes.lock().is_empty() {
                return;
            }
            self.subscriber.notify.notified().await;
        }
    }

    /// The changes accumulated so far; the subscription starts afresh.
    pub fn take(&self) -> Changes {
        std::mem::take(&mut *self.subscriber.changes.lock())
    }

    /// Gives back changes a response did not cover: the next pass looks at them again.
    pub fn restore(&self, uncovered: Changes) {
        if !uncovered.is_empty() {
            self.subscriber.changes.lock().merge(uncovered);
        }
    }
}

/// A subscription between two syncs of one device.
struct Parked {
    /// The `next_batch` it was parked under, with the request's other parameters that
    /// shape a response (the filter): only a request with the same key resumes it.
    key: String,
    subscription: Subscription,
    at: Instant,
}

/// Parked subscriptions by user and device.
#[derive(Default)]
struct ParkingLot {
    by_device: HashMap<(OwnedUserId, String), Parked>,
    swept: Option<Instant>,
}

#[derive(Default)]
pub struct Notifier {
    users: Mutex<HashMap<OwnedUserId, Vec<Weak<Subscriber>>>>,
    /// Per stream, the highest position announced so far (updated under `users`' lock).
    announced: [AtomicU64; Stream::COUNT],
    parked: Mutex<ParkingLot>,
}

impl Notifier {
    /// A subscription that collects what is committed for `user` from now on.
    pub fn subscribe(&self, user: &UserId) -> Subscription {
        let subscriber =
            Arc::new(Subscriber { changes: Mutex::new(Changes::default()), notify: Notify::new() });
        let mut users = self.users.lock();
        let list = users.entry(user.to_owned()).or_default();
        list.retain(|s| s.strong_count() > 0);
        list.push(Arc::downgrade(&subscriber));
        Subscription { subscriber }
    }

    /// Keeps a sync's subscription for the device's next sync, which will present `key`
    /// (its `next_batch` and filter). `uncovered` is what the subscription was told that the
    /// response did not cover: the resumed sync looks at it again. Replaces what the device
    /// had parked.
    pub fn park(
        &self,
        user: &UserId,
        device: &str,
        key: String,
        subscription: Subscription,
        uncovered: Changes,
    ) {
        subscription.restore(uncovered);
        let now = Instant::now();
        let mut lot = self.parked.lock();
        if lot.swept.is_none_or(|at| now.duration_since(at) > PARK_TTL / 4) {
            lot.by_device.retain(|_, p| now.duration_since(p.at) < PARK_TTL);
            lot.swept = Some(now);
        }
        lot.by_device
            .insert((user.to_owned(), device.to_owned()), Parked { key, subscription, at: now });
    }

    /// The subscription the device parked under `key`, if any (and not expired): it holds
    /// every change announced for the user since the response that parked it, and what that
    /// response did not cover.
    pub fn resume(&self, user: &UserId, device: &str, key: &str) -> Option<Subscription> {
        let mut lot = self.parked.lock();
        let slot = (user.to_owned(), device.to_owned());
        let parked = lot.by_device.remove(&slot)?;
        if parked.key != key || parked.at.elapsed() >= PARK_TTL {
            return None;
        }
        Some(parked.subscription)
    }

    /// The highest position announced so far on each stream. A sync reads it right after
    /// subscribing and waits until the published positions reach it: a change announced
    /// before the subscription is then covered by the first pass, and every later one was
    /// announced to the subscription.
    pub fn announced(&self) -> [u64; Stream::COUNT] {
        std::array::from_fn(|i| self.announced[i].load(Ordering::Acquire))
    }

    /// Tells the given users' pending syncs what changed, and wakes them. Called before the
    /// change's position is published (see the module docs of `api::sync`).
    pub fn wake<'a>(&self, users: impl IntoIterator<Item = &'a UserId>, change: Change<'_>) {
        let mut map = self.users.lock();
        self.announced[change.stream as usize].fetch_max(change.pos, Ordering::AcqRel);
        for user in users {
            let Some(list) = map.get_mut(user) else { continue };
            list.retain(|weak| match weak.upgrade() {
                Some(subscriber) => {
                    subscriber.changes.lock().record(change);
                    subscriber.notify.notify_one();
                    true
                }
                None => false,
            });
            if list.is_empty() {
                map.remove(user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> OwnedUserId {
        UserId::parse(format!("@{name}:example.org")).unwrap()
    }

    fn room(n: usize) -> OwnedRoomId {
        RoomId::parse(format!("!r{n}:example.org")).unwrap()
    }

    #[tokio::test]
    async fn a_subscription_collects_what_changed_for_its_user_only() {
        let notifier = Notifier::default();
        let (alice, bob) = (user("alice"), user("bob"));
        let sub = notifier.subscribe(&alice);
        let other = notifier.subscribe(&bob);
        notifier.wake([&*alice], Change::room(Stream::Events, &room(1), 7));
        notifier.wake([&*alice, &*bob], Change::user(Stream::AccountData, 3));
        notifier.wake([&*bob], Change::user(Stream::ToDevice, 2));
        sub.changed().await; // already pending: returns at once
        let changes = sub.take();
        assert_eq!(changes.rooms, HashSet::from([room(1)]));
        assert!(changes.has(Stream::AccountData) && !changes.has(Stream::ToDevice));
        assert!(changes.has(Stream::Events) && !changes.all_rooms);
        let mut seen = [0; Stream::COUNT];
        seen[Stream::Events as usize] = 7;
        assert!(!changes.covered_by(&seen), "account data at 3 not seen yet");
        seen[Stream::AccountData as usize] = 3;
        assert!(changes.covered_by(&seen));
        assert!(sub.take().is_empty(), "take starts afresh");
        let theirs = other.take();
        assert!(theirs.rooms.is_empty() && theirs.has(Stream::AccountData));
        assert!(theirs.has(Stream::ToDevice));
    }

    #[tokio::test]
    async fn a_wake_after_subscribing_is_never_lost() {
        let notifier = Arc::new(Notifier::default());
        let alice = user("alice");
        let sub = notifier.subscribe(&alice);
        let writer = {
            let (notifier, alice) = (notifier.clone(), alice.clone());
            tokio::spawn(async move { notifier.wake([&*alice], Change::user(Stream::Presence, 1)) })
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), sub.changed())
            .await
            .expect("woken");
        writer.await.unwrap();
        assert!(sub.take().has(Stream::Presence));
    }

    #[test]
    fn a_parked_subscription_keeps_collecting_and_resumes_only_with_its_key() {
        let notifier = Notifier::default();
        let alice = user("alice");
        let sub = notifier.subscribe(&alice);
        let mut uncovered = Changes::default();
        uncovered.record(Change::user(Stream::ToDevice, 4));
        notifier.park(&alice, "DEV", "s1|f".into(), sub, uncovered);
        notifier.wake([&*alice], Change::room(Stream::Events, &room(1), 2));
        assert!(notifier.resume(&alice, "OTHER", "s1|f").is_none(), "another device");
        let resumed = notifier.resume(&alice, "DEV", "s1|f").expect("parked");
        let changes = resumed.take();
        assert!(changes.has(Stream::ToDevice), "what the response left uncovered");
        assert_eq!(changes.rooms, HashSet::from([room(1)]), "what happened while parked");
        assert!(notifier.resume(&alice, "DEV", "s1|f").is_none(), "resumed once only");
        notifier.park(&alice, "DEV", "s2|f".into(), resumed, Changes::default());
        assert!(notifier.resume(&alice, "DEV", "s1|f").is_none(), "an older token");
        assert!(notifier.resume(&alice, "DEV", "s2|f").is_none(), "the wrong key drops it");
    }

    #[test]
    fn too_many_rooms_become_all_rooms_and_dropped_subscriptions_are_forgotten() {
        let notifier = Notifier::default();
        let alice = user("alice");
        let sub = notifier.subscribe(&alice);
        for n in 0..=MAX_PENDING_ROOMS {
            notifier.wake([&*alice], Change::room(Stream::Typing, &room(n), n as u64));
        }
        let changes = sub.take();
        assert!(changes.all_rooms && changes.rooms.is_empty());
        let mut merged = Changes::default();
        merged.merge(changes);
        assert!(
            merged.all_rooms && merged.upto[Stream::Typing as usize] == MAX_PENDING_ROOMS as u64
        );
        drop(sub);
        notifier.wake([&*alice], Change::user(Stream::AccountData, 1));
        assert!(notifier.users.lock().is_empty());
    }
}
