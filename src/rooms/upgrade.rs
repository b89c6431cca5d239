//! `POST /rooms/{roomId}/upgrade`: a replacement room of another version.
//!
//! As the spec and Synapse do: the upgrader needs the power to send `m.room.tombstone` in
//! the old room. The new room's create event names the old room as `predecessor` (with its
//! last event) and keeps the room type; the upgrader is its creator (its sender from v11,
//! the privileged creator in v12). Synapse's list of state is copied: join rules, name, topic, history
//! visibility, guest access, avatar, encryption, server ACL, power levels and, for spaces,
//! `m.space.child`; then the bans. The power levels are copied as they are: when the
//! upgrader's level is below what copying the state needs, the new room starts with the
//! upgrader raised to that level and ends with the original power-levels event, so nobody
//! gains a level (before v12 an upgrader who was a creator of a v12 room, above every level,
//! keeps 100). Into v12, creators are privileged by the create event and taken out of
//! `users`. The whole new room is one creation (all or nothing). Then the local aliases
//! move, the canonical alias follows them (and is removed from the old room), a published
//! room stays published under its new ID, the old room gets its tombstone, and its power
//! levels are restricted (`events_default` and `invite` raised to at least 50 and above
//! `users_default`), so that only moderators speak in it any more.

use std::collections::HashSet;

use ruma::events::{StateEventType, TimelineEventType};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId};
use serde_json::{Value, json};

use super::Rooms;
use super::pdu::NewEvent;
use crate::error::{Error, Result};
use crate::storage::StorageError;

/// State types copied into the replacement room (Synapse's list).
const COPIED: [StateEventType; 8] = [
    StateEventType::RoomJoinRules,
    StateEventType::RoomName,
    StateEventType::RoomTopic,
    StateEventType::RoomHistoryVisibility,
    StateEventType::RoomGuestAccess,
    StateEventType::RoomAvatar,
    StateEventType::RoomEncryption,
    StateEventType::RoomServerAcl,
];

/// Rooms being upgraded: two concurrent upgrades of one room would both pass the tombstone
/// check and make two replacements, so the second is refused while the first runs. Upgrades
/// of different rooms do not wait for each other.
static UPGRADING: std::sync::LazyLock<std::sync::Mutex<HashSet<OwnedRoomId>>> =
    std::sync::LazyLock::new(Default::default);

/// Marks a room as being upgraded until dropped.
struct Upgrading(OwnedRoomId);

impl Upgrading {
    fn begin(room_id: &RoomId) -> Result<Self> {
        let mut rooms = UPGRADING.lock().unwrap_or_else(|e| e.into_inner());
        if !rooms.insert(room_id.to_owned()) {
            return Err(Error::BadState("This room is already being upgraded".into()));
        }
        Ok(Self(room_id.to_owned()))
    }
}

impl Drop for Upgrading {
    fn drop(&mut self) {
        UPGRADING.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.0);
    }
}

fn level(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

impl Rooms {
    pub async fn upgrade(
        &self,
        room_id: &RoomId,
        user: &UserId,
        new_version: RoomVersionId,
        additional_creators: Vec<OwnedUserId>,
    ) -> Result<OwnedRoomId> {
        let rules = new_version.rules().ok_or_else(|| {
            Error::UnsupportedRoomVersion(format!("Room version {new_version} is not supported"))
        })?;
        let _upgrading = Upgrading::begin(room_id)?;
        let old = self.require_joined(room_id, user)?;
        let old_levels = old.power_levels();
        if !old_levels.user_can_send_state(user, StateEventType::RoomTombstone) {
            return Err(Error::Forbidden("You may not upgrade this room".into()));
        }
        if !additional_creators.is_empty() && !rules.authorization.additional_room_creators {
            return Err(Error::InvalidParam(format!(
                "Room version {new_version} has no additional creators"
            )));
        }
        if old.state_event(&StateEventType::RoomTombstone, "").is_some() {
            return Err(Error::BadState("This room has already been replaced".into()));
        }
        self.charge_event(user)?;
        let state = old.state();
        let content_of = |kind: &StateEventType, key: &str| -> Option<Value> {
            state.get(&(kind.clone(), key.to_owned())).and_then(|p| p.content_as::<Value>())
        };
        let last_event = old.inner.read().head.forward_extremities.first().cloned();

        // The create event.
        let old_create = content_of(&StateEventType::RoomCreate, "").unwrap_or_default();
        let mut predecessor = json!({"room_id": room_id});
        if let Some(last) = &last_event {
            predecessor["event_id"] = json!(last);
        }
        let mut create = json!({"room_version": new_version.as_str(), "predecessor": predecessor});
        if !rules.authorization.use_room_create_sender {
            create["creator"] = json!(user);
        }
        let room_type = old_create.get("type").cloned();
        if let Some(t) = &room_type {
            create["type"] = t.clone();
        }
        if let Some(federate) = old_create.get("m.federate") {
            create["m.federate"] = federate.clone();
        }
        if !additional_creators.is_empty() {
            create["additional_creators"] = json!(additional_creators);
        }

        // The power levels, and whether the upgrader needs raising while the state is copied.
        let creators_privileged = rules.authorization.explicitly_privilege_room_creators;
        let mut power_levels = content_of(&StateEventType::RoomPowerLevels, "")
            .unwrap_or_else(|| json!({"users": {user.as_str(): 100}}));
        if !power_levels.get("users").is_some_and(Value::is_object) {
            power_levels["users"] = json!({});
        }
        if creators_privileged && let Some(users) = power_levels["users"].as_object_mut() {
            users.remove(user.as_str());
            for creator in &additional_creators {
                users.remove(creator.as_str());
            }
        }
        if creators_privileged {
            // As a new v12 room: upgrading (and so becoming a creator) needs 150, above an
            // admin at 100 who is no creator.
            if !power_levels.get("events").is_some_and(Value::is_object) {
                power_levels["events"] = json!({});
            }
            let tombstone = level(power_levels["events"].get("m.room.tombstone"))
                .or_else(|| level(power_levels.get("state_default")))
                .unwrap_or(50);
            if tombstone < 150 {
                power_levels["events"]["m.room.tombstone"] = json!(150);
            }
        }
        let own_level = old.power_level_of(user);
        let mut temporary = None;
        if !creators_privileged {
            let needed = [
                level(power_levels.get("state_default")).unwrap_or(50),
                level(power_levels.get("ban")).unwrap_or(50),
                level(power_levels.get("invite")).unwrap_or(0),
            ]
            .into_iter()
            .chain(
                power_levels
                    .get("events")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flat_map(|events| events.values().filter_map(|v| level(Some(v)))),
            )
            .max()
            .unwrap_or(100);
            if own_level == i64::MAX {
                // A creator of a v12 room, above every level, into an older version.
                power_levels["users"][user.as_str()] = json!(needed.max(100));
            } else if own_level < needed {
                let mut raised = power_levels.clone();
                raised["users"][user.as_str()] = json!(needed);
                temporary = Some(raised);
            }
        }

        let mut events = vec![NewEvent::state(
            TimelineEventType::RoomMember,
            user.as_str(),
            self.member_content(user, "join", None).await?,
        )];
        events.push(NewEvent::state(
            TimelineEventType::RoomPowerLevels,
            "",
            temporary.clone().unwrap_or_else(|| power_levels.clone()),
        ));
        let mut copied: Vec<(StateEventType, String)> =
            COPIED.iter().map(|k| (k.clone(), String::new())).collect();
        if room_type.as_ref().and_then(Value::as_str) == Some("m.space") {
            let mut children: Vec<_> = state
                .keys()
                .filter(|(kind, _)| *kind == StateEventType::SpaceChild)
                .cloned()
                .collect();
            children.sort_by(|a, b| a.1.cmp(&b.1));
            copied.extend(children);
        }
        for (kind, key) in copied {
            let Some(content) = content_of(&kind, &key) else { continue };
            events.push(NewEvent::state(kind.to_string().into(), &key, content));
        }
        let mut bans: Vec<&OwnedUserId> = Vec::new();
        let members = old.members();
        for (member, m) in members.iter() {
            if m == "ban" {
                bans.push(member);
            }
        }
        bans.sort();
        for banned in bans {
            events.push(NewEvent::state(
                TimelineEventType::RoomMember,
                banned.as_str(),
                json!({"membership": "ban"}),
            ));
        }
        if temporary.is_some() {
            events.push(NewEvent::state(TimelineEventType::RoomPowerLevels, "", power_levels));
        }
        let new_room = self.create(user, new_version, create, events).await?;

        // The tombstone at once, before anything else moves: from here a retry is refused
        // (the room is replaced), so a crash later cannot lead to a second replacement.
        let tombstone = NewEvent::state(
            TimelineEventType::RoomTombstone,
            "",
            json!({"body": "This room has been replaced", "replacement_room": new_room}),
        );
        self.append(room_id, user, tombstone, None).await?;

        // Aliases, the canonical alias and the directory follow the room. Each alias is
        // re-pointed in one write, only if it still names the old room: there is no moment
        // at which it is free for someone else to take.
        for alias in self.store().room_aliases(room_id.as_str()).await? {
            match self.store().move_alias(&alias, room_id.as_str(), new_room.as_str()).await {
                Ok(()) => {}
                // Deleted or re-pointed meanwhile by its owner: no longer the old room's.
                Err(StorageError::NotFound) => {
                    tracing::info!(%alias, %room_id, "alias changed during the upgrade; not moved");
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(canonical) = content_of(&StateEventType::RoomCanonicalAlias, "")
            && canonical.as_object().is_some_and(|c| !c.is_empty())
        {
            let event = NewEvent::state(TimelineEventType::RoomCanonicalAlias, "", canonical);
            if let Err(e) = self.append(&new_room, user, event, None).await {
                tracing::warn!(%new_room, error = %e, "could not set the canonical alias");
            }
            let cleared = NewEvent::state(TimelineEventType::RoomCanonicalAlias, "", json!({}));
            if let Err(e) = self.append(room_id, user, cleared, None).await {
                tracing::warn!(%room_id, error = %e, "could not clear the old canonical alias");
            }
        }
        if self.is_published(room_id).await? {
            self.store().set_published(new_room.as_str(), true).await?;
            self.store().set_published(room_id.as_str(), false).await?;
        }

        // The old room's power levels restricted.
        if let Some(mut levels) = content_of(&StateEventType::RoomPowerLevels, "") {
            let users_default = level(levels.get("users_default")).unwrap_or(0);
            let restricted = 50.max(users_default + 1);
            let mut changed = false;
            for field in ["events_default", "invite"] {
                let current = level(levels.get(field)).unwrap_or(0);
                if current < restricted {
                    levels[field] = json!(restricted);
                    changed = true;
                }
            }
            if changed {
                let event = NewEvent::state(TimelineEventType::RoomPowerLevels, "", levels);
                if let Err(e) = self.append(room_id, user, event, None).await {
                    tracing::warn!(%room_id, error = %e, "could not restrict the old room");
                }
            }
        }
        tracing::info!(old = %room_id, new = %new_room, %user, "room upgraded");
        Ok(new_room)
    }
}
