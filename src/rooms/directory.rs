//! Room aliases, the room directory and power-level lookups they need.

use ruma::events::StateEventType;
use std::sync::Arc;

use ruma::events::room::power_levels::{
    PowerLevelAction, RoomPowerLevels, RoomPowerLevelsEventContent, UserPowerLevel,
};
use ruma::state_res::events::RoomCreateEvent;
use ruma::{OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId};
use serde_json::{Value, json};

use super::{Room, Rooms};
use crate::error::{Error, Result};
use crate::storage::StorageError;

impl Room {
    /// The room's power levels as its version's authorization rules read them: integer or,
    /// before room version 10, string levels (`"50"`); the spec's defaults without an
    /// `m.room.power_levels` event (creators at 100); from version 12, the creators (the
    /// create event's sender and `additional_creators`) above every level.
    pub fn power_levels(&self) -> RoomPowerLevels {
        let rules = &self.rules.authorization;
        let creators: Vec<OwnedUserId> = self
            .state_event(&StateEventType::RoomCreate, "")
            .and_then(|create| RoomCreateEvent::new(create).creators(rules).ok())
            .map(|creators| creators.into_iter().collect())
            .unwrap_or_default();
        let content = self
            .state_event(&StateEventType::RoomPowerLevels, "")
            .and_then(|pl| pl.content_as::<RoomPowerLevelsEventContent>());
        RoomPowerLevels::new(content.into(), rules, creators)
    }

    /// The user's power level; room creators of v12+ rooms rank above every level.
    pub fn power_level_of(&self, user: &UserId) -> i64 {
        match self.power_levels().for_user(user) {
            UserPowerLevel::Int(level) => level.into(),
            _ => i64::MAX,
        }
    }

    /// The power level needed to send a state event of `kind`.
    pub fn state_level(&self, kind: &str) -> i64 {
        self.power_levels().for_state(kind.into()).into()
    }

    /// The power level needed to redact other users' events: `redact` (default 50), and at
    /// least the level needed to send the redaction.
    pub fn redact_level(&self) -> i64 {
        self.power_levels().for_action(PowerLevelAction::RedactOther).into()
    }

    /// `m.room.history_visibility`, `shared` when unset (the spec's default).
    pub fn history_visibility(&self) -> String {
        self.content_str(StateEventType::RoomHistoryVisibility, "history_visibility")
            .unwrap_or_else(|| "shared".to_owned())
    }

    fn content_str(&self, kind: StateEventType, field: &str) -> Option<String> {
        self.state_event(&kind, "")
            .and_then(|p| p.content_as::<Value>())
            .and_then(|c| c.get(field).and_then(Value::as_str).map(str::to_owned))
    }

    /// Guests may join: `m.room.guest_access` is `can_join`.
    pub fn guests_can_join(&self) -> bool {
        self.content_str(StateEventType::RoomGuestAccess, "guest_access").as_deref()
            == Some("can_join")
    }

    /// The room's entry in the public room directory.
    pub fn directory_entry(&self) -> Value {
        let joined = self.joined_count();
        let mut entry = json!({
            "room_id": self.id,
            "num_joined_members": joined,
            "world_readable": self.content_str(StateEventType::RoomHistoryVisibility, "history_visibility").as_deref() == Some("world_readable"),
            "guest_can_join": self.content_str(StateEventType::RoomGuestAccess, "guest_access").as_deref() == Some("can_join"),
            "join_rule": self.content_str(StateEventType::RoomJoinRules, "join_rule").unwrap_or_else(|| "invite".into()),
        });
        for (key, kind, field) in [
            ("name", StateEventType::RoomName, "name"),
            ("topic", StateEventType::RoomTopic, "topic"),
            ("canonical_alias", StateEventType::RoomCanonicalAlias, "alias"),
            ("avatar_url", StateEventType::RoomAvatar, "url"),
            ("room_type", StateEventType::RoomCreate, "type"),
        ] {
            if let Some(v) = self.content_str(kind, field) {
                entry[key] = json!(v);
            }
        }
        entry
    }
}

impl Rooms {
    pub async fn resolve_alias(&self, alias: &RoomAliasId) -> Result<OwnedRoomId> {
        let (room_id, _) = self
            .store()
            .alias(alias.as_str())
            .await?
            .ok_or_else(|| Error::NotFound("Room alias not found".into()))?;
        room_id.try_into().map_err(|e| Error::Internal(format!("stored room ID: {e}")))
    }

    /// `PUT /directory/room/{alias}`: members may point a local alias at their room.
    pub async fn create_alias(
        &self,
        alias: &RoomAliasId,
        room_id: &RoomId,
        user: &UserId,
    ) -> Result<()> {
        if alias.server_name() != self.server_name() {
            return Err(Error::InvalidParam("Aliases must be on this server".into()));
        }
        self.require_joined(room_id, user)?;
        match self.store().create_alias(alias.as_str(), room_id.as_str(), user.as_str()).await {
            Ok(()) => Ok(()),
            Err(StorageError::AlreadyExists) => {
                Err(Error::Conflict("Room alias already exists".into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `DELETE /directory/room/{alias}`: its creator, or a member allowed to change the
    /// room's canonical alias.
    pub async fn delete_alias(&self, alias: &RoomAliasId, user: &UserId) -> Result<()> {
        let (room_id, creator) = self
            .store()
            .alias(alias.as_str())
            .await?
            .ok_or_else(|| Error::NotFound("Room alias not found".into()))?;
        let allowed = creator == user.as_str()
            || RoomId::parse(&room_id).ok().and_then(|id| self.get(&id)).is_some_and(|room| {
                room.is_joined(user)
                    && room.power_level_of(user) >= room.state_level("m.room.canonical_alias")
            });
        if !allowed {
            return Err(Error::Forbidden("You may not delete this alias".into()));
        }
        match self.store().delete_alias(alias.as_str()).await {
            Ok(()) | Err(StorageError::NotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// An `m.room.canonical_alias` may name only aliases that exist and point at the room
    /// (`alias` and every `alt_aliases` entry): 400 `M_BAD_ALIAS` otherwise, as Synapse
    /// answers; a malformed alias is 400 `M_INVALID_PARAM`. Checked in the send path, so
    /// `/state` and `/send` alike pass it.
    pub(super) async fn check_canonical_alias(
        &self,
        room_id: &RoomId,
        event: &super::pdu::NewEvent,
    ) -> Result<()> {
        if event.kind != ruma::events::TimelineEventType::RoomCanonicalAlias
            || event.state_key.as_deref() != Some("")
        {
            return Ok(());
        }
        let mut aliases = Vec::new();
        match event.content.get("alias") {
            None | Some(Value::Null) => {}
            Some(Value::String(a)) => aliases.push(a.clone()),
            Some(_) => return Err(Error::InvalidParam("alias must be a string".into())),
        }
        match event.content.get("alt_aliases") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for a in list {
                    let a = a.as_str().ok_or_else(|| {
                        Error::InvalidParam("alt_aliases must hold strings".into())
                    })?;
                    aliases.push(a.to_owned());
                }
            }
            Some(_) => return Err(Error::InvalidParam("alt_aliases must be a list".into())),
        }
        if aliases.len() > 100 {
            return Err(Error::TooMany("Too many aliases".into()));
        }
        for alias in aliases {
            let parsed = RoomAliasId::parse(&alias)
                .map_err(|e| Error::InvalidParam(format!("Invalid alias {alias}: {e}")))?;
            let points_here = match self.resolve_alias(&parsed).await {
                Ok(target) => *target == *room_id,
                Err(Error::NotFound(_)) => false,
                Err(e) => return Err(e),
            };
            if !points_here {
                return Err(Error::BadAlias(format!(
                    "Room alias {alias} does not point to the room"
                )));
            }
        }
        Ok(())
    }

    /// `PUT /directory/list/room/{roomId}`: members allowed to change the canonical alias
    /// decide whether the room is listed.
    pub async fn set_published(
        &self,
        room_id: &RoomId,
        user: &UserId,
        published: bool,
    ) -> Result<()> {
        let room = self.require_joined(room_id, user)?;
        if room.power_level_of(user) < room.state_level("m.room.canonical_alias") {
            return Err(Error::Forbidden("You may not change the room's visibility".into()));
        }
        Ok(self.store().set_published(room_id.as_str(), published).await?)
    }

    pub async fn is_published(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self.store().published_rooms().await?.iter().any(|r| r == room_id.as_str()))
    }

    /// One page of the public room directory, most joined first, optionally filtered by a
    /// search term: `limit` entries from `offset`, and how many rooms match in all. Only the
    /// page's entries are built; the rest costs a member count and the search per room.
    pub async fn public_rooms(
        &self,
        search: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<Value>, usize)> {
        let search = search.map(str::to_lowercase);
        let mut matching: Vec<(usize, Arc<Room>)> = Vec::new();
        for id in self.store().published_rooms().await? {
            let Some(room) = RoomId::parse(&id).ok().and_then(|id| self.get(&id)) else { continue };
            if let Some(term) = &search {
                let hay = [
                    (StateEventType::RoomName, "name"),
                    (StateEventType::RoomTopic, "topic"),
                    (StateEventType::RoomCanonicalAlias, "alias"),
                ]
                .into_iter()
                .filter_map(|(kind, field)| room.content_str(kind, field))
                .map(|v| v.to_lowercase())
                .collect::<Vec<_>>()
                .join(" ");
                if !hay.contains(term.as_str()) {
                    continue;
                }
            }
            let joined = room.members().values().filter(|m| m.as_str() == "join").count();
            matching.push((joined, room));
        }
        matching.sort_by(|(a_joined, a), (b_joined, b)| {
            b_joined.cmp(a_joined).then_with(|| a.id.cmp(&b.id))
        });
        let total = matching.len();
        let page = matching
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|(_, r)| r.directory_entry())
            .collect();
        Ok((page, total))
    }
}
