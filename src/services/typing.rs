//! Typing notifications (`PUT /rooms/{id}/typing/{userId}`), delivered as `m.typing` in the
//! ephemeral section of `/sync`. Skeleton: the typing helper implements it.

use ruma::{RoomId, UserId};
use serde_json::Value;

#[derive(Default)]
pub struct Typing {}

impl Typing {
    /// The typing stream's published position (the sync token's sixth part).
    pub fn current(&self) -> u64 {
        0
    }

    /// Whether the room's typing set changed after `since`.
    pub fn changed(&self, _room: &RoomId, _since: u64) -> bool {
        false
    }

    /// The room's `m.typing` event for a sync from `since` (`None`: an initial sync, which
    /// gets it when anyone types), if there is one to send; `_viewer` is the syncing user.
    pub fn event(&self, _room: &RoomId, _viewer: &UserId, _since: Option<u64>) -> Option<Value> {
        None
    }
}
