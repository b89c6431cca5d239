//! Profiles (display name, avatar) and their propagation into member events.

use ruma::UserId;
use ruma::events::TimelineEventType;
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
        for room in self.rooms_of(user) {
            if room.membership_of(user).as_deref() != Some("join") {
                continue;
            }
            let content = self.member_content(user, "join", None).await?;
            let event = NewEvent::state(TimelineEventType::RoomMember, user.as_str(), content);
            if let Err(e) = self.append(&room.id, user, event, None).await {
                tracing::warn!(room_id = %room.id, error = %e, "profile update not propagated");
            }
        }
        Ok(())
    }
}
