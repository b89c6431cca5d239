//! Media metadata: one record per media ID, the thumbnails made of it, and which records
//! reference each content-addressed blob (so a blob is deleted only with its last reference).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StorageResult;

/// One piece of local media (`mxc://<server_name>/<media_id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRecord {
    pub media_id: String,
    /// Full user ID of the uploader (or of the creator of a pending upload).
    pub uploader: String,
    /// When the ID was created (upload, or `/create`), ms since the UNIX epoch.
    pub created_ms: u64,
    /// `None` while the upload is pending (`/create` without the `PUT` yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MediaContent>,
    /// A pending upload's deadline (ms); unused afterwards.
    #[serde(default)]
    pub expires_ms: u64,
    /// Quarantined by an admin: downloads and thumbnails answer 404.
    #[serde(default)]
    pub quarantined: bool,
}

/// What was uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaContent {
    /// Lower-case hex SHA-256 of the bytes: the blob's name.
    pub sha256: String,
    pub size: u64,
    pub content_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// When the bytes arrived (ms): the legacy endpoints' freeze compares this.
    pub uploaded_ms: u64,
}

/// A stored thumbnail of a media, keyed by its size and method (`320x240/scale`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThumbnailRecord {
    pub sha256: String,
    pub size: u64,
    pub content_type: String,
    pub width: u32,
    pub height: u32,
}

/// Outcome of [`MediaStore::complete_upload`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompleteOutcome {
    Stored,
    /// No pending record of that ID.
    Missing,
    /// The ID already has content (`M_CANNOT_OVERWRITE_MEDIA`).
    AlreadyUploaded,
}

#[async_trait]
pub trait MediaStore: Send + Sync {
    /// Stores a new record (fresh random ID) and, with content, the blob reference, in one
    /// batch.
    async fn put_media(&self, record: MediaRecord) -> StorageResult<()>;

    /// Sets the content of a pending record and adds its blob reference, in one batch, under
    /// the store's write lock (two concurrent `PUT`s: one wins, the other is told).
    async fn complete_upload(
        &self,
        media_id: &str,
        content: MediaContent,
    ) -> StorageResult<CompleteOutcome>;

    async fn media(&self, media_id: &str) -> StorageResult<Option<MediaRecord>>;

    /// Sets or clears the quarantine flag; false when there is no such media.
    async fn set_quarantined(&self, media_id: &str, quarantined: bool) -> StorageResult<bool>;

    /// Pending uploads (no content yet) of one user that have not expired at `now_ms`.
    async fn pending_uploads(&self, uploader: &str, now_ms: u64) -> StorageResult<usize>;

    /// Media IDs created before `before_ms` (pending or not), at most `limit`, in no order.
    async fn media_before(&self, before_ms: u64, limit: usize) -> StorageResult<Vec<String>>;

    /// Deletes a record, its thumbnails and their blob references in one batch. Returns the
    /// blobs that then have no reference left (for the caller to delete).
    async fn delete_media(&self, media_id: &str) -> StorageResult<Vec<String>>;

    async fn thumbnail(&self, media_id: &str, key: &str) -> StorageResult<Option<ThumbnailRecord>>;

    /// Stores thumbnails (`key`, record) of a media and their blob references, in one batch.
    async fn put_thumbnails(
        &self,
        media_id: &str,
        thumbnails: Vec<(String, ThumbnailRecord)>,
    ) -> StorageResult<()>;

    /// Whether anything references the blob.
    async fn blob_referenced(&self, sha256: &str) -> StorageResult<bool>;
}
