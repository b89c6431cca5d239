//! Redactions: the rules every redaction passes, whichever endpoint (`/redact`,
//! `/send/m.room.redaction`, later federation) it comes from, and the redacted copy that
//! replaces the stored event.
//!
//! **Architecture Invariant.** A redaction is built only after its target was found in the
//! same room and the sender was found allowed to redact it (`Rooms::append` →
//! [`Rooms::redaction_target`] → `prepare`). The target's stored PDU is replaced by its
//! redacted form in the redaction's own write batch, and a redacted current-state event is
//! replaced in the room's state cache, so no reader sees the original content again.

use std::sync::Arc;

use ruma::events::TimelineEventType;
use ruma::room_version_rules::RoomVersionRules;
use ruma::{CanonicalJsonObject, EventId, OwnedEventId, UserId};
use serde_json::value::to_raw_value;

use super::pdu::{NewEvent, Pdu, PduRef};
use super::{Room, RoomInner, Rooms};
use crate::error::{Error, Result};

/// The event a redaction removes: loaded and checked before the redaction is built.
pub(super) struct Target {
    pub(super) event_id: OwnedEventId,
    /// `(type, state_key)` when the target is a state event.
    pub(super) state_key: Option<(String, String)>,
    /// The target after the room version's redaction algorithm.
    pub(super) redacted: PduRef,
    /// The target's search-index terms (deleted in the redaction's batch).
    pub(super) search_terms: Vec<String>,
    /// The target's relation, which leaves the relations index with it.
    pub(super) relation: Option<crate::storage::relations::RelationWrite>,
}

/// Moves the target of an `m.room.redaction` from its content to [`NewEvent::redacts`], where
/// clients put it for every room version on `/send`; the PDU builder then places it where
/// the room version wants it (top level before v11, content from v11 on).
pub(super) fn take_redacts_from_content(event: &mut NewEvent) -> Result<()> {
    if event.kind != TimelineEventType::RoomRedaction {
        return Ok(());
    }
    if event.state_key.is_some() {
        return Err(Error::BadJson("m.room.redaction is not a state event".into()));
    }
    let in_content = event.content.as_object_mut().and_then(|c| c.remove("redacts"));
    if event.redacts.is_none() {
        let id = in_content.as_ref().and_then(|v| v.as_str()).ok_or_else(|| {
            Error::BadJson("m.room.redaction needs `redacts`, an event ID".into())
        })?;
        let id = EventId::parse(id).map_err(|e| Error::BadJson(format!("Invalid redacts: {e}")))?;
        event.redacts = Some(id);
    }
    Ok(())
}

impl Rooms {
    /// Loads the event `sender` wants to redact and checks they may: it must be an event of
    /// this room (else 404, as for an unknown event: other rooms' events are not revealed),
    /// not the create or server ACL event (which would break the room), and their own or
    /// `sender` must have the room's `redact` power level. Room versions 1 and 2 check the
    /// power level in the auth rules too; from v3 on the rules leave it to the server.
    /// (Federation will add the spec's rule for remote senders: same server as the target.)
    ///
    /// The caller holds the room's builder lock; `builder` is its view.
    pub(super) async fn redaction_target(
        &self,
        room: &Room,
        builder: &RoomInner,
        sender: &UserId,
        redacts: &EventId,
    ) -> Result<Target> {
        let not_found = || Error::NotFound("Event not found".into());
        let (record, target) = self.event(redacts.as_str()).await?.ok_or_else(not_found)?;
        if record.room_id != room.id.as_str() {
            return Err(not_found());
        }
        match target.kind {
            TimelineEventType::RoomCreate => {
                return Err(Error::Forbidden("The create event cannot be redacted".into()));
            }
            TimelineEventType::RoomServerAcl => {
                return Err(Error::Forbidden("Server ACL events cannot be redacted".into()));
            }
            _ => {}
        }
        if target.sender != sender {
            // The power levels are read from the published state: first let the room's
            // events still on their way to disk (a demotion, say) be published.
            self.wait_until_published(room, builder).await?;
            if room.power_level_of(sender) < room.redact_level() {
                return Err(Error::Forbidden("You may not redact other users' events".into()));
            }
        }
        let redacted = redact(&target, &room.rules)?;
        // A target already redacted has no relation left (its first redaction removed it).
        let relation = match record.redacted_by {
            None => super::relations::relation_write(&target),
            Some(_) => None,
        };
        Ok(Target {
            relation,
            event_id: target.event_id.clone(),
            state_key: target.state_key.clone().map(|key| (target.kind.to_string(), key)),
            redacted: Arc::new(redacted),
            search_terms: super::search::index_terms(&target)
                .into_iter()
                .map(|(term, _)| term)
                .collect(),
        })
    }
}

/// `pdu` after the room version's redaction algorithm: the content keys the algorithm does
/// not keep are gone; hashes and signatures stay (the signature covers the redacted form, so
/// it still verifies).
pub fn redact(pdu: &Pdu, rules: &RoomVersionRules) -> Result<Pdu> {
    let object: CanonicalJsonObject = serde_json::from_str(pdu.json.get())
        .map_err(|e| Error::Internal(format!("stored PDU {} is invalid: {e}", pdu.event_id)))?;
    let redacted = ruma::canonical_json::redact(object, &rules.redaction, None)
        .map_err(|e| Error::Internal(format!("redacting {}: {e}", pdu.event_id)))?;
    let json = to_raw_value(&redacted)
        .map_err(|e| Error::Internal(format!("redacting {}: {e}", pdu.event_id)))?;
    Pdu::from_json(json, &pdu.event_id, &pdu.room_id)
}

#[cfg(test)]
mod tests {
    use ruma::serde::Base64;
    use ruma::signatures::{Ed25519KeyPair, PublicKeyMap, Verified};
    use ruma::{MilliSecondsSinceUnixEpoch, OwnedRoomId, RoomVersionId};
    use serde_json::json;

    use super::*;
    use crate::rooms::pdu::{PduContext, build};

    /// A member event with a displayname, and the keys that verify it.
    fn member_event(version: RoomVersionId) -> (Pdu, PublicKeyMap) {
        let rules = version.rules().unwrap();
        let key = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "k1".into()).unwrap();
        let keys = PublicKeyMap::from([(
            "example.org".to_owned(),
            [("ed25519:k1".to_owned(), Base64::new(key.public_key().to_vec()))].into(),
        )]);
        let sender = UserId::parse("@alice:example.org").unwrap();
        let room: OwnedRoomId = "!abc:example.org".try_into().unwrap();
        let prev: OwnedEventId = "$prev:example.org".try_into().unwrap();
        let ctx = PduContext {
            rules: &rules,
            room_id: Some(&room),
            server_name: "example.org",
            key: &key,
            sender: &sender,
            prev_events: std::slice::from_ref(&prev),
            auth_events: &[],
            depth: 2,
            origin_server_ts: MilliSecondsSinceUnixEpoch::now(),
        };
        let content = json!({"membership": "join", "displayname": "Alice"});
        let event = NewEvent::state(TimelineEventType::RoomMember, sender.as_str(), content);
        (build(&event, &ctx).unwrap(), keys)
    }

    fn verify(pdu: &Pdu, keys: &PublicKeyMap, rules: &RoomVersionRules) -> Verified {
        let object: CanonicalJsonObject = serde_json::from_str(pdu.json.get()).unwrap();
        ruma::signatures::verify_event(keys, &object, rules).unwrap()
    }

    #[test]
    fn a_redacted_pdu_keeps_valid_signatures_and_loses_its_content() {
        for version in [RoomVersionId::V1, RoomVersionId::V10, RoomVersionId::V12] {
            let rules = version.rules().unwrap();
            let (pdu, keys) = member_event(version.clone());
            let redacted = redact(&pdu, &rules).unwrap();
            let json: serde_json::Value = serde_json::from_str(redacted.json.get()).unwrap();
            assert_eq!(json["content"], json!({"membership": "join"}), "v{version}");
            // What federation checks: the signatures hold, the content hash says "redacted".
            assert_eq!(verify(&pdu, &keys, &rules), Verified::All, "v{version}");
            assert_eq!(verify(&redacted, &keys, &rules), Verified::Signatures, "v{version}");
            assert_eq!(redacted.event_id, pdu.event_id);
            assert_eq!(redacted.state_key, pdu.state_key);
        }
    }

    #[test]
    fn redacts_moves_from_the_content_to_the_event() {
        let mut event =
            NewEvent::message(TimelineEventType::RoomRedaction, json!({"redacts": "$x:y"}));
        take_redacts_from_content(&mut event).unwrap();
        assert_eq!(event.redacts.as_ref().map(|r| r.as_str()), Some("$x:y"));
        assert_eq!(event.content, json!({}));
        let mut missing = NewEvent::message(TimelineEventType::RoomRedaction, json!({}));
        assert!(matches!(take_redacts_from_content(&mut missing), Err(Error::BadJson(_))));
    }
}
