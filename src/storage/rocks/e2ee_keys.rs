//! [`E2eeKeyStore`] on RocksDB.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use super::{
    KeyCounts, RocksStore, cf, decode, get_json, handle, key, keys_with_prefix, prefix, scan,
    synced,
};
use crate::storage::e2ee_keys::{DeviceListChange, E2eeKeyStore, FallbackKeyRecord, KeyUpload};
use crate::storage::{StorageError, StorageResult};

fn utf8(what: &'static str, bytes: &[u8]) -> StorageResult<String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|e| StorageError::Corrupt { what, detail: e.to_string() })
}

/// Adds to `batch` the deletion of a device's keys, one-time keys, fallback keys and the
/// signatures made on its keys.
pub(super) fn delete_device_keys_in(
    db: &DB,
    batch: &mut WriteBatch,
    localpart: &str,
    device_id: &str,
) -> StorageResult<()> {
    batch.delete_cf(
        handle(db, cf::DEVICE_KEYS)?,
        key(&[localpart.as_bytes(), device_id.as_bytes()]),
    );
    let p = prefix(&[localpart.as_bytes(), device_id.as_bytes()]);
    for name in [cf::ONE_TIME_KEYS, cf::FALLBACK_KEYS, cf::KEY_SIGNATURES] {
        let h = handle(db, name)?;
        for k in keys_with_prefix(db, name, &p)? {
            batch.delete_cf(h, &k);
        }
    }
    Ok(())
}

/// Adds to `batch` the record of a device-list change.
pub(super) fn put_device_list_change_in(
    db: &DB,
    batch: &mut WriteBatch,
    change: &DeviceListChange,
) -> StorageResult<()> {
    let h = handle(db, cf::DEVICE_LIST_CHANGES)?;
    batch.put_cf(h, change.user_id.as_bytes(), change.pos.to_be_bytes());
    Ok(())
}

/// Adds to `batch` the claim of one key of a device: its first one-time key of `algorithm`
/// not in `taken` (a device named twice in one request gets two keys), else its fallback key
/// of that algorithm, marked used.
fn claim_in(
    db: &DB,
    batch: &mut WriteBatch,
    taken: &mut HashSet<Box<[u8]>>,
    localpart: &str,
    device_id: &str,
    algorithm: &str,
) -> StorageResult<Option<(String, String)>> {
    let (lp, dev) = (localpart.as_bytes(), device_id.as_bytes());
    let mut p = prefix(&[lp, dev]);
    p.extend_from_slice(algorithm.as_bytes());
    p.push(b':');
    let h = handle(db, cf::ONE_TIME_KEYS)?;
    // Bounded to the device's keys of that algorithm (`…algorithm;`, ';' follows ':'):
    // without a bound, a device whose keys are all claimed would make the seek skip the
    // deletion markers of every claimed key after its own, until a live key.
    let mut upper = p.clone();
    upper.pop();
    upper.push(b';');
    let mut bounded = rocksdb::ReadOptions::default();
    bounded.set_iterate_upper_bound(upper);
    for item in db.iterator_cf_opt(h, bounded, IteratorMode::From(&p, Direction::Forward)) {
        let (k, v) = item?;
        if !k.starts_with(&p) {
            break;
        }
        if taken.contains(&k) {
            continue;
        }
        let id = utf8(cf::ONE_TIME_KEYS, &k[p.len() - algorithm.len() - 1..])?;
        let value = utf8(cf::ONE_TIME_KEYS, &v)?;
        batch.delete_cf(h, &k);
        taken.insert(k);
        return Ok(Some((id, value)));
    }
    let k = key(&[lp, dev, algorithm.as_bytes()]);
    let Some(mut record): Option<FallbackKeyRecord> = get_json(db, cf::FALLBACK_KEYS, &k)? else {
        return Ok(None);
    };
    if !record.used {
        record.used = true;
        batch.put_cf(handle(db, cf::FALLBACK_KEYS)?, &k, super::encode(&record));
    }
    Ok(Some((record.key_id, record.key)))
}

impl RocksStore {
    /// A device's key counts, from memory (read from storage once, after each change).
    pub(super) fn key_counts(
        &self,
        localpart: &str,
        device_id: &str,
    ) -> StorageResult<Arc<KeyCounts>> {
        let cache_key = (localpart.to_owned(), device_id.to_owned());
        let counts = self.key_counts.get(&cache_key, || {
            let p = prefix(&[localpart.as_bytes(), device_id.as_bytes()]);
            let mut counts = KeyCounts::default();
            for k in keys_with_prefix(&self.db, cf::ONE_TIME_KEYS, &p)? {
                let id = utf8(cf::ONE_TIME_KEYS, &k[p.len()..])?;
                let algorithm = id.split_once(':').map_or(id.as_str(), |(a, _)| a);
                *counts.one_time.entry(algorithm.to_owned()).or_insert(0) += 1;
            }
            for (algorithm, v) in scan(&self.db, cf::FALLBACK_KEYS, &p)? {
                let record: FallbackKeyRecord = decode(cf::FALLBACK_KEYS, &v)?;
                if !record.used {
                    counts.unused_fallback.push(utf8(cf::FALLBACK_KEYS, &algorithm)?);
                }
            }
            Ok(Some(Arc::new(counts)))
        })?;
        Ok(counts.unwrap_or_default())
    }
}

#[async_trait]
impl E2eeKeyStore for RocksStore {
    async fn upload_keys(
        &self,
        localpart: &str,
        device_id: &str,
        upload: KeyUpload,
    ) -> StorageResult<bool> {
        let (localpart, device_id) = (localpart.to_owned(), device_id.to_owned());
        let key_counts = self.key_counts.clone();
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let (lp, dev) = (localpart.as_bytes(), device_id.as_bytes());
            // Under the write lock, as device deletion: no keys outlive their device.
            if db.get_pinned_cf(handle(db, cf::DEVICES)?, key(&[lp, dev]))?.is_none() {
                return Err(StorageError::NotFound);
            }
            let mut batch = WriteBatch::default();
            let mut new_device_keys = false;
            if let Some(keys) = &upload.device_keys {
                let k = key(&[lp, dev]);
                let h = handle(db, cf::DEVICE_KEYS)?;
                match db.get_pinned_cf(h, &k)? {
                    Some(old) if old.as_ref() != keys.as_bytes() => {
                        return Err(StorageError::AlreadyExists);
                    }
                    Some(_) => {}
                    None => {
                        batch.put_cf(h, &k, keys.as_bytes());
                        new_device_keys = true;
                    }
                }
            }
            let h = handle(db, cf::ONE_TIME_KEYS)?;
            for (id, otk) in &upload.one_time_keys {
                let k = key(&[lp, dev, id.as_bytes()]);
                match db.get_pinned_cf(h, &k)? {
                    Some(old) if old.as_ref() != otk.as_bytes() => {
                        return Err(StorageError::AlreadyExists);
                    }
                    Some(_) => {}
                    None => batch.put_cf(h, &k, otk.as_bytes()),
                }
            }
            let h = handle(db, cf::FALLBACK_KEYS)?;
            for (algorithm, record) in &upload.fallback_keys {
                let k = key(&[lp, dev, algorithm.as_bytes()]);
                let old: Option<FallbackKeyRecord> = get_json(db, cf::FALLBACK_KEYS, &k)?;
                // Re-uploading the same key keeps its used flag; a new key replaces it.
                if old.is_none_or(|o| o.key_id != record.key_id || o.key != record.key) {
                    batch.put_cf(h, &k, super::encode(record));
                }
            }
            db.write_opt(batch, &synced())?;
            key_counts.invalidate(&(localpart.clone(), device_id.clone()));
            Ok(new_device_keys)
        })
        .await
    }

    async fn device_keys(&self, localpart: &str, device_id: &str) -> StorageResult<Option<String>> {
        let k = key(&[localpart.as_bytes(), device_id.as_bytes()]);
        match self.db.get_pinned_cf(handle(&self.db, cf::DEVICE_KEYS)?, k)? {
            Some(v) => utf8(cf::DEVICE_KEYS, &v).map(Some),
            None => Ok(None),
        }
    }

    async fn user_device_keys(&self, localpart: &str) -> StorageResult<BTreeMap<String, String>> {
        scan(&self.db, cf::DEVICE_KEYS, &prefix(&[localpart.as_bytes()]))?
            .into_iter()
            .map(|(device, v)| Ok((utf8(cf::DEVICE_KEYS, &device)?, utf8(cf::DEVICE_KEYS, &v)?)))
            .collect()
    }

    async fn one_time_key_counts(
        &self,
        localpart: &str,
        device_id: &str,
    ) -> StorageResult<BTreeMap<String, u64>> {
        Ok(self.key_counts(localpart, device_id)?.one_time.clone())
    }

    async fn unused_fallback_key_types(
        &self,
        localpart: &str,
        device_id: &str,
    ) -> StorageResult<Vec<String>> {
        Ok(self.key_counts(localpart, device_id)?.unused_fallback.clone())
    }

    async fn claim_keys(
        &self,
        claims: Vec<(String, String, String)>,
    ) -> StorageResult<Vec<Option<(String, String)>>> {
        let key_counts = self.key_counts.clone();
        self.blocking(move |db, lock| {
            // Under the write lock until written: two claims never get the same key.
            let _guard = lock.lock();
            let mut batch = WriteBatch::default();
            let mut taken: HashSet<Box<[u8]>> = HashSet::new();
            let mut out = Vec::with_capacity(claims.len());
            for (localpart, device_id, algorithm) in &claims {
                let claimed =
                    claim_in(db, &mut batch, &mut taken, localpart, device_id, algorithm)?;
                out.push(claimed);
            }
            // Claims that found nothing, or only used fallback keys, write nothing.
            if !batch.is_empty() {
                db.write_opt(batch, &synced())?;
                for (localpart, device_id, _) in claims {
                    key_counts.invalidate(&(localpart, device_id));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn set_device_list_changed(&self, change: DeviceListChange) -> StorageResult<()> {
        self.blocking(move |db, _| {
            let mut batch = WriteBatch::default();
            put_device_list_change_in(db, &mut batch, &change)?;
            db.write_opt(batch, &synced())?;
            Ok(())
        })
        .await
    }

    async fn device_list_changes(&self) -> StorageResult<Vec<(String, u64)>> {
        scan(&self.db, cf::DEVICE_LIST_CHANGES, &[])?
            .into_iter()
            .map(|(user, v)| {
                let pos = <[u8; 8]>::try_from(v.as_ref()).map_err(|_| StorageError::Corrupt {
                    what: cf::DEVICE_LIST_CHANGES,
                    detail: "position is not 8 bytes".into(),
                })?;
                Ok((utf8(cf::DEVICE_LIST_CHANGES, &user)?, u64::from_be_bytes(pos)))
            })
            .collect()
    }

    async fn set_cross_signing_keys(
        &self,
        localpart: &str,
        keys: Vec<(String, String)>,
    ) -> StorageResult<()> {
        let localpart = localpart.to_owned();
        self.blocking(move |db, _| {
            let h = handle(db, cf::CROSS_SIGNING_KEYS)?;
            let mut batch = WriteBatch::default();
            for (kind, json) in &keys {
                batch.put_cf(h, key(&[localpart.as_bytes(), kind.as_bytes()]), json.as_bytes());
            }
            db.write_opt(batch, &synced())?;
            Ok(())
        })
        .await
    }

    async fn cross_signing_keys(&self, localpart: &str) -> StorageResult<BTreeMap<String, String>> {
        scan(&self.db, cf::CROSS_SIGNING_KEYS, &prefix(&[localpart.as_bytes()]))?
            .into_iter()
            .map(|(kind, v)| {
                Ok((utf8(cf::CROSS_SIGNING_KEYS, &kind)?, utf8(cf::CROSS_SIGNING_KEYS, &v)?))
            })
            .collect()
    }

    async fn add_key_signatures(
        &self,
        signatures: Vec<(String, String, String, String, String)>,
    ) -> StorageResult<()> {
        self.blocking(move |db, _| {
            let h = handle(db, cf::KEY_SIGNATURES)?;
            let mut batch = WriteBatch::default();
            for (localpart, target, signer, key_id, signature) in &signatures {
                let parts = [localpart, target, signer, key_id].map(|p| p.as_bytes());
                batch.put_cf(h, key(&parts), signature.as_bytes());
            }
            db.write_opt(batch, &synced())?;
            Ok(())
        })
        .await
    }

    async fn key_signatures(
        &self,
        localpart: &str,
        target_key: &str,
    ) -> StorageResult<Vec<(String, String, String)>> {
        let p = prefix(&[localpart.as_bytes(), target_key.as_bytes()]);
        let mut out = Vec::new();
        for (rest, v) in scan(&self.db, cf::KEY_SIGNATURES, &p)? {
            let Some(at) = rest.iter().position(|&b| b == super::SEP) else { continue };
            out.push((
                utf8(cf::KEY_SIGNATURES, &rest[..at])?,
                utf8(cf::KEY_SIGNATURES, &rest[at + 1..])?,
                utf8(cf::KEY_SIGNATURES, &v)?,
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::AccountStore;
    use crate::storage::rocks::tests::{session, user};

    fn otk(id: &str) -> (String, String) {
        (format!("signed_curve25519:{id}"), format!("{{\"key\":\"{id}\"}}"))
    }

    fn claim(device: &str) -> (String, String, String) {
        ("alice".into(), device.into(), "signed_curve25519".into())
    }

    /// One request's claims are one write: each gets its own one-time key (a device named
    /// twice gets two), then the fallback key, and devices without keys get nothing.
    #[tokio::test]
    async fn claims_of_one_request_take_distinct_keys_then_the_fallback_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), 1).unwrap();
        store.create_user(user("alice"), Some(session("A", "ta")), None).await.unwrap();
        store.create_session("alice", session("B", "tb")).await.unwrap();
        let fallback = FallbackKeyRecord {
            key_id: "signed_curve25519:F".into(),
            key: "{\"key\":\"F\"}".into(),
            used: false,
        };
        let upload = KeyUpload {
            device_keys: None,
            one_time_keys: vec![otk("K1"), otk("K2")],
            fallback_keys: vec![("signed_curve25519".into(), fallback)],
        };
        store.upload_keys("alice", "A", upload).await.unwrap();

        let got = store.claim_keys(vec![claim("A"), claim("B"), claim("A"), claim("A")]).await;
        let ids: Vec<_> = got.unwrap().into_iter().map(|c| c.map(|(id, _)| id)).collect();
        let id = |s: &str| Some(format!("signed_curve25519:{s}"));
        assert_eq!(ids, vec![id("K1"), None, id("K2"), id("F")]);
        let counts = store.one_time_key_counts("alice", "A").await.unwrap();
        assert_eq!(counts.get("signed_curve25519").copied().unwrap_or(0), 0);
        assert!(store.unused_fallback_key_types("alice", "A").await.unwrap().is_empty());
        // The fallback key stays, reported used.
        let again = store.claim_keys(vec![claim("A")]).await.unwrap();
        assert_eq!(again[0].as_ref().map(|(id, _)| id.clone()), id("F"));
    }
}
