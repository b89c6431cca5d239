//! [`ToDeviceStore`] on RocksDB.
//!
//! CF `to_device`: `localpart 0xFF device 0xFF pos(be64)` → [`ToDeviceMessage`], so a
//! device's queue is one prefix in stream order. The request's transaction ID goes to
//! `txn_ids` in the same batch.

use async_trait::async_trait;
use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use super::rooms::{be, from_be, txn_key};
use super::{RocksStore, cf, decode, device_ids, encode, handle, key, prefix, synced};
use crate::storage::to_device::{
    ToDeviceMessage, ToDeviceSend, ToDeviceSent, ToDeviceStore, ToDeviceTarget,
};
use crate::storage::{StorageError, StorageResult};

/// `meta` key of the highest to-device position used.
const TO_DEVICE_POS: &[u8] = b"to_device_pos";

fn message_key(localpart: &str, device_id: &str, pos: u64) -> Vec<u8> {
    key(&[localpart.as_bytes(), device_id.as_bytes(), &be(pos)])
}

/// Adds to `batch` the deletion of every message waiting for a device, and of the
/// transaction IDs of its `sendToDevice` requests (a later device of that ID starts afresh).
pub(super) fn delete_device_messages_in(
    db: &DB,
    batch: &mut WriteBatch,
    localpart: &str,
    device_id: &str,
) -> StorageResult<()> {
    let from = prefix(&[localpart.as_bytes(), device_id.as_bytes()]);
    // Past every `from + pos(be64)` key: one byte longer, all 0xFF.
    let mut to = from.clone();
    to.extend_from_slice(&[0xFF; 9]);
    batch.delete_range_cf(handle(db, cf::TO_DEVICE)?, from, to);
    // `localpart 0xFF device 0xFF (no room) 0xFF request 0xFF txn`: the request is UTF-8,
    // never 0xFF, so every such key sorts before the prefix followed by 0xFF.
    let from = prefix(&[localpart.as_bytes(), device_id.as_bytes(), b""]);
    let mut to = from.clone();
    to.push(0xFF);
    batch.delete_range_cf(handle(db, cf::TXN_IDS)?, from, to);
    Ok(())
}

#[async_trait]
impl ToDeviceStore for RocksStore {
    async fn send_to_device(&self, send: ToDeviceSend) -> StorageResult<ToDeviceSent> {
        // The store's write lock orders this against device deletion (which holds it too),
        // so a message is never stored for a device deleted meanwhile.
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let txn = txn_key(&send.txn);
            if db.get_pinned_cf(handle(db, cf::TXN_IDS)?, &txn)?.is_some() {
                return Ok(ToDeviceSent::Retry);
            }
            let devices = handle(db, cf::DEVICES)?;
            let mut rows: Vec<(&str, String, &ToDeviceMessage)> = Vec::new();
            for (localpart, target, message) in &send.messages {
                match target {
                    ToDeviceTarget::Device(id) => {
                        let k = key(&[localpart.as_bytes(), id.as_bytes()]);
                        if db.get_pinned_cf(devices, k)?.is_some() {
                            rows.push((localpart, id.clone(), message));
                        }
                    }
                    ToDeviceTarget::AllDevices => {
                        for id in device_ids(db, localpart)? {
                            rows.push((localpart, id, message));
                        }
                    }
                }
                if rows.len() > send.max_messages {
                    return Err(StorageError::TooMany);
                }
            }
            let mut batch = WriteBatch::default();
            let queue = handle(db, cf::TO_DEVICE)?;
            let mut last_pos = send.first_pos - 1;
            let mut recipients: Vec<String> = Vec::new();
            for (localpart, device_id, message) in rows {
                last_pos += 1;
                batch.put_cf(queue, message_key(localpart, &device_id, last_pos), encode(message));
                if !recipients.iter().any(|r| r == localpart) {
                    recipients.push(localpart.to_owned());
                }
            }
            if last_pos >= send.first_pos {
                batch.put_cf(handle(db, cf::META)?, TO_DEVICE_POS, be(last_pos));
            }
            batch.put_cf(handle(db, cf::TXN_IDS)?, txn, []);
            db.write_opt(batch, &synced())?;
            Ok(ToDeviceSent::Stored { last_pos, recipients })
        })
        .await
    }

    async fn to_device_messages(
        &self,
        localpart: &str,
        device_id: &str,
        after: u64,
        until: u64,
        limit: usize,
    ) -> StorageResult<Vec<(u64, ToDeviceMessage)>> {
        let p = prefix(&[localpart.as_bytes(), device_id.as_bytes()]);
        let start = message_key(localpart, device_id, after.saturating_add(1));
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            handle(&self.db, cf::TO_DEVICE)?,
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if out.len() >= limit || !k.starts_with(&p) {
                break;
            }
            let pos = from_be(&k[p.len()..])?;
            if pos > until {
                break;
            }
            out.push((pos, decode(cf::TO_DEVICE, &v)?));
        }
        Ok(out)
    }

    async fn delete_to_device_messages(
        &self,
        localpart: &str,
        device_id: &str,
        upto: u64,
    ) -> StorageResult<()> {
        let p = prefix(&[localpart.as_bytes(), device_id.as_bytes()]);
        let queue = handle(&self.db, cf::TO_DEVICE)?;
        let mut acknowledged = Vec::new();
        for item in self.db.iterator_cf(queue, IteratorMode::From(&p, Direction::Forward)) {
            let (k, _) = item?;
            if !k.starts_with(&p) || from_be(&k[p.len()..])? > upto {
                break;
            }
            acknowledged.push(k);
        }
        // Most syncs acknowledge nothing new: then no write and no fsync.
        if acknowledged.is_empty() {
            return Ok(());
        }
        self.blocking(move |db, _| {
            let queue = handle(db, cf::TO_DEVICE)?;
            let mut batch = WriteBatch::default();
            for k in acknowledged {
                batch.delete_cf(queue, k);
            }
            db.write_opt(batch, &synced())?;
            Ok(())
        })
        .await
    }

    async fn max_to_device_pos(&self) -> StorageResult<u64> {
        match self.db.get_cf(handle(&self.db, cf::META)?, TO_DEVICE_POS)? {
            Some(bytes) => from_be(&bytes),
            None => Ok(0),
        }
    }
}
