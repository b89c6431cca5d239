//! Read receipts: the latest receipt per (room, user, type, thread).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StorageResult;

/// One user's latest receipt of one type (and thread) in a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptRecord {
    pub room_id: String,
    pub user_id: String,
    /// `m.read` or `m.read.private`.
    pub receipt_type: String,
    /// `None`: unthreaded; `main` or a thread root's event ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    pub event_id: String,
    /// Stream position of the event (receipts only move forwards in it).
    pub event_pos: u64,
    /// When the receipt was sent, in milliseconds since the UNIX epoch.
    pub ts: u64,
    /// Position in the receipt stream (the fifth part of sync tokens).
    pub pos: u64,
}

impl ReceiptRecord {
    /// What a newer receipt of the same user replaces: (type, thread).
    pub fn same_slot(&self, other: &ReceiptRecord) -> bool {
        self.room_id == other.room_id
            && self.user_id == other.user_id
            && self.receipt_type == other.receipt_type
            && self.thread_id == other.thread_id
    }
}

#[async_trait]
pub trait ReceiptStore: Send + Sync {
    /// Stores receipts (each replacing the one of its slot) and deletes `removed` ones, in
    /// one batch.
    async fn put_receipts(
        &self,
        receipts: Vec<ReceiptRecord>,
        removed: Vec<ReceiptRecord>,
    ) -> StorageResult<()>;

    /// Every receipt of a room (one prefix scan).
    async fn room_receipts(&self, room_id: &str) -> StorageResult<Vec<ReceiptRecord>>;

    /// The highest receipt position written.
    async fn max_receipt_pos(&self) -> StorageResult<u64>;

    /// Turns the read positions of older databases (private, unthreaded) into
    /// `m.read.private` receipts, at positions after `after`, and deletes them, in one
    /// batch. Returns how many were moved (0 once done).
    async fn migrate_read_positions(&self, after: u64) -> StorageResult<u64>;
}
