//! Reports (`/rooms/{roomId}/report[/{eventId}]`, and the admin API's
//! `/_synapse/admin/v1/event_reports`), OpenID tokens (`/user/{userId}/openid/request_token`
//! and the federation API's `/openid/userinfo`, which a widget server asks).

use axum::Json;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::routing::get;
use ruma::api::client::account::request_openid_token;
use ruma::{EventId, RoomId};
use serde::Deserialize;
use serde_json::{Value, json};
use url::form_urlencoded;

use crate::api::user_data::require_self;
use crate::error::{Error, Result};
use crate::http::auth::{Authed, ServerAdmin};
use crate::http::ruma::{AppState, JsonBody, PathArgs, Ruma};
use crate::services::moderation::OPENID_TOKEN_SECS;
use crate::storage::moderation::{ReportQuery, ReportRecord};

#[derive(Deserialize)]
pub struct EventReportBody {
    reason: Option<String>,
    score: Option<i64>,
}

fn room_arg(args: &[String]) -> Result<&RoomId> {
    let raw = args.first().ok_or_else(|| Error::MissingParam("Missing room ID".into()))?;
    <&RoomId>::try_from(raw.as_str())
        .map_err(|e| Error::InvalidParam(format!("Invalid room ID: {e}")))
}

/// `POST /rooms/{roomId}/report/{eventId}`.
pub async fn report_event(
    State(s): State<AppState>,
    Authed(who): Authed,
    PathArgs(args): PathArgs,
    JsonBody(body): JsonBody<EventReportBody>,
) -> Result<Json<Value>> {
    let room_id = room_arg(&args)?;
    let raw = args.get(1).ok_or_else(|| Error::MissingParam("Missing event ID".into()))?;
    let event_id = <&EventId>::try_from(raw.as_str())
        .map_err(|e| Error::InvalidParam(format!("Invalid event ID: {e}")))?;
    s.report_event(&who.user_id, room_id, event_id, body.reason, body.score).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub struct RoomReportBody {
    reason: String,
}

/// `POST /rooms/{roomId}/report` (spec v1.13).
pub async fn report_room(
    State(s): State<AppState>,
    Authed(who): Authed,
    PathArgs(args): PathArgs,
    JsonBody(body): JsonBody<RoomReportBody>,
) -> Result<Json<Value>> {
    let room_id = room_arg(&args)?;
    s.report_room(&who.user_id, room_id, body.reason).await?;
    Ok(Json(json!({})))
}

/// `POST /user/{userId}/openid/request_token`: only for oneself.
pub async fn request_openid_token(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<request_openid_token::v3::Request>,
) -> Result<Json<Value>> {
    require_self(&who, &req.user_id, "OpenID tokens")?;
    let token = s.openid_token(&who.user_id).await?;
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "matrix_server_name": s.config.server_name,
        "expires_in": OPENID_TOKEN_SECS,
    })))
}

/// `GET /_matrix/federation/v1/openid/userinfo?access_token=…`: whose the token is
/// (`{"sub": user ID}`), or 401 `M_UNKNOWN_TOKEN`.
pub async fn openid_userinfo(
    State(s): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>> {
    let token = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
        // The spec answers a missing token as an unknown one (401 `M_UNKNOWN_TOKEN`).
        .ok_or(Error::UnknownToken { soft_logout: false })?;
    let user = s.openid_user(&token).await?;
    Ok(Json(json!({"sub": user})))
}

/// The admin API's report endpoints.
pub fn admin_routes() -> Router<AppState> {
    Router::new()
        .route("/_synapse/admin/v1/event_reports", get(list_event_reports))
        .route(
            "/_synapse/admin/v1/event_reports/{report_id}",
            get(event_report).delete(delete_event_report),
        )
        .route("/_synapse/admin/v1/room_reports", get(list_room_reports))
}

/// A report as Synapse's admin API lists it (with the room's name and canonical alias).
fn report_json(s: &crate::services::Services, r: &ReportRecord) -> Value {
    let room = RoomId::parse(&r.room_id).ok().and_then(|id| s.rooms.get(&id));
    let entry = room.map(|room| room.directory_entry()).unwrap_or_default();
    let mut out = json!({
        "id": r.id,
        "received_ts": r.received_ts,
        "room_id": r.room_id,
        "name": entry.get("name"),
        "canonical_alias": entry.get("canonical_alias"),
        "user_id": r.user_id,
        "reason": r.reason,
    });
    if let Some(event_id) = &r.event_id {
        out["event_id"] = json!(event_id);
        out["sender"] = json!(r.sender);
        out["score"] = json!(r.score);
    }
    out
}

/// Synapse's listing parameters: `from` (an offset), `limit` (default 100, at most 1 000),
/// `dir` (`b`, newest first, by default), `user_id` and `room_id` filters.
fn listing(query: Option<String>, events: bool) -> Result<ReportQuery> {
    let mut l = ReportQuery { events, limit: 100, ..Default::default() };
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let number = || {
            v.parse::<usize>()
                .map_err(|_| Error::InvalidParam(format!("{k} must be a non-negative integer")))
        };
        match k.as_ref() {
            "from" => l.from = number()?,
            "limit" => l.limit = number()?.min(1000),
            "dir" => match v.as_ref() {
                "b" => l.forwards = false,
                "f" => l.forwards = true,
                _ => return Err(Error::InvalidParam("dir must be f or b".into())),
            },
            "user_id" => l.user_id = Some(v.into_owned()),
            "room_id" => l.room_id = Some(v.into_owned()),
            _ => {}
        }
    }
    Ok(l)
}

async fn list_reports(
    s: &crate::services::Services,
    query: Option<String>,
    events: bool,
    key: &str,
) -> Result<Json<Value>> {
    let query = listing(query, events)?;
    let from = query.from;
    let (reports, total) = s.store.reports(query).await?;
    let page: Vec<Value> = reports.iter().map(|r| report_json(s, r)).collect();
    let mut body = json!({key: page, "total": total});
    if from + page.len() < total {
        body["next_token"] = json!(from + page.len());
    }
    Ok(Json(body))
}

/// `GET /_synapse/admin/v1/event_reports`.
pub async fn list_event_reports(
    State(s): State<AppState>,
    _: ServerAdmin,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>> {
    list_reports(&s, query, true, "event_reports").await
}

/// `GET /_synapse/admin/v1/room_reports`.
pub async fn list_room_reports(
    State(s): State<AppState>,
    _: ServerAdmin,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>> {
    list_reports(&s, query, false, "room_reports").await
}

fn report_id(args: &[String]) -> Result<u64> {
    args.first()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| Error::InvalidParam("The report ID must be a positive integer".into()))
}

/// `DELETE /_synapse/admin/v1/event_reports/{reportId}`.
pub async fn delete_event_report(
    State(s): State<AppState>,
    _: ServerAdmin,
    PathArgs(args): PathArgs,
) -> Result<Json<Value>> {
    let id = report_id(&args)?;
    let is_event_report = s.store.report(id).await?.is_some_and(|r| r.event_id.is_some());
    if !is_event_report || !s.store.delete_report(id).await? {
        return Err(Error::NotFound("Event report not found".into()));
    }
    Ok(Json(json!({})))
}

/// `GET /_synapse/admin/v1/event_reports/{reportId}`: the report with the event's JSON.
pub async fn event_report(
    State(s): State<AppState>,
    _: ServerAdmin,
    PathArgs(args): PathArgs,
) -> Result<Json<Value>> {
    let id = report_id(&args)?;
    let report = s
        .store
        .report(id)
        .await?
        .filter(|r| r.event_id.is_some())
        .ok_or_else(|| Error::NotFound("Event report not found".into()))?;
    let mut body = report_json(&s, &report);
    if let Some(event_id) = &report.event_id
        && let Some((_, pdu)) = s.rooms.event(event_id).await?
    {
        body["event_json"] = serde_json::from_str(pdu.json.get()).unwrap_or_default();
    }
    Ok(Json(body))
}
