//! Room endpoints: create, membership, send, state, redact, history.

use axum::Json;
use axum::extract::State;
use ruma::api::client::context::get_context;
use ruma::api::client::membership::{
    ban_user, forget_room, get_member_events, invite_user, join_room_by_id,
    join_room_by_id_or_alias, joined_members, joined_rooms, kick_user, leave_room, unban_user,
};
use ruma::api::client::message::{get_message_events, send_message_event};
use ruma::api::client::redact::redact_event;
use ruma::api::client::room::{create_room, get_event_by_timestamp, get_room_event};
use ruma::api::client::state::{get_state_event_for_key, get_state_events, send_state_event};
use ruma::events::{StateEventType, TimelineEventType};
use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::http::auth::Authed;
use crate::http::ruma::{AppState, Ruma, RumaResponse};
use crate::rooms::Room;
use crate::rooms::client::Viewer;
use crate::rooms::create::{CreateRoom, Preset};
use crate::rooms::history::Direction;
use crate::rooms::pdu::NewEvent;
use crate::rooms::pdu::Pdu;
use crate::rooms::visibility::HistoryAccess;
use crate::services::Services;
use crate::services::accounts::Identity;
use crate::storage::rooms::{EventRecord, TxnKey};
use std::sync::Arc;

/// Pagination tokens are `s<stream position>`; a sync token (`s<events>_<…>`) works too.
pub fn parse_token(token: &str) -> Result<u64> {
    crate::api::sync::SyncToken::parse(token).map(|t| t.events)
}

pub fn token(pos: u64) -> String {
    format!("s{pos}")
}

fn raw_to_value<T>(raw: &ruma::serde::Raw<T>) -> Result<Value> {
    serde_json::from_str(raw.json().get()).map_err(|e| Error::BadJson(e.to_string()))
}

pub async fn create(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<create_room::v3::Request>,
) -> Result<RumaResponse<create_room::v3::Response>> {
    use ruma::api::client::room::Visibility;
    use ruma::api::client::room::create_room::v3::RoomPreset;
    let preset = match req.preset {
        Some(RoomPreset::PrivateChat) => Some(Preset::PrivateChat),
        Some(RoomPreset::TrustedPrivateChat) => Some(Preset::TrustedPrivateChat),
        Some(RoomPreset::PublicChat) => Some(Preset::PublicChat),
        Some(other) => {
            return Err(Error::InvalidParam(format!("Unknown preset {}", other.as_str())));
        }
        None => None,
    };
    let mut initial_state = Vec::new();
    for raw in &req.initial_state {
        let v: Value = raw_to_value(raw)?;
        let kind = v["type"]
            .as_str()
            .ok_or_else(|| Error::BadJson("initial_state event without type".into()))?;
        let key = v.get("state_key").and_then(Value::as_str).unwrap_or("");
        let content = v.get("content").cloned().unwrap_or_else(|| json!({}));
        initial_state.push((kind.to_owned(), key.to_owned(), content));
    }
    let room_id = s
        .rooms
        .create_room(
            &who.user_id,
            CreateRoom {
                version: req.room_version,
                preset,
                public: req.visibility == Visibility::Public,
                creation_content: req.creation_content.as_ref().map(raw_to_value).transpose()?,
                initial_state,
                name: req.name,
                topic: req.topic,
                invite: req.invite,
                is_direct: req.is_direct,
                room_alias_localpart: req.room_alias_name,
                power_level_content_override: req
                    .power_level_content_override
                    .as_ref()
                    .map(raw_to_value)
                    .transpose()?,
            },
        )
        .await?;
    Ok(RumaResponse(create_room::v3::Response::new(room_id)))
}

/// Whether the user is joined already: a join then changes nothing, and what the user has
/// changed since their first join (such as carried-over push rules) is not undone.
fn joined_already(s: &Services, room_id: &RoomId, user: &UserId) -> bool {
    s.rooms.get(room_id).is_some_and(|room| room.is_joined(user))
}

pub async fn join_by_id(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<join_room_by_id::v3::Request>,
) -> Result<RumaResponse<join_room_by_id::v3::Response>> {
    let rejoin = joined_already(&s, &req.room_id, &who.user_id);
    s.rooms.join_as(&req.room_id, &who.user_id, who.guest).await?;
    if !rejoin {
        crate::api::upgrade::carry_over(&s, &who.user_id, &req.room_id).await;
    }
    Ok(RumaResponse(join_room_by_id::v3::Response::new(req.room_id)))
}

pub async fn join_by_id_or_alias(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<join_room_by_id_or_alias::v3::Request>,
) -> Result<RumaResponse<join_room_by_id_or_alias::v3::Response>> {
    let room_id = match OwnedRoomId::try_from(req.room_id_or_alias) {
        Ok(room_id) => room_id,
        Err(alias) => s.rooms.resolve_alias(&alias).await?,
    };
    let rejoin = joined_already(&s, &room_id, &who.user_id);
    s.rooms.join_as(&room_id, &who.user_id, who.guest).await?;
    if !rejoin {
        crate::api::upgrade::carry_over(&s, &who.user_id, &room_id).await;
    }
    Ok(RumaResponse(join_room_by_id_or_alias::v3::Response::new(room_id)))
}

pub async fn invite(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<invite_user::v3::Request>,
) -> Result<RumaResponse<invite_user::v3::Response>> {
    let invite_user::v3::InvitationRecipient::UserId(recipient) = &req.recipient else {
        return Err(Error::Unknown("Third-party invites are not supported".into()));
    };
    s.rooms
        .invite(&req.room_id, &who.user_id, &recipient.user_id, recipient.reason.as_deref())
        .await?;
    Ok(RumaResponse(invite_user::v3::Response::new()))
}

pub async fn leave(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<leave_room::v3::Request>,
) -> Result<RumaResponse<leave_room::v3::Response>> {
    s.rooms.leave(&req.room_id, &who.user_id, req.reason.as_deref()).await?;
    Ok(RumaResponse(leave_room::v3::Response::new()))
}

pub async fn forget(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<forget_room::v3::Request>,
) -> Result<RumaResponse<forget_room::v3::Response>> {
    s.rooms.forget(&req.room_id, &who.user_id).await?;
    Ok(RumaResponse(forget_room::v3::Response::new()))
}

pub async fn kick(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<kick_user::v3::Request>,
) -> Result<RumaResponse<kick_user::v3::Response>> {
    s.rooms.kick(&req.room_id, &who.user_id, &req.user_id, req.reason.as_deref()).await?;
    Ok(RumaResponse(kick_user::v3::Response::new()))
}

pub async fn ban(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<ban_user::v3::Request>,
) -> Result<RumaResponse<ban_user::v3::Response>> {
    s.rooms.ban(&req.room_id, &who.user_id, &req.user_id, req.reason.as_deref()).await?;
    Ok(RumaResponse(ban_user::v3::Response::new()))
}

pub async fn unban(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<unban_user::v3::Request>,
) -> Result<RumaResponse<unban_user::v3::Response>> {
    s.rooms.unban(&req.room_id, &who.user_id, &req.user_id, req.reason.as_deref()).await?;
    Ok(RumaResponse(unban_user::v3::Response::new()))
}

pub async fn joined_rooms(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(_): Ruma<joined_rooms::v3::Request>,
) -> RumaResponse<joined_rooms::v3::Response> {
    let rooms = s
        .rooms
        .rooms_of(&who.user_id)
        .into_iter()
        .filter(|r| r.is_joined(&who.user_id))
        .map(|r| r.id.clone())
        .collect();
    RumaResponse(joined_rooms::v3::Response::new(rooms))
}

pub async fn send_message(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<send_message_event::v3::Request>,
) -> Result<RumaResponse<send_message_event::v3::Response>> {
    let kind: TimelineEventType = req.event_type.to_string().into();
    let txn = TxnKey::send(
        &who.localpart,
        who.device_id.as_str(),
        req.room_id.as_str(),
        &kind.to_string(),
        req.txn_id.as_str(),
    );
    // A retry gets its original answer, even after leaving the room or hitting the limit.
    if let Some(event_id) = s.rooms.transaction_event(&req.room_id, &txn).await? {
        return Ok(RumaResponse(send_message_event::v3::Response::new(event_id)));
    }
    s.event_limiter.check(who.user_id.as_str())?;
    s.rooms.require_joined(&req.room_id, &who.user_id)?;
    let content = raw_to_value(&req.body)?;
    if !content.is_object() {
        return Err(Error::BadJson("Event content must be a JSON object".into()));
    }
    let event_id = s
        .rooms
        .append(&req.room_id, &who.user_id, NewEvent::message(kind, content), Some(txn))
        .await?;
    // Sending a message is activity: the sender is active now (presence).
    s.presence.active(&who.user_id);
    Ok(RumaResponse(send_message_event::v3::Response::new(event_id)))
}

pub async fn send_state(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<send_state_event::v3::Request>,
) -> Result<RumaResponse<send_state_event::v3::Response>> {
    s.event_limiter.check(who.user_id.as_str())?;
    s.rooms.require_joined(&req.room_id, &who.user_id)?;
    let content = raw_to_value(&req.body)?;
    if !content.is_object() {
        return Err(Error::BadJson("Event content must be a JSON object".into()));
    }
    let kind: TimelineEventType = req.event_type.to_string().into();
    if kind == TimelineEventType::RoomMember {
        // Membership changes go through the membership endpoints' checks, but setting one's
        // own profile on the member event is how clients change per-room names.
        let target =
            UserId::parse(&req.state_key).map_err(|e| Error::InvalidParam(e.to_string()))?;
        if target != who.user_id {
            let m = content.get("membership").and_then(Value::as_str).unwrap_or_default();
            if !matches!(m, "invite" | "leave" | "ban") {
                return Err(Error::Forbidden(
                    "Cannot set another user's membership to that".into(),
                ));
            }
        }
    }
    let tombstone = kind == TimelineEventType::RoomTombstone && req.state_key.is_empty();
    let replaced_by = |s: &Services| crate::api::upgrade::replacement_of(s, &req.room_id);
    let before = if tombstone { replaced_by(&s) } else { None };
    let event_id = s
        .rooms
        .set_state(&req.room_id, &who.user_id, NewEvent::state(kind, &req.state_key, content))
        .await?;
    // A room replaced by hand (a new room naming this one as `predecessor`, then this
    // tombstone): those already in the new room carry over what they had here. Only when
    // the tombstone names another room than before: sending it again undoes nothing the
    // members changed since.
    if tombstone && replaced_by(&s) != before {
        crate::api::upgrade::tombstoned(&s, &req.room_id).await;
    }
    Ok(RumaResponse(send_state_event::v3::Response::new(event_id)))
}

/// `PUT /redact`: who may redact what is the rooms service's rule (`rooms::redaction`),
/// shared with `/send/m.room.redaction`.
pub async fn redact(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<redact_event::v3::Request>,
) -> Result<RumaResponse<redact_event::v3::Response>> {
    let txn = TxnKey::redact(
        &who.localpart,
        who.device_id.as_str(),
        req.room_id.as_str(),
        req.event_id.as_str(),
        req.txn_id.as_str(),
    );
    if let Some(event_id) = s.rooms.transaction_event(&req.room_id, &txn).await? {
        return Ok(RumaResponse(redact_event::v3::Response::new(event_id)));
    }
    s.event_limiter.check(who.user_id.as_str())?;
    s.rooms.require_joined(&req.room_id, &who.user_id)?;
    let mut content = json!({});
    if let Some(reason) = &req.reason {
        content["reason"] = json!(reason);
    }
    let event = NewEvent {
        kind: TimelineEventType::RoomRedaction,
        content,
        state_key: None,
        redacts: Some(req.event_id.clone()),
    };
    let event_id = s.rooms.append(&req.room_id, &who.user_id, event, Some(txn)).await?;
    Ok(RumaResponse(redact_event::v3::Response::new(event_id)))
}

pub async fn state(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_state_events::v3::Request>,
) -> Result<Json<Value>> {
    let room = room_or_forbidden(&s, &req.room_id)?;
    let state = s.rooms.visible_state(&room, &who.user_id, None).await?;
    let mut events = Vec::with_capacity(state.len());
    for pdu in state.values() {
        events.push(state_view(&s, &room, pdu, &who).await?);
    }
    Ok(Json(Value::Array(events)))
}

pub async fn state_for_key(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_state_event_for_key::v3::Request>,
) -> Result<Json<Value>> {
    let room = room_or_forbidden(&s, &req.room_id)?;
    let kind: StateEventType = req.event_type.to_string().into();
    let pdu = s
        .rooms
        .visible_state(&room, &who.user_id, None)
        .await?
        .get(&(kind, req.state_key.clone()))
        .cloned()
        .ok_or_else(|| Error::NotFound("Event not found".into()))?;
    let full = matches!(req.format, get_state_event_for_key::v3::StateEventFormat::Event);
    if full {
        Ok(Json(state_view(&s, &room, &pdu, &who).await?))
    } else {
        Ok(Json(serde_json::from_str(pdu.content.get()).unwrap_or_else(|_| json!({}))))
    }
}

pub async fn members(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_member_events::v3::Request>,
) -> Result<Json<Value>> {
    let room = room_or_forbidden(&s, &req.room_id)?;
    let at = req.at.as_deref().map(parse_token).transpose()?;
    let state = s.rooms.visible_state(&room, &who.user_id, at).await?;
    let membership = req.membership.as_ref().map(|m| m.as_str().to_owned());
    let not_membership = req.not_membership.as_ref().map(|m| m.as_str().to_owned());
    let mut chunk = Vec::new();
    for ((kind, _), pdu) in state.iter() {
        if *kind != StateEventType::RoomMember {
            continue;
        }
        let m: String = pdu
            .content_as::<Value>()
            .and_then(|c| c.get("membership").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        if membership.as_ref().is_none_or(|want| *want == m)
            && not_membership.as_ref().is_none_or(|not| *not != m)
        {
            chunk.push(state_view(&s, &room, pdu, &who).await?);
        }
    }
    Ok(Json(json!({"chunk": chunk})))
}

pub async fn joined_members(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<joined_members::v3::Request>,
) -> Result<Json<Value>> {
    let room = s.rooms.require_joined(&req.room_id, &who.user_id)?;
    let mut joined = serde_json::Map::new();
    for user in room.joined() {
        let content: Value = room
            .state_event(&StateEventType::RoomMember, user.as_str())
            .and_then(|p| p.content_as())
            .unwrap_or_else(|| json!({}));
        // The spec's `RoomMember`: absent (or null) fields are omitted, not null.
        let mut member = serde_json::Map::new();
        for (from, to) in [("displayname", "display_name"), ("avatar_url", "avatar_url")] {
            if let Some(v) = content.get(from).and_then(Value::as_str) {
                member.insert(to.to_owned(), json!(v));
            }
        }
        joined.insert(user.to_string(), Value::Object(member));
    }
    Ok(Json(json!({"joined": joined})))
}

pub async fn event(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_room_event::v3::Request>,
) -> Result<Json<Value>> {
    let room = room_or_forbidden(&s, &req.room_id)?;
    let access = s.rooms.readable(&room, &who.user_id).await?;
    let (record, pdu) = s
        .rooms
        .event(req.event_id.as_str())
        .await?
        .filter(|(r, p)| r.room_id == req.room_id.as_str() && access.can_see(r.pos, p))
        .ok_or_else(|| Error::NotFound("Event not found".into()))?;
    Ok(Json(bundled_view(&s, &room, &access, &record, &pdu, &who).await?))
}

pub(crate) fn room_or_forbidden(s: &Services, room_id: &RoomId) -> Result<Arc<Room>> {
    s.rooms.get(room_id).ok_or_else(|| Error::Forbidden("You are not in this room".into()))
}

/// An event as `who` sees it.
async fn client_view(
    s: &Services,
    room: &Room,
    record: &EventRecord,
    pdu: &Pdu,
    who: &Identity,
) -> Result<Value> {
    let viewer = Viewer { user: &who.user_id, device_id: who.device_id.as_str() };
    s.rooms.client_event(room, record, pdu, viewer, true).await
}

/// A timeline event as `who` sees it, with its bundled aggregations.
pub(crate) async fn bundled_view(
    s: &Services,
    room: &Room,
    access: &HistoryAccess,
    record: &EventRecord,
    pdu: &Pdu,
    who: &Identity,
) -> Result<Value> {
    let viewer = Viewer { user: &who.user_id, device_id: who.device_id.as_str() };
    s.rooms.client_event_bundled(room, access, record, pdu, viewer, true).await
}

/// A state event (from a state map) as `who` sees it.
async fn state_view(s: &Services, room: &Room, pdu: &Pdu, who: &Identity) -> Result<Value> {
    let viewer = Viewer { user: &who.user_id, device_id: who.device_id.as_str() };
    s.rooms.client_state_event(room, pdu, viewer, true).await
}

/// `GET /rooms/{roomId}/context/{eventId}`: the event, up to `limit` visible events around
/// it (the filter applies to those), and the state at the last event returned.
pub async fn context(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_context::v3::Request>,
) -> Result<Json<Value>> {
    let room = room_or_forbidden(&s, &req.room_id)?;
    let access = s.rooms.readable(&room, &who.user_id).await?;
    let (record, pdu) = s
        .rooms
        .event(req.event_id.as_str())
        .await?
        .filter(|(r, p)| r.room_id == room.id.as_str() && access.can_see(r.pos, p))
        .ok_or_else(|| Error::NotFound("Event not found".into()))?;
    let limit = usize::try_from(u64::from(req.limit)).unwrap_or(10).min(100);
    let before_n = limit / 2;
    let after_n = limit - before_n;
    let filter = Some(&req.filter);
    let before = s
        .rooms
        .scan(
            &room,
            &access,
            Direction::Backward { from: record.pos.saturating_sub(1), until: None },
            before_n,
            filter,
        )
        .await?;
    let after = s
        .rooms
        .scan(&room, &access, Direction::Forward { from: record.pos, until: None }, after_n, filter)
        .await?;
    let mut events_before = Vec::with_capacity(before.events.len());
    for e in &before.events {
        events_before.push(bundled_view(&s, &room, &access, &e.record, &e.pdu, &who).await?);
    }
    let mut events_after = Vec::with_capacity(after.events.len());
    for e in &after.events {
        events_after.push(bundled_view(&s, &room, &access, &e.record, &e.pdu, &who).await?);
    }
    let last_group = after.events.last().map_or(record.state_group, |e| e.record.state_group);
    let state_ids = s.rooms.state_ids_of_group(last_group).await?;
    let mut state = Vec::with_capacity(state_ids.len());
    for id in state_ids.values() {
        if let Some((r, p)) = s.rooms.event(id).await? {
            state.push(client_view(&s, &room, &r, &p, &who).await?);
        }
    }
    Ok(Json(json!({
        "event": bundled_view(&s, &room, &access, &record, &pdu, &who).await?,
        "events_before": events_before,
        "events_after": events_after,
        "start": token(before.cursor),
        "end": token(after.cursor),
        "state": state,
    })))
}

/// `GET /rooms/{roomId}/timestamp_to_event`: the event closest to `ts` in direction `dir`
/// that the user may see (`Rooms::event_near`).
pub async fn timestamp_to_event(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_event_by_timestamp::v1::Request>,
) -> Result<RumaResponse<get_event_by_timestamp::v1::Response>> {
    let room = room_or_forbidden(&s, &req.room_id)?;
    let access = s.rooms.readable(&room, &who.user_id).await?;
    let backwards = req.dir == ruma::api::Direction::Backward;
    let pdu = s
        .rooms
        .event_near(&room, &access, req.ts.get().into(), backwards)
        .await?
        .ok_or_else(|| Error::NotFound("No event found in that direction".into()))?;
    Ok(RumaResponse(get_event_by_timestamp::v1::Response::new(pdu.event_id, pdu.origin_server_ts)))
}

/// `GET /rooms/{roomId}/messages`: a page of the events the user may see, newest or
/// oldest first. A page examines a bounded number of events (see `rooms::history`); `end`
/// comes whenever the page holds events or the scan stopped before the end of the history.
pub async fn messages(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_message_events::v3::Request>,
) -> Result<Json<Value>> {
    let room = room_or_forbidden(&s, &req.room_id)?;
    let access = s.rooms.readable(&room, &who.user_id).await?;
    let limit = usize::try_from(u64::from(req.limit)).unwrap_or(10).clamp(1, 1000);
    let backwards = req.dir == ruma::api::Direction::Backward;
    let from = match &req.from {
        Some(t) => parse_token(t)?,
        None if backwards => room.last_pos(),
        None => 0,
    };
    let to = req.to.as_deref().map(parse_token).transpose()?;
    let direction = if backwards {
        Direction::Backward { from, until: to }
    } else {
        Direction::Forward { from, until: to }
    };
    let page = s.rooms.scan(&room, &access, direction, limit, Some(&req.filter)).await?;
    let mut chunk = Vec::with_capacity(page.events.len());
    for e in &page.events {
        chunk.push(bundled_view(&s, &room, &access, &e.record, &e.pdu, &who).await?);
    }
    let mut body = json!({"chunk": chunk, "start": token(from)});
    if !page.events.is_empty() || !page.exhausted {
        body["end"] = json!(token(page.cursor));
    }
    // With lazy-loaded members, the chunk's senders' member events come along, so clients
    // can show names without loading the whole member list.
    if !req.filter.lazy_load_options.is_disabled()
        && let Some(newest) = page.events.iter().map(|e| e.pos).max()
    {
        // As of the page's newest event: a former member sees no later member events.
        let state = s.rooms.state_ids_at(&room, newest).await?;
        let senders: std::collections::BTreeSet<&ruma::UserId> =
            page.events.iter().map(|e| e.pdu.sender.as_ref()).collect();
        let mut members = Vec::with_capacity(senders.len());
        for sender in senders {
            if let Some(id) = state.get(&(StateEventType::RoomMember, sender.to_string()))
                && let Some((r, p)) = s.rooms.event(id).await?
            {
                members.push(client_view(&s, &room, &r, &p, &who).await?);
            }
        }
        body["state"] = json!(members);
    }
    Ok(Json(body))
}
