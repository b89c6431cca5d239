//! The user directory (`POST /user_directory/search`): an in-memory token index of every
//! active local user, built from storage at start-up and kept current as profiles change
//! (`Rooms::set_profile` tells it), users register and are deactivated.
//!
//! A user's tokens are the words ([`crate::rooms::search::words`]: NFKD, combining marks
//! dropped, lowercase) of their localpart and display name. A search matches users for whom
//! every word of the term is a prefix of one of their tokens: the longest word is looked up
//! as a range of a sorted map (prefix search), the others are checked on the candidates.
//!
//! Who may be found is decided at query time from the rooms service's in-memory
//! memberships, so membership changes need no bookkeeping here: by default, users who share
//! a room with the searcher or are joined to a public room (join rule `public`, or history
//! `world_readable`); with `user_directory.search_all_users`, every local user.
//!
//! **Bounded work.** A search examines at most [`MAX_EXAMINED`] candidates and ranks at
//! most [`MAX_RANKED`] eligible ones; `limit` is at most [`MAX_LIMIT`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use parking_lot::RwLock;
use ruma::events::StateEventType;
use ruma::{OwnedRoomId, OwnedUserId, UserId};

use crate::error::Result;
use crate::rooms::search::words;
use crate::rooms::{Room, Rooms};
use crate::storage::Store;

/// Most candidates one search examines.
pub const MAX_EXAMINED: usize = 5_000;
/// Most eligible users one search ranks.
const MAX_RANKED: usize = 500;
/// Largest `limit`.
pub const MAX_LIMIT: usize = 50;
/// `limit` when the request names none.
pub const DEFAULT_LIMIT: usize = 10;

/// One user as the directory returns them.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectoryUser {
    pub user_id: OwnedUserId,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

struct Entry {
    displayname: Option<String>,
    avatar_url: Option<String>,
    tokens: Vec<String>,
}

#[derive(Default)]
struct Index {
    users: HashMap<OwnedUserId, Entry>,
    /// token → the users with that token.
    tokens: BTreeMap<String, HashSet<OwnedUserId>>,
}

impl Index {
    fn remove(&mut self, user: &UserId) {
        if let Some(old) = self.users.remove(user) {
            for t in old.tokens {
                if let Some(set) = self.tokens.get_mut(&t) {
                    set.remove(user);
                    if set.is_empty() {
                        self.tokens.remove(&t);
                    }
                }
            }
        }
    }

    fn set(&mut self, user: OwnedUserId, displayname: Option<String>, avatar_url: Option<String>) {
        self.remove(&user);
        let tokens = tokens_of(&user, displayname.as_deref());
        for t in &tokens {
            self.tokens.entry(t.clone()).or_default().insert(user.clone());
        }
        self.users.insert(user, Entry { displayname, avatar_url, tokens });
    }
}

fn tokens_of(user: &UserId, displayname: Option<&str>) -> Vec<String> {
    let mut tokens = words(user.localpart());
    if let Some(name) = displayname {
        tokens.extend(words(name));
    }
    tokens.sort();
    tokens.dedup();
    tokens
}

/// The words of a search term; a full user ID (`@name:server`) counts by its localpart.
fn query_words(term: &str) -> Vec<String> {
    let term = term.trim();
    let term = match term.strip_prefix('@') {
        Some(rest) => rest.split(':').next().unwrap_or(rest),
        None => term,
    };
    let mut w = words(term);
    w.sort();
    w.dedup();
    w.truncate(16);
    w
}

/// Whether a room makes its members findable by everyone.
fn is_public(room: &Room) -> bool {
    let field = |kind: StateEventType, name: &str| {
        room.state_event(&kind, "")
            .and_then(|p| p.content_as::<serde_json::Value>())
            .and_then(|c| c.get(name).and_then(|v| v.as_str()).map(str::to_owned))
    };
    field(StateEventType::RoomJoinRules, "join_rule").as_deref() == Some("public")
        || field(StateEventType::RoomHistoryVisibility, "history_visibility").as_deref()
            == Some("world_readable")
}

pub struct UserDirectory {
    search_all: bool,
    index: RwLock<Index>,
}

impl UserDirectory {
    /// Builds the index from every active account in storage.
    pub async fn load(store: &Arc<dyn Store>, server_name: &str, search_all: bool) -> Result<Self> {
        let mut index = Index::default();
        for user in store.users().await? {
            if user.deactivated {
                continue;
            }
            let Ok(id) = UserId::parse(format!("@{}:{server_name}", user.localpart)) else {
                continue;
            };
            index.set(id, user.displayname, user.avatar_url);
        }
        tracing::info!(users = index.users.len(), "user directory built");
        Ok(Self { search_all, index: RwLock::new(index) })
    }

    /// Adds or updates a user (registration, profile change).
    pub fn set(&self, user: &UserId, displayname: Option<String>, avatar_url: Option<String>) {
        self.index.write().set(user.to_owned(), displayname, avatar_url);
    }

    /// Removes a user (deactivation).
    pub fn remove(&self, user: &UserId) {
        self.index.write().remove(user);
    }

    /// How many users are indexed.
    pub fn len(&self) -> usize {
        self.index.read().users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The users `searcher` may find whose tokens every word of `term` prefixes, best first:
    /// `(users, limited)`.
    pub fn search(
        &self,
        rooms: &Rooms,
        searcher: &UserId,
        term: &str,
        limit: usize,
    ) -> (Vec<DirectoryUser>, bool) {
        let searcher_rooms: HashSet<OwnedRoomId> = rooms
            .rooms_of(searcher)
            .iter()
            .filter(|r| r.is_joined(searcher))
            .map(|r| r.id.clone())
            .collect();
        // Whether a room is public is read once per search (it parses state), not once per
        // candidate in it.
        let public: std::cell::RefCell<HashMap<OwnedRoomId, bool>> = Default::default();
        let search_all = self.search_all;
        self.search_with(term, limit, |user| {
            let joined: Vec<Arc<Room>> =
                rooms.rooms_of(user).into_iter().filter(|r| r.is_joined(user)).collect();
            let shares = joined.iter().any(|r| searcher_rooms.contains(&r.id));
            let in_public = || {
                joined.iter().any(|r| {
                    *public.borrow_mut().entry(r.id.clone()).or_insert_with(|| is_public(r))
                })
            };
            (search_all || shares || in_public()).then_some(shares)
        })
    }

    /// The search itself; `eligible(user)` says whether the searcher may find `user`
    /// (`None`: no) and whether they share a room (ranked first).
    fn search_with(
        &self,
        term: &str,
        limit: usize,
        eligible: impl Fn(&UserId) -> Option<bool>,
    ) -> (Vec<DirectoryUser>, bool) {
        let limit = limit.clamp(1, MAX_LIMIT);
        let terms = query_words(term);
        let Some(driver) = terms.iter().max_by_key(|w| w.len()).cloned() else {
            return (Vec::new(), false);
        };
        let index = self.index.read();
        let mut seen: HashSet<&UserId> = HashSet::new();
        let mut ranked: Vec<(u32, bool, &UserId, &Entry)> = Vec::new();
        let mut examined = 0;
        let mut limited = false;
        'tokens: for (_, users) in
            index.tokens.range(driver.clone()..).take_while(|(t, _)| t.starts_with(&driver))
        {
            for user in users {
                let user: &UserId = user;
                if !seen.insert(user) {
                    continue;
                }
                examined += 1;
                if examined > MAX_EXAMINED || ranked.len() >= MAX_RANKED {
                    limited = true;
                    break 'tokens;
                }
                let Some(entry) = index.users.get(user) else { continue };
                if !terms.iter().all(|w| entry.tokens.iter().any(|t| t.starts_with(w.as_str()))) {
                    continue;
                }
                let Some(shares) = eligible(user) else { continue };
                let exact = terms.iter().filter(|w| entry.tokens.contains(w)).count() as u32;
                ranked.push((exact, shares, user, entry));
            }
        }
        // Whole-word matches first, then room-mates, then by name.
        ranked.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then(b.1.cmp(&a.1))
                .then_with(|| a.3.displayname.cmp(&b.3.displayname))
                .then_with(|| a.2.cmp(b.2))
        });
        if ranked.len() > limit {
            limited = true;
        }
        let users = ranked
            .into_iter()
            .take(limit)
            .map(|(_, _, user, entry)| DirectoryUser {
                user_id: user.to_owned(),
                displayname: entry.displayname.clone(),
                avatar_url: entry.avatar_url.clone(),
            })
            .collect();
        (users, limited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_words_take_a_user_ids_localpart() {
        assert_eq!(query_words("@alice.smith:example.org"), vec!["alice", "smith"]);
        assert_eq!(query_words("  Zoë  "), vec!["zoe"]);
    }

    #[test]
    fn index_updates_replace_old_tokens() {
        let mut index = Index::default();
        let u = UserId::parse("@u1:x").unwrap();
        index.set(u.clone(), Some("Björn Borg".into()), None);
        assert!(index.tokens.contains_key("bjorn"));
        index.set(u.clone(), Some("Ann".into()), None);
        assert!(!index.tokens.contains_key("bjorn"));
        assert!(index.tokens.contains_key("ann"));
        index.remove(&u);
        assert!(index.tokens.is_empty() && index.users.is_empty());
    }

    /// Directory search latency over 100 000 users (`cargo test --workspace --lib
    /// user_directory_latency -- --ignored --nocapture`; release numbers with `--release`).
    #[test]
    #[ignore]
    fn user_directory_latency_with_100k_users() {
        const FIRST: [&str; 20] = [
            "Anna", "Björn", "Chloé", "David", "Émile", "Fatima", "Günter", "Hana", "Igor", "José",
            "Kai", "Lena", "Mateo", "Nora", "Oskar", "Priya", "Quinn", "Rosa", "Sven", "Zoë",
        ];
        let mut index = Index::default();
        let started = std::time::Instant::now();
        for i in 0..100_000u32 {
            let user = UserId::parse(format!("@user{i}:bench.local")).unwrap();
            let name = format!(
                "{} {}son{}",
                FIRST[(i % 20) as usize],
                FIRST[(i / 20 % 20) as usize],
                i % 997
            );
            index.set(user, Some(name), None);
        }
        let build = started.elapsed();
        let directory = UserDirectory { search_all: true, index: RwLock::new(index) };
        let restricted = |u: &UserId| u.localpart().ends_with('7').then_some(true);
        let mut report = Vec::new();
        for (label, term) in [
            ("rare", "user12345"),
            ("name", "zoe"),
            ("two words", "bjo annason"),
            ("one letter", "a"),
            ("none", "xyzzy"),
        ] {
            for (mode, all) in [("open", true), ("restricted", false)] {
                let mut times = Vec::new();
                for _ in 0..200 {
                    let t = std::time::Instant::now();
                    let (found, _) = if all {
                        directory.search_with(term, 10, |_| Some(false))
                    } else {
                        directory.search_with(term, 10, restricted)
                    };
                    times.push(t.elapsed());
                    std::hint::black_box(found);
                }
                times.sort();
                report.push(format!(
                    "{label:>10} {mode:>10}: p50 {:?} p99 {:?}",
                    times[100], times[198]
                ));
            }
        }
        println!("user directory, 100 000 users, index built in {build:?}");
        for line in report {
            println!("{line}");
        }
    }
}
