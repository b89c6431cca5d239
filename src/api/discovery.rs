//! Discovery: `/versions`, `/.well-known/matrix/*`, `/capabilities`.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::http::auth::Authed;
use crate::http::ruma::AppState;

/// Spec versions Axon advertises. Clients decide from this list what to call, so it names
/// only versions whose version-gated features are implemented (docs/ARCHITECTURE.md,
/// "What /versions claims"). v1.3 brings `/relations` and v1.4 threads (`/threads`,
/// threaded receipts, `m.read.private`), which exist (`api::relations`, `services::receipts`).
/// matrix-js-sdk accepts servers listing any of v1.1–v1.9. v1.11 is listed for authenticated
/// media (`/_matrix/client/v1/media/*`): Element, Element X and matrix-sdk switch to those
/// endpoints only when the server lists it; nothing of v1.5–v1.10 is claimed by it, since
/// clients gate each feature on the exact version that introduced it.
pub const SPEC_VERSIONS: &[&str] = &["r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.11"];

/// Whether this server federates. Until the Server-Server API exists,
/// `/.well-known/matrix/server` answers 404 (as Synapse does when federation is not set
/// up), so that no other server tries to reach us. Turn on when federation lands.
pub const FEDERATION_ENABLED: bool = false;

/// Room versions this server can create and join; 12 is the default for new rooms.
pub const ROOM_VERSIONS: &[&str] = &["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"];
pub const DEFAULT_ROOM_VERSION: &str = "12";

pub async fn versions() -> Json<Value> {
    // The only unstable flag is MSC3916's "stable" marker: authenticated media, which
    // clients released before v1.11 look for.
    Json(json!({
        "versions": SPEC_VERSIONS,
        "unstable_features": {
            "org.matrix.msc3916.stable": true,
            // The WebSocket transport of /sync (docs/websocket.md).
            "io.axon.sync_ws": true,
        },
    }))
}

pub async fn well_known_client(State(s): State<AppState>) -> Json<Value> {
    Json(json!({"m.homeserver": {"base_url": s.config.client_base_url()}}))
}

/// `/.well-known/matrix/server`: where other servers reach this one's federation API.
pub async fn well_known_server(State(s): State<AppState>) -> Result<Json<Value>> {
    if !FEDERATION_ENABLED {
        return Err(Error::NotFound("This server does not federate".into()));
    }
    Ok(Json(json!({"m.server": s.config.federation_server()})))
}

pub async fn capabilities(Authed(_): Authed) -> Json<Value> {
    let available: serde_json::Map<String, Value> =
        ROOM_VERSIONS.iter().map(|v| ((*v).to_owned(), json!("stable"))).collect();
    Json(json!({
        "capabilities": {
            "m.change_password": {"enabled": true},
            "m.room_versions": {"default": DEFAULT_ROOM_VERSION, "available": available},
            "m.set_displayname": {"enabled": true},
            "m.set_avatar_url": {"enabled": true},
            "m.3pid_changes": {"enabled": false},
            "m.get_login_token": {"enabled": false},
        }
    }))
}

/// `GET /account/3pid`: Axon binds no third-party identifiers (email, phone) to accounts.
pub async fn threepids(Authed(_): Authed) -> Json<Value> {
    Json(json!({"threepids": []}))
}

/// `GET /thirdparty/protocols`: no bridges are registered yet, so no protocols.
pub async fn thirdparty_protocols(Authed(_): Authed) -> Json<Value> {
    Json(json!({}))
}

/// `GET /voip/turnServer`: Axon has no TURN configuration, so there are no credentials to
/// hand out. The spec's 200 body requires `username`, `password`, `uris` and `ttl`, so an empty
/// object would be a malformed answer; 404 `M_NOT_FOUND` says plainly that there is no TURN
/// server (clients then call peer-to-peer or through their own fallback).
pub async fn turn_server(Authed(_): Authed) -> crate::error::Result<Json<Value>> {
    Err(crate::error::Error::NotFound("No TURN server is configured".into()))
}
