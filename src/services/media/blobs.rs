//! Blob storage: content-addressed (SHA-256) immutable byte strings, behind [`BlobStore`].
//!
//! Uploads are *staged* while they stream in (hashed and size-checked chunk by chunk, never
//! held whole in memory), then *committed* under their hash: content already stored is not
//! stored twice. Two implementations: the local filesystem (the default) and any
//! S3-compatible object store (AWS S3, MinIO, Garage, Ceph) through the `object_store` crate.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// A stream of bytes, as uploads arrive and downloads leave.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// More than the limit arrived.
    #[error("content larger than the limit")]
    TooLarge,
    /// The client's body failed (disconnect, malformed chunking).
    #[error("reading the upload: {0}")]
    Body(String),
    #[error("blob {0} not found")]
    NotFound(String),
    #[error("blob storage: {0}")]
    Backend(String),
}

impl From<object_store::Error> for BlobError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { path, .. } => BlobError::NotFound(path),
            other => BlobError::Backend(other.to_string()),
        }
    }
}

impl From<io::Error> for BlobError {
    fn from(e: io::Error) -> Self {
        BlobError::Backend(e.to_string())
    }
}

/// Content written to the staging area, not yet a blob.
#[derive(Debug)]
pub struct Staged {
    pub sha256: String,
    pub size: u64,
    /// The staging copy: a file path or an object key.
    location: String,
}

#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Streams `body` into the staging area, hashing it; more than `limit` bytes fail with
    /// [`BlobError::TooLarge`] as soon as they arrive (and nothing stays staged).
    async fn stage(&self, body: ByteStream, limit: u64) -> Result<Staged, BlobError>;

    /// Makes staged content the blob named by its hash (when that blob exists already, the
    /// staged copy is dropped: identical content is stored once).
    async fn commit(&self, staged: Staged) -> Result<(), BlobError>;

    /// Drops staged content.
    async fn discard(&self, staged: Staged);

    /// `range` of a blob (the whole blob when `None`); the range must lie within the blob.
    async fn read(&self, sha256: &str, range: Option<Range<u64>>) -> Result<ByteStream, BlobError>;

    async fn delete(&self, sha256: &str) -> Result<(), BlobError>;

    /// Where the blob lives, for logs and tests (a path or an object key).
    fn location(&self, sha256: &str) -> String;
}

impl dyn BlobStore {
    /// Stores small content (a thumbnail) held in memory: stage, then commit.
    pub async fn put_bytes(&self, bytes: Bytes) -> Result<Staged, BlobError> {
        let len = bytes.len() as u64;
        let stream: ByteStream = futures_util::stream::once(async move { Ok(bytes) }).boxed();
        self.stage(stream, len).await
    }

    /// A whole blob in memory, refusing blobs above `limit` bytes (for thumbnailing).
    pub async fn read_all(&self, sha256: &str, limit: u64) -> Result<Bytes, BlobError> {
        let mut stream = self.read(sha256, None).await?;
        let mut buf = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if buf.len() as u64 + chunk.len() as u64 > limit {
                return Err(BlobError::TooLarge);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A hash as blob names use it: 64 lower-case hex digits (anything else never names a
/// file or object).
fn checked(sha256: &str) -> Result<&str, BlobError> {
    if sha256.len() == 64
        && sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(sha256)
    } else {
        Err(BlobError::NotFound(sha256.to_owned()))
    }
}

/// What every backend does with each chunk it stages: count it against the limit and hash it.
struct Metered {
    hasher: Sha256,
    size: u64,
    limit: u64,
}

impl Metered {
    fn new(limit: u64) -> Self {
        Self { hasher: Sha256::new(), size: 0, limit }
    }

    /// Takes the next chunk of a body: `TooLarge` once the limit is passed.
    fn take(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(BlobError::TooLarge);
        }
        self.hasher.update(chunk);
        Ok(())
    }

    /// The SHA-256 (hex) and the size of everything taken.
    fn finish(self) -> (String, u64) {
        (hex(&self.hasher.finalize()), self.size)
    }
}

fn staging_name() -> String {
    crate::services::tokens::random_string(b"abcdefghijklmnopqrstuvwxyz0123456789", 24)
}

/// Blobs as files: `<root>/blobs/ab/cd/<sha256>`, staged in `<root>/tmp/`.
pub struct FsBlobs {
    root: PathBuf,
}

impl FsBlobs {
    /// Creates the directories; leftovers of staging interrupted by a crash are removed.
    pub fn open(root: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(root.join("blobs"))?;
        let tmp = root.join("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        Ok(Self { root: root.to_owned() })
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs").join(&sha256[0..2]).join(&sha256[2..4]).join(sha256)
    }
}

#[async_trait]
impl BlobStore for FsBlobs {
    async fn stage(&self, body: ByteStream, limit: u64) -> Result<Staged, BlobError> {
        let location = self.root.join("tmp").join(staging_name());
        let file = tokio::fs::File::create(&location).await?;
        let mut writer = tokio::io::BufWriter::with_capacity(256 * 1024, file);
        let mut body = body;
        let result = async {
            let mut metered = Metered::new(limit);
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
                metered.take(&chunk)?;
                writer.write_all(&chunk).await?;
            }
            writer.flush().await?;
            writer.get_mut().sync_all().await?;
            Ok::<_, BlobError>(metered.finish())
        }
        .await;
        match result {
            Ok((sha256, size)) => {
                Ok(Staged { sha256, size, location: location.to_string_lossy().into_owned() })
            }
            Err(e) => {
                drop(writer);
                let _ = tokio::fs::remove_file(&location).await;
                Err(e)
            }
        }
    }

    async fn commit(&self, staged: Staged) -> Result<(), BlobError> {
        let target = self.path(checked(&staged.sha256)?);
        if tokio::fs::try_exists(&target).await? {
            let _ = tokio::fs::remove_file(&staged.location).await;
            return Ok(());
        }
        let dir = target.parent().map(Path::to_owned).unwrap_or_else(|| self.root.clone());
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::rename(&staged.location, &target).await?;
        // The rename is durable once the directory is.
        tokio::task::spawn_blocking(move || std::fs::File::open(&dir).and_then(|d| d.sync_all()))
            .await
            .map_err(|e| BlobError::Backend(e.to_string()))??;
        Ok(())
    }

    async fn discard(&self, staged: Staged) {
        let _ = tokio::fs::remove_file(&staged.location).await;
    }

    async fn read(&self, sha256: &str, range: Option<Range<u64>>) -> Result<ByteStream, BlobError> {
        let path = self.path(checked(sha256)?);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BlobError::NotFound(sha256.to_owned()));
            }
            Err(e) => return Err(e.into()),
        };
        let stream = match range {
            Some(r) => {
                file.seek(io::SeekFrom::Start(r.start)).await?;
                tokio_util::io::ReaderStream::with_capacity(file.take(r.end - r.start), 64 * 1024)
                    .boxed()
            }
            None => tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024).boxed(),
        };
        Ok(stream)
    }

    async fn delete(&self, sha256: &str) -> Result<(), BlobError> {
        match tokio::fs::remove_file(self.path(checked(sha256)?)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn location(&self, sha256: &str) -> String {
        match checked(sha256) {
            Ok(s) => self.path(s).to_string_lossy().into_owned(),
            Err(_) => String::new(),
        }
    }
}

/// Blobs as objects of an S3-compatible bucket: `<prefix>blobs/<sha256>`, staged under
/// `<prefix>tmp/` (multipart upload for large content, parts uploaded while the body is
/// still arriving, at most [`S3_PARTS_IN_FLIGHT`] at once), then copied into place.
pub struct ObjectBlobs {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

/// Part size of multipart uploads; content up to this size is one plain `PUT`.
const S3_PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts uploading at once: memory per upload stays below `(1 + this) × S3_PART_BYTES`.
const S3_PARTS_IN_FLIGHT: usize = 2;

impl ObjectBlobs {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Self { store, prefix: prefix.to_owned() }
    }

    fn blob_path(&self, sha256: &str) -> ObjectPath {
        ObjectPath::from(format!("{}blobs/{sha256}", self.prefix))
    }
}

#[async_trait]
impl BlobStore for ObjectBlobs {
    async fn stage(&self, mut body: ByteStream, limit: u64) -> Result<Staged, BlobError> {
        let location = format!("{}tmp/{}", self.prefix, staging_name());
        let path = ObjectPath::from(location.clone());
        let mut metered = Metered::new(limit);
        // The first part is buffered: small content (most of it) is one PUT.
        let mut first = BytesMut::new();
        let mut upload: Option<WriteMultipart> = None;
        let result: Result<(), BlobError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
                metered.take(&chunk)?;
                match upload.as_mut() {
                    Some(w) => {
                        w.wait_for_capacity(S3_PARTS_IN_FLIGHT).await?;
                        w.put(chunk);
                    }
                    None => {
                        first.extend_from_slice(&chunk);
                        if first.len() > S3_PART_BYTES {
                            let mp = self.store.put_multipart(&path).await?;
                            let mut w = WriteMultipart::new_with_chunk_size(mp, S3_PART_BYTES);
                            w.put(std::mem::take(&mut first).freeze());
                            upload = Some(w);
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        match (result, upload) {
            (Ok(()), Some(w)) => {
                w.finish().await?;
            }
            (Ok(()), None) => {
                self.store.put(&path, PutPayload::from(first.freeze())).await?;
            }
            (Err(e), Some(w)) => {
                let _ = w.abort().await;
                return Err(e);
            }
            (Err(e), None) => return Err(e),
        }
        let (sha256, size) = metered.finish();
        Ok(Staged { sha256, size, location })
    }

    async fn commit(&self, staged: Staged) -> Result<(), BlobError> {
        let staging = ObjectPath::from(staged.location.clone());
        let target = self.blob_path(checked(&staged.sha256)?);
        match self.store.head(&target).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => {
                self.store.copy(&staging, &target).await?;
            }
            Err(e) => return Err(e.into()),
        }
        if let Err(e) = self.store.delete(&staging).await {
            tracing::warn!(error = %e, object = %staging, "could not delete a staged upload");
        }
        Ok(())
    }

    async fn discard(&self, staged: Staged) {
        let _ = self.store.delete(&ObjectPath::from(staged.location)).await;
    }

    async fn read(&self, sha256: &str, range: Option<Range<u64>>) -> Result<ByteStream, BlobError> {
        let path = self.blob_path(checked(sha256)?);
        let options = GetOptions {
            range: range.filter(|r| r.end > r.start).map(GetRange::Bounded),
            ..Default::default()
        };
        let result = self.store.get_opts(&path, options).await?;
        Ok(result.into_stream().map_err(io::Error::other).boxed())
    }

    async fn delete(&self, sha256: &str) -> Result<(), BlobError> {
        match self.store.delete(&self.blob_path(checked(sha256)?)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn location(&self, sha256: &str) -> String {
        self.blob_path(sha256).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(parts: &[&'static [u8]]) -> ByteStream {
        let chunks: Vec<io::Result<Bytes>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        futures_util::stream::iter(chunks).boxed()
    }

    #[tokio::test]
    async fn identical_content_is_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let blobs: Arc<dyn BlobStore> = Arc::new(FsBlobs::open(dir.path()).unwrap());
        let a = blobs.stage(stream_of(&[b"hello ", b"world"]), 100).await.unwrap();
        let b = blobs.stage(stream_of(&[b"hello world"]), 100).await.unwrap();
        assert_eq!(a.sha256, b.sha256);
        assert_eq!(a.size, 11);
        let sha = a.sha256.clone();
        blobs.commit(a).await.unwrap();
        blobs.commit(b).await.unwrap();
        let files: Vec<_> = walk(&dir.path().join("blobs"));
        assert_eq!(files.len(), 1);
        assert_eq!(blobs.read_all(&sha, 100).await.unwrap(), Bytes::from_static(b"hello world"));
        assert!(walk(&dir.path().join("tmp")).is_empty(), "staging copies are removed");
    }

    #[tokio::test]
    async fn limit_is_enforced_while_streaming() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = FsBlobs::open(dir.path()).unwrap();
        let err = blobs.stage(stream_of(&[b"12345", b"678"]), 6).await.unwrap_err();
        assert!(matches!(err, BlobError::TooLarge));
        assert!(walk(&dir.path().join("tmp")).is_empty(), "the partial upload is removed");
    }

    #[tokio::test]
    async fn ranges_read_exactly_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = FsBlobs::open(dir.path()).unwrap();
        let s = blobs.stage(stream_of(&[b"0123456789"]), 100).await.unwrap();
        let sha = s.sha256.clone();
        blobs.commit(s).await.unwrap();
        let part: Vec<Bytes> =
            blobs.read(&sha, Some(3..7)).await.unwrap().try_collect().await.unwrap();
        assert_eq!(part.concat(), b"3456");
    }

    #[test]
    fn malformed_hashes_name_nothing() {
        assert!(checked("../../etc/passwd").is_err());
        assert!(checked(&"A".repeat(64)).is_err());
        assert!(checked(&"a".repeat(64)).is_ok());
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
        }
        out
    }
}
