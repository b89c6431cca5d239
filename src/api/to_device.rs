//! `PUT /sendToDevice/{eventType}/{txnId}`.

use axum::extract::State;
use ruma::api::client::to_device::send_event_to_device;

use crate::error::Result;
use crate::http::auth::Authed;
use crate::http::ruma::{AppState, Ruma, RumaResponse};

pub async fn send(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<send_event_to_device::v3::Request>,
) -> Result<RumaResponse<send_event_to_device::v3::Response>> {
    s.to_device.send(&who, &req.event_type.to_string(), req.txn_id.as_str(), req.messages).await?;
    Ok(RumaResponse(send_event_to_device::v3::Response::new()))
}
