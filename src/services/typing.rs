//! Typing notifications (`PUT /rooms/{id}/typing/{userId}`), delivered as `m.typing` in the
//! ephemeral section of `/sync`.
//!
//! In memory only, never written to disk: per room the users typing and when their typing
//! expires. The stream's positions start at the boot time in microseconds since the UNIX
//! epoch, so they stay monotonic across restarts (a client's token from an earlier run is
//! below this run's first position; see [`Typing::changed`]).
//!
//! Every change (someone starts or stops, leaves the room, or their timeout expires) takes a
//! position, is recorded in the change log by room, announced to the room's joined members
//! (`Change::room(Stream::Typing, …)`) and then published. A repeated "typing" from someone
//! already typing only extends the expiry: nothing changes for the others, so nobody is woken
//! and no position is taken (a keystroke-driven client sends one every few seconds).
//!
//! Expiry is driven by one timer task that sleeps until the earliest deadline (or until an
//! earlier one is set), not by a poll per user.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::services::streams::{Deadlines, run_deadlines};
use tokio::time::Instant;

use crate::rooms::notify::{Change, Notifier, Stream};
use crate::services::streams::{ChangeLog, Positions};

/// The timeout when a client gives none (Synapse's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest timeout honoured; longer ones are cut to it (Synapse caps at the same).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// Rooms the change log remembers; past that, tokens older than the forgotten changes see
/// "maybe changed" and get the room's current typing set again.
const CHANGE_LOG_ROOMS: usize = 100_000;

/// The joined members of a room (who is told about its typing).
pub type Audience = Box<dyn Fn(&RoomId) -> Vec<OwnedUserId> + Send + Sync>;

pub struct Typing {
    notifier: Arc<Notifier>,
    audience: OnceLock<Audience>,
    positions: Positions,
    log: ChangeLog<OwnedRoomId>,
    state: Mutex<State>,
    /// Wakes the timer task when an earlier deadline is set.
    timer: Arc<Notify>,
}

#[derive(Default)]
struct State {
    /// `room → user → expiry`.
    rooms: HashMap<OwnedRoomId, HashMap<OwnedUserId, Instant>>,
    /// Every expiry, earliest first.
    deadlines: BTreeSet<(Instant, OwnedRoomId, OwnedUserId)>,
}

/// The boot time in microseconds since the UNIX epoch: the first position of the in-memory
/// streams, so that positions stay monotonic across restarts.
pub fn boot_position() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl Typing {
    /// The service, with its timer task started (it ends when the service is dropped).
    pub fn start(notifier: Arc<Notifier>) -> Arc<Self> {
        let boot = boot_position();
        let typing = Arc::new(Self {
            notifier,
            audience: OnceLock::new(),
            positions: Positions::new(boot),
            log: ChangeLog::new(boot, CHANGE_LOG_ROOMS),
            state: Mutex::new(State::default()),
            timer: Arc::new(Notify::new()),
        });
        tokio::spawn(run_deadlines(Arc::downgrade(&typing)));
        typing
    }

    /// Says who is told about a room's typing (its joined members). Set once at start-up.
    pub fn set_audience(&self, audience: Audience) {
        let _ = self.audience.set(audience);
    }

    /// The typing stream's published position (the sync token's sixth part).
    pub fn current(&self) -> u64 {
        self.positions.current()
    }

    /// Whether the room's typing set changed after `since`. A token from an earlier run
    /// (below the change log's floor) or from the future answers "changed": the client then
    /// gets the current set, which may tell it that typing it saw before has stopped.
    pub fn changed(&self, room: &RoomId, since: u64) -> bool {
        since > self.current() || self.log.changed(&room.to_owned(), since)
    }

    /// The room's `m.typing` event for a sync from `since` (`None`: an initial sync, or the
    /// room is new to the client, which gets it when anyone types), if there is one to send.
    /// An incremental sync gets it whenever the set changed, even to empty: that is how the
    /// client learns that typing stopped. Only the room's joined members ask (the sync
    /// builds ephemeral events for joined rooms only).
    pub fn event(&self, room: &RoomId, _viewer: &UserId, since: Option<u64>) -> Option<Value> {
        if since.is_some_and(|since| !self.changed(room, since)) {
            return None;
        }
        let now = Instant::now();
        let mut users: Vec<String> = self
            .state
            .lock()
            .rooms
            .get(room)
            .map(|users| {
                users
                    .iter()
                    .filter(|(_, until)| **until > now)
                    .map(|(u, _)| u.to_string())
                    .collect()
            })
            .unwrap_or_default();
        if since.is_none() && users.is_empty() {
            return None;
        }
        users.sort_unstable();
        Some(json!({"type": "m.typing", "content": {"user_ids": users}}))
    }

    /// Who is typing in the room now (sorted).
    pub fn typing_in(&self, room: &RoomId) -> Vec<OwnedUserId> {
        let mut users: Vec<OwnedUserId> = self
            .state
            .lock()
            .rooms
            .get(room)
            .map(|users| users.keys().cloned().collect())
            .unwrap_or_default();
        users.sort_unstable();
        users
    }

    /// `user` types in `room` for `timeout` (capped at [`MAX_TIMEOUT`]), or stops (`None`).
    /// The caller has checked that the user is joined. Someone already typing who types
    /// again only has their expiry extended: nobody is woken.
    pub fn set(&self, room: &RoomId, user: &UserId, timeout: Option<Duration>) {
        let mut state = self.state.lock();
        let changed = match timeout {
            Some(timeout) => {
                let until = Instant::now() + timeout.min(MAX_TIMEOUT);
                let users = state.rooms.entry(room.to_owned()).or_default();
                let before = users.insert(user.to_owned(), until);
                if let Some(before) = before {
                    state.deadlines.remove(&(before, room.to_owned(), user.to_owned()));
                }
                state.deadlines.insert((until, room.to_owned(), user.to_owned()));
                if state.deadlines.first().is_some_and(|(first, _, _)| *first == until) {
                    self.timer.notify_one();
                }
                before.is_none()
            }
            None => state.remove(room, user),
        };
        if !changed {
            return;
        }
        let reserved = self.positions.reserve();
        self.log.record(room.to_owned(), reserved.pos);
        drop(state);
        self.announce(room, reserved.pos);
        reserved.publish();
    }

    /// `user` left `room` (or was kicked, banned…): they stop typing there.
    pub fn left(&self, room: &RoomId, user: &UserId) {
        self.set(room, user, None);
    }

    /// Removes every typing whose expiry is at or before `now`; each room that changed takes
    /// a position and its members are woken.
    fn expire(&self, now: Instant) {
        let mut state = self.state.lock();
        let mut rooms: BTreeSet<OwnedRoomId> = BTreeSet::new();
        while let Some(first) = state.deadlines.first()
            && first.0 <= now
        {
            let Some((_, room, user)) = state.deadlines.pop_first() else { break };
            if let Some(users) = state.rooms.get_mut(&room) {
                users.remove(&user);
                if users.is_empty() {
                    state.rooms.remove(&room);
                }
            }
            rooms.insert(room);
        }
        let changes: Vec<_> = rooms
            .into_iter()
            .map(|room| {
                let reserved = self.positions.reserve();
                self.log.record(room.clone(), reserved.pos);
                (room, reserved)
            })
            .collect();
        drop(state);
        for (room, reserved) in changes {
            self.announce(&room, reserved.pos);
            reserved.publish();
        }
    }

    /// Tells the room's joined members' pending syncs (before the position is published).
    fn announce(&self, room: &RoomId, pos: u64) {
        let members = self.audience.get().map(|a| a(room)).unwrap_or_default();
        self.notifier
            .wake(members.iter().map(|u| u.as_ref()), Change::room(Stream::Typing, room, pos));
    }
}

impl State {
    /// Removes `user`'s typing in `room`; whether they were typing.
    fn remove(&mut self, room: &RoomId, user: &UserId) -> bool {
        let Some(users) = self.rooms.get_mut(room) else { return false };
        let Some(until) = users.remove(user) else { return false };
        if users.is_empty() {
            self.rooms.remove(room);
        }
        self.deadlines.remove(&(until, room.to_owned(), user.to_owned()));
        true
    }
}

impl Deadlines for Typing {
    fn next_deadline(&self) -> Option<Instant> {
        self.state.lock().deadlines.first().map(|(at, _, _)| *at)
    }

    fn timer(&self) -> Arc<Notify> {
        self.timer.clone()
    }

    fn fire(&self, now: Instant) {
        self.expire(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> OwnedUserId {
        UserId::parse(format!("@{name}:example.org")).unwrap()
    }

    fn room() -> OwnedRoomId {
        RoomId::parse("!r:example.org").unwrap()
    }

    fn service() -> (Arc<Typing>, Arc<Notifier>) {
        let notifier = Arc::new(Notifier::default());
        let typing = Typing::start(notifier.clone());
        typing.set_audience(Box::new(|_| vec![user("alice"), user("bob")]));
        (typing, notifier)
    }

    #[tokio::test]
    async fn typing_wakes_members_once_and_a_repeat_only_extends_it() {
        let (typing, notifier) = service();
        let (alice, bob, room) = (user("alice"), user("bob"), room());
        let start = typing.current();
        let sub = notifier.subscribe(&bob);
        typing.set(&room, &alice, Some(Duration::from_secs(30)));
        let changes = sub.take();
        assert!(changes.has(Stream::Typing) && changes.rooms.contains(&room));
        assert!(typing.current() > start && typing.changed(&room, start));
        let event = typing.event(&room, &bob, Some(start)).unwrap();
        assert_eq!(event["content"]["user_ids"], json!([alice.as_str()]));
        let after = typing.current();
        typing.set(&room, &alice, Some(Duration::from_secs(30)));
        assert!(sub.take().is_empty(), "a repeat wakes nobody");
        assert_eq!(typing.current(), after, "and takes no position");
        assert!(typing.event(&room, &bob, Some(after)).is_none());
        typing.left(&room, &alice);
        assert!(sub.take().has(Stream::Typing));
        let event = typing.event(&room, &bob, Some(after)).unwrap();
        assert_eq!(event["content"]["user_ids"], json!([]), "stopping is sent too");
        assert!(typing.event(&room, &bob, None).is_none(), "an initial sync gets nothing");
    }

    #[tokio::test]
    async fn old_and_future_tokens_get_the_current_set() {
        let (typing, _) = service();
        let room = room();
        assert!(typing.changed(&room, 5), "a token from an earlier run");
        assert!(typing.changed(&room, typing.current() + 10), "a token from the future");
        assert!(!typing.changed(&room, typing.current()));
    }

    #[tokio::test]
    async fn the_timer_expires_typing_and_wakes_members() {
        let (typing, notifier) = service();
        let (alice, bob, room) = (user("alice"), user("bob"), room());
        typing.set(&room, &alice, Some(Duration::from_millis(100)));
        typing.set(&room, &bob, Some(Duration::from_secs(600)));
        let sub = notifier.subscribe(&bob);
        let before = typing.current();
        tokio::time::timeout(Duration::from_secs(5), sub.changed()).await.expect("expired");
        assert!(sub.take().has(Stream::Typing));
        assert_eq!(typing.typing_in(&room), vec![bob.clone()], "alice expired, bob types on");
        assert!(typing.current() > before);
    }
}
