//! History visibility: which events of a room a user may read.
//!
//! The spec's rule (client-server API, "History visibility") is judged *at each event*: the
//! `m.room.history_visibility` in force when the event was sent and the user's membership at
//! that event decide, with one forward-looking clause (`shared` history is readable by anyone
//! who joined after it was sent). [`Rooms::readable`] gathers what that needs for one user and
//! room (the room's visibility changes, cached in memory, and the user's membership changes,
//! one prefix scan of the `state_changes` index), and [`HistoryAccess::can_see`] judges an
//! event in O(log n). Every path that shows events (`/messages`, `/context`, `/event`,
//! `/timestamp_to_event`, `/sync`) asks it.

use std::sync::Arc;

use ruma::UserId;
use ruma::events::TimelineEventType;

use super::pdu::Pdu;
use super::state::StateMap;
use super::{Room, Rooms};
use crate::error::{Error, Result};

/// `m.room.history_visibility` values; anything unknown reads as `shared` (the spec's rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    WorldReadable,
    Shared,
    Invited,
    Joined,
}

impl Visibility {
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("world_readable") => Self::WorldReadable,
            Some("invited") => Self::Invited,
            Some("joined") => Self::Joined,
            _ => Self::Shared,
        }
    }
}

/// A room's visibility changes: `(position, visibility from that event on)`, oldest first.
pub type VisibilityHistory = Arc<Vec<(u64, Visibility)>>;

/// What one user may read of one room's history.
#[derive(Debug, Clone)]
pub struct HistoryAccess {
    visibility: VisibilityHistory,
    /// The user's membership changes: `(position, membership)`, oldest first. Empty for the
    /// fast path (`everything`), where they are not needed.
    memberships: Vec<(u64, String)>,
    /// Every event is readable (joined now, and the room's history was never restricted).
    everything: bool,
    /// The room's history is world-readable now.
    world_readable_now: bool,
    user: String,
    /// Whom the user ignores: their non-state events are hidden ([`super::ignore`]).
    ignored: super::ignore::IgnoredSet,
    /// The earliest position that can be readable.
    pub from: u64,
    /// The latest position that can be readable; `u64::MAX` while the user may read on.
    pub until: u64,
}

impl HistoryAccess {
    /// The stream position whose room state the user may read (`/state`, `/members`): the
    /// current state for members and in rooms world-readable now; the state when they left
    /// for former members. Invitees and users banned before they ever joined get 403 (an
    /// invitee sees the stripped state of their invite, nothing more).
    pub fn state_until(&self) -> Result<u64> {
        if self.everything || self.world_readable_now {
            return Ok(u64::MAX);
        }
        match self.memberships.last() {
            Some((_, m)) if m == "join" => Ok(u64::MAX),
            Some((left, _)) if self.ever_joined() => Ok(*left),
            _ => Err(Error::Forbidden("You are not in this room".into())),
        }
    }

    /// Whether a coarse position window allows `pos` (a cheap pre-check; `can_see` decides).
    pub fn contains(&self, pos: u64) -> bool {
        self.from <= pos && pos <= self.until
    }

    /// Whether the user may see `pdu`, stored at stream position `pos`.
    pub fn can_see(&self, pos: u64, pdu: &Pdu) -> bool {
        if pdu.state_key.is_none() && self.ignores(&pdu.sender) {
            return false;
        }
        self.history_allows(pos, pdu)
    }

    /// Whether the history visibility lets the user see `pdu`, whoever they ignore (a read
    /// receipt may name an ignored user's event: the client may have shown it before).
    pub fn history_allows(&self, pos: u64, pdu: &Pdu) -> bool {
        if self.everything {
            return true;
        }
        if !self.contains(pos) {
            return false;
        }
        let visibility = self.visibility_before(pos);
        let membership = self.membership_before(pos);
        if self.allows(visibility, membership, pos) {
            return true;
        }
        // A visibility change is readable under the old or the new setting; one's own
        // membership change under the old or the new membership.
        match (&pdu.kind, pdu.state_key.as_deref()) {
            (TimelineEventType::RoomHistoryVisibility, Some("")) => {
                let after = self.visibility_at(pos).unwrap_or(visibility);
                self.allows(after, membership, pos)
            }
            (TimelineEventType::RoomMember, Some(key)) if key == self.user => {
                // As Synapse does, one always sees one's own departure from an invite or
                // a join (else a rejected invite would never leave the client's list).
                let after = self.membership_at(pos).or(membership);
                matches!(membership, Some("invite" | "join")) || self.allows(visibility, after, pos)
            }
            _ => false,
        }
    }

    /// Whether the user ignores `sender` (whose messages `can_see` then hides).
    pub fn ignores(&self, sender: &UserId) -> bool {
        !self.ignored.is_empty() && self.ignored.contains(sender)
    }

    /// Everyone the user ignores (thread summaries leave their replies out).
    pub fn ignored_users(&self) -> impl Iterator<Item = &UserId> {
        self.ignored.iter().map(|u| u.as_ref())
    }

    /// Whether the user was ever joined (`true` on the fast path, where they are now).
    pub fn ever_joined(&self) -> bool {
        self.everything || self.memberships.iter().any(|(_, m)| m == "join")
    }

    fn allows(&self, visibility: Visibility, membership: Option<&str>, pos: u64) -> bool {
        match (visibility, membership) {
            (Visibility::WorldReadable, _) | (_, Some("join")) => true,
            (Visibility::Shared, _) => self.joined_at_or_after(pos),
            (Visibility::Invited, Some("invite")) => true,
            _ => false,
        }
    }

    /// The visibility in force before the event at `pos` (`shared` before any was set).
    fn visibility_before(&self, pos: u64) -> Visibility {
        let i = self.visibility.partition_point(|(p, _)| *p < pos);
        i.checked_sub(1).map_or(Visibility::Shared, |i| self.visibility[i].1)
    }

    /// The visibility set by the event at `pos`, if it set one.
    fn visibility_at(&self, pos: u64) -> Option<Visibility> {
        let i = self.visibility.partition_point(|(p, _)| *p < pos);
        self.visibility.get(i).filter(|(p, _)| *p == pos).map(|(_, v)| *v)
    }

    fn membership_before(&self, pos: u64) -> Option<&str> {
        let i = self.memberships.partition_point(|(p, _)| *p < pos);
        i.checked_sub(1).map(|i| self.memberships[i].1.as_str())
    }

    fn membership_at(&self, pos: u64) -> Option<&str> {
        let i = self.memberships.partition_point(|(p, _)| *p < pos);
        self.memberships.get(i).filter(|(p, _)| *p == pos).map(|(_, m)| m.as_str())
    }

    fn joined_at_or_after(&self, pos: u64) -> bool {
        self.memberships.iter().any(|(p, m)| *p >= pos && m == "join")
    }
}

/// A user's membership in a room as of some stream position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipAt {
    pub membership: String,
    /// Where this membership began (later member events that kept it do not count).
    pub since: u64,
    /// The latest index row at or before the position asked about: the event that last
    /// changed the membership (a departure, for `leave` and `ban`).
    pub pos: u64,
}

impl Rooms {
    /// The user's membership in the room as of stream position `pos`, from the state-change
    /// index (one prefix scan).
    pub async fn membership_at(
        &self,
        room: &Room,
        user: &UserId,
        pos: u64,
    ) -> Result<Option<MembershipAt>> {
        let changes =
            self.store().state_changes(room.id.as_str(), "m.room.member", user.as_str()).await?;
        let upto: Vec<(u64, String)> = changes
            .into_iter()
            .take_while(|(p, _)| *p <= pos)
            .map(|(p, c)| (p, c.value.unwrap_or_default()))
            .collect();
        let Some((last_pos, membership)) = upto.last().cloned() else { return Ok(None) };
        let since = upto
            .iter()
            .rev()
            .take_while(|(_, m)| *m == membership)
            .last()
            .map_or(last_pos, |(p, _)| *p);
        Ok(Some(MembershipAt { membership, since, pos: last_pos }))
    }

    /// The room state `user` may read, now or (`at`) as of a stream position: members read
    /// the current state, former members the state when they left, anyone the state of a
    /// room world-readable now ([`HistoryAccess::state_until`]). The state as of a past
    /// position is readable only where the event it follows is (per-event visibility).
    pub async fn visible_state(
        &self,
        room: &Room,
        user: &UserId,
        at: Option<u64>,
    ) -> Result<Arc<StateMap>> {
        let access = self.readable(room, user).await?;
        let until = access.state_until()?;
        let pos = at.map_or(until, |at| at.min(until));
        if at.is_some() {
            let before = self
                .store()
                .room_events(room.id.as_str(), None, Some(pos.saturating_add(1)), true, 1)
                .await?;
            if let Some((p, event_id)) = before.first() {
                let visible =
                    self.event(event_id).await?.is_some_and(|(_, pdu)| access.can_see(*p, &pdu));
                if !visible {
                    return Err(Error::Forbidden(
                        "You may not see the room's state at that point".into(),
                    ));
                }
            }
        }
        self.state_at(room, pos).await
    }

    /// What `user` may read of `room`'s history. Refused (403) for users who never had a
    /// membership in the room unless its history is world-readable now, as Synapse does.
    pub async fn readable(&self, room: &Room, user: &UserId) -> Result<HistoryAccess> {
        let visibility = room.visibility_history();
        let world_now = visibility.last().is_some_and(|(_, v)| *v == Visibility::WorldReadable);
        let restricted =
            visibility.iter().any(|(_, v)| matches!(v, Visibility::Invited | Visibility::Joined));
        let user_id = user.as_str().to_owned();
        let ignored = self.ignored_by(user).await?;
        if !restricted && room.is_joined(user) {
            return Ok(HistoryAccess {
                visibility,
                memberships: Vec::new(),
                everything: true,
                world_readable_now: world_now,
                user: user_id,
                ignored,
                from: 0,
                until: u64::MAX,
            });
        }
        let memberships: Vec<(u64, String)> = self
            .store()
            .state_changes(room.id.as_str(), "m.room.member", user.as_str())
            .await?
            .into_iter()
            .map(|(pos, change)| (pos, change.value.unwrap_or_default()))
            .collect();
        if memberships.is_empty() && !world_now {
            return Err(Error::Forbidden("You are not in this room".into()));
        }
        let (from, until) = window(&visibility, &memberships);
        Ok(HistoryAccess {
            visibility,
            memberships,
            everything: false,
            world_readable_now: world_now,
            user: user_id,
            ignored,
            from,
            until,
        })
    }
}

/// The positions outside which nothing can be readable: from the first moment the user
/// could read (a world-readable or, for someone who ever joined, shared era; their first
/// invite or join) to the last (their departure, unless world-readable history followed).
fn window(visibility: &[(u64, Visibility)], memberships: &[(u64, String)]) -> (u64, u64) {
    let ever_joined = memberships.iter().any(|(_, m)| m == "join");
    let mut from = memberships
        .iter()
        .find(|(_, m)| m == "join" || m == "invite")
        .map_or(u64::MAX, |(p, _)| *p);
    // Eras: `shared` from the start until the first change, then each change's value.
    let eras = std::iter::once((0, Visibility::Shared)).chain(visibility.iter().copied());
    for (start, v) in eras {
        if v == Visibility::WorldReadable || (v == Visibility::Shared && ever_joined) {
            from = from.min(start);
            break;
        }
    }
    let last = memberships.last();
    let still_in = last.is_some_and(|(_, m)| m == "join" || m == "invite");
    let until = match last {
        _ if still_in => u64::MAX,
        Some((left, _)) => {
            let world_later =
                visibility.iter().any(|(p, v)| *p >= *left && *v == Visibility::WorldReadable)
                    || visibility
                        .iter()
                        .rev()
                        .find(|(p, _)| *p < *left)
                        .is_some_and(|(_, v)| *v == Visibility::WorldReadable);
            if world_later { u64::MAX } else { *left }
        }
        None => u64::MAX, // never a member: only world-readable eras, judged per event
    };
    (from.min(until), until)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(visibility: Vec<(u64, Visibility)>, memberships: Vec<(u64, &str)>) -> HistoryAccess {
        let memberships: Vec<(u64, String)> =
            memberships.into_iter().map(|(p, m)| (p, m.to_owned())).collect();
        let visibility = Arc::new(visibility);
        let (from, until) = window(&visibility, &memberships);
        HistoryAccess {
            visibility,
            memberships,
            everything: false,
            world_readable_now: false,
            user: "@bob:x".into(),
            ignored: Default::default(),
            from,
            until,
        }
    }

    fn message() -> Pdu {
        let json = serde_json::value::to_raw_value(&serde_json::json!({
            "type": "m.room.message", "sender": "@alice:x", "content": {},
            "origin_server_ts": 1, "prev_events": [], "auth_events": [], "depth": 1,
        }))
        .unwrap();
        let id = ruma::EventId::parse("$e").unwrap();
        let room = ruma::RoomId::parse("!r:x").unwrap();
        Pdu::from_json(json, &id, &room).unwrap()
    }

    #[test]
    fn shared_history_is_readable_by_whoever_joined_later() {
        let a = access(vec![], vec![(10, "join"), (20, "leave")]);
        let m = message();
        assert!(a.can_see(5, &m), "before the join, shared");
        assert!(a.can_see(15, &m), "while joined");
        assert!(!a.can_see(25, &m), "after leaving");
    }

    #[test]
    fn an_invite_rejected_or_a_ban_without_a_join_reads_nothing() {
        let m = message();
        let rejected = access(vec![], vec![(10, "invite"), (12, "leave")]);
        assert!(!(0..20).any(|p| rejected.can_see(p, &m)));
        let banned = access(vec![], vec![(10, "ban")]);
        assert!(!(0..20).any(|p| banned.can_see(p, &m)));
    }

    #[test]
    fn joined_and_invited_count_from_the_membership() {
        let m = message();
        let joined = access(vec![(2, Visibility::Joined)], vec![(10, "invite"), (12, "join")]);
        assert!(!joined.can_see(11, &m));
        assert!(joined.can_see(13, &m));
        let invited = access(vec![(2, Visibility::Invited)], vec![(10, "invite"), (12, "join")]);
        assert!(!invited.can_see(9, &m));
        assert!(invited.can_see(11, &m));
    }

    #[test]
    fn world_readable_eras_are_readable_by_anyone() {
        let m = message();
        let a = access(vec![(2, Visibility::WorldReadable), (8, Visibility::Joined)], vec![]);
        assert!(a.can_see(5, &m));
        assert!(!a.can_see(9, &m));
    }
}
