//! Per-user wake-ups for pending `/sync` long-polls.
//!
//! A sync subscribes to its user's channel *before* it looks for news, so an event committed
//! in between still wakes it. The writer pokes only the users with a subscriber: O(1) per
//! member and nothing at all for users who are not syncing.

use std::collections::HashMap;

use parking_lot::Mutex;
use ruma::{OwnedUserId, UserId};
use tokio::sync::watch;

#[derive(Default)]
pub struct Notifier {
    users: Mutex<HashMap<OwnedUserId, watch::Sender<u64>>>,
}

impl Notifier {
    /// A receiver that changes when something for `user` is committed.
    pub fn subscribe(&self, user: &UserId) -> watch::Receiver<u64> {
        let mut users = self.users.lock();
        users.entry(user.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Wakes the given users' pending syncs.
    pub fn wake<'a>(&self, users: impl IntoIterator<Item = &'a UserId>, pos: u64) {
        let mut map = self.users.lock();
        for user in users {
            if let Some(tx) = map.get(user) {
                if tx.receiver_count() == 0 {
                    map.remove(user);
                } else {
                    tx.send_replace(pos);
                }
            }
        }
    }
}
