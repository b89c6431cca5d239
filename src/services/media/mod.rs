//! The media repository: uploads, downloads, thumbnails, URL previews.
//!
//! Bytes live in a [`BlobStore`] (the local filesystem or an S3-compatible bucket), named
//! by their SHA-256, so identical uploads share one blob; metadata lives in the database
//! ([`MediaStore`]): who uploaded what when, its type, size and hash, the thumbnails made of
//! it, which records reference each blob, the quarantine flag. Media IDs are 32 random
//! alphanumerics (190 bits): unguessable.
//!
//! **Blob lifetime.** A blob is written (committed) before the record that references it,
//! and deleted only after the last reference is gone. Both happen under `gc`: uploads take
//! it shared for the commit and the record write, a purge takes it exclusively for the
//! reference deletion and the blob deletions, so a purge can never delete a blob an upload
//! has just found already present.

pub mod blobs;
pub mod preview;
pub mod thumbnail;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use ruma::ServerName;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{Notify, RwLock, Semaphore};

use crate::error::{Error, Result};
use crate::storage::Store;
use crate::storage::media::{CompleteOutcome, MediaContent, MediaRecord, ThumbnailRecord};
use crate::storage::now_ms;
use blobs::{BlobError, BlobStore, ByteStream, FsBlobs, ObjectBlobs};
use thumbnail::Method;

/// `[media]` in the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Largest upload, in bytes (413 `M_TOO_LARGE` above it, refused as the bytes arrive).
    pub max_upload_bytes: u64,
    /// Where blobs are kept: `"filesystem"` (under `path`) or `"s3"` (the `[media.s3]`
    /// bucket).
    pub storage: StorageKind,
    /// Directory of the filesystem storage; default: `media` inside `database.path`.
    pub path: Option<PathBuf>,
    pub s3: S3Config,
    /// Freeze the deprecated unauthenticated endpoints (`/_matrix/media/v3/download`,
    /// `/thumbnail`) as the spec recommends since v1.12: media uploaded after the freeze
    /// (the first start with this on) answers 404 there and is served only by the
    /// authenticated `/_matrix/client/v1/media/*` endpoints. `false` serves all media on
    /// both.
    pub freeze_legacy_endpoints: bool,
    /// Pending uploads (`POST /create` not yet followed by its `PUT`) one user may have;
    /// 429 `M_LIMIT_EXCEEDED` above.
    pub max_pending_uploads: usize,
    /// Seconds a pending upload's ID stays usable.
    pub pending_upload_expiry_secs: u64,
    /// Images with more pixels than this are not thumbnailed (413 `M_TOO_LARGE`): the
    /// pixel count is read from the header before any pixel is decoded, so a decompression
    /// bomb costs nothing.
    pub max_thumbnail_pixels: u64,
    /// Thumbnails decoded at once (each holds a decoded image in memory); default: one per
    /// core.
    pub thumbnail_concurrency: usize,
    pub url_preview: UrlPreviewConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    Filesystem,
    S3,
}

/// `[media.s3]`: an S3-compatible bucket (AWS S3, MinIO, Garage, Ceph).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// e.g. `us-east-1`; Garage's default is `garage`.
    pub region: String,
    /// The service's URL (`http://127.0.0.1:3900`); empty for AWS itself.
    pub endpoint: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Prefix of every object key (e.g. `axon/`), so a bucket can be shared.
    pub prefix: String,
    /// Allow `http://` endpoints (local MinIO, Garage on loopback).
    pub allow_http: bool,
    /// `bucket.host` URLs instead of `host/bucket` (AWS prefers them; most self-hosted
    /// stores want path style, the default).
    pub virtual_hosted_style: bool,
}

/// `[media.url_preview]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UrlPreviewConfig {
    /// Off by default: a preview makes this server fetch any URL a user names (what it may
    /// reach is `outbound.allowed_ip_ranges`' business).
    pub enabled: bool,
    /// Bytes of a page (and of its `og:image`) read at most.
    pub max_bytes: u64,
    /// How long a preview is cached, in seconds.
    pub cache_secs: u64,
}

impl Default for UrlPreviewConfig {
    fn default() -> Self {
        Self { enabled: false, max_bytes: 1024 * 1024, cache_secs: 3600 }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 100 * 1024 * 1024,
            storage: StorageKind::Filesystem,
            path: None,
            s3: S3Config::default(),
            freeze_legacy_endpoints: true,
            max_pending_uploads: 5,
            pending_upload_expiry_secs: 24 * 3600,
            max_thumbnail_pixels: 32_000_000,
            thumbnail_concurrency: 0,
            url_preview: UrlPreviewConfig::default(),
        }
    }
}

impl MediaConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.max_upload_bytes == 0 {
            return Err("media.max_upload_bytes must be at least 1".into());
        }
        if self.storage == StorageKind::S3 {
            if self.s3.bucket.is_empty() {
                return Err("media.s3.bucket must be set when media.storage = \"s3\"".into());
            }
            // Blobs are moved into place with one CopyObject, which S3 limits to 5 GiB.
            if self.max_upload_bytes > 5 * 1024 * 1024 * 1024 {
                return Err("media.max_upload_bytes is at most 5 GiB with S3 storage".into());
            }
        }
        if self.max_pending_uploads == 0 || self.max_thumbnail_pixels == 0 {
            return Err(
                "media.max_pending_uploads and max_thumbnail_pixels must be positive".into()
            );
        }
        Ok(())
    }
}

/// Where media of other servers comes from. Until federation exists it has none
/// ([`NoFederation`]); the federation client will implement this (fetch over
/// `/_matrix/federation/v1/media/download`, store the blob and a record, then serve it as
/// local media).
#[async_trait]
pub trait RemoteMedia: Send + Sync {
    async fn fetch(&self, server_name: &ServerName, media_id: &str) -> Result<MediaContent>;
}

pub struct NoFederation;

#[async_trait]
impl RemoteMedia for NoFederation {
    async fn fetch(&self, _: &ServerName, _: &str) -> Result<MediaContent> {
        Err(Error::NotFound(
            "Remote media is not available: this server does not federate yet".into(),
        ))
    }
}

/// What `GET /config` says.
pub struct Limits {
    pub max_upload_bytes: u64,
}

/// Media metadata as the admin API and CLI report it.
#[derive(Debug, Serialize)]
pub struct PurgeReport {
    pub deleted_media: Vec<String>,
    pub total: usize,
}

const META_FREEZE: &str = "media_legacy_freeze_ms";
/// Longest wait of a download for a pending upload (`timeout_ms` is capped at this).
pub const MAX_DOWNLOAD_WAIT: Duration = Duration::from_secs(60);

pub struct Media {
    config: MediaConfig,
    server_name: String,
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
    gc: RwLock<()>,
    thumbnails: Arc<Semaphore>,
    /// One thumbnail generation per media at a time (striped by media ID).
    thumbnail_locks: Vec<tokio::sync::Mutex<()>>,
    /// Woken when a pending upload completes.
    uploaded: Notify,
    /// Media uploaded after this (ms) is not served by the legacy endpoints.
    legacy_freeze_ms: Option<u64>,
    previews: quick_cache::sync::Cache<String, (Instant, Arc<Value>)>,
    remote: Box<dyn RemoteMedia>,
}

impl Media {
    pub async fn new(config: &crate::config::Config, store: Arc<dyn Store>) -> Result<Self> {
        let media = config.media.clone();
        let blobs: Arc<dyn BlobStore> = match media.storage {
            StorageKind::Filesystem => {
                let path = media.path.clone().unwrap_or_else(|| config.database.path.join("media"));
                Arc::new(FsBlobs::open(&path).map_err(|e| {
                    Error::Internal(format!("media storage {}: {e}", path.display()))
                })?)
            }
            StorageKind::S3 => {
                let s3 = &media.s3;
                let mut builder = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(&s3.bucket)
                    .with_region(if s3.region.is_empty() {
                        "us-east-1"
                    } else {
                        s3.region.as_str()
                    })
                    .with_access_key_id(&s3.access_key_id)
                    .with_secret_access_key(&s3.secret_access_key)
                    .with_allow_http(s3.allow_http)
                    .with_virtual_hosted_style_request(s3.virtual_hosted_style);
                if !s3.endpoint.is_empty() {
                    builder = builder.with_endpoint(&s3.endpoint);
                }
                let store =
                    builder.build().map_err(|e| Error::Internal(format!("media.s3: {e}")))?;
                Arc::new(ObjectBlobs::new(Arc::new(store), &s3.prefix))
            }
        };
        let legacy_freeze_ms = if media.freeze_legacy_endpoints {
            match store.meta(META_FREEZE).await? {
                Some(v) => Some(<[u8; 8]>::try_from(&v[..]).map(u64::from_be_bytes).unwrap_or(0)),
                None => {
                    let now = now_ms();
                    store.set_meta(META_FREEZE, now.to_be_bytes().to_vec()).await?;
                    Some(now)
                }
            }
        } else {
            None
        };
        let concurrency = if media.thumbnail_concurrency == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            media.thumbnail_concurrency
        };
        Ok(Self {
            config: media,
            server_name: config.server_name.clone(),
            store,
            blobs,
            gc: RwLock::new(()),
            thumbnails: Arc::new(Semaphore::new(concurrency)),
            thumbnail_locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            uploaded: Notify::new(),
            legacy_freeze_ms,
            previews: quick_cache::sync::Cache::new(10_000),
            remote: Box::new(NoFederation),
        })
    }

    pub fn limits(&self) -> Limits {
        Limits { max_upload_bytes: self.config.max_upload_bytes }
    }

    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.blobs
    }

    fn new_media_id() -> String {
        crate::services::tokens::random_string(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            32,
        )
    }

    /// Streams an upload into storage. `declared` is the request's `Content-Length`.
    async fn receive(&self, body: ByteStream, declared: Option<u64>) -> Result<blobs::Staged> {
        let limit = self.config.max_upload_bytes;
        if declared.is_some_and(|len| len > limit) {
            return Err(Error::TooLarge);
        }
        self.blobs.stage(body, limit).await.map_err(|e| match e {
            BlobError::TooLarge => Error::TooLarge,
            BlobError::Body(m) => Error::Unknown(format!("Could not read the upload: {m}")),
            other => Error::Internal(other.to_string()),
        })
    }

    /// `POST /upload`: stores the content and returns the new media ID.
    pub async fn upload(
        &self,
        uploader: &str,
        content_type: Option<String>,
        filename: Option<String>,
        body: ByteStream,
        declared: Option<u64>,
    ) -> Result<String> {
        let (content_type, filename) = check_metadata(content_type, filename)?;
        let staged = self.receive(body, declared).await?;
        let media_id = Self::new_media_id();
        let now = now_ms();
        let content = MediaContent {
            sha256: staged.sha256.clone(),
            size: staged.size,
            content_type,
            filename,
            uploaded_ms: now,
        };
        let _gc = self.gc.read().await;
        self.blobs.commit(staged).await.map_err(|e| Error::Internal(e.to_string()))?;
        self.store
            .put_media(MediaRecord {
                media_id: media_id.clone(),
                uploader: uploader.to_owned(),
                created_ms: now,
                content: Some(content),
                expires_ms: 0,
                quarantined: false,
            })
            .await?;
        tracing::info!(%media_id, uploader, "media uploaded");
        Ok(media_id)
    }

    /// `POST /create`: reserves a media ID for a later `PUT`. Returns it and its expiry.
    pub async fn create(&self, uploader: &str) -> Result<(String, u64)> {
        let now = now_ms();
        let _gc = self.gc.read().await;
        if self.store.pending_uploads(uploader, now).await? >= self.config.max_pending_uploads {
            return Err(Error::LimitExceeded { retry_after_ms: 60_000 });
        }
        let media_id = Self::new_media_id();
        let expires_ms = now + self.config.pending_upload_expiry_secs * 1000;
        self.store
            .put_media(MediaRecord {
                media_id: media_id.clone(),
                uploader: uploader.to_owned(),
                created_ms: now,
                content: None,
                expires_ms,
                quarantined: false,
            })
            .await?;
        Ok((media_id, expires_ms))
    }

    /// `PUT /upload/{serverName}/{mediaId}`: the content of an ID from `/create`, by its
    /// creator only.
    #[allow(clippy::too_many_arguments)] // the request's parts, each checked here
    pub async fn upload_to(
        &self,
        uploader: &str,
        server_name: &str,
        media_id: &str,
        content_type: Option<String>,
        filename: Option<String>,
        body: ByteStream,
        declared: Option<u64>,
    ) -> Result<()> {
        let (content_type, filename) = check_metadata(content_type, filename)?;
        let record = self.local_record(server_name, media_id).await?;
        if record.uploader != uploader {
            return Err(Error::Forbidden("This media ID was created by another user".into()));
        }
        if record.content.is_some() {
            return Err(Error::CannotOverwriteMedia);
        }
        if record.expires_ms <= now_ms() {
            return Err(Error::NotFound("This media ID has expired".into()));
        }
        let staged = self.receive(body, declared).await?;
        let content = MediaContent {
            sha256: staged.sha256.clone(),
            size: staged.size,
            content_type,
            filename,
            uploaded_ms: now_ms(),
        };
        let _gc = self.gc.read().await;
        self.blobs.commit(staged).await.map_err(|e| Error::Internal(e.to_string()))?;
        match self.store.complete_upload(media_id, content).await? {
            CompleteOutcome::Stored => {
                self.uploaded.notify_waiters();
                Ok(())
            }
            // Another PUT won; the blob stays if that upload (or any other) references it,
            // and is otherwise collected by the next purge of unreferenced blobs.
            CompleteOutcome::AlreadyUploaded => Err(Error::CannotOverwriteMedia),
            CompleteOutcome::Missing => Err(Error::NotFound("Unknown media ID".into())),
        }
    }

    /// The record of local media, after checking the mxc parts (404 for anything that is
    /// not a media ID of this server).
    async fn local_record(&self, server_name: &str, media_id: &str) -> Result<MediaRecord> {
        if !valid_media_id(media_id) {
            return Err(Error::NotFound("Unknown media".into()));
        }
        if server_name != self.server_name {
            return Err(Error::NotFound("Unknown media".into()));
        }
        self.store.media(media_id).await?.ok_or_else(|| Error::NotFound("Unknown media".into()))
    }

    /// The content behind an mxc URI, for downloads and thumbnails: local media (waiting up
    /// to `wait` for a pending upload: 504 `M_NOT_YET_UPLOADED` after), remote media through
    /// [`RemoteMedia`]. Quarantined media, and media uploaded after the legacy freeze when
    /// asked on a legacy endpoint, are 404.
    pub async fn content(
        &self,
        server_name: &str,
        media_id: &str,
        legacy: bool,
        wait: Duration,
    ) -> Result<(String, MediaContent)> {
        let server =
            ServerName::parse(server_name).map_err(|_| Error::NotFound("Unknown media".into()))?;
        if server.as_str() != self.server_name {
            if !valid_media_id(media_id) {
                return Err(Error::NotFound("Unknown media".into()));
            }
            let content = self.remote.fetch(&server, media_id).await?;
            return Ok((media_id.to_owned(), content));
        }
        let deadline = tokio::time::Instant::now() + wait.min(MAX_DOWNLOAD_WAIT);
        loop {
            let notified = self.uploaded.notified();
            let record = self.local_record(server_name, media_id).await?;
            if record.quarantined {
                return Err(Error::NotFound("This media is not available".into()));
            }
            if let Some(content) = record.content {
                if legacy && self.legacy_freeze_ms.is_some_and(|f| content.uploaded_ms >= f) {
                    return Err(Error::NotFound(
                        "This media is only available through the authenticated endpoints".into(),
                    ));
                }
                return Ok((record.media_id, content));
            }
            if record.expires_ms <= now_ms() {
                return Err(Error::NotFound("Unknown media".into()));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Error::NotYetUploaded);
            }
        }
    }

    /// Bytes of a blob (a range of it, or all).
    pub async fn read(&self, sha256: &str, range: Option<Range<u64>>) -> Result<ByteStream> {
        self.blobs.read(sha256, range).await.map_err(|e| match e {
            BlobError::NotFound(_) => Error::NotFound("The media's content is missing".into()),
            other => Error::Internal(other.to_string()),
        })
    }

    /// The thumbnail serving a request: `Ok(None)` means the original is the answer (the
    /// image is no larger than asked, or the request is larger than every thumbnail size).
    pub async fn thumbnail(
        &self,
        media_id: &str,
        content: &MediaContent,
        width: u32,
        height: u32,
        method: Method,
    ) -> Result<Option<ThumbnailRecord>> {
        if width == 0 || height == 0 {
            return Err(Error::InvalidParam("width and height must be positive".into()));
        }
        if !thumbnail::THUMBNAILABLE.contains(&content.content_type.as_str()) {
            return Err(Error::Unknown("Cannot generate thumbnails of this content type".into()));
        }
        let Some(size) = thumbnail::choose(width, height, method) else {
            return Ok(None);
        };
        let key = size.key();
        if let Some(t) = self.store.thumbnail(media_id, &key).await? {
            return Ok(Some(t));
        }
        let stripe =
            media_id.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        let _one_at_a_time = self.thumbnail_locks[stripe % self.thumbnail_locks.len()].lock().await;
        if let Some(t) = self.store.thumbnail(media_id, &key).await? {
            return Ok(Some(t));
        }
        // Everything made already (by an earlier request) is in the store; a size that is
        // still missing was not made because the image is not larger than it.
        if self.store.thumbnail(media_id, &thumbnail::STANDARD[0].key()).await?.is_some()
            || self.generated_marker(media_id).await?
        {
            return Ok(None);
        }
        // An image that could not be thumbnailed fails the same way again, without reading
        // and decoding it once more.
        if let Some(failed) = self.store.thumbnail(media_id, FAILED_MARKER).await? {
            return Err(thumbnail_failure(&failed.content_type));
        }
        let made = match self.generate(media_id, content).await {
            Err(GenerateError::Image(kind)) => {
                let marker = ThumbnailRecord {
                    sha256: content.sha256.clone(),
                    size: 0,
                    content_type: kind.clone(),
                    width: 0,
                    height: 0,
                };
                self.store
                    .put_thumbnails(media_id, vec![(FAILED_MARKER.to_owned(), marker)])
                    .await?;
                return Err(thumbnail_failure(&kind));
            }
            Err(GenerateError::Other(e)) => return Err(e),
            Ok(made) => made,
        };
        Ok(made.into_iter().find(|(k, _)| *k == key).map(|(_, t)| t))
    }

    /// Whether thumbnails were already generated for a media whose image is smaller than
    /// every standard size (an empty marker row).
    async fn generated_marker(&self, media_id: &str) -> Result<bool> {
        Ok(self.store.thumbnail(media_id, GENERATED_MARKER).await?.is_some())
    }

    /// Decodes the original once and stores every standard thumbnail it is larger than.
    async fn generate(
        &self,
        media_id: &str,
        content: &MediaContent,
    ) -> std::result::Result<Vec<(String, ThumbnailRecord)>, GenerateError> {
        let _permit = self
            .thumbnails
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Internal("thumbnailer closed".into()))?;
        // The pixel limit bounds the decoded image; the compressed bytes are bounded too
        // (a PNG of the maximal size is far below this).
        let byte_limit = self.config.max_thumbnail_pixels.saturating_mul(4).max(16 * 1024 * 1024);
        let bytes =
            self.blobs.read_all(&content.sha256, byte_limit).await.map_err(|e| match e {
                BlobError::TooLarge => Error::TooLarge,
                BlobError::NotFound(_) => Error::NotFound("The media's content is missing".into()),
                other => Error::Internal(other.to_string()),
            })?;
        let max_pixels = self.config.max_thumbnail_pixels;
        let started = Instant::now();
        let made = tokio::task::spawn_blocking(move || {
            thumbnail::generate(&bytes, max_pixels, &thumbnail::STANDARD)
        })
        .await
        .map_err(|e| Error::Internal(format!("thumbnail task: {e}")))?
        .map_err(|e| {
            GenerateError::Image(match e {
                thumbnail::ThumbnailError::TooLarge(_) => FAILED_TOO_LARGE.to_owned(),
                thumbnail::ThumbnailError::Unsupported(m) => m,
            })
        })?;
        tracing::debug!(
            media_id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "thumbnails made"
        );
        let mut records = Vec::new();
        let _gc = self.gc.read().await;
        for t in made {
            let staged = self
                .blobs
                .put_bytes(Bytes::from(t.bytes))
                .await
                .map_err(|e| Error::Internal(e.to_string()))?;
            let record = ThumbnailRecord {
                sha256: staged.sha256.clone(),
                size: staged.size,
                content_type: t.content_type.to_owned(),
                width: t.width,
                height: t.height,
            };
            self.blobs.commit(staged).await.map_err(|e| Error::Internal(e.to_string()))?;
            records.push((t.size.key(), record));
        }
        let mut stored = records.clone();
        if records.is_empty() {
            // Smaller than every size: remember that, so the image is not decoded again.
            stored.push((
                GENERATED_MARKER.to_owned(),
                ThumbnailRecord {
                    sha256: content.sha256.clone(),
                    size: content.size,
                    content_type: content.content_type.clone(),
                    width: 0,
                    height: 0,
                },
            ));
        }
        self.store.put_thumbnails(media_id, stored).await?;
        Ok(records)
    }

    /// Sets or clears the quarantine flag of local media.
    pub async fn quarantine(&self, server_name: &str, media_id: &str, on: bool) -> Result<()> {
        if server_name != self.server_name || !valid_media_id(media_id) {
            return Err(Error::NotFound(
                "Unknown media (only local media can be quarantined)".into(),
            ));
        }
        if !self.store.set_quarantined(media_id, on).await? {
            return Err(Error::NotFound("Unknown media".into()));
        }
        tracing::info!(media_id, quarantined = on, "media quarantine changed");
        Ok(())
    }

    /// Deletes local media created before `before_ms`: records, thumbnails, and the blobs
    /// nothing references any more.
    pub async fn purge_before(&self, before_ms: u64) -> Result<PurgeReport> {
        let mut deleted = Vec::new();
        loop {
            let batch = self.store.media_before(before_ms, 1000).await?;
            if batch.is_empty() {
                break;
            }
            let _gc = self.gc.write().await;
            for media_id in batch {
                for sha in self.store.delete_media(&media_id).await? {
                    if let Err(e) = self.blobs.delete(&sha).await {
                        tracing::warn!(error = %e, blob = %sha, "could not delete a blob");
                    }
                }
                deleted.push(media_id);
            }
        }
        tracing::info!(count = deleted.len(), before_ms, "media purged");
        Ok(PurgeReport { total: deleted.len(), deleted_media: deleted })
    }

    /// `GET /preview_url`: the OpenGraph data of a page, its `og:image` stored as media
    /// uploaded by `requester` (as Synapse does).
    pub async fn preview(
        &self,
        outbound: &crate::outbound::Outbound,
        requester: &str,
        url: &str,
    ) -> Result<Arc<Value>> {
        let cfg = &self.config.url_preview;
        if !cfg.enabled {
            return Err(Error::Forbidden("URL previews are disabled on this server".into()));
        }
        let url =
            url::Url::parse(url).map_err(|e| Error::InvalidParam(format!("Invalid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::InvalidParam("Only http and https URLs can be previewed".into()));
        }
        if let Some((at, value)) = self.previews.get(url.as_str())
            && at.elapsed() < Duration::from_secs(cfg.cache_secs)
        {
            return Ok(value);
        }
        let (body, content_type) = fetch_limited(outbound, &url, cfg.max_bytes).await?;
        let mut og = Map::new();
        if content_type.starts_with("text/html") || content_type.starts_with("application/xhtml") {
            let html = String::from_utf8_lossy(&body);
            let (found, image) = preview::parse_opengraph(&html, &url);
            og = found;
            if let Some(image_url) = image {
                match self.store_preview_image(outbound, requester, &image_url).await {
                    Ok((mxc, size, ctype)) => {
                        og.insert("og:image".into(), Value::String(mxc));
                        og.insert("og:image:type".into(), Value::String(ctype));
                        og.insert("matrix:image:size".into(), Value::from(size));
                    }
                    Err(e) => tracing::debug!(error = %e, "preview image not stored"),
                }
            }
        } else if content_type.starts_with("image/") {
            let size = body.len() as u64;
            let stream: ByteStream = futures_util::stream::once(async move { Ok(body) }).boxed();
            let id = self
                .upload(requester, Some(content_type.clone()), None, stream, Some(size))
                .await?;
            og.insert("og:image".into(), Value::String(format!("mxc://{}/{id}", self.server_name)));
            og.insert("og:image:type".into(), Value::String(content_type));
            og.insert("matrix:image:size".into(), Value::from(size));
        }
        let value = Arc::new(Value::Object(og));
        self.previews.insert(url.as_str().to_owned(), (Instant::now(), value.clone()));
        Ok(value)
    }

    async fn store_preview_image(
        &self,
        outbound: &crate::outbound::Outbound,
        requester: &str,
        url: &url::Url,
    ) -> Result<(String, u64, String)> {
        let limit = self.config.url_preview.max_bytes.min(self.config.max_upload_bytes);
        let (body, content_type) = fetch_limited(outbound, url, limit).await?;
        if !content_type.starts_with("image/") {
            return Err(Error::Unknown("og:image is not an image".into()));
        }
        let size = body.len() as u64;
        let stream: ByteStream = futures_util::stream::once(async move { Ok(body) }).boxed();
        let id =
            self.upload(requester, Some(content_type.clone()), None, stream, Some(size)).await?;
        Ok((format!("mxc://{}/{id}", self.server_name), size, content_type))
    }
}

/// Key of the row that says "generated, and the image is smaller than every size".
const GENERATED_MARKER: &str = "none";
/// The thumbnail key marking an image that cannot be thumbnailed; its `content_type` holds
/// why: [`FAILED_TOO_LARGE`] or the decoder's message.
const FAILED_MARKER: &str = "failed";
const FAILED_TOO_LARGE: &str = "too_large";

/// Why thumbnails were not made: the image itself (remembered), or anything else.
enum GenerateError {
    Image(String),
    Other(Error),
}

impl From<Error> for GenerateError {
    fn from(e: Error) -> Self {
        Self::Other(e)
    }
}

impl From<crate::storage::StorageError> for GenerateError {
    fn from(e: crate::storage::StorageError) -> Self {
        Self::Other(e.into())
    }
}

/// The error a remembered thumbnailing failure answers.
fn thumbnail_failure(kind: &str) -> Error {
    if kind == FAILED_TOO_LARGE { Error::TooLarge } else { Error::Unknown(kind.to_owned()) }
}

/// GETs `url` through the outbound client, reading at most `limit` bytes (more: refused).
async fn fetch_limited(
    outbound: &crate::outbound::Outbound,
    url: &url::Url,
    limit: u64,
) -> Result<(Bytes, String)> {
    outbound
        .check_url(url)
        .map_err(|e| Error::Forbidden(format!("Cannot preview this URL: {e}")))?;
    let response = outbound.client().get(url.clone()).send().await.map_err(|e| {
        // The resolver's refusal of a non-public address surfaces as a connect error.
        if crate::outbound::is_refused(&e) {
            Error::Forbidden(format!("Cannot preview this URL: {e}"))
        } else {
            Error::Unknown(format!("Fetching the URL failed: {e}"))
        }
    })?;
    if !response.status().is_success() {
        return Err(Error::Unknown(format!("The URL answered {}", response.status())));
    }
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_ascii_lowercase();
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(Error::TooLarge);
    }
    let mut stream = response.bytes_stream();
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::Unknown(format!("Fetching the URL failed: {e}")))?;
        if buf.len() as u64 + chunk.len() as u64 > limit {
            return Err(Error::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf.freeze(), content_type))
}

/// The spec's media ID alphabet: `A-Za-z0-9`, `_`, `-` (anything else could traverse paths).
pub fn valid_media_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The uploaded `Content-Type` (default `application/octet-stream`) and file name, bounded.
fn check_metadata(
    content_type: Option<String>,
    filename: Option<String>,
) -> Result<(String, Option<String>)> {
    let content_type = content_type
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    if content_type.len() > 255 || content_type.bytes().any(|b| b.is_ascii_control()) {
        return Err(Error::InvalidParam("Invalid Content-Type".into()));
    }
    if let Some(name) = &filename
        && (name.len() > 255 || name.chars().any(char::is_control))
    {
        return Err(Error::InvalidParam("Invalid filename".into()));
    }
    Ok((content_type, filename.filter(|f| !f.is_empty())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ids_are_restricted_to_the_spec_alphabet() {
        assert!(valid_media_id("abcXYZ019_-"));
        assert!(!valid_media_id("../etc"));
        assert!(!valid_media_id("a/b"));
        assert!(!valid_media_id(""));
        assert!(!valid_media_id("%2e%2e"));
    }

    #[test]
    fn new_ids_are_long_and_valid() {
        let a = Media::new_media_id();
        assert_eq!(a.len(), 32);
        assert!(valid_media_id(&a));
        assert_ne!(a, Media::new_media_id());
    }
}
