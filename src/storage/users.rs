//! Per-user data: filters, account data (global and per room).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::StorageResult;

/// One account-data entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountDataRecord {
    /// `None` for global account data.
    pub room_id: Option<String>,
    pub kind: String,
    pub content: Box<RawValue>,
    /// Position in the account-data stream (the second part of sync tokens).
    pub pos: u64,
}

#[async_trait]
pub trait UserDataStore: Send + Sync {
    /// Stores a filter definition (JSON) and returns its ID, unique per user. An identical
    /// definition already stored is not stored again: its ID is returned. A new one beyond
    /// `max_filters` stored filters fails with [`super::StorageError::TooMany`].
    async fn create_filter(
        &self,
        user_id: &str,
        definition: String,
        max_filters: usize,
    ) -> StorageResult<u64>;

    async fn filter(&self, user_id: &str, id: u64) -> StorageResult<Option<String>>;

    /// Sets (replaces) one account-data entry. A new type beyond `max_types` types in the
    /// entry's scope (global, or its room) fails with [`super::StorageError::TooMany`].
    async fn set_account_data(
        &self,
        user_id: &str,
        record: AccountDataRecord,
        max_types: usize,
    ) -> StorageResult<()>;

    /// Every account-data entry of a user.
    async fn account_data(&self, user_id: &str) -> StorageResult<Vec<AccountDataRecord>>;

    /// One account-data entry (`room_id` `None`: global).
    async fn account_data_entry(
        &self,
        user_id: &str,
        room_id: Option<&str>,
        kind: &str,
    ) -> StorageResult<Option<AccountDataRecord>>;

    /// The highest account-data position stored.
    async fn max_account_data_pos(&self) -> StorageResult<u64>;

    /// Sets a user's profile fields (`None` leaves a field as it is; `Some(None)` clears it).
    async fn set_profile(
        &self,
        localpart: &str,
        displayname: Option<Option<String>>,
        avatar_url: Option<Option<String>>,
    ) -> StorageResult<()>;
}
