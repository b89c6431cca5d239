//! [`MediaStore`] on RocksDB.

use async_trait::async_trait;
use rocksdb::{DB, IteratorMode, WriteBatch};

use super::{
    RocksStore, cf, decode, encode, get_json, handle, key, keys_with_prefix, prefix, scan,
};
use crate::storage::StorageResult;
use crate::storage::media::{
    CompleteOutcome, MediaContent, MediaRecord, MediaStore, ThumbnailRecord,
};

fn ref_key(sha256: &str, media_id: &str, thumbnail: &str) -> Vec<u8> {
    key(&[sha256.as_bytes(), media_id.as_bytes(), thumbnail.as_bytes()])
}

fn pending_key(r: &MediaRecord) -> Vec<u8> {
    key(&[r.uploader.as_bytes(), r.media_id.as_bytes()])
}

#[async_trait]
impl MediaStore for RocksStore {
    async fn put_media(&self, record: MediaRecord) -> StorageResult<()> {
        self.blocking(move |db, _| {
            let mut batch = WriteBatch::default();
            batch.put_cf(handle(db, cf::MEDIA)?, record.media_id.as_bytes(), encode(&record));
            match &record.content {
                Some(c) => batch.put_cf(
                    handle(db, cf::MEDIA_BLOB_REFS)?,
                    ref_key(&c.sha256, &record.media_id, ""),
                    [],
                ),
                None => batch.put_cf(
                    handle(db, cf::MEDIA_PENDING)?,
                    pending_key(&record),
                    record.expires_ms.to_be_bytes(),
                ),
            }
            db.write_opt(batch, &super::synced())?;
            Ok(())
        })
        .await
    }

    async fn complete_upload(
        &self,
        media_id: &str,
        content: MediaContent,
    ) -> StorageResult<CompleteOutcome> {
        let media_id = media_id.to_owned();
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let Some(mut record) = get_json::<MediaRecord>(db, cf::MEDIA, media_id.as_bytes())?
            else {
                return Ok(CompleteOutcome::Missing);
            };
            if record.content.is_some() {
                return Ok(CompleteOutcome::AlreadyUploaded);
            }
            let mut batch = WriteBatch::default();
            batch.put_cf(
                handle(db, cf::MEDIA_BLOB_REFS)?,
                ref_key(&content.sha256, &media_id, ""),
                [],
            );
            batch.delete_cf(handle(db, cf::MEDIA_PENDING)?, pending_key(&record));
            record.content = Some(content);
            batch.put_cf(handle(db, cf::MEDIA)?, media_id.as_bytes(), encode(&record));
            db.write_opt(batch, &super::synced())?;
            Ok(CompleteOutcome::Stored)
        })
        .await
    }

    async fn media(&self, media_id: &str) -> StorageResult<Option<MediaRecord>> {
        let media_id = media_id.to_owned();
        self.blocking(move |db, _| get_json(db, cf::MEDIA, media_id.as_bytes())).await
    }

    async fn set_quarantined(&self, media_id: &str, quarantined: bool) -> StorageResult<bool> {
        let media_id = media_id.to_owned();
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let Some(mut record) = get_json::<MediaRecord>(db, cf::MEDIA, media_id.as_bytes())?
            else {
                return Ok(false);
            };
            record.quarantined = quarantined;
            db.put_cf_opt(
                handle(db, cf::MEDIA)?,
                media_id.as_bytes(),
                encode(&record),
                &super::synced(),
            )?;
            Ok(true)
        })
        .await
    }

    async fn pending_uploads(&self, uploader: &str, now_ms: u64) -> StorageResult<usize> {
        let p = prefix(&[uploader.as_bytes()]);
        self.blocking(move |db, _| {
            let rows = scan(db, cf::MEDIA_PENDING, &p)?;
            Ok(rows
                .iter()
                .filter(|(_, v)| {
                    <[u8; 8]>::try_from(&v[..]).map(u64::from_be_bytes).unwrap_or(0) > now_ms
                })
                .count())
        })
        .await
    }

    async fn media_before(&self, before_ms: u64, limit: usize) -> StorageResult<Vec<String>> {
        self.blocking(move |db, _| {
            let mut out = Vec::new();
            for item in db.iterator_cf(handle(db, cf::MEDIA)?, IteratorMode::Start) {
                let (_, v) = item?;
                let record: MediaRecord = decode(cf::MEDIA, &v)?;
                if record.created_ms < before_ms {
                    out.push(record.media_id);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn delete_media(&self, media_id: &str) -> StorageResult<Vec<String>> {
        let media_id = media_id.to_owned();
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let Some(record) = get_json::<MediaRecord>(db, cf::MEDIA, media_id.as_bytes())? else {
                return Ok(Vec::new());
            };
            let mut batch = WriteBatch::default();
            let refs = handle(db, cf::MEDIA_BLOB_REFS)?;
            let mut blobs = Vec::new();
            if let Some(c) = &record.content {
                batch.delete_cf(refs, ref_key(&c.sha256, &media_id, ""));
                blobs.push(c.sha256.clone());
            } else {
                batch.delete_cf(handle(db, cf::MEDIA_PENDING)?, pending_key(&record));
            }
            let thumbs_cf = handle(db, cf::MEDIA_THUMBNAILS)?;
            let p = prefix(&[media_id.as_bytes()]);
            for (suffix, v) in scan(db, cf::MEDIA_THUMBNAILS, &p)? {
                let thumb: ThumbnailRecord = decode(cf::MEDIA_THUMBNAILS, &v)?;
                let thumb_key = String::from_utf8_lossy(&suffix).into_owned();
                batch.delete_cf(refs, ref_key(&thumb.sha256, &media_id, &thumb_key));
                batch.delete_cf(thumbs_cf, [&p[..], &suffix[..]].concat());
                blobs.push(thumb.sha256);
            }
            batch.delete_cf(handle(db, cf::MEDIA)?, media_id.as_bytes());
            db.write_opt(batch, &super::synced())?;
            // Under the write lock, so no reference is added between the write and this check.
            blobs.sort();
            blobs.dedup();
            let mut orphans = Vec::new();
            for sha in blobs {
                if !referenced(db, &sha)? {
                    orphans.push(sha);
                }
            }
            Ok(orphans)
        })
        .await
    }

    async fn thumbnail(
        &self,
        media_id: &str,
        key_: &str,
    ) -> StorageResult<Option<ThumbnailRecord>> {
        let k = key(&[media_id.as_bytes(), key_.as_bytes()]);
        self.blocking(move |db, _| get_json(db, cf::MEDIA_THUMBNAILS, &k)).await
    }

    async fn put_thumbnails(
        &self,
        media_id: &str,
        thumbnails: Vec<(String, ThumbnailRecord)>,
    ) -> StorageResult<()> {
        let media_id = media_id.to_owned();
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            // A media deleted meanwhile gets no thumbnails (they would never be deleted).
            if db.get_pinned_cf(handle(db, cf::MEDIA)?, media_id.as_bytes())?.is_none() {
                return Ok(());
            }
            let mut batch = WriteBatch::default();
            for (k, t) in &thumbnails {
                batch.put_cf(
                    handle(db, cf::MEDIA_THUMBNAILS)?,
                    key(&[media_id.as_bytes(), k.as_bytes()]),
                    encode(t),
                );
                batch.put_cf(
                    handle(db, cf::MEDIA_BLOB_REFS)?,
                    ref_key(&t.sha256, &media_id, k),
                    [],
                );
            }
            db.write_opt(batch, &super::synced())?;
            Ok(())
        })
        .await
    }

    async fn blob_referenced(&self, sha256: &str) -> StorageResult<bool> {
        let sha = sha256.to_owned();
        self.blocking(move |db, _| referenced(db, &sha)).await
    }
}

fn referenced(db: &DB, sha256: &str) -> StorageResult<bool> {
    let p = prefix(&[sha256.as_bytes()]);
    Ok(!keys_with_prefix_limited(db, &p)?.is_empty())
}

fn keys_with_prefix_limited(db: &DB, p: &[u8]) -> StorageResult<Vec<Box<[u8]>>> {
    // Few references per blob in practice; the scan stops at the prefix's end.
    keys_with_prefix(db, cf::MEDIA_BLOB_REFS, p)
}
