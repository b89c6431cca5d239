//! Random secrets and identifiers: access tokens, device IDs, UIA session IDs.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Prefix of every access token Axon issues; lets secret scanners recognise leaked tokens.
pub const ACCESS_TOKEN_PREFIX: &str = "axo_";

/// 256 random bits, URL-safe base64.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn access_token() -> String {
    format!("{ACCESS_TOKEN_PREFIX}{}", random_token())
}

/// `len` characters from `alphabet`, uniformly (rejection sampling).
pub fn random_string(alphabet: &[u8], len: usize) -> String {
    let mut out = String::with_capacity(len);
    let limit = 256 - (256 % alphabet.len());
    while out.len() < len {
        let mut b = [0u8; 16];
        OsRng.fill_bytes(&mut b);
        for byte in b {
            if (byte as usize) < limit && out.len() < len {
                out.push(alphabet[byte as usize % alphabet.len()] as char);
            }
        }
    }
    out
}

/// Ten upper-case letters, like other homeservers' device IDs.
pub fn device_id() -> String {
    random_string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_prefixed() {
        let a = access_token();
        let b = access_token();
        assert_ne!(a, b);
        assert!(a.starts_with(ACCESS_TOKEN_PREFIX));
        assert_eq!(a.len(), ACCESS_TOKEN_PREFIX.len() + 43);
    }

    #[test]
    fn device_ids_are_ten_capitals() {
        let d = device_id();
        assert_eq!(d.len(), 10);
        assert!(d.bytes().all(|b| b.is_ascii_uppercase()));
    }
}
