//! `POST /rooms/{roomId}/upgrade`.

use axum::extract::State;
use ruma::api::client::room::upgrade_room;

use crate::error::{Error, Result};
use crate::http::auth::Authed;
use crate::http::ruma::{AppState, Ruma, RumaResponse};

pub async fn upgrade(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<upgrade_room::v3::Request>,
) -> Result<RumaResponse<upgrade_room::v3::Response>> {
    // Only the versions createRoom offers (capabilities' `m.room_versions`).
    if !crate::api::discovery::ROOM_VERSIONS.contains(&req.new_version.as_str()) {
        return Err(Error::UnsupportedRoomVersion(format!(
            "Room version {} is not supported",
            req.new_version
        )));
    }
    let new_room = s
        .rooms
        .upgrade(&req.room_id, &who.user_id, req.new_version, req.additional_creators)
        .await?;
    crate::api::tags::carry_over(&s, &who.user_id, &new_room).await;
    Ok(RumaResponse(upgrade_room::v3::Response::new(new_room)))
}
