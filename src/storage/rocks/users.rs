//! [`UserDataStore`] on RocksDB.

use async_trait::async_trait;
use rocksdb::WriteBatch;

use super::{
    RocksStore, cf, decode, encode, get_json, handle, key, keys_with_prefix, prefix, scan, synced,
};
use crate::storage::users::{AccountDataRecord, UserDataStore};
use crate::storage::{StorageError, StorageResult, UserRecord};

/// `meta` key of the highest account-data stream position written.
const ACCOUNT_DATA_POS: &[u8] = b"account_data_pos";

fn account_data_key(user_id: &str, room_id: Option<&str>, kind: &str) -> Vec<u8> {
    key(&[user_id.as_bytes(), room_id.unwrap_or("").as_bytes(), kind.as_bytes()])
}

#[async_trait]
impl UserDataStore for RocksStore {
    async fn create_filter(
        &self,
        user_id: &str,
        definition: String,
        max_filters: usize,
    ) -> StorageResult<u64> {
        let user_id = user_id.to_owned();
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let p = prefix(&[user_id.as_bytes()]);
            let mut next = 0;
            let rows = scan(db, cf::FILTERS, &p)?;
            for (id, stored) in &rows {
                let Some(id) = std::str::from_utf8(id).ok().and_then(|i| i.parse::<u64>().ok())
                else {
                    continue;
                };
                if stored.as_ref() == definition.as_bytes() {
                    return Ok(id);
                }
                next = next.max(id + 1);
            }
            if rows.len() >= max_filters {
                return Err(StorageError::TooMany);
            }
            db.put_cf_opt(
                handle(db, cf::FILTERS)?,
                key(&[user_id.as_bytes(), next.to_string().as_bytes()]),
                definition.as_bytes(),
                &synced(),
            )?;
            Ok(next)
        })
        .await
    }

    async fn filter(&self, user_id: &str, id: u64) -> StorageResult<Option<String>> {
        let k = key(&[user_id.as_bytes(), id.to_string().as_bytes()]);
        match self.db.get_cf(handle(&self.db, cf::FILTERS)?, k)? {
            Some(v) => String::from_utf8(v)
                .map(Some)
                .map_err(|e| StorageError::Corrupt { what: cf::FILTERS, detail: e.to_string() }),
            None => Ok(None),
        }
    }

    async fn set_account_data(
        &self,
        user_id: &str,
        record: AccountDataRecord,
        max_types: usize,
    ) -> StorageResult<()> {
        let user_id = user_id.to_owned();
        // No store lock: `UserData` serialises each user's account-data writes, which makes
        // the count and the write one step. Writers of different users run concurrently
        // (RocksDB group-commits their fsyncs); the position is merged as a maximum.
        self.blocking(move |db, _| {
            let room = record.room_id.as_deref().unwrap_or("");
            let k = account_data_key(&user_id, record.room_id.as_deref(), &record.kind);
            let cf = handle(db, cf::ACCOUNT_DATA)?;
            if db.get_pinned_cf(cf, &k)?.is_none() {
                let scope = prefix(&[user_id.as_bytes(), room.as_bytes()]);
                if keys_with_prefix(db, cf::ACCOUNT_DATA, &scope)?.len() >= max_types {
                    return Err(StorageError::TooMany);
                }
            }
            let mut batch = WriteBatch::default();
            batch.put_cf(cf, k, encode(&record));
            batch.merge_cf(handle(db, cf::META)?, ACCOUNT_DATA_POS, record.pos.to_be_bytes());
            db.write_opt(batch, &synced())?;
            Ok(())
        })
        .await
    }

    async fn account_data_entry(
        &self,
        user_id: &str,
        room_id: Option<&str>,
        kind: &str,
    ) -> StorageResult<Option<AccountDataRecord>> {
        get_json(&self.db, cf::ACCOUNT_DATA, &account_data_key(user_id, room_id, kind))
    }

    async fn account_data(&self, user_id: &str) -> StorageResult<Vec<AccountDataRecord>> {
        scan(&self.db, cf::ACCOUNT_DATA, &prefix(&[user_id.as_bytes()]))?
            .into_iter()
            .map(|(_, v)| decode(cf::ACCOUNT_DATA, &v))
            .collect()
    }

    async fn max_account_data_pos(&self) -> StorageResult<u64> {
        // Kept in `meta` by every account-data write, in the same batch.
        match self.db.get_cf(handle(&self.db, cf::META)?, ACCOUNT_DATA_POS)? {
            Some(bytes) => {
                let arr: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                    StorageError::Corrupt { what: cf::META, detail: "account data position".into() }
                })?;
                Ok(u64::from_be_bytes(arr))
            }
            None => Ok(0),
        }
    }

    async fn set_profile(
        &self,
        localpart: &str,
        displayname: Option<Option<String>>,
        avatar_url: Option<Option<String>>,
    ) -> StorageResult<()> {
        let localpart = localpart.to_owned();
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let mut user: UserRecord =
                get_json(db, cf::USERS, localpart.as_bytes())?.ok_or(StorageError::NotFound)?;
            if let Some(d) = displayname {
                user.displayname = d;
            }
            if let Some(a) = avatar_url {
                user.avatar_url = a;
            }
            db.put_cf_opt(handle(db, cf::USERS)?, localpart.as_bytes(), encode(&user), &synced())?;
            Ok(())
        })
        .await
    }
}
