//! Events as clients see them: the client format of a stored event with its `unsigned`
//! section (`transaction_id` for the sending device, `prev_content`/`replaces_state` for state
//! changes, `redacted_because` for redacted events).

use ruma::UserId;
use serde_json::{Map, Value, json};

use super::pdu::Pdu;
use super::{Room, Rooms};
use crate::error::{Error, Result};
use crate::storage::rooms::EventRecord;

/// Who is looking: the transaction ID is echoed only to the device that sent the event.
#[derive(Clone, Copy)]
pub struct Viewer<'a> {
    pub user: &'a UserId,
    pub device_id: &'a str,
}

impl Rooms {
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
