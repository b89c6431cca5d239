//! The admin API, in the shapes of Synapse's (`/_synapse/admin/…`), so that its tooling
//! (synadm, synapse-admin, scripts) works against Axon: server version, query a user,
//! deactivate a user, grant or revoke admin rights, registration tokens.
//!
//! Every endpoint needs a server admin's access token ([`ServerAdmin`]: 401 without a
//! token, 403 `M_FORBIDDEN` for other users). The work is done by the same services as the
//! CLI's commands (`crate::admin`).

use axum::Json;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::routing::{get, post};
use ruma::{OwnedUserId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};
use url::form_urlencoded;

use crate::error::{Error, Result};
use crate::http::auth::ServerAdmin;
use crate::http::ruma::{AppState, JsonBody, PathArgs};
use crate::storage::{RegistrationTokenRecord, now_ms};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/_synapse/admin/v1/server_version", get(server_version))
        .route("/_synapse/admin/v2/users/{user_id}", get(query_user))
        .route("/_synapse/admin/v1/deactivate/{user_id}", post(deactivate))
        .route("/_synapse/admin/v1/users/{user_id}/admin", get(get_admin).put(set_admin))
        .route("/_synapse/admin/v1/registration_tokens", get(list_tokens))
        .route("/_synapse/admin/v1/registration_tokens/new", post(create_token))
        .route(
            "/_synapse/admin/v1/registration_tokens/{token}",
            get(get_token).delete(delete_token),
        )
        .merge(crate::api::media::admin_routes())
        .merge(crate::api::moderation::admin_routes())
}

/// The single path argument: a user ID, or a registration token.
fn path_arg(args: Vec<String>) -> Result<String> {
    args.into_iter().next().ok_or_else(|| Error::MissingParam("Missing path parameter".into()))
}

fn user_id_arg(args: Vec<String>) -> Result<OwnedUserId> {
    UserId::parse(path_arg(args)?).map_err(|e| Error::InvalidParam(format!("Invalid user ID: {e}")))
}

/// `GET /_synapse/admin/v1/server_version`.
pub async fn server_version(_: ServerAdmin) -> Json<Value> {
    Json(json!({"server_version": env!("CARGO_PKG_VERSION")}))
}

/// `GET /_synapse/admin/v2/users/{userId}`: the account, with the fields Synapse reports
/// (those Axon has no notion of at their neutral values).
pub async fn query_user(
    State(s): State<AppState>,
    _: ServerAdmin,
    PathArgs(args): PathArgs,
) -> Result<Json<Value>> {
    let user_id = user_id_arg(args)?;
    let user = s.accounts.local_user(&user_id).await?;
    Ok(Json(json!({
        "name": user_id,
        "displayname": user.displayname,
        "avatar_url": user.avatar_url,
        "threepids": [],
        "external_ids": [],
        "is_guest": user.guest,
        "admin": user.admin,
        "deactivated": user.deactivated,
        "erased": false,
        "shadow_banned": false,
        "locked": false,
        "suspended": false,
        "creation_ts": user.created_ts,
        "appservice_id": null,
        "user_type": null,
        "consent_server_notice_sent": null,
        "consent_version": null,
        "consent_ts": null,
    })))
}

#[derive(Deserialize)]
pub struct DeactivateBody {
    #[serde(default)]
    erase: bool,
}

/// `POST /_synapse/admin/v1/deactivate/{userId}`: as `/account/deactivate`, without the
/// user's password; `erase` also clears the profile.
pub async fn deactivate(
    State(s): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    PathArgs(args): PathArgs,
    JsonBody(body): JsonBody<DeactivateBody>,
) -> Result<Json<Value>> {
    let user_id = user_id_arg(args)?;
    s.accounts.deactivate_by_admin(admin.user_id.as_str(), &user_id).await?;
    s.after_deactivation(&user_id, body.erase).await?;
    // No third-party identifiers exist to unbind, so unbinding them all succeeded.
    Ok(Json(json!({"id_server_unbind_result": "success"})))
}

/// `GET /_synapse/admin/v1/users/{userId}/admin`.
pub async fn get_admin(
    State(s): State<AppState>,
    _: ServerAdmin,
    PathArgs(args): PathArgs,
) -> Result<Json<Value>> {
    let user = s.accounts.local_user(&user_id_arg(args)?).await?;
    Ok(Json(json!({"admin": user.admin})))
}

#[derive(Deserialize)]
pub struct SetAdminBody {
    admin: Option<bool>,
}

/// `PUT /_synapse/admin/v1/users/{userId}/admin` with `{"admin": bool}`.
pub async fn set_admin(
    State(s): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    PathArgs(args): PathArgs,
    JsonBody(body): JsonBody<SetAdminBody>,
) -> Result<Json<Value>> {
    let user_id = user_id_arg(args)?;
    let grant = body.admin.ok_or_else(|| Error::MissingParam("Missing param: admin".into()))?;
    s.accounts.set_admin(&admin, &user_id, grant).await?;
    Ok(Json(json!({})))
}

/// A registration token as Synapse's admin API shows it. Uses are counted when a
/// registration completes, so none is ever pending.
fn token_json(t: &RegistrationTokenRecord) -> Value {
    json!({
        "token": t.token,
        "uses_allowed": t.uses_allowed,
        "pending": 0,
        "completed": t.completed,
        "expiry_time": t.expiry_ts,
    })
}

/// `GET /_synapse/admin/v1/registration_tokens[?valid=true|false]`.
pub async fn list_tokens(
    State(s): State<AppState>,
    _: ServerAdmin,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>> {
    let valid = match form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "valid")
    {
        None => None,
        Some((_, v)) if v == "true" => Some(true),
        Some((_, v)) if v == "false" => Some(false),
        Some(_) => return Err(Error::InvalidParam("valid must be true or false".into())),
    };
    let now = now_ms();
    let tokens: Vec<Value> = s
        .accounts
        .registration_tokens()
        .await?
        .iter()
        .filter(|t| valid.is_none_or(|valid| t.is_usable(now) == valid))
        .map(token_json)
        .collect();
    Ok(Json(json!({"registration_tokens": tokens})))
}

#[derive(Deserialize)]
pub struct NewTokenBody {
    token: Option<String>,
    length: Option<usize>,
    uses_allowed: Option<u32>,
    expiry_time: Option<u64>,
}

/// `POST /_synapse/admin/v1/registration_tokens/new`.
pub async fn create_token(
    State(s): State<AppState>,
    _: ServerAdmin,
    JsonBody(body): JsonBody<NewTokenBody>,
) -> Result<Json<Value>> {
    let record = s
        .accounts
        .create_registration_token(body.token, body.length, body.uses_allowed, body.expiry_time)
        .await?;
    Ok(Json(token_json(&record)))
}

/// `GET /_synapse/admin/v1/registration_tokens/{token}`.
pub async fn get_token(
    State(s): State<AppState>,
    _: ServerAdmin,
    PathArgs(args): PathArgs,
) -> Result<Json<Value>> {
    let record = s.accounts.registration_token(&path_arg(args)?).await?;
    Ok(Json(token_json(&record)))
}

/// `DELETE /_synapse/admin/v1/registration_tokens/{token}`.
pub async fn delete_token(
    State(s): State<AppState>,
    _: ServerAdmin,
    PathArgs(args): PathArgs,
) -> Result<Json<Value>> {
    s.accounts.delete_registration_token(&path_arg(args)?).await?;
    Ok(Json(json!({})))
}
