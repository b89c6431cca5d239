//! `/devices` and `/delete_devices`.

use axum::extract::State;
use ruma::api::client::device::{
    Device, delete_device, delete_devices, get_device, get_devices, update_device,
};
use ruma::{MilliSecondsSinceUnixEpoch, UInt};

use crate::error::Result;
use crate::http::auth::Authed;
use crate::http::ruma::{AppState, Ruma, RumaResponse};
use crate::storage::DeviceRecord;

fn to_ruma(d: DeviceRecord) -> Device {
    let mut device = Device::new(d.device_id.into());
    device.display_name = d.display_name;
    device.last_seen_ip = d.last_seen_ip;
    device.last_seen_ts = d.last_seen_ts.and_then(UInt::new).map(MilliSecondsSinceUnixEpoch);
    device
}

pub async fn list(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(_): Ruma<get_devices::v3::Request>,
) -> Result<RumaResponse<get_devices::v3::Response>> {
    let devices = s.accounts.devices(&who).await?.into_iter().map(to_ruma).collect();
    Ok(RumaResponse(get_devices::v3::Response::new(devices)))
}

pub async fn get(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_device::v3::Request>,
) -> Result<RumaResponse<get_device::v3::Response>> {
    let device = s.accounts.device(&who, req.device_id.as_str()).await?;
    Ok(RumaResponse(get_device::v3::Response::new(to_ruma(device))))
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
