//! [`ReceiptStore`] on RocksDB.

use async_trait::async_trait;
use rocksdb::{IteratorMode, WriteBatch};
use serde::Deserialize;

use super::{RocksStore, cf, decode, encode, handle, key, prefix, scan, synced};
use crate::storage::receipts::{ReceiptRecord, ReceiptStore};
use crate::storage::records::now_ms;
use crate::storage::{StorageError, StorageResult};

/// `meta` key of the highest receipt stream position written.
const RECEIPT_POS: &[u8] = b"receipt_pos";

fn receipt_key(r: &ReceiptRecord) -> Vec<u8> {
    key(&[
        r.room_id.as_bytes(),
        r.user_id.as_bytes(),
        r.receipt_type.as_bytes(),
        r.thread_id.as_deref().unwrap_or("").as_bytes(),
    ])
}

/// A row of the older `read_positions` CF (`user_id 0xFF room_id`).
#[derive(Deserialize)]
struct ReadPosition {
    event_id: String,
    event_pos: u64,
}

#[async_trait]
impl ReceiptStore for RocksStore {
    async fn put_receipts(
        &self,
        receipts: Vec<ReceiptRecord>,
        removed: Vec<ReceiptRecord>,
    ) -> StorageResult<()> {
        // No store lock: `Receipts` serialises each user's writes; writers of different
        // users share fsyncs (RocksDB group commit); the position is merged as a maximum.
        self.blocking(move |db, _| {
            let mut batch = WriteBatch::default();
            let receipts_cf = handle(db, cf::RECEIPTS)?;
            for r in &removed {
                batch.delete_cf(receipts_cf, receipt_key(r));
            }
            let mut max = 0;
            for r in &receipts {
                batch.put_cf(receipts_cf, receipt_key(r), encode(r));
                max = max.max(r.pos);
            }
            batch.merge_cf(handle(db, cf::META)?, RECEIPT_POS, max.to_be_bytes());
            db.write_opt(batch, &synced())?;
            Ok(())
        })
        .await
    }

    async fn room_receipts(&self, room_id: &str) -> StorageResult<Vec<ReceiptRecord>> {
        let p = prefix(&[room_id.as_bytes()]);
        self.blocking(move |db, _| {
            scan(db, cf::RECEIPTS, &p)?.into_iter().map(|(_, v)| decode(cf::RECEIPTS, &v)).collect()
        })
        .await
    }

    async fn max_receipt_pos(&self) -> StorageResult<u64> {
        match self.db.get_cf(handle(&self.db, cf::META)?, RECEIPT_POS)? {
            Some(bytes) => {
                let arr: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                    StorageError::Corrupt { what: cf::META, detail: "receipt position".into() }
                })?;
                Ok(u64::from_be_bytes(arr))
            }
            None => Ok(0),
        }
    }

    async fn migrate_read_positions(&self, after: u64) -> StorageResult<u64> {
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let old = handle(db, cf::READ_POSITIONS)?;
            let receipts_cf = handle(db, cf::RECEIPTS)?;
            let mut batch = WriteBatch::default();
            let mut pos = after;
            let ts = now_ms();
            for item in db.iterator_cf(old, IteratorMode::Start) {
                let (k, v) = item?;
                batch.delete_cf(old, &k);
                let mut parts = k.splitn(2, |b| *b == super::SEP);
                let (Some(user), Some(room)) = (parts.next(), parts.next()) else { continue };
                let (Ok(user), Ok(room)) = (std::str::from_utf8(user), std::str::from_utf8(room))
                else {
                    continue;
                };
                let Ok(old) = serde_json::from_slice::<ReadPosition>(&v) else { continue };
                pos += 1;
                let receipt = ReceiptRecord {
                    room_id: room.to_owned(),
                    user_id: user.to_owned(),
                    receipt_type: "m.read.private".into(),
                    thread_id: None,
                    event_id: old.event_id,
                    event_pos: old.event_pos,
                    ts,
                    pos,
                };
                let k = receipt_key(&receipt);
                // A receipt already there (sent after an interrupted migration) wins.
                if db.get_pinned_cf(receipts_cf, &k)?.is_none() {
                    batch.put_cf(receipts_cf, k, encode(&receipt));
                }
            }
            if batch.is_empty() {
                return Ok(0);
            }
            batch.merge_cf(handle(db, cf::META)?, RECEIPT_POS, pos.to_be_bytes());
            db.write_opt(batch, &synced())?;
            Ok(pos - after)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(
        user: &str,
        kind: &str,
        thread: Option<&str>,
        event_pos: u64,
        pos: u64,
    ) -> ReceiptRecord {
        ReceiptRecord {
            room_id: "!r:x".into(),
            user_id: user.into(),
            receipt_type: kind.into(),
            thread_id: thread.map(str::to_owned),
            event_id: format!("$e{event_pos}"),
            event_pos,
            ts: 1,
            pos,
        }
    }

    #[tokio::test]
    async fn a_receipt_replaces_its_slot_only_and_removals_go_in_the_same_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), 1).unwrap();
        let read = receipt("@a:x", "m.read", None, 1, 1);
        let private = receipt("@a:x", "m.read.private", None, 1, 2);
        let thread = receipt("@a:x", "m.read", Some("$root"), 1, 3);
        store.put_receipts(vec![read, private.clone(), thread.clone()], vec![]).await.unwrap();
        let newer = receipt("@a:x", "m.read", None, 5, 4);
        store.put_receipts(vec![newer.clone()], vec![thread]).await.unwrap();
        let mut stored = store.room_receipts("!r:x").await.unwrap();
        stored.sort_by_key(|r| r.pos);
        assert_eq!(stored, vec![private, newer]);
        assert!(store.room_receipts("!r:xy").await.unwrap().is_empty(), "prefix is exact");
        assert_eq!(store.max_receipt_pos().await.unwrap(), 4);
    }

    #[tokio::test]
    async fn read_positions_of_older_databases_become_private_receipts_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), 1).unwrap();
        store.put_receipts(vec![receipt("@b:x", "m.read", None, 1, 7)], vec![]).await.unwrap();
        let old = handle(&store.db, cf::READ_POSITIONS).unwrap();
        let row = br#"{"event_id":"$e3","event_pos":3,"pos":12}"#;
        store.db.put_cf(old, key(&[b"@a:x", b"!r:x"]), row).unwrap();
        store.db.put_cf(old, key(&[b"@b:x", b"!r:x"]), row).unwrap();
        assert_eq!(store.migrate_read_positions(7).await.unwrap(), 2);
        assert_eq!(store.migrate_read_positions(9).await.unwrap(), 0, "done once");
        let mut stored = store.room_receipts("!r:x").await.unwrap();
        stored.sort_by_key(|r| r.pos);
        assert_eq!(stored.len(), 3, "{stored:?}");
        assert_eq!((stored[1].user_id.as_str(), stored[1].pos), ("@a:x", 8));
        assert_eq!(stored[1].receipt_type, "m.read.private");
        assert_eq!((stored[1].event_id.as_str(), stored[1].event_pos), ("$e3", 3));
        assert_eq!((stored[2].user_id.as_str(), stored[2].pos), ("@b:x", 9));
        assert_eq!(store.max_receipt_pos().await.unwrap(), 9);
    }
}
