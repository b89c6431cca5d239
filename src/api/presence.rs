//! `PUT` and `GET /presence/{userId}/status`.

use axum::extract::State;
use ruma::api::client::presence::{get_presence, set_presence};

use crate::error::{Error, Result};
use crate::http::auth::Authed;
use crate::http::ruma::{AppState, Ruma, RumaResponse};
use crate::services::presence::State as PresenceState;

/// Sets the caller's own presence (another user's: 403; a state other than online,
/// unavailable, offline: 400). With presence disabled it succeeds and changes nothing.
pub async fn set_status(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<set_presence::v3::Request>,
) -> Result<RumaResponse<set_presence::v3::Response>> {
    if req.user_id != who.user_id {
        return Err(Error::Forbidden("Can only set your own presence state".into()));
    }
    let state = PresenceState::parse(&req.presence)?;
    // A change wakes everyone sharing a room: it takes a token of the user's event bucket.
    s.event_limiter.check(who.user_id.as_str())?;
    s.presence.set(&who.user_id, state, req.status_msg)?;
    Ok(RumaResponse(set_presence::v3::Response::new()))
}

/// A user's presence, for themselves or someone sharing a room with them (others: 403, as
/// Synapse answers; a user this server does not know: 404). With presence disabled every
/// user is `offline`, as Synapse answers.
pub async fn get_status(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_presence::v3::Request>,
) -> Result<RumaResponse<get_presence::v3::Response>> {
    if s.presence.enabled() && req.user_id != who.user_id {
        let known = req.user_id.server_name().as_str() == s.config.server_name
            && s.store.user(req.user_id.localpart()).await?.is_some();
        if !known {
            return Err(Error::NotFound("No presence state for this user".into()));
        }
        if !s.presence.visible_to(&who.user_id, &req.user_id) {
            return Err(Error::Forbidden("You are not allowed to see their presence".into()));
        }
    }
    let status = s.presence.status(&req.user_id);
    let mut response = get_presence::v3::Response::new(status.presence);
    response.last_active_ago = status.last_active_ago;
    response.currently_active = status.currently_active;
    response.status_msg = status.status_msg;
    Ok(RumaResponse(response))
}
