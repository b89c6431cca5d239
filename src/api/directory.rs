//! Room aliases and the public room directory.

use axum::Json;
use axum::extract::State;
use ruma::api::client::alias::{create_alias, delete_alias, get_alias};
use ruma::api::client::directory::{
    get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility,
};
use ruma::api::client::room::{Visibility, aliases};
use ruma::{OwnedRoomAliasId, OwnedServerName, RoomId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::http::auth::Authed;
use crate::http::ruma::{AppState, JsonBody, PathArgs, Ruma, RumaResponse};
use crate::services::Services;

pub async fn get_alias(
    State(s): State<AppState>,
    Ruma(req): Ruma<get_alias::v3::Request>,
) -> Result<RumaResponse<get_alias::v3::Response>> {
    let room_id = s.rooms.resolve_alias(&req.room_alias).await?;
    let server: OwnedServerName = req.room_alias.server_name().to_owned();
    Ok(RumaResponse(get_alias::v3::Response::new(room_id, vec![server])))
}

pub async fn create_alias(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<create_alias::v3::Request>,
) -> Result<RumaResponse<create_alias::v3::Response>> {
    s.rooms.create_alias(&req.room_alias, &req.room_id, &who.user_id).await?;
    Ok(RumaResponse(create_alias::v3::Response::new()))
}

pub async fn delete_alias(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<delete_alias::v3::Request>,
) -> Result<RumaResponse<delete_alias::v3::Response>> {
    s.rooms.delete_alias(&req.room_alias, &who.user_id).await?;
    Ok(RumaResponse(delete_alias::v3::Response::new()))
}

pub async fn room_aliases(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<aliases::v3::Request>,
) -> Result<RumaResponse<aliases::v3::Response>> {
    s.rooms.require_joined(&req.room_id, &who.user_id)?;
    let aliases: Vec<OwnedRoomAliasId> = s
        .rooms
        .store()
        .room_aliases(req.room_id.as_str())
        .await?
        .into_iter()
        .filter_map(|a| a.try_into().ok())
        .collect();
    Ok(RumaResponse(aliases::v3::Response::new(aliases)))
}

pub async fn get_visibility(
    State(s): State<AppState>,
    Ruma(req): Ruma<get_room_visibility::v3::Request>,
) -> Result<RumaResponse<get_room_visibility::v3::Response>> {
    if s.rooms.get(&req.room_id).is_none() {
        return Err(Error::NotFound("Unknown room".into()));
    }
    let visibility = if s.rooms.is_published(&req.room_id).await? {
        Visibility::Public
    } else {
        Visibility::Private
    };
    Ok(RumaResponse(get_room_visibility::v3::Response::new(visibility)))
}

/// The body of `PUT /directory/list/room/{roomId}`. ruma's request type requires
/// `visibility`, but the spec makes it optional, defaulting to public, hence our own type.
#[derive(Deserialize)]
pub struct VisibilityBody {
    #[serde(default = "public")]
    visibility: Visibility,
}

fn public() -> Visibility {
    Visibility::Public
}

pub async fn set_visibility(
    State(s): State<AppState>,
    Authed(who): Authed,
    PathArgs(args): PathArgs,
    JsonBody(body): JsonBody<VisibilityBody>,
) -> Result<RumaResponse<set_room_visibility::v3::Response>> {
    let room_id = args.first().map(String::as_str).unwrap_or_default();
    let room_id =
        RoomId::parse(room_id).map_err(|e| Error::InvalidParam(format!("Invalid room ID: {e}")))?;
    let published = match body.visibility {
        Visibility::Public => true,
        Visibility::Private => false,
        other => {
            return Err(Error::InvalidParam(format!(
                "Unknown visibility {:?}: expected \"public\" or \"private\"",
                other.as_str()
            )));
        }
    };
    s.rooms.set_published(&room_id, &who.user_id, published).await?;
    Ok(RumaResponse(set_room_visibility::v3::Response::new()))
}

/// The most rooms one page of the public room directory lists.
const MAX_PUBLIC_ROOMS_PAGE: usize = 500;

/// One page of the directory; `since` is an offset token `o<n>`.
async fn page(
    s: &Services,
    search: Option<&str>,
    limit: Option<u64>,
    since: Option<&str>,
    server: Option<&ruma::ServerName>,
) -> Result<Json<Value>> {
    if server.is_some_and(|srv| srv != s.config.server_name.as_str()) {
        return Err(Error::Unknown("Only this server's directory is available".into()));
    }
    let offset = match since {
        Some(t) => t
            .strip_prefix('o')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| Error::InvalidParam("Invalid since token".into()))?,
        None => 0,
    };
    // A page is at most MAX_PUBLIC_ROOMS_PAGE rooms, whatever the client asks (and when it
    // asks for no limit): `next_batch` leads on.
    let limit = limit
        .map_or(MAX_PUBLIC_ROOMS_PAGE, |l| usize::try_from(l).unwrap_or(usize::MAX))
        .clamp(1, MAX_PUBLIC_ROOMS_PAGE);
    let (chunk, total) = s.rooms.public_rooms(search, offset, limit).await?;
    let mut body = json!({"chunk": chunk, "total_room_count_estimate": total});
    if offset.saturating_add(limit) < total {
        body["next_batch"] = json!(format!("o{}", offset + limit));
    }
    if offset > 0 {
        body["prev_batch"] = json!(format!("o{}", offset.saturating_sub(limit)));
    }
    Ok(Json(body))
}

pub async fn public_rooms(
    State(s): State<AppState>,
    Ruma(req): Ruma<get_public_rooms::v3::Request>,
) -> Result<Json<Value>> {
    page(&s, None, req.limit.map(u64::from), req.since.as_deref(), req.server.as_deref()).await
}

pub async fn public_rooms_filtered(
    State(s): State<AppState>,
    Authed(_): Authed,
    Ruma(req): Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<Json<Value>> {
    page(
        &s,
        req.filter.generic_search_term.as_deref(),
        req.limit.map(u64::from),
        req.since.as_deref(),
        req.server.as_deref(),
    )
    .await
}
