//! `/devices` and `/delete_devices`.

use axum::Json;
use axum::extract::State;
use ruma::api::client::device::{
    delete_device, delete_devices, get_device, get_devices, update_device,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::Result;
use crate::http::auth::Authed;
use crate::http::ruma::{AppState, Ruma, RumaResponse};
use crate::storage::DeviceRecord;

/// A device as the spec shows it. ruma's `Device` serializes an absent display name or IP as
/// `null`; the spec wants absent fields omitted.
#[derive(Serialize)]
pub struct DeviceJson {
    device_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen_ts: Option<u64>,
}

impl From<DeviceRecord> for DeviceJson {
    fn from(d: DeviceRecord) -> Self {
        Self {
            device_id: d.device_id,
            display_name: d.display_name,
            last_seen_ip: d.last_seen_ip,
            last_seen_ts: d.last_seen_ts,
        }
    }
}

pub async fn list(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(_): Ruma<get_devices::v3::Request>,
) -> Result<Json<Value>> {
    let devices: Vec<DeviceJson> =
        s.accounts.devices(&who).await?.into_iter().map(DeviceJson::from).collect();
    Ok(Json(json!({ "devices": devices })))
}

pub async fn get(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_device::v3::Request>,
) -> Result<Json<DeviceJson>> {
    let device = s.accounts.device(&who, req.device_id.as_str()).await?;
    Ok(Json(device.into()))
}

pub async fn update(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<update_device::v3::Request>,
) -> Result<RumaResponse<update_device::v3::Response>> {
    s.accounts.rename_device(&who, req.device_id.as_str(), req.display_name).await?;
    Ok(RumaResponse(update_device::v3::Response::new()))
}

pub async fn delete(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<delete_device::v3::Request>,
) -> Result<RumaResponse<delete_device::v3::Response>> {
    s.accounts.device(&who, req.device_id.as_str()).await?;
    s.accounts.delete_devices(&who, req.auth.as_ref(), vec![req.device_id.to_string()]).await?;
    Ok(RumaResponse(delete_device::v3::Response::new()))
}

pub async fn delete_many(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<delete_devices::v3::Request>,
) -> Result<RumaResponse<delete_devices::v3::Response>> {
    let ids = req.devices.into_iter().map(|d| d.to_string()).collect();
    s.accounts.delete_devices(&who, req.auth.as_ref(), ids).await?;
    Ok(RumaResponse(delete_devices::v3::Response::new()))
}
