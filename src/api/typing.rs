//! `PUT /rooms/{roomId}/typing/{userId}`.

use axum::extract::State;
use ruma::api::client::typing::create_typing_event::v3::{Request, Response, Typing};

use crate::error::{Error, Result};
use crate::http::auth::Authed;
use crate::http::ruma::{AppState, Ruma, RumaResponse};

/// Starts (with a timeout, capped at `services::typing::MAX_TIMEOUT`; 30 s when the client
/// gives none) or stops the caller's typing in a room they are joined to.
pub async fn set_typing(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<Request>,
) -> Result<RumaResponse<Response>> {
    if req.user_id != who.user_id {
        return Err(Error::Forbidden("Cannot set another user's typing state".into()));
    }
    s.rooms.require_joined(&req.room_id, &who.user_id)?;
    // Each change wakes every member: it takes a token of the sender's event bucket.
    s.event_limiter.check(who.user_id.as_str())?;
    let timeout = match req.state {
        Typing::Yes(info) => Some(info.timeout),
        Typing::No => None,
    };
    s.typing.set(&req.room_id, &who.user_id, timeout);
    // A leave committed between the check and the set ran its "stop typing" hook before the
    // set: look again, so a departed user never stays typing.
    if timeout.is_some() && s.rooms.require_joined(&req.room_id, &who.user_id).is_err() {
        s.typing.set(&req.room_id, &who.user_id, None);
    }
    Ok(RumaResponse(Response::new()))
}
