//! [`PushStore`] on RocksDB.

use async_trait::async_trait;
use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use super::{RocksStore, cf, decode, encode, handle, key, prefix, scan, synced};
use crate::storage::StorageResult;
use crate::storage::push::{NotificationRecord, PushStore, PusherRecord};

fn pusher_key(localpart: &str, app_id: &str, pushkey: &str) -> Vec<u8> {
    key(&[localpart.as_bytes(), app_id.as_bytes(), pushkey.as_bytes()])
}

/// Adds to `batch` the deletion of the pushers a device created (the device is deleted).
pub(super) fn delete_device_pushers_in(
    db: &DB,
    batch: &mut WriteBatch,
    localpart: &str,
    device_id: &str,
) -> StorageResult<()> {
    let p = prefix(&[localpart.as_bytes()]);
    let pushers = handle(db, cf::PUSHERS)?;
    for (suffix, value) in scan(db, cf::PUSHERS, &p)? {
        let record: PusherRecord = decode(cf::PUSHERS, &value)?;
        if record.device_id.as_deref() == Some(device_id) {
            let mut k = p.clone();
            k.extend_from_slice(&suffix);
            batch.delete_cf(pushers, k);
        }
    }
    Ok(())
}

#[async_trait]
impl PushStore for RocksStore {
    async fn put_notifications(
        &self,
        records: Vec<(String, NotificationRecord)>,
    ) -> StorageResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.blocking(move |db, _| {
            let mut batch = WriteBatch::default();
            let notifications = handle(db, cf::NOTIFICATIONS)?;
            for (localpart, r) in &records {
                batch.put_cf(
                    notifications,
                    key(&[localpart.as_bytes(), &r.pos.to_be_bytes()]),
                    encode(r),
                );
            }
            db.write_opt(batch, &synced())?;
            Ok(())
        })
        .await
    }

    async fn notifications(
        &self,
        localpart: &str,
        before: Option<u64>,
        limit: usize,
    ) -> StorageResult<Vec<NotificationRecord>> {
        let p = prefix(&[localpart.as_bytes()]);
        self.blocking(move |db, _| {
            let mut start = p.clone();
            match before {
                Some(b) => start.extend_from_slice(&b.to_be_bytes()),
                None => start.extend_from_slice(&[0xFF; 9]),
            }
            let mut out = Vec::new();
            let iter = db.iterator_cf(
                handle(db, cf::NOTIFICATIONS)?,
                IteratorMode::From(&start, Direction::Reverse),
            );
            for item in iter {
                let (k, v) = item?;
                if !k.starts_with(&p) || out.len() >= limit {
                    break;
                }
                if k.as_ref() >= start.as_slice() {
                    continue; // `before` is exclusive
                }
                out.push(decode(cf::NOTIFICATIONS, &v)?);
            }
            Ok(out)
        })
        .await
    }

    async fn prune_notifications(&self, before_ts: u64) -> StorageResult<u64> {
        self.blocking(move |db, _| {
            let notifications = handle(db, cf::NOTIFICATIONS)?;
            let mut batch = WriteBatch::default();
            let mut n = 0;
            for item in db.iterator_cf(notifications, IteratorMode::Start) {
                let (k, v) = item?;
                let record: NotificationRecord = match decode(cf::NOTIFICATIONS, &v) {
                    Ok(r) => r,
                    Err(_) => {
                        batch.delete_cf(notifications, &k);
                        continue;
                    }
                };
                if record.ts < before_ts {
                    batch.delete_cf(notifications, &k);
                    n += 1;
                }
                if batch.len() >= 10_000 {
                    db.write_opt(std::mem::take(&mut batch), &synced())?;
                }
            }
            db.write_opt(batch, &synced())?;
            Ok(n)
        })
        .await
    }

    async fn put_pusher(
        &self,
        localpart: &str,
        record: PusherRecord,
        exclusive: bool,
    ) -> StorageResult<()> {
        let localpart = localpart.to_owned();
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let pushers = handle(db, cf::PUSHERS)?;
            let mut batch = WriteBatch::default();
            if exclusive {
                // Pushers are few (a handful per user): a scan is cheaper than an index.
                for item in db.iterator_cf(pushers, IteratorMode::Start) {
                    let (k, v) = item?;
                    let other: PusherRecord = decode(cf::PUSHERS, &v)?;
                    if other.app_id == record.app_id
                        && other.pushkey == record.pushkey
                        && other.user_id != record.user_id
                    {
                        batch.delete_cf(pushers, &k);
                    }
                }
            }
            batch.put_cf(
                pushers,
                pusher_key(&localpart, &record.app_id, &record.pushkey),
                encode(&record),
            );
            db.write_opt(batch, &synced())?;
            Ok(())
        })
        .await
    }

    async fn delete_pusher(
        &self,
        localpart: &str,
        app_id: &str,
        pushkey: &str,
    ) -> StorageResult<bool> {
        let k = pusher_key(localpart, app_id, pushkey);
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let pushers = handle(db, cf::PUSHERS)?;
            if db.get_pinned_cf(pushers, &k)?.is_none() {
                return Ok(false);
            }
            let mut batch = WriteBatch::default();
            batch.delete_cf(pushers, &k);
            db.write_opt(batch, &synced())?;
            Ok(true)
        })
        .await
    }

    async fn pushers(&self, localpart: &str) -> StorageResult<Vec<PusherRecord>> {
        let p = prefix(&[localpart.as_bytes()]);
        self.blocking(move |db, _| {
            scan(db, cf::PUSHERS, &p)?.into_iter().map(|(_, v)| decode(cf::PUSHERS, &v)).collect()
        })
        .await
    }

    async fn pusher_owners(&self) -> StorageResult<Vec<String>> {
        self.blocking(move |db, _| {
            let mut owners: Vec<String> = Vec::new();
            for item in db.iterator_cf(handle(db, cf::PUSHERS)?, IteratorMode::Start) {
                let (k, _) = item?;
                let end = k.iter().position(|b| *b == super::SEP).unwrap_or(k.len());
                let owner = String::from_utf8_lossy(&k[..end]).into_owned();
                if owners.last() != Some(&owner) {
                    owners.push(owner);
                }
            }
            Ok(owners)
        })
        .await
    }
}
