//! Ignored users: `m.ignored_user_list` global account data, read where events reach a
//! client. [`Rooms::readable`] puts the reader's list into its [`super::visibility::HistoryAccess`],
//! whose `can_see` hides the ignored users' non-state events, so every exit that asks it
//! (`/sync` timelines, `/messages`, `/context`, `/event`, notifications and pushes) leaves
//! them out; `/sync` hides their invites and `services::unread` does not count them.
//!
//! The lists are cached in memory (read from storage on first use, replaced when the user
//! writes the account data). A reader that raced a write never caches the older list: a
//! write counts before it replaces the entry, and a reader inserts only when no write
//! counted meanwhile (as the event cache does with redactions).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ruma::{OwnedUserId, UserId};
use serde_json::Value;

use super::Rooms;
use crate::error::{Error, Result};

/// The global account-data type of the list.
pub const IGNORED_USER_LIST: &str = "m.ignored_user_list";

/// Users cached.
const CACHED_USERS: usize = 100_000;

/// Whom one user ignores.
pub type IgnoredSet = Arc<HashSet<OwnedUserId>>;

pub struct IgnoreLists {
    lists: quick_cache::sync::Cache<OwnedUserId, IgnoredSet>,
    writes: AtomicU64,
}

impl Default for IgnoreLists {
    fn default() -> Self {
        Self { lists: quick_cache::sync::Cache::new(CACHED_USERS), writes: AtomicU64::new(0) }
    }
}

/// The users an `m.ignored_user_list` content names (`ignored_users`' keys; invalid IDs are
/// skipped).
pub fn parse_ignored(content: &Value) -> HashSet<OwnedUserId> {
    content
        .get("ignored_users")
        .and_then(Value::as_object)
        .map(|users| users.keys().filter_map(|u| OwnedUserId::try_from(u.as_str()).ok()).collect())
        .unwrap_or_default()
}

/// Checks a new `m.ignored_user_list` content: `ignored_users` an object of user IDs, not
/// naming its owner (400 `M_INVALID_PARAM`, as Synapse answers).
pub fn check_ignored_content(owner: &UserId, content: &Value) -> Result<()> {
    let Some(users) = content.get("ignored_users") else {
        return Err(Error::BadJson("m.ignored_user_list needs ignored_users".into()));
    };
    let users = users
        .as_object()
        .ok_or_else(|| Error::BadJson("ignored_users must be an object".into()))?;
    for user in users.keys() {
        if UserId::parse(user.as_str()).is_err() {
            return Err(Error::InvalidParam(format!("{user} is not a user ID")));
        }
        if user == owner.as_str() {
            return Err(Error::InvalidParam("You cannot ignore yourself".into()));
        }
    }
    Ok(())
}

impl Rooms {
    /// Whom `user` ignores (empty for most users; cached).
    pub async fn ignored_by(&self, user: &UserId) -> Result<IgnoredSet> {
        if let Some(set) = self.ignore_lists.lists.get(user) {
            return Ok(set);
        }
        let writes = self.ignore_lists.writes.load(Ordering::SeqCst);
        let set: IgnoredSet = Arc::new(
            match self.store().account_data_entry(user.as_str(), None, IGNORED_USER_LIST).await? {
                Some(record) => serde_json::from_str::<Value>(record.content.get())
                    .map(|c| parse_ignored(&c))
                    .unwrap_or_default(),
                None => HashSet::new(),
            },
        );
        if self.ignore_lists.writes.load(Ordering::SeqCst) == writes {
            self.ignore_lists.lists.insert(user.to_owned(), set.clone());
        }
        Ok(set)
    }

    /// Whether `user` ignores `sender`.
    pub async fn ignores(&self, user: &UserId, sender: &UserId) -> Result<bool> {
        Ok(self.ignored_by(user).await?.contains(sender))
    }

    /// Records `user`'s new list (after it is durable).
    pub fn set_ignored(&self, user: &UserId, content: &Value) {
        self.ignore_lists.writes.fetch_add(1, Ordering::SeqCst);
        self.ignore_lists.lists.insert(user.to_owned(), Arc::new(parse_ignored(content)));
    }
}
