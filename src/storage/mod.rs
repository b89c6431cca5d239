//! Storage: the narrow interface the services persist through, and its RocksDB implementation.
//!
//! **API Boundary.** Services see only the traits in this module. They speak the services'
//! language (create a user with its first session, delete devices and their tokens, use a
//! registration token) at a level a PostgreSQL implementation can serve with indexes and
//! transactions. Nothing here knows HTTP; nothing outside `storage::rocks` knows RocksDB.
//!
//! **Architecture Invariant.** Each trait method is one atomic write: it either happens
//! whole or not at all, and once it returns `Ok` it survives kill -9 (see docs/ARCHITECTURE.md
//! for which writes are fsynced).

pub mod e2ee_keys;
pub mod key_backup;
pub mod media;
pub mod moderation;
pub mod push;
pub mod receipts;
mod records;
pub mod relations;
pub mod rocks;
pub mod rooms;
pub mod to_device;
pub mod users;

use async_trait::async_trait;

pub use e2ee_keys::DeviceListChange;
pub use records::{
    AccessTokenRecord, DeviceRecord, RegistrationTokenRecord, TokenHash, UserRecord, now_ms,
};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Backend(String),
    #[error("corrupt record in {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("record already exists")]
    AlreadyExists,
    #[error("record not found")]
    NotFound,
    /// A registration token that is unknown, expired or used up.
    #[error("registration token not usable")]
    TokenNotUsable,
    /// Writing would take an owner over its cap of records (filters, account-data types).
    #[error("too many records")]
    TooMany,
}

pub type StorageResult<T> = Result<T, StorageError>;

/// A new login session: a device (created or reused) and its first access token.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub device: DeviceRecord,
    pub token_hash: TokenHash,
    pub token: AccessTokenRecord,
}

/// Which devices a password change logs out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceLogout {
    /// Every device stays logged in.
    Nobody,
    /// Every device but the named one (the one making the request, if any) is deleted, and
    /// the user's device list changes.
    AllExcept(Option<String>, DeviceListChange),
}

/// Users, devices and access tokens.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Looks a user up by localpart.
    async fn user(&self, localpart: &str) -> StorageResult<Option<UserRecord>>;

    /// Creates a user, optionally with a first session, and optionally consuming a
    /// registration token, all in one atomic write.
    /// Fails with [`StorageError::AlreadyExists`] if the localpart is taken (deactivated
    /// accounts keep their name) and [`StorageError::TokenNotUsable`] if the registration
    /// token cannot be used.
    async fn create_user(
        &self,
        user: UserRecord,
        session: Option<NewSession>,
        registration_token: Option<String>,
    ) -> StorageResult<()>;

    /// Upgrades a guest account to a full one (`/register` with `guest_access_token`), in one
    /// write: the password hash, the `guest` flag cleared on the user and on every token of
    /// theirs, optionally a new session, and the registration token consumed. Fails with
    /// [`StorageError::NotFound`] unless the user exists and is still a guest, and
    /// [`StorageError::TokenNotUsable`] as `create_user`.
    async fn upgrade_guest(
        &self,
        localpart: &str,
        password_hash: String,
        session: Option<NewSession>,
        registration_token: Option<String>,
    ) -> StorageResult<()>;

    /// Replaces a user's password hash and, in the same write, logs devices out as asked.
    async fn set_password(
        &self,
        localpart: &str,
        password_hash: String,
        logout: DeviceLogout,
    ) -> StorageResult<()>;

    /// Marks the user deactivated and deletes every device and token; the user's device list
    /// changes in the same write.
    async fn deactivate_user(&self, localpart: &str, change: DeviceListChange)
    -> StorageResult<()>;

    /// Grants or revokes server admin rights. [`StorageError::NotFound`] for unknown users.
    async fn set_admin(&self, localpart: &str, admin: bool) -> StorageResult<()>;

    /// Whether any account exists (deactivated ones included).
    async fn has_users(&self) -> StorageResult<bool>;

    /// Every account (deactivated ones included): read once at start-up (user directory).
    async fn users(&self) -> StorageResult<Vec<UserRecord>>;

    /// Opens a session: upserts the device (keeping the display name of an existing device
    /// unless a new one is given) and stores the token. Tokens previously issued to that
    /// device are revoked, as the spec requires when a client names its device.
    async fn create_session(&self, localpart: &str, session: NewSession) -> StorageResult<()>;

    /// Resolves an access token.
    async fn access_token(&self, hash: &TokenHash) -> StorageResult<Option<AccessTokenRecord>>;

    async fn devices(&self, localpart: &str) -> StorageResult<Vec<DeviceRecord>>;

    async fn device(&self, localpart: &str, device_id: &str)
    -> StorageResult<Option<DeviceRecord>>;

    /// Updates a device's mutable fields. [`StorageError::NotFound`] if it does not exist.
    async fn update_device(&self, localpart: &str, device: DeviceRecord) -> StorageResult<()>;

    /// Deletes devices and every token issued to them, and records the change of the user's
    /// device list, in one write. Unknown IDs are ignored.
    async fn delete_devices(
        &self,
        localpart: &str,
        device_ids: Vec<String>,
        change: DeviceListChange,
    ) -> StorageResult<()>;
}

/// Registration tokens (`m.login.registration_token`).
#[async_trait]
pub trait RegistrationTokenStore: Send + Sync {
    async fn create_registration_token(&self, record: RegistrationTokenRecord)
    -> StorageResult<()>;

    async fn registration_token(
        &self,
        token: &str,
    ) -> StorageResult<Option<RegistrationTokenRecord>>;

    async fn registration_tokens(&self) -> StorageResult<Vec<RegistrationTokenRecord>>;

    async fn delete_registration_token(&self, token: &str) -> StorageResult<()>;
}

/// Server-wide small values: the signing key, schema version.
#[async_trait]
pub trait MetaStore: Send + Sync {
    async fn meta(&self, key: &str) -> StorageResult<Option<Vec<u8>>>;
    async fn set_meta(&self, key: &str, value: Vec<u8>) -> StorageResult<()>;
}

/// Everything the services need from a database.
pub trait Store:
    AccountStore
    + RegistrationTokenStore
    + MetaStore
    + rooms::RoomStore
    + users::UserDataStore
    + to_device::ToDeviceStore
    + key_backup::KeyBackupStore
    + e2ee_keys::E2eeKeyStore
    + receipts::ReceiptStore
    + media::MediaStore
    + push::PushStore
    + moderation::ModerationStore
    + relations::RelationStore
{
}

impl<T> Store for T where
    T: AccountStore
        + RegistrationTokenStore
        + MetaStore
        + rooms::RoomStore
        + users::UserDataStore
        + to_device::ToDeviceStore
        + key_backup::KeyBackupStore
        + e2ee_keys::E2eeKeyStore
        + receipts::ReceiptStore
        + media::MediaStore
        + push::PushStore
        + moderation::ModerationStore
        + relations::RelationStore
{
}
