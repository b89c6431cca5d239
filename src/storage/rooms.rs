//! Room storage: events (the DAG), their stream positions, state groups, memberships,
//! transaction IDs and aliases.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::StorageResult;

/// What never changes about a room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomRecord {
    pub room_id: String,
    pub version: String,
    pub created_ts: u64,
}

/// The moving tip of a room's DAG, rewritten with every event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomHead {
    pub forward_extremities: Vec<String>,
    pub depth: u64,
    /// The state group of the room's current state.
    pub state_group: u64,
    /// Stream position of the room's latest event.
    pub last_pos: u64,
}

/// One stored event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventRecord {
    pub room_id: String,
    /// Global stream position (the sync token's backbone; orders each room's timeline).
    pub pos: u64,
    /// State group of the room's state *after* this event.
    pub state_group: u64,
    /// The signed PDU, byte for byte; once redacted, its redacted form (the room version's
    /// redaction algorithm applied: hashes and signatures kept, so federation can still
    /// serve and verify it; the original content is gone).
    pub pdu: Box<RawValue>,
    /// The redaction that redacted this event (the first one, if several did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted_by: Option<String>,
    /// `(device_id, txn_id)` the sender used, echoed to that device as
    /// `unsigned.transaction_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<(String, String)>,
    /// The state event this one replaced (same type and state key), for `prev_content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces_state: Option<String>,
}

/// A state group: a full snapshot (no `prev`) or a delta on `prev`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateGroupRecord {
    pub prev: Option<u64>,
    /// Number of deltas between this group and its snapshot (0 for a snapshot).
    pub chain_len: u32,
    /// `(type, state_key, event_id)` entries; for a delta, the entries that changed.
    pub entries: Vec<(String, String, String)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MembershipRecord {
    /// `join`, `invite`, `leave`, `ban` or `knock`.
    pub membership: String,
    /// The latest member event of the user (a profile change is one too).
    pub event_id: String,
    pub pos: u64,
    /// Where the current membership began: the position of the event that changed it to
    /// `membership`. A later member event with the same membership (a profile change)
    /// keeps it. `None` in records written before it existed: then `pos`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// The user forgot the room (only once they left it).
    #[serde(default)]
    pub forgotten: bool,
}

impl MembershipRecord {
    /// The position where the current membership began.
    pub fn since(&self) -> u64 {
        self.since.unwrap_or(self.pos)
    }
}

/// One state event in the per-key history of a room's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateChange {
    pub event_id: String,
    /// The content field that matters for the event's type (`membership` of a member
    /// event, `history_visibility` of a visibility event), so readers need not load it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// The `(type, state_key)` an event sets, with its [`StateChange`].
#[derive(Debug, Clone, PartialEq)]
pub struct StateChangeWrite {
    pub kind: String,
    pub state_key: String,
    pub change: StateChange,
}

/// A client's transaction ID, scoped as the spec scopes it: to the device and the request
/// path (room and `send/<event type>` or `redact/<event ID>`; no room and
/// `sendToDevice/<event type>`). The same ID in another room,
/// for another event type or on another endpoint is another transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TxnKey {
    pub localpart: String,
    pub device_id: String,
    pub room_id: String,
    /// `send/<event type>`, `redact/<event ID>` or `sendToDevice/<event type>`.
    pub request: String,
    pub txn_id: String,
}

impl TxnKey {
    /// `PUT /rooms/{room_id}/send/{event_type}/{txn_id}`.
    pub fn send(
        localpart: &str,
        device_id: &str,
        room_id: &str,
        event_type: &str,
        txn_id: &str,
    ) -> Self {
        Self::new(localpart, device_id, room_id, format!("send/{event_type}"), txn_id)
    }

    /// `PUT /rooms/{room_id}/redact/{event_id}/{txn_id}`.
    pub fn redact(
        localpart: &str,
        device_id: &str,
        room_id: &str,
        event_id: &str,
        txn_id: &str,
    ) -> Self {
        Self::new(localpart, device_id, room_id, format!("redact/{event_id}"), txn_id)
    }

    /// `PUT /sendToDevice/{event_type}/{txn_id}`: no room (an empty room ID, which no room
    /// has).
    pub fn send_to_device(
        localpart: &str,
        device_id: &str,
        event_type: &str,
        txn_id: &str,
    ) -> Self {
        Self::new(localpart, device_id, "", format!("sendToDevice/{event_type}"), txn_id)
    }

    fn new(localpart: &str, device_id: &str, room_id: &str, request: String, txn_id: &str) -> Self {
        Self {
            localpart: localpart.to_owned(),
            device_id: device_id.to_owned(),
            room_id: room_id.to_owned(),
            request,
            txn_id: txn_id.to_owned(),
        }
    }
}

/// What a redaction does to its target: the stored PDU is replaced by its redacted form.
#[derive(Debug, Clone)]
pub struct RedactionWrite {
    pub target: String,
    pub redacted_pdu: Box<RawValue>,
    /// The target's search-index terms, whose entries the redaction deletes.
    pub search_terms: Vec<String>,
    /// The target's relation (from its original content), removed from the index.
    pub relation: Option<super::relations::RelationWrite>,
}

/// Everything one new event changes, written atomically with the event.
#[derive(Debug, Clone)]
pub struct EventWrite {
    pub event_id: String,
    pub room_id: String,
    pub pdu: Box<RawValue>,
    /// The PDU's `origin_server_ts`, for the timestamp index (`/timestamp_to_event`).
    pub origin_server_ts: u64,
    pub state_group: u64,
    /// A state group this event created.
    pub new_state_group: Option<(u64, StateGroupRecord)>,
    /// The room's head after this event; `last_pos` is filled in at commit.
    pub head: RoomHead,
    /// Set on the create event.
    pub room: Option<RoomRecord>,
    /// `(user_id, membership)` for `m.room.member` events.
    pub membership: Option<(String, String)>,
    pub txn: Option<TxnKey>,
    /// Set on a redaction: its target, already checked to be an event of the same room.
    pub redaction: Option<RedactionWrite>,
    /// The state event this one replaces.
    pub replaces_state: Option<String>,
    /// For state events: the entry in the room's per-key state history.
    pub state_change: Option<StateChangeWrite>,
    /// The event's search-index terms (`rooms::search`) with their counts.
    pub search_terms: Vec<(String, u32)>,
    /// The event's relation (`m.relates_to` with a `rel_type`), for the relations index.
    pub relation: Option<super::relations::RelationWrite>,
}

#[async_trait]
pub trait RoomStore: Send + Sync {
    /// Persists events in order, the i-th at stream position `first_pos + i`, in one
    /// fsynced batch.
    async fn append_events(&self, writes: Vec<EventWrite>, first_pos: u64) -> StorageResult<()>;

    /// The highest state group ID written.
    async fn max_state_group(&self) -> StorageResult<u64>;

    /// Every room with its head (loaded at start-up).
    async fn rooms(&self) -> StorageResult<Vec<(RoomRecord, RoomHead)>>;

    async fn event(&self, event_id: &str) -> StorageResult<Option<EventRecord>>;

    /// Event IDs of a room's timeline strictly between `after` and `before` stream positions,
    /// oldest first when `backwards` is false, newest first when true; at most `limit`.
    async fn room_events(
        &self,
        room_id: &str,
        after: Option<u64>,
        before: Option<u64>,
        backwards: bool,
        limit: usize,
    ) -> StorageResult<Vec<(u64, String)>>;

    /// A room's events by `origin_server_ts` (ties by stream position), as
    /// `(origin_server_ts, pos, event_id)`: those at or after `ts`, oldest first, or with
    /// `backwards` those at or before `ts`, newest first; at most `limit`. One index seek.
    async fn room_events_by_ts(
        &self,
        room_id: &str,
        ts: u64,
        backwards: bool,
        limit: usize,
    ) -> StorageResult<Vec<(u64, u64, String)>>;

    async fn state_group(&self, id: u64) -> StorageResult<Option<StateGroupRecord>>;

    async fn txn_event(&self, txn: &TxnKey) -> StorageResult<Option<String>>;

    /// Every room the user has a membership in, with it.
    async fn user_memberships(
        &self,
        user_id: &str,
    ) -> StorageResult<Vec<(String, MembershipRecord)>>;

    /// One user's membership in one room.
    async fn membership(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> StorageResult<Option<MembershipRecord>>;

    /// Every user with a membership in the room, with it.
    async fn room_memberships(
        &self,
        room_id: &str,
    ) -> StorageResult<Vec<(String, MembershipRecord)>>;

    /// The history of one state key of a room: every event that set it, oldest first, with
    /// its stream position.
    async fn state_changes(
        &self,
        room_id: &str,
        kind: &str,
        state_key: &str,
    ) -> StorageResult<Vec<(u64, StateChange)>>;

    /// Adds entries to a room's state history (for databases written before it existed).
    async fn index_state_changes(
        &self,
        room_id: &str,
        entries: Vec<(u64, StateChangeWrite)>,
    ) -> StorageResult<()>;

    /// Marks a left room as forgotten for the user.
    async fn forget_room(&self, user_id: &str, room_id: &str) -> StorageResult<()>;

    /// Creates an alias; [`super::StorageError::AlreadyExists`] if taken.
    async fn create_alias(&self, alias: &str, room_id: &str, creator: &str) -> StorageResult<()>;

    /// `(room_id, creator)` of an alias.
    async fn alias(&self, alias: &str) -> StorageResult<Option<(String, String)>>;

    async fn delete_alias(&self, alias: &str) -> StorageResult<()>;

    async fn room_aliases(&self, room_id: &str) -> StorageResult<Vec<String>>;

    /// Re-points an alias from `from_room` to `to_room` (keeping its creator) in one write,
    /// only if it still points to `from_room`: [`super::StorageError::NotFound`] otherwise.
    async fn move_alias(&self, alias: &str, from_room: &str, to_room: &str) -> StorageResult<()>;

    /// Publishes a room in (or removes it from) the room directory.
    async fn set_published(&self, room_id: &str, published: bool) -> StorageResult<()>;

    async fn published_rooms(&self) -> StorageResult<Vec<String>>;

    /// Adds search-index entries `(pos, event_id, terms with counts)` of a room's events
    /// (for events stored before the index existed).
    async fn index_search_terms(
        &self,
        room_id: &str,
        entries: Vec<(u64, String, Vec<(String, u32)>)>,
    ) -> StorageResult<()>;

    /// The search index's postings of one term in one room: `(pos, event_id)` of the events
    /// indexed under it below `before` (exclusive), newest first, at most `limit`.
    async fn search_postings(
        &self,
        term: &str,
        room_id: &str,
        before: Option<u64>,
        limit: usize,
    ) -> StorageResult<Vec<(u64, String)>>;
}
