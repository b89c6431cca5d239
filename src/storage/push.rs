//! Notifications (what push rules said about an event, per user) and pushers.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StorageResult;

/// One event a user was notified about (`/notifications`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationRecord {
    pub room_id: String,
    pub event_id: String,
    /// The event's stream position (orders a user's notifications; the pagination token).
    pub pos: u64,
    /// When the notification was made, in milliseconds since the UNIX epoch.
    pub ts: u64,
    /// The push rule's actions, as the spec's JSON.
    pub actions: serde_json::Value,
    pub highlight: bool,
    /// The thread root the event belongs to (`None`: the main timeline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
}

/// The notifications one event made: what they share, stored once, and each notified
/// user's part, a few bytes (the push path writes one per member of the room).
#[derive(Debug, Clone, PartialEq)]
pub struct EventNotifications {
    pub room_id: String,
    pub event_id: String,
    /// The event's stream position.
    pub pos: u64,
    /// When the notifications were made, in milliseconds since the UNIX epoch.
    pub ts: u64,
    /// The thread root the event belongs to (`None`: the main timeline).
    pub thread_id: Option<String>,
    pub users: Vec<UserNotification>,
}

/// One user's part of an event's notifications.
#[derive(Debug, Clone, PartialEq)]
pub struct UserNotification {
    pub localpart: String,
    pub highlight: bool,
    /// The push rule's actions, serialised as the spec's JSON (users whose rules gave the
    /// same actions share the bytes).
    pub actions: std::sync::Arc<str>,
}

/// What an event's notifications share, as stored (`notification_events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotifiedEventRecord {
    pub room_id: String,
    pub event_id: String,
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
}

/// A pusher (`/pushers/set`), owned by the device whose access token created it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PusherRecord {
    pub user_id: String,
    /// The device that created it: the pusher goes when the device does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    pub app_id: String,
    pub pushkey: String,
    /// The pusher as `GET /pushers` lists it (kind, data, display names, lang, tag).
    pub pusher: serde_json::Value,
    /// When the pushkey was last set, in milliseconds (`pushkey_ts` in the gateway payload).
    pub pushkey_ts: u64,
}

#[async_trait]
pub trait PushStore: Send + Sync {
    /// Stores the notifications of several events in one batch.
    async fn put_notifications(&self, events: Vec<EventNotifications>) -> StorageResult<()>;

    /// A user's notifications, newest first, before stream position `before` (exclusive).
    async fn notifications(
        &self,
        localpart: &str,
        before: Option<u64>,
        limit: usize,
    ) -> StorageResult<Vec<NotificationRecord>>;

    /// Deletes notifications made before `ts` (milliseconds); returns how many.
    async fn prune_notifications(&self, before_ts: u64) -> StorageResult<u64>;

    /// Stores a pusher (replacing the user's pusher of the same app ID and pushkey); with
    /// `exclusive`, deletes other users' pushers of that app ID and pushkey in the same write.
    async fn put_pusher(
        &self,
        localpart: &str,
        record: PusherRecord,
        exclusive: bool,
    ) -> StorageResult<()>;

    /// Deletes one pusher; `false` if it did not exist.
    async fn delete_pusher(
        &self,
        localpart: &str,
        app_id: &str,
        pushkey: &str,
    ) -> StorageResult<bool>;

    async fn pushers(&self, localpart: &str) -> StorageResult<Vec<PusherRecord>>;

    /// Localparts of every user with at least one pusher.
    async fn pusher_owners(&self) -> StorageResult<Vec<String>>;
}
