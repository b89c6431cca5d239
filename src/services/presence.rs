//! Presence (`/presence/{userId}/status`, `set_presence` on `/sync`), delivered in the
//! `presence` section of `/sync` to users who share a room. Skeleton: the presence helper
//! implements it.

use ruma::UserId;
use ruma::presence::PresenceState;
use serde_json::Value;

#[derive(Default)]
pub struct Presence {}

impl Presence {
    /// The presence stream's published position (the sync token's seventh part).
    pub fn current(&self) -> u64 {
        0
    }

    /// A sync of `user` with `set_presence`: marks them online (or as asked) and active.
    pub fn syncing(&self, _user: &UserId, _state: &PresenceState) {}

    /// `m.presence` events for `viewer`: users who share a room with them (and themselves)
    /// whose presence changed in `(since, upto]` (everyone's current one for `None`).
    pub fn events(&self, _viewer: &UserId, _since: Option<u64>, _upto: u64) -> Vec<Value> {
        Vec::new()
    }
}
