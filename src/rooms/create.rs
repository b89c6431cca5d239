//! `createRoom`: the initial events a preset implies, in the spec's order.

use ruma::events::TimelineEventType;
use ruma::{OwnedRoomId, OwnedUserId, RoomVersionId, UserId};
use serde_json::{Value, json};

use super::Rooms;
use super::pdu::NewEvent;
use crate::error::{Error, Result};
use crate::storage::StorageError;

pub const DEFAULT_ROOM_VERSION: RoomVersionId = RoomVersionId::V12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    PrivateChat,
    TrustedPrivateChat,
    PublicChat,
}

/// The inputs of `createRoom`, already parsed.
pub struct CreateRoom {
    pub version: Option<RoomVersionId>,
    pub preset: Option<Preset>,
    pub public: bool,
    pub creation_content: Option<Value>,
    /// `(type, state_key, content)`.
    pub initial_state: Vec<(String, String, Value)>,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub invite: Vec<OwnedUserId>,
    pub is_direct: bool,
    pub room_alias_localpart: Option<String>,
    pub power_level_content_override: Option<Value>,
}

fn merge(base: &mut Value, over: &Value) {
    if let (Some(b), Some(o)) = (base.as_object_mut(), over.as_object()) {
        for (k, v) in o {
            b.insert(k.clone(), v.clone());
        }
    }
}

impl Rooms {
    pub async fn create_room(&self, creator: &UserId, req: CreateRoom) -> Result<OwnedRoomId> {
        let version = req.version.unwrap_or(DEFAULT_ROOM_VERSION);
        let rules = version.rules().ok_or_else(|| {
            Error::UnsupportedRoomVersion(format!("Room version {version} is not supported"))
        })?;
        let preset =
            req.preset.unwrap_or(if req.public { Preset::PublicChat } else { Preset::PrivateChat });

        // Caps on the request's size, checked before any work: each entry is an event to
        // build, sign and auth-check while the new room's lock is held. Refused with 400
        // M_TOO_LARGE ("the request … was too large"); the spec's 400 list for createRoom
        // leaves the errcode to the server, and M_LIMIT_EXCEEDED would invite a retry.
        if req.initial_state.len() > self.limits.max_initial_state {
            return Err(Error::TooMany(format!(
                "initial_state has {} entries; at most {} are allowed",
                req.initial_state.len(),
                self.limits.max_initial_state
            )));
        }
        if req.invite.len() > self.limits.max_invites {
            return Err(Error::TooMany(format!(
                "invite names {} users; at most {} are allowed",
                req.invite.len(),
                self.limits.max_invites
            )));
        }
        // One token of the creator's event rate limit, however many events the room starts
        // with: the caps above bound those, and charging each (up to a few hundred) against
        // a burst of 50 would refuse ordinary rooms.
        self.charge_event(creator)?;
        for invitee in &req.invite {
            self.check_invitee(invitee).await?;
        }
        let alias = match &req.room_alias_localpart {
            Some(local) => {
                if local.is_empty() || local.contains([':', ' ', '#']) {
                    return Err(Error::InvalidParam("Invalid room_alias_name".into()));
                }
                let alias = format!("#{local}:{}", self.server_name());
                ruma::RoomAliasId::parse(&alias)
                    .map_err(|e| Error::InvalidParam(format!("Invalid room_alias_name: {e}")))?;
                if self.store().alias(&alias).await?.is_some() {
                    return Err(Error::RoomInUse);
                }
                Some(alias)
            }
            None => None,
        };

        let mut create = json!({"room_version": version.as_str()});
        if !rules.authorization.use_room_create_sender {
            create["creator"] = json!(creator);
        }
        if let Some(extra) = &req.creation_content {
            merge(&mut create, extra);
            create["room_version"] = json!(version.as_str());
        }
        // Creators are privileged by the create event in v12; listing them in the power
        // levels is refused there.
        let creators_in_power_levels = !rules.authorization.explicitly_privilege_room_creators;

        let creator_member = self.member_content(creator, "join", None).await?;
        let mut events =
            vec![NewEvent::state(TimelineEventType::RoomMember, creator.as_str(), creator_member)];

        let mut users = serde_json::Map::new();
        if creators_in_power_levels {
            users.insert(creator.to_string(), json!(100));
        }
        if preset == Preset::TrustedPrivateChat {
            for invitee in &req.invite {
                users.insert(invitee.to_string(), json!(100));
            }
        }
        let mut power_levels = json!({
            "users": users,
            "users_default": 0,
            "events": {
                "m.room.name": 50,
                "m.room.power_levels": 100,
                "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50,
                "m.room.avatar": 50,
                // From v12 (creators above every level) 150, as Synapse: an admin at 100
                // who is no creator may not upgrade and so become the new room's creator.
                "m.room.tombstone": if creators_in_power_levels { 100 } else { 150 },
                "m.room.server_acl": 100,
                "m.room.encryption": 100,
            },
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": 0,
            "notifications": {"room": 50},
        });
        if let Some(over) = &req.power_level_content_override {
            merge(&mut power_levels, over);
        }
        events.push(NewEvent::state(TimelineEventType::RoomPowerLevels, "", power_levels));

        if let Some(alias) = &alias {
            events.push(NewEvent::state(
                TimelineEventType::RoomCanonicalAlias,
                "",
                json!({"alias": alias}),
            ));
        }
        let join_rule = if preset == Preset::PublicChat { "public" } else { "invite" };
        events.push(NewEvent::state(
            TimelineEventType::RoomJoinRules,
            "",
            json!({"join_rule": join_rule}),
        ));
        events.push(NewEvent::state(
            TimelineEventType::RoomHistoryVisibility,
            "",
            json!({"history_visibility": "shared"}),
        ));
        if preset != Preset::PublicChat {
            events.push(NewEvent::state(
                TimelineEventType::RoomGuestAccess,
                "",
                json!({"guest_access": "can_join"}),
            ));
        }
        for (kind, key, content) in req.initial_state {
            if kind == "m.room.create" || kind == "m.room.member" {
                return Err(Error::BadJson(format!("{kind} cannot be in initial_state")));
            }
            events.push(NewEvent::state(kind.into(), &key, content));
        }
        if let Some(name) = req.name {
            events.push(NewEvent::state(TimelineEventType::RoomName, "", json!({"name": name})));
        }
        if let Some(topic) = req.topic {
            events.push(NewEvent::state(TimelineEventType::RoomTopic, "", json!({"topic": topic})));
        }
        for invitee in &req.invite {
            let mut content = self.member_content(invitee, "invite", None).await?;
            if req.is_direct {
                content["is_direct"] = json!(true);
            }
            events.push(NewEvent::state(TimelineEventType::RoomMember, invitee.as_str(), content));
        }

        let room_id = self.create(creator, version.clone(), create, events).await?;
        if let Some(alias) = alias {
            match self.store().create_alias(&alias, room_id.as_str(), creator.as_str()).await {
                Ok(()) => {}
                Err(StorageError::AlreadyExists) => return Err(Error::RoomInUse),
                Err(e) => return Err(e.into()),
            }
        }
        if req.public {
            self.store().set_published(room_id.as_str(), true).await?;
        }
        tracing::info!(%room_id, %creator, %version, "room created");
        Ok(room_id)
    }
}
