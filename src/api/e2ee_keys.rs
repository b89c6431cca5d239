//! `/keys/upload`, `/keys/query`, `/keys/claim`.

use axum::extract::State;
use ruma::api::client::keys::{claim_keys, get_keys, upload_keys};

use crate::error::Result;
use crate::http::auth::Authed;
use crate::http::ruma::{AppState, Ruma, RumaResponse};

pub async fn upload(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<upload_keys::v3::Request>,
) -> Result<RumaResponse<upload_keys::v3::Response>> {
    let counts = s.e2ee_keys.upload(&who, req).await?;
    Ok(RumaResponse(upload_keys::v3::Response::new(counts)))
}

pub async fn query(
    State(s): State<AppState>,
    Authed(_): Authed,
    Ruma(req): Ruma<get_keys::v3::Request>,
) -> Result<RumaResponse<get_keys::v3::Response>> {
    Ok(RumaResponse(s.e2ee_keys.query(req.device_keys).await?))
}

pub async fn claim(
    State(s): State<AppState>,
    Authed(_): Authed,
    Ruma(req): Ruma<claim_keys::v3::Request>,
) -> Result<RumaResponse<claim_keys::v3::Response>> {
    Ok(RumaResponse(s.e2ee_keys.claim(req.one_time_keys).await?))
}
