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
    if let Some(value) = parts.headers.get(http::header::AUTHORIZATION)
        && let Ok(value) = value.to_str()
        && let Some(token) = value.strip_prefix("Bearer ")
    {
        return Some(token.trim().to_owned());
    }
    let query = parts.uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let token = access_token(parts).ok_or(Error::MissingToken)?;
        let identity = state.accounts.authenticate(&token).await?;
        Ok(Authed(identity))
    }
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
