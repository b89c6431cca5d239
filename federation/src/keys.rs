//! The server's signing key.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use ruma::signatures::Ed25519KeyPair;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("stored signing key is invalid: {0}")]
    Invalid(String),
}

/// An ed25519 key pair with its key ID (`ed25519:<version>`).
pub struct SigningKey {
    pair: Ed25519KeyPair,
    document: Vec<u8>,
}

/// The persisted form: a PKCS#8 document and the key version.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    version: String,
    pkcs8: String,
}

impl SigningKey {
    /// A fresh key whose version is derived from its public key (stable, unique enough).
    pub fn generate() -> Result<Self, KeyError> {
        let document = Ed25519KeyPair::generate().to_vec();
        let probe = Ed25519KeyPair::from_der(&document, "probe".into())
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        let version = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(&probe.public_key()[..4])
            .replace(['-', '_'], "a");
        let pair = Ed25519KeyPair::from_der(&document, version)
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        Ok(Self { pair, document })
    }

    /// Restores a key from [`SigningKey::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let stored: Stored =
            serde_json::from_slice(bytes).map_err(|e| KeyError::Invalid(e.to_string()))?;
        let document = STANDARD_NO_PAD
            .decode(stored.pkcs8.trim_end_matches('='))
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        let pair = Ed25519KeyPair::from_der(&document, stored.version)
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        Ok(Self { pair, document })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let stored = Stored {
            version: self.pair.version().to_owned(),
            pkcs8: STANDARD_NO_PAD.encode(&self.document),
        };
        serde_json::to_vec(&stored).unwrap_or_default()
    }

    /// `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.pair.version())
    }

    /// Unpadded base64 of the public key, as published in `/_matrix/key/v2/server`.
    pub fn public_key_base64(&self) -> String {
        STANDARD_NO_PAD.encode(self.pair.public_key())
    }

    pub fn pair(&self) -> &Ed25519KeyPair {
        &self.pair
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_survives_a_round_trip_through_storage() {
        let key = SigningKey::generate().unwrap();
        let restored = SigningKey::from_bytes(&key.to_bytes()).unwrap();
        assert_eq!(key.key_id(), restored.key_id());
        assert_eq!(key.public_key_base64(), restored.public_key_base64());
        assert!(key.key_id().starts_with("ed25519:"));
    }

    #[test]
    fn garbage_is_not_a_key() {
        assert!(SigningKey::from_bytes(b"{}").is_err());
        assert!(SigningKey::from_bytes(b"not json").is_err());
    }
}
