//! Read receipts and read markers. For now they record how far the user has read (which
//! drives `unread_notifications` in /sync); sharing receipts with other members comes with
//! the receipts milestone.

use axum::extract::State;
use ruma::api::client::read_marker::set_read_marker;
use ruma::api::client::receipt::create_receipt;
use ruma::{EventId, RoomId};
use serde_json::json;

use crate::error::{Error, Result};
use crate::http::auth::Authed;
use crate::http::ruma::{AppState, Ruma, RumaResponse};
use crate::services::Services;
use crate::services::accounts::Identity;

/// The stream position of an event of the room that the user may see.
async fn event_pos(s: &Services, who: &Identity, room: &RoomId, event: &EventId) -> Result<u64> {
    s.rooms.require_joined(room, &who.user_id)?;
    let (record, _) = s
        .rooms
        .event(event.as_str())
        .await?
        .filter(|(r, _)| r.room_id == room.as_str())
        .ok_or_else(|| Error::NotFound("Event not found".into()))?;
    Ok(record.pos)
}

async fn fully_read(s: &Services, who: &Identity, room: &RoomId, event: &EventId) -> Result<()> {
    event_pos(s, who, room, event).await?;
    s.user_data
        .set_account_data(&who.user_id, Some(room), "m.fully_read", json!({"event_id": event}))
        .await
}

async fn read(s: &Services, who: &Identity, room: &RoomId, event: &EventId) -> Result<()> {
    let pos = event_pos(s, who, room, event).await?;
    s.user_data.mark_read(&who.user_id, room, event.as_str(), pos).await
}

pub async fn create_receipt(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<create_receipt::v3::Request>,
) -> Result<RumaResponse<create_receipt::v3::Response>> {
    use create_receipt::v3::ReceiptType;
    match req.receipt_type {
        ReceiptType::Read | ReceiptType::ReadPrivate => {
            read(&s, &who, &req.room_id, &req.event_id).await?
        }
        ReceiptType::FullyRead => fully_read(&s, &who, &req.room_id, &req.event_id).await?,
        other => {
            return Err(Error::InvalidParam(format!("Unknown receipt type {}", other.as_str())));
        }
    }
    Ok(RumaResponse(create_receipt::v3::Response::new()))
}

pub async fn set_read_marker(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<set_read_marker::v3::Request>,
) -> Result<RumaResponse<set_read_marker::v3::Response>> {
    if let Some(event) = &req.fully_read {
        fully_read(&s, &who, &req.room_id, event).await?;
    }
    for event in [&req.read_receipt, &req.private_read_receipt].into_iter().flatten() {
        read(&s, &who, &req.room_id, event).await?;
    }
    Ok(RumaResponse(set_read_marker::v3::Response::new()))
}
