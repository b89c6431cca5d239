//! Relations (`m.relates_to` with a `rel_type`): the rules a relating event passes when it is
//! sent, the index entries it writes, the aggregations bundled into `unsigned.m.relations`
//! wherever events are served, `/relations` and `/threads`.
//!
//! **Architecture Invariant.** Aggregations are computed from the relations index
//! (`storage::relations`, written in the relating event's batch, removed in its
//! redaction's), never from a scan of the room: per event at most [`AGGREGATION_CAP`] index
//! rows per relation type and a couple of point reads.
//!
//! Rules, as Synapse applies them (its `_validate_event_relation`): the related event must
//! exist in the same room and be visible to the sender under the history visibility (400
//! `M_UNKNOWN` "unknown event" otherwise, the same answer for all three, so that it reveals
//! nothing of events in other rooms or hidden history); an annotation needs a
//! `key` (400 `M_UNKNOWN`, at most 500 bytes) and a sender may not annotate an event twice
//! with the same type and key (400 `M_DUPLICATE_ANNOTATION`); a thread cannot start from an
//! event that itself has a relation (400 `M_UNKNOWN`: no thread of a thread, no thread on a
//! reaction or an edit). State events' relations are neither checked nor indexed.
//!
//! Bundles (the spec's "Aggregations of child events", as Synapse serves them): none for
//! state events, none for events that are annotations or edits themselves; `m.replace` (the
//! latest valid edit: same sender, same type, `m.new_content`, by `origin_server_ts` then
//! event ID; none for a redacted original), `m.reference` (the IDs of referencing events the
//! user may see), `m.thread` (for events without a relation: the latest reply rendered with
//! its own bundle, `count`, `current_user_participated`). `m.annotation` is not bundled
//! (spec v1.7 onwards).
//!
//! **Ignored users**: their replies leave a thread's `count` (the index keeps replies per
//! user) and its `latest_event` (the newest reply the viewer may see, [`HistoryAccess`]
//! hiding ignored senders); `/relations` and `/threads` hide their events as every exit
//! does.

use std::collections::HashSet;

use ruma::{EventId, UserId};
use serde_json::{Map, Value, json};

use super::client::Viewer;
use super::history::StoredEvent;
use super::pdu::{NewEvent, Pdu};
use super::visibility::HistoryAccess;
use super::{Room, Rooms, SharedEvent};
use crate::error::{Error, Result};
use crate::storage::relations::{AggregationRows, RelationRow, RelationWrite};
use crate::storage::rooms::EventRecord;

/// Index rows read per relation type when aggregating one event.
pub const AGGREGATION_CAP: usize = 100;
/// Relations `/relations` examines per request (then it hands out a token).
pub const MAX_EXAMINED: usize = 1000;
/// How deep `recurse=true` follows relations of relations (as Synapse).
pub const MAX_RECURSION: usize = 3;
/// Longest annotation key accepted (as Synapse).
const MAX_KEY_BYTES: usize = 500;

/// A relation as an event's content states it.
#[derive(Debug, Clone)]
pub struct Relation {
    pub rel_type: String,
    /// The related event's ID as given (not necessarily a valid ID).
    pub parent: String,
    /// `key` of an annotation.
    pub key: Option<String>,
    pub new_content: bool,
}

/// The relation in an event's content: `m.relates_to` with string `rel_type` and
/// `event_id` (a reply's `m.in_reply_to` alone is none).
pub fn relation_in(content: &Value) -> Option<Relation> {
    let relates = content.get("m.relates_to")?;
    let rel_type = relates.get("rel_type")?.as_str()?;
    let parent = relates.get("event_id")?.as_str()?;
    Some(Relation {
        rel_type: rel_type.to_owned(),
        parent: parent.to_owned(),
        key: relates.get("key").and_then(Value::as_str).map(str::to_owned),
        new_content: content.get("m.new_content").is_some_and(Value::is_object),
    })
}

/// The relation of a stored (or built) event, if it is not a state event.
pub fn relation_of(pdu: &Pdu) -> Option<Relation> {
    if pdu.state_key.is_some() {
        return None;
    }
    relation_in(&pdu.content_as::<Value>()?)
}

/// The index entry of an event's relation.
pub(super) fn relation_write(pdu: &Pdu) -> Option<RelationWrite> {
    let relation = relation_of(pdu)?;
    let encrypted = pdu.kind.to_string() == "m.room.encrypted";
    Some(RelationWrite {
        parent: relation.parent,
        annotation_key: (relation.rel_type == "m.annotation").then_some(relation.key).flatten(),
        thread: relation.rel_type == "m.thread",
        row: RelationRow {
            event_id: pdu.event_id.to_string(),
            kind: pdu.kind.to_string(),
            sender: pdu.sender.to_string(),
            origin_server_ts: pdu.origin_server_ts.get().into(),
            new_content: relation.rel_type == "m.replace" && (relation.new_content || encrypted),
            rel_type: relation.rel_type,
        },
    })
}

/// The identity of an annotation: `(parent, type, key, sender)`, for the in-flight set.
pub(super) type AnnotationId = (String, String, String, String);

/// The page `/relations` returns.
pub struct RelationsPage {
    pub events: Vec<StoredEvent>,
    /// Where to continue, if there may be more.
    pub next: Option<u64>,
}

/// The page `/threads` returns: roots, newest activity first.
pub struct ThreadsPage {
    pub roots: Vec<StoredEvent>,
    pub next: Option<u64>,
}

impl Rooms {
    /// Checks the relation of an event about to be sent (the caller holds the room's
    /// builder lock); returns the annotation's identity, which stays in flight until the
    /// event is durable.
    pub(super) async fn check_relation(
        &self,
        room: &Room,
        sender: &UserId,
        event: &NewEvent,
    ) -> Result<Option<AnnotationId>> {
        if event.state_key.is_some() {
            return Ok(None);
        }
        let Some(relation) = relation_in(&event.content) else { return Ok(None) };
        // Another room's event, and one the sender may not see, look unknown: the answer
        // reveals nothing about an event the sender could not read.
        let unknown = || Error::Unknown("Can't send relation to unknown event".into());
        let (record, parent) = self.event(&relation.parent).await?.ok_or_else(unknown)?;
        if record.room_id != room.id.as_str() {
            return Err(unknown());
        }
        if !self.readable(room, sender).await?.history_allows(record.pos, &parent) {
            return Err(unknown());
        }
        match relation.rel_type.as_str() {
            "m.annotation" => {
                let key =
                    relation.key.ok_or_else(|| Error::Unknown("Missing aggregation key".into()))?;
                if key.len() > MAX_KEY_BYTES {
                    return Err(Error::Unknown("Aggregation key is too long".into()));
                }
                let kind = event.kind.to_string();
                let id: AnnotationId =
                    (relation.parent.clone(), kind, key, sender.as_str().to_owned());
                let stored =
                    self.store().annotation(room.id.as_str(), &id.0, &id.1, &id.2, &id.3)?;
                if stored.is_some() || room.pending_annotations.lock().contains(&id) {
                    return Err(Error::DuplicateAnnotation);
                }
                Ok(Some(id))
            }
            "m.thread" => {
                if relation_of(&parent).is_some() {
                    return Err(Error::Unknown(
                        "Cannot start threads from an event with a relation".into(),
                    ));
                }
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// A stored event in client format with its bundled aggregations
    /// (`unsigned.m.relations`), as `viewer` sees it.
    pub async fn client_event_bundled(
        &self,
        room: &Room,
        access: &HistoryAccess,
        record: &EventRecord,
        pdu: &Pdu,
        viewer: Viewer<'_>,
        with_room_id: bool,
    ) -> Result<Value> {
        let mut event = self.client_event(room, record, pdu, viewer, with_room_id).await?;
        if pdu.state_key.is_some() {
            return Ok(event);
        }
        let own = relation_of(pdu);
        if own.as_ref().is_some_and(|r| matches!(r.rel_type.as_str(), "m.annotation" | "m.replace"))
        {
            return Ok(event);
        }
        // A recent event that nothing relates to (most of what a sync delivers) has no
        // bundle: no read of the index.
        if room.recent_unrelated(pdu.event_id.as_str()) {
            return Ok(event);
        }
        let rows = self.store().aggregation_rows(
            room.id.as_str(),
            pdu.event_id.as_str(),
            viewer.user.as_str(),
            AGGREGATION_CAP,
        )?;
        let mut bundle = self
            .edit_and_references(room, access, record, pdu, &rows, (viewer, with_room_id))
            .await?;
        if own.is_none()
            && let Some(thread) =
                self.thread_bundle(room, access, pdu, &rows, viewer, with_room_id).await?
        {
            bundle.insert("m.thread".into(), thread);
        }
        if !bundle.is_empty()
            && let Some(unsigned) = event.get_mut("unsigned").and_then(Value::as_object_mut)
        {
            unsigned.insert("m.relations".into(), Value::Object(bundle));
        }
        Ok(event)
    }

    /// The `m.replace` and `m.reference` aggregations of an event, from its index rows.
    async fn edit_and_references(
        &self,
        room: &Room,
        access: &HistoryAccess,
        record: &EventRecord,
        pdu: &Pdu,
        rows: &AggregationRows,
        (viewer, with_room_id): (Viewer<'_>, bool),
    ) -> Result<Map<String, Value>> {
        let mut bundle = Map::new();
        if record.redacted_by.is_none() {
            let kind = pdu.kind.to_string();
            let mut edits: Vec<&(u64, RelationRow)> = rows
                .replaces
                .iter()
                .filter(|(_, r)| r.sender == pdu.sender.as_str() && r.kind == kind && r.new_content)
                .collect();
            edits.sort_by(|(_, a), (_, b)| {
                (b.origin_server_ts, &b.event_id).cmp(&(a.origin_server_ts, &a.event_id))
            });
            for (pos, row) in edits {
                let Some((edit_record, edit)) = self.event(&row.event_id).await? else { continue };
                if edit_record.redacted_by.is_some() || !access.can_see(*pos, &edit) {
                    continue;
                }
                let view =
                    self.client_event(room, &edit_record, &edit, viewer, with_room_id).await?;
                bundle.insert("m.replace".into(), view);
                break;
            }
        }
        let mut references = Vec::new();
        for (pos, row) in &rows.references {
            if let Some((_, event)) = self.event(&row.event_id).await?
                && access.can_see(*pos, &event)
            {
                references.push(json!({"event_id": row.event_id}));
            }
        }
        if !references.is_empty() {
            bundle.insert("m.reference".into(), json!({"chunk": references}));
        }
        Ok(bundle)
    }

    /// The `m.thread` aggregation of a thread root: its latest reply (with that reply's own
    /// bundle), the number of replies, and whether the viewer took part.
    async fn thread_bundle(
        &self,
        room: &Room,
        access: &HistoryAccess,
        root: &Pdu,
        rows: &AggregationRows,
        viewer: Viewer<'_>,
        with_room_id: bool,
    ) -> Result<Option<Value>> {
        let Some(summary) = &rows.thread else { return Ok(None) };
        // Replies by users the viewer ignores are neither counted nor the latest (spec).
        let mut count = summary.count;
        for ignored in access.ignored_users() {
            let theirs = self.store().thread_replies_by(
                room.id.as_str(),
                root.event_id.as_str(),
                ignored.as_str(),
            )?;
            count = count.saturating_sub(theirs);
        }
        if count == 0 {
            return Ok(None);
        }
        let Some((record, latest)) = self.latest_reply(room, access, root, summary).await? else {
            return Ok(None);
        };
        let mut latest_view =
            self.client_event(room, &record, &latest, viewer, with_room_id).await?;
        let latest_rows = self.store().aggregation_rows(
            room.id.as_str(),
            latest.event_id.as_str(),
            viewer.user.as_str(),
            AGGREGATION_CAP,
        )?;
        let nested = self
            .edit_and_references(
                room,
                access,
                &record,
                &latest,
                &latest_rows,
                (viewer, with_room_id),
            )
            .await?;
        if !nested.is_empty()
            && let Some(unsigned) = latest_view.get_mut("unsigned").and_then(Value::as_object_mut)
        {
            unsigned.insert("m.relations".into(), Value::Object(nested));
        }
        let participated = root.sender == viewer.user || rows.participated;
        Ok(Some(json!({
            "latest_event": latest_view,
            "count": count,
            "current_user_participated": participated,
        })))
    }

    /// The thread's latest reply the viewer may see: the summary's, or (when that one is
    /// hidden, by an ignored sender say) the newest visible among the
    /// [`AGGREGATION_CAP`] replies before it.
    async fn latest_reply(
        &self,
        room: &Room,
        access: &HistoryAccess,
        root: &Pdu,
        summary: &crate::storage::relations::ThreadSummary,
    ) -> Result<Option<(EventRecord, Pdu)>> {
        if let Some((record, latest)) = self.event(&summary.latest_event_id).await?
            && access.can_see(summary.latest_pos, &latest)
        {
            return Ok(Some((record, latest)));
        }
        let earlier = self.store().relations(
            room.id.as_str(),
            root.event_id.as_str(),
            Some("m.thread"),
            None,
            Some(summary.latest_pos),
            true,
            AGGREGATION_CAP,
        )?;
        for (pos, row) in earlier {
            if access.ignored_users().any(|u| u.as_str() == row.sender) {
                continue;
            }
            if let Some((record, reply)) = self.event(&row.event_id).await?
                && access.can_see(pos, &reply)
            {
                return Ok(Some((record, reply)));
            }
        }
        Ok(None)
    }

    /// `/relations`: the events relating to `parent` (by `rel_type` and `event_type` if
    /// given; with `recurse`, relations of relations too, [`MAX_RECURSION`] deep) that the
    /// user may see, newest first (`backwards`) or oldest first, from `from` (a stream
    /// position: backwards, at or below it; forwards, above it) up to `to`. The parent must
    /// be an event of the room the user may see (404 otherwise).
    #[allow(clippy::too_many_arguments)]
    pub async fn relations(
        &self,
        room: &Room,
        access: &HistoryAccess,
        parent: &EventId,
        rel_type: Option<&str>,
        event_type: Option<&str>,
        (from, to): (Option<u64>, Option<u64>),
        backwards: bool,
        limit: usize,
        recurse: bool,
    ) -> Result<RelationsPage> {
        let not_found = || Error::NotFound("Event not found".into());
        let (record, pdu) = self.event(parent.as_str()).await?.ok_or_else(not_found)?;
        if record.room_id != room.id.as_str() || !access.can_see(record.pos, &pdu) {
            return Err(not_found());
        }
        let room_id = room.id.as_str();
        // Strict bounds on positions.
        let (after, before) = if backwards {
            (to, from.map(|f| f.saturating_add(1)))
        } else {
            (from, to.map(|t| t.saturating_add(1)))
        };
        let mut candidates: Vec<(u64, RelationRow)> = Vec::new();
        let mut more = false;
        if recurse {
            // Everything within the depth, bounded, then ordered and cut.
            let mut frontier = vec![parent.to_string()];
            let mut seen: HashSet<String> = HashSet::new();
            let mut all: Vec<(u64, RelationRow)> = Vec::new();
            'depth: for _ in 0..MAX_RECURSION {
                let mut next = Vec::new();
                for p in &frontier {
                    let left = MAX_EXAMINED - all.len();
                    let rows = self.store().relations(room_id, p, None, None, None, false, left)?;
                    for (pos, row) in rows {
                        if seen.insert(row.event_id.clone()) {
                            next.push(row.event_id.clone());
                            all.push((pos, row));
                        }
                    }
                    if all.len() >= MAX_EXAMINED {
                        break 'depth;
                    }
                }
                frontier = next;
            }
            all.retain(|(pos, row)| {
                after.is_none_or(|a| *pos > a)
                    && before.is_none_or(|b| *pos < b)
                    && rel_type.is_none_or(|t| row.rel_type == t)
            });
            all.sort_by_key(|(pos, _)| *pos);
            if backwards {
                all.reverse();
            }
            candidates = all;
        } else {
            let mut cursor = (after, before);
            let mut examined = 0;
            while examined < MAX_EXAMINED {
                let want = 128.min(MAX_EXAMINED - examined);
                let rows = self.store().relations(
                    room_id,
                    parent.as_str(),
                    rel_type,
                    cursor.0,
                    cursor.1,
                    backwards,
                    want,
                )?;
                let n = rows.len();
                examined += n;
                for (pos, row) in rows {
                    if backwards {
                        cursor.1 = Some(pos);
                    } else {
                        cursor.0 = Some(pos);
                    }
                    candidates.push((pos, row));
                }
                if n < want {
                    break;
                }
                // Enough candidates to fill the page after filtering is unknowable; read on
                // only while the page is short of them.
                if candidates.len() > limit * 2 {
                    more = true;
                    break;
                }
            }
            if examined >= MAX_EXAMINED {
                more = true;
            }
        }
        let mut events = Vec::new();
        let mut next = None;
        let total = candidates.len();
        for (i, (pos, row)) in candidates.into_iter().enumerate() {
            let last_examined = if backwards { pos.saturating_sub(1) } else { pos };
            if event_type.is_some_and(|t| row.kind != t) {
                next = Some(last_examined);
                continue;
            }
            let Some(SharedEvent { record, pdu }) = self.shared_event(&row.event_id).await? else {
                continue;
            };
            next = Some(last_examined);
            if !access.can_see(pos, &pdu) {
                continue;
            }
            events.push(StoredEvent { pos, record, pdu });
            if events.len() >= limit {
                more |= i + 1 < total;
                break;
            }
        }
        Ok(RelationsPage { events, next: if more { next } else { None } })
    }

    /// `/threads`: roots of the room's threads the user may see (with `participated`, only
    /// threads whose root they sent or where they replied), by latest reply, newest first;
    /// `from` is a token from an earlier page (threads whose latest reply is before it).
    pub async fn threads(
        &self,
        room: &Room,
        access: &HistoryAccess,
        user: &str,
        participated: bool,
        from: Option<u64>,
        limit: usize,
    ) -> Result<ThreadsPage> {
        let room_id = room.id.as_str();
        let mut roots = Vec::new();
        let mut before = from;
        let mut examined = 0;
        let mut exhausted = false;
        while roots.len() < limit && examined < MAX_EXAMINED {
            let want = 64.min(MAX_EXAMINED - examined);
            let batch = self.store().threads(room_id, before, want)?;
            let n = batch.len();
            examined += n;
            let mut stopped = false;
            for (i, (latest, root)) in batch.into_iter().enumerate() {
                before = Some(latest);
                let Some(SharedEvent { record, pdu }) = self.shared_event(&root).await? else {
                    continue;
                };
                if record.room_id != room_id || !access.can_see(record.pos, &pdu) {
                    continue;
                }
                if participated
                    && pdu.sender.as_str() != user
                    && !self.store().thread_participant(room_id, &root, user)?
                {
                    continue;
                }
                roots.push(StoredEvent { pos: record.pos, record, pdu });
                if roots.len() >= limit {
                    stopped = i + 1 < n;
                    break;
                }
            }
            if n < want && !stopped {
                exhausted = true;
                break;
            }
        }
        let next = if exhausted { None } else { before };
        Ok(ThreadsPage { roots, next })
    }
}
