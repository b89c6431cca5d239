//! Which member events each device has already been sent in `/sync`, so that lazy-loaded
//! members are not repeated (`include_redundant_members: false`, the default).
//!
//! In memory and bounded: forgetting only means a member event is sent again, which the spec
//! allows and clients handle. An initial sync (or a room new to the client) starts afresh.

use parking_lot::Mutex;

/// Maps hashed with foldhash: every lazy-loading sync looks up a few IDs here under one
/// global lock, so the hash is on the hot path (SipHash was a visible share of a fan-out).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Most `(device, room)` entries kept; past it the whole map starts afresh.
const MAX_ENTRIES: usize = 100_000;
/// Most member events remembered per `(device, room)`.
const MAX_PER_ROOM: usize = 10_000;

/// `room → member event IDs sent`, per device.
type DeviceRooms = HashMap<String, HashSet<String>>;

#[derive(Default)]
pub struct LazyMembers {
    inner: Mutex<Inner>,
}

/// `(user, device) → room → event IDs`: looked up by `&str` (no key built per lookup, as
/// every lazy-loading sync asks once per timeline sender).
#[derive(Default)]
struct Inner {
    by_device: HashMap<String, HashMap<String, DeviceRooms>>,
    /// `(device, room)` entries in all.
    entries: usize,
}

impl LazyMembers {
    /// Forgets what the device was sent in the room (its client starts the room afresh).
    pub fn reset(&self, user: &str, device: &str, room: &str) {
        let mut inner = self.inner.lock();
        let removed = inner
            .by_device
            .get_mut(user)
            .and_then(|devices| devices.get_mut(device))
            .and_then(|rooms| rooms.remove(room));
        if removed.is_some() {
            inner.entries -= 1;
        }
    }

    /// Forgets what the device was sent in every room (a new sync connection of the device,
    /// which may not have processed what the previous one was sent).
    pub fn reset_device(&self, user: &str, device: &str) {
        let mut inner = self.inner.lock();
        let removed = inner.by_device.get_mut(user).and_then(|devices| devices.remove(device));
        if let Some(rooms) = removed {
            inner.entries -= rooms.len();
        }
    }

    /// Whether the device was sent this member event in the room.
    pub fn was_sent(&self, user: &str, device: &str, room: &str, event_id: &str) -> bool {
        self.inner
            .lock()
            .by_device
            .get(user)
            .and_then(|devices| devices.get(device))
            .and_then(|rooms| rooms.get(room))
            .is_some_and(|sent| sent.contains(event_id))
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
        let mut inner = self.inner.lock();
        if inner.entries >= MAX_ENTRIES {
            *inner = Inner::default();
        }
        let Inner { by_device, entries } = &mut *inner;
        let devices = by_device.entry(user.to_owned()).or_default();
        let rooms = devices.entry(device.to_owned()).or_default();
        let set = match rooms.get_mut(room) {
            Some(set) => set,
            None => {
                *entries += 1;
                rooms.entry(room.to_owned()).or_default()
            }
        };
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
        assert_eq!(lazy.inner.lock().entries, 1);
    }
}
