//! `GET /sync`: initial and incremental, long-polling on the user's wake-up channel.
//!
//! The token is `s<P>`: the client has seen every event at stream positions ≤ P. A response
//! covers (since, current] where `current` is the committed position read when it is built;
//! the committer publishes positions in order, so nothing ≤ current can still appear later.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use ruma::api::client::filter::FilterDefinition;
use ruma::api::client::sync::sync_events;
use ruma::events::StateEventType;
use serde_json::{Value, json};

use crate::api::rooms::token;
use crate::error::{Error, Result};
use crate::http::auth::Authed;
use crate::http::ruma::{AppState, Ruma};
use crate::rooms::Room;
use crate::rooms::client::Viewer;
use crate::rooms::filter;
use crate::rooms::state::{self, StateKey};
use crate::services::Services;
use crate::services::accounts::Identity;
use crate::storage::rooms::MembershipRecord;

/// Longest a client may make us hold a request.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);
const DEFAULT_TIMELINE_LIMIT: usize = 10;

/// State events an invitee sees before joining.
const STRIPPED_STATE: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

/// `s<events>_<account data>`: the positions of the two streams the client has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncToken {
    pub events: u64,
    pub account_data: u64,
}

impl SyncToken {
    pub fn parse(token: &str) -> Result<Self> {
        let bad = || Error::InvalidParam(format!("Invalid sync token {token:?}"));
        let rest = token.strip_prefix('s').ok_or_else(bad)?;
        let mut parts = rest.split('_');
        let events = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let account_data = match parts.next() {
            Some(p) => p.parse().map_err(|_| bad())?,
            None => 0,
        };
        Ok(Self { events, account_data })
    }
}

impl std::fmt::Display for SyncToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{}_{}", self.events, self.account_data)
    }
}

struct Options {
    /// How far the user has read in each room (event position, account-data position).
    read_positions: HashMap<String, (u64, u64)>,
    displayname: Option<String>,
    since: Option<u64>,
    since_account_data: Option<u64>,
    full_state: bool,
    timeline_limit: usize,
    filter: Option<FilterDefinition>,
}

pub async fn sync(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<sync_events::v3::Request>,
) -> Result<Json<Value>> {
    let since_token = req.since.as_deref().map(SyncToken::parse).transpose()?;
    let since = since_token.map(|t| t.events);
    let filter = match req.filter {
        Some(sync_events::v3::Filter::FilterDefinition(f)) => Some(f),
        Some(sync_events::v3::Filter::FilterId(id)) => {
            let stored = s
                .user_data
                .filter(&who.user_id, &id)
                .await?
                .ok_or_else(|| Error::InvalidParam(format!("Unknown filter {id:?}")))?;
            Some(
                serde_json::from_value(stored)
                    .map_err(|e| Error::Internal(format!("stored filter: {e}")))?,
            )
        }
        _ => None,
    };
    let timeline_limit = filter
        .as_ref()
        .and_then(|f| f.room.timeline.limit)
        .map_or(DEFAULT_TIMELINE_LIMIT, |l| usize::try_from(u64::from(l)).unwrap_or(100))
        .clamp(1, 1000);
    let read_positions = s
        .user_data
        .read_positions(&who.user_id)
        .await?
        .into_iter()
        .map(|(room, p)| (room, (p.event_pos, p.pos)))
        .collect();
    let displayname = s.rooms.profile_of(&who.user_id).await?.and_then(|p| p.displayname);
    let opts = Options {
        read_positions,
        displayname,
        since,
        since_account_data: since_token.map(|t| t.account_data),
        full_state: req.full_state,
        timeline_limit,
        filter,
    };
    let timeout = req.timeout.unwrap_or_default().min(MAX_TIMEOUT);
    let deadline = tokio::time::Instant::now() + timeout;

    // Subscribe before looking, so that an event committed meanwhile still wakes us.
    let mut wake = s.rooms.notifier.subscribe(&who.user_id);
    loop {
        let current =
            SyncToken { events: s.rooms.committer.current(), account_data: s.user_data.current() };
        let account_data = s
            .user_data
            .changed(&who.user_id, opts.since_account_data, current.account_data)
            .await?;
        let (global, by_room) = split_account_data(account_data);
        let (rooms, empty) = build_rooms(&s, &who, &opts, current.events, &by_room).await?;
        let waited_enough = tokio::time::Instant::now() >= deadline;
        if !empty || !global.is_empty() || since.is_none() || opts.full_state || waited_enough {
            return Ok(Json(json!({
                "next_batch": current.to_string(),
                "rooms": rooms,
                "presence": {"events": []},
                "account_data": {"events": global},
                "to_device": {"events": []},
                "device_lists": {"changed": [], "left": []},
                "device_one_time_keys_count": {},
            })));
        }
        match tokio::time::timeout_at(deadline, wake.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => return Err(Error::Internal("wake-up channel closed".into())),
            Err(_) => continue, // timed out: answer with whatever there is (nothing)
        }
    }
}

/// Account-data records as sync events: global ones, and per room.
fn split_account_data(
    records: Vec<crate::storage::users::AccountDataRecord>,
) -> (Vec<Value>, HashMap<String, Vec<Value>>) {
    let mut global = Vec::new();
    let mut by_room: HashMap<String, Vec<Value>> = HashMap::new();
    for r in records {
        let content: Value = serde_json::from_str(r.content.get()).unwrap_or_else(|_| json!({}));
        let event = json!({"type": r.kind, "content": content});
        match r.room_id {
            Some(room) => by_room.entry(room).or_default().push(event),
            None => global.push(event),
        }
    }
    (global, by_room)
}

/// State `(type, key) → event_id` of a room after the last event at or before `pos`.
async fn state_ids_at(s: &Services, room: &Room, pos: u64) -> Result<HashMap<StateKey, String>> {
    match state::group_at(s.rooms.store(), room.id.as_str(), pos).await? {
        Some(group) => state::group_ids(s.rooms.store(), group).await,
        None => Ok(HashMap::new()),
    }
}

async fn client_event(
    s: &Services,
    room: &Room,
    who: &Identity,
    event_id: &str,
) -> Result<Option<Value>> {
    let Some((record, pdu)) = s.rooms.event(event_id).await? else {
        return Ok(None);
    };
    let viewer = Viewer { user: &who.user_id, device_id: who.device_id.as_str() };
    Ok(Some(s.rooms.client_event(room, &record, &pdu, viewer, false).await?))
}

/// Builds `rooms`; the flag says whether nothing at all changed.
async fn build_rooms(
    s: &Services,
    who: &Identity,
    opts: &Options,
    current: u64,
    room_account_data: &HashMap<String, Vec<Value>>,
) -> Result<(Value, bool)> {
    let include_leave =
        opts.since.is_none() && opts.filter.as_ref().is_some_and(|f| f.room.include_leave);
    let memberships: HashMap<String, MembershipRecord> =
        s.rooms.store().user_memberships(who.user_id.as_str()).await?.into_iter().collect();
    let mut join = serde_json::Map::new();
    let mut invite = serde_json::Map::new();
    let mut leave = serde_json::Map::new();

    for room in s.rooms.rooms_of(&who.user_id) {
        let Some(m) = memberships.get(room.id.as_str()) else {
            continue;
        };
        if m.pos > current {
            continue; // committed after `current`: next time
        }
        let changed_since = |pos: u64| opts.since.is_none_or(|since| pos > since);
        match m.membership.as_str() {
            "join" => {
                let newly_joined = changed_since(m.pos);
                let account_data = room_account_data.get(room.id.as_str());
                let read_moved =
                    opts.read_positions.get(room.id.as_str()).is_some_and(|(_, pos)| {
                        opts.since_account_data.is_none_or(|since| *pos > since)
                    });
                if !newly_joined
                    && !opts.full_state
                    && !changed_since(room.last_pos())
                    && account_data.is_none()
                    && !read_moved
                {
                    continue;
                }
                // History before the join is hidden when the room says so.
                let visible_from = match room.history_visibility().as_str() {
                    "joined" | "invited" => Some(m.pos),
                    _ => None,
                };
                if let Some(mut entry) =
                    joined_room(s, &room, who, opts, current, newly_joined, visible_from).await?
                {
                    if let Some(events) = account_data {
                        entry["account_data"] = json!({"events": events});
                    }
                    join.insert(room.id.to_string(), entry);
                }
            }
            "invite" if changed_since(m.pos) => {
                let mut events: Vec<Value> = Vec::new();
                let state = room.state();
                // Who invited us: their member event lets clients show their name.
                let inviter = state
                    .get(&(StateEventType::RoomMember, who.user_id.to_string()))
                    .map(|p| p.sender.to_string());
                for (key, pdu) in state.iter() {
                    let is_stripped = STRIPPED_STATE.contains(&key.0.to_string().as_str());
                    let is_member = key.0 == StateEventType::RoomMember;
                    let is_own_invite = is_member && key.1 == who.user_id.as_str();
                    let is_inviter = is_member && inviter.as_deref() == Some(key.1.as_str());
                    if is_stripped || is_own_invite || is_inviter {
                        events.push(json!({
                            "type": pdu.kind,
                            "state_key": pdu.state_key,
                            "content": serde_json::from_str::<Value>(pdu.content.get()).unwrap_or_default(),
                            "sender": pdu.sender,
                        }));
                    }
                }
                invite.insert(room.id.to_string(), json!({"invite_state": {"events": events}}));
            }
            // Departures since the last sync; in an initial sync only with `include_leave`.
            "leave" | "ban"
                if !m.forgotten
                    && ((opts.since.is_some() && changed_since(m.pos)) || include_leave) =>
            {
                // The timeline up to and including the departure.
                let ids = s
                    .rooms
                    .store()
                    .room_events(
                        room.id.as_str(),
                        opts.since,
                        Some(m.pos + 1),
                        true,
                        opts.timeline_limit,
                    )
                    .await?;
                let mut timeline = Vec::new();
                for (_, id) in ids.iter().rev() {
                    if let Some(ev) = client_event(s, &room, who, id).await? {
                        timeline.push(ev);
                    }
                }
                leave.insert(
                    room.id.to_string(),
                    json!({"timeline": {"events": timeline, "limited": false}, "state": {"events": []}, "account_data": {"events": []}}),
                );
            }
            _ => {}
        }
    }
    let empty = join.is_empty() && invite.is_empty() && leave.is_empty();
    Ok((json!({"join": join, "invite": invite, "leave": leave, "knock": {}}), empty))
}

async fn joined_room(
    s: &Services,
    room: &Room,
    who: &Identity,
    opts: &Options,
    current: u64,
    newly_joined: bool,
    visible_from: Option<u64>,
) -> Result<Option<Value>> {
    // Newest `limit + 1` events after `since`, to learn whether the timeline is truncated.
    let limit = opts.timeline_limit;
    let after = if newly_joined && opts.since.is_some() { None } else { opts.since };
    let after = match (after, visible_from.map(|f| f.saturating_sub(1))) {
        (Some(a), Some(v)) => Some(a.max(v)),
        (a, v) => a.or(v),
    };
    let mut ids = s
        .rooms
        .store()
        .room_events(room.id.as_str(), after, Some(current.saturating_add(1)), true, limit + 1)
        .await?;
    let limited = ids.len() > limit;
    ids.truncate(limit);
    ids.reverse();

    let mut timeline = Vec::with_capacity(ids.len());
    let mut in_timeline: HashSet<String> = HashSet::new();
    let viewer = Viewer { user: &who.user_id, device_id: who.device_id.as_str() };
    for (_, id) in &ids {
        let Some((record, pdu)) = s.rooms.event(id).await? else {
            continue;
        };
        let wanted = opts
            .filter
            .as_ref()
            .is_none_or(|f| filter::allows(&f.room.timeline, &pdu.kind.to_string(), &pdu.sender));
        if wanted {
            in_timeline.insert(id.clone());
            timeline.push(s.rooms.client_event(room, &record, &pdu, viewer, false).await?);
        }
    }
    let timeline_start = ids.first().map_or(current, |(pos, _)| pos.saturating_sub(1));

    // State: the state at the start of the timeline, in full for new rooms, as a delta from
    // `since` when the timeline skipped events, and nothing when the timeline says it all.
    let mut state_ids: Vec<String> = Vec::new();
    if newly_joined || opts.full_state || limited {
        let at_start = state_ids_at(s, room, timeline_start).await?;
        match (newly_joined || opts.full_state, opts.since) {
            (false, Some(since)) => {
                let at_since = state_ids_at(s, room, since).await?;
                for (k, id) in &at_start {
                    if at_since.get(k) != Some(id) {
                        state_ids.push(id.clone());
                    }
                }
            }
            _ => state_ids.extend(at_start.into_values()),
        }
    }
    let lazy_members = opts.filter.as_ref().is_some_and(|f| {
        !matches!(
            f.room.state.lazy_load_options,
            ruma::api::client::filter::LazyLoadOptions::Disabled
        )
    });
    let mut timeline_senders: HashSet<String> =
        timeline.iter().filter_map(|e| e["sender"].as_str().map(str::to_owned)).collect();
    timeline_senders.insert(who.user_id.to_string());
    let mut state_events = Vec::with_capacity(state_ids.len());
    for id in state_ids {
        if in_timeline.contains(&id) {
            continue;
        }
        if let Some(ev) = client_event(s, room, who, &id).await? {
            let is_member = ev["type"] == "m.room.member";
            let key = ev["state_key"].as_str().unwrap_or_default();
            if lazy_members && is_member && !timeline_senders.contains(key) {
                continue;
            }
            state_events.push(ev);
        }
    }
    if lazy_members && !newly_joined {
        // Members of the timeline's senders that the client may not have loaded yet.
        for sender in &timeline_senders {
            if let Some(pdu) = room.state_event(&StateEventType::RoomMember, sender)
                && !in_timeline.contains(pdu.event_id.as_str())
                && !state_events.iter().any(|e| e["event_id"] == pdu.event_id.as_str())
            {
                state_events.push(pdu.to_client(
                    &room.rules.redaction,
                    false,
                    Default::default(),
                    false,
                ));
            }
        }
    }

    let members = room.members();
    let joined = members.values().filter(|m| m.as_str() == "join").count();
    let invited = members.values().filter(|m| m.as_str() == "invite").count();
    let mut heroes: Vec<&ruma::OwnedUserId> = members
        .iter()
        .filter(|(u, m)| *u != &who.user_id && matches!(m.as_str(), "join" | "invite"))
        .map(|(u, _)| u)
        .collect();
    heroes.sort();
    heroes.truncate(5);

    let read_pos = opts.read_positions.get(room.id.as_str()).map(|(event_pos, _)| *event_pos);
    let unread = s
        .unread
        .counts(&s.rooms, &room.id, &who.user_id, opts.displayname.as_deref(), read_pos, current)
        .await?;

    Ok(Some(json!({
        "unread_notifications": {
            "notification_count": unread.notifications,
            "highlight_count": unread.highlights,
        },
        "timeline": {
            "events": timeline,
            "limited": limited,
            "prev_batch": token(timeline_start),
        },
        "state": {"events": state_events},
        "summary": {
            "m.heroes": heroes,
            "m.joined_member_count": joined,
            "m.invited_member_count": invited,
        },
        "ephemeral": {"events": []},
        "account_data": {"events": []},
    })))
}
