//! Push rules (`/pushrules`), pushers (`/pushers`, `/pushers/set`) and `/notifications`.
//! Every endpoint acts on the caller's own rules, pushers and notifications only.

use axum::Json;
use axum::extract::State;
use ruma::api::client::push::{
    PushRule, delete_pushrule, get_notifications, get_pushers, get_pushrule, get_pushrule_actions,
    get_pushrule_enabled, get_pushrules_all, get_pushrules_global_scope, set_pusher, set_pushrule,
    set_pushrule_actions, set_pushrule_enabled,
};
use ruma::push::{InsertPushRuleError, RemovePushRuleError, Ruleset};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::http::auth::Authed;
use crate::http::ruma::{AppState, Ruma, RumaResponse};
use crate::services::Services;
use crate::services::accounts::Identity;
use crate::services::push;

async fn ruleset(s: &Services, who: &Identity) -> Result<Ruleset> {
    Ok(s.push_rules.get(&s.user_data, &who.user_id).await?.ruleset.clone())
}

fn not_found() -> Error {
    Error::NotFound("Unknown push rule".into())
}

/// `GET /pushrules/`: every kind listed, also empty ones.
pub async fn all(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(_): Ruma<get_pushrules_all::v3::Request>,
) -> Result<Json<Value>> {
    Ok(Json(json!({ "global": push::ruleset_json(&ruleset(&s, &who).await?) })))
}

/// `GET /pushrules/global/`.
pub async fn global(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(_): Ruma<get_pushrules_global_scope::v3::Request>,
) -> Result<Json<Value>> {
    Ok(Json(push::ruleset_json(&ruleset(&s, &who).await?)))
}

pub async fn get_rule(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_pushrule::v3::Request>,
) -> Result<RumaResponse<get_pushrule::v3::Response>> {
    let rules = ruleset(&s, &who).await?;
    let rule = rules.get(req.kind, &req.rule_id).ok_or_else(not_found)?;
    Ok(RumaResponse(get_pushrule::v3::Response::new(PushRule::from(rule.to_owned()))))
}

pub async fn set_rule(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<set_pushrule::v3::Request>,
) -> Result<RumaResponse<set_pushrule::v3::Response>> {
    s.push_rules
        .update(&s.user_data, &who.user_id, |rules| {
            rules.insert(req.rule, req.after.as_deref(), req.before.as_deref()).map_err(|e| match e
            {
                InsertPushRuleError::UnknownRuleId => {
                    Error::NotFound("The before or after rule does not exist".into())
                }
                other => Error::InvalidParam(other.to_string()),
            })
        })
        .await?;
    s.unread.forget_user(&who.user_id);
    Ok(RumaResponse(set_pushrule::v3::Response::new()))
}

pub async fn delete_rule(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<delete_pushrule::v3::Request>,
) -> Result<RumaResponse<delete_pushrule::v3::Response>> {
    s.push_rules
        .update(&s.user_data, &who.user_id, |rules| {
            rules.remove(req.kind, &req.rule_id).map_err(|e| match e {
                RemovePushRuleError::NotFound => not_found(),
                other => Error::InvalidParam(other.to_string()),
            })
        })
        .await?;
    s.unread.forget_user(&who.user_id);
    Ok(RumaResponse(delete_pushrule::v3::Response::new()))
}

pub async fn get_enabled(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_pushrule_enabled::v3::Request>,
) -> Result<RumaResponse<get_pushrule_enabled::v3::Response>> {
    let rules = ruleset(&s, &who).await?;
    let rule = rules.get(req.kind, &req.rule_id).ok_or_else(not_found)?;
    Ok(RumaResponse(get_pushrule_enabled::v3::Response::new(rule.enabled())))
}

pub async fn set_enabled(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<set_pushrule_enabled::v3::Request>,
) -> Result<RumaResponse<set_pushrule_enabled::v3::Response>> {
    s.push_rules
        .update(&s.user_data, &who.user_id, |rules| {
            rules.set_enabled(req.kind, &req.rule_id, req.enabled).map_err(|_| not_found())
        })
        .await?;
    s.unread.forget_user(&who.user_id);
    Ok(RumaResponse(set_pushrule_enabled::v3::Response::new()))
}

pub async fn get_actions(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_pushrule_actions::v3::Request>,
) -> Result<RumaResponse<get_pushrule_actions::v3::Response>> {
    let rules = ruleset(&s, &who).await?;
    let rule = rules.get(req.kind, &req.rule_id).ok_or_else(not_found)?;
    Ok(RumaResponse(get_pushrule_actions::v3::Response::new(rule.actions().to_vec())))
}

pub async fn set_actions(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<set_pushrule_actions::v3::Request>,
) -> Result<RumaResponse<set_pushrule_actions::v3::Response>> {
    if req.actions.len() > 32 {
        return Err(Error::InvalidParam("Too many actions".into()));
    }
    s.push_rules
        .update(&s.user_data, &who.user_id, |rules| {
            rules.set_actions(req.kind, &req.rule_id, req.actions).map_err(|_| not_found())
        })
        .await?;
    s.unread.forget_user(&who.user_id);
    Ok(RumaResponse(set_pushrule_actions::v3::Response::new()))
}

/// `GET /pushers`.
pub async fn pushers(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(_): Ruma<get_pushers::v3::Request>,
) -> Result<Json<Value>> {
    Ok(Json(json!({ "pushers": s.pushers.list(&who.user_id).await? })))
}

/// `POST /pushers/set`.
pub async fn set_pusher(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<set_pusher::v3::Request>,
) -> Result<RumaResponse<set_pusher::v3::Response>> {
    s.pushers.set(&who.user_id, who.device_id.as_str(), req.action).await?;
    Ok(RumaResponse(set_pusher::v3::Response::new()))
}

/// `GET /notifications`.
pub async fn notifications(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_notifications::v3::Request>,
) -> Result<Json<Value>> {
    let (notifications, next) = crate::services::notifications::list(
        &s,
        &who.user_id,
        who.device_id.as_str(),
        req.from.as_deref(),
        req.limit.map(u64::from),
        req.only.as_deref(),
    )
    .await?;
    let mut body = json!({ "notifications": notifications });
    if let Some(next) = next {
        body["next_token"] = json!(next);
    }
    Ok(Json(body))
}
