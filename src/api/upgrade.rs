//! `POST /rooms/{roomId}/upgrade`, and what a user's joining the replacement room carries
//! over from the room it replaced.

use axum::extract::State;
use ruma::api::client::room::upgrade_room;
use ruma::events::StateEventType;
use ruma::push::{NewConditionalPushRule, NewPushRule, NewSimplePushRule, PushCondition, Ruleset};
use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::http::auth::Authed;
use crate::http::ruma::{AppState, Ruma, RumaResponse};
use crate::services::Services;

pub async fn upgrade(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<upgrade_room::v3::Request>,
) -> Result<RumaResponse<upgrade_room::v3::Response>> {
    // Only the versions createRoom offers (capabilities' `m.room_versions`).
    if !crate::api::discovery::ROOM_VERSIONS.contains(&req.new_version.as_str()) {
        return Err(Error::UnsupportedRoomVersion(format!(
            "Room version {} is not supported",
            req.new_version
        )));
    }
    let new_room = s
        .rooms
        .upgrade(&req.room_id, &who.user_id, req.new_version, req.additional_creators)
        .await?;
    carry_over(&s, &who.user_id, &new_room).await;
    Ok(RumaResponse(upgrade_room::v3::Response::new(new_room)))
}

/// After `user` joined `room_id` (not when they were joined already) or created it by
/// upgrading: when the room replaced another, what the user had set up for the old room
/// applies to the new one, as Synapse does on joining an upgraded room: its tags (`api::tags`), its place in `m.direct` (a
/// direct chat stays one) and its push rules (a muted room stays muted). Each part is
/// skipped where the user already has one for the new room. A failure is logged; the join
/// stands.
pub async fn carry_over(s: &Services, user: &UserId, room_id: &RoomId) {
    let Some(predecessor) = replaced_room(s, room_id) else { return };
    if let Err(e) = crate::api::tags::carry_over(s, user, &predecessor, room_id).await {
        tracing::warn!(%room_id, %user, error = %e, "could not carry the tags over");
    }
    if let Err(e) = carry_over_direct(s, user, &predecessor, room_id).await {
        tracing::warn!(%room_id, %user, error = %e, "could not carry m.direct over");
    }
    if let Err(e) = carry_over_push_rules(s, user, &predecessor, room_id).await {
        tracing::warn!(%room_id, %user, error = %e, "could not carry the push rules over");
    }
}

/// After a tombstone was set in `old`: the members of `old` already joined to the room it
/// names get [`carry_over`] now (they will not join it again). Nothing when the named room
/// does not name `old` as its predecessor.
pub async fn tombstoned(s: &Services, old: &RoomId) {
    let Some(replacement) = replacement_of(s, old) else { return };
    let (Some(old_room), Some(new_room)) = (s.rooms.get(old), s.rooms.get(&replacement)) else {
        return;
    };
    if replaced_room(s, &replacement).as_deref() != Some(old) {
        return;
    }
    for user in old_room.joined().iter().filter(|u| new_room.is_joined(u)) {
        carry_over(s, user, &replacement).await;
    }
}

/// The room the tombstone of `room_id` names, if it has one.
pub fn replacement_of(s: &Services, room_id: &RoomId) -> Option<OwnedRoomId> {
    s.rooms
        .get(room_id)?
        .state_event(&StateEventType::RoomTombstone, "")
        .and_then(|p| p.content_as::<Value>())
        .and_then(|c| c["replacement_room"].as_str().map(str::to_owned))
        .and_then(|id| OwnedRoomId::try_from(id).ok())
}

/// The room `room_id` replaced: its create event's `predecessor`, if that room's tombstone
/// names `room_id` (anyone may name any room as `predecessor` in `creation_content`).
fn replaced_room(s: &Services, room_id: &RoomId) -> Option<OwnedRoomId> {
    let room = s.rooms.get(room_id)?;
    let predecessor = room
        .state_event(&StateEventType::RoomCreate, "")
        .and_then(|p| p.content_as::<Value>())
        .and_then(|c| c["predecessor"]["room_id"].as_str().map(str::to_owned))
        .and_then(|id| OwnedRoomId::try_from(id).ok())?;
    (replacement_of(s, &predecessor).as_deref() == Some(room_id)).then_some(predecessor)
}

/// The account data `m.direct` maps users to the direct chats with them: every list that
/// holds the old room gets the new one too (the old one stays: it keeps its history).
async fn carry_over_direct(
    s: &Services,
    user: &UserId,
    predecessor: &RoomId,
    room_id: &RoomId,
) -> Result<()> {
    const DIRECT: &str = "m.direct";
    // Whether a list holds the old room and not the new one yet.
    let lacks_new = |rooms: &Value| {
        rooms.as_array().is_some_and(|r| {
            r.iter().any(|id| id == predecessor.as_str())
                && !r.iter().any(|id| id == room_id.as_str())
        })
    };
    // Most joins are not into replacements of direct chats (or were carried over already):
    // no write for them.
    match s.user_data.account_data(user, None, DIRECT).await? {
        Some(content) if content.as_object().is_some_and(|u| u.values().any(lacks_new)) => {}
        _ => return Ok(()),
    }
    s.user_data
        .update_account_data(user, None, DIRECT, |current| {
            let mut content = current.unwrap_or_default();
            if let Some(users) = content.as_object_mut() {
                for rooms in users.values_mut() {
                    if lacks_new(rooms)
                        && let Some(rooms) = rooms.as_array_mut()
                    {
                        rooms.push(Value::from(room_id.as_str()));
                    }
                }
            }
            Ok(content)
        })
        .await
}

/// The user's enabled rules for the old room, copied for the new one: its room rule (its
/// ID is the room's) and the first override and the first underride rule with an
/// `event_match` condition on `room_id` equal to the old room (Element's "mute" is one),
/// with the new room's ID as the copy's ID and in those conditions (Synapse names copies so
/// too; one ID holds one rule per kind). A rule already there for the new room stays.
async fn carry_over_push_rules(
    s: &Services,
    user: &UserId,
    predecessor: &RoomId,
    room_id: &RoomId,
) -> Result<()> {
    let rules = s.push_rules.get(&s.user_data, user).await?;
    if copies_for(&rules.ruleset, predecessor, room_id).is_empty() {
        return Ok(());
    }
    s.push_rules
        .update(&s.user_data, user, |ruleset| {
            for rule in copies_for(ruleset, predecessor, room_id) {
                // A rule of the same ID is there (added meanwhile): that one stays.
                let _ = ruleset.insert(rule, None, None);
            }
            Ok(())
        })
        .await?;
    s.unread.forget_user(user);
    Ok(())
}

/// The new rules [`carry_over_push_rules`] adds to `ruleset`.
fn copies_for(ruleset: &Ruleset, old: &RoomId, new: &RoomId) -> Vec<NewPushRule> {
    let mut copies = Vec::new();
    let taken = |kind, id: &str| ruleset.get(kind, id).is_some();
    use ruma::push::RuleKind;
    if let Some(rule) = ruleset.room.iter().find(|r| r.enabled && r.rule_id == old)
        && !taken(RuleKind::Room, new.as_str())
    {
        copies
            .push(NewPushRule::Room(NewSimplePushRule::new(new.to_owned(), rule.actions.clone())));
    }
    let names_old = |c: &PushCondition| match c {
        PushCondition::EventMatch(m) => m.key == "room_id" && m.pattern == old.as_str(),
        _ => false,
    };
    for (kind, rules) in
        [(RuleKind::Override, &ruleset.override_), (RuleKind::Underride, &ruleset.underride)]
    {
        // The copy's ID is the new room's: one rule of each kind (the first, as the user
        // ordered them), unless the user has a rule of that ID already.
        let first =
            rules.iter().find(|r| r.enabled && !r.default && r.conditions.iter().any(names_old));
        if let Some(rule) = first
            && !taken(kind.clone(), new.as_str())
        {
            let conditions = rule
                .conditions
                .iter()
                .map(|c| match c {
                    PushCondition::EventMatch(m) if names_old(c) => {
                        let mut m = m.clone();
                        m.pattern = new.to_string();
                        PushCondition::EventMatch(m)
                    }
                    other => other.clone(),
                })
                .collect();
            let copy =
                NewConditionalPushRule::new(new.to_string(), conditions, rule.actions.clone());
            copies.push(match kind {
                RuleKind::Override => NewPushRule::Override(copy),
                _ => NewPushRule::Underride(copy),
            });
        }
    }
    copies
}
