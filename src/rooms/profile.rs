//! Profiles (display name, avatar) and their propagation into member events, bounded by the
//! user's event rate limit (the rest continues in the background).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::OnceLock;
use std::time::Duration;

use parking_lot::Mutex;
use ruma::events::{StateEventType, TimelineEventType};
use ruma::{OwnedUserId, UserId};
use serde_json::{Value, json};

use super::Rooms;
use super::pdu::NewEvent;
use crate::error::{Error, Result};
use crate::storage::StorageError;

/// Longest display name accepted, in bytes.
const MAX_DISPLAYNAME_BYTES: usize = 256;
const MAX_AVATAR_URL_BYTES: usize = 1024;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

impl Rooms {
    /// The profile of a local user; `None` for unknown or remote users.
    pub async fn profile_of(&self, user: &UserId) -> Result<Option<Profile>> {
        if user.server_name() != self.server_name() {
            return Ok(None);
        }
        Ok(self
            .store()
            .user(user.localpart())
            .await?
            .filter(|u| !u.deactivated)
            .map(|u| Profile { displayname: u.displayname, avatar_url: u.avatar_url }))
    }

    /// `m.room.member` content for a membership, with the target's profile.
    pub(super) async fn member_content(
        &self,
        target: &UserId,
        membership: &str,
        reason: Option<&str>,
    ) -> Result<Value> {
        let mut content = json!({"membership": membership});
        if matches!(membership, "join" | "invite")
            && let Some(p) = self.profile_of(target).await?
        {
            if let Some(name) = p.displayname {
                content["displayname"] = json!(name);
            }
            if let Some(url) = p.avatar_url {
                content["avatar_url"] = json!(url);
            }
        }
        if let Some(reason) = reason {
            content["reason"] = json!(reason);
        }
        Ok(content)
    }

    /// Changes a local user's profile and updates their member event in every joined room.
    ///
    /// The change itself always succeeds (the spec wants it to). Its fan-out takes one token
    /// of the user's event rate limit (`limits.events`) per room whose member event it
    /// rewrites: as many rooms as tokens are available are updated before this returns, the
    /// rest by a background task that waits for tokens (as Synapse updates rooms in the
    /// background). Rooms whose member event already shows the profile are skipped.
    pub async fn set_profile(
        &self,
        user: &UserId,
        displayname: Option<Option<String>>,
        avatar_url: Option<Option<String>>,
    ) -> Result<()> {
        if displayname
            .as_ref()
            .and_then(|d| d.as_ref())
            .is_some_and(|d| d.len() > MAX_DISPLAYNAME_BYTES)
        {
            return Err(Error::InvalidParam("Display name too long".into()));
        }
        if avatar_url
            .as_ref()
            .and_then(|a| a.as_ref())
            .is_some_and(|a| a.len() > MAX_AVATAR_URL_BYTES)
        {
            return Err(Error::InvalidParam("Avatar URL too long".into()));
        }
        match self.store().set_profile(user.localpart(), displayname, avatar_url).await {
            Ok(()) => {}
            Err(StorageError::NotFound) => return Err(Error::NotFound("Unknown user".into())),
            Err(e) => return Err(e.into()),
        }
        if let Some(on_change) = self.profile_fanout.on_change.get() {
            on_change(user, self.profile_of(user).await?.as_ref());
        }
        if self.profile_fanout.rerun_if_running(user) {
            return Ok(());
        }
        match self.propagate_profile(user, false).await {
            Ok(true) => {}
            Ok(false) => self.profile_fanout.start(user),
            Err(e) => tracing::warn!(%user, error = %e, "profile update not propagated"),
        }
        Ok(())
    }

    /// Writes the user's current profile into every joined room whose member event shows
    /// another one, a rate-limit token each. Without `wait`, stops at the first refused token
    /// and returns `false`; with it, sleeps until the token comes.
    async fn propagate_profile(&self, user: &UserId, wait: bool) -> Result<bool> {
        for room in self.rooms_of(user) {
            if !room.is_joined(user) {
                continue;
            }
            let content = self.member_content(user, "join", None).await?;
            let current: Value = room
                .state_event(&StateEventType::RoomMember, user.as_str())
                .and_then(|p| p.content_as())
                .unwrap_or_default();
            if ["displayname", "avatar_url"].iter().all(|k| current.get(k) == content.get(k)) {
                continue;
            }
            loop {
                match self.charge_event(user) {
                    Ok(()) => break,
                    Err(Error::LimitExceeded { retry_after_ms }) if wait => {
                        tokio::time::sleep(Duration::from_millis(retry_after_ms)).await;
                    }
                    Err(Error::LimitExceeded { .. }) => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
            let event = NewEvent::state(TimelineEventType::RoomMember, user.as_str(), content);
            if let Err(e) = self.append(&room.id, user, event, None).await {
                tracing::warn!(room_id = %room.id, error = %e, "profile update not propagated");
            }
        }
        Ok(true)
    }

    /// The background part of [`Rooms::set_profile`]: passes over the user's rooms, waiting
    /// for rate-limit tokens, until no profile change arrived during a pass.
    pub async fn finish_profile_update(&self, user: &UserId) {
        loop {
            if let Err(e) = self.propagate_profile(user, true).await {
                tracing::warn!(%user, error = %e, "profile update not propagated");
            }
            if !self.profile_fanout.another_pass(user) {
                return;
            }
        }
    }
}

/// The users whose profile fan-out continues in the background: at most one task per user.
#[derive(Default)]
pub struct ProfileFanout {
    /// User → whether the profile changed again since the running pass began.
    running: Mutex<HashMap<OwnedUserId, bool>>,
    /// Starts [`Rooms::finish_profile_update`] for a user on a task of its own; set at
    /// start-up by the owner of the `Arc` the task needs. Without it (the CLI), a fan-out
    /// stops where the rate limit stopped it.
    spawn: OnceLock<Spawner>,
    /// Told of every profile change once it is stored (the user directory), with the new
    /// profile (`None`: the user is deactivated).
    on_change: OnceLock<OnProfileChange>,
}

/// See [`ProfileFanout::spawn`].
pub type Spawner = Box<dyn Fn(OwnedUserId) + Send + Sync>;

/// See [`ProfileFanout::set_on_change`].
pub type OnProfileChange = Box<dyn Fn(&UserId, Option<&Profile>) + Send + Sync>;

impl ProfileFanout {
    /// Says what learns of every stored profile change (set once at start-up).
    pub fn set_on_change(&self, on_change: OnProfileChange) {
        let _ = self.on_change.set(on_change);
    }

    pub fn set_spawner(&self, spawn: Spawner) {
        if self.spawn.set(spawn).is_err() {
            tracing::warn!("profile fan-out spawner set twice; keeping the first");
        }
    }

    /// If a background fan-out runs for `user`, asks it for another pass and returns true.
    fn rerun_if_running(&self, user: &UserId) -> bool {
        match self.running.lock().get_mut(user) {
            Some(rerun) => {
                *rerun = true;
                true
            }
            None => false,
        }
    }

    fn start(&self, user: &UserId) {
        let Some(spawn) = self.spawn.get() else {
            tracing::warn!(%user, "profile update stopped by the event rate limit");
            return;
        };
        match self.running.lock().entry(user.to_owned()) {
            // Started meanwhile by a concurrent change: it makes another pass.
            Entry::Occupied(mut rerun) => *rerun.get_mut() = true,
            Entry::Vacant(slot) => {
                slot.insert(false);
                spawn(user.to_owned());
            }
        }
    }

    /// At the end of a pass: whether another one is needed; if not, the task ends.
    fn another_pass(&self, user: &UserId) -> bool {
        let mut running = self.running.lock();
        match running.get_mut(user) {
            Some(rerun) if *rerun => {
                *rerun = false;
                true
            }
            _ => {
                running.remove(user);
                false
            }
        }
    }
}
