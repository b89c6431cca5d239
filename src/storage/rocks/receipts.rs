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
