//! [`RelationStore`] on RocksDB: CF `relations`, six key families told apart by their
//! first byte (then `0xFF`):
//!
//! - `a room parent pos` → [`RelationRow`]: every relation to `parent`, in stream order
//!   (`/relations` without a type);
//! - `t room parent rel_type pos` → [`RelationRow`]: the same by relation type
//!   (`/relations/{relType}`, aggregations);
//! - `k room parent type key sender` → event ID: annotations, unique per sender and key;
//! - `s room root` → [`ThreadSummary`]: a thread's latest reply and reply count;
//! - `l room latest_pos` → root: threads by latest activity (`/threads`);
//! - `p room root user` → replies by the user in the thread (be64).
//!
//! Rows are written in the relating event's batch and removed in its redaction's
//! ([`RelationBatch`], which also sees what the same batch wrote before).

use std::collections::{BTreeMap, HashMap, HashSet};

use rocksdb::{IteratorMode, ReadOptions, WriteBatch};

use super::rooms::{be, from_be};
use super::{RocksStore, cf, decode, encode, handle, key};
use crate::storage::StorageResult;
use crate::storage::relations::{
    AggregationRows, RelationRow, RelationStore, RelationWrite, ThreadSummary,
};

const THREAD: &str = "m.thread";

fn all_key(room: &str, parent: &str, pos: u64) -> Vec<u8> {
    key(&[b"a", room.as_bytes(), parent.as_bytes(), &be(pos)])
}

fn typed_key(room: &str, parent: &str, rel_type: &str, pos: u64) -> Vec<u8> {
    key(&[b"t", room.as_bytes(), parent.as_bytes(), rel_type.as_bytes(), &be(pos)])
}

fn annotation_key(room: &str, parent: &str, kind: &str, k: &str, sender: &str) -> Vec<u8> {
    key(&[
        b"k",
        room.as_bytes(),
        parent.as_bytes(),
        kind.as_bytes(),
        k.as_bytes(),
        sender.as_bytes(),
    ])
}

fn summary_key(room: &str, root: &str) -> Vec<u8> {
    key(&[b"s", room.as_bytes(), root.as_bytes()])
}

fn latest_key(room: &str, pos: u64) -> Vec<u8> {
    key(&[b"l", room.as_bytes(), &be(pos)])
}

fn participant_key(room: &str, root: &str, user: &str) -> Vec<u8> {
    key(&[b"p", room.as_bytes(), root.as_bytes(), user.as_bytes()])
}

/// Rows of one prefix whose last 8 bytes are a position, strictly between `after` and
/// `before`, in order or (`backwards`) reversed; at most `limit`.
fn positioned(
    db: &rocksdb::DB,
    prefix: Vec<u8>,
    after: Option<u64>,
    before: Option<u64>,
    backwards: bool,
    limit: usize,
) -> StorageResult<Vec<(u64, Box<[u8]>)>> {
    let mut lower = prefix.clone();
    lower.extend_from_slice(&be(after.map_or(0, |a| a.saturating_add(1))));
    let upper = match before {
        Some(b) => {
            let mut k = prefix.clone();
            k.extend_from_slice(&be(b));
            k
        }
        None => {
            let mut k = prefix.clone();
            k.extend_from_slice(&[0xFF; 9]);
            k
        }
    };
    let mut opts = ReadOptions::default();
    opts.set_iterate_lower_bound(lower);
    opts.set_iterate_upper_bound(upper);
    let mode = if backwards { IteratorMode::End } else { IteratorMode::Start };
    let mut out = Vec::new();
    for item in db.iterator_cf_opt(handle(db, cf::RELATIONS)?, opts, mode) {
        if out.len() >= limit {
            break;
        }
        let (k, v) = item?;
        if k.len() != prefix.len() + 8 {
            continue;
        }
        out.push((from_be(&k[prefix.len()..])?, v));
    }
    Ok(out)
}

fn rows(raw: Vec<(u64, Box<[u8]>)>) -> StorageResult<Vec<(u64, RelationRow)>> {
    raw.into_iter().map(|(pos, v)| Ok((pos, decode(cf::RELATIONS, &v)?))).collect()
}

fn get<T: serde::de::DeserializeOwned>(db: &rocksdb::DB, k: &[u8]) -> StorageResult<Option<T>> {
    match db.get_pinned_cf(handle(db, cf::RELATIONS)?, k)? {
        Some(v) => Ok(Some(decode(cf::RELATIONS, &v)?)),
        None => Ok(None),
    }
}

fn get_count(db: &rocksdb::DB, k: &[u8]) -> StorageResult<u64> {
    match db.get_pinned_cf(handle(db, cf::RELATIONS)?, k)? {
        Some(v) => from_be(&v),
        None => Ok(0),
    }
}

/// The index writes of one event batch. Thread summaries and participant counts read
/// earlier in the batch are kept here, since the database does not see them until written.
#[derive(Default)]
pub(super) struct RelationBatch {
    summaries: HashMap<Vec<u8>, Option<ThreadSummary>>,
    participants: HashMap<Vec<u8>, u64>,
    /// Thread replies written by this batch: `(room, root)` → pos → event ID.
    added: HashMap<(String, String), BTreeMap<u64, String>>,
    /// Thread replies removed by this batch: `(room, root, pos)`.
    removed: HashSet<(String, String, u64)>,
}

impl RelationBatch {
    fn summary(&mut self, db: &rocksdb::DB, k: &[u8]) -> StorageResult<Option<ThreadSummary>> {
        if let Some(s) = self.summaries.get(k) {
            return Ok(s.clone());
        }
        let s: Option<ThreadSummary> = get(db, k)?;
        self.summaries.insert(k.to_vec(), s.clone());
        Ok(s)
    }

    fn participant(&mut self, db: &rocksdb::DB, k: &[u8]) -> StorageResult<u64> {
        if let Some(n) = self.participants.get(k) {
            return Ok(*n);
        }
        let n = get_count(db, k)?;
        self.participants.insert(k.to_vec(), n);
        Ok(n)
    }

    /// Indexes the relation of the event at `pos`.
    pub(super) fn add(
        &mut self,
        db: &rocksdb::DB,
        batch: &mut WriteBatch,
        room: &str,
        pos: u64,
        w: &RelationWrite,
    ) -> StorageResult<()> {
        let relations = handle(db, cf::RELATIONS)?;
        let row = encode(&w.row);
        batch.put_cf(relations, all_key(room, &w.parent, pos), &row);
        batch.put_cf(relations, typed_key(room, &w.parent, &w.row.rel_type, pos), &row);
        if let Some(k) = &w.annotation_key {
            batch.put_cf(
                relations,
                annotation_key(room, &w.parent, &w.row.kind, k, &w.row.sender),
                w.row.event_id.as_bytes(),
            );
        }
        if w.thread {
            let sk = summary_key(room, &w.parent);
            let mut summary = self.summary(db, &sk)?.unwrap_or(ThreadSummary {
                latest_pos: 0,
                latest_event_id: String::new(),
                count: 0,
            });
            summary.count += 1;
            if pos > summary.latest_pos {
                if summary.latest_pos > 0 {
                    batch.delete_cf(relations, latest_key(room, summary.latest_pos));
                }
                summary.latest_pos = pos;
                summary.latest_event_id = w.row.event_id.clone();
                batch.put_cf(relations, latest_key(room, pos), w.parent.as_bytes());
            }
            batch.put_cf(relations, &sk, encode(&summary));
            self.summaries.insert(sk, Some(summary));
            let pk = participant_key(room, &w.parent, &w.row.sender);
            let n = self.participant(db, &pk)? + 1;
            batch.put_cf(relations, &pk, be(n));
            self.participants.insert(pk, n);
            self.added
                .entry((room.to_owned(), w.parent.clone()))
                .or_default()
                .insert(pos, w.row.event_id.clone());
        }
        Ok(())
    }

    /// Removes the relation of the (redacted) event at `pos`.
    pub(super) fn remove(
        &mut self,
        db: &rocksdb::DB,
        batch: &mut WriteBatch,
        room: &str,
        pos: u64,
        w: &RelationWrite,
    ) -> StorageResult<()> {
        let relations = handle(db, cf::RELATIONS)?;
        batch.delete_cf(relations, all_key(room, &w.parent, pos));
        batch.delete_cf(relations, typed_key(room, &w.parent, &w.row.rel_type, pos));
        if let Some(k) = &w.annotation_key {
            batch.delete_cf(
                relations,
                annotation_key(room, &w.parent, &w.row.kind, k, &w.row.sender),
            );
        }
        if !w.thread {
            return Ok(());
        }
        let sk = summary_key(room, &w.parent);
        let Some(mut summary) = self.summary(db, &sk)? else { return Ok(()) };
        let thread = (room.to_owned(), w.parent.clone());
        self.removed.insert((thread.0.clone(), thread.1.clone(), pos));
        let pk = participant_key(room, &w.parent, &w.row.sender);
        let n = self.participant(db, &pk)?.saturating_sub(1);
        if n == 0 {
            batch.delete_cf(relations, &pk);
        } else {
            batch.put_cf(relations, &pk, be(n));
        }
        self.participants.insert(pk, n);
        summary.count = summary.count.saturating_sub(1);
        if summary.latest_pos == pos {
            batch.delete_cf(relations, latest_key(room, pos));
            // The newest reply left: written by this batch, or stored (skipping the ones
            // this batch removed).
            let mut latest = self
                .added
                .get(&thread)
                .and_then(|m| {
                    m.range(..pos).rev().find(|(p, _)| {
                        !self.removed.contains(&(room.to_owned(), w.parent.clone(), **p))
                    })
                })
                .map(|(p, id)| (*p, id.clone()));
            let prefix = key(&[b"t", room.as_bytes(), w.parent.as_bytes(), THREAD.as_bytes(), b""]);
            let mut before = pos;
            'stored: loop {
                let found = rows(positioned(db, prefix.clone(), None, Some(before), true, 16)?)?;
                if found.is_empty() {
                    break;
                }
                for (p, row) in found {
                    before = p;
                    if latest.as_ref().is_some_and(|(l, _)| *l >= p) {
                        break 'stored;
                    }
                    if !self.removed.contains(&(room.to_owned(), w.parent.clone(), p)) {
                        latest = Some((p, row.event_id));
                        break 'stored;
                    }
                }
            }
            match latest {
                Some((p, id)) if summary.count > 0 => {
                    summary.latest_pos = p;
                    summary.latest_event_id = id;
                    batch.put_cf(relations, latest_key(room, p), w.parent.as_bytes());
                }
                _ => {
                    batch.delete_cf(relations, &sk);
                    self.summaries.insert(sk, None);
                    return Ok(());
                }
            }
        } else if summary.count == 0 {
            batch.delete_cf(relations, latest_key(room, summary.latest_pos));
            batch.delete_cf(relations, &sk);
            self.summaries.insert(sk, None);
            return Ok(());
        }
        batch.put_cf(relations, &sk, encode(&summary));
        self.summaries.insert(sk, Some(summary));
        Ok(())
    }
}

/// `meta` key marking that the relations index covers every stored event.
const RELATIONS_BUILT: &str = "relations_index_built";

/// The relation of a stored PDU, read as the rooms service reads it when the event is sent
/// (`rooms::relations::relation_write`): a non-state event whose content has
/// `m.relates_to` with string `rel_type` and `event_id`. Only for the one-time build below.
fn stored_relation(event_id: &str, pdu: &str) -> Option<RelationWrite> {
    let pdu: serde_json::Value = serde_json::from_str(pdu).ok()?;
    if pdu.get("state_key").is_some() {
        return None;
    }
    let content = pdu.get("content")?;
    let relates = content.get("m.relates_to")?;
    let rel_type = relates.get("rel_type")?.as_str()?.to_owned();
    let parent = relates.get("event_id")?.as_str()?.to_owned();
    let kind = pdu.get("type")?.as_str()?.to_owned();
    let new_content = rel_type == "m.replace"
        && (content.get("m.new_content").is_some_and(serde_json::Value::is_object)
            || kind == "m.room.encrypted");
    let annotation_key = match rel_type.as_str() {
        "m.annotation" => relates.get("key").and_then(|k| k.as_str()).map(str::to_owned),
        _ => None,
    };
    Some(RelationWrite {
        parent,
        annotation_key,
        thread: rel_type == THREAD,
        row: RelationRow {
            event_id: event_id.to_owned(),
            kind,
            sender: pdu.get("sender")?.as_str()?.to_owned(),
            origin_server_ts: pdu.get("origin_server_ts")?.as_u64()?,
            new_content,
            rel_type,
        },
    })
}

/// One-time migration at open: databases written before the relations index existed get it
/// built from their timelines (in stream order, so thread summaries end on the latest
/// reply; redacted events have no content left, so no relation). The column family is
/// cleared first and the marker written last, so an interrupted build is redone whole.
pub(super) fn migrate(db: &rocksdb::DB) -> StorageResult<()> {
    let meta = handle(db, cf::META)?;
    if db.get_pinned_cf(meta, RELATIONS_BUILT)?.is_some() {
        return Ok(());
    }
    let relations = handle(db, cf::RELATIONS)?;
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(relations, [0u8].as_slice(), [0xFFu8; 2].as_slice());
    let mut index = RelationBatch::default();
    let mut indexed = 0u64;
    for item in db.iterator_cf(handle(db, cf::ROOM_EVENTS)?, IteratorMode::Start) {
        let (k, event_id) = item?;
        let Some(split) = k.len().checked_sub(8) else { continue };
        let pos = from_be(&k[split..])?;
        let Some(record) =
            super::get_json::<crate::storage::rooms::EventRecord>(db, cf::EVENTS, &event_id)?
        else {
            continue;
        };
        let id = String::from_utf8_lossy(&event_id);
        if let Some(w) = stored_relation(&id, record.pdu.get()) {
            index.add(db, &mut batch, &record.room_id, pos, &w)?;
            indexed += 1;
        }
        if batch.len() >= 4096 {
            db.write(std::mem::take(&mut batch))?;
        }
    }
    batch.put_cf(meta, RELATIONS_BUILT, b"1");
    db.write_opt(batch, &super::synced())?;
    if indexed > 0 {
        tracing::info!(relations = indexed, "built the relations index");
    }
    Ok(())
}

impl RelationStore for RocksStore {
    fn relations(
        &self,
        room_id: &str,
        parent: &str,
        rel_type: Option<&str>,
        after: Option<u64>,
        before: Option<u64>,
        backwards: bool,
        limit: usize,
    ) -> StorageResult<Vec<(u64, RelationRow)>> {
        let prefix = match rel_type {
            Some(t) => key(&[b"t", room_id.as_bytes(), parent.as_bytes(), t.as_bytes(), b""]),
            None => key(&[b"a", room_id.as_bytes(), parent.as_bytes(), b""]),
        };
        rows(positioned(&self.db, prefix, after, before, backwards, limit)?)
    }

    fn annotation(
        &self,
        room_id: &str,
        parent: &str,
        kind: &str,
        k: &str,
        sender: &str,
    ) -> StorageResult<Option<String>> {
        let db = &self.db;
        match db.get_pinned_cf(
            handle(db, cf::RELATIONS)?,
            annotation_key(room_id, parent, kind, k, sender),
        )? {
            Some(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
            None => Ok(None),
        }
    }

    fn aggregation_rows(
        &self,
        room_id: &str,
        parent: &str,
        user: &str,
        cap: usize,
    ) -> StorageResult<AggregationRows> {
        let typed = |t: &str, backwards: bool| {
            let prefix = key(&[b"t", room_id.as_bytes(), parent.as_bytes(), t.as_bytes(), b""]);
            positioned(&self.db, prefix, None, None, backwards, cap).and_then(rows)
        };
        // Most events have no relations: one seek says so.
        let any = key(&[b"a", room_id.as_bytes(), parent.as_bytes(), b""]);
        if positioned(&self.db, any, None, None, false, 1)?.is_empty() {
            return Ok(AggregationRows::default());
        }
        let thread: Option<ThreadSummary> = get(&self.db, &summary_key(room_id, parent))?;
        let participated =
            thread.is_some() && get_count(&self.db, &participant_key(room_id, parent, user))? > 0;
        Ok(AggregationRows {
            // The newest edits: the latest one is among them (edits arrive in time order).
            replaces: typed("m.replace", true)?,
            references: typed("m.reference", false)?,
            thread,
            participated,
        })
    }

    fn thread(&self, room_id: &str, root: &str) -> StorageResult<Option<ThreadSummary>> {
        get(&self.db, &summary_key(room_id, root))
    }

    fn thread_replies_by(&self, room_id: &str, root: &str, user: &str) -> StorageResult<u64> {
        get_count(&self.db, &participant_key(room_id, root, user))
    }

    fn threads(
        &self,
        room_id: &str,
        before: Option<u64>,
        limit: usize,
    ) -> StorageResult<Vec<(u64, String)>> {
        let prefix = key(&[b"l", room_id.as_bytes(), b""]);
        positioned(&self.db, prefix, None, before, true, limit)?
            .into_iter()
            .map(|(pos, v)| Ok((pos, String::from_utf8_lossy(&v).into_owned())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use serde_json::value::to_raw_value;

    use super::*;
    use crate::storage::rooms::{EventWrite, RedactionWrite, RoomHead, RoomStore};

    fn reply(id: &str, root: &str, sender: &str) -> RelationWrite {
        RelationWrite {
            parent: root.into(),
            row: RelationRow {
                event_id: id.into(),
                rel_type: THREAD.into(),
                kind: "m.room.message".into(),
                sender: sender.into(),
                origin_server_ts: 0,
                new_content: false,
            },
            annotation_key: None,
            thread: true,
        }
    }

    fn write(id: &str, relation: Option<RelationWrite>) -> EventWrite {
        EventWrite {
            event_id: id.into(),
            room_id: "!r:x".into(),
            pdu: to_raw_value(&serde_json::json!({"content": {}})).unwrap(),
            origin_server_ts: 0,
            state_group: 1,
            new_state_group: None,
            head: RoomHead {
                forward_extremities: vec![id.into()],
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
            relation,
            search_terms: Vec::new(),
        }
    }

    fn redaction(id: &str, target: &str, relation: RelationWrite) -> EventWrite {
        let mut w = write(id, None);
        w.redaction = Some(RedactionWrite {
            target: target.into(),
            redacted_pdu: to_raw_value(&serde_json::json!({"content": {}})).unwrap(),
            relation: Some(relation),
            search_terms: Vec::new(),
        });
        w
    }

    #[tokio::test]
    async fn databases_older_than_the_index_get_it_built_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RocksStore::open(dir.path(), 1).unwrap();
            let pdu = |id: &str, content: serde_json::Value| {
                let mut w = write(id, None);
                w.pdu = to_raw_value(&serde_json::json!({
                    "type": "m.room.message", "sender": "@alice:x", "origin_server_ts": 5,
                    "content": content,
                }))
                .unwrap();
                w
            };
            let reply =
                json!({"body": "r", "m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}});
            let edit = json!({"m.new_content": {}, "m.relates_to": {"rel_type": "m.replace", "event_id": "$root"}});
            // Written as before the index: no relation in the writes.
            store
                .append_events(vec![pdu("$root", json!({})), pdu("$r", reply), pdu("$e", edit)], 1)
                .await
                .unwrap();
            store.db.delete_cf(handle(&store.db, cf::META).unwrap(), RELATIONS_BUILT).unwrap();
            store
                .db
                .delete_range_cf(
                    handle(&store.db, cf::RELATIONS).unwrap(),
                    [0u8].as_slice(),
                    [0xFFu8; 2].as_slice(),
                )
                .unwrap();
            assert!(store.thread("!r:x", "$root").unwrap().is_none());
        }
        let store = RocksStore::open(dir.path(), 1).unwrap();
        let summary = store.thread("!r:x", "$root").unwrap().unwrap();
        assert_eq!((summary.count, summary.latest_pos), (1, 2));
        let rows = store.aggregation_rows("!r:x", "$root", "@alice:x", 10).unwrap();
        assert_eq!(rows.replaces.len(), 1);
        assert!(rows.replaces[0].1.new_content);
        assert!(rows.participated);
        // Opening again changes nothing.
        drop(store);
        let store = RocksStore::open(dir.path(), 1).unwrap();
        assert_eq!(store.thread("!r:x", "$root").unwrap().unwrap().count, 1);
    }

    #[tokio::test]
    async fn thread_summaries_follow_replies_and_redactions_also_within_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), 1).unwrap();
        // Root at 1, replies at 2 (alice) and 3 (bob), the latest redacted in the same batch.
        store
            .append_events(
                vec![
                    write("$root", None),
                    write("$a", Some(reply("$a", "$root", "@alice:x"))),
                    write("$b", Some(reply("$b", "$root", "@bob:x"))),
                    redaction("$rb", "$b", reply("$b", "$root", "@bob:x")),
                ],
                1,
            )
            .await
            .unwrap();
        let summary = store.thread("!r:x", "$root").unwrap().unwrap();
        assert_eq!((summary.count, summary.latest_event_id.as_str()), (1, "$a"));
        assert_eq!(summary.latest_pos, 2);
        assert_eq!(store.threads("!r:x", None, 10).unwrap(), vec![(2, "$root".to_owned())]);
        assert!(store.thread_participant("!r:x", "$root", "@alice:x").unwrap());
        assert!(!store.thread_participant("!r:x", "$root", "@bob:x").unwrap());
        assert_eq!(store.relations("!r:x", "$root", None, None, None, true, 10).unwrap().len(), 1);
        // The last reply redacted: no thread left.
        store
            .append_events(vec![redaction("$ra", "$a", reply("$a", "$root", "@alice:x"))], 5)
            .await
            .unwrap();
        assert!(store.thread("!r:x", "$root").unwrap().is_none());
        assert!(store.threads("!r:x", None, 10).unwrap().is_empty());
    }
}
