//! Endpoints older clients and test suites still call, served as Synapse serves them:
//! `POST /rooms/{roomId}/send/{eventType}` (no transaction ID, so no idempotence) and
//! `GET /rooms/{roomId}/initialSync` (a room's recent timeline and state; non-members may
//! peek into rooms whose history is world-readable now, as `HistoryAccess` allows) and
//! `GET /events?room_id=` (the room-preview stream that follows it: events after a token,
//! long-polled; same access rule).

use axum::Json;
use axum::extract::{RawQuery, State};
use ruma::events::TimelineEventType;
use ruma::{OwnedRoomId, RoomId};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::http::auth::Authed;
use crate::http::ruma::{AppState, JsonBody, PathArgs};
use crate::rooms::client::Viewer;
use crate::rooms::history::Direction;
use crate::rooms::pdu::NewEvent;

fn room_id(arg: Option<&String>) -> Result<OwnedRoomId> {
    let arg = arg.ok_or_else(|| Error::InvalidParam("Missing room ID".into()))?;
    RoomId::parse(arg).map_err(|e| Error::InvalidParam(format!("Invalid room ID: {e}")))
}

/// `POST /rooms/{roomId}/send/{eventType}`: `PUT /send` without a transaction ID (a retry
/// sends the event again).
pub async fn send_without_txn(
    State(s): State<AppState>,
    Authed(who): Authed,
    PathArgs(args): PathArgs,
    JsonBody(content): JsonBody<Value>,
) -> Result<Json<Value>> {
    let room_id = room_id(args.first())?;
    let kind = args.get(1).ok_or_else(|| Error::InvalidParam("Missing event type".into()))?;
    if !content.is_object() {
        return Err(Error::BadJson("Event content must be a JSON object".into()));
    }
    s.event_limiter.check(who.user_id.as_str())?;
    s.rooms.require_joined(&room_id, &who.user_id)?;
    let kind: TimelineEventType = kind.as_str().into();
    let event_id =
        s.rooms.append(&room_id, &who.user_id, NewEvent::message(kind, content), None).await?;
    s.presence.active(&who.user_id);
    Ok(Json(json!({"event_id": event_id})))
}

/// Events of a room's timeline `initialSync` returns.
const INITIAL_SYNC_LIMIT: usize = 20;

/// `GET /rooms/{roomId}/initialSync`: the newest events the user may see, the room state
/// they may read, their membership and the room's directory visibility.
pub async fn room_initial_sync(
    State(s): State<AppState>,
    Authed(who): Authed,
    PathArgs(args): PathArgs,
) -> Result<Json<Value>> {
    let room_id = room_id(args.first())?;
    let room =
        s.rooms.get(&room_id).ok_or_else(|| Error::Forbidden("You are not in this room".into()))?;
    // Members and former members, or anyone when the history is world-readable now.
    let access = s.rooms.readable(&room, &who.user_id).await?;
    let state = s.rooms.visible_state(&room, &who.user_id, None).await?;
    let from = access.until.min(room.last_pos());
    let page = s
        .rooms
        .scan(&room, &access, Direction::Backward { from, until: None }, INITIAL_SYNC_LIMIT, None)
        .await?;
    let viewer = Viewer { user: &who.user_id, device_id: who.device_id.as_str() };
    let mut chunk = Vec::with_capacity(page.events.len());
    for e in page.events.iter().rev() {
        chunk.push(s.rooms.client_event(&room, &e.record, &e.pdu, viewer, true).await?);
    }
    let mut state_events = Vec::with_capacity(state.len());
    for pdu in state.values() {
        state_events.push(s.rooms.client_state_event(&room, pdu, viewer, true).await?);
    }
    let visibility = if s.rooms.is_published(&room.id).await? { "public" } else { "private" };
    let mut body = json!({
        "room_id": room.id,
        "messages": {
            "chunk": chunk,
            "start": format!("s{}", page.cursor),
            "end": format!("s{from}"),
        },
        "state": state_events,
        "visibility": visibility,
        "presence": [],
        "receipts": [],
        "account_data": [],
    });
    if let Some(m) = room.membership_of(&who.user_id) {
        body["membership"] = json!(m);
    }
    Ok(Json(body))
}

/// Events one `GET /events` returns at most.
const EVENTS_LIMIT: usize = 100;
/// Longest `/events` long-poll (as `/sync`'s).
const EVENTS_MAX_TIMEOUT_MS: u64 = 120_000;

/// A position token of `initialSync` and `/events`: `s<position>`.
fn parse_pos_token(token: &str) -> Result<u64> {
    token
        .strip_prefix('s')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::InvalidParam("Invalid from token".into()))
}

/// `GET /events?room_id=&from=&timeout=`: the events of one room after `from` (default:
/// now) that the user may see, waiting up to `timeout` ms (default 0) for one. Members,
/// former members, and anyone while the history is world-readable, as `initialSync`
/// (events of eras the peeker may not see are left out by `HistoryAccess`). Without a
/// `room_id` (the pre-`/sync` stream of every joined room) it is refused: `/sync` replaces
/// it.
pub async fn events(
    State(s): State<AppState>,
    Authed(who): Authed,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>> {
    let query = query.unwrap_or_default();
    let mut from = None;
    let mut room_id = None;
    let mut timeout_ms = 0u64;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "from" => from = Some(parse_pos_token(&v)?),
            "room_id" => {
                room_id = Some(
                    RoomId::parse(&*v)
                        .map_err(|e| Error::InvalidParam(format!("Invalid room ID: {e}")))?,
                );
            }
            "timeout" => {
                timeout_ms = v
                    .parse()
                    .map_err(|_| Error::InvalidParam("timeout must be an integer".into()))?;
            }
            _ => {}
        }
    }
    let room_id = room_id.ok_or_else(|| {
        Error::MissingParam("room_id is required (use /sync for joined rooms)".into())
    })?;
    let room =
        s.rooms.get(&room_id).ok_or_else(|| Error::Forbidden("You are not in this room".into()))?;
    // Refused before waiting for users who may not peek.
    s.rooms.readable(&room, &who.user_id).await?;
    let start = from.unwrap_or_else(|| room.last_pos()).min(room.last_pos());
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_millis(timeout_ms.min(EVENTS_MAX_TIMEOUT_MS));
    let viewer = Viewer { user: &who.user_id, device_id: who.device_id.as_str() };
    let mut cursor = start;
    loop {
        s.rooms.wait_for_room_event(&room, cursor, deadline).await;
        if room.last_pos() <= cursor {
            break;
        }
        // Access is read again: the user's membership or the room's visibility may have
        // changed while waiting.
        let access = s.rooms.readable(&room, &who.user_id).await?;
        let head = room.last_pos();
        let direction = Direction::Forward { from: cursor, until: Some(head) };
        let page = s.rooms.scan(&room, &access, direction, EVENTS_LIMIT, None).await?;
        // Past everything examined; all of it when the scan reached the head (so a run of
        // events the user may not see is never examined twice).
        cursor = if page.exhausted || page.cursor <= cursor { head } else { page.cursor };
        if !page.events.is_empty() {
            let mut chunk = Vec::with_capacity(page.events.len());
            for e in &page.events {
                chunk.push(s.rooms.client_event(&room, &e.record, &e.pdu, viewer, true).await?);
            }
            return Ok(Json(json!({
                "chunk": chunk,
                "start": format!("s{start}"),
                "end": format!("s{cursor}"),
            })));
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    Ok(Json(json!({"chunk": [], "start": format!("s{start}"), "end": format!("s{cursor}")})))
}
