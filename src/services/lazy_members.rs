//! Which member events each device has already been sent in `/sync`, so that lazy-loaded
//! members are not repeated (`include_redundant_members: false`, the default).
//!
//! In memory and bounded: forgetting only means a member event is sent again, which the spec
//! allows and clients handle. An initial sync (or a room new to the client) starts afresh.
//!
//! Every lazy-loading sync of every member asks here, so the map is flat (one lookup by
//! `(user, device, room)`, borrowed strings, no key built per lookup) and split into
//! [`SHARDS`] by user, each under its own lock.

use std::hash::{BuildHasher, Hash, Hasher};

use hashbrown::Equivalent;
use parking_lot::Mutex;

/// Maps hashed with foldhash: the hash is on the hot path (SipHash was a visible share of a
/// fan-out).
type HashMap<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = hashbrown::HashSet<K, foldhash::fast::RandomState>;

/// Locks the map is split into (by user).
const SHARDS: usize = 16;
/// Most `(device, room)` entries kept per shard; past it the shard starts afresh.
const MAX_ENTRIES_PER_SHARD: usize = 100_000 / SHARDS;
/// Most member events remembered per `(device, room)`.
const MAX_PER_ROOM: usize = 10_000;

pub struct LazyMembers {
    shards: [Mutex<HashMap<Key, HashSet<Box<str>>>>; SHARDS],
    /// Picks a user's shard.
    shard_hasher: foldhash::fast::RandomState,
}

impl Default for LazyMembers {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::default()),
            shard_hasher: foldhash::fast::RandomState::default(),
        }
    }
}

/// `(user, device, room)`, owned.
#[derive(PartialEq, Eq)]
struct Key {
    user: Box<str>,
    device: Box<str>,
    room: Box<str>,
}

/// `(user, device, room)`, borrowed: what lookups use. Hashes as [`Key`] does.
struct KeyRef<'a> {
    user: &'a str,
    device: &'a str,
    room: &'a str,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        KeyRef { user: &self.user, device: &self.device, room: &self.room }.hash(state)
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.user.hash(state);
        self.device.hash(state);
        self.room.hash(state);
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        *key.user == *self.user && *key.device == *self.device && *key.room == *self.room
    }
}

impl LazyMembers {
    fn shard(&self, user: &str) -> &Mutex<HashMap<Key, HashSet<Box<str>>>> {
        let i = self.shard_hasher.hash_one(user) as usize % SHARDS;
        &self.shards[i]
    }

    /// Forgets what the device was sent in the room (its client starts the room afresh).
    pub fn reset(&self, user: &str, device: &str, room: &str) {
        self.shard(user).lock().remove(&KeyRef { user, device, room });
    }

    /// Forgets what the device was sent in every room (a new sync connection of the device,
    /// which may not have processed what the previous one was sent).
    pub fn reset_device(&self, user: &str, device: &str) {
        self.shard(user).lock().retain(|k, _| !(*k.user == *user && *k.device == *device));
    }

    /// Whether the device was sent this member event in the room.
    pub fn was_sent(&self, user: &str, device: &str, room: &str, event_id: &str) -> bool {
        self.all_sent(user, device, room, [event_id])
    }

    /// Whether the device was sent every one of these member events in the room (one lock
    /// for all of them).
    pub fn all_sent<'a>(
        &self,
        user: &str,
        device: &str,
        room: &str,
        event_ids: impl IntoIterator<Item = &'a str>,
    ) -> bool {
        let mut event_ids = event_ids.into_iter().peekable();
        if event_ids.peek().is_none() {
            return true;
        }
        let shard = self.shard(user).lock();
        let sent = shard.get(&KeyRef { user, device, room });
        event_ids.all(|id| sent.is_some_and(|sent| sent.contains(id)))
    }

    /// Records member events sent to the device.
    pub fn record<'a>(
        &self,
        user: &str,
        device: &str,
        room: &str,
        event_ids: impl IntoIterator<Item = &'a str>,
    ) {
        let mut event_ids = event_ids.into_iter().peekable();
        if event_ids.peek().is_none() {
            return;
        }
        let key = KeyRef { user, device, room };
        let mut shard = self.shard(user).lock();
        if !shard.contains_key(&key) {
            if shard.len() >= MAX_ENTRIES_PER_SHARD {
                shard.clear();
            }
            let owned = Key { user: user.into(), device: device.into(), room: room.into() };
            shard.insert(owned, HashSet::default());
        }
        let Some(set) = shard.get_mut(&key) else { return };
        for id in event_ids {
            if set.len() >= MAX_PER_ROOM {
                set.clear();
            }
            if !set.contains(id) {
                set.insert(id.into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_members_are_remembered_per_device_and_room_until_reset() {
        let lazy = LazyMembers::default();
        lazy.record("@a:x", "D1", "!r:x", ["$m1"]);
        assert!(lazy.was_sent("@a:x", "D1", "!r:x", "$m1"));
        assert!(!lazy.was_sent("@a:x", "D2", "!r:x", "$m1"), "another device");
        assert!(!lazy.was_sent("@a:x", "D1", "!s:x", "$m1"), "another room");
        lazy.record("@a:x", "D1", "!r:x", ["$m2"]);
        assert!(lazy.all_sent("@a:x", "D1", "!r:x", ["$m1", "$m2"]));
        assert!(lazy.all_sent("@a:x", "D1", "!r:x", std::iter::empty()));
        assert!(!lazy.all_sent("@a:x", "D1", "!r:x", ["$m1", "$m3"]));
        assert!(!lazy.all_sent("@a:x", "D2", "!r:x", ["$m1"].into_iter()), "another device");
        lazy.reset("@a:x", "D1", "!r:x");
        assert!(!lazy.was_sent("@a:x", "D1", "!r:x", "$m1"));
        assert!(!lazy.all_sent("@a:x", "D1", "!r:x", ["$m1"]));
    }

    #[test]
    fn a_device_reset_forgets_every_room_of_that_device_only() {
        let lazy = LazyMembers::default();
        lazy.record("@a:x", "D1", "!r:x", ["$m1"]);
        lazy.record("@a:x", "D1", "!s:x", ["$m2"]);
        lazy.record("@a:x", "D2", "!r:x", ["$m1"]);
        lazy.reset_device("@a:x", "D1");
        assert!(!lazy.was_sent("@a:x", "D1", "!r:x", "$m1"));
        assert!(!lazy.was_sent("@a:x", "D1", "!s:x", "$m2"));
        assert!(lazy.was_sent("@a:x", "D2", "!r:x", "$m1"));
        let entries: usize = lazy.shards.iter().map(|s| s.lock().len()).sum();
        assert_eq!(entries, 1);
    }
}
