//! PDUs: building, hashing and signing the events this server creates, in the format of the
//! room's version, and reading stored ones.
//!
//! A PDU is kept as the exact signed JSON federation would send (`Pdu::json`), plus the fields
//! the server needs parsed. It is hashed and signed once, when built.

use std::sync::Arc;

use ruma::events::TimelineEventType;
use ruma::room_version_rules::{
    EventIdFormatVersion, EventsReferenceFormatVersion, RoomIdFormatVersion, RoomVersionRules,
};
use ruma::signatures::Ed25519KeyPair;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::{RawValue, to_raw_value};

use crate::error::{Error, Result};

/// The largest PDU the spec allows, in bytes of canonical JSON.
pub const MAX_PDU_BYTES: usize = 65_536;

/// The longest `type` and `state_key` the spec allows, in bytes.
pub const MAX_TYPE_OR_STATE_KEY_BYTES: usize = 255;

/// A stored or freshly built PDU.
#[derive(Debug, Clone)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub kind: TimelineEventType,
    pub content: Box<RawValue>,
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub depth: UInt,
    pub redacts: Option<OwnedEventId>,
    /// The signed federation JSON, exactly as hashed.
    pub json: Box<RawValue>,
    /// Whether the JSON names the room (v12 create events do not: their ID is the room's).
    room_id_in_json: bool,
}

pub type PduRef = Arc<Pdu>;

/// `prev_events`/`auth_events` entries: `"$id"` (v3+) or `["$id", {hashes}]` (v1, v2).
#[derive(Deserialize)]
#[serde(untagged)]
enum EventRef {
    Id(OwnedEventId),
    WithHashes(OwnedEventId, IgnoredAny),
}

impl EventRef {
    fn into_id(self) -> OwnedEventId {
        match self {
            EventRef::Id(id) | EventRef::WithHashes(id, _) => id,
        }
    }
}

#[derive(Deserialize)]
struct PduFields {
    event_id: Option<OwnedEventId>,
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    content: Box<RawValue>,
    state_key: Option<String>,
    prev_events: Vec<EventRef>,
    auth_events: Vec<EventRef>,
    depth: UInt,
    redacts: Option<OwnedEventId>,
}

#[derive(Deserialize)]
struct RedactsInContent {
    redacts: Option<OwnedEventId>,
}

impl Pdu {
    /// Parses a PDU's JSON; `event_id` and `room_id` come from storage where the JSON lacks them
    /// (event IDs of v3+ rooms are hashes; v12 create events carry no room ID).
    pub fn from_json(json: Box<RawValue>, event_id: &EventId, room_id: &RoomId) -> Result<Self> {
        let f: PduFields = serde_json::from_str(json.get())
            .map_err(|e| Error::Internal(format!("stored PDU {event_id} is invalid: {e}")))?;
        let room_id_in_json = f.room_id.is_some();
        let redacts = match f.redacts {
            Some(r) => Some(r),
            None if f.kind == TimelineEventType::RoomRedaction => {
                serde_json::from_str::<RedactsInContent>(f.content.get())
                    .ok()
                    .and_then(|c| c.redacts)
            }
            None => None,
        };
        Ok(Self {
            event_id: f.event_id.unwrap_or_else(|| event_id.to_owned()),
            room_id: f.room_id.unwrap_or_else(|| room_id.to_owned()),
            sender: f.sender,
            origin_server_ts: f.origin_server_ts,
            kind: f.kind,
            content: f.content,
            state_key: f.state_key,
            prev_events: f.prev_events.into_iter().map(EventRef::into_id).collect(),
            auth_events: f.auth_events.into_iter().map(EventRef::into_id).collect(),
            depth: f.depth,
            redacts,
            json,
            room_id_in_json,
        })
    }

    /// The event as clients see it (without `room_id` when `with_room_id` is false, as in
    /// `/sync`). A redacted event loses the content keys the room version's redaction
    /// algorithm removes. `unsigned` is merged into the event's `unsigned` (after `age`).
    /// [`crate::rooms::Rooms::client_event`] fills it for stored events.
    pub fn to_client(
        &self,
        rules: &ruma::room_version_rules::RedactionRules,
        redacted: bool,
        unsigned: serde_json::Map<String, serde_json::Value>,
        with_room_id: bool,
    ) -> serde_json::Value {
        let mut content: serde_json::Value =
            serde_json::from_str(self.content.get()).unwrap_or_else(|_| serde_json::json!({}));
        if redacted
            && let Ok(CanonicalJsonValue::Object(mut obj)) =
                serde_json::from_value::<CanonicalJsonValue>(content.clone())
        {
            ruma::canonical_json::redact_content_in_place(&mut obj, rules, self.kind.to_string());
            content = serde_json::to_value(obj).unwrap_or_else(|_| serde_json::json!({}));
        }
        let mut event = serde_json::json!({
            "content": content,
            "event_id": self.event_id,
            "origin_server_ts": self.origin_server_ts,
            "sender": self.sender,
            "type": self.kind,
        });
        let obj = event.as_object_mut().expect("object literal");
        if with_room_id {
            obj.insert("room_id".into(), serde_json::json!(self.room_id));
        }
        if let Some(key) = &self.state_key {
            obj.insert("state_key".into(), serde_json::json!(key));
        }
        if let Some(redacts) = &self.redacts {
            obj.insert("redacts".into(), serde_json::json!(redacts));
        }
        let mut all = serde_json::Map::new();
        let now: u64 = MilliSecondsSinceUnixEpoch::now().get().into();
        let ts: u64 = self.origin_server_ts.get().into();
        all.insert("age".into(), serde_json::json!(now.saturating_sub(ts)));
        all.extend(unsigned);
        obj.insert("unsigned".into(), serde_json::Value::Object(all));
        event
    }

    /// Deserializes the content into `T`.
    pub fn content_as<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(self.content.get()).ok()
    }
}

/// What a client (or the server itself) asks to put into a room.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: TimelineEventType,
    pub content: serde_json::Value,
    pub state_key: Option<String>,
    /// For `m.room.redaction`: the redacted event.
    pub redacts: Option<OwnedEventId>,
}

impl NewEvent {
    pub fn state(kind: TimelineEventType, state_key: &str, content: serde_json::Value) -> Self {
        Self { kind, content, state_key: Some(state_key.to_owned()), redacts: None }
    }

    pub fn message(kind: TimelineEventType, content: serde_json::Value) -> Self {
        Self { kind, content, state_key: None, redacts: None }
    }
}

/// The room-dependent inputs of a new PDU.
pub struct PduContext<'a> {
    pub rules: &'a RoomVersionRules,
    /// `None` only for the create event of a room whose ID derives from it (v12+).
    pub room_id: Option<&'a RoomId>,
    pub server_name: &'a str,
    pub key: &'a Ed25519KeyPair,
    pub sender: &'a UserId,
    pub prev_events: &'a [OwnedEventId],
    pub auth_events: &'a [OwnedEventId],
    pub depth: u64,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
}

fn event_refs(ids: &[OwnedEventId], rules: &RoomVersionRules) -> CanonicalJsonValue {
    let items = ids
        .iter()
        .map(|id| match rules.events_reference_format {
            EventsReferenceFormatVersion::V1 => {
                // v1/v2 reference hashes are advisory; servers send an empty sha256.
                let mut hashes = CanonicalJsonObject::new();
                hashes.insert("sha256".into(), CanonicalJsonValue::String(String::new()));
                CanonicalJsonValue::Array(vec![
                    CanonicalJsonValue::String(id.to_string()),
                    CanonicalJsonValue::Object(hashes),
                ])
            }
            _ => CanonicalJsonValue::String(id.to_string()),
        })
        .collect();
    CanonicalJsonValue::Array(items)
}

fn bad(e: impl std::fmt::Display) -> Error {
    Error::BadJson(format!("Invalid event: {e}"))
}

/// Builds, hashes and signs a PDU. Returns it with its event ID (and for v12 create events the
/// room ID derived from it).
pub fn build(event: &NewEvent, ctx: &PduContext<'_>) -> Result<Pdu> {
    let type_len = event.kind.to_string().len();
    if type_len > MAX_TYPE_OR_STATE_KEY_BYTES
        || event.state_key.as_ref().is_some_and(|k| k.len() > MAX_TYPE_OR_STATE_KEY_BYTES)
    {
        return Err(Error::TooLarge);
    }
    let mut content = event.content.clone();
    // From v11 on, `redacts` lives in the content (and survives redaction there).
    let redacts_in_content = ctx.rules.redaction.keep_room_redaction_redacts;
    if let (Some(redacts), true) = (&event.redacts, redacts_in_content)
        && let Some(obj) = content.as_object_mut()
    {
        obj.insert("redacts".into(), serde_json::Value::String(redacts.to_string()));
    }
    let content: CanonicalJsonValue = serde_json::from_value(content).map_err(bad)?;
    if !matches!(content, CanonicalJsonValue::Object(_)) {
        return Err(Error::BadJson("Event content must be a JSON object".into()));
    }

    let mut obj = CanonicalJsonObject::new();
    obj.insert("auth_events".into(), event_refs(ctx.auth_events, ctx.rules));
    obj.insert("content".into(), content);
    obj.insert("depth".into(), CanonicalJsonValue::Integer(ctx.depth.try_into().map_err(bad)?));
    obj.insert("origin".into(), CanonicalJsonValue::String(ctx.server_name.to_owned()));
    obj.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(ctx.origin_server_ts.get().into()),
    );
    obj.insert("prev_events".into(), event_refs(ctx.prev_events, ctx.rules));
    if let Some(room_id) = ctx.room_id {
        obj.insert("room_id".into(), CanonicalJsonValue::String(room_id.to_string()));
    }
    obj.insert("sender".into(), CanonicalJsonValue::String(ctx.sender.to_string()));
    obj.insert("type".into(), CanonicalJsonValue::String(event.kind.to_string()));
    if let Some(key) = &event.state_key {
        obj.insert("state_key".into(), CanonicalJsonValue::String(key.clone()));
    }
    if let (Some(redacts), false) = (&event.redacts, redacts_in_content) {
        obj.insert("redacts".into(), CanonicalJsonValue::String(redacts.to_string()));
    }
    if ctx.rules.event_id_format == EventIdFormatVersion::V1 {
        let local = crate::services::tokens::random_string(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
            18,
        );
        obj.insert(
            "event_id".into(),
            CanonicalJsonValue::String(format!("${local}:{}", ctx.server_name)),
        );
    }

    ruma::signatures::hash_and_sign_event(ctx.server_name, ctx.key, &mut obj, &ctx.rules.redaction)
        .map_err(|e| Error::Internal(format!("signing event: {e}")))?;

    let event_id: OwnedEventId = match ctx.rules.event_id_format {
        EventIdFormatVersion::V1 => match obj.get("event_id") {
            Some(CanonicalJsonValue::String(id)) => id.as_str().try_into().map_err(bad)?,
            _ => return Err(Error::Internal("v1 event without event_id".into())),
        },
        _ => {
            let hash = ruma::signatures::reference_hash(&obj, ctx.rules).map_err(|e| match e {
                ruma::signatures::JsonError::PduTooLarge => Error::TooLarge,
                other => bad(other),
            })?;
            format!("${hash}").try_into().map_err(bad)?
        }
    };
    let room_id: OwnedRoomId = match ctx.room_id {
        Some(id) => id.to_owned(),
        None if ctx.rules.room_id_format == RoomIdFormatVersion::V2 => {
            format!("!{}", &event_id.as_str()[1..]).try_into().map_err(bad)?
        }
        None => return Err(Error::Internal("event without a room ID".into())),
    };

    let json = to_raw_value(&obj).map_err(bad)?;
    if json.get().len() > MAX_PDU_BYTES {
        return Err(Error::TooLarge);
    }
    Pdu::from_json(json, &event_id, &room_id)
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        self.room_id_in_json.then_some(&*self.room_id)
    }

    fn sender(&self) -> &UserId {
        &self.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }

    fn content(&self) -> &RawValue {
        &self.content
    }

    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use ruma::RoomVersionId;
    use serde_json::json;

    use super::*;

    fn key() -> Ed25519KeyPair {
        Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "k1".into()).unwrap()
    }

    fn create_in(version: RoomVersionId, room_id: Option<&RoomId>) -> Pdu {
        let rules = version.rules().unwrap();
        let key = key();
        let sender = UserId::parse("@alice:example.org").unwrap();
        let ctx = PduContext {
            rules: &rules,
            room_id,
            server_name: "example.org",
            key: &key,
            sender: &sender,
            prev_events: &[],
            auth_events: &[],
            depth: 1,
            origin_server_ts: MilliSecondsSinceUnixEpoch::now(),
        };
        let content = json!({"room_version": version.as_str(), "creator": "@alice:example.org"});
        build(&NewEvent::state(TimelineEventType::RoomCreate, "", content), &ctx).unwrap()
    }

    #[test]
    fn a_v12_create_event_names_its_room() {
        let pdu = create_in(RoomVersionId::V12, None);
        assert_eq!(&pdu.room_id.as_str()[1..], &pdu.event_id.as_str()[1..]);
        assert!(!pdu.json.get().contains("room_id"));
        assert!(pdu.json.get().contains("\"signatures\""));
        assert!(pdu.json.get().contains("\"hashes\""));
    }

    #[test]
    fn v1_events_carry_server_scoped_ids() {
        let room: OwnedRoomId = "!abc:example.org".try_into().unwrap();
        let pdu = create_in(RoomVersionId::V1, Some(&room));
        assert!(pdu.event_id.as_str().ends_with(":example.org"));
        assert_eq!(pdu.room_id, room);
    }

    #[test]
    fn v4_event_ids_are_url_safe_hashes() {
        let room: OwnedRoomId = "!abc:example.org".try_into().unwrap();
        let pdu = create_in(RoomVersionId::V4, Some(&room));
        assert_eq!(pdu.event_id.as_str().len(), 44);
        assert!(!pdu.event_id.as_str().contains(['+', '/']));
    }

    #[test]
    fn a_parsed_pdu_equals_the_built_one() {
        let pdu = create_in(RoomVersionId::V12, None);
        let parsed = Pdu::from_json(pdu.json.clone(), &pdu.event_id, &pdu.room_id).unwrap();
        assert_eq!(parsed.event_id, pdu.event_id);
        assert_eq!(parsed.kind, TimelineEventType::RoomCreate);
        assert_eq!(parsed.state_key.as_deref(), Some(""));
    }
}
