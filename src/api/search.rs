//! `POST /user_directory/search` and `POST /search` (room events). The work is in
//! `services::user_directory` and `rooms::search`; this file renders.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::State;
use ruma::api::client::search::search_events::v3 as search_events;
use ruma::api::client::user_directory::search_users;
use ruma::events::StateEventType;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::http::auth::Authed;
use crate::http::ruma::{AppState, Ruma, RumaResponse};
use crate::rooms::client::Viewer;
use crate::rooms::history::Direction;
use crate::rooms::search::{EventSearch, Order, key_prefix};
use crate::services::user_directory::{DEFAULT_LIMIT, MAX_LIMIT};

/// `POST /user_directory/search`.
pub async fn user_directory(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<search_users::v3::Request>,
) -> Result<RumaResponse<search_users::v3::Response>> {
    let limit = usize::try_from(u64::from(req.limit)).unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let (users, limited) = s.user_directory.search(&s.rooms, &who.user_id, &req.search_term, limit);
    let results = users
        .into_iter()
        .map(|u| {
            let mut user = search_users::v3::User::new(u.user_id);
            user.display_name = u.displayname;
            user.avatar_url = u.avatar_url.map(Into::into);
            user
        })
        .collect();
    Ok(RumaResponse(search_users::v3::Response::new(results, limited)))
}

/// Largest page of `/search` results.
const MAX_RESULTS: usize = 100;
/// Most events of context on either side of a result.
const MAX_CONTEXT: usize = 20;

/// `POST /search`: the `room_events` category (the only one the spec has).
pub async fn search(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<search_events::Request>,
) -> Result<Json<Value>> {
    let Some(criteria) = req.search_categories.room_events else {
        return Ok(Json(json!({"search_categories": {}})));
    };
    let keys = match &criteria.keys {
        None => vec!['b', 'n', 't'],
        Some(keys) => keys
            .iter()
            .map(|k| {
                key_prefix(k.as_str()).ok_or_else(|| {
                    Error::InvalidParam(format!("Unknown search key {}", k.as_str()))
                })
            })
            .collect::<Result<Vec<_>>>()?,
    };
    let order = match &criteria.order_by {
        Some(search_events::OrderBy::Recent) => Order::Recent,
        None | Some(search_events::OrderBy::Rank) => Order::Rank,
        Some(other) => {
            return Err(Error::InvalidParam(format!("Unknown order_by {}", other.as_str())));
        }
    };
    let limit = criteria
        .filter
        .limit
        .map_or(10, |l| usize::try_from(u64::from(l)).unwrap_or(MAX_RESULTS))
        .clamp(1, MAX_RESULTS);
    let found = s
        .rooms
        .search_events(EventSearch {
            user: &who.user_id,
            term: &criteria.search_term,
            keys,
            filter: &criteria.filter,
            order,
            limit,
            next_batch: req.next_batch.as_deref(),
        })
        .await?;
    let viewer = Viewer { user: &who.user_id, device_id: who.device_id.as_str() };
    let context = &criteria.event_context;
    let want_context = !context.is_default() || criteria.event_context.include_profile;
    let before_n = usize::try_from(u64::from(context.before_limit)).unwrap_or(5).min(MAX_CONTEXT);
    let after_n = usize::try_from(u64::from(context.after_limit)).unwrap_or(5).min(MAX_CONTEXT);
    let mut results = Vec::with_capacity(found.hits.len());
    for hit in &found.hits {
        let event = s.rooms.client_event(&hit.room, &hit.record, &hit.pdu, viewer, true).await?;
        let mut result = json!({"rank": hit.rank, "result": event});
        if want_context {
            let before = s
                .rooms
                .scan(
                    &hit.room,
                    &hit.access,
                    Direction::Backward { from: hit.pos.saturating_sub(1), until: None },
                    before_n,
                    None,
                )
                .await?;
            let after = s
                .rooms
                .scan(
                    &hit.room,
                    &hit.access,
                    Direction::Forward { from: hit.pos, until: None },
                    after_n,
                    None,
                )
                .await?;
            let mut events_before = Vec::new();
            for e in &before.events {
                events_before
                    .push(s.rooms.client_event(&hit.room, &e.record, &e.pdu, viewer, true).await?);
            }
            let mut events_after = Vec::new();
            for e in &after.events {
                events_after
                    .push(s.rooms.client_event(&hit.room, &e.record, &e.pdu, viewer, true).await?);
            }
            let mut ctx = json!({
                "events_before": events_before,
                "events_after": events_after,
                "start": format!("s{}", before.cursor),
                "end": format!("s{}", after.cursor),
            });
            if context.include_profile {
                // The senders' profiles as the room's state had them at the result.
                let state = s.rooms.state_at(&hit.room, hit.pos).await?;
                let mut profiles = serde_json::Map::new();
                let senders = before
                    .events
                    .iter()
                    .chain(after.events.iter())
                    .map(|e| e.pdu.sender.clone())
                    .chain(std::iter::once(hit.pdu.sender.clone()));
                for sender in senders {
                    if profiles.contains_key(sender.as_str()) {
                        continue;
                    }
                    let member: Value = state
                        .get(&(StateEventType::RoomMember, sender.to_string()))
                        .and_then(|p| p.content_as())
                        .unwrap_or_default();
                    let mut profile = serde_json::Map::new();
                    for k in ["displayname", "avatar_url"] {
                        if let Some(v) = member.get(k).filter(|v| v.is_string()) {
                            profile.insert(k.into(), v.clone());
                        }
                    }
                    profiles.insert(sender.to_string(), Value::Object(profile));
                }
                ctx["profile_info"] = Value::Object(profiles);
            }
            result["context"] = ctx;
        }
        results.push(result);
    }
    let mut room_events = json!({
        "count": found.count,
        "highlights": found.words,
        "results": results,
    });
    if let Some(next) = &found.next_batch {
        room_events["next_batch"] = json!(next);
    }
    if criteria.include_state == Some(true) {
        let mut state = serde_json::Map::new();
        for room_id in crate::rooms::Rooms::rooms_of_hits(&found.hits) {
            let Some(room) = s.rooms.get(&room_id) else { continue };
            let Ok(map) = s.rooms.visible_state(&room, &who.user_id, None).await else {
                continue;
            };
            let mut events = Vec::with_capacity(map.len());
            for pdu in map.values() {
                events.push(s.rooms.client_state_event(&room, pdu, viewer, true).await?);
            }
            state.insert(room_id.to_string(), Value::Array(events));
        }
        room_events["state"] = Value::Object(state);
    }
    let group_by: Vec<&str> = criteria
        .groupings
        .group_by
        .iter()
        .filter_map(|g| g.key.as_ref())
        .map(|k| k.as_str())
        .collect();
    if !group_by.is_empty() {
        let mut groups = serde_json::Map::new();
        for key in group_by {
            let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut order: HashMap<String, usize> = HashMap::new();
            for hit in &found.hits {
                let value = match key {
                    "room_id" => hit.room.id.to_string(),
                    "sender" => hit.pdu.sender.to_string(),
                    _ => continue,
                };
                let n = order.len();
                order.entry(value.clone()).or_insert(n);
                by.entry(value).or_default().push(hit.pdu.event_id.to_string());
            }
            let mut group = serde_json::Map::new();
            for (value, ids) in by {
                let mut entry =
                    json!({"results": ids, "order": order.get(&value).copied().unwrap_or(0)});
                if let Some(next) = &found.next_batch {
                    entry["next_batch"] = json!(next);
                }
                group.insert(value, entry);
            }
            groups.insert(key.to_owned(), Value::Object(group));
        }
        room_events["groups"] = Value::Object(groups);
    }
    Ok(Json(json!({"search_categories": {"room_events": room_events}})))
}
