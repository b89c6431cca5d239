//! `/relations` (spec v1.3, with MSC3981's `recurse`) and `/threads` (v1.4). The rules and
//! the index are `rooms::relations`'s; handlers parse, call and render.

use axum::Json;
use axum::extract::State;
use ruma::api::Direction as Dir;
use ruma::api::client::relations::{
    get_relating_events, get_relating_events_with_rel_type,
    get_relating_events_with_rel_type_and_event_type,
};
use ruma::api::client::threads::get_threads;
use ruma::{OwnedEventId, OwnedRoomId, UInt};
use serde_json::{Value, json};

use crate::api::rooms::{bundled_view, parse_token, room_or_forbidden, token};
use crate::error::Result;
use crate::http::auth::Authed;
use crate::http::ruma::{AppState, Ruma};
use crate::rooms::relations::MAX_RECURSION;
use crate::services::Services;
use crate::services::accounts::Identity;

/// Default and largest page of `/relations` and `/threads` (Synapse's defaults).
const DEFAULT_RELATIONS: usize = 5;
const DEFAULT_THREADS: usize = 5;
const MAX_PAGE: usize = 100;

struct Query {
    room_id: OwnedRoomId,
    event_id: OwnedEventId,
    rel_type: Option<String>,
    event_type: Option<String>,
    from: Option<String>,
    to: Option<String>,
    dir: Dir,
    limit: Option<UInt>,
    recurse: bool,
}

fn page_size(limit: Option<UInt>, default: usize) -> usize {
    limit.map_or(default, |l| usize::try_from(u64::from(l)).unwrap_or(MAX_PAGE)).clamp(1, MAX_PAGE)
}

async fn relations(s: &Services, who: &Identity, q: Query) -> Result<Json<Value>> {
    let room = room_or_forbidden(s, &q.room_id)?;
    let access = s.rooms.readable(&room, &who.user_id).await?;
    let from = q.from.as_deref().map(parse_token).transpose()?;
    let to = q.to.as_deref().map(parse_token).transpose()?;
    let backwards = q.dir == Dir::Backward;
    let page = s
        .rooms
        .relations(
            &room,
            &access,
            &q.event_id,
            q.rel_type.as_deref(),
            q.event_type.as_deref(),
            (from, to),
            backwards,
            page_size(q.limit, DEFAULT_RELATIONS),
            q.recurse,
        )
        .await?;
    let mut chunk = Vec::with_capacity(page.events.len());
    for e in &page.events {
        chunk.push(bundled_view(s, &room, &access, &e.record, &e.pdu, who).await?);
    }
    let mut body = json!({"chunk": chunk});
    if let Some(next) = page.next {
        body["next_batch"] = json!(token(next));
    }
    if q.recurse {
        body["recursion_depth"] = json!(MAX_RECURSION);
    }
    Ok(Json(body))
}

pub async fn relating(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_relating_events::v1::Request>,
) -> Result<Json<Value>> {
    let q = Query {
        room_id: req.room_id,
        event_id: req.event_id,
        rel_type: None,
        event_type: None,
        from: req.from,
        to: req.to,
        dir: req.dir,
        limit: req.limit,
        recurse: req.recurse,
    };
    relations(&s, &who, q).await
}

pub async fn relating_with_rel_type(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> Result<Json<Value>> {
    let q = Query {
        room_id: req.room_id,
        event_id: req.event_id,
        rel_type: Some(req.rel_type.to_string()),
        event_type: None,
        from: req.from,
        to: req.to,
        dir: req.dir,
        limit: req.limit,
        recurse: req.recurse,
    };
    relations(&s, &who, q).await
}

pub async fn relating_with_rel_type_and_event_type(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> Result<Json<Value>> {
    let q = Query {
        room_id: req.room_id,
        event_id: req.event_id,
        rel_type: Some(req.rel_type.to_string()),
        event_type: Some(req.event_type.to_string()),
        from: req.from,
        to: req.to,
        dir: req.dir,
        limit: req.limit,
        recurse: req.recurse,
    };
    relations(&s, &who, q).await
}

/// `GET /rooms/{roomId}/threads`: thread roots by latest activity, each with its bundle.
pub async fn threads(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_threads::v1::Request>,
) -> Result<Json<Value>> {
    let room = room_or_forbidden(&s, &req.room_id)?;
    let access = s.rooms.readable(&room, &who.user_id).await?;
    let from = req.from.as_deref().map(parse_token).transpose()?;
    let participated = req.include == get_threads::v1::IncludeThreads::Participated;
    let page = s
        .rooms
        .threads(
            &room,
            &access,
            who.user_id.as_str(),
            participated,
            from,
            page_size(req.limit, DEFAULT_THREADS),
        )
        .await?;
    let mut chunk = Vec::with_capacity(page.roots.len());
    for e in &page.roots {
        chunk.push(bundled_view(&s, &room, &access, &e.record, &e.pdu, &who).await?);
    }
    let mut body = json!({"chunk": chunk});
    if let Some(next) = page.next {
        body["next_batch"] = json!(token(next));
    }
    Ok(Json(body))
}
