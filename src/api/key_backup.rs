//! Server-side key backups: `/room_keys/version` and `/room_keys/keys` at its three levels.

use std::collections::BTreeMap;

use axum::extract::State;
use ruma::api::client::backup::{
    RoomKeyBackup, add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session,
    create_backup_version, delete_backup_keys, delete_backup_keys_for_room,
    delete_backup_keys_for_session, delete_backup_version, get_backup_info, get_backup_keys,
    get_backup_keys_for_room, get_backup_keys_for_session, get_latest_backup_info,
    update_backup_version,
};
use ruma::serde::Raw;
use ruma::{OwnedRoomId, RoomId};

use crate::error::{Error, Result};
use crate::http::auth::Authed;
use crate::http::ruma::{AppState, Ruma, RumaResponse};
use crate::storage::key_backup::{BackupKey, BackupKeyScope};

pub async fn create_version(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<create_backup_version::v3::Request>,
) -> Result<RumaResponse<create_backup_version::v3::Response>> {
    let version = s.key_backup.create_version(&who.user_id, req.algorithm.json()).await?;
    Ok(RumaResponse(create_backup_version::v3::Response::new(version)))
}

pub async fn latest_version(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(_req): Ruma<get_latest_backup_info::v3::Request>,
) -> Result<RumaResponse<get_latest_backup_info::v3::Response>> {
    let v = s.key_backup.version(&who.user_id, None).await?;
    Ok(RumaResponse(get_latest_backup_info::v3::Response::new(
        Raw::from_json(v.algorithm),
        v.count,
        v.etag,
        v.version,
    )))
}

pub async fn get_version(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_backup_info::v3::Request>,
) -> Result<RumaResponse<get_backup_info::v3::Response>> {
    let v = s.key_backup.version(&who.user_id, Some(&req.version)).await?;
    Ok(RumaResponse(get_backup_info::v3::Response::new(
        Raw::from_json(v.algorithm),
        v.count,
        v.etag,
        v.version,
    )))
}

pub async fn update_version(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<update_backup_version::v3::Request>,
) -> Result<RumaResponse<update_backup_version::v3::Response>> {
    s.key_backup.update_version(&who.user_id, &req.version, req.algorithm.json()).await?;
    Ok(RumaResponse(update_backup_version::v3::Response::new()))
}

pub async fn delete_version(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<delete_backup_version::v3::Request>,
) -> Result<RumaResponse<delete_backup_version::v3::Response>> {
    s.key_backup.delete_version(&who.user_id, &req.version).await?;
    Ok(RumaResponse(delete_backup_version::v3::Response::new()))
}

fn room_keys(room_id: &RoomId, backup: RoomKeyBackup) -> impl Iterator<Item = BackupKey> + '_ {
    backup.sessions.into_iter().map(move |(session_id, data)| BackupKey {
        room_id: room_id.to_string(),
        session_id,
        data: data.into_json(),
    })
}

pub async fn put_keys(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<add_backup_keys::v3::Request>,
) -> Result<RumaResponse<add_backup_keys::v3::Response>> {
    let keys = req.rooms.into_iter().flat_map(|(room, b)| room_keys(&room, b).collect::<Vec<_>>());
    let state = s.key_backup.put_keys(&who.user_id, &req.version, keys.collect()).await?;
    Ok(RumaResponse(add_backup_keys::v3::Response::new(state.etag, state.count)))
}

pub async fn put_room_keys(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<add_backup_keys_for_room::v3::Request>,
) -> Result<RumaResponse<add_backup_keys_for_room::v3::Response>> {
    let keys = room_keys(&req.room_id, RoomKeyBackup::new(req.sessions)).collect();
    let state = s.key_backup.put_keys(&who.user_id, &req.version, keys).await?;
    Ok(RumaResponse(add_backup_keys_for_room::v3::Response::new(state.etag, state.count)))
}

pub async fn put_session_key(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<add_backup_keys_for_session::v3::Request>,
) -> Result<RumaResponse<add_backup_keys_for_session::v3::Response>> {
    let key = BackupKey {
        room_id: req.room_id.to_string(),
        session_id: req.session_id,
        data: req.session_data.into_json(),
    };
    let state = s.key_backup.put_keys(&who.user_id, &req.version, vec![key]).await?;
    Ok(RumaResponse(add_backup_keys_for_session::v3::Response::new(state.etag, state.count)))
}

pub async fn get_keys(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_backup_keys::v3::Request>,
) -> Result<RumaResponse<get_backup_keys::v3::Response>> {
    let keys = s.key_backup.keys(&who.user_id, &req.version, BackupKeyScope::All).await?;
    let mut rooms: BTreeMap<OwnedRoomId, BTreeMap<String, _>> = BTreeMap::new();
    for k in keys {
        // Room IDs were validated when stored; a row that no longer parses is skipped.
        let Ok(room) = OwnedRoomId::try_from(k.room_id) else { continue };
        rooms.entry(room).or_default().insert(k.session_id, Raw::from_json(k.data));
    }
    let rooms = rooms.into_iter().map(|(r, sessions)| (r, RoomKeyBackup::new(sessions))).collect();
    Ok(RumaResponse(get_backup_keys::v3::Response::new(rooms)))
}

pub async fn get_room_keys(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_backup_keys_for_room::v3::Request>,
) -> Result<RumaResponse<get_backup_keys_for_room::v3::Response>> {
    let scope = BackupKeyScope::Room(req.room_id.as_str());
    let keys = s.key_backup.keys(&who.user_id, &req.version, scope).await?;
    let sessions = keys.into_iter().map(|k| (k.session_id, Raw::from_json(k.data))).collect();
    Ok(RumaResponse(get_backup_keys_for_room::v3::Response::new(sessions)))
}

pub async fn get_session_key(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_backup_keys_for_session::v3::Request>,
) -> Result<RumaResponse<get_backup_keys_for_session::v3::Response>> {
    let scope = BackupKeyScope::Session(req.room_id.as_str(), &req.session_id);
    let key = s
        .key_backup
        .keys(&who.user_id, &req.version, scope)
        .await?
        .pop()
        .ok_or_else(|| Error::NotFound("No key found for this session".into()))?;
    Ok(RumaResponse(get_backup_keys_for_session::v3::Response::new(Raw::from_json(key.data))))
}

pub async fn delete_keys(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<delete_backup_keys::v3::Request>,
) -> Result<RumaResponse<delete_backup_keys::v3::Response>> {
    let state = s.key_backup.delete_keys(&who.user_id, &req.version, BackupKeyScope::All).await?;
    Ok(RumaResponse(delete_backup_keys::v3::Response::new(state.etag, state.count)))
}

pub async fn delete_room_keys(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<delete_backup_keys_for_room::v3::Request>,
) -> Result<RumaResponse<delete_backup_keys_for_room::v3::Response>> {
    let scope = BackupKeyScope::Room(req.room_id.as_str());
    let state = s.key_backup.delete_keys(&who.user_id, &req.version, scope).await?;
    Ok(RumaResponse(delete_backup_keys_for_room::v3::Response::new(state.etag, state.count)))
}

pub async fn delete_session_key(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<delete_backup_keys_for_session::v3::Request>,
) -> Result<RumaResponse<delete_backup_keys_for_session::v3::Response>> {
    let scope = BackupKeyScope::Session(req.room_id.as_str(), &req.session_id);
    let state = s.key_backup.delete_keys(&who.user_id, &req.version, scope).await?;
    Ok(RumaResponse(delete_backup_keys_for_session::v3::Response::new(state.etag, state.count)))
}
