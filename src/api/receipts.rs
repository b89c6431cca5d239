//! Read receipts and read markers: `POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`
//! and `POST /rooms/{roomId}/read_markers`. `m.read` and `m.read.private` are receipts
//! (`services::receipts`); `m.fully_read` is the room account data of that name.

use std::sync::Arc;

use axum::extract::State;
use ruma::api::client::read_marker::set_read_marker;
use ruma::api::client::receipt::create_receipt;
use ruma::events::receipt::ReceiptThread;
use ruma::{EventId, RoomId};
use serde_json::json;

use crate::error::{Error, Result};
use crate::http::auth::Authed;
use crate::http::ruma::{AppState, Ruma, RumaResponse};
use crate::rooms::Room;
use crate::services::Services;
use crate::services::accounts::Identity;
use crate::services::receipts::{NewReceipt, READ, READ_PRIVATE};

/// The stream position of an event of the room that the user may see (404 otherwise: an
/// unknown event, another room's, or one hidden by the history visibility look the same).
async fn event_pos(s: &Services, who: &Identity, room: &Room, event: &EventId) -> Result<u64> {
    let not_found = || Error::NotFound("Event not found".into());
    let (record, pdu) = s
        .rooms
        .event(event.as_str())
        .await?
        .filter(|(r, _)| r.room_id == room.id.as_str())
        .ok_or_else(not_found)?;
    let access = s.rooms.readable(room, &who.user_id).await?;
    if !access.history_allows(record.pos, &pdu) {
        return Err(not_found());
    }
    Ok(record.pos)
}

/// Only joined members send receipts and markers (403 otherwise).
fn joined(s: &Services, who: &Identity, room: &RoomId) -> Result<Arc<Room>> {
    s.rooms.require_joined(room, &who.user_id)
}

async fn fully_read(s: &Services, who: &Identity, room: &Room, event: &EventId) -> Result<()> {
    event_pos(s, who, room, event).await?;
    s.user_data
        .set_account_data(&who.user_id, Some(&room.id), "m.fully_read", json!({"event_id": event}))
        .await
}

/// The `thread_id` as stored: `None` (unthreaded), `main`, or a thread root of the room.
async fn thread_id(s: &Services, room: &Room, thread: &ReceiptThread) -> Result<Option<String>> {
    match thread {
        ReceiptThread::Unthreaded => Ok(None),
        ReceiptThread::Main => Ok(Some("main".into())),
        ReceiptThread::Thread(root) => {
            // As Synapse, the event need not be in that thread (an edit of a thread's
            // message is not); the root must be an event of the room.
            let in_room =
                s.rooms.event(root.as_str()).await?.is_some_and(|(r, _)| r.room_id == room.id);
            if !in_room {
                return Err(Error::InvalidParam(
                    "thread_id must be 'main' or an event of the room".into(),
                ));
            }
            Ok(Some(root.to_string()))
        }
        _ => Err(Error::InvalidParam("thread_id must be 'main' or an event ID".into())),
    }
}

pub async fn create_receipt(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<create_receipt::v3::Request>,
) -> Result<RumaResponse<create_receipt::v3::Response>> {
    use create_receipt::v3::ReceiptType;
    let receipt_type = match req.receipt_type {
        ReceiptType::Read => READ,
        ReceiptType::ReadPrivate => READ_PRIVATE,
        ReceiptType::FullyRead => {
            if req.thread != ReceiptThread::Unthreaded {
                return Err(Error::InvalidParam(
                    "thread_id is not compatible with m.fully_read".into(),
                ));
            }
            let room = joined(&s, &who, &req.room_id)?;
            fully_read(&s, &who, &room, &req.event_id).await?;
            return Ok(RumaResponse(create_receipt::v3::Response::new()));
        }
        other => {
            return Err(Error::InvalidParam(format!("Unknown receipt type {}", other.as_str())));
        }
    };
    let room = joined(&s, &who, &req.room_id)?;
    let thread_id = thread_id(&s, &room, &req.thread).await?;
    let event_pos = event_pos(&s, &who, &room, &req.event_id).await?;
    let receipt =
        NewReceipt { receipt_type, thread_id, event_id: req.event_id.to_string(), event_pos };
    s.receipts.set(&room.id, &|| room.members(), &who.user_id, vec![receipt]).await?;
    Ok(RumaResponse(create_receipt::v3::Response::new()))
}

pub async fn set_read_marker(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<set_read_marker::v3::Request>,
) -> Result<RumaResponse<set_read_marker::v3::Response>> {
    let room = joined(&s, &who, &req.room_id)?;
    // Every event is checked before anything is written.
    let mut receipts = Vec::new();
    for (receipt_type, event) in
        [(READ, &req.read_receipt), (READ_PRIVATE, &req.private_read_receipt)]
    {
        let Some(event) = event else { continue };
        let event_pos = event_pos(&s, &who, &room, event).await?;
        receipts.push(NewReceipt {
            receipt_type,
            thread_id: None,
            event_id: event.to_string(),
            event_pos,
        });
    }
    if let Some(event) = &req.fully_read {
        fully_read(&s, &who, &room, event).await?;
    }
    if !receipts.is_empty() {
        s.receipts.set(&room.id, &|| room.members(), &who.user_id, receipts).await?;
    }
    Ok(RumaResponse(set_read_marker::v3::Response::new()))
}
