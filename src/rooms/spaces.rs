//! Spaces and restricted rooms: the room hierarchy (`/hierarchy`) and who may join a
//! `restricted` or `knock_restricted` room without an invite.
//!
//! **Restricted joins.** A user joined to one of the rooms the join rule's `allow` list
//! names (`m.room_membership`) may join; the join event carries
//! `join_authorised_via_users_server`, a local joined member who could have invited them,
//! which the room version's auth rules (ruma state-res) check. Others get 403.
//!
//! **Hierarchy.** A breadth-first walk from the requested room over `m.space.child` events
//! (those with a non-empty `via`), children in the spec's order (`order`, then the child
//! event's timestamp, then the room ID), each room once. A room is listed when the user may
//! see it ([`Rooms::may_preview`]); rooms this server does not know (remote children) are
//! skipped until federation exists. Pages are stateless: `next_batch` is
//! `h<rooms already returned>_<max_depth>_<suggested_only>`, so a later page walks again
//! and skips what was returned; a walk examines at most [`MAX_WALKED`] rooms, which bounds
//! every request (and the hierarchy a client can page through).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use ruma::events::StateEventType;
use ruma::events::room::power_levels::UserPowerLevel;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{Value, json};

use super::{Room, Rooms};
use crate::error::{Error, Result};

/// Rooms one hierarchy request examines at most.
pub const MAX_WALKED: usize = 1000;
/// Rooms one page lists by default and at most.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 100;
/// `max_depth` when absent (and at most).
pub const MAX_DEPTH: usize = 100;

/// The parameters of one hierarchy request.
pub struct HierarchyRequest<'a> {
    pub root: &'a RoomId,
    pub user: &'a UserId,
    pub from: Option<&'a str>,
    pub limit: Option<usize>,
    pub max_depth: Option<usize>,
    pub suggested_only: bool,
}

/// One page of a hierarchy.
pub struct HierarchyPage {
    pub rooms: Vec<Value>,
    pub next_batch: Option<String>,
}

impl Room {
    /// `m.room.join_rules`' content, if set.
    fn join_rules(&self) -> Option<Value> {
        self.state_event(&StateEventType::RoomJoinRules, "").and_then(|p| p.content_as::<Value>())
    }

    /// Whether the room's join rule is `restricted` or `knock_restricted` and its version
    /// knows that rule.
    fn is_restricted(&self, rules: &Value) -> bool {
        match rules.get("join_rule").and_then(Value::as_str) {
            Some("restricted") => self.rules.authorization.restricted_join_rule,
            Some("knock_restricted") => self.rules.authorization.knock_restricted_join_rule,
            _ => false,
        }
    }
}

/// The rooms a restricted join rule's `allow` list names (`m.room_membership` entries).
fn allowed_room_ids(rules: &Value) -> Vec<OwnedRoomId> {
    rules
        .get("allow")
        .and_then(Value::as_array)
        .map(|allow| {
            allow
                .iter()
                .filter(|a| a.get("type").and_then(Value::as_str) == Some("m.room_membership"))
                .filter_map(|a| a.get("room_id").and_then(Value::as_str))
                .filter_map(|id| OwnedRoomId::try_from(id).ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Rooms {
    /// For a join to a restricted room by a user who is not invited: the local member who
    /// authorises it (`None` when the room is not restricted). 403 when the user is in none
    /// of the allowed rooms, or no local member could invite them.
    pub(super) fn restricted_join_authoriser(
        &self,
        room: &Room,
        user: &UserId,
    ) -> Result<Option<OwnedUserId>> {
        let Some(rules) = room.join_rules() else { return Ok(None) };
        if !room.is_restricted(&rules) {
            return Ok(None);
        }
        if !self.in_any(&allowed_room_ids(&rules), user) {
            return Err(Error::Forbidden(
                "You are not invited to this room, nor a member of a room it allows".into(),
            ));
        }
        // The power levels built once; the most powerful local member who can invite (as
        // Synapse), the lowest ID among equals so the choice is stable: one pass.
        let power_levels = room.power_levels();
        let level = |u: &UserId| match power_levels.for_user(u) {
            UserPowerLevel::Int(level) => i64::from(level),
            _ => i64::MAX,
        };
        let members = room.members();
        let mut best: Option<(i64, &OwnedUserId)> = None;
        for (member, membership) in members.iter() {
            if membership != "join"
                || member.server_name() != self.server_name()
                || !power_levels.user_can_invite(member)
            {
                continue;
            }
            let l = level(member);
            let better = match best {
                None => true,
                Some((bl, bu)) => l > bl || (l == bl && member < bu),
            };
            if better {
                best = Some((l, member));
            }
        }
        best.map(|(_, u)| Some(u.clone())).ok_or_else(|| {
            Error::Forbidden("No member of this room can let you in at the moment".into())
        })
    }

    /// Whether `user` is joined to any of `rooms` (those this server knows).
    fn in_any(&self, rooms: &[OwnedRoomId], user: &UserId) -> bool {
        rooms.iter().any(|id| self.get(id).is_some_and(|r| r.is_joined(user)))
    }

    /// Whether `user` may see a room's summary in a hierarchy: never if banned from it; else
    /// they are joined or invited,
    /// its history is world-readable, its join rule lets anyone in or knock (`public`,
    /// `knock`, `knock_restricted`), or it is restricted and they are in an allowed room.
    pub fn may_preview(&self, room: &Room, user: &UserId) -> bool {
        match room.membership_of(user).as_deref() {
            // Banned: not even its summary (the spec: 403 for the root; a child is skipped).
            Some("ban") => return false,
            Some("join" | "invite") => return true,
            _ => {}
        }
        if room.history_visibility() == "world_readable" {
            return true;
        }
        let Some(rules) = room.join_rules() else { return false };
        match rules.get("join_rule").and_then(Value::as_str) {
            Some("public" | "knock" | "knock_restricted") => true,
            Some("restricted") => self.in_any(&allowed_room_ids(&rules), user),
            _ => false,
        }
    }

    /// One page of the space hierarchy under `req.root`.
    pub fn hierarchy(&self, req: &HierarchyRequest<'_>) -> Result<HierarchyPage> {
        if req.limit == Some(0) {
            return Err(Error::InvalidParam("limit must be positive".into()));
        }
        let limit = req.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
        let max_depth = req.max_depth.unwrap_or(MAX_DEPTH).min(MAX_DEPTH);
        let skip = match req.from {
            Some(token) => parse_token(token, max_depth, req.suggested_only)?,
            None => 0,
        };
        // A token of the user's event rate limit per request (429 `M_LIMIT_EXCEEDED`): a
        // walk may examine up to `MAX_WALKED` rooms.
        self.charge_event(req.user)?;
        let root = self
            .get(req.root)
            .filter(|room| self.may_preview(room, req.user))
            .ok_or_else(|| Error::Forbidden("You may not preview this room".into()))?;

        let mut queue: VecDeque<(Arc<Room>, usize)> = VecDeque::from([(root, 0)]);
        let mut seen: HashSet<OwnedRoomId> = HashSet::new();
        let mut listed = 0;
        let mut rooms = Vec::new();
        let mut walked = 0;
        while let Some((room, depth)) = queue.pop_front() {
            if !seen.insert(room.id.clone()) {
                continue;
            }
            walked += 1;
            if walked > MAX_WALKED {
                break;
            }
            if !self.may_preview(&room, req.user) {
                continue;
            }
            let children = space_children(&room, req.suggested_only);
            if depth < max_depth {
                for (child, _) in &children {
                    if let Some(child) = self.get(child)
                        && !seen.contains(&child.id)
                    {
                        queue.push_back((child, depth + 1));
                    }
                }
            }
            listed += 1;
            if listed <= skip {
                continue;
            }
            if rooms.len() == limit {
                // One more room exists: the page ends before it.
                return Ok(HierarchyPage {
                    rooms,
                    next_batch: Some(token(skip + limit, max_depth, req.suggested_only)),
                });
            }
            rooms.push(self.hierarchy_entry(&room, children));
        }
        Ok(HierarchyPage { rooms, next_batch: None })
    }

    fn hierarchy_entry(&self, room: &Room, children: Vec<(OwnedRoomId, Value)>) -> Value {
        let mut entry = room.directory_entry();
        entry["children_state"] = Value::Array(children.into_iter().map(|(_, e)| e).collect());
        entry["room_version"] = json!(room.version.as_str());
        if let Some(rules) = room.join_rules()
            && room.is_restricted(&rules)
        {
            entry["allowed_room_ids"] = json!(allowed_room_ids(&rules));
        }
        if let Some(algorithm) = room
            .state_event(&StateEventType::RoomEncryption, "")
            .and_then(|p| p.content_as::<Value>())
            .and_then(|c| c.get("algorithm").cloned())
        {
            entry["encryption"] = algorithm;
        }
        entry
    }
}

/// The room's `m.space.child` events with a non-empty `via` (and `suggested`, when asked),
/// in the spec's order, each as `(child, stripped event)`.
fn space_children(room: &Room, suggested_only: bool) -> Vec<(OwnedRoomId, Value)> {
    let keys = room.space_child_keys();
    let mut children: Vec<(Option<String>, u64, OwnedRoomId, Value)> = keys
        .iter()
        .filter_map(|key| {
            let pdu = room.state_event(&StateEventType::SpaceChild, key)?;
            let child = OwnedRoomId::try_from(key.as_str()).ok()?;
            let content: Value = pdu.content_as()?;
            let via = content.get("via").and_then(Value::as_array)?;
            if via.is_empty() {
                return None;
            }
            if suggested_only && content.get("suggested") != Some(&Value::Bool(true)) {
                return None;
            }
            // `order`: printable ASCII, at most 50 characters; anything else is ignored.
            let order = content
                .get("order")
                .and_then(Value::as_str)
                .filter(|o| o.len() <= 50 && o.bytes().all(|b| (0x20..=0x7e).contains(&b)))
                .map(str::to_owned);
            let ts: u64 = pdu.origin_server_ts.get().into();
            let stripped = json!({
                "type": "m.space.child",
                "state_key": key,
                "content": content,
                "sender": pdu.sender,
                "origin_server_ts": ts,
            });
            Some((order, ts, child, stripped))
        })
        .collect();
    // Ordered ones first (by `order`), then by timestamp, then by room ID.
    children.sort_by(|a, b| match (&a.0, &b.0) {
        (Some(x), Some(y)) => x.cmp(y).then_with(|| a.1.cmp(&b.1)).then_with(|| a.2.cmp(&b.2)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.1.cmp(&b.1).then_with(|| a.2.cmp(&b.2)),
    });
    children.into_iter().map(|(_, _, child, event)| (child, event)).collect()
}

fn token(skip: usize, max_depth: usize, suggested_only: bool) -> String {
    format!("h{skip}_{max_depth}_{}", u8::from(suggested_only))
}

/// A `from` token: how many rooms were returned before. 400 `M_INVALID_PARAM` for a token
/// that is not ours or was made for another `max_depth` or `suggested_only`.
fn parse_token(token: &str, max_depth: usize, suggested_only: bool) -> Result<usize> {
    let bad = || Error::InvalidParam("Unknown or invalid from token".into());
    let mut parts = token.strip_prefix('h').ok_or_else(bad)?.split('_');
    let skip: usize = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let depth: usize = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let suggested = parts.next().ok_or_else(bad)?;
    if parts.next().is_some() || skip > MAX_WALKED {
        return Err(bad());
    }
    let expected = if suggested_only { "1" } else { "0" };
    if depth != max_depth || suggested != expected {
        return Err(Error::InvalidParam(
            "max_depth and suggested_only must be those of the first request".into(),
        ));
    }
    Ok(skip)
}
