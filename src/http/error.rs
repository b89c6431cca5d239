//! The one place where service errors become Matrix error responses.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::Error;

impl Error {
    /// HTTP status and Matrix `errcode`.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            Error::Forbidden(_) => (S::FORBIDDEN, "M_FORBIDDEN"),
            Error::MissingToken => (S::UNAUTHORIZED, "M_MISSING_TOKEN"),
            Error::UnknownToken { .. } | Error::UnknownRefreshToken => {
                (S::UNAUTHORIZED, "M_UNKNOWN_TOKEN")
            }
            Error::NotJson(_) => (S::BAD_REQUEST, "M_NOT_JSON"),
            Error::BadJson(_) => (S::BAD_REQUEST, "M_BAD_JSON"),
            Error::NotFound(_) => (S::NOT_FOUND, "M_NOT_FOUND"),
            Error::InvalidParam(_) => (S::BAD_REQUEST, "M_INVALID_PARAM"),
            Error::MissingParam(_) => (S::BAD_REQUEST, "M_MISSING_PARAM"),
            Error::TooLarge => (S::PAYLOAD_TOO_LARGE, "M_TOO_LARGE"),
            Error::LimitExceeded { .. } => (S::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED"),
            Error::TooMany(_) => (S::BAD_REQUEST, "M_TOO_LARGE"),
            Error::Unrecognized { method_not_allowed: true } => {
                (S::METHOD_NOT_ALLOWED, "M_UNRECOGNIZED")
            }
            Error::Unrecognized { method_not_allowed: false } => (S::NOT_FOUND, "M_UNRECOGNIZED"),
            Error::InvalidUsername(_) => (S::BAD_REQUEST, "M_INVALID_USERNAME"),
            Error::UserInUse => (S::BAD_REQUEST, "M_USER_IN_USE"),
            Error::UserDeactivated => (S::FORBIDDEN, "M_USER_DEACTIVATED"),
            Error::WeakPassword(_) => (S::BAD_REQUEST, "M_WEAK_PASSWORD"),
            Error::GuestAccessForbidden(_) => (S::FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN"),
            Error::BadAlias(_) => (S::BAD_REQUEST, "M_BAD_ALIAS"),
            Error::UnsupportedRoomVersion(_) => (S::BAD_REQUEST, "M_UNSUPPORTED_ROOM_VERSION"),
            Error::RoomInUse => (S::BAD_REQUEST, "M_ROOM_IN_USE"),
            Error::Conflict(_) => (S::CONFLICT, "M_UNKNOWN"),
            Error::BadState(_) => (S::BAD_REQUEST, "M_UNKNOWN"),
            Error::Unknown(_) => (S::BAD_REQUEST, "M_UNKNOWN"),
            Error::DuplicateAnnotation => (S::BAD_REQUEST, "M_DUPLICATE_ANNOTATION"),
            Error::WrongRoomKeysVersion { .. } => (S::FORBIDDEN, "M_WRONG_ROOM_KEYS_VERSION"),
            Error::Uia(_) => (S::UNAUTHORIZED, "M_FORBIDDEN"),
            Error::NotYetUploaded => (S::GATEWAY_TIMEOUT, "M_NOT_YET_UPLOADED"),
            Error::CannotOverwriteMedia => (S::CONFLICT, "M_CANNOT_OVERWRITE_MEDIA"),
            Error::Storage(_) | Error::Internal(_) => (S::INTERNAL_SERVER_ERROR, "M_UNKNOWN"),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, errcode) = self.status_and_code();
        let body: Value = match &self {
            Error::Uia(info) => {
                let mut body = serde_json::to_value(info.as_ref()).unwrap_or_else(|_| json!({}));
                if let (Some(err), Some(obj)) = (&info.error, body.as_object_mut()) {
                    obj.insert("errcode".into(), json!(err.errcode));
                    obj.insert("error".into(), json!(err.message));
                }
                body
            }
            Error::UnknownToken { soft_logout } => {
                json!({"errcode": errcode, "error": self.to_string(), "soft_logout": soft_logout})
            }
            Error::LimitExceeded { retry_after_ms } => {
                json!({"errcode": errcode, "error": self.to_string(), "retry_after_ms": retry_after_ms})
            }
            Error::WrongRoomKeysVersion { current_version } => {
                json!({"errcode": errcode, "error": self.to_string(), "current_version": current_version})
            }
            Error::Storage(_) | Error::Internal(_) => {
                // The detail goes to the log, not to the client.
                tracing::error!(error = %self, "internal error");
                json!({"errcode": errcode, "error": "Internal server error"})
            }
            _ => json!({"errcode": errcode, "error": self.to_string()}),
        };
        let mut response = (status, Json(body)).into_response();
        if let Error::LimitExceeded { retry_after_ms } = self {
            let secs = retry_after_ms.div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}
