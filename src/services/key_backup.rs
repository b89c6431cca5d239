//! Server-side key backups (`/room_keys`): versions of a user's backup and the room keys
//! stored in them, with the spec's rule for which of two keys of one session is kept.
//!
//! Keys can only be written to the current version (the newest not deleted); numbers of
//! deleted versions are never reused. Each version counts its keys (`count`) and has an
//! `etag` that changes whenever its keys do. The writes of one user's backup are serialised
//! here (a stripe of locks by user), which makes each read-check-write one step.

use std::hash::BuildHasher;
use std::sync::Arc;

use ruma::api::client::backup::BackupAlgorithm;
use ruma::{UInt, UserId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Error, Result};
use crate::storage::key_backup::{BackupKey, BackupKeyScope, BackupVersionRecord};
use crate::storage::{StorageError, Store};

/// Lock stripes: writes of users in different stripes proceed in parallel.
const STRIPES: usize = 64;

/// A backup version as `GET /room_keys/version` shows it.
pub struct VersionInfo {
    pub version: String,
    /// `{"algorithm": …, "auth_data": …}`.
    pub algorithm: Box<RawValue>,
    pub count: UInt,
    pub etag: String,
}

/// A version's `etag` and `count` after a change of its keys.
pub struct KeysState {
    pub etag: String,
    pub count: UInt,
}

impl From<BackupVersionRecord> for KeysState {
    fn from(r: BackupVersionRecord) -> Self {
        Self { etag: r.etag.to_string(), count: UInt::new_saturating(r.count) }
    }
}

/// The body of `POST`/`PUT /room_keys/version`, and what is stored of it.
#[derive(Serialize, Deserialize)]
struct AlgorithmBody {
    algorithm: String,
    auth_data: Box<RawValue>,
    #[serde(default, skip_serializing)]
    version: Option<String>,
}

/// The metadata of a session key that the replacement rule compares. `session_data` is
/// algorithm-dependent, so it is only required to be an object (ruma's `KeyBackupData`
/// would insist on the megolm v1 fields).
#[derive(Deserialize)]
struct KeyMeta {
    first_message_index: UInt,
    forwarded_count: UInt,
    is_verified: bool,
    #[allow(dead_code)]
    session_data: serde_json::Map<String, serde_json::Value>,
}

/// Whether a stored key of a session stays when `new` is uploaded for it (spec, "Server-side
/// key backups"): the verified one wins, then the lower `first_message_index`, then the lower
/// `forwarded_count`. On a tie the upload replaces the stored key unless they are identical.
pub fn keep_existing(existing: &RawValue, new: &RawValue) -> bool {
    let (Ok(old), Ok(fresh)) = (
        serde_json::from_str::<KeyMeta>(existing.get()),
        serde_json::from_str::<KeyMeta>(new.get()),
    ) else {
        // A stored key that does not parse is replaced; new keys are validated before.
        return false;
    };
    if old.is_verified != fresh.is_verified {
        return old.is_verified;
    }
    if old.first_message_index != fresh.first_message_index {
        return old.first_message_index < fresh.first_message_index;
    }
    if old.forwarded_count != fresh.forwarded_count {
        return old.forwarded_count < fresh.forwarded_count;
    }
    existing.get() == new.get()
}

fn unknown_version() -> Error {
    Error::NotFound("Unknown backup version".into())
}

/// A version as the client names it: the decimal number this server handed out.
fn parse_version(version: &str) -> Result<u64> {
    match version.parse::<u64>() {
        Ok(v) if v.to_string() == version => Ok(v),
        _ => Err(unknown_version()),
    }
}

/// Validates an algorithm body with ruma's `BackupAlgorithm` and returns it with what is
/// stored of it.
fn algorithm_body(raw: &RawValue) -> Result<(AlgorithmBody, Box<RawValue>)> {
    serde_json::from_str::<BackupAlgorithm>(raw.get())
        .map_err(|e| Error::BadJson(format!("Invalid backup algorithm: {e}")))?;
    let body: AlgorithmBody =
        serde_json::from_str(raw.get()).map_err(|e| Error::BadJson(e.to_string()))?;
    let stored =
        serde_json::value::to_raw_value(&body).map_err(|e| Error::Internal(e.to_string()))?;
    Ok((body, stored))
}

pub struct KeyBackup {
    store: Arc<dyn Store>,
    /// `limits.max_backup_keys_per_version`.
    max_keys: u64,
    locks: Vec<tokio::sync::Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
}

impl KeyBackup {
    pub fn new(store: Arc<dyn Store>, max_keys: usize) -> Self {
        Self {
            store,
            max_keys: max_keys as u64,
            locks: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: Default::default(),
        }
    }

    async fn lock(&self, user: &UserId) -> tokio::sync::MutexGuard<'_, ()> {
        let stripe = self.hasher.hash_one(user.as_str()) as usize % STRIPES;
        self.locks[stripe].lock().await
    }

    pub async fn create_version(&self, user: &UserId, algorithm: &RawValue) -> Result<String> {
        let (_, stored) = algorithm_body(algorithm)?;
        let _guard = self.lock(user).await;
        Ok(self.store.create_backup_version(user.as_str(), stored).await?.to_string())
    }

    /// A version, or the current one for `None`; 404 when there is none.
    pub async fn version(&self, user: &UserId, version: Option<&str>) -> Result<VersionInfo> {
        let (number, record) = match version {
            Some(v) => {
                let v = parse_version(v)?;
                let record = self.store.backup_version(user.as_str(), v).await?;
                (v, record.ok_or_else(unknown_version)?)
            }
            None => self
                .store
                .latest_backup_version(user.as_str())
                .await?
                .ok_or_else(|| Error::NotFound("No current backup version".into()))?,
        };
        Ok(VersionInfo {
            version: number.to_string(),
            algorithm: record.algorithm,
            count: UInt::new_saturating(record.count),
            etag: record.etag.to_string(),
        })
    }

    /// Replaces a version's `auth_data`; the algorithm (and a `version` in the body) must
    /// match.
    pub async fn update_version(
        &self,
        user: &UserId,
        version: &str,
        algorithm: &RawValue,
    ) -> Result<()> {
        let number = parse_version(version)?;
        let (body, stored) = algorithm_body(algorithm)?;
        if body.version.as_deref().is_some_and(|v| v != version) {
            return Err(Error::InvalidParam(
                "The version in the body does not match the version in the path".into(),
            ));
        }
        let _guard = self.lock(user).await;
        let current =
            self.store.backup_version(user.as_str(), number).await?.ok_or_else(unknown_version)?;
        let current: AlgorithmBody = serde_json::from_str(current.algorithm.get())
            .map_err(|e| Error::Internal(format!("stored backup algorithm: {e}")))?;
        if current.algorithm != body.algorithm {
            return Err(Error::InvalidParam("Algorithm does not match".into()));
        }
        match self.store.update_backup_version(user.as_str(), number, stored).await {
            Err(StorageError::NotFound) => Err(unknown_version()),
            other => Ok(other?),
        }
    }

    /// Deletes a version and its keys.
    pub async fn delete_version(&self, user: &UserId, version: &str) -> Result<()> {
        let number = parse_version(version)?;
        let _guard = self.lock(user).await;
        match self.store.delete_backup_version(user.as_str(), number).await {
            Err(StorageError::NotFound) => Err(unknown_version()),
            other => Ok(other?),
        }
    }

    /// Deletes a user's whole backup, every version (account deactivation, as Synapse does).
    pub async fn delete_all(&self, user: &UserId) -> Result<()> {
        let _guard = self.lock(user).await;
        Ok(self.store.delete_all_backups(user.as_str()).await?)
    }

    /// Stores keys in the current version, keeping a stored key where the spec prefers it.
    pub async fn put_keys(
        &self,
        user: &UserId,
        version: &str,
        keys: Vec<BackupKey>,
    ) -> Result<KeysState> {
        for k in &keys {
            serde_json::from_str::<KeyMeta>(k.data.get()).map_err(|e| {
                Error::BadJson(format!("Invalid key for session {}: {e}", k.session_id))
            })?;
        }
        let number = parse_version(version)?;
        let _guard = self.lock(user).await;
        let (current, _) =
            self.store.latest_backup_version(user.as_str()).await?.ok_or_else(unknown_version)?;
        if number != current {
            if self.store.backup_version(user.as_str(), number).await?.is_none() {
                return Err(unknown_version());
            }
            return Err(Error::WrongRoomKeysVersion { current_version: current.to_string() });
        }
        let result = self
            .store
            .put_backup_keys(user.as_str(), number, keys, Box::new(keep_existing), self.max_keys)
            .await;
        match result {
            Ok(record) => Ok(record.into()),
            Err(StorageError::NotFound) => Err(unknown_version()),
            Err(StorageError::TooMany) => Err(Error::TooMany(format!(
                "A backup version holds at most {} keys",
                self.max_keys
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// The keys of a version in a scope; 404 when the version does not exist.
    pub async fn keys(
        &self,
        user: &UserId,
        version: &str,
        scope: BackupKeyScope<'_>,
    ) -> Result<Vec<BackupKey>> {
        let number = parse_version(version)?;
        if self.store.backup_version(user.as_str(), number).await?.is_none() {
            return Err(unknown_version());
        }
        Ok(self.store.backup_keys(user.as_str(), number, scope).await?)
    }

    /// Deletes the keys of a version in a scope.
    pub async fn delete_keys(
        &self,
        user: &UserId,
        version: &str,
        scope: BackupKeyScope<'_>,
    ) -> Result<KeysState> {
        let number = parse_version(version)?;
        let _guard = self.lock(user).await;
        match self.store.delete_backup_keys(user.as_str(), number, scope).await {
            Ok(record) => Ok(record.into()),
            Err(StorageError::NotFound) => Err(unknown_version()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::keep_existing;
    use serde_json::value::RawValue;

    fn key(verified: bool, first: u32, forwarded: u32, data: &str) -> Box<RawValue> {
        RawValue::from_string(format!(
            r#"{{"first_message_index":{first},"forwarded_count":{forwarded},"is_verified":{verified},"session_data":{{"ciphertext":"{data}"}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn a_verified_key_beats_an_unverified_one_whatever_its_index() {
        assert!(keep_existing(&key(true, 10, 5, "a"), &key(false, 0, 0, "b")));
        assert!(!keep_existing(&key(false, 0, 0, "a"), &key(true, 10, 5, "b")));
    }

    #[test]
    fn then_the_lower_first_message_index_then_the_lower_forwarded_count() {
        assert!(keep_existing(&key(true, 1, 5, "a"), &key(true, 2, 0, "b")));
        assert!(!keep_existing(&key(true, 2, 0, "a"), &key(true, 1, 5, "b")));
        assert!(keep_existing(&key(false, 1, 1, "a"), &key(false, 1, 2, "b")));
        assert!(!keep_existing(&key(false, 1, 2, "a"), &key(false, 1, 1, "b")));
    }

    #[test]
    fn a_tie_is_replaced_unless_identical() {
        assert!(!keep_existing(&key(true, 1, 1, "a"), &key(true, 1, 1, "b")));
        assert!(keep_existing(&key(true, 1, 1, "a"), &key(true, 1, 1, "a")));
    }
}
