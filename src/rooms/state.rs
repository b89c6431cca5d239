//! Room state: the in-memory current state of a room, and state groups (snapshot + deltas)
//! that make "state after any event" cheap to store and to rebuild.
//!
//! Cost: a state event writes one delta record (one entry); every [`SNAPSHOT_EVERY`]-th state
//! change in a room writes a full snapshot instead, so rebuilding any state reads at most
//! that many records. Message events reuse their predecessor's group and write nothing.

use std::collections::HashMap;
use std::sync::Arc;

use ruma::events::StateEventType;

use crate::error::{Error, Result};
use crate::rooms::pdu::{Pdu, PduRef};
use crate::storage::Store;
use crate::storage::rooms::StateGroupRecord;

/// Deltas between full snapshots.
pub const SNAPSHOT_EVERY: u32 = 64;

pub type StateKey = (StateEventType, String);
/// Current state: `(type, state_key)` → the event.
pub type StateMap = HashMap<StateKey, PduRef>;

/// The state group record for the state after `pdu`, given the state before it.
pub fn next_group(
    prev_group: Option<u64>,
    prev_chain_len: u32,
    new_state: &StateMap,
    pdu: &Pdu,
) -> StateGroupRecord {
    let entry = |k: &StateKey, p: &PduRef| (k.0.to_string(), k.1.clone(), p.event_id.to_string());
    match prev_group {
        Some(prev) if prev_chain_len < SNAPSHOT_EVERY => StateGroupRecord {
            prev: Some(prev),
            chain_len: prev_chain_len + 1,
            entries: vec![(
                pdu.kind.to_string(),
                pdu.state_key.clone().unwrap_or_default(),
                pdu.event_id.to_string(),
            )],
        },
        _ => StateGroupRecord {
            prev: None,
            chain_len: 0,
            entries: new_state.iter().map(|(k, p)| entry(k, p)).collect(),
        },
    }
}

/// The state group after a room's last event at or before stream position `pos`; `None`
/// before the room's first event.
pub async fn group_at(store: &dyn Store, room_id: &str, pos: u64) -> Result<Option<u64>> {
    let before = store.room_events(room_id, None, Some(pos.saturating_add(1)), true, 1).await?;
    let Some((_, event_id)) = before.first() else { return Ok(None) };
    let record = store
        .event(event_id)
        .await?
        .ok_or_else(|| Error::Internal(format!("event {event_id} missing")))?;
    Ok(Some(record.state_group))
}

/// Rebuilds the `(type, state_key) → event_id` map of a state group.
pub async fn group_ids(store: &dyn Store, group: u64) -> Result<HashMap<StateKey, String>> {
    let mut out: HashMap<StateKey, String> = HashMap::new();
    let mut next = Some(group);
    while let Some(id) = next {
        let record = store
            .state_group(id)
            .await?
            .ok_or_else(|| Error::Internal(format!("state group {id} missing")))?;
        for (kind, key, event_id) in record.entries {
            out.entry((kind.into(), key)).or_insert(event_id);
        }
        next = record.prev;
    }
    Ok(out)
}

/// Rebuilds a state group with its events.
pub async fn load_group(store: &dyn Store, group: u64) -> Result<StateMap> {
    let ids = group_ids(store, group).await?;
    let mut out = HashMap::with_capacity(ids.len());
    for (k, event_id) in ids {
        out.insert(k, Arc::new(load_pdu(store, &event_id).await?));
    }
    Ok(out)
}

/// Loads one stored PDU.
pub async fn load_pdu(store: &dyn Store, event_id: &str) -> Result<Pdu> {
    let record = store
        .event(event_id)
        .await?
        .ok_or_else(|| Error::Internal(format!("event {event_id} missing")))?;
    let id: ruma::OwnedEventId = event_id
        .try_into()
        .map_err(|e| Error::Internal(format!("stored event ID {event_id}: {e}")))?;
    let room: ruma::OwnedRoomId = record
        .room_id
        .as_str()
        .try_into()
        .map_err(|e| Error::Internal(format!("stored room ID: {e}")))?;
    Pdu::from_json(record.pdu, &id, &room)
}
