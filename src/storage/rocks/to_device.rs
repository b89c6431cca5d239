//! [`ToDeviceStore`] on RocksDB.
//!
//! CF `to_device`: `localpart 0xFF device 0xFF pos(be64)` → [`ToDeviceMessage`], so a
//! device's queue is one prefix in stream order. The request's transaction ID goes to
//! `txn_ids` in the same batch. CF `to_device_counts`: `localpart 0xFF device` → the length
//! of the device's queue (be64), changed in the batch of every write to the queue, all of
//! them under the store's write lock, so the cap on a queue costs one read per device.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

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
/// `meta` key present once `to_device_counts` has been built (databases older than it).
const COUNTS_BUILT: &[u8] = b"to_device_counts_built";

/// Builds the queue lengths of a database written before they were kept.
pub(super) fn migrate(db: &DB) -> StorageResult<()> {
    let meta = handle(db, cf::META)?;
    if db.get_pinned_cf(meta, COUNTS_BUILT)?.is_some() {
        return Ok(());
    }
    let mut counts: HashMap<Vec<u8>, u64> = HashMap::new();
    for item in db.iterator_cf(handle(db, cf::TO_DEVICE)?, IteratorMode::Start) {
        let (k, _) = item?;
        // `localpart 0xFF device 0xFF pos(8 bytes)`: the device is all but the last 9 bytes.
        let device = k.get(..k.len().saturating_sub(9)).unwrap_or_default();
        *counts.entry(device.to_vec()).or_default() += 1;
    }
    let h = handle(db, cf::TO_DEVICE_COUNTS)?;
    let mut batch = WriteBatch::default();
    for (device, n) in &counts {
        batch.put_cf(h, device, be(*n));
    }
    batch.put_cf(meta, COUNTS_BUILT, b"1");
    db.write_opt(batch, &synced())?;
    if !counts.is_empty() {
        tracing::info!(devices = counts.len(), "counted the pending to-device messages");
    }
    Ok(())
}

/// How many messages wait for a device.
fn pending_count(db: &DB, device_key: &[u8]) -> StorageResult<u64> {
    match db.get_pinned_cf(handle(db, cf::TO_DEVICE_COUNTS)?, device_key)? {
        Some(bytes) => from_be(&bytes),
        None => Ok(0),
    }
}

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
    batch.delete_cf(
        handle(db, cf::TO_DEVICE_COUNTS)?,
        key(&[localpart.as_bytes(), device_id.as_bytes()]),
    );
    // `localpart 0xFF device 0xFF (no room) 0xFF request 0xFF txn`: the request is UTF-8,
    // never 0xFF, so every such key sorts before the prefix followed by 0xFF.
    let from = prefix(&[localpart.as_bytes(), device_id.as_bytes(), b""]);
    let mut to = from.clone();
    to.push(0xFF);
    batch.delete_range_cf(handle(db, cf::TXN_IDS)?, from, to);
    Ok(())
}

/// The keys of a device's messages at positions ≤ `upto`.
fn acknowledged(db: &DB, device_key: &[u8], upto: u64) -> StorageResult<Vec<Box<[u8]>>> {
    let mut p = device_key.to_vec();
    p.push(0xFF);
    let queue = handle(db, cf::TO_DEVICE)?;
    let mut out = Vec::new();
    for item in db.iterator_cf(queue, IteratorMode::From(&p, Direction::Forward)) {
        let (k, _) = item?;
        if !k.starts_with(&p) || from_be(&k[p.len()..])? > upto {
            break;
        }
        out.push(k);
    }
    Ok(out)
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
            // Queue lengths of the devices written to, as read and then as grown.
            let mut counts: HashMap<Vec<u8>, u64> = HashMap::new();
            let mut full: Vec<(String, String)> = Vec::new();
            let mut dropped = 0;
            for (localpart, device_id, message) in rows {
                let device_key = key(&[localpart.as_bytes(), device_id.as_bytes()]);
                let count = match counts.entry(device_key) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => {
                        let n = pending_count(db, e.key())?;
                        e.insert(n)
                    }
                };
                if *count >= send.max_pending as u64 {
                    dropped += 1;
                    if !full.iter().any(|(l, d)| l == localpart && *d == device_id) {
                        full.push((localpart.to_owned(), device_id));
                    }
                    continue;
                }
                *count += 1;
                last_pos += 1;
                batch.put_cf(queue, message_key(localpart, &device_id, last_pos), encode(message));
                if !recipients.iter().any(|r| r == localpart) {
                    recipients.push(localpart.to_owned());
                }
            }
            let count_cf = handle(db, cf::TO_DEVICE_COUNTS)?;
            for (device_key, n) in counts {
                batch.put_cf(count_cf, device_key, be(n));
            }
            if last_pos >= send.first_pos {
                batch.put_cf(handle(db, cf::META)?, TO_DEVICE_POS, be(last_pos));
            }
            batch.put_cf(handle(db, cf::TXN_IDS)?, txn, []);
            db.write_opt(batch, &synced())?;
            Ok(ToDeviceSent::Stored { last_pos, recipients, dropped, full })
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
        let device_key = key(&[localpart.as_bytes(), device_id.as_bytes()]);
        // Most syncs acknowledge nothing new: then no lock, no write and no fsync.
        if acknowledged(&self.db, &device_key, upto)?.is_empty() {
            return Ok(());
        }
        self.blocking(move |db, lock| {
            // Under the write lock, as every change of the queue's length.
            let _guard = lock.lock();
            let keys = acknowledged(db, &device_key, upto)?;
            if keys.is_empty() {
                return Ok(());
            }
            let queue = handle(db, cf::TO_DEVICE)?;
            let mut batch = WriteBatch::default();
            let left = pending_count(db, &device_key)?.saturating_sub(keys.len() as u64);
            for k in keys {
                batch.delete_cf(queue, k);
            }
            batch.put_cf(handle(db, cf::TO_DEVICE_COUNTS)?, &device_key, be(left));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::rocks::tests::{session, user};
    use crate::storage::rooms::TxnKey;
    use crate::storage::{AccountStore, DeviceListChange};

    fn message() -> ToDeviceMessage {
        let content = serde_json::value::RawValue::from_string("{}".into()).unwrap();
        ToDeviceMessage { sender: "@bob:x".into(), kind: "m.test".into(), content }
    }

    /// One message to each of `devices` of alice (`*` for all), as request `txn`.
    async fn send(store: &RocksStore, txn: &str, first_pos: u64, devices: &[&str]) -> ToDeviceSent {
        let messages = devices
            .iter()
            .map(|d| {
                let target = match *d {
                    "*" => ToDeviceTarget::AllDevices,
                    d => ToDeviceTarget::Device(d.into()),
                };
                ("alice".to_owned(), target, message())
            })
            .collect();
        let send = ToDeviceSend {
            txn: TxnKey::send_to_device("bob", "BOB", "m.test", txn),
            messages,
            first_pos,
            max_messages: 100,
            max_pending: 2,
        };
        store.send_to_device(send).await.unwrap()
    }

    fn full_devices(sent: &ToDeviceSent) -> Vec<&str> {
        match sent {
            ToDeviceSent::Stored { full, .. } => full.iter().map(|(_, d)| d.as_str()).collect(),
            ToDeviceSent::Retry => panic!("not a retry"),
        }
    }

    async fn queue(store: &RocksStore, device: &str) -> Vec<u64> {
        let rows = store.to_device_messages("alice", device, 0, u64::MAX, 100).await.unwrap();
        rows.into_iter().map(|(pos, _)| pos).collect()
    }

    #[tokio::test]
    async fn a_full_queue_drops_new_messages_until_acknowledged_and_others_still_receive() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), 1).unwrap();
        store.create_user(user("alice"), Some(session("A", "ta")), None).await.unwrap();
        store.create_session("alice", session("B", "tb")).await.unwrap();

        assert!(full_devices(&send(&store, "1", 1, &["A", "B"]).await).is_empty());
        // `*` and A by name: A gets two messages in one request, which fills its queue.
        let sent = send(&store, "2", 3, &["*", "A"]).await;
        assert_eq!(full_devices(&sent), vec!["A"]);
        assert!(matches!(sent, ToDeviceSent::Stored { dropped: 1, last_pos: 4, .. }), "{sent:?}");
        assert_eq!(queue(&store, "A").await, vec![1, 3]);
        assert_eq!(queue(&store, "B").await, vec![2, 4]);
        let sent = send(&store, "3", 5, &["A"]).await;
        assert_eq!(full_devices(&sent), vec!["A"]);
        assert!(matches!(sent, ToDeviceSent::Stored { last_pos: 4, .. }), "{sent:?}");

        // Once the device acknowledges one message, there is room for one more.
        store.delete_to_device_messages("alice", "A", 1).await.unwrap();
        assert!(full_devices(&send(&store, "4", 5, &["A"]).await).is_empty());
        assert_eq!(queue(&store, "A").await, vec![3, 5]);
        assert_eq!(full_devices(&send(&store, "5", 6, &["A"]).await), vec!["A"]);

        // A deleted device's count goes with it: a new device of that ID starts empty.
        let change = DeviceListChange { user_id: "@alice:x".into(), pos: 1 };
        store.delete_devices("alice", vec!["A".into()], change).await.unwrap();
        store.create_session("alice", session("A", "ta2")).await.unwrap();
        assert!(full_devices(&send(&store, "6", 6, &["A"]).await).is_empty());
        assert_eq!(queue(&store, "A").await, vec![6]);
    }

    #[tokio::test]
    async fn queue_lengths_are_counted_for_a_database_written_before_them() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RocksStore::open(dir.path(), 1).unwrap();
            store.create_user(user("alice"), Some(session("A", "ta")), None).await.unwrap();
            send(&store, "1", 1, &["A"]).await;
            send(&store, "2", 2, &["A"]).await;
            // As an older version left it: messages, no counts.
            let db = &store.db;
            db.delete_cf(handle(db, cf::META).unwrap(), COUNTS_BUILT).unwrap();
            let p = key(&["alice".as_bytes(), "A".as_bytes()]);
            db.delete_cf(handle(db, cf::TO_DEVICE_COUNTS).unwrap(), p).unwrap();
        }
        let store = RocksStore::open(dir.path(), 1).unwrap();
        assert_eq!(full_devices(&send(&store, "3", 3, &["A"]).await), vec!["A"]);
        assert_eq!(queue(&store, "A").await, vec![1, 2]);
    }
}
