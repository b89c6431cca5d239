//! The device-list stream: which users' device lists changed, and when (the fourth part of
//! sync tokens). A user's device list changes when a device uploads new device keys or a
//! device is deleted (logout, `/devices`, a password change that logs devices out,
//! deactivation). `/sync` and `/keys/changes` report the changes of users the syncing user
//! shares a room with (see `api::sync::device_lists`).
//!
//! Changes are rare, so they are written one at a time: a position is taken, stored
//! (fsynced), and only then published and the affected users woken (the user and everyone
//! sharing a room with them), which keeps positions published in order.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use ruma::{OwnedUserId, UserId};

use crate::error::{Error, Result};
use crate::rooms::notify::Notifier;
use crate::services::Services;
use crate::storage::Store;
use crate::storage::rooms::MembershipRecord;

/// Who shares a room with a user (set once the rooms service exists).
pub type Audience = Box<dyn Fn(&UserId) -> Vec<OwnedUserId> + Send + Sync>;

pub struct DeviceLists {
    store: Arc<dyn Store>,
    notifier: Arc<Notifier>,
    current: AtomicU64,
    /// `user → position of the latest change`.
    changed: RwLock<HashMap<OwnedUserId, u64>>,
    /// One change at a time: positions are published in the order they are written.
    writer: tokio::sync::Mutex<()>,
    audience: std::sync::OnceLock<Audience>,
}

impl DeviceLists {
    pub async fn load(store: Arc<dyn Store>, notifier: Arc<Notifier>) -> Result<Self> {
        let mut changed = HashMap::new();
        let mut current = 0;
        for (user, pos) in store.device_list_changes().await? {
            let user = OwnedUserId::try_from(user)
                .map_err(|e| Error::Internal(format!("stored device-list change: {e}")))?;
            current = current.max(pos);
            changed.insert(user, pos);
        }
        Ok(Self {
            store,
            notifier,
            current: AtomicU64::new(current),
            changed: RwLock::new(changed),
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

    /// Records a change of `user`'s device list and wakes the syncs of everyone concerned.
    pub async fn changed(&self, user: &UserId) -> Result<()> {
        let _writer = self.writer.lock().await;
        let pos = self.current() + 1;
        self.store.set_device_list_changed(user.as_str(), pos).await?;
        self.changed.write().insert(user.to_owned(), pos);
        self.current.store(pos, Ordering::Release);
        let mut woken = self.audience.get().map(|a| a(user)).unwrap_or_default();
        woken.push(user.to_owned());
        self.notifier.wake(woken.iter().map(|u| u.as_ref()), pos);
        Ok(())
    }

    /// Whether `user`'s device list changed in `(from, to]`.
    pub fn changed_between(&self, user: &UserId, from: u64, to: u64) -> bool {
        self.changed.read().get(user).is_some_and(|&pos| pos > from && pos <= to)
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
#[derive(Debug, Default)]
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
    /// Device-list news for `user` in `(from, to]`. Only rooms with events after
    /// `from.events` are read from storage, for the memberships that began in the window.
    pub async fn device_list_changes(
        &self,
        user: &UserId,
        from: ListsPos,
        to: ListsPos,
    ) -> Result<ListChanges> {
        let in_window = |r: &MembershipRecord| {
            let began = r.since.unwrap_or(r.pos);
            began > from.events && began <= to.events
        };
        let mut shared = HashSet::new();
        let mut started = HashSet::new();
        let mut gone = HashSet::new();
        for room in self.rooms.rooms_of(user) {
            let members = room.members();
            let joined =
                || members.iter().filter(|(_, m)| m.as_str() == "join").map(|(u, _)| u.clone());
            let me_joined = members.get(user).is_some_and(|m| m == "join");
            if me_joined {
                shared.extend(joined());
            }
            if room.last_pos() <= from.events {
                continue;
            }
            let records = self.store.room_memberships(room.id.as_str()).await?;
            let mine = records.iter().find(|(u, _)| u == user.as_str()).map(|(_, r)| r);
            let i_changed = mine.is_some_and(in_window);
            if me_joined && i_changed {
                started.extend(joined());
            } else if me_joined {
                for (other, record) in &records {
                    let Ok(other) = OwnedUserId::try_from(other.as_str()) else { continue };
                    if !in_window(record) {
                        continue;
                    }
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
        shared.remove(user);
        let mut out = ListChanges::default();
        for other in &shared {
            if started.contains(other)
                || self.device_lists.changed_between(other, from.device_lists, to.device_lists)
            {
                out.changed.insert(other.clone());
            }
        }
        if self.device_lists.changed_between(user, from.device_lists, to.device_lists) {
            out.changed.insert(user.to_owned());
        }
        out.left = gone.into_iter().filter(|u| u != user && !shared.contains(u)).collect();
        Ok(out)
    }
}
