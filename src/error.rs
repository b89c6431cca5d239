//! The services' error type. Each variant is a failure a client can be told about;
//! `http::error` maps it to the Matrix `{errcode, error}` body and HTTP status in one place.

use crate::services::uia::UiaInfo;
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Forbidden(String),
    #[error("Missing access token")]
    MissingToken,
    #[error("Unknown access token")]
    UnknownToken { soft_logout: bool },
    /// `POST /refresh` with a refresh token this server never issued (it issues none).
    #[error("Unknown refresh token: this server does not issue refresh tokens")]
    UnknownRefreshToken,
    #[error("{0}")]
    NotJson(String),
    #[error("{0}")]
    BadJson(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidParam(String),
    #[error("{0}")]
    MissingParam(String),
    #[error("Request body too large")]
    TooLarge,
    #[error("Too many requests")]
    LimitExceeded { retry_after_ms: u64 },
    /// More items than a cap of the server allows (invites in one `createRoom`, filters
    /// stored by a user, …). Unlike [`Error::LimitExceeded`], waiting does not help, so it
    /// is 400 `M_TOO_LARGE` ("the request or entity was too large"), not 429: clients retry
    /// 429 on their own.
    #[error("{0}")]
    TooMany(String),
    #[error("Unrecognized request")]
    Unrecognized { method_not_allowed: bool },
    #[error("{0}")]
    InvalidUsername(String),
    #[error("User ID already taken")]
    UserInUse,
    #[error("This account has been deactivated")]
    UserDeactivated,
    #[error("{0}")]
    WeakPassword(String),
    #[error("{0}")]
    GuestAccessForbidden(String),
    #[error("{0}")]
    UnsupportedRoomVersion(String),
    #[error("Room alias already taken")]
    RoomInUse,
    /// The resource exists already (409).
    #[error("{0}")]
    Conflict(String),
    /// The request conflicts with the current state (e.g. forgetting a joined room).
    #[error("{0}")]
    BadState(String),
    /// A well-formed request the server will not serve (an unsupported login type, say).
    #[error("{0}")]
    Unknown(String),
    /// A key-backup write to a version that is not the current one.
    #[error("Wrong backup version")]
    WrongRoomKeysVersion { current_version: String },
    /// User-interactive authentication is required or a stage failed.
    #[error("User-interactive authentication required")]
    Uia(Box<UiaInfo>),
    /// A download of media whose upload (`/create`, then `PUT`) has not arrived in time.
    #[error("The media has not been uploaded yet")]
    NotYetUploaded,
    /// A `PUT /upload/{serverName}/{mediaId}` for an ID that already has content.
    #[error("The media has already been uploaded")]
    CannotOverwriteMedia,
    /// An `m.room.canonical_alias` naming an alias that does not exist or points elsewhere.
    #[error("{0}")]
    BadAlias(String),
    /// A second identical annotation (same sender, type, key and event), refused as
    /// Synapse refuses it: 400 `M_DUPLICATE_ANNOTATION`.
    #[error("Can't send same reaction twice")]
    DuplicateAnnotation,
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
