//! Events as clients see them: the client format of a stored event with its `unsigned`
//! section (`transaction_id` for the sending device, `prev_content`/`replaces_state` for state
//! changes, `redacted_because` for redacted events).

use std::sync::Arc;

use ruma::{MilliSecondsSinceUnixEpoch, UserId};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value, json};

use super::pdu::Pdu;
use super::visibility::HistoryAccess;
use super::{Room, Rooms};
use crate::error::{Error, Result};
use crate::storage::rooms::EventRecord;

/// Who is looking: the transaction ID is echoed only to the device that sent the event.
#[derive(Clone, Copy, Debug)]
pub struct Viewer<'a> {
    pub user: &'a UserId,
    pub device_id: &'a str,
}

/// An event in client format, ready to be serialised.
///
/// The common case ([`ClientEvent::Plain`]: an unredacted event whose `unsigned` holds only
/// `age` and perhaps the sender's `transaction_id`) is written straight from the shared
/// parsed PDU, its content bytes copied as stored: nothing is parsed or built per viewer.
/// That is what a sync wake-up delivers to every member of a room, so a message reaching a
/// thousand receivers costs a thousand copies, not a thousand JSON trees. Anything else
/// (redacted events, `prev_content`, bundled relations) is built as a JSON value.
pub enum ClientEvent {
    Plain(PlainEvent),
    Built(Value),
}

/// See [`ClientEvent::Plain`].
pub struct PlainEvent {
    record: Arc<EventRecord>,
    pdu: Arc<Pdu>,
    with_room_id: bool,
    /// Echo `record.txn`'s transaction ID (the viewer is the sending device).
    echo_txn: bool,
    /// `unsigned.age`, as of when the event was taken for the response.
    age: u64,
}

impl PlainEvent {
    /// The event as `viewer` sees it, if nothing but `age` and `transaction_id` go into its
    /// `unsigned` (`None`: it needs [`Rooms::client_event`]).
    pub fn new(
        record: &Arc<EventRecord>,
        pdu: &Arc<Pdu>,
        viewer: Viewer<'_>,
        with_room_id: bool,
    ) -> Option<Self> {
        if record.redacted_by.is_some() || record.replaces_state.is_some() {
            return None;
        }
        let echo_txn = record
            .txn
            .as_ref()
            .is_some_and(|(device, _)| pdu.sender == viewer.user && device == viewer.device_id);
        let now: u64 = MilliSecondsSinceUnixEpoch::now().get().into();
        let ts: u64 = pdu.origin_server_ts.get().into();
        Some(Self {
            record: record.clone(),
            pdu: pdu.clone(),
            with_room_id,
            echo_txn,
            age: now.saturating_sub(ts),
        })
    }
}

/// `unsigned` of a [`PlainEvent`].
struct PlainUnsigned<'a> {
    age: u64,
    transaction_id: Option<&'a str>,
}

impl Serialize for PlainUnsigned<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("age", &self.age)?;
        if let Some(txn) = self.transaction_id {
            map.serialize_entry("transaction_id", txn)?;
        }
        map.end()
    }
}

impl Serialize for PlainEvent {
    /// The same keys, in the same (sorted) order, as [`Pdu::to_client`] gives.
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let pdu = &*self.pdu;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("content", &pdu.content)?;
        map.serialize_entry("event_id", &pdu.event_id)?;
        map.serialize_entry("origin_server_ts", &pdu.origin_server_ts)?;
        if let Some(redacts) = &pdu.redacts {
            map.serialize_entry("redacts", redacts)?;
        }
        if self.with_room_id {
            map.serialize_entry("room_id", &pdu.room_id)?;
        }
        map.serialize_entry("sender", &pdu.sender)?;
        if let Some(key) = &pdu.state_key {
            map.serialize_entry("state_key", key)?;
        }
        map.serialize_entry("type", &pdu.kind)?;
        let transaction_id = match &self.record.txn {
            Some((_, txn)) if self.echo_txn => Some(txn.as_str()),
            _ => None,
        };
        map.serialize_entry("unsigned", &PlainUnsigned { age: self.age, transaction_id })?;
        map.end()
    }
}

impl Serialize for ClientEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            ClientEvent::Plain(event) => event.serialize(serializer),
            ClientEvent::Built(value) => value.serialize(serializer),
        }
    }
}

impl Rooms {
    /// A stored event in client format with its bundled aggregations, as
    /// [`Rooms::client_event_bundled`] gives it, without building it where it is plain: a
    /// recent event nothing relates to, or a state event, that is neither redacted nor
    /// replaced state.
    pub async fn client_event_sync(
        &self,
        room: &Room,
        access: &HistoryAccess,
        record: &Arc<EventRecord>,
        pdu: &Arc<Pdu>,
        viewer: Viewer<'_>,
        with_room_id: bool,
    ) -> Result<ClientEvent> {
        let no_bundle = pdu.state_key.is_some() || room.recent_unrelated(pdu.event_id.as_str());
        if no_bundle && let Some(plain) = PlainEvent::new(record, pdu, viewer, with_room_id) {
            return Ok(ClientEvent::Plain(plain));
        }
        Ok(ClientEvent::Built(
            self.client_event_bundled(room, access, record, pdu, viewer, with_room_id).await?,
        ))
    }

    /// A stored event in client format without bundled aggregations, as
    /// [`Rooms::client_event`] gives it, without building it where it is plain.
    pub async fn client_event_unbundled(
        &self,
        room: &Room,
        record: &Arc<EventRecord>,
        pdu: &Arc<Pdu>,
        viewer: Viewer<'_>,
        with_room_id: bool,
    ) -> Result<ClientEvent> {
        if let Some(plain) = PlainEvent::new(record, pdu, viewer, with_room_id) {
            return Ok(ClientEvent::Plain(plain));
        }
        Ok(ClientEvent::Built(self.client_event(room, record, pdu, viewer, with_room_id).await?))
    }

    /// An event of a state map (the cached current state, or a rebuilt one) in client format,
    /// with the same `unsigned` as [`Rooms::client_event`] gives it.
    pub async fn client_state_event(
        &self,
        room: &Room,
        pdu: &Pdu,
        viewer: Viewer<'_>,
        with_room_id: bool,
    ) -> Result<Value> {
        let record = self
            .store()
            .event(pdu.event_id.as_str())
            .await?
            .ok_or_else(|| Error::Internal(format!("state event {} missing", pdu.event_id)))?;
        self.client_event(room, &record, pdu, viewer, with_room_id).await
    }

    /// A stored event in client format, as `viewer` sees it. The stored copy of a redacted
    /// event is already redacted; `redacted_by` adds `unsigned.redacted_because` (and strips
    /// the content of events redacted before stored copies were, which kept it).
    pub async fn client_event(
        &self,
        room: &Room,
        record: &EventRecord,
        pdu: &Pdu,
        viewer: Viewer<'_>,
        with_room_id: bool,
    ) -> Result<Value> {
        let mut unsigned = Map::new();
        if let Some((device, txn)) = &record.txn
            && pdu.sender == viewer.user
            && device == viewer.device_id
        {
            unsigned.insert("transaction_id".into(), json!(txn));
        }
        if let Some(replaced) = &record.replaces_state
            && let Some((prev_record, prev)) = self.event(replaced).await?
        {
            unsigned.insert("replaces_state".into(), json!(replaced));
            unsigned.insert("prev_sender".into(), json!(prev.sender));
            let prev_view = prev.to_client(
                &room.rules.redaction,
                prev_record.redacted_by.is_some(),
                Map::new(),
                false,
            );
            unsigned.insert("prev_content".into(), prev_view["content"].clone());
        }
        if let Some(redaction_id) = &record.redacted_by
            && let Some((_, redaction)) = self.event(redaction_id).await?
        {
            let because =
                redaction.to_client(&room.rules.redaction, false, Map::new(), with_room_id);
            unsigned.insert("redacted_because".into(), because);
        }
        Ok(pdu.to_client(
            &room.rules.redaction,
            record.redacted_by.is_some(),
            unsigned,
            with_room_id,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(json: Value, txn: Option<(&str, &str)>) -> (Arc<EventRecord>, Arc<Pdu>) {
        let raw = serde_json::value::to_raw_value(&json).unwrap();
        let id = ruma::EventId::parse("$e").unwrap();
        let room = ruma::RoomId::parse("!r:x").unwrap();
        let pdu = Pdu::from_json(raw.clone(), &id, &room).unwrap();
        let record = EventRecord {
            room_id: "!r:x".into(),
            pos: 7,
            state_group: 1,
            pdu: raw,
            redacted_by: None,
            txn: txn.map(|(d, t)| (d.to_owned(), t.to_owned())),
            replaces_state: None,
        };
        (Arc::new(record), Arc::new(pdu))
    }

    /// The plain path writes what the built path builds, for every viewer.
    #[test]
    fn plain_events_serialise_as_built_ones() {
        let rules = ruma::room_version_rules::RoomVersionRules::V11.redaction;
        let message = json!({
            "type": "m.room.message", "sender": "@alice:x", "room_id": "!r:x",
            "content": {"body": "hé \"quoted\" \u{1}", "msgtype": "m.text", "n": [1, 2.5, null]},
            "origin_server_ts": 1_000, "prev_events": [], "auth_events": [], "depth": 1,
        });
        let state = json!({
            "type": "m.room.topic", "sender": "@alice:x", "room_id": "!r:x", "state_key": "",
            "content": {"topic": "t"},
            "origin_server_ts": 2_000, "prev_events": [], "auth_events": [], "depth": 2,
        });
        let redaction = json!({
            "type": "m.room.redaction", "sender": "@alice:x", "room_id": "!r:x",
            "redacts": "$x", "content": {"redacts": "$x"},
            "origin_server_ts": 3_000, "prev_events": [], "auth_events": [], "depth": 3,
        });
        let alice = ruma::user_id!("@alice:x");
        let bob = ruma::user_id!("@bob:x");
        let viewers = [
            Viewer { user: alice, device_id: "D1" },
            Viewer { user: alice, device_id: "D2" },
            Viewer { user: bob, device_id: "D1" },
        ];
        for json in [message, state, redaction] {
            for viewer in viewers {
                for with_room_id in [false, true] {
                    let (record, pdu) = stored(json.clone(), Some(("D1", "txn1")));
                    let plain = PlainEvent::new(&record, &pdu, viewer, with_room_id).unwrap();
                    let mut written: Value =
                        serde_json::from_str(&serde_json::to_string(&plain).unwrap()).unwrap();
                    let mut unsigned = Map::new();
                    if viewer.user == alice && viewer.device_id == "D1" {
                        unsigned.insert("transaction_id".into(), json!("txn1"));
                    }
                    let mut built = pdu.to_client(&rules, false, unsigned, with_room_id);
                    // `age` is taken at each call: compare it apart.
                    let ages = [&mut written, &mut built]
                        .map(|v| v["unsigned"].as_object_mut().unwrap().remove("age").unwrap());
                    assert!(ages[0].as_u64().unwrap().abs_diff(ages[1].as_u64().unwrap()) < 60_000);
                    assert_eq!(written, built, "{json} as seen by {viewer:?}");
                }
            }
        }
    }

    /// Redacted events and replaced state take the built path.
    #[test]
    fn redacted_and_replacing_events_are_not_plain() {
        let json = json!({
            "type": "m.room.topic", "sender": "@alice:x", "room_id": "!r:x", "state_key": "",
            "content": {"topic": "t"},
            "origin_server_ts": 2_000, "prev_events": [], "auth_events": [], "depth": 2,
        });
        let viewer = Viewer { user: ruma::user_id!("@bob:x"), device_id: "D" };
        let (record, pdu) = stored(json.clone(), None);
        let redacted =
            Arc::new(EventRecord { redacted_by: Some("$r".into()), ..(*record).clone() });
        assert!(PlainEvent::new(&redacted, &pdu, viewer, false).is_none());
        let replacing =
            Arc::new(EventRecord { replaces_state: Some("$old".into()), ..(*record).clone() });
        assert!(PlainEvent::new(&replacing, &pdu, viewer, false).is_none());
        assert!(PlainEvent::new(&record, &pdu, viewer, false).is_some());
    }
}
