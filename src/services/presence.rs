//! Presence (`/presence/{userId}/status`, `set_presence` on `/sync`), delivered in the
//! `presence` section of `/sync` to users who share a room with its owner (and to the owner).
//!
//! In memory only, bounded by the number of local users who synced or set a status since the
//! start: after a restart everyone is offline until they sync or set their presence again.
//! The stream's positions start at the boot time in microseconds since the UNIX epoch, so
//! they stay monotonic across restarts.
//!
//! The rules follow Synapse's:
//! - a `/sync` with `set_presence=online` (the default) marks the user online and active
//!   (Synapse bumps `last_active_ts` on such syncs too); `unavailable` sets unavailable;
//!   `offline` changes nothing (and the sync does not count as the user being connected);
//! - sending an event counts as activity (`api::rooms::send_message` calls
//!   [`Presence::active`]): an unavailable user becomes online again;
//! - `currently_active` is true while online and active in the last [`LAST_ACTIVE_GRANULARITY`];
//! - online with no activity for [`IDLE_TIMER`] becomes unavailable;
//! - no sync in progress for [`SYNC_ONLINE_TIMEOUT`] after the last one ended (or after a
//!   `PUT`) becomes offline; `status_msg` is kept.
//!
//! Only changes others can see (the state, `status_msg`, a `currently_active` flip) take a
//! position, are recorded in the change log and wake everyone sharing a room with the user;
//! a sync that merely keeps a user online changes nothing visible and wakes nobody.
//! `last_active_ago` is computed at delivery time. The timers are driven by one task that
//! sleeps until the earliest deadline.
//!
//! With `presence.enabled = false` nothing is tracked or sent: `PUT` succeeds and changes
//! nothing, `GET` answers `offline` (as Synapse does).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use ruma::presence::PresenceState;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::services::streams::{Deadlines, run_deadlines};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::rooms::notify::{Change, Notifier, Stream};
use crate::services::streams::{ChangeLog, Positions};
use crate::services::typing::boot_position;

/// Active in the last minute: `currently_active` (Synapse's `LAST_ACTIVE_GRANULARITY`).
pub const LAST_ACTIVE_GRANULARITY: Duration = Duration::from_secs(60);
/// Online without activity for 5 minutes: unavailable (Synapse's `IDLE_TIMER`).
pub const IDLE_TIMER: Duration = Duration::from_secs(5 * 60);
/// No sync for 30 seconds after the last one ended: offline (Synapse's `SYNC_ONLINE_TIMEOUT`).
pub const SYNC_ONLINE_TIMEOUT: Duration = Duration::from_secs(30);
/// Users the change log remembers (more than that many changes between two syncs, and the
/// older token gets the current presence of every room-mate).
const CHANGE_LOG_USERS: usize = 100_000;
/// The longest `status_msg` kept (a longer one is refused).
pub const MAX_STATUS_MSG_BYTES: usize = 1_024;

/// The three presence states of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Online,
    Unavailable,
    Offline,
}

impl State {
    /// The state a client asked for; other values are refused.
    pub fn parse(state: &PresenceState) -> Result<Self> {
        match state {
            PresenceState::Online => Ok(Self::Online),
            PresenceState::Unavailable => Ok(Self::Unavailable),
            PresenceState::Offline => Ok(Self::Offline),
            other => Err(Error::InvalidParam(format!(
                "Invalid presence state {:?}: expected online, unavailable or offline",
                other.as_str()
            ))),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Unavailable => "unavailable",
            Self::Offline => "offline",
        }
    }
}

/// Who shares a room with whom: the rooms service, as presence sees it.
pub trait RoomMates: Send + Sync {
    /// Everyone joined to a room the user is joined to (the user excluded).
    fn mates(&self, user: &UserId) -> Vec<OwnedUserId>;
    /// Whether two users are joined to a common room.
    fn share(&self, a: &UserId, b: &UserId) -> bool;
    /// The joined members of a room.
    fn members(&self, room: &RoomId) -> Vec<OwnedUserId>;
}

/// Rooms a user joined recently that [`Presence::events`] remembers (per user), to send the
/// joiner the presence of their new room-mates.
const MAX_INTRODUCTIONS: usize = 64;

/// The durations of the rules (Synapse's constants; shorter in unit tests).
#[derive(Clone, Copy)]
struct Timers {
    granularity: Duration,
    idle: Duration,
    sync_online: Duration,
}

const TIMERS: Timers = Timers {
    granularity: LAST_ACTIVE_GRANULARITY,
    idle: IDLE_TIMER,
    sync_online: SYNC_ONLINE_TIMEOUT,
};

pub struct Presence {
    enabled: bool,
    timers: Timers,
    notifier: Arc<Notifier>,
    rooms: OnceLock<Box<dyn RoomMates>>,
    positions: Positions,
    log: ChangeLog<OwnedUserId>,
    inner: Mutex<Inner>,
    /// Wakes the timer task when an earlier deadline is set.
    timer: Arc<Notify>,
}

#[derive(Default)]
struct Inner {
    users: HashMap<OwnedUserId, UserPresence>,
    /// `user → (position, room)` of rooms they joined lately (at most [`MAX_INTRODUCTIONS`]).
    introductions: HashMap<OwnedUserId, Vec<(u64, OwnedRoomId)>>,
    /// Each user's next timer, earliest first.
    deadlines: BTreeSet<(Instant, OwnedUserId)>,
}

struct UserPresence {
    state: State,
    status_msg: Option<String>,
    last_active: Option<Instant>,
    currently_active: bool,
    /// Syncs in progress (set_presence other than offline).
    syncing: u32,
    /// When the last sync ended (or the state was set with `PUT`).
    connected_until: Instant,
    /// The user's entry in `Inner::deadlines`: no later than the next change the timers
    /// make (see [`Presence::update`]).
    deadline: Option<Instant>,
}

impl UserPresence {
    fn new(now: Instant) -> Self {
        Self {
            state: State::Offline,
            status_msg: None,
            last_active: None,
            currently_active: false,
            syncing: 0,
            connected_until: now,
            deadline: None,
        }
    }

    /// What others see, except `last_active_ago` (which moves with time).
    fn visible(&self) -> (State, Option<&str>, bool) {
        (self.state, self.status_msg.as_deref(), self.currently_active)
    }

    /// Applies the timers' rules at `now`.
    fn settle(&mut self, now: Instant, t: Timers) {
        let idle = self.last_active.is_none_or(|at| now.duration_since(at) >= t.idle);
        if self.state == State::Online && idle {
            self.state = State::Unavailable;
        }
        if self.syncing == 0 && now.duration_since(self.connected_until) >= t.sync_online {
            self.state = State::Offline;
        }
        self.currently_active = self.state == State::Online
            && self.last_active.is_some_and(|at| now.duration_since(at) < t.granularity);
    }

    /// When [`UserPresence::settle`] would next change something.
    fn next_deadline(&self, t: Timers) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        if self.state == State::Online
            && let Some(at) = self.last_active
        {
            if self.currently_active {
                consider(at + t.granularity);
            }
            consider(at + t.idle);
        }
        if self.syncing == 0 && self.state != State::Offline {
            consider(self.connected_until + t.sync_online);
        }
        next
    }

    fn content(&self, now: Instant) -> Value {
        let mut content = json!({"presence": self.state.as_str()});
        if let Some(at) = self.last_active {
            content["last_active_ago"] = json!(now.duration_since(at).as_millis() as u64);
        }
        if self.state == State::Online {
            content["currently_active"] = json!(self.currently_active);
        }
        if let Some(msg) = &self.status_msg {
            content["status_msg"] = json!(msg);
        }
        content
    }
}

/// A user's presence as `GET /presence/{userId}/status` answers it.
pub struct Status {
    pub presence: PresenceState,
    pub last_active_ago: Option<Duration>,
    pub currently_active: Option<bool>,
    pub status_msg: Option<String>,
}

/// Held for the length of a `/sync`: while any is held, the user does not go offline.
pub struct Syncing<'a> {
    presence: &'a Presence,
    user: Option<OwnedUserId>,
}

impl Drop for Syncing<'_> {
    fn drop(&mut self) {
        if let Some(user) = self.user.take() {
            self.presence.update(&user, |p, now| {
                p.syncing = p.syncing.saturating_sub(1);
                p.connected_until = now;
            });
        }
    }
}

impl Presence {
    /// The service, with its timer task started (it ends when the service is dropped).
    pub fn start(enabled: bool, notifier: Arc<Notifier>) -> Arc<Self> {
        Self::start_with(enabled, notifier, TIMERS)
    }

    fn start_with(enabled: bool, notifier: Arc<Notifier>, timers: Timers) -> Arc<Self> {
        let boot = boot_position();
        let presence = Arc::new(Self {
            enabled,
            timers,
            notifier,
            rooms: OnceLock::new(),
            positions: Positions::new(boot),
            log: ChangeLog::new(boot, CHANGE_LOG_USERS),
            inner: Mutex::new(Inner::default()),
            timer: Arc::new(Notify::new()),
        });
        if enabled {
            tokio::spawn(run_deadlines(Arc::downgrade(&presence)));
        }
        presence
    }

    /// Says who shares a room with whom. Set once at start-up.
    pub fn set_rooms(&self, rooms: Box<dyn RoomMates>) {
        let _ = self.rooms.set(rooms);
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The presence stream's published position (the sync token's seventh part).
    pub fn current(&self) -> u64 {
        self.positions.current()
    }

    /// A sync of `user` with `set_presence` begins; it ends when the guard is dropped.
    /// `online` marks them online and active, `unavailable` unavailable, `offline` changes
    /// nothing.
    pub fn syncing(&self, user: &UserId, state: &PresenceState) -> Syncing<'_> {
        let asked = match state {
            PresenceState::Offline => None,
            PresenceState::Unavailable => Some(State::Unavailable),
            _ => Some(State::Online),
        };
        let Some(asked) = asked.filter(|_| self.enabled) else {
            return Syncing { presence: self, user: None };
        };
        self.update(user, |p, now| {
            p.syncing += 1;
            p.connected_until = now;
            p.state = asked;
            if asked == State::Online {
                p.last_active = Some(now);
            }
        });
        Syncing { presence: self, user: Some(user.to_owned()) }
    }

    /// `user` did something (sent an event): active now, and online if they were
    /// unavailable. Someone offline stays offline.
    pub fn active(&self, user: &UserId) {
        if !self.enabled || !self.inner.lock().users.contains_key(user) {
            return;
        }
        self.update(user, |p, now| {
            p.last_active = Some(now);
            if p.state == State::Unavailable {
                p.state = State::Online;
            }
        });
    }

    /// `PUT /presence/{userId}/status` by the user themselves.
    pub fn set(&self, user: &UserId, state: State, status_msg: Option<String>) -> Result<()> {
        if status_msg.as_ref().is_some_and(|m| m.len() > MAX_STATUS_MSG_BYTES) {
            return Err(Error::TooMany(format!(
                "status_msg is longer than {MAX_STATUS_MSG_BYTES} bytes"
            )));
        }
        if !self.enabled {
            return Ok(());
        }
        self.update(user, |p, now| {
            p.state = state;
            p.status_msg = status_msg;
            p.connected_until = p.connected_until.max(now);
            if state == State::Online {
                p.last_active = Some(now);
            }
        });
        Ok(())
    }

    /// `GET /presence/{userId}/status`; the caller has checked that the viewer may see it.
    pub fn status(&self, user: &UserId) -> Status {
        let offline = Status {
            presence: PresenceState::Offline,
            last_active_ago: None,
            currently_active: None,
            status_msg: None,
        };
        if !self.enabled {
            return offline;
        }
        let now = Instant::now();
        let inner = self.inner.lock();
        let Some(p) = inner.users.get(user) else { return offline };
        Status {
            presence: PresenceState::from(p.state.as_str()),
            last_active_ago: p.last_active.map(|at| now.duration_since(at)),
            currently_active: (p.state == State::Online).then_some(p.currently_active),
            status_msg: p.status_msg.clone(),
        }
    }

    /// Whether `viewer` may see `user`'s presence: themselves, or someone sharing a room.
    pub fn visible_to(&self, viewer: &UserId, user: &UserId) -> bool {
        viewer == user || self.rooms.get().is_some_and(|rooms| rooms.share(viewer, user))
    }

    /// `m.presence` events for `viewer`: users who share a room with them (and themselves)
    /// whose presence changed in `(since, upto]`. An initial sync (`None`) gets the current
    /// presence of the room-mates known to be online or unavailable; a token from an earlier
    /// run or from the future gets every known room-mate's.
    pub fn events(&self, viewer: &UserId, since: Option<u64>, upto: u64) -> Vec<Value> {
        if !self.enabled {
            return Vec::new();
        }
        let changed = match since {
            Some(since) if since <= upto => self.log.changed_between(since, upto),
            _ => None,
        };
        // Rooms the viewer joined in the window: their members' presence is news to them.
        let introduced: Vec<OwnedUserId> = match (since, &changed) {
            (Some(since), Some(_)) => {
                let rooms: Vec<OwnedRoomId> = self
                    .inner
                    .lock()
                    .introductions
                    .get(viewer)
                    .map(|intros| {
                        intros
                            .iter()
                            .filter(|(pos, _)| *pos > since && *pos <= upto)
                            .map(|(_, room)| room.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                // Only rooms the viewer is still in: a room joined and left again in the
                // window introduces nobody (its later members share nothing with them).
                rooms
                    .iter()
                    .map(|room| self.rooms.get().map(|r| r.members(room)).unwrap_or_default())
                    .filter(|members| members.iter().any(|m| m == viewer))
                    .flatten()
                    .collect()
            }
            _ => Vec::new(),
        };
        let candidates: Vec<OwnedUserId> = match changed {
            Some(users) if users.is_empty() && introduced.is_empty() => return Vec::new(),
            Some(users) if users.len() <= 16 => {
                users.into_iter().filter(|u| self.visible_to(viewer, u)).collect()
            }
            Some(users) => {
                let mates = self.room_mates(viewer);
                users.into_iter().filter(|u| u == viewer || mates.contains(u)).collect()
            }
            None => {
                let mut mates: Vec<OwnedUserId> = self.room_mates(viewer).into_iter().collect();
                mates.push(viewer.to_owned());
                mates
            }
        };
        let mut candidates = candidates;
        candidates.extend(introduced);
        candidates.sort_unstable();
        candidates.dedup();
        let now = Instant::now();
        let inner = self.inner.lock();
        let events: Vec<Value> = candidates
            .iter()
            .filter_map(|u| inner.users.get(u).map(|p| (u, p)))
            .filter(|(_, p)| since.is_some() || p.state != State::Offline)
            .map(|(u, p)| json!({"type": "m.presence", "sender": u, "content": p.content(now)}))
            .collect();
        events
    }

    fn room_mates(&self, user: &UserId) -> HashSet<OwnedUserId> {
        self.rooms.get().map(|r| r.mates(user)).unwrap_or_default().into_iter().collect()
    }

    /// `user` joined `room`: the room's members and the joiner see each other's presence in
    /// their next sync, as Synapse sends it, though nothing changed. The joiner's presence is
    /// recorded as changed (its room-mates get it again, harmlessly); the joiner remembers
    /// the room, whose members' presence [`Presence::events`] then adds.
    pub fn joined(&self, room: &RoomId, user: &UserId) {
        if !self.enabled {
            return;
        }
        let mut inner = self.inner.lock();
        let reserved = self.positions.reserve();
        let intros = inner.introductions.entry(user.to_owned()).or_default();
        intros.push((reserved.pos, room.to_owned()));
        if intros.len() > MAX_INTRODUCTIONS {
            intros.remove(0);
        }
        self.log.record(user.to_owned(), reserved.pos);
        drop(inner);
        let mut audience = self.rooms.get().map(|r| r.members(room)).unwrap_or_default();
        audience.push(user.to_owned());
        self.notifier.wake(
            audience.iter().map(|u| u.as_ref()),
            Change::user(Stream::Presence, reserved.pos),
        );
        reserved.publish();
    }

    /// Changes `user`'s presence with `change`, applies the timers' rules and reschedules
    /// them; if what others see changed, takes a position, announces it to the user and
    /// everyone sharing a room with them, and publishes it.
    ///
    /// Every `/sync` calls this twice (start and end), so the common case changes the entry
    /// in place and leaves the timer set alone: a registered deadline that is still ahead
    /// and no later than the new one stays, the timer fires at it, finds nothing due and
    /// registers the later one (one early wake-up per timer period, not two set updates per
    /// request).
    fn update(&self, user: &UserId, change: impl FnOnce(&mut UserPresence, Instant)) {
        let now = Instant::now();
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        if !inner.users.contains_key(user) {
            inner.users.insert(user.to_owned(), UserPresence::new(now));
        }
        let Some(p) = inner.users.get_mut(user) else { return };
        let (state, status_msg, active) = p.visible();
        let before = (state, status_msg.map(str::to_owned), active);
        change(p, now);
        p.settle(now, self.timers);
        let visible_change = p.visible() != (before.0, before.1.as_deref(), before.2);
        let deadline = p.next_deadline(self.timers);
        let keep =
            p.deadline.is_some_and(|old| old > now && deadline.is_some_and(|new| old <= new));
        if !keep && p.deadline != deadline {
            if let Some(old) = p.deadline {
                inner.deadlines.remove(&(old, user.to_owned()));
            }
            if let Some(at) = deadline {
                inner.deadlines.insert((at, user.to_owned()));
                if inner.deadlines.first().is_some_and(|(first, _)| *first == at) {
                    self.timer.notify_one();
                }
            }
            p.deadline = deadline;
        }
        if !visible_change {
            return;
        }
        let reserved = self.positions.reserve();
        self.log.record(user.to_owned(), reserved.pos);
        drop(guard);
        let mut audience = self.rooms.get().map(|r| r.mates(user)).unwrap_or_default();
        audience.push(user.to_owned());
        self.notifier.wake(
            audience.iter().map(|u| u.as_ref()),
            Change::user(Stream::Presence, reserved.pos),
        );
        reserved.publish();
    }

    /// The users whose timers are due at `now`.
    fn due(&self, now: Instant) -> Vec<OwnedUserId> {
        let inner = self.inner.lock();
        inner.deadlines.iter().take_while(|(at, _)| *at <= now).map(|(_, u)| u.clone()).collect()
    }
}

impl Deadlines for Presence {
    fn next_deadline(&self) -> Option<Instant> {
        self.inner.lock().deadlines.first().map(|(at, _)| *at)
    }

    fn timer(&self) -> Arc<Notify> {
        self.timer.clone()
    }

    /// Applies the rules to the users due.
    fn fire(&self, now: Instant) {
        for user in self.due(now) {
            self.update(&user, |_, _| {});
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules at a scale of milliseconds.
    const FAST: Timers = Timers {
        granularity: Duration::from_millis(300),
        idle: Duration::from_millis(900),
        sync_online: Duration::from_millis(150),
    };

    fn user(name: &str) -> OwnedUserId {
        UserId::parse(format!("@{name}:example.org")).unwrap()
    }

    /// Alice and Bob share a room; Eve shares none.
    struct AliceAndBob;

    impl RoomMates for AliceAndBob {
        fn mates(&self, u: &UserId) -> Vec<OwnedUserId> {
            match u.localpart() {
                "alice" => vec![user("bob")],
                "bob" => vec![user("alice")],
                _ => vec![],
            }
        }

        fn share(&self, a: &UserId, b: &UserId) -> bool {
            let pair = [a.localpart(), b.localpart()];
            pair == ["alice", "bob"] || pair == ["bob", "alice"]
        }

        fn members(&self, _room: &RoomId) -> Vec<OwnedUserId> {
            vec![user("alice"), user("bob")]
        }
    }

    fn service(timers: Timers) -> (Arc<Presence>, Arc<Notifier>) {
        let notifier = Arc::new(Notifier::default());
        let presence = Presence::start_with(true, notifier.clone(), timers);
        presence.set_rooms(Box::new(AliceAndBob));
        (presence, notifier)
    }

    /// Waits (bounded) until `alice`'s presence is `state`.
    async fn wait_for(presence: &Presence, who: &UserId, state: &str) {
        for _ in 0..200 {
            if presence.status(who).presence.as_str() == state {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{who} never became {state}");
    }

    #[tokio::test]
    async fn syncing_goes_online_then_offline_and_only_changes_wake() {
        let (presence, notifier) = service(FAST);
        let (alice, bob, eve) = (user("alice"), user("bob"), user("eve"));
        let start = presence.current();
        let sub = notifier.subscribe(&bob);
        let guard = presence.syncing(&alice, &PresenceState::Online);
        assert!(sub.take().has(Stream::Presence), "going online wakes room-mates");
        let online = presence.current();
        assert!(online > start);
        let events = presence.events(&bob, Some(start), online);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["content"]["presence"], "online");
        assert_eq!(events[0]["content"]["currently_active"], true);
        assert!(presence.events(&eve, Some(start), online).is_empty(), "no leak to strangers");
        assert!(presence.events(&eve, None, online).is_empty());
        drop(guard);
        let again = presence.syncing(&alice, &PresenceState::Online);
        assert!(sub.take().is_empty(), "staying online wakes nobody");
        assert_eq!(presence.current(), online);
        drop(again);
        // No sync for a while: offline, and the room-mate is told.
        wait_for(&presence, &alice, "offline").await;
        assert!(sub.take().has(Stream::Presence));
        let events = presence.events(&bob, Some(online), presence.current());
        assert_eq!(events[0]["content"]["presence"], "offline");
        assert!(presence.status(&alice).last_active_ago.unwrap() >= FAST.sync_online);
    }

    #[tokio::test]
    async fn back_to_back_syncs_leave_the_timer_entry_alone_and_the_timers_still_apply() {
        // The first entry is due a second after the first sync ends: time enough for the
        // loop below on a loaded machine.
        let timers = Timers {
            granularity: Duration::from_secs(2),
            idle: Duration::from_secs(3),
            sync_online: Duration::from_secs(1),
        };
        let (presence, _notifier) = service(timers);
        let alice = user("alice");
        drop(presence.syncing(&alice, &PresenceState::Online));
        let registered = presence.inner.lock().deadlines.clone();
        assert_eq!(registered.len(), 1);
        for _ in 0..5 {
            drop(presence.syncing(&alice, &PresenceState::Online));
            assert_eq!(
                presence.inner.lock().deadlines,
                registered,
                "a later deadline does not move the entry"
            );
        }
        // The entry fires early, finds alice synced since, and registers her later deadline;
        // once she stops syncing she still goes offline.
        wait_for(&presence, &alice, "offline").await;
        let left = presence.inner.lock().deadlines.len();
        assert!(left <= 1, "one entry per user at most, not {left}");
    }

    #[tokio::test]
    async fn an_idle_syncing_user_becomes_unavailable_and_active_again() {
        let (presence, _) = service(FAST);
        let alice = user("alice");
        let _guard = presence.syncing(&alice, &PresenceState::Online);
        wait_for(&presence, &alice, "unavailable").await;
        presence.active(&alice);
        let status = presence.status(&alice);
        assert_eq!(status.presence.as_str(), "online");
        assert_eq!(status.currently_active, Some(true));
    }

    #[tokio::test]
    async fn set_presence_offline_changes_nothing_and_disabled_tracks_nothing() {
        let (presence, _) = service(TIMERS);
        let alice = user("alice");
        drop(presence.syncing(&alice, &PresenceState::Offline));
        assert_eq!(presence.status(&alice).presence.as_str(), "offline");
        assert!(presence.events(&alice, None, presence.current()).is_empty());
        drop(presence.syncing(&alice, &PresenceState::Unavailable));
        assert_eq!(presence.status(&alice).presence.as_str(), "unavailable");
        let disabled = Presence::start(false, Arc::new(Notifier::default()));
        drop(disabled.syncing(&alice, &PresenceState::Online));
        disabled.set(&alice, State::Online, Some("hi".into())).unwrap();
        assert_eq!(disabled.status(&alice).presence.as_str(), "offline");
        assert!(disabled.events(&alice, None, disabled.current()).is_empty());
    }
}
