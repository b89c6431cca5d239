//! The device-list stream: which users' device lists changed, and when (the fourth part of
//! sync tokens). A user's device list changes when a device uploads new device keys or a
//! device is deleted (logout, `/devices`, a password change that logs devices out,
//! deactivation). `/sync` and `/keys/changes` report the changes of users the syncing user
//! shares a room with (see `api::sync::device_lists`).
//!
//! Changes are rare, so they are written one at a time: a position is taken, stored
//! (fsynced) in the batch of the write that causes the change (a device deletion stores it
//! with the deletion, so no crash can separate them), and only then published and the
//! affected users woken (the user and everyone sharing a room with them), which keeps
//! positions published in order.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use ruma::{OwnedRoomId, OwnedUserId, UserId};

use crate::error::{Error, Result};
use crate::rooms::notify::{Change, Notifier, Stream};
use crate::services::Services;
use crate::storage::rooms::MembershipRecord;
use crate::storage::{DeviceListChange, StorageResult, Store};

/// Who shares a room with a user (set once the rooms service exists).
pub type Audience = Box<dyn Fn(&UserId) -> Vec<OwnedUserId> + Send + Sync>;

/// Each user's latest change, by user and by position.
#[derive(Default)]
struct Changes {
    by_user: HashMap<OwnedUserId, u64>,
    by_pos: BTreeMap<u64, OwnedUserId>,
}

impl Changes {
    fn record(&mut self, user: OwnedUserId, pos: u64) {
        if let Some(old) = self.by_user.insert(user.clone(), pos) {
            self.by_pos.remove(&old);
        }
        self.by_pos.insert(pos, user);
    }
}

pub struct DeviceLists {
    store: Arc<dyn Store>,
    notifier: Arc<Notifier>,
    current: AtomicU64,
    changes: RwLock<Changes>,
    /// One change at a time: positions are published in the order they are written.
    writer: tokio::sync::Mutex<()>,
    audience: std::sync::OnceLock<Audience>,
}

impl DeviceLists {
    pub async fn load(store: Arc<dyn Store>, notifier: Arc<Notifier>) -> Result<Self> {
        let mut changes = Changes::default();
        let mut current = 0;
        for (user, pos) in store.device_list_changes().await? {
            let user = OwnedUserId::try_from(user)
                .map_err(|e| Error::Internal(format!("stored device-list change: {e}")))?;
            current = current.max(pos);
            changes.record(user, pos);
        }
        Ok(Self {
            store,
            notifier,
            current: AtomicU64::new(current),
            changes: RwLock::new(changes),
            writer: tokio::sync::Mutex::new(()),
            audience: std::sync::OnceLock::new(),
        })
    }

    /// Sets who is woken besides the user when a user's device list changes.
    pub fn set_audience(&self, audience: Audience) {
        let _ = self.audience.set(audience);
    }

    /// The latest published position.
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Acquire)
    }

    /// Records a change of `user`'s device list that no other write carries, and wakes the
    /// syncs of everyone concerned.
    pub async fn changed(&self, user: &UserId) -> Result<()> {
        let store = self.store.clone();
        self.change(user, |change| async move { store.set_device_list_changed(change).await }).await
    }

    /// Runs `write`, which changes `user`'s device list and stores the [`DeviceListChange`]
    /// it is given in its own batch; once it is durable, publishes the change and wakes the
    /// syncs of everyone concerned. If `write` fails, nothing is published.
    pub async fn change<T, F, Fut>(&self, user: &UserId, write: F) -> Result<T>
    where
        F: FnOnce(DeviceListChange) -> Fut,
        Fut: Future<Output = StorageResult<T>>,
    {
        // Held until published: positions are published in the order they are written.
        let _writer = self.writer.lock().await;
        let pos = self.current() + 1;
        let out = write(DeviceListChange { user_id: user.to_string(), pos }).await?;
        self.changes.write().record(user.to_owned(), pos);
        // Announced before published: a sync that sees the position has been told.
        let mut woken = self.audience.get().map(|a| a(user)).unwrap_or_default();
        woken.push(user.to_owned());
        let change = Change::user(Stream::DeviceLists, pos);
        self.notifier.wake(woken.iter().map(|u| u.as_ref()), change);
        self.current.store(pos, Ordering::Release);
        Ok(out)
    }

    /// The users whose latest device-list change is in `(from, to]`.
    pub fn changed_between(&self, from: u64, to: u64) -> Vec<OwnedUserId> {
        if from >= to {
            return Vec::new();
        }
        self.changes.read().by_pos.range(from + 1..=to).map(|(_, u)| u.clone()).collect()
    }
}

/// A point in the two streams device-list reports depend on: events (memberships) and
/// device-list changes.
#[derive(Debug, Clone, Copy)]
pub struct ListsPos {
    pub events: u64,
    pub device_lists: u64,
}

/// What `/sync`'s `device_lists` and `/keys/changes` report.
#[derive(Debug, Default, serde::Serialize)]
pub struct ListChanges {
    /// Users sharing a room with the user whose device list changed, users the user started
    /// sharing a room with, and the user themselves if their own list changed.
    pub changed: BTreeSet<OwnedUserId>,
    /// Users the user no longer shares any room with.
    pub left: BTreeSet<OwnedUserId>,
}

fn is_departure(membership: &str) -> bool {
    matches!(membership, "leave" | "ban")
}

impl Services {
    /// Device-list news for `user` in `(from, to]`. The cost follows what changed: the users
    /// whose lists changed in the window (a range of an in-memory index) and the
    /// memberships of rooms whose membership changed in the window (`Room::membership_changed_at`);
    /// other rooms, however busy, are not read. `only`: the rooms where anything happened in
    /// the window, when the caller knows them (a woken sync pass: the rooms announced to it),
    /// so that not even the user's other rooms are looked at.
    pub async fn device_list_changes(
        &self,
        user: &UserId,
        from: ListsPos,
        to: ListsPos,
        only: Option<&HashSet<OwnedRoomId>>,
    ) -> Result<ListChanges> {
        let in_window = |r: &MembershipRecord| {
            let began = r.since.unwrap_or(r.pos);
            began > from.events && began <= to.events
        };
        let rooms = match only {
            Some(ids) => ids.iter().filter_map(|id| self.rooms.get(id)).collect(),
            None => self.rooms.rooms_of(user),
        };
        let mut started = HashSet::new();
        let mut gone = HashSet::new();
        for room in rooms {
            // Memberships that began in the window: only rooms whose memberships changed
            // after `from` are read (not every room with a new message: a message in a big
            // room must not make each member's sync read the whole member list).
            if room.membership_changed_at() <= from.events {
                continue;
            }
            let me_joined = room.is_joined(user);
            let records = self.store.room_memberships(room.id.as_str()).await?;
            let mine = records.iter().find(|(u, _)| u == user.as_str()).map(|(_, r)| r);
            let i_changed = mine.is_some_and(in_window);
            let joined = || {
                records
                    .iter()
                    .filter(|(_, r)| r.membership == "join")
                    .filter_map(|(u, _)| OwnedUserId::try_from(u.as_str()).ok())
            };
            if me_joined && i_changed {
                started.extend(joined());
            } else if me_joined {
                for (other, record) in records.iter().filter(|(_, r)| in_window(r)) {
                    let Ok(other) = OwnedUserId::try_from(other.as_str()) else { continue };
                    if record.membership == "join" {
                        started.insert(other);
                    } else if is_departure(&record.membership) {
                        gone.insert(other);
                    }
                }
            } else if i_changed && mine.is_some_and(|r| is_departure(&r.membership)) {
                gone.extend(joined());
            }
        }
        // Whether `other` is joined to a room `user` is joined to (asked only about users
        // in the news, so the user's own rooms are not listed for every sync).
        let shares = |other: &UserId| {
            self.rooms.rooms_of(other).iter().any(|r| r.is_joined(other) && r.is_joined(user))
        };
        let mut out = ListChanges::default();
        for other in self.device_lists.changed_between(from.device_lists, to.device_lists) {
            if other == *user || shares(&other) {
                out.changed.insert(other);
            }
        }
        for other in started {
            if other != *user && shares(&other) {
                out.changed.insert(other);
            }
        }
        out.left = gone.into_iter().filter(|u| u != user && !shares(u)).collect();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_latest_change_of_a_user_is_indexed() {
        let mut changes = Changes::default();
        let alice = OwnedUserId::try_from("@alice:x").unwrap();
        let bob = OwnedUserId::try_from("@bob:x").unwrap();
        changes.record(alice.clone(), 1);
        changes.record(bob.clone(), 2);
        changes.record(alice.clone(), 3);
        let by_pos: Vec<_> = changes.by_pos.iter().map(|(p, u)| (*p, u.clone())).collect();
        assert_eq!(by_pos, vec![(2, bob), (3, alice.clone())]);
        assert_eq!(changes.by_user[&alice], 3);
    }
}
