//! Axon's application service support (bots and bridges).
//!
//! Today: the namespace rules a registration claims. To come with the application service
//! milestone: loading registration files, the `as_token` identity on the client API, and
//! transaction delivery to the bridge with retries.
//!
//! **Architecture Invariant.** Like `federation`, this crate is a client of the homeserver's
//! services; nothing in the homeserver's core depends on how transactions are delivered.

use regex::Regex;

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("invalid namespace regex {0:?}: {1}")]
    BadRegex(String, regex::Error),
}

/// One namespace entry of a registration (`users`, `aliases` or `rooms`).
#[derive(Debug, Clone)]
pub struct Namespace {
    pub exclusive: bool,
    regex: Regex,
}

impl Namespace {
    /// Compiles a registration's regex, anchored at both ends as the spec intends
    /// (the whole ID must match).
    pub fn new(pattern: &str, exclusive: bool) -> Result<Self, NamespaceError> {
        let anchored = format!("^(?:{pattern})$");
        let regex =
            Regex::new(&anchored).map_err(|e| NamespaceError::BadRegex(pattern.to_owned(), e))?;
        Ok(Self { exclusive, regex })
    }

    pub fn matches(&self, id: &str) -> bool {
        self.regex.is_match(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_matches_whole_ids_only() {
        let ns = Namespace::new(r"@irc_.*:example\.org", true).unwrap();
        assert!(ns.matches("@irc_alice:example.org"));
        assert!(!ns.matches("@irc_alice:example.org.evil"));
        assert!(!ns.matches("@alice:example.org"));
    }

    #[test]
    fn a_bad_regex_is_an_error() {
        assert!(Namespace::new("(", false).is_err());
    }
}
