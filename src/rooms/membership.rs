//! Membership changes: join, invite, leave, kick, ban, unban, forget.
//!
//! Each becomes an `m.room.member` event that the room version's auth rules accept or refuse;
//! the checks here only give clearer errors for the common mistakes before that.
//!
//! Every change a user asks for takes a token from the per-user event rate limiter
//! (`limits.events`, 429 `M_LIMIT_EXCEEDED`), like a message does; no-ops and refused
//! requests cost nothing. Leaving every room on deactivation is the server's doing and is not
//! limited.

use ruma::events::TimelineEventType;
use ruma::{OwnedEventId, RoomId, UserId};

use super::Rooms;
use super::pdu::NewEvent;
use crate::error::{Error, Result};
use crate::storage::StorageError;

impl Rooms {
    async fn member_event(
        &self,
        target: &UserId,
        membership: &str,
        reason: Option<&str>,
    ) -> Result<NewEvent> {
        let content = self.member_content(target, membership, reason).await?;
        Ok(NewEvent::state(TimelineEventType::RoomMember, target.as_str(), content))
    }

    /// Takes one token from `user`'s event rate limit, or fails with `M_LIMIT_EXCEEDED`.
    pub fn charge_event(&self, user: &UserId) -> Result<()> {
        self.limits.events.check(user.as_str())
    }

    fn membership(&self, room_id: &RoomId, user: &UserId) -> Result<Option<String>> {
        let room = self.get(room_id).ok_or_else(|| Error::NotFound("Unknown room".into()))?;
        Ok(room.membership_of(user))
    }

    /// Joins a room this server knows. Joining again is a no-op.
    /// A client's join: a guest account may join only rooms whose `m.room.guest_access`
    /// is `can_join` (the Guest access module's rule), anyone else as [`Self::join`].
    pub async fn join_as(&self, room_id: &RoomId, user: &UserId, guest: bool) -> Result<()> {
        if guest
            && let Some(room) = self.get(room_id)
            && !room.is_joined(user)
            && !room.guests_can_join()
        {
            return Err(Error::Forbidden("Guest access is not allowed in this room".into()));
        }
        self.join(room_id, user).await?;
        // Guest access revoked while the join was in flight: `evict_guests` of that change
        // may have looked at the members before this join was applied, so the guest leaves
        // here (a later change sees the guest joined and evicts it itself).
        if guest && self.get(room_id).is_some_and(|room| !room.guests_can_join()) {
            self.leave_room(room_id, user, Some("Guest access revoked"), false).await?;
            return Err(Error::Forbidden("Guest access is not allowed in this room".into()));
        }
        Ok(())
    }

    /// After `m.room.guest_access` changed: if guests may no longer join, every joined local
    /// guest account leaves (the Guest access module's "MUST set those users' membership
    /// to leave"). One user-record read per local member, only on such a change.
    pub async fn evict_guests(&self, room_id: &RoomId) {
        let Some(room) = self.get(room_id) else { return };
        if room.guests_can_join() {
            return;
        }
        for user in room.joined() {
            if user.server_name().as_str() != self.server_name() {
                continue;
            }
            let guest = match self.store().user(user.localpart()).await {
                Ok(record) => record.is_some_and(|u| u.guest),
                Err(e) => {
                    tracing::warn!(%user, error = %e, "could not read user record");
                    false
                }
            };
            if guest
                && let Err(e) =
                    self.leave_room(room_id, &user, Some("Guest access revoked"), false).await
            {
                tracing::warn!(%room_id, %user, error = %e, "could not remove guest");
            }
        }
    }

    pub async fn join(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        let room = self.get(room_id).ok_or_else(|| {
            Error::NotFound(
                "No known servers for this room (federation is not available yet)".into(),
            )
        })?;
        if room.is_joined(user) {
            return Ok(());
        }
        if room.membership_of(user).as_deref() == Some("ban") {
            return Err(Error::Forbidden("You are banned from this room".into()));
        }
        // A restricted room (`restricted`, `knock_restricted`) lets in, uninvited, members of
        // the rooms its `allow` list names; the join names a local member who could have
        // invited them, which the auth rules check.
        // Charged first: choosing an authoriser walks the room's members.
        self.charge_event(user)?;
        let authoriser = if room.membership_of(user).as_deref() == Some("invite") {
            None
        } else {
            self.restricted_join_authoriser(&room, user)?
        };
        let mut event = self.member_event(user, "join", None).await?;
        if let Some(authoriser) = authoriser {
            event.content["join_authorised_via_users_server"] =
                serde_json::Value::String(authoriser.to_string());
        }
        self.append(room_id, user, event, None).await?;
        Ok(())
    }

    pub async fn invite(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<OwnedEventId> {
        self.require_joined(room_id, sender)?;
        self.check_invitee(target).await?;
        match self.membership(room_id, target)?.as_deref() {
            Some("join") => return Err(Error::Forbidden("The user is already in the room".into())),
            Some("ban") => return Err(Error::Forbidden("The user is banned from the room".into())),
            _ => {}
        }
        self.charge_event(sender)?;
        self.append(room_id, sender, self.member_event(target, "invite", reason).await?, None).await
    }

    /// An invite must be able to reach its target: a local, active account (remote users
    /// need federation, which is not there yet).
    pub async fn check_invitee(&self, target: &UserId) -> Result<()> {
        if target.server_name() != self.server_name() {
            return Err(Error::Unknown(format!(
                "Cannot invite {target}: this server does not federate yet"
            )));
        }
        if self.profile_of(target).await?.is_none() {
            return Err(Error::NotFound(format!("User {target} does not exist")));
        }
        Ok(())
    }

    /// Leaves a room, or rejects an invite.
    pub async fn leave(&self, room_id: &RoomId, user: &UserId, reason: Option<&str>) -> Result<()> {
        self.leave_room(room_id, user, reason, true).await
    }

    /// `leave`, charged to the user's event rate limit when `charged`.
    async fn leave_room(
        &self,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<&str>,
        charged: bool,
    ) -> Result<()> {
        match self.membership(room_id, user)?.as_deref() {
            Some("join" | "invite" | "knock") => {}
            Some("leave" | "ban") => return Ok(()),
            _ => return Err(Error::Forbidden("You are not in this room".into())),
        }
        if charged {
            self.charge_event(user)?;
        }
        self.append(room_id, user, self.member_event(user, "leave", reason).await?, None).await?;
        Ok(())
    }

    pub async fn kick(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<OwnedEventId> {
        self.require_joined(room_id, sender)?;
        if !matches!(
            self.membership(room_id, target)?.as_deref(),
            Some("join" | "invite" | "knock")
        ) {
            return Err(Error::Forbidden("The target user is not in the room".into()));
        }
        self.charge_event(sender)?;
        self.append(room_id, sender, self.member_event(target, "leave", reason).await?, None).await
    }

    pub async fn ban(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<OwnedEventId> {
        self.require_joined(room_id, sender)?;
        self.charge_event(sender)?;
        self.append(room_id, sender, self.member_event(target, "ban", reason).await?, None).await
    }

    pub async fn unban(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<OwnedEventId> {
        self.require_joined(room_id, sender)?;
        if self.membership(room_id, target)?.as_deref() != Some("ban") {
            return Err(Error::Forbidden("The user is not banned".into()));
        }
        self.charge_event(sender)?;
        self.append(room_id, sender, self.member_event(target, "leave", reason).await?, None).await
    }

    /// Leaves every room the user is in and rejects every invite (account deactivation).
    /// Returns how many rooms were left; failures are logged and skipped.
    pub async fn leave_all(&self, user: &UserId) -> usize {
        let mut left = 0;
        for room in self.rooms_of(user) {
            if matches!(room.membership_of(user).as_deref(), Some("join" | "invite" | "knock")) {
                match self.leave_room(&room.id, user, Some("Account deactivated"), false).await {
                    Ok(()) => left += 1,
                    Err(e) => tracing::warn!(room_id = %room.id, error = %e, "could not leave"),
                }
            }
        }
        left
    }

    /// Forgets a room the user has left.
    pub async fn forget(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        match self.membership(room_id, user)?.as_deref() {
            Some("join" | "invite" | "knock") => {
                Err(Error::BadState("You must leave the room before forgetting it".into()))
            }
            None => Err(Error::NotFound("You have never been in this room".into())),
            _ => match self.store().forget_room(user.as_str(), room_id.as_str()).await {
                Ok(()) | Err(StorageError::NotFound) => Ok(()),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Fails with 403 unless the user is joined to the room.
    pub fn require_joined(
        &self,
        room_id: &RoomId,
        user: &UserId,
    ) -> Result<std::sync::Arc<super::Room>> {
        let room =
            self.get(room_id).ok_or_else(|| Error::Forbidden("You are not in this room".into()))?;
        if !room.is_joined(user) {
            return Err(Error::Forbidden("You are not in this room".into()));
        }
        Ok(room)
    }
}
