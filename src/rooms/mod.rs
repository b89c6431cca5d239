//! Rooms: the event DAG of each room, built, signed and authorised here.
//!
//! **The send path.** `Rooms::append` takes the room's lock (events of one room are created
//! one at a time; different rooms in parallel), picks `auth_events` from the cached current
//! state, `prev_events` from the forward extremities, builds and signs the PDU, runs the room
//! version's authorization rules (ruma's state-res), computes the new state group, and hands
//! the write to the [`commit::Committer`]. After the fsync it updates the caches and wakes the
//! members' pending syncs. An event that fails the auth rules is never stored.

pub mod client;
pub mod commit;
pub mod create;
pub mod directory;
pub mod filter;
pub mod history;
pub mod ignore;
pub mod membership;
pub mod notify;
pub mod pdu;
pub mod profile;
pub mod recent;
pub mod redaction;
pub mod relations;
pub mod search;
pub mod spaces;
pub mod state;
pub mod upgrade;
pub mod visibility;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axon_federation::keys::SigningKey;
use parking_lot::RwLock;
use ruma::events::{StateEventType, TimelineEventType};
use ruma::room_version_rules::RoomVersionRules;
use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId,
    RoomVersionId, UserId,
};
use serde_json::value::to_raw_value;

use crate::error::{Error, Result};
use crate::services::ratelimit::RateLimiter;
use crate::storage::Store;
use crate::storage::rooms::{
    EventRecord, EventWrite, RedactionWrite, RoomHead, RoomRecord, StateChange, StateChangeWrite,
    TxnKey,
};
use commit::Committer;
use notify::Notifier;
use pdu::{NewEvent, Pdu, PduContext, PduRef};
use redaction::Target;
use state::{StateKey, StateMap};
use visibility::{Visibility, VisibilityHistory};

/// A room this server participates in, with its cached current state.
pub struct Room {
    pub id: OwnedRoomId,
    pub version: RoomVersionId,
    pub rules: RoomVersionRules,
    /// The builder's view of the room (including events submitted but not yet durable),
    /// held while an event is created: one event at a time per room.
    write: tokio::sync::Mutex<RoomInner>,
    /// The published view: events up to the visible stream position.
    inner: RwLock<RoomInner>,
    /// Transaction IDs of events submitted but not yet durable.
    pending_txns: parking_lot::Mutex<HashMap<TxnKey, OwnedEventId>>,
    /// Every `m.room.history_visibility` change with its position (published view).
    visibility: RwLock<VisibilityHistory>,
    /// Position of the room's latest membership change (a profile change is none); at
    /// start-up, conservatively, the room's last position.
    membership_changed_at: AtomicU64,
    /// Annotations submitted but not yet durable (`relations::check_relation` refuses a
    /// second identical one meanwhile).
    pending_annotations: parking_lot::Mutex<HashSet<relations::AnnotationId>>,
    /// The room's newest events (published view): the timeline reads of syncs and unread
    /// counts after a wake-up come from here.
    recent: RwLock<recent::Recent>,
}

#[derive(Clone)]
struct RoomInner {
    head: RoomHead,
    state: Arc<StateMap>,
    chain_len: u32,
    /// `user → membership` for everyone with a membership event.
    members: Arc<HashMap<OwnedUserId, String>>,
    /// State keys of the room's `m.space.child` events (a state key never leaves the
    /// state), so `/hierarchy` finds children without scanning all the state.
    space_children: Arc<BTreeSet<String>>,
}

impl Room {
    /// The current state (a cheap shared snapshot).
    pub fn state(&self) -> Arc<StateMap> {
        self.inner.read().state.clone()
    }

    /// The state keys of the room's `m.space.child` events.
    pub fn space_child_keys(&self) -> Arc<BTreeSet<String>> {
        self.inner.read().space_children.clone()
    }

    pub fn state_event(&self, kind: &StateEventType, key: &str) -> Option<PduRef> {
        self.inner.read().state.get(&(kind.clone(), key.to_owned())).cloned()
    }

    /// Memberships of everyone who has one.
    pub fn members(&self) -> Arc<HashMap<OwnedUserId, String>> {
        self.inner.read().members.clone()
    }

    pub fn membership_of(&self, user: &UserId) -> Option<String> {
        self.inner.read().members.get(user).cloned()
    }

    /// Whether the user is joined now (no copy of the membership: asked on hot paths).
    pub fn is_joined(&self, user: &UserId) -> bool {
        self.inner.read().members.get(user).is_some_and(|m| m == "join")
    }

    pub fn joined(&self) -> Vec<OwnedUserId> {
        self.inner
            .read()
            .members
            .iter()
            .filter(|(_, m)| m.as_str() == "join")
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// How many members are joined (push rules' `room_member_count`).
    pub fn joined_count(&self) -> usize {
        self.inner.read().members.values().filter(|m| m.as_str() == "join").count()
    }

    pub fn last_pos(&self) -> u64 {
        self.inner.read().head.last_pos
    }

    /// The room's history-visibility changes, oldest first.
    pub fn visibility_history(&self) -> VisibilityHistory {
        self.visibility.read().clone()
    }

    /// Whether `event_id` is among the room's recent events and nothing relates to it.
    pub fn recent_unrelated(&self, event_id: &str) -> bool {
        self.recent.read().known_unrelated(event_id)
    }

    /// The position of the room's latest membership change (join, leave, invite, ban…;
    /// not a profile change): whoever asks "did anyone's membership change since P" needs
    /// to read the room's members only when this is after P.
    pub fn membership_changed_at(&self) -> u64 {
        self.membership_changed_at.load(Ordering::Acquire)
    }
}

/// The content field of a state event that the state-change index keeps.
fn state_value(kind: &TimelineEventType, content: &serde_json::value::RawValue) -> Option<String> {
    let field = match kind {
        TimelineEventType::RoomMember => "membership",
        TimelineEventType::RoomHistoryVisibility => "history_visibility",
        _ => return None,
    };
    let content: serde_json::Value = serde_json::from_str(content.get()).ok()?;
    content.get(field).and_then(|v| v.as_str()).map(str::to_owned)
}

/// The state-change index entry of a state event.
fn state_change(pdu: &Pdu) -> Option<StateChangeWrite> {
    pdu.state_key.as_ref().map(|key| StateChangeWrite {
        kind: pdu.kind.to_string(),
        state_key: key.clone(),
        change: StateChange {
            event_id: pdu.event_id.to_string(),
            value: state_value(&pdu.kind, &pdu.content),
        },
    })
}

/// The bounds the rooms service puts on one user's work (from `[limits]`).
pub struct RoomLimits {
    /// `limits.events`: every event a user causes takes a token, whichever endpoint it
    /// comes from (membership changes, profile updates, room creation, messages).
    pub events: Arc<RateLimiter>,
    /// `limits.create_room_max_initial_state`.
    pub max_initial_state: usize,
    /// `limits.create_room_max_invites`.
    pub max_invites: usize,
}

/// The rooms service.
pub struct Rooms {
    server_name: String,
    key: Arc<SigningKey>,
    store: Arc<dyn Store>,
    pub limits: RoomLimits,
    /// Profile changes still being written into member events in the background.
    pub profile_fanout: profile::ProfileFanout,
    pub committer: Committer,
    pub notifier: Arc<Notifier>,
    rooms: RwLock<HashMap<OwnedRoomId, Arc<Room>>>,
    /// `user → rooms they have a membership in`.
    user_rooms: Arc<RwLock<HashMap<OwnedUserId, HashSet<OwnedRoomId>>>>,
    next_state_group: AtomicU64,
    /// IDs of rooms being created (reserved until they are written or given up).
    creating: parking_lot::Mutex<HashSet<OwnedRoomId>>,
    /// Recently read events, parsed: a message fanned out to a room's syncing members is
    /// read and parsed once, not once per member. A redaction evicts its target (in its
    /// `apply`, before the redaction's position is visible).
    event_cache: Arc<EventCache>,
    /// Told when a user's membership of a room changes (typing stops on leaving; presence
    /// introduces a joiner and the room's members to each other).
    on_membership: Arc<std::sync::OnceLock<OnMembership>>,
    /// Whom each user ignores (`m.ignored_user_list`), cached.
    ignore_lists: ignore::IgnoreLists,
}

/// Parsed events by ID, and a count of redactions so that a reader racing a redaction never
/// leaves the unredacted copy behind: a redaction counts, then evicts; a reader inserts,
/// then evicts again if a redaction counted since it started reading.
struct EventCache {
    events: quick_cache::sync::Cache<OwnedEventId, SharedEvent, EventBytes>,
    redactions: AtomicU64,
}

/// A stored event, parsed, shared with the event cache (cloning it is two reference counts).
#[derive(Clone)]
pub struct SharedEvent {
    pub record: Arc<EventRecord>,
    pub pdu: Arc<Pdu>,
}

/// An event weighs its JSON (kept twice: the stored record and the parsed PDU) plus a
/// constant for the rest, so the cache is bounded in bytes, not only in entries.
#[derive(Clone)]
struct EventBytes;

impl quick_cache::Weighter<OwnedEventId, SharedEvent> for EventBytes {
    fn weight(&self, _: &OwnedEventId, event: &SharedEvent) -> u64 {
        (2 * event.record.pdu.get().len() + event.pdu.content.get().len() + 512) as u64
    }
}

impl EventCache {
    fn new(entries: usize, bytes: u64) -> Self {
        Self {
            events: quick_cache::sync::Cache::with_weighter(entries, bytes, EventBytes),
            redactions: AtomicU64::new(0),
        }
    }

    fn redacted(&self, target: &EventId) {
        self.redactions.fetch_add(1, Ordering::SeqCst);
        self.events.remove(target);
    }
}

/// Events kept parsed in memory: about this many, and at most this many bytes.
const EVENT_CACHE_ENTRIES: usize = 20_000;
const EVENT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// What [`Rooms::set_on_membership`] runs: `(room, user, joined)` once a membership change
/// is durable and visible (`joined`: the user is now joined; otherwise they no longer are).
pub type OnMembership = Box<dyn Fn(&RoomId, &UserId, bool) + Send + Sync>;

/// A built, signed and authorised event, ready to be submitted.
struct Prepared {
    event_id: OwnedEventId,
    write: EventWrite,
    apply: commit::Apply,
}

impl Rooms {
    /// Loads every room's head, current state and memberships.
    pub async fn load(
        server_name: String,
        key: Arc<SigningKey>,
        store: Arc<dyn Store>,
        limits: RoomLimits,
    ) -> Result<Self> {
        let mut rooms = HashMap::new();
        let mut user_rooms: HashMap<OwnedUserId, HashSet<OwnedRoomId>> = HashMap::new();
        let mut last_pos = 0;
        for (record, head) in store.rooms().await? {
            let id: OwnedRoomId = record
                .room_id
                .as_str()
                .try_into()
                .map_err(|e| Error::Internal(format!("stored room ID: {e}")))?;
            let version: RoomVersionId = record
                .version
                .as_str()
                .try_into()
                .map_err(|e| Error::Internal(format!("stored room version: {e}")))?;
            let rules = version
                .rules()
                .ok_or_else(|| Error::Internal(format!("unsupported room version {version}")))?;
            let state = state::load_group(store.as_ref(), head.state_group).await?;
            let chain_len = store.state_group(head.state_group).await?.map_or(0, |g| g.chain_len);
            let mut members = HashMap::new();
            for (user, m) in store.room_memberships(id.as_str()).await? {
                if let Ok(user) = OwnedUserId::try_from(user.as_str()) {
                    user_rooms.entry(user.clone()).or_default().insert(id.clone());
                    members.insert(user, m.membership);
                }
            }
            last_pos = last_pos.max(head.last_pos);
            let view_last_pos = head.last_pos;
            let visibility = load_visibility(store.as_ref(), &id).await?;
            let view = RoomInner {
                space_children: Arc::new(space_child_keys(&state)),
                head,
                state: Arc::new(state),
                chain_len,
                members: Arc::new(members),
            };
            let room = Room {
                id: id.clone(),
                version,
                rules,
                write: tokio::sync::Mutex::new(view.clone()),
                inner: RwLock::new(view),
                pending_txns: parking_lot::Mutex::new(HashMap::new()),
                visibility: RwLock::new(visibility),
                membership_changed_at: AtomicU64::new(view_last_pos),
                pending_annotations: parking_lot::Mutex::new(HashSet::new()),
                recent: RwLock::new(recent::Recent::new(view_last_pos)),
            };
            rooms.insert(id, Arc::new(room));
        }
        let next_group = store.max_state_group().await? + 1;
        tracing::info!(rooms = rooms.len(), stream_position = last_pos, "rooms loaded");
        Ok(Self {
            server_name,
            key,
            committer: Committer::start(store.clone(), last_pos),
            store,
            limits,
            profile_fanout: profile::ProfileFanout::default(),
            notifier: Arc::new(Notifier::default()),
            rooms: RwLock::new(rooms),
            user_rooms: Arc::new(RwLock::new(user_rooms)),
            next_state_group: AtomicU64::new(next_group),
            creating: parking_lot::Mutex::new(HashSet::new()),
            event_cache: Arc::new(EventCache::new(EVENT_CACHE_ENTRIES, EVENT_CACHE_BYTES)),
            on_membership: Arc::new(std::sync::OnceLock::new()),
            ignore_lists: ignore::IgnoreLists::default(),
        })
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    pub fn get(&self, room_id: &RoomId) -> Option<Arc<Room>> {
        self.rooms.read().get(room_id).cloned()
    }

    /// Rooms the user has (or had) a membership in.
    /// The rooms with events after stream position `pos` (their last position is later).
    pub fn rooms_changed_after(&self, pos: u64) -> Vec<Arc<Room>> {
        self.rooms.read().values().filter(|r| r.last_pos() > pos).cloned().collect()
    }

    pub fn rooms_of(&self, user: &UserId) -> Vec<Arc<Room>> {
        let ids: Vec<OwnedRoomId> = self
            .user_rooms
            .read()
            .get(user)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let rooms = self.rooms.read();
        ids.iter().filter_map(|id| rooms.get(id).cloned()).collect()
    }

    /// Everyone joined to a room `user` is joined to (`user` excluded).
    pub fn sharing_a_room_with(&self, user: &UserId) -> Vec<OwnedUserId> {
        let mut users = HashSet::new();
        for room in self.rooms_of(user) {
            let members = room.members();
            if members.get(user).is_some_and(|m| m == "join") {
                users.extend(
                    members.iter().filter(|(_, m)| m.as_str() == "join").map(|(u, _)| u.clone()),
                );
            }
        }
        users.remove(user);
        users.into_iter().collect()
    }

    /// Whether `a` and `b` are both joined to some room (looks at `a`'s rooms only).
    pub fn share_a_room(&self, a: &UserId, b: &UserId) -> bool {
        self.rooms_of(a).iter().any(|room| {
            let members = room.members();
            members.get(a).is_some_and(|m| m == "join")
                && members.get(b).is_some_and(|m| m == "join")
        })
    }

    /// Says what runs when someone's membership of a room changes to or from `join` (set
    /// once at start-up; it runs in the committer, so it must be quick and must not wait).
    pub fn set_on_membership(&self, on_membership: OnMembership) {
        let _ = self.on_membership.set(on_membership);
    }

    /// Creates a room: the create event, then `events` in order, each auth-checked.
    /// Returns the room ID.
    pub async fn create(
        &self,
        creator: &UserId,
        version: RoomVersionId,
        create_content: serde_json::Value,
        events: Vec<NewEvent>,
    ) -> Result<OwnedRoomId> {
        let rules = version
            .rules()
            .ok_or_else(|| Error::Internal(format!("no rules for room version {version}")))?;
        let mut ts: u64 = MilliSecondsSinceUnixEpoch::now().get().into();
        // From v12 a room's ID is its create event's hash: two identical createRoom requests
        // in the same millisecond would make the same room. The ID is reserved before
        // anything is written, and a taken one moves the timestamp on by a millisecond.
        let pdu = loop {
            let origin_server_ts = MilliSecondsSinceUnixEpoch(
                ruma::UInt::try_from(ts).map_err(|e| Error::Internal(format!("clock: {e}")))?,
            );
            let pdu =
                self.build_create_event(creator, &rules, &create_content, origin_server_ts)?;
            let rooms = self.rooms.read();
            let mut creating = self.creating.lock();
            if !rooms.contains_key(&pdu.room_id) && creating.insert(pdu.room_id.clone()) {
                break pdu;
            }
            ts += 1;
        };
        let room_id = pdu.room_id.clone();
        let result = self.create_reserved(creator, version, rules, pdu, events).await;
        self.creating.lock().remove(&room_id);
        result
    }

    fn build_create_event(
        &self,
        creator: &UserId,
        rules: &RoomVersionRules,
        create_content: &serde_json::Value,
        origin_server_ts: MilliSecondsSinceUnixEpoch,
    ) -> Result<Pdu> {
        let random_room_id: Option<OwnedRoomId> = match rules.room_id_format {
            ruma::room_version_rules::RoomIdFormatVersion::V1 => {
                let local = crate::services::tokens::random_string(
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                    18,
                );
                Some(
                    format!("!{local}:{}", self.server_name)
                        .try_into()
                        .map_err(|e| Error::Internal(format!("room ID: {e}")))?,
                )
            }
            _ => None,
        };
        let create_event =
            NewEvent::state(TimelineEventType::RoomCreate, "", create_content.clone());
        let pdu = pdu::build(
            &create_event,
            &PduContext {
                rules,
                room_id: random_room_id.as_deref(),
                server_name: &self.server_name,
                key: self.key.pair(),
                sender: creator,
                prev_events: &[],
                auth_events: &[],
                depth: 1,
                origin_server_ts,
            },
        )?;
        ruma::state_res::check_state_independent_auth_rules(
            &rules.authorization,
            &pdu,
            |_: &EventId| None::<&Pdu>,
        )
        .map_err(|e| Error::Forbidden(format!("Create event refused: {e}")))?;
        Ok(pdu)
    }

    /// Writes a new room whose ID the caller reserved.
    async fn create_reserved(
        &self,
        creator: &UserId,
        version: RoomVersionId,
        rules: RoomVersionRules,
        pdu: Pdu,
        events: Vec<NewEvent>,
    ) -> Result<OwnedRoomId> {
        let origin_server_ts = pdu.origin_server_ts;
        let room_id = pdu.room_id.clone();
        let pdu = Arc::new(pdu);
        let mut state = StateMap::new();
        state.insert((StateEventType::RoomCreate, String::new()), pdu.clone());
        let group_id = self.next_state_group.fetch_add(1, Ordering::Relaxed);
        let group = state::next_group(None, 0, &state, &pdu);
        let head = RoomHead {
            forward_extremities: vec![pdu.event_id.to_string()],
            depth: 1,
            state_group: group_id,
            last_pos: 0,
        };
        let write = EventWrite {
            event_id: pdu.event_id.to_string(),
            room_id: room_id.to_string(),
            pdu: pdu.json.clone(),
            origin_server_ts: origin_server_ts.get().into(),
            state_group: group_id,
            new_state_group: Some((group_id, group)),
            head: head.clone(),
            room: Some(RoomRecord {
                room_id: room_id.to_string(),
                version: version.to_string(),
                created_ts: origin_server_ts.get().into(),
            }),
            membership: None,
            txn: None,
            redaction: None,
            replaces_state: None,
            state_change: state_change(&pdu),
            search_terms: search::index_terms(&pdu),
            relation: None,
        };
        let view = RoomInner {
            head,
            state: Arc::new(state),
            chain_len: 0,
            members: Arc::new(HashMap::new()),
            space_children: Arc::default(),
        };
        let room = Arc::new(Room {
            id: room_id.clone(),
            version,
            rules,
            write: tokio::sync::Mutex::new(view.clone()),
            inner: RwLock::new(view),
            pending_txns: parking_lot::Mutex::new(HashMap::new()),
            visibility: RwLock::new(Arc::new(Vec::new())),
            membership_changed_at: AtomicU64::new(0),
            pending_annotations: parking_lot::Mutex::new(HashSet::new()),
            recent: RwLock::new(recent::Recent::new(0)),
        });
        // Build and check every initial event first: a refused one (a bad power-level
        // override, say) leaves no half-created room behind. Then one request writes all.
        let mut builder = room.write.lock().await;
        let create_id = write.event_id.clone();
        let mut writes = vec![write];
        let applied = room.clone();
        let mut applies: Vec<commit::Apply> = vec![Box::new(move |pos| {
            applied.recent.write().push(pos, create_id);
            applied.inner.write().head.last_pos = pos;
        })];
        for (i, event) in events.into_iter().enumerate() {
            // Building, signing and auth-checking is CPU work (about a millisecond per event
            // in a debug build): a room at the createRoom caps hands the worker back to other
            // tasks between slices. Nobody else can hold this lock: the room is not listed yet.
            if i % 32 == 31 {
                tokio::task::yield_now().await;
            }
            let prepared = self.prepare(&room, &mut builder, creator, event, None, None)?;
            writes.push(prepared.write);
            applies.push(prepared.apply);
        }
        let n = applies.len() as u64;
        let apply_all: commit::Apply = Box::new(move |last| {
            for (i, apply) in applies.into_iter().enumerate() {
                apply(last + 1 + i as u64 - n);
            }
        });
        let pending = self.committer.submit(writes, apply_all)?;
        self.rooms.write().insert(room_id.clone(), room.clone());
        drop(builder);
        pending.wait().await?;
        Ok(room_id)
    }

    /// Appends an event to a room on behalf of `sender`; returns once it is durable. A retried
    /// transaction (`txn`) is answered with the event it created.
    pub async fn append(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        event: NewEvent,
        txn: Option<TxnKey>,
    ) -> Result<OwnedEventId> {
        // A redaction of `m.room.guest_access` ends guest access too: guests leave.
        let guests_could_join = event.kind == TimelineEventType::RoomRedaction
            && self.get(room_id).is_some_and(|r| r.guests_can_join());
        let event_id = self.append_event(room_id, sender, event, txn, false).await?;
        if guests_could_join && self.get(room_id).is_some_and(|r| !r.guests_can_join()) {
            // Boxed: evicting appends leave events through this very function.
            Box::pin(self.evict_guests(room_id)).await;
        }
        Ok(event_id)
    }

    /// Sets a state event (`PUT /state`). Setting what is already set (same sender and
    /// content as the current event of that type and key) creates nothing and returns the
    /// current event's ID, as Synapse does.
    pub async fn set_state(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        event: NewEvent,
    ) -> Result<OwnedEventId> {
        let guest_access = event.kind == TimelineEventType::RoomGuestAccess;
        let event_id = self.append_event(room_id, sender, event, None, true).await?;
        if guest_access {
            self.evict_guests(room_id).await;
        }
        Ok(event_id)
    }

    /// The event a transaction created, once durable: a retry's answer, looked up before
    /// the membership check and the rate limiter so that a retry succeeds after the sender
    /// left or ran out of budget. `None` for a new transaction.
    pub async fn transaction_event(
        &self,
        room_id: &RoomId,
        key: &TxnKey,
    ) -> Result<Option<OwnedEventId>> {
        if let Some(existing) = self.stored_txn(key).await? {
            return Ok(Some(existing));
        }
        let in_flight =
            self.get(room_id).is_some_and(|room| room.pending_txns.lock().contains_key(key));
        if in_flight { Ok(Some(self.wait_for_txn(key).await?)) } else { Ok(None) }
    }

    async fn stored_txn(&self, key: &TxnKey) -> Result<Option<OwnedEventId>> {
        self.store
            .txn_event(key)
            .await?
            .map(|id| id.try_into().map_err(|e| Error::Internal(format!("stored event ID: {e}"))))
            .transpose()
    }

    async fn append_event(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        mut event: NewEvent,
        txn: Option<TxnKey>,
        unchanged_state_is_noop: bool,
    ) -> Result<OwnedEventId> {
        let room = self.get(room_id).ok_or_else(|| Error::NotFound("Unknown room".into()))?;
        redaction::take_redacts_from_content(&mut event)?;
        self.check_canonical_alias(room_id, &event).await?;
        let mut builder = room.write.lock().await;
        if let Some(key) = &txn {
            if let Some(existing) = self.stored_txn(key).await? {
                return Ok(existing);
            }
            if room.pending_txns.lock().contains_key(key) {
                // The first attempt is still on its way to disk: answer once it is there.
                drop(builder);
                return self.wait_for_txn(key).await;
            }
        }
        if unchanged_state_is_noop
            && let Some(state_key) = &event.state_key
            && let Some(current) =
                builder.state.get(&(event.kind.to_string().into(), state_key.clone())).cloned()
            && current.sender == sender
            && current.content_as::<serde_json::Value>().as_ref() == Some(&event.content)
        {
            // Answer only once the current event is durable (it may be in flight).
            self.wait_until_published(&room, &builder).await?;
            return Ok(current.event_id.clone());
        }
        let target = match &event.redacts {
            Some(redacts) => Some(self.redaction_target(&room, &builder, sender, redacts).await?),
            None => None,
        };
        let annotation = self.check_relation(&room, sender, &event).await?;
        let mut prepared =
            self.prepare(&room, &mut builder, sender, event, txn.clone(), target.as_ref())?;
        if let Some(key) = txn {
            room.pending_txns.lock().insert(key, prepared.event_id.clone());
        }
        if let Some(id) = annotation {
            room.pending_annotations.lock().insert(id.clone());
            let (applied, apply) = (room.clone(), prepared.apply);
            prepared.apply = Box::new(move |pos| {
                applied.pending_annotations.lock().remove(&id);
                apply(pos);
            });
        }
        let pending = self.committer.submit(vec![prepared.write], prepared.apply)?;
        // The next event of this room can be built while this one is written.
        drop(builder);
        pending.wait().await?;
        Ok(prepared.event_id)
    }

    /// Waits until `room` has an event after `after`, or `deadline` passes (a room peek's
    /// long-poll, `GET /events`). Woken by the committer's position, and re-checks at least
    /// every quarter second in case the room's view is published just after it.
    pub async fn wait_for_room_event(
        &self,
        room: &Room,
        after: u64,
        deadline: tokio::time::Instant,
    ) {
        let mut position = self.committer.subscribe();
        while room.last_pos() <= after && tokio::time::Instant::now() < deadline {
            let tick =
                (tokio::time::Instant::now() + std::time::Duration::from_millis(250)).min(deadline);
            tokio::select! {
                changed = position.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep_until(tick) => {}
            }
        }
    }

    /// Waits until an in-flight transaction's event is durable and returns its ID.
    async fn wait_for_txn(&self, key: &TxnKey) -> Result<OwnedEventId> {
        let mut position = self.committer.subscribe();
        loop {
            if let Some(existing) = self.stored_txn(key).await? {
                return Ok(existing);
            }
            position
                .changed()
                .await
                .map_err(|_| Error::Internal("event committer stopped".into()))?;
        }
    }

    /// Waits until the room's published view has caught up with the builder's (every event
    /// built so far is durable and visible). The caller holds the builder lock, so no new
    /// event is built meanwhile.
    async fn wait_until_published(&self, room: &Room, builder: &RoomInner) -> Result<()> {
        let mut position = self.committer.subscribe();
        while room.inner.read().head.forward_extremities != builder.head.forward_extremities {
            position
                .changed()
                .await
                .map_err(|_| Error::Internal("event committer stopped".into()))?;
        }
        Ok(())
    }

    /// The send path proper: builds, signs and auth-checks an event against the builder's
    /// view and advances that view. The caller holds `room.write` and submits the result.
    /// A redaction comes with its checked `target` ([`Rooms::redaction_target`]); one
    /// without is refused.
    fn prepare(
        &self,
        room: &Arc<Room>,
        builder: &mut RoomInner,
        sender: &UserId,
        event: NewEvent,
        txn: Option<TxnKey>,
        target: Option<&Target>,
    ) -> Result<Prepared> {
        let inner = builder.clone();
        let rules = &room.rules;
        let content_raw = to_raw_value(&event.content)
            .map_err(|e| Error::BadJson(format!("Invalid content: {e}")))?;
        let auth_types = ruma::state_res::auth_types_for_event(
            &event.kind,
            sender,
            event.state_key.as_deref(),
            &content_raw,
            &rules.authorization,
        )
        .map_err(|e| Error::BadJson(format!("Invalid event: {e}")))?;
        let mut auth_events: Vec<OwnedEventId> = Vec::new();
        let mut auth_map: HashMap<OwnedEventId, PduRef> = HashMap::new();
        for k in auth_types {
            if let Some(p) = inner.state.get(&k) {
                if !auth_map.contains_key(&p.event_id) {
                    auth_events.push(p.event_id.clone());
                }
                auth_map.insert(p.event_id.clone(), p.clone());
            }
        }
        if !rules.authorization.room_create_event_id_as_room_id {
            // Before v12 the create event is always an auth event; v12 forbids listing it.
            if let Some(create) = inner.state.get(&(StateEventType::RoomCreate, String::new()))
                && !auth_map.contains_key(&create.event_id)
            {
                auth_events.push(create.event_id.clone());
                auth_map.insert(create.event_id.clone(), create.clone());
            }
        } else if let Some(create) = inner.state.get(&(StateEventType::RoomCreate, String::new())) {
            auth_map.insert(create.event_id.clone(), create.clone());
            auth_events.retain(|id| id != &create.event_id);
        }
        let prev_events: Vec<OwnedEventId> = inner
            .head
            .forward_extremities
            .iter()
            .filter_map(|id| OwnedEventId::try_from(id.as_str()).ok())
            .collect();
        let pdu = pdu::build(
            &event,
            &PduContext {
                rules,
                room_id: Some(&room.id),
                server_name: &self.server_name,
                key: self.key.pair(),
                sender,
                prev_events: &prev_events,
                auth_events: &auth_events,
                depth: inner.head.depth + 1,
                origin_server_ts: MilliSecondsSinceUnixEpoch::now(),
            },
        )?;

        ruma::state_res::check_state_independent_auth_rules(
            &rules.authorization,
            &pdu,
            |id: &EventId| auth_map.get(id).map(|p| p.as_ref()),
        )
        .map_err(|e| Error::Forbidden(format!("Event refused by the auth rules: {e}")))?;
        ruma::state_res::check_state_dependent_auth_rules(
            &rules.authorization,
            &pdu,
            |kind: &StateEventType, key: &str| {
                inner.state.get(&(kind.clone(), key.to_owned())).map(|p| p.as_ref())
            },
        )
        .map_err(|e| Error::Forbidden(format!("Event refused by the auth rules: {e}")))?;
        let target = match (&pdu.redacts, target) {
            (None, None) if pdu.kind != TimelineEventType::RoomRedaction => None,
            (Some(redacts), Some(target)) if *redacts == target.event_id => Some(target),
            _ => return Err(Error::NotFound("Event not found".into())),
        };

        let pdu = Arc::new(pdu);
        let event_id = pdu.event_id.clone();
        let replaces_state = pdu.state_key.as_ref().and_then(|key| {
            let k: StateKey = (pdu.kind.to_string().into(), key.clone());
            inner.state.get(&k).map(|p| p.event_id.to_string())
        });
        let (mut state, state_group, new_group, chain_len) = match &pdu.state_key {
            Some(key) => {
                let mut state = (*inner.state).clone();
                let k: StateKey = (pdu.kind.to_string().into(), key.clone());
                state.insert(k, pdu.clone());
                let group =
                    state::next_group(Some(inner.head.state_group), inner.chain_len, &state, &pdu);
                let id = self.next_state_group.fetch_add(1, Ordering::Relaxed);
                let chain = group.chain_len;
                (Arc::new(state), id, Some((id, group)), chain)
            }
            None => (inner.state.clone(), inner.head.state_group, None, inner.chain_len),
        };
        // A redacted current-state event is replaced by its redacted form in the cache.
        if let Some(Target { event_id, state_key: Some((kind, key)), redacted, .. }) = target {
            let k: StateKey = (kind.as_str().into(), key.clone());
            if state.get(&k).is_some_and(|current| current.event_id == *event_id) {
                Arc::make_mut(&mut state).insert(k, redacted.clone());
            }
        }
        let membership = if pdu.kind == TimelineEventType::RoomMember {
            let m: Option<serde_json::Value> = pdu.content_as();
            let m = m
                .and_then(|c| c.get("membership").and_then(|v| v.as_str()).map(str::to_owned))
                .ok_or_else(|| Error::BadJson("m.room.member without membership".into()))?;
            Some((pdu.state_key.clone().unwrap_or_default(), m))
        } else {
            None
        };
        // A member event that keeps the membership (a profile change) changes nothing the
        // state-change index is read for: it gets no row, so the index grows with real
        // membership changes only.
        let same_membership = membership.as_ref().is_some_and(|(user, m)| {
            UserId::parse(user.as_str()).is_ok_and(|u| inner.members.get(&u) == Some(m))
        });
        let head = RoomHead {
            forward_extremities: vec![event_id.to_string()],
            depth: inner.head.depth + 1,
            state_group,
            last_pos: 0,
        };
        let redacted_target = target.as_ref().map(|t| t.event_id.clone());
        let write = EventWrite {
            event_id: event_id.to_string(),
            room_id: room.id.to_string(),
            pdu: pdu.json.clone(),
            origin_server_ts: pdu.origin_server_ts.get().into(),
            state_group,
            new_state_group: new_group,
            head: head.clone(),
            room: None,
            membership: membership.clone(),
            txn,
            redaction: target.map(|t| RedactionWrite {
                target: t.event_id.to_string(),
                redacted_pdu: t.redacted.json.clone(),
                search_terms: t.search_terms.clone(),
                relation: t.relation.clone(),
            }),
            replaces_state,
            state_change: if same_membership { None } else { state_change(&pdu) },
            search_terms: search::index_terms(&pdu),
            relation: relations::relation_write(&pdu),
        };
        let membership_changed = membership.is_some() && !same_membership;
        let visibility_change = match (&pdu.kind, pdu.state_key.as_deref()) {
            (TimelineEventType::RoomHistoryVisibility, Some("")) => {
                Some(Visibility::parse(state_value(&pdu.kind, &pdu.content).as_deref()))
            }
            _ => None,
        };
        // Joined now but not before, or the reverse (for `on_membership`).
        let join_change = match &membership {
            Some((user, m)) if membership_changed => {
                OwnedUserId::try_from(user.as_str()).ok().and_then(|user| {
                    let was = inner.members.get(&user).is_some_and(|m| m == "join");
                    (was != (m == "join")).then_some((user, m == "join"))
                })
            }
            _ => None,
        };
        let mut members = inner.members.clone();
        let mut new_member = None;
        if let Some((user, m)) = &membership
            && let Ok(user) = OwnedUserId::try_from(user.as_str())
        {
            Arc::make_mut(&mut members).insert(user.clone(), m.clone());
            new_member = Some(user);
        }
        let txn_key = write.txn.clone();
        let mut space_children = inner.space_children.clone();
        if pdu.kind == TimelineEventType::SpaceChild
            && let Some(key) = &pdu.state_key
            && !space_children.contains(key)
        {
            Arc::make_mut(&mut space_children).insert(key.clone());
        }
        let view = RoomInner { head, state, chain_len, members: members.clone(), space_children };
        *builder = view.clone();

        // Members with any membership: joined users see the event; invitees and leavers
        // see their own membership change.
        let wake: Vec<OwnedUserId> = members
            .iter()
            .filter(|(u, m)| {
                m.as_str() == "join"
                    || membership.as_ref().is_some_and(|(target, _)| target == u.as_str())
            })
            .map(|(u, _)| u.clone())
            .collect();

        // Once durable, and before the position is visible: update the published caches
        // and announce the event to the members' pending syncs (announced before published,
        // so a sync that sees the position has been told; see `notify`).
        let (applied, user_rooms) = (room.clone(), self.user_rooms.clone());
        let notifier = self.notifier.clone();
        let (event_cache, redacted_target) = (self.event_cache.clone(), redacted_target);
        let on_membership = self.on_membership.clone();
        // The event as the store keeps it, for the event cache: the members' syncs that
        // this event wakes read it from memory.
        let cached = SharedEvent {
            record: Arc::new(EventRecord {
                room_id: write.room_id.clone(),
                pos: 0,
                state_group: write.state_group,
                pdu: write.pdu.clone(),
                redacted_by: None,
                txn: write.txn.as_ref().map(|t| (t.device_id.clone(), t.txn_id.clone())),
                replaces_state: write.replaces_state.clone(),
            }),
            pdu: pdu.clone(),
        };
        let relates_to = write.relation.as_ref().map(|r| r.parent.clone());
        let apply: commit::Apply = Box::new(move |pos| {
            if let Some(target) = &redacted_target {
                event_cache.redacted(target);
            }
            let mut cached = cached;
            Arc::make_mut(&mut cached.record).pos = pos;
            let event_id = cached.pdu.event_id.clone();
            event_cache.events.insert(event_id.clone(), cached);
            {
                let mut recent = applied.recent.write();
                if let Some(parent) = &relates_to {
                    recent.mark_related(parent);
                }
                recent.push(pos, event_id.to_string());
            }
            if let Some(user) = new_member {
                user_rooms.write().entry(user).or_default().insert(applied.id.clone());
            }
            if let Some(key) = txn_key {
                applied.pending_txns.lock().remove(&key);
            }
            if let Some(v) = visibility_change {
                let mut history = applied.visibility.write();
                Arc::make_mut(&mut history).push((pos, v));
            }
            if membership_changed {
                applied.membership_changed_at.store(pos, Ordering::Release);
            }
            {
                let mut published = applied.inner.write();
                *published = view;
                published.head.last_pos = pos;
            }
            if let (Some((user, joined)), Some(hook)) = (&join_change, on_membership.get()) {
                hook(&applied.id, user, *joined);
            }
            let change = notify::Change::room(notify::Stream::Events, &applied.id, pos);
            notifier.wake(wake.iter().map(|u| u.as_ref()), change);
        });

        metrics::counter!("axon_events_created_total").increment(1);
        Ok(Prepared { event_id, write, apply })
    }

    /// The room's state after its last event at or before stream position `pos`.
    pub async fn state_at(&self, room: &Room, pos: u64) -> Result<Arc<StateMap>> {
        if pos >= room.last_pos() {
            return Ok(room.state());
        }
        match state::group_at(self.store.as_ref(), room.id.as_str(), pos).await? {
            Some(group) => Ok(Arc::new(state::load_group(self.store.as_ref(), group).await?)),
            None => Ok(Arc::new(StateMap::new())),
        }
    }

    /// The room's state `(type, key) → event_id` after its last event at or before `pos`.
    pub async fn state_ids_at(&self, room: &Room, pos: u64) -> Result<HashMap<StateKey, String>> {
        match state::group_at(self.store.as_ref(), room.id.as_str(), pos).await? {
            Some(group) => state::group_ids(self.store.as_ref(), group).await,
            None => Ok(HashMap::new()),
        }
    }

    /// The state `(type, key) → event_id` of a state group (the state after an event).
    pub async fn state_ids_of_group(&self, group: u64) -> Result<HashMap<StateKey, String>> {
        state::group_ids(self.store.as_ref(), group).await
    }

    /// Every room the user has a membership in, with it (from storage).
    pub async fn memberships_of(
        &self,
        user: &UserId,
    ) -> Result<HashMap<String, crate::storage::rooms::MembershipRecord>> {
        Ok(self.store.user_memberships(user.as_str()).await?.into_iter().collect())
    }

    /// Loads a stored event of a room, or `None`.
    pub async fn event(&self, event_id: &str) -> Result<Option<(EventRecord, Pdu)>> {
        Ok(self
            .shared_event(event_id)
            .await?
            .map(|e| (Arc::unwrap_or_clone(e.record), Arc::unwrap_or_clone(e.pdu))))
    }

    /// Loads a stored event of a room, or `None`, shared with the event cache: what the
    /// hot paths (sync, unread counts) use, as a copy of an event costs more than reading it.
    pub async fn shared_event(&self, event_id: &str) -> Result<Option<SharedEvent>> {
        let Ok(id) = OwnedEventId::try_from(event_id) else {
            return Ok(None);
        };
        if let Some(cached) = self.event_cache.events.get(&id) {
            return Ok(Some(cached));
        }
        let redactions = self.event_cache.redactions.load(Ordering::SeqCst);
        let Some(record) = self.store.event(event_id).await? else {
            return Ok(None);
        };
        let room: OwnedRoomId = record
            .room_id
            .as_str()
            .try_into()
            .map_err(|e| Error::Internal(format!("stored room ID: {e}")))?;
        let pdu = Pdu::from_json(record.pdu.clone(), &id, &room)?;
        let entry = SharedEvent { record: Arc::new(record), pdu: Arc::new(pdu) };
        self.event_cache.events.insert(id.clone(), entry.clone());
        if self.event_cache.redactions.load(Ordering::SeqCst) != redactions {
            self.event_cache.events.remove(&id);
        }
        Ok(Some(entry))
    }

    /// The IDs of the room's events at positions in `(after, before)` (either bound open),
    /// oldest first (`reverse`: newest first), at most `limit`: from the room's recent
    /// events in memory when they cover the range, otherwise from storage.
    pub async fn room_events(
        &self,
        room: &Room,
        after: Option<u64>,
        before: Option<u64>,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(u64, String)>> {
        if let Some(events) = room.recent.read().range(after, before, reverse, limit) {
            metrics::counter!("axon_room_events_reads_total", "from" => "memory").increment(1);
            return Ok(events);
        }
        metrics::counter!("axon_room_events_reads_total", "from" => "storage").increment(1);
        Ok(self.store.room_events(room.id.as_str(), after, before, reverse, limit).await?)
    }
}

/// A room's history-visibility changes from the state-change index; rooms written before
/// the index existed get it built first, from their timeline.
async fn load_visibility(store: &dyn Store, room_id: &RoomId) -> Result<VisibilityHistory> {
    if store.state_changes(room_id.as_str(), "m.room.create", "").await?.is_empty() {
        index_state_changes(store, room_id).await?;
    }
    let changes = store.state_changes(room_id.as_str(), "m.room.history_visibility", "").await?;
    Ok(Arc::new(
        changes
            .into_iter()
            .map(|(pos, change)| (pos, Visibility::parse(change.value.as_deref())))
            .collect(),
    ))
}

/// Builds the state-change index of a room from its timeline (a one-time migration).
async fn index_state_changes(store: &dyn Store, room_id: &RoomId) -> Result<()> {
    let mut after = None;
    let mut entries = Vec::new();
    let mut last_value: HashMap<(String, String), Option<String>> = HashMap::new();
    loop {
        let batch = store.room_events(room_id.as_str(), after, None, false, 1024).await?;
        let Some((last, _)) = batch.last() else { break };
        after = Some(*last);
        for (pos, event_id) in batch {
            let pdu = state::load_pdu(store, &event_id).await?;
            if let Some(change) = state_change(&pdu) {
                // As when events are written: a member event keeping the membership adds
                // no row.
                let key = (change.kind.clone(), change.state_key.clone());
                let value = change.change.value.clone();
                let is_member = change.kind == "m.room.member";
                if is_member && last_value.get(&key) == Some(&value) {
                    continue;
                }
                last_value.insert(key, value);
                entries.push((pos, change));
            }
        }
    }
    tracing::info!(room_id = %room_id, entries = entries.len(), "indexed the room's state changes");
    store.index_state_changes(room_id.as_str(), entries).await?;
    Ok(())
}

/// The state keys of the `m.space.child` events in `state` (once, when a room is loaded).
fn space_child_keys(state: &StateMap) -> BTreeSet<String> {
    state
        .keys()
        .filter(|(kind, _)| *kind == StateEventType::SpaceChild)
        .map(|(_, key)| key.clone())
        .collect()
}
