//! Which member events each device has already been sent in `/sync`, so that lazy-loaded
//! members are not repeated (`include_redundant_members: false`, the default).
//!
//! In memory and bounded: forgetting only means a member event is sent again, which the spec
//! allows and clients handle. An initial sync (or a room new to the client) starts afresh.

use std::collections::{HashMap, HashSet};

use parking_lot::Mutex;

/// Most `(device, room)` entries kept; past it the whole map starts afresh.
const MAX_ENTRIES: usize = 100_000;
/// Most member events remembered per `(device, room)`.
const MAX_PER_ROOM: usize = 10_000;

type Key = (String, String, String);

#[derive(Default)]
pub struct LazyMembers {
    sent: Mutex<HashMap<Key, HashSet<String>>>,
}

fn key(user: &str, device: &str, room: &str) -> Key {
    (user.to_owned(), device.to_owned(), room.to_owned())
}

impl LazyMembers {
    /// Forgets what the device was sent in the room (its client starts the room afresh).
    pub fn reset(&self, user: &str, device: &str, room: &str) {
        self.sent.lock().remove(&key(user, device, room));
    }

    /// Forgets what the device was sent in every room (a new sync connection of the device,
    /// which may not have processed what the previous one was sent).
    pub fn reset_device(&self, user: &str, device: &str) {
        self.sent.lock().retain(|(u, d, _), _| u != user || d != device);
    }

    /// Whether the device was sent this member event in the room.
    pub fn was_sent(&self, user: &str, device: &str, room: &str, event_id: &str) -> bool {
        self.sent.lock().get(&key(user, device, room)).is_some_and(|s| s.contains(event_id))
    }

    /// Records member events sent to the device.
    pub fn record<'a>(
        &self,
        user: &str,
        device: &str,
        room: &str,
        event_ids: impl IntoIterator<Item = &'a str>,
    ) {
        let mut sent = self.sent.lock();
        if sent.len() >= MAX_ENTRIES {
            sent.clear();
        }
        let set = sent.entry(key(user, device, room)).or_default();
        for id in event_ids {
            if set.len() >= MAX_PER_ROOM {
                set.clear();
            }
            set.insert(id.to_owned());
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
        lazy.reset("@a:x", "D1", "!r:x");
        assert!(!lazy.was_sent("@a:x", "D1", "!r:x", "$m1"));
    }
}
