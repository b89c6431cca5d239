//! `/keys/upload`, `/keys/query`, `/keys/claim`, `/keys/changes`,
//! `/keys/device_signing/upload`, `/keys/signatures/upload`.

use axum::extract::State;
use ruma::api::client::keys::{
    claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys,
};

use crate::api::sync::SyncToken;

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
    Authed(who): Authed,
    Ruma(req): Ruma<get_keys::v3::Request>,
) -> Result<RumaResponse<get_keys::v3::Response>> {
    Ok(RumaResponse(s.e2ee_keys.query(&who.user_id, req.device_keys).await?))
}

pub async fn claim(
    State(s): State<AppState>,
    Authed(_): Authed,
    Ruma(req): Ruma<claim_keys::v3::Request>,
) -> Result<RumaResponse<claim_keys::v3::Response>> {
    Ok(RumaResponse(s.e2ee_keys.claim(req.one_time_keys).await?))
}

/// `GET /keys/changes?from&to`: the device-list news between two sync tokens.
pub async fn changes(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_key_changes::v3::Request>,
) -> Result<RumaResponse<get_key_changes::v3::Response>> {
    let from = SyncToken::parse(&req.from)?;
    let to = SyncToken::parse(&req.to)?;
    let lists = s.device_list_changes(&who.user_id, from.lists_pos(), to.lists_pos(), None).await?;
    Ok(RumaResponse(get_key_changes::v3::Response::new(
        lists.changed.into_iter().collect(),
        lists.left.into_iter().collect(),
    )))
}

pub async fn upload_signing(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<upload_signing_keys::v3::Request>,
) -> Result<RumaResponse<upload_signing_keys::v3::Response>> {
    s.upload_signing_keys(&who, req).await?;
    Ok(RumaResponse(upload_signing_keys::v3::Response::new()))
}

pub async fn upload_signatures(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<upload_signatures::v3::Request>,
) -> Result<RumaResponse<upload_signatures::v3::Response>> {
    Ok(RumaResponse(s.e2ee_keys.upload_signatures(&who, req.signed_keys).await?))
}
