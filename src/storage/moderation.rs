//! Content reports (`/report`) for the server's admins, and OpenID tokens
//! (`/openid/request_token`).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{StorageResult, TokenHash};

/// A report of an event or a room by a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRecord {
    /// Assigned by the store: 1, 2, … in the order reports arrive.
    #[serde(default)]
    pub id: u64,
    pub received_ts: u64,
    pub room_id: String,
    /// The reported event; `None` for a report of the room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The reported event's sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// The reporter.
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<i64>,
}

/// Which reports a listing wants: of events or of rooms, optionally of one reporter or
/// one room, `limit` of them after skipping `from`, oldest first when `forwards`.
#[derive(Debug, Clone, Default)]
pub struct ReportQuery {
    pub events: bool,
    pub user_id: Option<String>,
    pub room_id: Option<String>,
    pub from: usize,
    pub limit: usize,
    pub forwards: bool,
}

impl ReportQuery {
    pub fn selects(&self, r: &ReportRecord) -> bool {
        r.event_id.is_some() == self.events
            && self.user_id.as_ref().is_none_or(|u| *u == r.user_id)
            && self.room_id.as_ref().is_none_or(|room| *room == r.room_id)
    }
}

/// An OpenID token: whose it is and until when it is valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenIdTokenRecord {
    pub user_id: String,
    /// Milliseconds since the UNIX epoch.
    pub expires_ms: u64,
}

#[async_trait]
pub trait ModerationStore: Send + Sync {
    /// Stores a report under the next ID; returns the ID.
    async fn add_report(&self, report: ReportRecord) -> StorageResult<u64>;

    /// A page of the reports `query` selects, and how many it selects in all. Holds at most
    /// a page in memory, however many reports there are.
    async fn reports(&self, query: ReportQuery) -> StorageResult<(Vec<ReportRecord>, usize)>;

    async fn report(&self, id: u64) -> StorageResult<Option<ReportRecord>>;

    /// Deletes a report; `false` if there was none.
    async fn delete_report(&self, id: u64) -> StorageResult<bool>;

    /// Stores an OpenID token (by its hash) and deletes the expired ones before `now_ms`.
    async fn put_openid_token(
        &self,
        hash: TokenHash,
        record: OpenIdTokenRecord,
        now_ms: u64,
    ) -> StorageResult<()>;

    async fn openid_token(&self, hash: &TokenHash) -> StorageResult<Option<OpenIdTokenRecord>>;
}
