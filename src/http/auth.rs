//! Extractors for who is asking: the access-token owner and the client's address.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use crate::error::Error;
use crate::http::ruma::AppState;
use crate::services::accounts::Identity;

/// The authenticated user and device. Rejects with `M_MISSING_TOKEN` / `M_UNKNOWN_TOKEN`.
pub struct Authed(pub Identity);

/// The access token from `Authorization: Bearer …`, or the deprecated `access_token` query
/// parameter that some clients still send.
pub fn access_token(parts: &Parts) -> Option<String> {
    token_from(&parts.headers, parts.uri.query())
}

/// [`access_token`] from a request's headers and query string.
pub fn token_from(headers: &http::HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION)
        && let Ok(value) = value.to_str()
        && let Some(token) = value.strip_prefix("Bearer ")
    {
        return Some(token.trim().to_owned());
    }
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let token = access_token(parts).ok_or(Error::MissingToken)?;
        let identity = state.accounts.authenticate(&token).await?;
        if identity.guest && !guest_allowed(&parts.method, parts.uri.path()) {
            return Err(Error::GuestAccessForbidden(
                "Guest accounts may not use this endpoint".into(),
            ));
        }
        Ok(Authed(identity))
    }
}

/// The endpoints a guest's token may call: the Client-Server API's "Guest access" list
/// (reading rooms, `/sync`, `/events`, media downloads; join, leave, send, state, to-device;
/// display name, own devices, whoami; key upload/query/claim), plus `POST /join/{idOrAlias}`
/// (the same join by alias) and `GET /profile` (public anyway). Everything else that takes
/// an access token answers a guest `403 M_GUEST_ACCESS_FORBIDDEN`: this is the one place
/// that decides it, as every authenticated handler goes through [`Authed`].
pub fn guest_allowed(method: &http::Method, path: &str) -> bool {
    use http::Method as M;
    let rest = if let Some(rest) = path.strip_prefix("/_matrix/client/") {
        rest
    } else if let Some(rest) = path.strip_prefix("/_matrix/media/") {
        // Legacy media paths: only downloads and thumbnails.
        let mut seg = rest.splitn(3, '/');
        let _version = seg.next();
        return *method == M::GET && matches!(seg.next(), Some("download" | "thumbnail"));
    } else {
        return false;
    };
    let mut seg: Vec<&str> = rest.split('/').collect();
    if seg.is_empty() {
        return false;
    }
    seg.remove(0); // r0, v3, v1, unstable
    let seg = seg.as_slice();
    matches!(
        (method, seg),
        (&M::GET, ["sync" | "events"])
            | (&M::GET, ["account", "whoami"])
            | (&M::GET, ["media", "download" | "thumbnail", ..])
            | (&M::GET, ["rooms", _, "state" | "messages" | "members" | "initialSync"])
            | (&M::GET, ["rooms", _, "state", _] | ["rooms", _, "state", _, _])
            | (&M::GET, ["rooms", _, "context" | "event", _])
            | (&M::POST, ["rooms", _, "join" | "leave"] | ["join", _])
            | (&M::PUT, ["rooms", _, "send", _, _])
            | (&M::PUT, ["rooms", _, "state", _] | ["rooms", _, "state", _, _])
            | (&M::PUT, ["sendToDevice", _, _])
            | (&M::PUT | &M::DELETE, ["profile", _, "displayname"])
            | (&M::GET, ["profile", _] | ["profile", _, _])
            | (&M::GET, ["devices"] | ["devices", _])
            | (&M::PUT, ["devices", _])
            | (&M::POST, ["keys", "upload" | "query" | "claim"])
            | (&M::POST, ["keys", "upload", _])
    )
}

/// An authenticated server admin, for the admin API. Rejects like [`Authed`] without a
/// valid token, and with `403 M_FORBIDDEN` for everyone but admins.
pub struct ServerAdmin(pub Identity);

impl FromRequestParts<AppState> for ServerAdmin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let Authed(identity) = Authed::from_request_parts(parts, state).await?;
        state.accounts.require_admin(&identity).await?;
        Ok(ServerAdmin(identity))
    }
}

/// The peer address of the connection, as a string for rate-limit keys and device records.
pub struct ClientIp(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string())
            .unwrap_or_else(|| "unknown".to_owned());
        Ok(ClientIp(ip))
    }
}
