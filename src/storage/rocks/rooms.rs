//! [`RoomStore`] on RocksDB.

use async_trait::async_trait;
use rocksdb::{IteratorMode, ReadOptions, WriteBatch};
use serde::{Deserialize, Serialize};

use super::{
    RocksStore, cf, decode, encode, get_json, handle, key, keys_with_prefix, prefix, scan, synced,
};
use crate::storage::StorageError;
use crate::storage::StorageResult;
use crate::storage::rooms::{
    EventRecord, EventWrite, MembershipRecord, RoomHead, RoomRecord, RoomStore, StateGroupRecord,
    TxnKey,
};

#[derive(Serialize, Deserialize)]
struct AliasRecord {
    room_id: String,
    creator: String,
}

fn txn_key(t: &TxnKey) -> Vec<u8> {
    key(&[t.localpart.as_bytes(), t.device_id.as_bytes(), t.txn_id.as_bytes()])
}

fn be(pos: u64) -> [u8; 8] {
    pos.to_be_bytes()
}

fn from_be(bytes: &[u8]) -> StorageResult<u64> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StorageError::Corrupt {
        what: "stream position",
        detail: format!("{} bytes", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

fn utf8(what: &'static str, bytes: &[u8]) -> StorageResult<String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|e| StorageError::Corrupt { what, detail: e.to_string() })
}

/// Key of the timestamp index: `room 0xFF ts(be64) pos(be64)`.
fn ts_key(room_id: &str, ts: u64, pos: u64) -> Vec<u8> {
    let mut suffix = [0u8; 16];
    suffix[..8].copy_from_slice(&be(ts));
    suffix[8..].copy_from_slice(&be(pos));
    key(&[room_id.as_bytes(), &suffix])
}

/// `meta` key marking that the timestamp index covers every stored event.
const TS_INDEX_BUILT: &str = "room_events_by_ts_built";

/// One-time migrations at open. Databases written before the timestamp index existed get
/// it built from the `events` column family: one pass over the events, in batches; the
/// marker is written last, so an interrupted build is redone (it writes the same keys).
pub(super) fn migrate(db: &rocksdb::DB) -> StorageResult<()> {
    #[derive(Deserialize)]
    struct Ts {
        origin_server_ts: u64,
    }
    let meta = handle(db, cf::META)?;
    if db.get_pinned_cf(meta, TS_INDEX_BUILT)?.is_some() {
        return Ok(());
    }
    let index = handle(db, cf::ROOM_EVENTS_BY_TS)?;
    let mut batch = WriteBatch::default();
    let mut indexed = 0u64;
    for item in db.iterator_cf(handle(db, cf::EVENTS)?, IteratorMode::Start) {
        let (k, v) = item?;
        let record: EventRecord = decode(cf::EVENTS, &v)?;
        let ts: Ts = serde_json::from_str(record.pdu.get())
            .map_err(|e| StorageError::Corrupt { what: cf::EVENTS, detail: e.to_string() })?;
        batch.put_cf(index, ts_key(&record.room_id, ts.origin_server_ts, record.pos), &k);
        indexed += 1;
        if batch.len() >= 4096 {
            db.write(std::mem::take(&mut batch))?;
        }
    }
    batch.put_cf(meta, TS_INDEX_BUILT, b"1");
    db.write_opt(batch, &synced())?;
    if indexed > 0 {
        tracing::info!(events = indexed, "built the timestamp index");
    }
    Ok(())
}

/// The last key of a column family, if any.
fn last_key(db: &rocksdb::DB, cf_name: &'static str) -> StorageResult<Option<Box<[u8]>>> {
    match db.iterator_cf(handle(db, cf_name)?, IteratorMode::End).next() {
        Some(item) => Ok(Some(item?.0)),
        None => Ok(None),
    }
}

#[async_trait]
impl RoomStore for RocksStore {
    async fn append_events(&self, writes: Vec<EventWrite>, first_pos: u64) -> StorageResult<()> {
        self.blocking(move |db, _| {
            let mut batch = WriteBatch::default();
            let events = handle(db, cf::EVENTS)?;
            for (i, w) in writes.into_iter().enumerate() {
                let pos = first_pos + i as u64;
                let record = EventRecord {
                    room_id: w.room_id.clone(),
                    pos,
                    state_group: w.state_group,
                    pdu: w.pdu,
                    redacted_by: None,
                    txn: w.txn.as_ref().map(|t| (t.device_id.clone(), t.txn_id.clone())),
                    replaces_state: w.replaces_state.clone(),
                };
                batch.put_cf(events, w.event_id.as_bytes(), encode(&record));
                batch.put_cf(
                    handle(db, cf::ROOM_EVENTS)?,
                    key(&[w.room_id.as_bytes(), &be(pos)]),
                    w.event_id.as_bytes(),
                );
                batch.put_cf(
                    handle(db, cf::ROOM_EVENTS_BY_TS)?,
                    ts_key(&w.room_id, w.origin_server_ts, pos),
                    w.event_id.as_bytes(),
                );
                if let Some((id, group)) = &w.new_state_group {
                    batch.put_cf(handle(db, cf::STATE_GROUPS)?, be(*id), encode(group));
                }
                if let Some(room) = &w.room {
                    batch.put_cf(handle(db, cf::ROOMS)?, w.room_id.as_bytes(), encode(room));
                }
                let mut head = w.head;
                head.last_pos = pos;
                batch.put_cf(handle(db, cf::ROOM_HEADS)?, w.room_id.as_bytes(), encode(&head));
                if let Some((user_id, membership)) = &w.membership {
                    let record = MembershipRecord {
                        membership: membership.clone(),
                        event_id: w.event_id.clone(),
                        pos,
                        forgotten: false,
                    };
                    let bytes = encode(&record);
                    batch.put_cf(
                        handle(db, cf::ROOM_MEMBERS)?,
                        key(&[w.room_id.as_bytes(), user_id.as_bytes()]),
                        &bytes,
                    );
                    batch.put_cf(
                        handle(db, cf::USER_ROOMS)?,
                        key(&[user_id.as_bytes(), w.room_id.as_bytes()]),
                        &bytes,
                    );
                }
                if let Some(txn) = &w.txn {
                    batch.put_cf(handle(db, cf::TXN_IDS)?, txn_key(txn), w.event_id.as_bytes());
                }
                if let Some(redacted) = &w.redacts
                    && let Some(mut target) =
                        get_json::<EventRecord>(db, cf::EVENTS, redacted.as_bytes())?
                    && target.redacted_by.is_none()
                {
                    target.redacted_by = Some(w.event_id.clone());
                    batch.put_cf(events, redacted.as_bytes(), encode(&target));
                }
            }
            db.write_opt(batch, &synced())?;
            Ok(())
        })
        .await
    }

    async fn max_state_group(&self) -> StorageResult<u64> {
        match last_key(&self.db, cf::STATE_GROUPS)? {
            Some(k) => from_be(&k),
            None => Ok(0),
        }
    }

    async fn rooms(&self) -> StorageResult<Vec<(RoomRecord, RoomHead)>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(handle(&self.db, cf::ROOMS)?, IteratorMode::Start) {
            let (k, v) = item?;
            let room: RoomRecord = decode(cf::ROOMS, &v)?;
            let head: RoomHead = get_json(&self.db, cf::ROOM_HEADS, &k)?.ok_or_else(|| {
                StorageError::Corrupt { what: cf::ROOM_HEADS, detail: room.room_id.clone() }
            })?;
            out.push((room, head));
        }
        Ok(out)
    }

    async fn event(&self, event_id: &str) -> StorageResult<Option<EventRecord>> {
        get_json(&self.db, cf::EVENTS, event_id.as_bytes())
    }

    async fn room_events(
        &self,
        room_id: &str,
        after: Option<u64>,
        before: Option<u64>,
        backwards: bool,
        limit: usize,
    ) -> StorageResult<Vec<(u64, String)>> {
        let room = room_id.as_bytes();
        let lower = key(&[room, &be(after.map_or(0, |a| a.saturating_add(1)))]);
        let upper = match before {
            Some(b) => key(&[room, &be(b)]),
            // One past the room's prefix: room 0xFF is followed by 8 bytes, so room 0xFF 0xFF…
            // with 9 bytes is above every key of the room.
            None => {
                let mut k = prefix(&[room]);
                k.extend_from_slice(&[0xFF; 9]);
                k
            }
        };
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(lower.clone());
        opts.set_iterate_upper_bound(upper.clone());
        let mode = if backwards { IteratorMode::End } else { IteratorMode::Start };
        let p_len = room.len() + 1;
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(handle(&self.db, cf::ROOM_EVENTS)?, opts, mode) {
            let (k, v) = item?;
            if out.len() >= limit {
                break;
            }
            out.push((from_be(&k[p_len..])?, utf8(cf::ROOM_EVENTS, &v)?));
        }
        Ok(out)
    }

    async fn room_events_by_ts(
        &self,
        room_id: &str,
        ts: u64,
        backwards: bool,
        limit: usize,
    ) -> StorageResult<Vec<(u64, u64, String)>> {
        let room_start = ts_key(room_id, 0, 0);
        // Above every key of the room: its prefix, then 17 bytes of 0xFF.
        let mut room_end = prefix(&[room_id.as_bytes()]);
        room_end.extend_from_slice(&[0xFF; 17]);
        let (lower, upper) = if backwards {
            let upper = match ts.checked_add(1) {
                Some(next) => ts_key(room_id, next, 0),
                None => room_end,
            };
            (room_start, upper)
        } else {
            (ts_key(room_id, ts, 0), room_end)
        };
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(lower);
        opts.set_iterate_upper_bound(upper);
        let mode = if backwards { IteratorMode::End } else { IteratorMode::Start };
        let p_len = room_id.len() + 1;
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(handle(&self.db, cf::ROOM_EVENTS_BY_TS)?, opts, mode) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            let suffix = k.get(p_len..).unwrap_or_default();
            if suffix.len() != 16 {
                return Err(StorageError::Corrupt {
                    what: cf::ROOM_EVENTS_BY_TS,
                    detail: format!("key suffix of {} bytes", suffix.len()),
                });
            }
            let (ts, pos) = (from_be(&suffix[..8])?, from_be(&suffix[8..])?);
            out.push((ts, pos, utf8(cf::ROOM_EVENTS_BY_TS, &v)?));
        }
        Ok(out)
    }

    async fn state_group(&self, id: u64) -> StorageResult<Option<StateGroupRecord>> {
        get_json(&self.db, cf::STATE_GROUPS, &be(id))
    }

    async fn txn_event(&self, txn: &TxnKey) -> StorageResult<Option<String>> {
        match self.db.get_cf(handle(&self.db, cf::TXN_IDS)?, txn_key(txn))? {
            Some(v) => Ok(Some(utf8(cf::TXN_IDS, &v)?)),
            None => Ok(None),
        }
    }

    async fn user_memberships(
        &self,
        user_id: &str,
    ) -> StorageResult<Vec<(String, MembershipRecord)>> {
        scan(&self.db, cf::USER_ROOMS, &prefix(&[user_id.as_bytes()]))?
            .into_iter()
            .map(|(room, v)| Ok((utf8(cf::USER_ROOMS, &room)?, decode(cf::USER_ROOMS, &v)?)))
            .collect()
    }

    async fn membership(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> StorageResult<Option<MembershipRecord>> {
        get_json(&self.db, cf::ROOM_MEMBERS, &key(&[room_id.as_bytes(), user_id.as_bytes()]))
    }

    async fn room_memberships(
        &self,
        room_id: &str,
    ) -> StorageResult<Vec<(String, MembershipRecord)>> {
        scan(&self.db, cf::ROOM_MEMBERS, &prefix(&[room_id.as_bytes()]))?
            .into_iter()
            .map(|(user, v)| Ok((utf8(cf::ROOM_MEMBERS, &user)?, decode(cf::ROOM_MEMBERS, &v)?)))
            .collect()
    }

    async fn forget_room(&self, user_id: &str, room_id: &str) -> StorageResult<()> {
        let (user_id, room_id) = (user_id.to_owned(), room_id.to_owned());
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let k = key(&[user_id.as_bytes(), room_id.as_bytes()]);
            let Some(mut record): Option<MembershipRecord> = get_json(db, cf::USER_ROOMS, &k)?
            else {
                return Err(StorageError::NotFound);
            };
            record.forgotten = true;
            db.put_cf_opt(handle(db, cf::USER_ROOMS)?, k, encode(&record), &synced())?;
            Ok(())
        })
        .await
    }

    async fn create_alias(&self, alias: &str, room_id: &str, creator: &str) -> StorageResult<()> {
        let (alias, room_id, creator) = (alias.to_owned(), room_id.to_owned(), creator.to_owned());
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let aliases = handle(db, cf::ALIASES)?;
            if db.get_pinned_cf(aliases, alias.as_bytes())?.is_some() {
                return Err(StorageError::AlreadyExists);
            }
            let mut batch = WriteBatch::default();
            batch.put_cf(
                aliases,
                alias.as_bytes(),
                encode(&AliasRecord { room_id: room_id.clone(), creator }),
            );
            batch.put_cf(
                handle(db, cf::ROOM_ALIASES)?,
                key(&[room_id.as_bytes(), alias.as_bytes()]),
                [],
            );
            db.write_opt(batch, &synced())?;
            Ok(())
        })
        .await
    }

    async fn alias(&self, alias: &str) -> StorageResult<Option<(String, String)>> {
        Ok(get_json::<AliasRecord>(&self.db, cf::ALIASES, alias.as_bytes())?
            .map(|a| (a.room_id, a.creator)))
    }

    async fn delete_alias(&self, alias: &str) -> StorageResult<()> {
        let alias = alias.to_owned();
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let Some(record): Option<AliasRecord> = get_json(db, cf::ALIASES, alias.as_bytes())?
            else {
                return Err(StorageError::NotFound);
            };
            let mut batch = WriteBatch::default();
            batch.delete_cf(handle(db, cf::ALIASES)?, alias.as_bytes());
            batch.delete_cf(
                handle(db, cf::ROOM_ALIASES)?,
                key(&[record.room_id.as_bytes(), alias.as_bytes()]),
            );
            db.write_opt(batch, &synced())?;
            Ok(())
        })
        .await
    }

    async fn room_aliases(&self, room_id: &str) -> StorageResult<Vec<String>> {
        let p = prefix(&[room_id.as_bytes()]);
        keys_with_prefix(&self.db, cf::ROOM_ALIASES, &p)?
            .into_iter()
            .map(|k| utf8(cf::ROOM_ALIASES, &k[p.len()..]))
            .collect()
    }

    async fn set_published(&self, room_id: &str, published: bool) -> StorageResult<()> {
        let room_id = room_id.to_owned();
        self.blocking(move |db, _| {
            let cf = handle(db, cf::PUBLIC_ROOMS)?;
            if published {
                db.put_cf_opt(cf, room_id.as_bytes(), b"{}", &synced())?;
            } else {
                db.delete_cf_opt(cf, room_id.as_bytes(), &synced())?;
            }
            Ok(())
        })
        .await
    }

    async fn published_rooms(&self) -> StorageResult<Vec<String>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(handle(&self.db, cf::PUBLIC_ROOMS)?, IteratorMode::Start) {
            let (k, _) = item?;
            out.push(utf8(cf::PUBLIC_ROOMS, &k)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::rooms::RoomHead;

    fn write(room: &str, id: &str, ts: u64) -> EventWrite {
        let pdu =
            format!(r#"{{"room_id":"{room}","origin_server_ts":{ts},"type":"m.room.message"}}"#);
        EventWrite {
            event_id: id.to_owned(),
            room_id: room.to_owned(),
            pdu: serde_json::value::RawValue::from_string(pdu).unwrap(),
            origin_server_ts: ts,
            state_group: 1,
            new_state_group: None,
            head: RoomHead { forward_extremities: vec![], depth: 1, state_group: 1, last_pos: 0 },
            room: None,
            membership: None,
            txn: None,
            redacts: None,
            replaces_state: None,
        }
    }

    async fn seek(store: &RocksStore, ts: u64, backwards: bool) -> Vec<String> {
        store
            .room_events_by_ts("!r:x", ts, backwards, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, _, id)| id)
            .collect()
    }

    #[tokio::test]
    async fn the_timestamp_index_seeks_both_ways_and_is_rebuilt_for_old_databases() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RocksStore::open(dir.path(), 1).unwrap();
            let writes = vec![
                write("!r:x", "$a", 100),
                write("!r:x", "$b", 200),
                write("!r:xy", "$other", 150),
                write("!r:x", "$c", 200),
                write("!r:x", "$d", 300),
            ];
            store.append_events(writes, 1).await.unwrap();
            assert_eq!(seek(&store, 150, false).await, ["$b", "$c", "$d"]);
            assert_eq!(seek(&store, 250, true).await, ["$c", "$b", "$a"]);
            assert_eq!(seek(&store, 200, true).await, ["$c", "$b", "$a"]);
            assert_eq!(seek(&store, 200, false).await, ["$b", "$c", "$d"]);
            assert!(seek(&store, 301, false).await.is_empty());
            assert!(seek(&store, 99, true).await.is_empty());
            assert_eq!(seek(&store, u64::MAX, true).await[0], "$d");
            // A database from before the index: no index rows, no marker.
            let db = &store.db;
            let index = handle(db, cf::ROOM_EVENTS_BY_TS).unwrap();
            let keys: Vec<_> =
                db.iterator_cf(index, IteratorMode::Start).map(|i| i.unwrap().0).collect();
            assert_eq!(keys.len(), 5);
            for k in keys {
                db.delete_cf(index, k).unwrap();
            }
            db.delete_cf(handle(db, cf::META).unwrap(), TS_INDEX_BUILT).unwrap();
            assert!(seek(&store, 0, false).await.is_empty());
        }
        let store = RocksStore::open(dir.path(), 1).unwrap();
        assert_eq!(seek(&store, 150, false).await, ["$b", "$c", "$d"]);
        assert_eq!(seek(&store, 250, true).await, ["$c", "$b", "$a"]);
    }
}
