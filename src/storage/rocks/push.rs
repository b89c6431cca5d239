//! [`PushStore`] on RocksDB.

use async_trait::async_trait;
use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use super::{RocksStore, cf, decode, encode, handle, key, prefix, scan, synced};
use crate::storage::StorageResult;
use crate::storage::push::{NotificationRecord, PushStore, PusherRecord};

fn pusher_key(localpart: &str, app_id: &str, pushkey: &str) -> Vec<u8> {
    key(&[localpart.as_bytes(), app_id.as_bytes(), pushkey.as_bytes()])
}

/// The reverse index's key of a pusher (CF `pusher_keys`).
fn owner_key(app_id: &str, pushkey: &str, localpart: &str) -> Vec<u8> {
    key(&[app_id.as_bytes(), pushkey.as_bytes(), localpart.as_bytes()])
}

/// `meta` key present once `pusher_keys` has been built (databases older than it).
const OWNERS_BUILT: &[u8] = b"pusher_keys_built";

/// Builds the reverse index of pushers of a database written before it was kept.
pub(super) fn migrate(db: &DB) -> StorageResult<()> {
    let meta = handle(db, cf::META)?;
    if db.get_pinned_cf(meta, OWNERS_BUILT)?.is_some() {
        return Ok(());
    }
    let owners = handle(db, cf::PUSHER_KEYS)?;
    let mut batch = WriteBatch::default();
    for item in db.iterator_cf(handle(db, cf::PUSHERS)?, IteratorMode::Start) {
        let (_, v) = item?;
        let r: PusherRecord = decode(cf::PUSHERS, &v)?;
        let localpart = r.user_id.strip_prefix('@').and_then(|u| u.split(':').next()).unwrap_or("");
        batch.put_cf(owners, owner_key(&r.app_id, &r.pushkey, localpart), []);
    }
    batch.put_cf(meta, OWNERS_BUILT, b"1");
    db.write_opt(batch, &synced())?;
    Ok(())
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
            batch.delete_cf(
                handle(db, cf::PUSHER_KEYS)?,
                owner_key(&record.app_id, &record.pushkey, localpart),
            );
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
            let owners = handle(db, cf::PUSHER_KEYS)?;
            let mut batch = WriteBatch::default();
            if exclusive {
                // Other users' pushers of this app ID and pushkey, from the reverse index.
                let p = prefix(&[record.app_id.as_bytes(), record.pushkey.as_bytes()]);
                for (other, _) in scan(db, cf::PUSHER_KEYS, &p)? {
                    if other != localpart.as_bytes() {
                        let other = String::from_utf8_lossy(&other);
                        batch.delete_cf(
                            pushers,
                            pusher_key(&other, &record.app_id, &record.pushkey),
                        );
                        batch.delete_cf(owners, owner_key(&record.app_id, &record.pushkey, &other));
                    }
                }
            }
            batch.put_cf(
                pushers,
                pusher_key(&localpart, &record.app_id, &record.pushkey),
                encode(&record),
            );
            batch.put_cf(owners, owner_key(&record.app_id, &record.pushkey, &localpart), []);
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
        let (localpart, app_id, pushkey) =
            (localpart.to_owned(), app_id.to_owned(), pushkey.to_owned());
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let pushers = handle(db, cf::PUSHERS)?;
            if db.get_pinned_cf(pushers, &k)?.is_none() {
                return Ok(false);
            }
            let mut batch = WriteBatch::default();
            batch.delete_cf(pushers, &k);
            batch.delete_cf(handle(db, cf::PUSHER_KEYS)?, owner_key(&app_id, &pushkey, &localpart));
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
