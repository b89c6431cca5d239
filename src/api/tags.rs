//! Room tags (`/user/{userId}/rooms/{roomId}/tags`): the room account data `m.tag`, so
//! `/sync` delivers them in the room's `account_data` like any other.

use axum::extract::State;
use ruma::api::client::tag::{create_tag, delete_tag, get_tags};
use ruma::events::tag::Tags;
use ruma::{RoomId, UserId};
use serde_json::{Value, json};

use crate::api::user_data::require_self;
use crate::error::{Error, Result};
use crate::http::auth::Authed;
use crate::http::ruma::{AppState, Ruma, RumaResponse};
use crate::services::Services;

/// The room account-data type holding the tags.
const TAGS: &str = "m.tag";
/// Longest tag name, in bytes (as Synapse).
const MAX_TAG_BYTES: usize = 255;

/// Tags may be set only in rooms the user has (or had) a membership in, as other room
/// account data.
fn require_known_room(s: &Services, user: &UserId, room_id: &RoomId) -> Result<()> {
    let room = s.rooms.get(room_id).ok_or_else(|| Error::NotFound("Unknown room".into()))?;
    if room.membership_of(user).is_none() {
        return Err(Error::Forbidden("You have never been in this room".into()));
    }
    Ok(())
}

fn tags_of(content: Option<Value>) -> serde_json::Map<String, Value> {
    content.and_then(|c| c.get("tags").and_then(Value::as_object).cloned()).unwrap_or_default()
}

pub async fn get(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_tags::v3::Request>,
) -> Result<RumaResponse<get_tags::v3::Response>> {
    require_self(&who, &req.user_id, "tags")?;
    let content = s.user_data.account_data(&who.user_id, Some(&req.room_id), TAGS).await?;
    let tags: Tags = serde_json::from_value(Value::Object(tags_of(content))).unwrap_or_default();
    Ok(RumaResponse(get_tags::v3::Response::new(tags)))
}

pub async fn put(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<create_tag::v3::Request>,
) -> Result<RumaResponse<create_tag::v3::Response>> {
    require_self(&who, &req.user_id, "tags")?;
    if req.tag.is_empty() || req.tag.len() > MAX_TAG_BYTES {
        return Err(Error::InvalidParam(format!("A tag name has 1 to {MAX_TAG_BYTES} bytes")));
    }
    let order = match req.tag_info.order {
        Some(order) if !order.is_finite() => {
            return Err(Error::InvalidParam("order must be a number".into()));
        }
        Some(order) => json!({"order": order}),
        None => json!({}),
    };
    require_known_room(&s, &who.user_id, &req.room_id)?;
    let tag = req.tag;
    s.user_data
        .update_account_data(&who.user_id, Some(&req.room_id), TAGS, move |current| {
            let mut tags = tags_of(current);
            tags.insert(tag, order);
            Ok(json!({"tags": tags}))
        })
        .await?;
    Ok(RumaResponse(create_tag::v3::Response::new()))
}

pub async fn delete(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<delete_tag::v3::Request>,
) -> Result<RumaResponse<delete_tag::v3::Response>> {
    require_self(&who, &req.user_id, "tags")?;
    require_known_room(&s, &who.user_id, &req.room_id)?;
    let tag = req.tag;
    // Deleting a tag that is not there succeeds (as Synapse).
    s.user_data
        .update_account_data(&who.user_id, Some(&req.room_id), TAGS, move |current| {
            let mut tags = tags_of(current);
            tags.remove(&tag);
            Ok(json!({"tags": tags}))
        })
        .await?;
    Ok(RumaResponse(delete_tag::v3::Response::new()))
}

/// Part of joining a room that replaced `predecessor` (`api::upgrade::carry_over`): the
/// user's tags there come along, unless they already tagged the new room.
pub async fn carry_over(
    s: &Services,
    user: &UserId,
    predecessor: &RoomId,
    room_id: &RoomId,
) -> Result<()> {
    let Some(tags) = s.user_data.account_data(user, Some(predecessor), TAGS).await? else {
        return Ok(());
    };
    // Tagged already (a second join, or by the user): no write.
    if !tags_of(s.user_data.account_data(user, Some(room_id), TAGS).await?).is_empty() {
        return Ok(());
    }
    s.user_data
        .update_account_data(user, Some(room_id), TAGS, move |current| {
            Ok(current.filter(|c| !tags_of(Some(c.clone())).is_empty()).unwrap_or(tags))
        })
        .await
}
