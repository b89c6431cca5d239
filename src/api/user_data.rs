//! Filters, account data and profiles.

use axum::Json;
use axum::extract::State;
use ruma::api::client::config::{
    get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data,
};
use ruma::api::client::filter::{create_filter, get_filter};
use ruma::{OwnedUserId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::http::auth::Authed;
use crate::http::ruma::{AppState, JsonBody, PathArgs, Ruma, RumaResponse};
use crate::services::accounts::Identity;

pub(crate) fn require_self(who: &Identity, user: &UserId, what: &str) -> Result<()> {
    if *user != who.user_id {
        return Err(Error::Forbidden(format!("Cannot access another user's {what}")));
    }
    Ok(())
}

fn raw<T>(raw: &ruma::serde::Raw<T>) -> Result<Value> {
    serde_json::from_str(raw.json().get()).map_err(|e| Error::BadJson(e.to_string()))
}

fn to_raw<T>(value: &Value) -> Result<ruma::serde::Raw<T>> {
    serde_json::value::to_raw_value(value)
        .map(ruma::serde::Raw::from_json)
        .map_err(|e| Error::Internal(e.to_string()))
}

pub async fn create_filter(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<create_filter::v3::Request>,
) -> Result<RumaResponse<create_filter::v3::Response>> {
    require_self(&who, &req.user_id, "filters")?;
    let definition =
        serde_json::to_value(&req.filter).map_err(|e| Error::BadJson(e.to_string()))?;
    let id = s.user_data.create_filter(&who.user_id, &definition).await?;
    Ok(RumaResponse(create_filter::v3::Response::new(id)))
}

pub async fn get_filter(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_filter::v3::Request>,
) -> Result<Json<Value>> {
    require_self(&who, &req.user_id, "filters")?;
    let filter = s
        .user_data
        .filter(&who.user_id, &req.filter_id)
        .await?
        .ok_or_else(|| Error::NotFound("No such filter".into()))?;
    Ok(Json(filter))
}

/// The spec's server-managed types may not be set through `/account_data` (405): push
/// rules change through `/pushrules`.
fn refuse_server_managed(kind: &str) -> Result<()> {
    if kind == crate::services::push::PUSH_RULES {
        return Err(Error::Unrecognized { method_not_allowed: true });
    }
    Ok(())
}

pub async fn set_global_account_data(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<set_global_account_data::v3::Request>,
) -> Result<RumaResponse<set_global_account_data::v3::Response>> {
    require_self(&who, &req.user_id, "account data")?;
    refuse_server_managed(&req.event_type.to_string())?;
    let content = raw(&req.data)?;
    let kind = req.event_type.to_string();
    let ignore_list = kind == crate::rooms::ignore::IGNORED_USER_LIST;
    if ignore_list {
        crate::rooms::ignore::check_ignored_content(&who.user_id, &content)?;
    }
    // The ignore-list cache is updated under the account-data lock: two concurrent writes
    // leave the cache with the list written last.
    let rooms = &s.rooms;
    s.user_data
        .set_account_data_then(&who.user_id, None, &kind, content, |content| {
            if ignore_list {
                rooms.set_ignored(&who.user_id, content);
            }
        })
        .await?;
    Ok(RumaResponse(set_global_account_data::v3::Response::new()))
}

pub async fn get_global_account_data(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_global_account_data::v3::Request>,
) -> Result<RumaResponse<get_global_account_data::v3::Response>> {
    require_self(&who, &req.user_id, "account data")?;
    let content = s
        .user_data
        .account_data(&who.user_id, None, &req.event_type.to_string())
        .await?
        .ok_or_else(|| Error::NotFound("Account data not found".into()))?;
    Ok(RumaResponse(get_global_account_data::v3::Response::new(to_raw(&content)?)))
}

pub async fn set_room_account_data(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<set_room_account_data::v3::Request>,
) -> Result<RumaResponse<set_room_account_data::v3::Response>> {
    require_self(&who, &req.user_id, "account data")?;
    // Only rooms the user has (or had) a membership in: the per-room caps then bound a
    // user's account data by the rooms they joined, which the event rate limit paces.
    let room = s.rooms.get(&req.room_id).ok_or_else(|| Error::NotFound("Unknown room".into()))?;
    if room.membership_of(&who.user_id).is_none() {
        return Err(Error::Forbidden("You have never been in this room".into()));
    }
    refuse_server_managed(&req.event_type.to_string())?;
    let content = raw(&req.data)?;
    s.user_data
        .set_account_data(&who.user_id, Some(&req.room_id), &req.event_type.to_string(), content)
        .await?;
    Ok(RumaResponse(set_room_account_data::v3::Response::new()))
}

pub async fn get_room_account_data(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_room_account_data::v3::Request>,
) -> Result<RumaResponse<get_room_account_data::v3::Response>> {
    require_self(&who, &req.user_id, "account data")?;
    let content = s
        .user_data
        .account_data(&who.user_id, Some(&req.room_id), &req.event_type.to_string())
        .await?
        .ok_or_else(|| Error::NotFound("Account data not found".into()))?;
    Ok(RumaResponse(get_room_account_data::v3::Response::new(to_raw(&content)?)))
}

fn user_arg(args: &[String]) -> Result<OwnedUserId> {
    let raw = args.first().ok_or_else(|| Error::InvalidParam("Missing user ID".into()))?;
    UserId::parse(raw.as_str()).map_err(|e| Error::InvalidParam(format!("Invalid user ID: {e}")))
}

/// `GET /profile/{userId}`.
pub async fn get_profile(
    State(s): State<AppState>,
    PathArgs(args): PathArgs,
) -> Result<Json<Value>> {
    let user = user_arg(&args)?;
    let p = s
        .rooms
        .profile_of(&user)
        .await?
        .ok_or_else(|| Error::NotFound("Profile not found".into()))?;
    let mut body = json!({});
    if let Some(d) = p.displayname {
        body["displayname"] = json!(d);
    }
    if let Some(a) = p.avatar_url {
        body["avatar_url"] = json!(a);
    }
    Ok(Json(body))
}

/// `GET /profile/{userId}/{field}` for `displayname` and `avatar_url`.
pub async fn get_profile_field(
    State(s): State<AppState>,
    PathArgs(args): PathArgs,
) -> Result<Json<Value>> {
    let user = user_arg(&args)?;
    let field = args.get(1).map(String::as_str).unwrap_or_default();
    let p = s
        .rooms
        .profile_of(&user)
        .await?
        .ok_or_else(|| Error::NotFound("Profile not found".into()))?;
    let value = match field {
        "displayname" => p.displayname,
        "avatar_url" => p.avatar_url,
        _ => return Err(Error::NotFound("Unknown profile field".into())),
    };
    let value = value.ok_or_else(|| Error::NotFound("Profile field not set".into()))?;
    Ok(Json(json!({ field: value })))
}

#[derive(Deserialize)]
pub struct ProfileFieldBody {
    displayname: Option<String>,
    avatar_url: Option<String>,
}

/// `PUT /profile/{userId}/{field}` for `displayname` and `avatar_url`.
pub async fn set_profile_field(
    State(s): State<AppState>,
    Authed(who): Authed,
    PathArgs(args): PathArgs,
    JsonBody(body): JsonBody<ProfileFieldBody>,
) -> Result<Json<Value>> {
    let user = user_arg(&args)?;
    require_self(&who, &user, "profile")?;
    match args.get(1).map(String::as_str).unwrap_or_default() {
        "displayname" => s.rooms.set_profile(&who.user_id, Some(body.displayname), None).await?,
        "avatar_url" => s.rooms.set_profile(&who.user_id, None, Some(body.avatar_url)).await?,
        _ => return Err(Error::BadJson("Only displayname and avatar_url can be set".into())),
    }
    Ok(Json(json!({})))
}
