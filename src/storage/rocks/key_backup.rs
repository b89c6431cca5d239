//! [`KeyBackupStore`] on RocksDB.
//!
//! `backup_versions`: `user 0xFF version(be64)` → [`BackupVersionRecord`]; an empty value is
//! the tombstone of a deleted newest version, kept so that its number is not reused (at most
//! one per user: creating the next version removes it).
//! `backup_keys`: `user 0xFF version(be64) 0xFF room_id 0xFF session_id` → `KeyBackupData`.

use async_trait::async_trait;
use rocksdb::{DB, Direction, IteratorMode, WriteBatch};
use serde_json::value::RawValue;

use super::{RocksStore, cf, decode, encode, handle, key, prefix, scan, synced};
use crate::storage::key_backup::{
    BackupKey, BackupKeyScope, BackupVersionRecord, KeepExisting, KeyBackupStore,
};
use crate::storage::{StorageError, StorageResult};

fn version_key(user_id: &str, version: u64) -> Vec<u8> {
    key(&[user_id.as_bytes(), &version.to_be_bytes()])
}

fn room_key(user_id: &str, version: u64, room_id: &str, session_id: &str) -> Vec<u8> {
    key(&[user_id.as_bytes(), &version.to_be_bytes(), room_id.as_bytes(), session_id.as_bytes()])
}

fn corrupt(detail: &str) -> StorageError {
    StorageError::Corrupt { what: cf::BACKUP_KEYS, detail: detail.to_owned() }
}

/// The newest version row of a user numbered `max` or lower, tombstone included: (version,
/// record or `None` for the tombstone).
fn newest_up_to(
    db: &DB,
    user_id: &str,
    max: u64,
) -> StorageResult<Option<(u64, Option<BackupVersionRecord>)>> {
    let p = prefix(&[user_id.as_bytes()]);
    let from = version_key(user_id, max);
    let iter = db.iterator_cf(
        handle(db, cf::BACKUP_VERSIONS)?,
        IteratorMode::From(&from, Direction::Reverse),
    );
    for item in iter {
        let (k, v) = item?;
        if !k.starts_with(&p) {
            break;
        }
        let Ok(be) = <[u8; 8]>::try_from(&k[p.len()..]) else { continue };
        let record = if v.is_empty() { None } else { Some(decode(cf::BACKUP_VERSIONS, &v)?) };
        return Ok(Some((u64::from_be_bytes(be), record)));
    }
    Ok(None)
}

fn newest(db: &DB, user_id: &str) -> StorageResult<Option<(u64, Option<BackupVersionRecord>)>> {
    newest_up_to(db, user_id, u64::MAX)
}

fn live_version(db: &DB, user_id: &str, version: u64) -> StorageResult<BackupVersionRecord> {
    match db.get_pinned_cf(handle(db, cf::BACKUP_VERSIONS)?, version_key(user_id, version))? {
        Some(v) if !v.is_empty() => decode(cf::BACKUP_VERSIONS, &v),
        _ => Err(StorageError::NotFound),
    }
}

fn raw(bytes: &[u8]) -> StorageResult<Box<RawValue>> {
    let s = std::str::from_utf8(bytes).map_err(|e| corrupt(&e.to_string()))?;
    RawValue::from_string(s.to_owned()).map_err(|e| corrupt(&e.to_string()))
}

/// Keys of one version under a scope: (row key, key).
fn keys_in(
    db: &DB,
    user_id: &str,
    version: u64,
    scope: BackupKeyScope<'_>,
) -> StorageResult<Vec<(Vec<u8>, BackupKey)>> {
    let base = prefix(&[user_id.as_bytes(), &version.to_be_bytes()]);
    if let BackupKeyScope::Session(room, session) = scope {
        let k = room_key(user_id, version, room, session);
        return Ok(match db.get_pinned_cf(handle(db, cf::BACKUP_KEYS)?, &k)? {
            Some(v) => vec![(
                k,
                BackupKey { room_id: room.into(), session_id: session.into(), data: raw(&v)? },
            )],
            None => Vec::new(),
        });
    }
    let p = match scope {
        BackupKeyScope::Room(room) => {
            prefix(&[user_id.as_bytes(), &version.to_be_bytes(), room.as_bytes()])
        }
        _ => base.clone(),
    };
    let mut out = Vec::new();
    for (suffix, v) in scan(db, cf::BACKUP_KEYS, &p)? {
        let full = [&p[..], &suffix[..]].concat();
        let rest = &full[base.len()..];
        let sep =
            rest.iter().position(|b| *b == 0xFF).ok_or_else(|| corrupt("key without session"))?;
        let room_id =
            String::from_utf8(rest[..sep].to_vec()).map_err(|e| corrupt(&e.to_string()))?;
        let session_id =
            String::from_utf8(rest[sep + 1..].to_vec()).map_err(|e| corrupt(&e.to_string()))?;
        out.push((full, BackupKey { room_id, session_id, data: raw(&v)? }));
    }
    Ok(out)
}

#[async_trait]
impl KeyBackupStore for RocksStore {
    async fn create_backup_version(
        &self,
        user_id: &str,
        algorithm: Box<RawValue>,
    ) -> StorageResult<u64> {
        let user_id = user_id.to_owned();
        self.blocking(move |db, _| {
            let versions = handle(db, cf::BACKUP_VERSIONS)?;
            let mut batch = WriteBatch::default();
            let next = match newest(db, &user_id)? {
                Some((v, record)) => {
                    if record.is_none() {
                        batch.delete_cf(versions, version_key(&user_id, v));
                    }
                    v.checked_add(1).ok_or(StorageError::TooMany)?
                }
                None => 1,
            };
            let record = BackupVersionRecord { algorithm, count: 0, etag: 0 };
            batch.put_cf(versions, version_key(&user_id, next), encode(&record));
            db.write_opt(batch, &synced())?;
            Ok(next)
        })
        .await
    }

    async fn backup_version(
        &self,
        user_id: &str,
        version: u64,
    ) -> StorageResult<Option<BackupVersionRecord>> {
        match live_version(&self.db, user_id, version) {
            Ok(r) => Ok(Some(r)),
            Err(StorageError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn latest_backup_version(
        &self,
        user_id: &str,
    ) -> StorageResult<Option<(u64, BackupVersionRecord)>> {
        let mut max = u64::MAX;
        loop {
            match newest_up_to(&self.db, user_id, max)? {
                Some((v, Some(record))) => return Ok(Some((v, record))),
                Some((v, None)) if v > 0 => max = v - 1,
                _ => return Ok(None),
            }
        }
    }

    async fn update_backup_version(
        &self,
        user_id: &str,
        version: u64,
        algorithm: Box<RawValue>,
    ) -> StorageResult<()> {
        let user_id = user_id.to_owned();
        self.blocking(move |db, _| {
            let mut record = live_version(db, &user_id, version)?;
            record.algorithm = algorithm;
            db.put_cf_opt(
                handle(db, cf::BACKUP_VERSIONS)?,
                version_key(&user_id, version),
                encode(&record),
                &synced(),
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_backup_version(&self, user_id: &str, version: u64) -> StorageResult<()> {
        let user_id = user_id.to_owned();
        self.blocking(move |db, _| {
            live_version(db, &user_id, version)?;
            let versions = handle(db, cf::BACKUP_VERSIONS)?;
            let mut batch = WriteBatch::default();
            delete_all_keys_in(db, &mut batch, &user_id, version)?;
            let is_newest = matches!(newest(db, &user_id)?, Some((v, _)) if v == version);
            if is_newest {
                batch.put_cf(versions, version_key(&user_id, version), []);
            } else {
                batch.delete_cf(versions, version_key(&user_id, version));
            }
            db.write_opt(batch, &synced())?;
            Ok(())
        })
        .await
    }

    async fn delete_all_backups(&self, user_id: &str) -> StorageResult<()> {
        let user_id = user_id.to_owned();
        self.blocking(move |db, _| {
            let p = prefix(&[user_id.as_bytes()]);
            let versions = handle(db, cf::BACKUP_VERSIONS)?;
            let mut batch = WriteBatch::default();
            for (suffix, _) in scan(db, cf::BACKUP_VERSIONS, &p)? {
                let Ok(be) = <[u8; 8]>::try_from(&suffix[..]) else { continue };
                let version = u64::from_be_bytes(be);
                delete_all_keys_in(db, &mut batch, &user_id, version)?;
                batch.delete_cf(versions, version_key(&user_id, version));
            }
            db.write_opt(batch, &synced())?;
            Ok(())
        })
        .await
    }

    async fn put_backup_keys(
        &self,
        user_id: &str,
        version: u64,
        keys: Vec<BackupKey>,
        keep: KeepExisting,
        max_keys: u64,
    ) -> StorageResult<BackupVersionRecord> {
        let user_id = user_id.to_owned();
        self.blocking(move |db, _| {
            let mut record = live_version(db, &user_id, version)?;
            let keys_cf = handle(db, cf::BACKUP_KEYS)?;
            let mut batch = WriteBatch::default();
            let mut written = 0u64;
            // A session named twice in one request: the later entry meets the earlier one.
            let mut pending: std::collections::HashMap<Vec<u8>, Box<RawValue>> =
                std::collections::HashMap::new();
            for k in keys {
                let row = room_key(&user_id, version, &k.room_id, &k.session_id);
                let existing = match pending.get(&row) {
                    Some(p) => Some(p.clone()),
                    None => match db.get_pinned_cf(keys_cf, &row)? {
                        Some(v) => Some(raw(&v)?),
                        None => None,
                    },
                };
                match existing {
                    Some(old) if keep(&old, &k.data) => continue,
                    Some(_) => {}
                    None => record.count += 1,
                }
                written += 1;
                pending.insert(row, k.data);
            }
            if record.count > max_keys {
                return Err(StorageError::TooMany);
            }
            if written > 0 {
                for (row, data) in pending {
                    batch.put_cf(keys_cf, row, data.get().as_bytes());
                }
                record.etag += 1;
                batch.put_cf(
                    handle(db, cf::BACKUP_VERSIONS)?,
                    version_key(&user_id, version),
                    encode(&record),
                );
                db.write_opt(batch, &synced())?;
            }
            Ok(record)
        })
        .await
    }

    async fn backup_keys(
        &self,
        user_id: &str,
        version: u64,
        scope: BackupKeyScope<'_>,
    ) -> StorageResult<Vec<BackupKey>> {
        Ok(keys_in(&self.db, user_id, version, scope)?.into_iter().map(|(_, k)| k).collect())
    }

    async fn delete_backup_keys(
        &self,
        user_id: &str,
        version: u64,
        scope: BackupKeyScope<'_>,
    ) -> StorageResult<BackupVersionRecord> {
        let user_id = user_id.to_owned();
        let (room, session) = match scope {
            BackupKeyScope::All => (None, None),
            BackupKeyScope::Room(r) => (Some(r.to_owned()), None),
            BackupKeyScope::Session(r, s) => (Some(r.to_owned()), Some(s.to_owned())),
        };
        self.blocking(move |db, _| {
            let mut record = live_version(db, &user_id, version)?;
            let mut batch = WriteBatch::default();
            let deleted = match (&room, &session) {
                (None, _) => {
                    delete_all_keys_in(db, &mut batch, &user_id, version)?;
                    record.count
                }
                (Some(r), s) => {
                    let scope = match s {
                        Some(s) => BackupKeyScope::Session(r, s),
                        None => BackupKeyScope::Room(r),
                    };
                    let rows = keys_in(db, &user_id, version, scope)?;
                    let keys_cf = handle(db, cf::BACKUP_KEYS)?;
                    for (row, _) in &rows {
                        batch.delete_cf(keys_cf, row);
                    }
                    rows.len() as u64
                }
            };
            if deleted > 0 {
                record.count = record.count.saturating_sub(deleted);
                record.etag += 1;
                batch.put_cf(
                    handle(db, cf::BACKUP_VERSIONS)?,
                    version_key(&user_id, version),
                    encode(&record),
                );
                db.write_opt(batch, &synced())?;
            }
            Ok(record)
        })
        .await
    }
}

/// Adds to `batch` the deletion of every key of one version (a range deletion: no scan).
fn delete_all_keys_in(
    db: &DB,
    batch: &mut WriteBatch,
    user_id: &str,
    version: u64,
) -> StorageResult<()> {
    let from = prefix(&[user_id.as_bytes(), &version.to_be_bytes()]);
    // Every key of `version` sorts below the first possible key of `version + 1`.
    let to = match version.checked_add(1) {
        Some(next) => version_key(user_id, next),
        None => {
            let mut t = prefix(&[user_id.as_bytes()]);
            t.extend_from_slice(&[0xFF; 10]);
            t
        }
    };
    batch.delete_range_cf(handle(db, cf::BACKUP_KEYS)?, from, to);
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    fn json(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    fn bk(room: &str, session: &str) -> BackupKey {
        BackupKey { room_id: room.into(), session_id: session.into(), data: json("{}") }
    }

    async fn with_key(store: &RocksStore, user: &str, room: &str) -> u64 {
        let v = store.create_backup_version(user, json(r#"{"algorithm":"a"}"#)).await.unwrap();
        let keep: KeepExisting = Box::new(|_, _| false);
        store.put_backup_keys(user, v, vec![bk(room, "s")], keep, 10).await.unwrap();
        v
    }

    #[tokio::test]
    async fn deleting_a_version_leaves_the_neighbouring_versions_and_users_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), 1).unwrap();
        // "@a:x" is a prefix of "@a:x.y": the separator keeps their rows apart.
        let first = with_key(&store, "@a:x", "!r:x").await;
        let second = with_key(&store, "@a:x", "!r:x").await;
        let other = with_key(&store, "@a:x.y", "!r:x").await;
        store.delete_backup_version("@a:x", first).await.unwrap();
        assert!(store.backup_version("@a:x", first).await.unwrap().is_none());
        let keys = store.backup_keys("@a:x", second, BackupKeyScope::All).await.unwrap();
        assert_eq!(keys.len(), 1);
        let keys = store.backup_keys("@a:x.y", other, BackupKeyScope::All).await.unwrap();
        assert_eq!(keys.len(), 1);
        let (latest, _) = store.latest_backup_version("@a:x").await.unwrap().unwrap();
        assert_eq!(latest, second);
    }

    #[tokio::test]
    async fn a_room_scope_does_not_reach_a_room_whose_id_it_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), 1).unwrap();
        let v = store.create_backup_version("@a:x", json("{}")).await.unwrap();
        let keep: KeepExisting = Box::new(|_, _| false);
        let keys = vec![bk("!r:x", "s1"), bk("!r:x.y", "s2")];
        store.put_backup_keys("@a:x", v, keys, keep, 10).await.unwrap();
        let record =
            store.delete_backup_keys("@a:x", v, BackupKeyScope::Room("!r:x")).await.unwrap();
        assert_eq!(record.count, 1);
        let left = store.backup_keys("@a:x", v, BackupKeyScope::All).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].room_id.as_str(), left[0].session_id.as_str()), ("!r:x.y", "s2"));
    }

    #[tokio::test]
    async fn deleting_all_backups_removes_every_version_and_key_of_that_user_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), 1).unwrap();
        let first = with_key(&store, "@a:x", "!r:x").await;
        let second = with_key(&store, "@a:x", "!r:x").await;
        store.delete_backup_version("@a:x", second).await.unwrap(); // leaves a tombstone
        let other = with_key(&store, "@b:x", "!r:x").await;
        store.delete_all_backups("@a:x").await.unwrap();
        assert!(store.latest_backup_version("@a:x").await.unwrap().is_none());
        assert!(store.backup_keys("@a:x", first, BackupKeyScope::All).await.unwrap().is_empty());
        assert!(scan(&store.db, cf::BACKUP_VERSIONS, &prefix(&[b"@a:x"])).unwrap().is_empty());
        assert!(scan(&store.db, cf::BACKUP_KEYS, &prefix(&[b"@a:x"])).unwrap().is_empty());
        let keys = store.backup_keys("@b:x", other, BackupKeyScope::All).await.unwrap();
        assert_eq!(keys.len(), 1);
    }
}
