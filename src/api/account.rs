//! Registration, login, logout, whoami, password change, deactivation.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use ruma::api::client::account::{
    change_password, check_registration_token_validity, deactivate, get_username_availability,
    register, whoami,
};
use ruma::api::client::session::{login, logout, logout_all, refresh_token};
use ruma::api::client::uiaa::UserIdentifier;
use serde_json::json;

use crate::config::RegistrationMode;
use crate::error::{Error, Result};
use crate::http::auth::{Authed, ClientIp};
use crate::http::ruma::{AppState, Ruma, RumaResponse};
use crate::services::accounts::{LoginRequest, RegisterRequest, Registered};

pub async fn register_available(
    State(s): State<AppState>,
    Ruma(req): Ruma<get_username_availability::v3::Request>,
) -> Result<RumaResponse<get_username_availability::v3::Response>> {
    if s.accounts.registration_mode() == RegistrationMode::Closed {
        return Err(Error::Forbidden("Registration is disabled".into()));
    }
    s.accounts.available(&req.username).await?;
    Ok(RumaResponse(get_username_availability::v3::Response::new(true)))
}

pub async fn register(
    State(s): State<AppState>,
    ClientIp(client_ip): ClientIp,
    Ruma(req): Ruma<register::v3::Request>,
) -> Result<RumaResponse<register::v3::Response>> {
    let registered = s
        .accounts
        .register(RegisterRequest {
            username: req.username,
            password: req.password,
            device_id: req.device_id.map(|d| d.to_string()),
            initial_device_display_name: req.initial_device_display_name,
            inhibit_login: req.inhibit_login,
            guest: req.kind == register::RegistrationKind::Guest,
            guest_access_token: req.guest_access_token,
            auth: req.auth,
            client_ip,
        })
        .await?;
    Ok(RumaResponse(match registered {
        Registered::WithSession(session) => {
            let mut res = register::v3::Response::new(session.user_id);
            res.access_token = Some(session.access_token);
            res.device_id = Some(session.device_id);
            res
        }
        Registered::AccountOnly(user_id) => register::v3::Response::new(user_id),
    }))
}

pub async fn registration_token_validity(
    State(s): State<AppState>,
    Ruma(req): Ruma<check_registration_token_validity::v1::Request>,
) -> Result<RumaResponse<check_registration_token_validity::v1::Response>> {
    if s.accounts.registration_mode() != RegistrationMode::Token {
        return Err(Error::Forbidden("Registration tokens are not in use".into()));
    }
    let valid = s.accounts.registration_token_valid(&req.token).await?;
    Ok(RumaResponse(check_registration_token_validity::v1::Response::new(valid)))
}

/// `GET /login`: the login types this server accepts.
pub async fn login_types() -> Response {
    axum::Json(json!({"flows": [{"type": "m.login.password"}]})).into_response()
}

pub async fn login(
    State(s): State<AppState>,
    ClientIp(client_ip): ClientIp,
    Ruma(req): Ruma<login::v3::Request>,
) -> Result<RumaResponse<login::v3::Response>> {
    let login::v3::LoginInfo::Password(password) = req.login_info else {
        return Err(Error::Unknown("Unsupported login type".into()));
    };
    #[allow(deprecated)]
    let user = match (&password.identifier, &password.user) {
        (Some(UserIdentifier::Matrix(id)), _) => id.user.clone(),
        (None, Some(user)) => user.clone(),
        (Some(_), _) => {
            return Err(Error::Unknown("Only m.id.user identifiers are supported".into()));
        }
        (None, None) => return Err(Error::MissingParam("Missing identifier".into())),
    };
    let session = s
        .accounts
        .login(LoginRequest {
            user,
            password: password.password,
            device_id: req.device_id.map(|d| d.to_string()),
            initial_device_display_name: req.initial_device_display_name,
            client_ip,
        })
        .await?;
    Ok(RumaResponse(login::v3::Response::new(
        session.user_id,
        session.access_token,
        session.device_id,
    )))
}

pub async fn logout(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(_): Ruma<logout::v3::Request>,
) -> Result<RumaResponse<logout::v3::Response>> {
    s.accounts.logout(&who).await?;
    Ok(RumaResponse(logout::v3::Response::new()))
}

pub async fn logout_all(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(_): Ruma<logout_all::v3::Request>,
) -> Result<RumaResponse<logout_all::v3::Response>> {
    s.accounts.logout_all(&who).await?;
    Ok(RumaResponse(logout_all::v3::Response::new()))
}

/// `POST /refresh`: Axon issues non-expiring access tokens and no refresh tokens (the spec
/// allows this), so no refresh token is ever valid: 401 `M_UNKNOWN_TOKEN`, as Synapse answers
/// a refresh token it does not know.
pub async fn refresh(
    Ruma(_): Ruma<refresh_token::v3::Request>,
) -> Result<RumaResponse<refresh_token::v3::Response>> {
    Err(Error::UnknownRefreshToken)
}

pub async fn whoami(
    Authed(who): Authed,
    Ruma(_): Ruma<whoami::v3::Request>,
) -> RumaResponse<whoami::v3::Response> {
    let mut res = whoami::v3::Response::new(who.user_id, who.guest);
    res.device_id = Some(who.device_id);
    RumaResponse(res)
}

pub async fn change_password(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<change_password::v3::Request>,
) -> Result<RumaResponse<change_password::v3::Response>> {
    s.accounts
        .change_password(&who, req.auth.as_ref(), &req.new_password, req.logout_devices)
        .await?;
    Ok(RumaResponse(change_password::v3::Response::new()))
}

pub async fn deactivate(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<deactivate::v3::Request>,
) -> Result<RumaResponse<deactivate::v3::Response>> {
    s.accounts.deactivate(&who, req.auth.as_ref()).await?;
    s.after_deactivation(&who.user_id, req.erase).await?;
    Ok(RumaResponse(deactivate::v3::Response::new(
        ruma::api::client::account::ThirdPartyIdRemovalStatus::NoSupport,
    )))
}
