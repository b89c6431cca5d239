//! [`RoomStore`] on RocksDB.

use std::collections::HashMap;

use async_trait::async_trait;
use rocksdb::{IteratorMode, ReadOptions, WriteBatch};
use serde::{Deserialize, Serialize};

use super::{
    RocksStore, cf, decode, encode, get_json, handle, key, keys_with_prefix, prefix, scan, synced,
};
use crate::storage::StorageError;
use crate::storage::StorageResult;
use crate::storage::rooms::{
    EventRecord, EventWrite, MembershipRecord, RoomHead, RoomRecord, RoomStore, StateChange,
    StateChangeWrite, StateGroupRecord, TxnKey,
};

#[derive(Serialize, Deserialize)]
struct AliasRecord {
    room_id: String,
    creator: String,
}

/// `localpart 0xFF device 0xFF room 0xFF request 0xFF txn_id`. Rows of the earlier
/// `localpart 0xFF device 0xFF txn_id` layout are never matched (a txn ID holds no 0xFF),
/// so they are harmless; see docs/ARCHITECTURE.md on why rows are kept.
pub(super) fn txn_key(t: &TxnKey) -> Vec<u8> {
    key(&[
        t.localpart.as_bytes(),
        t.device_id.as_bytes(),
        t.room_id.as_bytes(),
        t.request.as_bytes(),
        t.txn_id.as_bytes(),
    ])
}

fn state_change_key(room_id: &str, kind: &str, state_key: &str, pos: u64) -> Vec<u8> {
    key(&[room_id.as_bytes(), kind.as_bytes(), state_key.as_bytes(), &be(pos)])
}

pub(super) fn be(pos: u64) -> [u8; 8] {
    pos.to_be_bytes()
}

pub(super) fn from_be(bytes: &[u8]) -> StorageResult<u64> {
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
            // Memberships written earlier in this batch, which `db` cannot see yet.
            let mut memberships: HashMap<Vec<u8>, MembershipRecord> = HashMap::new();
            // Records written by this batch: a redaction may target an event of the same batch.
            let mut written: HashMap<String, EventRecord> = HashMap::new();
            let mut relations = super::relations::RelationBatch::default();
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
                written.insert(w.event_id.clone(), record);
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
                    let member_key = key(&[w.room_id.as_bytes(), user_id.as_bytes()]);
                    let previous = match memberships.get(&member_key) {
                        Some(record) => Some(record.clone()),
                        None => get_json::<MembershipRecord>(db, cf::ROOM_MEMBERS, &member_key)?,
                    };
                    // A member event that keeps the membership (a profile change) keeps
                    // the position where that membership began.
                    let since = match previous {
                        Some(p) if &p.membership == membership => p.since(),
                        _ => pos,
                    };
                    let record = MembershipRecord {
                        membership: membership.clone(),
                        event_id: w.event_id.clone(),
                        pos,
                        since: Some(since),
                        forgotten: false,
                    };
                    let bytes = encode(&record);
                    memberships.insert(member_key.clone(), record);
                    batch.put_cf(handle(db, cf::ROOM_MEMBERS)?, member_key, &bytes);
                    batch.put_cf(
                        handle(db, cf::USER_ROOMS)?,
                        key(&[user_id.as_bytes(), w.room_id.as_bytes()]),
                        &bytes,
                    );
                }
                if let Some(change) = &w.state_change {
                    batch.put_cf(
                        handle(db, cf::STATE_CHANGES)?,
                        state_change_key(&w.room_id, &change.kind, &change.state_key, pos),
                        encode(&change.change),
                    );
                }
                if let Some(txn) = &w.txn {
                    batch.put_cf(handle(db, cf::TXN_IDS)?, txn_key(txn), w.event_id.as_bytes());
                }
                for (term, count) in &w.search_terms {
                    let mut value = count.to_be_bytes().to_vec();
                    value.extend_from_slice(w.event_id.as_bytes());
                    batch.put_cf(
                        handle(db, cf::SEARCH_INDEX)?,
                        key(&[term.as_bytes(), w.room_id.as_bytes(), &be(pos)]),
                        value,
                    );
                }
                if let Some(relation) = &w.relation {
                    relations.add(db, &mut batch, &w.room_id, pos, relation)?;
                }
                if let Some(redaction) = w.redaction {
                    // The service checked the target exists in this room; an unknown one
                    // is left alone rather than created.
                    let target = match written.remove(&redaction.target) {
                        Some(record) => Some(record),
                        None => {
                            get_json::<EventRecord>(db, cf::EVENTS, redaction.target.as_bytes())?
                        }
                    };
                    if let Some(mut target) = target {
                        let index = handle(db, cf::SEARCH_INDEX)?;
                        for term in &redaction.search_terms {
                            batch.delete_cf(
                                index,
                                key(&[term.as_bytes(), target.room_id.as_bytes(), &be(target.pos)]),
                            );
                        }
                        if let Some(relation) = &redaction.relation
                            && target.redacted_by.is_none()
                        {
                            relations.remove(db, &mut batch, &w.room_id, target.pos, relation)?;
                        }
                        target.pdu = redaction.redacted_pdu;
                        target.redacted_by.get_or_insert_with(|| w.event_id.clone());
                        batch.put_cf(events, redaction.target.as_bytes(), encode(&target));
                        written.insert(redaction.target, target);
                    }
                }
            }
            db.write_opt(batch, &synced())?;
            Ok(())
        })
        .await
    }

    async fn index_search_terms(
        &self,
        room_id: &str,
        entries: Vec<(u64, String, Vec<(String, u32)>)>,
    ) -> StorageResult<()> {
        let room_id = room_id.to_owned();
        self.blocking(move |db, _| {
            let mut batch = WriteBatch::default();
            let cf = handle(db, cf::SEARCH_INDEX)?;
            for (pos, event_id, terms) in entries {
                for (term, count) in terms {
                    let mut value = count.to_be_bytes().to_vec();
                    value.extend_from_slice(event_id.as_bytes());
                    batch.put_cf(cf, key(&[term.as_bytes(), room_id.as_bytes(), &be(pos)]), value);
                }
            }
            db.write_opt(batch, &synced())?;
            Ok(())
        })
        .await
    }

    async fn search_postings(
        &self,
        term: &str,
        room_id: &str,
        before: Option<u64>,
        limit: usize,
    ) -> StorageResult<Vec<(u64, String)>> {
        let (term, room_id) = (term.to_owned(), room_id.to_owned());
        self.blocking(move |db, _| {
            let p = prefix(&[term.as_bytes(), room_id.as_bytes()]);
            let upper = match before {
                Some(pos) => key(&[term.as_bytes(), room_id.as_bytes(), &be(pos)]),
                None => {
                    // Past every key of the prefix (their suffix is 8 bytes).
                    let mut upper = p.clone();
                    upper.extend_from_slice(&[0xFF; 9]);
                    upper
                }
            };
            let mut opts = ReadOptions::default();
            opts.set_iterate_lower_bound(p.clone());
            opts.set_iterate_upper_bound(upper);
            let mut iter = db.raw_iterator_cf_opt(handle(db, cf::SEARCH_INDEX)?, opts);
            iter.seek_to_last();
            let mut out = Vec::new();
            while iter.valid() && out.len() < limit {
                let (Some(k), Some(v)) = (iter.key(), iter.value()) else { break };
                let pos = from_be(&k[p.len()..])?;
                if v.len() < 4 {
                    return Err(StorageError::Corrupt {
                        what: cf::SEARCH_INDEX,
                        detail: "short value".into(),
                    });
                }
                out.push((pos, utf8(cf::SEARCH_INDEX, &v[4..])?));
                iter.prev();
            }
            iter.status()?;
            Ok(out)
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

    async fn state_changes(
        &self,
        room_id: &str,
        kind: &str,
        state_key: &str,
    ) -> StorageResult<Vec<(u64, StateChange)>> {
        let p = prefix(&[room_id.as_bytes(), kind.as_bytes(), state_key.as_bytes()]);
        scan(&self.db, cf::STATE_CHANGES, &p)?
            .into_iter()
            .map(|(pos, v)| Ok((from_be(&pos)?, decode(cf::STATE_CHANGES, &v)?)))
            .collect()
    }

    async fn index_state_changes(
        &self,
        room_id: &str,
        entries: Vec<(u64, StateChangeWrite)>,
    ) -> StorageResult<()> {
        let room_id = room_id.to_owned();
        self.blocking(move |db, _| {
            let mut batch = WriteBatch::default();
            let cf = handle(db, cf::STATE_CHANGES)?;
            for (pos, w) in entries {
                batch.put_cf(
                    cf,
                    state_change_key(&room_id, &w.kind, &w.state_key, pos),
                    encode(&w.change),
                );
            }
            db.write_opt(batch, &synced())?;
            Ok(())
        })
        .await
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

    async fn move_alias(&self, alias: &str, from_room: &str, to_room: &str) -> StorageResult<()> {
        let (alias, from_room, to_room) =
            (alias.to_owned(), from_room.to_owned(), to_room.to_owned());
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let Some(record): Option<AliasRecord> = get_json(db, cf::ALIASES, alias.as_bytes())?
            else {
                return Err(StorageError::NotFound);
            };
            if record.room_id != from_room {
                return Err(StorageError::NotFound);
            }
            let room_aliases = handle(db, cf::ROOM_ALIASES)?;
            let mut batch = WriteBatch::default();
            batch.put_cf(
                handle(db, cf::ALIASES)?,
                alias.as_bytes(),
                encode(&AliasRecord { room_id: to_room.clone(), creator: record.creator }),
            );
            batch.delete_cf(room_aliases, key(&[from_room.as_bytes(), alias.as_bytes()]));
            batch.put_cf(room_aliases, key(&[to_room.as_bytes(), alias.as_bytes()]), []);
            db.write_opt(batch, &synced())?;
            Ok(())
        })
        .await
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
    use serde_json::value::to_raw_value;

    use super::*;
    use crate::storage::rooms::RedactionWrite;

    fn write(event_id: &str, pdu: serde_json::Value) -> EventWrite {
        EventWrite {
            event_id: event_id.into(),
            room_id: "!r:x".into(),
            pdu: to_raw_value(&pdu).unwrap(),
            origin_server_ts: 0,
            state_group: 1,
            new_state_group: None,
            head: RoomHead {
                forward_extremities: vec![event_id.into()],
                depth: 1,
                state_group: 1,
                last_pos: 0,
            },
            room: None,
            membership: None,
            txn: None,
            redaction: None,
            replaces_state: None,
            state_change: None,
            search_terms: Vec::new(),
            relation: None,
        }
    }

    fn redaction(event_id: &str, target: &str) -> EventWrite {
        let mut w = write(event_id, serde_json::json!({"type": "m.room.redaction"}));
        w.redaction = Some(RedactionWrite {
            target: target.into(),
            redacted_pdu: to_raw_value(&serde_json::json!({"content": {}})).unwrap(),
            search_terms: vec!["b:secret".into()],
            relation: None,
        });
        w
    }

    #[tokio::test]
    async fn search_postings_are_newest_first_and_a_redaction_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), 1).unwrap();
        let mut writes = Vec::new();
        for i in 0..5 {
            let mut w = write(&format!("$e{i}"), serde_json::json!({"content": {}}));
            w.search_terms = vec![("b:secret".into(), 1)];
            writes.push(w);
        }
        store.append_events(writes, 1).await.unwrap();
        let all = store.search_postings("b:secret", "!r:x", None, 10).await.unwrap();
        assert_eq!(all.iter().map(|p| p.0).collect::<Vec<_>>(), vec![5, 4, 3, 2, 1]);
        let page = store.search_postings("b:secret", "!r:x", Some(4), 2).await.unwrap();
        assert_eq!(page, vec![(3, "$e2".to_owned()), (2, "$e1".to_owned())]);
        assert!(store.search_postings("b:secre", "!r:x", None, 10).await.unwrap().is_empty());
        assert!(store.search_postings("b:secret", "!r:y", None, 10).await.unwrap().is_empty());
        store.append_events(vec![redaction("$r", "$e3")], 6).await.unwrap();
        let left = store.search_postings("b:secret", "!r:x", None, 10).await.unwrap();
        assert_eq!(left.iter().map(|p| p.0).collect::<Vec<_>>(), vec![5, 3, 2, 1]);
    }

    #[tokio::test]
    async fn a_redaction_replaces_its_targets_pdu_also_within_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), 1).unwrap();
        let target = write("$t", serde_json::json!({"content": {"body": "secret"}}));
        store
            .append_events(vec![target, redaction("$r1", "$t"), redaction("$r2", "$t")], 1)
            .await
            .unwrap();
        let record = store.event("$t").await.unwrap().unwrap();
        assert_eq!(record.pdu.get(), r#"{"content":{}}"#);
        assert_eq!(record.redacted_by.as_deref(), Some("$r1"), "the first redaction is kept");
        assert_eq!(record.pos, 1);
    }

    #[tokio::test]
    async fn a_redaction_of_an_unknown_event_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), 1).unwrap();
        store.append_events(vec![redaction("$r", "$unknown")], 1).await.unwrap();
        assert!(store.event("$unknown").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_txn_id_is_scoped_to_its_room_and_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), 1).unwrap();
        let mut w = write("$e", serde_json::json!({}));
        let key = TxnKey::send("alice", "DEV", "!r:x", "m.room.message", "t1");
        w.txn = Some(key.clone());
        store.append_events(vec![w], 1).await.unwrap();
        assert_eq!(store.txn_event(&key).await.unwrap().as_deref(), Some("$e"));
        for other in [
            TxnKey::send("alice", "DEV", "!other:x", "m.room.message", "t1"),
            TxnKey::send("alice", "DEV", "!r:x", "m.reaction", "t1"),
            TxnKey::redact("alice", "DEV", "!r:x", "$x", "t1"),
            TxnKey::send("alice", "DEV2", "!r:x", "m.room.message", "t1"),
        ] {
            assert!(store.txn_event(&other).await.unwrap().is_none(), "{other:?}");
        }
    }

    fn ts_write(room: &str, id: &str, ts: u64) -> EventWrite {
        let pdu =
            serde_json::json!({"room_id": room, "origin_server_ts": ts, "type": "m.room.message"});
        EventWrite { room_id: room.to_owned(), origin_server_ts: ts, ..write(id, pdu) }
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
                ts_write("!r:x", "$a", 100),
                ts_write("!r:x", "$b", 200),
                ts_write("!r:xy", "$other", 150),
                ts_write("!r:x", "$c", 200),
                ts_write("!r:x", "$d", 300),
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
