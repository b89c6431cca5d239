//! Server-side key backups: a user's backup versions and the room keys stored in each.
//!
//! Storage only keeps the bookkeeping (a version's `count` and `etag`); which of two keys
//! for one session is kept is the service's rule, passed in as [`KeepExisting`].

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::StorageResult;

/// One backup version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupVersionRecord {
    /// `{"algorithm": …, "auth_data": …}` as the client sent it.
    pub algorithm: Box<RawValue>,
    /// Number of keys stored in this version.
    pub count: u64,
    /// Bumped whenever the version's keys change.
    pub etag: u64,
}

/// One session's key to store: room ID, session ID, `KeyBackupData` JSON.
#[derive(Debug, Clone)]
pub struct BackupKey {
    pub room_id: String,
    pub session_id: String,
    pub data: Box<RawValue>,
}

/// Which keys of a version a read or a deletion covers.
#[derive(Debug, Clone, Copy)]
pub enum BackupKeyScope<'a> {
    All,
    Room(&'a str),
    Session(&'a str, &'a str),
}

/// Decides, given the stored key of a session and a new one, whether the stored one stays.
pub type KeepExisting = Box<dyn Fn(&RawValue, &RawValue) -> bool + Send + Sync>;

/// Each user's versions are numbered from 1 upwards and numbers are never reused, even after
/// the newest version is deleted. Callers serialise the writes of one user's backup (the
/// methods read, then write).
#[async_trait]
pub trait KeyBackupStore: Send + Sync {
    /// Creates the next version of a user's backup and returns its number.
    async fn create_backup_version(
        &self,
        user_id: &str,
        algorithm: Box<RawValue>,
    ) -> StorageResult<u64>;

    /// One version; `None` when it does not exist or was deleted.
    async fn backup_version(
        &self,
        user_id: &str,
        version: u64,
    ) -> StorageResult<Option<BackupVersionRecord>>;

    /// The newest version that is not deleted.
    async fn latest_backup_version(
        &self,
        user_id: &str,
    ) -> StorageResult<Option<(u64, BackupVersionRecord)>>;

    /// Replaces a version's algorithm data. [`super::StorageError::NotFound`] if it does not
    /// exist.
    async fn update_backup_version(
        &self,
        user_id: &str,
        version: u64,
        algorithm: Box<RawValue>,
    ) -> StorageResult<()>;

    /// Deletes a version and all of its keys. [`super::StorageError::NotFound`] if it does not
    /// exist.
    async fn delete_backup_version(&self, user_id: &str, version: u64) -> StorageResult<()>;

    /// Deletes every version of a user's backup and their keys (account deactivation).
    async fn delete_all_backups(&self, user_id: &str) -> StorageResult<()>;

    /// Stores keys in a version: a key for a session that has one already replaces it unless
    /// `keep` says the stored one stays. Count and etag (bumped when a key was written) are
    /// updated in the same write, and the version's record afterwards is returned.
    /// [`super::StorageError::NotFound`] if the version does not exist;
    /// [`super::StorageError::TooMany`] (nothing written) if the version would hold more than
    /// `max_keys` keys.
    async fn put_backup_keys(
        &self,
        user_id: &str,
        version: u64,
        keys: Vec<BackupKey>,
        keep: KeepExisting,
        max_keys: u64,
    ) -> StorageResult<BackupVersionRecord>;

    /// The keys of a version in a scope, in (room, session) order.
    async fn backup_keys(
        &self,
        user_id: &str,
        version: u64,
        scope: BackupKeyScope<'_>,
    ) -> StorageResult<Vec<BackupKey>>;

    /// Deletes the keys of a version in a scope, updating count and etag (bumped when a key
    /// was deleted) in the same write; returns the version's record afterwards.
    /// [`super::StorageError::NotFound`] if the version does not exist.
    async fn delete_backup_keys(
        &self,
        user_id: &str,
        version: u64,
        scope: BackupKeyScope<'_>,
    ) -> StorageResult<BackupVersionRecord>;
}
