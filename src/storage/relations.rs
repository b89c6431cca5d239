//! The relations index: which events relate to which (`m.relates_to` with a `rel_type`),
//! written in the relating event's batch and removed in the batch of its redaction, and the
//! per-thread summaries (`/threads`, the `m.thread` aggregation) kept with it.

use serde::{Deserialize, Serialize};

use super::StorageResult;

/// One relating event, as the index keeps it (enough to aggregate without loading it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelationRow {
    pub event_id: String,
    pub rel_type: String,
    /// The relating event's type.
    #[serde(rename = "type")]
    pub kind: String,
    pub sender: String,
    pub origin_server_ts: u64,
    /// An `m.replace` whose content has `m.new_content` (or is encrypted).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub new_content: bool,
}

/// A relation to index (with a new event) or to remove (with a redaction of its event).
#[derive(Debug, Clone, PartialEq)]
pub struct RelationWrite {
    /// The related-to event.
    pub parent: String,
    pub row: RelationRow,
    /// For annotations: the key that must be unique per (parent, type, key, sender).
    pub annotation_key: Option<String>,
    /// An `m.thread` relation: `parent` is a thread root whose summary moves.
    pub thread: bool,
}

/// What the index knows of a thread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadSummary {
    /// Position and ID of the thread's latest reply.
    pub latest_pos: u64,
    pub latest_event_id: String,
    /// Replies (`m.thread` relations) to the root.
    pub count: u64,
}

/// The index rows one event's aggregations are computed from.
#[derive(Debug, Clone, Default)]
pub struct AggregationRows {
    /// `m.replace` relations (the newest, at most the cap asked for), newest first.
    pub replaces: Vec<(u64, RelationRow)>,
    /// `m.reference` relations (at most the cap asked for), oldest first.
    pub references: Vec<(u64, RelationRow)>,
    pub thread: Option<ThreadSummary>,
    /// The user asked about sent a reply in the thread.
    pub participated: bool,
}

pub trait RelationStore: Send + Sync {
    /// Relations to `parent` (of type `rel_type`, or all) strictly between the stream
    /// positions `after` and `before`, newest first when `backwards`; at most `limit`.
    #[allow(clippy::too_many_arguments)]
    fn relations(
        &self,
        room_id: &str,
        parent: &str,
        rel_type: Option<&str>,
        after: Option<u64>,
        before: Option<u64>,
        backwards: bool,
        limit: usize,
    ) -> StorageResult<Vec<(u64, RelationRow)>>;

    /// The event that annotated `parent` with (type, key) by `sender`, if any.
    fn annotation(
        &self,
        room_id: &str,
        parent: &str,
        kind: &str,
        key: &str,
        sender: &str,
    ) -> StorageResult<Option<String>>;

    /// What aggregating `parent` for `user` needs, reading at most `cap` rows per kind.
    fn aggregation_rows(
        &self,
        room_id: &str,
        parent: &str,
        user: &str,
        cap: usize,
    ) -> StorageResult<AggregationRows>;

    /// The thread rooted at `root`, if it has replies.
    fn thread(&self, room_id: &str, root: &str) -> StorageResult<Option<ThreadSummary>>;

    /// Whether `user` replied in the thread.
    fn thread_participant(&self, room_id: &str, root: &str, user: &str) -> StorageResult<bool> {
        Ok(self.thread_replies_by(room_id, root, user)? > 0)
    }

    /// How many replies `user` has in the thread (not redacted).
    fn thread_replies_by(&self, room_id: &str, root: &str, user: &str) -> StorageResult<u64>;

    /// Threads by latest activity, newest first: `(latest reply position, root)` with that
    /// position strictly below `before`; at most `limit`.
    fn threads(
        &self,
        room_id: &str,
        before: Option<u64>,
        limit: usize,
    ) -> StorageResult<Vec<(u64, String)>>;
}
