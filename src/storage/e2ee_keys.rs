//! End-to-end encryption keys: device identity keys, one-time keys and fallback keys.
//!
//! Rows are keyed by localpart (keys of local users only; remote users' keys come with
//! federation). Keys are stored as the JSON the client uploaded (already checked by the service), so
//! that signatures stay verifiable byte for byte after canonicalization.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StorageResult;

/// A fallback key: kept after use, but reported as used until replaced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FallbackKeyRecord {
    /// `<algorithm>:<key id>`.
    pub key_id: String,
    /// The key as uploaded (a JSON value).
    pub key: String,
    pub used: bool,
}

/// One `/keys/upload` request's keys, checked by the service.
#[derive(Debug, Clone, Default)]
pub struct KeyUpload {
    /// The device keys JSON, if uploaded.
    pub device_keys: Option<String>,
    /// `(<algorithm>:<key id>, key JSON)`.
    pub one_time_keys: Vec<(String, String)>,
    /// `(<algorithm>, record)`: at most one per algorithm.
    pub fallback_keys: Vec<(String, FallbackKeyRecord)>,
}

/// A change of a user's device list at its position in the device-list stream. The write
/// that causes the change (a device deletion, new keys) stores it in its own batch, so that
/// no crash can keep the cause and lose the change: other users would never learn of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceListChange {
    pub user_id: String,
    pub pos: u64,
}

#[async_trait]
pub trait E2eeKeyStore: Send + Sync {
    /// Stores one upload atomically; returns whether it stored new device keys. Fails with [`super::StorageError::AlreadyExists`],
    /// writing nothing, when the device already has different device keys or a one-time
    /// key ID of the upload is already stored with different content. Identical
    /// re-uploads are accepted (clients retry). [`super::StorageError::NotFound`] if the
    /// device no longer exists.
    async fn upload_keys(
        &self,
        localpart: &str,
        device_id: &str,
        upload: KeyUpload,
    ) -> StorageResult<bool>;

    /// A device's keys JSON.
    async fn device_keys(&self, localpart: &str, device_id: &str) -> StorageResult<Option<String>>;

    /// `device_id → keys JSON` for every device of a user that uploaded keys.
    async fn user_device_keys(&self, localpart: &str) -> StorageResult<BTreeMap<String, String>>;

    /// The number of unclaimed one-time keys of a device, per algorithm.
    async fn one_time_key_counts(
        &self,
        localpart: &str,
        device_id: &str,
    ) -> StorageResult<BTreeMap<String, u64>>;

    /// The algorithms of a device's fallback keys that were not used yet.
    async fn unused_fallback_key_types(
        &self,
        localpart: &str,
        device_id: &str,
    ) -> StorageResult<Vec<String>>;

    /// For each `(localpart, device_id, algorithm)`, takes one one-time key of `algorithm`
    /// (removing it), or else the device's fallback key of that algorithm (marking it used),
    /// all in one write. Atomic: two claims never get the same one-time key. Returns, in
    /// order, `(<algorithm>:<key id>, key JSON)` or `None` when the device has neither.
    async fn claim_keys(
        &self,
        claims: Vec<(String, String, String)>,
    ) -> StorageResult<Vec<Option<(String, String)>>>;

    /// Records a change of a user's device list that no other write carries (new keys).
    async fn set_device_list_changed(&self, change: DeviceListChange) -> StorageResult<()>;

    /// `(user_id, position of the latest change)` for every user whose device list changed.
    async fn device_list_changes(&self) -> StorageResult<Vec<(String, u64)>>;

    /// Stores cross-signing keys (`(kind, JSON)`, kind `master`, `self_signing` or
    /// `user_signing`), replacing those of the same kinds, in one write.
    async fn set_cross_signing_keys(
        &self,
        localpart: &str,
        keys: Vec<(String, String)>,
    ) -> StorageResult<()>;

    /// `kind → JSON` of a user's cross-signing keys.
    async fn cross_signing_keys(&self, localpart: &str) -> StorageResult<BTreeMap<String, String>>;

    /// Stores signatures made on keys after their upload (`/keys/signatures/upload`), in one
    /// write: `(target localpart, target key, signer user ID, signer key ID, signature)`,
    /// the target key being a device ID or a master key's public key.
    async fn add_key_signatures(
        &self,
        signatures: Vec<(String, String, String, String, String)>,
    ) -> StorageResult<()>;

    /// `(signer user ID, signer key ID, signature)` of one key.
    async fn key_signatures(
        &self,
        localpart: &str,
        target_key: &str,
    ) -> StorageResult<Vec<(String, String, String)>>;
}
