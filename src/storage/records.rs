//! The records storage keeps, with their byte encodings.
//!
//! Records are stored as JSON: small, rarely written, and readable with `ldb` when debugging.
//! Hot-path data (events, stream positions) gets denser encodings of its own.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// SHA-256 of an access token. Tokens are never stored in the clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub localpart: String,
    /// PHC string of an argon2id hash; `None` for accounts that cannot log in with a password.
    pub password_hash: Option<String>,
    pub created_ts: u64,
    #[serde(default)]
    pub deactivated: bool,
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub displayname: Option<String>,
    #[serde(default)]
    pub avatar_url: Option<String>,
    /// A guest account (`/register?kind=guest`): no password, guest endpoints only.
    #[serde(default)]
    pub guest: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub device_id: String,
    pub display_name: Option<String>,
    pub created_ts: u64,
    pub last_seen_ts: Option<u64>,
    pub last_seen_ip: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessTokenRecord {
    pub localpart: String,
    pub device_id: String,
    pub created_ts: u64,
    /// Issued to a guest account: the token may call only the guest endpoints.
    #[serde(default)]
    pub guest: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistrationTokenRecord {
    pub token: String,
    /// How many registrations may use the token; `None` for unlimited.
    pub uses_allowed: Option<u32>,
    /// Registrations completed with the token.
    pub completed: u32,
    /// Milliseconds since the epoch after which the token is refused.
    pub expiry_ts: Option<u64>,
    pub created_ts: u64,
}

impl RegistrationTokenRecord {
    pub fn is_usable(&self, now_ms: u64) -> bool {
        let unexpired = self.expiry_ts.is_none_or(|expiry| now_ms < expiry);
        let uses_left = self.uses_allowed.is_none_or(|allowed| self.completed < allowed);
        unexpired && uses_left
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_token_usability_follows_uses_and_expiry() {
        let mut t = RegistrationTokenRecord {
            token: "t".into(),
            uses_allowed: Some(1),
            completed: 0,
            expiry_ts: Some(1_000),
            created_ts: 0,
        };
        assert!(t.is_usable(999));
        assert!(!t.is_usable(1_000));
        t.completed = 1;
        assert!(!t.is_usable(0));
        t.uses_allowed = None;
        t.expiry_ts = None;
        assert!(t.is_usable(u64::MAX));
    }

    #[test]
    fn token_hash_is_sha256() {
        let h = TokenHash::of("abc");
        assert_eq!(h.0[0], 0xba);
        assert_eq!(h.0[31], 0xad);
    }
}
