//! `GET /sync`: initial and incremental, long-polling on the user's wake-up channel.
//!
//! The token is `s<P>`: the client has seen every event at stream positions ≤ P. A response
//! covers (since, current] where `current` is the committed position read when it is built;
//! the committer publishes positions in order, so nothing ≤ current can still appear later.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use ruma::api::client::filter::{FilterDefinition, LazyLoadOptions};
use ruma::api::client::sync::sync_events;
use ruma::events::{StateEventType, TimelineEventType};
use ruma::{OneTimeKeyAlgorithm, OwnedRoomId, RoomId, UInt};
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::rooms::token;
use crate::error::{Error, Result};
use crate::http::auth::Authed;
use crate::http::ruma::{AppState, Ruma};
use crate::rooms::client::{ClientEvent, Viewer};
use crate::rooms::filter;
use crate::rooms::history::Direction;
use crate::rooms::notify::{Changes, MAX_PENDING_ROOMS, Stream, Subscription};
use crate::rooms::state::StateKey;
use crate::rooms::visibility::{HistoryAccess, MembershipAt};
use crate::rooms::{Room, SharedEvent};
use crate::services::Services;
use crate::services::accounts::Identity;
use crate::services::device_lists::{ListChanges, ListsPos};
use crate::services::notifications;

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

/// `s<events>_<account data>_<to-device>_<device lists>_<receipts>_<typing>_<presence>`:
/// the positions of the streams the client has seen. Missing parts read as 0, so older
/// tokens stay valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncToken {
    pub events: u64,
    pub account_data: u64,
    pub to_device: u64,
    pub device_lists: u64,
    pub receipts: u64,
    pub typing: u64,
    pub presence: u64,
}

impl SyncToken {
    pub fn parse(token: &str) -> Result<Self> {
        let bad = || Error::InvalidParam(format!("Invalid sync token {token:?}"));
        let rest = token.strip_prefix('s').ok_or_else(bad)?;
        let mut parts = [0u64; 7];
        for (i, part) in rest.split('_').enumerate() {
            let slot = parts.get_mut(i).ok_or_else(bad)?;
            *slot = part.parse().map_err(|_| bad())?;
        }
        let [events, account_data, to_device, device_lists, receipts, typing, presence] = parts;
        Ok(Self { events, account_data, to_device, device_lists, receipts, typing, presence })
    }

    /// The current position of every stream.
    pub fn current(s: &Services) -> Self {
        Self {
            events: s.rooms.committer.current(),
            account_data: s.user_data.current(),
            to_device: s.to_device.current(),
            device_lists: s.device_lists.current(),
            receipts: s.receipts.current(),
            typing: s.typing.current(),
            presence: s.presence.current(),
        }
    }

    /// The positions by stream, as `notify::Changes::covered_by` compares them.
    pub fn positions(&self) -> [u64; Stream::COUNT] {
        let mut p = [0; Stream::COUNT];
        p[Stream::Events as usize] = self.events;
        p[Stream::AccountData as usize] = self.account_data;
        p[Stream::ToDevice as usize] = self.to_device;
        p[Stream::DeviceLists as usize] = self.device_lists;
        p[Stream::Receipts as usize] = self.receipts;
        p[Stream::Typing as usize] = self.typing;
        p[Stream::Presence as usize] = self.presence;
        p
    }

    pub fn lists_pos(&self) -> ListsPos {
        ListsPos { events: self.events, device_lists: self.device_lists }
    }
}

impl std::fmt::Display for SyncToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "s{}_{}_{}_{}_{}_{}_{}",
            self.events,
            self.account_data,
            self.to_device,
            self.device_lists,
            self.receipts,
            self.typing,
            self.presence
        )
    }
}

pub struct Options {
    since: Option<u64>,
    /// Every stream's `since` position (`None`: an initial sync).
    since_token: Option<SyncToken>,
    since_account_data: Option<u64>,
    full_state: bool,
    timeline_limit: usize,
    filter: Arc<FilterDefinition>,
}

impl Options {
    /// A sync from `since` (`None`: an initial sync) with a resolved filter.
    pub fn new(since: Option<SyncToken>, full_state: bool, filter: Arc<FilterDefinition>) -> Self {
        let timeline_limit = filter
            .room
            .timeline
            .limit
            .map_or(DEFAULT_TIMELINE_LIMIT, |l| usize::try_from(u64::from(l)).unwrap_or(100))
            .clamp(1, 1000);
        Self {
            since: since.map(|t| t.events),
            since_token: since,
            since_account_data: since.map(|t| t.account_data),
            full_state,
            timeline_limit,
            filter,
        }
    }

    /// The options of the next response of the same loop: from `next_batch`, no full state.
    pub fn continued(&self, next_batch: SyncToken) -> Self {
        Self::new(Some(next_batch), false, self.filter.clone())
    }

    pub fn since_token(&self) -> Option<SyncToken> {
        self.since_token
    }

    fn changed_since(&self, pos: u64) -> bool {
        self.since.is_none_or(|since| pos > since)
    }

    fn lazy_members(&self) -> bool {
        !self.filter.room.state.lazy_load_options.is_disabled()
    }

    fn redundant_members(&self) -> bool {
        matches!(
            self.filter.room.state.lazy_load_options,
            LazyLoadOptions::Enabled { include_redundant_members: true }
        )
    }
}

pub async fn sync(
    State(s): State<AppState>,
    Authed(who): Authed,
    RawQuery(query): RawQuery,
    Ruma(req): Ruma<sync_events::v3::Request>,
) -> Result<Response> {
    let since_token = req.since.as_deref().map(SyncToken::parse).transpose()?;
    // What, besides `since`, shapes the response: a parked subscription is resumed only by a
    // request that asks the same way (see `rooms::notify`). The filter as the client wrote
    // it: a client repeats the same query string in its loop.
    let shape = filter_shape(query.as_deref());
    let filter = resolve_filter(&s, &who, req.filter).await?;
    let opts = Options::new(since_token, req.full_state, filter);
    let timeout = req.timeout.unwrap_or_default().min(MAX_TIMEOUT);
    let deadline = tokio::time::Instant::now() + timeout;
    let _syncing = s.presence.syncing(&who.user_id, &req.set_presence);

    // Presenting a token acknowledges the to-device messages it covers.
    s.to_device.acknowledge(&who, since_token.map_or(0, |t| t.to_device)).await?;

    // The device's previous sync may have parked its subscription under this very token:
    // then it has collected every change since that response, and this request's first
    // pass looks only at those.
    let device = who.device_id.as_str();
    let resumed = match &req.since {
        Some(since) if !opts.full_state => {
            s.rooms.notifier.resume(&who.user_id, device, &park_key(since, &shape))
        }
        _ => None,
    };
    let (subscription, start) = match resumed {
        Some(subscription) => (subscription, Start::Resumed),
        None => start_subscription(&s, &who).await,
    };
    let built = respond(&s, &who, &opts, &subscription, start, Some(deadline)).await?;
    // Park the subscription for the device's next sync, with what this response did not
    // cover.
    let key = park_key(&built.next_batch.to_string(), &shape);
    s.rooms.notifier.park(&who.user_id, device, key, subscription, built.uncovered);
    Ok(([(header::CONTENT_TYPE, "application/json")], built.body).into_response())
}

/// The filter of a sync request: inline, stored under an ID, or none.
pub async fn resolve_filter(
    s: &Services,
    who: &Identity,
    filter: Option<sync_events::v3::Filter>,
) -> Result<Arc<FilterDefinition>> {
    Ok(match filter {
        Some(sync_events::v3::Filter::FilterDefinition(f)) => Arc::new(f),
        Some(sync_events::v3::Filter::FilterId(id)) => s
            .user_data
            .filter_definition(&who.user_id, &id)
            .await?
            .ok_or_else(|| Error::InvalidParam(format!("Unknown filter {id:?}")))?,
        _ => Arc::new(FilterDefinition::default()),
    })
}

/// The `filter` query parameter as sent (empty without one).
fn filter_shape(query: Option<&str>) -> String {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("filter="))
        .unwrap_or_default()
        .to_owned()
}

/// How a subscription's first pass begins.
#[derive(Clone, Copy)]
pub enum Start {
    /// A parked subscription (or a connection's, after a response): it has collected every
    /// change since the previous response, and the pass looks only at those.
    Resumed,
    /// A new subscription: the pass looks at everything; the positions are those
    /// announced before it subscribed.
    Fresh([u64; Stream::COUNT]),
}

/// Subscribes to the user's changes before looking, so that a change committed meanwhile
/// still wakes the sync. Changes announced before the subscription were not told to it: the
/// first pass covers them, once their positions are published (at once, or after a
/// concurrent writer with an earlier position finishes; bounded all the same).
pub async fn start_subscription(s: &Services, who: &Identity) -> (Subscription, Start) {
    let subscription = s.rooms.notifier.subscribe(&who.user_id);
    let announced_before = s.rooms.notifier.announced();
    let publish_deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while SyncToken::current(s).positions().iter().zip(&announced_before).any(|(p, a)| p < a)
        && tokio::time::Instant::now() < publish_deadline
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (subscription, Start::Fresh(announced_before))
}

/// One sync response, and what its subscription was told that it did not cover (to be
/// given back to the subscription for the next response).
pub struct Built {
    /// The response, serialised.
    pub body: String,
    pub next_batch: SyncToken,
    pub uncovered: Changes,
    /// Whether anything is in it for the client (an empty response only ends a long-poll).
    pub news: bool,
}

/// A `/sync` response as it is serialised: typed, so that timeline events are written
/// straight from the shared parsed events ([`ClientEvent`]) instead of through a JSON tree
/// built per receiver. Keys come out in the order a JSON object would sort them.
#[derive(Serialize)]
struct Body {
    account_data: Events<Value>,
    device_lists: ListChanges,
    device_one_time_keys_count: BTreeMap<OneTimeKeyAlgorithm, UInt>,
    device_unused_fallback_key_types: Vec<String>,
    next_batch: String,
    presence: Events<Value>,
    rooms: RoomsBody,
    to_device: Events<Value>,
}

/// `{"events": [...]}`.
#[derive(Serialize)]
struct Events<T> {
    events: Vec<T>,
}

impl<T> Default for Events<T> {
    fn default() -> Self {
        Self { events: Vec::new() }
    }
}

#[derive(Serialize, Default)]
struct RoomsBody {
    invite: BTreeMap<String, Value>,
    join: BTreeMap<String, JoinedRoom>,
    knock: BTreeMap<String, Value>,
    leave: BTreeMap<String, LeftRoom>,
}

impl RoomsBody {
    fn is_empty(&self) -> bool {
        self.join.is_empty() && self.invite.is_empty() && self.leave.is_empty()
    }
}

#[derive(Serialize)]
struct Timeline {
    events: Vec<ClientEvent>,
    limited: bool,
    prev_batch: String,
}

/// A room's `timeline` and `state` in one sync ([`room_entry`]).
struct RoomEntry {
    timeline: Timeline,
    state: Vec<ClientEvent>,
}

#[derive(Serialize)]
struct JoinedRoom {
    account_data: Events<Value>,
    ephemeral: Events<Value>,
    state: Events<ClientEvent>,
    /// Only when it may have changed (the spec lets clients keep the last one).
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<Value>,
    timeline: Timeline,
    unread_notifications: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    unread_thread_notifications: Option<Value>,
}

#[derive(Serialize)]
struct LeftRoom {
    account_data: Events<Value>,
    state: Events<ClientEvent>,
    timeline: Timeline,
}

/// Builds the next response for `opts.since`: at once when something is new for the user,
/// otherwise when the subscription is woken with something new, or empty at `deadline`
/// (`None`: no deadline).
///
/// A first pass looks at everything; a later pass only at what was announced since (the
/// earlier passes found nothing new, so the rest is still quiet). Writers announce a change
/// before they publish its position, and a pass reads the positions *before* it takes the
/// announcements: so every change at or below the positions it read has been announced to it
/// or to an earlier pass.
pub async fn respond(
    s: &Services,
    who: &Identity,
    opts: &Options,
    subscription: &Subscription,
    start: Start,
    deadline: Option<tokio::time::Instant>,
) -> Result<Built> {
    let since_token = opts.since_token;
    let since = opts.since;
    let since_to_device = since_token.map_or(0, |t| t.to_device);
    let (mut scope, announced_before) = match start {
        Start::Resumed => (Some(Changes::default()), [0; Stream::COUNT]),
        Start::Fresh(before) => (None, before),
    };
    // Every room any pass of this response was told about (`None`: a pass looked at all
    // rooms), for the device lists, whose window is all of (since, current].
    let mut rooms_told: Option<HashSet<OwnedRoomId>> = scope.as_ref().map(|_| HashSet::new());
    loop {
        let current = SyncToken::current(s);
        let announced = subscription.take();
        if let Some(scope) = scope.as_mut() {
            scope.merge(announced.clone());
        }
        let looks_at = |stream: Stream| scope.as_ref().is_none_or(|c| c.has(stream));
        let looks_at_rooms = scope.as_ref().is_none_or(Changes::any_room);
        let (to_device, to_device_seen) = if looks_at(Stream::ToDevice) {
            s.to_device.pending(who, since_to_device, current.to_device).await?
        } else {
            (Vec::new(), current.to_device)
        };
        let next_batch = SyncToken { to_device: to_device_seen, ..current };
        let mut account_data = if looks_at(Stream::AccountData) {
            s.user_data.changed(&who.user_id, opts.since_account_data, current.account_data).await?
        } else {
            Vec::new()
        };
        if opts.since_account_data.is_none() {
            notifications::add_default_push_rules(&mut account_data, &who.user_id);
        }
        let (global, by_room) = split_account_data(account_data, &opts.filter);
        let candidates = match &scope {
            Some(changes) if !changes.all_rooms => {
                let mut rooms: HashSet<OwnedRoomId> = changes.rooms.clone();
                rooms.extend(by_room.keys().filter_map(|r| RoomId::parse(r).ok()));
                Some(rooms)
            }
            _ => None,
        };
        match (&candidates, rooms_told.as_mut()) {
            // Past a subscription's own bound, as many rooms as a full look.
            (Some(rooms), Some(told)) if told.len() + rooms.len() <= MAX_PENDING_ROOMS => {
                told.extend(rooms.iter().cloned())
            }
            _ => rooms_told = None,
        }
        let rooms = build_rooms(s, who, opts, &current, candidates.as_ref(), &by_room).await?;
        let empty = rooms.is_empty();
        let lists = match since_token {
            Some(t) if looks_at(Stream::DeviceLists) || looks_at_rooms => {
                let (from, to) = (t.lists_pos(), current.lists_pos());
                s.device_list_changes(&who.user_id, from, to, rooms_told.as_ref()).await?
            }
            _ => ListChanges::default(),
        };
        let lists_empty = lists.changed.is_empty() && lists.left.is_empty();
        let presence = if looks_at(Stream::Presence) && !filter::excludes_all(&opts.filter.presence)
        {
            s.presence
                .events(&who.user_id, since_token.map(|t| t.presence), current.presence)
                .into_iter()
                .filter(|e| {
                    e["sender"]
                        .as_str()
                        .is_some_and(|u| filter::allows_presence(&opts.filter.presence, u))
                })
                .collect()
        } else {
            Vec::new()
        };
        let waited_enough = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
        // What this pass was told about (the first pass: about everything, and then
        // the announcements it took matter only where it could not cover them).
        // The first pass also answers for what was announced before the subscription: if
        // that is still unpublished (the wait above gave up), the next pass looks at every
        // room and those streams again.
        let seen = match scope.take() {
            Some(scope) => scope,
            None => {
                let mut first = announced;
                first.merge(Changes {
                    upto: announced_before,
                    all_rooms: true,
                    ..Changes::default()
                });
                first
            }
        };
        let covered = seen.covered_by(&current.positions());
        let news = !empty
            || !global.is_empty()
            || !to_device.is_empty()
            || !lists_empty
            || !presence.is_empty()
            || since.is_none()
            || opts.full_state;
        if news || waited_enough {
            let one_time_keys_count = s.e2ee_keys.one_time_key_counts(who).await?;
            let unused_fallback_key_types = s.e2ee_keys.unused_fallback_key_types(who).await?;
            // What this response did not cover: announcements not yet published, and
            // to-device messages beyond this response's batch.
            let mut uncovered = if covered { Changes::default() } else { seen };
            if to_device_seen < current.to_device {
                uncovered.upto[Stream::ToDevice as usize] = current.to_device;
            }
            let body = Body {
                next_batch: next_batch.to_string(),
                rooms,
                presence: Events { events: presence },
                account_data: Events { events: global },
                // As JSON values: the content comes out normalised (sorted keys, one of
                // each), as it always has, not as the sender's bytes.
                to_device: Events {
                    events: to_device.iter().filter_map(|m| serde_json::to_value(m).ok()).collect(),
                },
                device_lists: lists,
                device_one_time_keys_count: one_time_keys_count,
                device_unused_fallback_key_types: unused_fallback_key_types,
            };
            let body = serde_json::to_string(&body)
                .map_err(|e| Error::Internal(format!("serialising a sync response: {e}")))?;
            return Ok(Built { body, next_batch, uncovered, news });
        }
        if !covered {
            // A change was announced whose position is not published yet (its writer
            // publishes right after announcing; a concurrent writer before it may still be
            // writing): look again shortly at the same things, and at anything new.
            tokio::time::sleep(Duration::from_millis(1)).await;
            scope = Some(seen);
        } else {
            // Woken or timed out: the next pass looks at what was announced meanwhile
            // (perhaps nothing, and then answers with an empty response at the deadline).
            match deadline {
                Some(deadline) => {
                    let _ = tokio::time::timeout_at(deadline, subscription.changed()).await;
                }
                None => subscription.changed().await,
            }
            scope = Some(Changes::default());
        }
    }
}

/// The key a response parks its subscription under: the `next_batch` token and the shape of
/// the request (its filter).
fn park_key(token: &str, shape: &str) -> String {
    format!("{token}|{shape}")
}

/// Account-data records as sync events, global ones and per room, as the filter selects.
fn split_account_data(
    records: Vec<crate::storage::users::AccountDataRecord>,
    filter: &FilterDefinition,
) -> (Vec<Value>, HashMap<String, Vec<Value>>) {
    let mut global = Vec::new();
    let mut by_room: HashMap<String, Vec<Value>> = HashMap::new();
    let room_filter = &filter.room.account_data;
    for r in records {
        let content: Value = serde_json::from_str(r.content.get()).unwrap_or_else(|_| json!({}));
        let event = json!({"type": r.kind, "content": content});
        match r.room_id {
            Some(room) => {
                let wanted = filter::allows_event_type(room_filter, &r.kind)
                    && RoomId::parse(&room).is_ok_and(|id| filter::allows_room(room_filter, &id));
                if wanted {
                    by_room.entry(room).or_default().push(event);
                }
            }
            None if filter::allows_type(&filter.account_data, &r.kind) => global.push(event),
            None => {}
        }
    }
    (global, by_room)
}

/// Builds `rooms` from the rooms the user has a membership in (`only`: just these, after a
/// wake-up).
async fn build_rooms(
    s: &Services,
    who: &Identity,
    opts: &Options,
    tokens: &SyncToken,
    only: Option<&HashSet<OwnedRoomId>>,
    room_account_data: &HashMap<String, Vec<Value>>,
) -> Result<RoomsBody> {
    let current = tokens.events;
    let include_leave = opts.since.is_none() && opts.filter.room.include_leave;
    // An initial or full-state sync reads every membership at once; an incremental one
    // only those of the rooms where something moved (one point read each).
    let everything = opts.since.is_none() || opts.full_state;
    let memberships =
        if everything { s.rooms.memberships_of(&who.user_id).await? } else { HashMap::new() };
    let rooms = match only {
        Some(ids) => ids.iter().filter_map(|id| s.rooms.get(id)).collect(),
        None => s.rooms.rooms_of(&who.user_id),
    };
    let mut out = RoomsBody::default();

    for room in rooms {
        if !filter::includes_room(&opts.filter.room, &room.id) {
            continue;
        }
        let account_data = room_account_data.get(room.id.as_str());
        let ephemeral_moved = opts.since_token.is_some_and(|since| {
            s.receipts.changed(&room.id, since.receipts) || s.typing.changed(&room.id, since.typing)
        });
        // Nothing of this room moved since `since` (in memory, no reads): a membership
        // change is an event of the room, so it would have moved.
        let moved = opts.changed_since(room.last_pos().min(current))
            || account_data.is_some()
            || ephemeral_moved; // the user's own read receipts included
        if !everything && !moved {
            continue;
        }
        // The hot path of a wake-up: the user is joined (in memory) and nobody's membership
        // of the room changed since `since` (read after the membership: the position of a
        // change is stored before the change is published), so they were joined all along.
        let joined_all_along = !everything
            && room.is_joined(&who.user_id)
            && opts.since.is_some_and(|since| room.membership_changed_at() <= since);
        let record = if joined_all_along {
            None
        } else if everything {
            memberships.get(room.id.as_str()).cloned()
        } else {
            s.rooms.store().membership(room.id.as_str(), who.user_id.as_str()).await?
        };
        let m = if joined_all_along {
            MembershipAt { membership: "join".into(), since: 0, pos: 0 }
        } else if let Some(record) = &record
            && record.pos <= current
        {
            MembershipAt {
                membership: record.membership.clone(),
                since: record.since(),
                pos: record.pos,
            }
        } else if record.is_some() {
            // The membership as of `current`: a change committed after `current` was read
            // is the next sync's, and until then the previous membership holds.
            match s.rooms.membership_at(&room, &who.user_id, current).await? {
                Some(m) => m,
                None => continue,
            }
        } else {
            continue;
        };
        match m.membership.as_str() {
            "join" => {
                let newly_joined = opts.changed_since(m.since);
                let timeline_moved = opts.changed_since(room.last_pos().min(current));
                // A room new to the client gets every ephemeral event; otherwise only
                // what changed since `since`.
                let ephemeral_since = if newly_joined { None } else { opts.since_token };
                let ephemeral =
                    ephemeral_events(s, &room.id, &who.user_id, ephemeral_since, tokens, opts)
                        .await?;
                // How far the user has read (their own read receipts): unread counts.
                let read = s.receipts.read_marks(&room.id, &who.user_id).await?;
                let read_moved = read.latest_receipt.is_some_and(|pos| {
                    opts.since_token.is_none_or(|t| pos > t.receipts && pos <= tokens.receipts)
                });
                if !newly_joined
                    && !opts.full_state
                    && !timeline_moved
                    && account_data.is_none()
                    && !read_moved
                    && ephemeral.is_empty()
                {
                    continue;
                }
                let access = s.rooms.readable(&room, &who.user_id).await?;
                let span = Span {
                    upper: current,
                    after: if newly_joined { None } else { opts.since },
                    full: newly_joined || opts.full_state,
                };
                let entry = room_entry(s, &room, who, opts, &access, span).await?;
                let quiet = !newly_joined
                    && !opts.full_state
                    && account_data.is_none()
                    && !read_moved
                    && ephemeral.is_empty()
                    && entry.timeline.events.is_empty()
                    && entry.state.is_empty();
                if quiet {
                    continue; // the room moved, but nothing in it is for this user
                }
                // The summary (O(members) to build) only when it may have changed, as the
                // spec allows: clients keep the last one they were sent.
                let summary = (newly_joined
                    || opts.full_state
                    || opts.changed_since(room.membership_changed_at()))
                .then(|| summary(&room, &who.user_id));
                let unread =
                    notifications::room_counts(s, &room, &who.user_id, &read, current).await?;
                let threads = opts.filter.room.timeline.unread_thread_notifications;
                let (unread_notifications, unread_thread_notifications) =
                    notifications::counts_json(&unread, threads);
                let joined = JoinedRoom {
                    account_data: Events { events: account_data.cloned().unwrap_or_default() },
                    ephemeral: Events { events: ephemeral },
                    state: Events { events: entry.state },
                    summary,
                    timeline: entry.timeline,
                    unread_notifications,
                    unread_thread_notifications,
                };
                out.join.insert(room.id.to_string(), joined);
            }
            // Invites from ignored users are hidden, as Synapse does.
            "invite"
                if opts.changed_since(m.since)
                    && !invited_by_ignored(s, &room, &who.user_id).await? =>
            {
                out.invite.insert(room.id.to_string(), invite_entry(&room, &who.user_id));
            }
            // Departures since the last sync; in an initial sync only with `include_leave`.
            "leave" | "ban"
                if !record.as_ref().is_some_and(|r| r.forgotten)
                    && ((opts.since.is_some() && opts.changed_since(m.since)) || include_leave) =>
            {
                // Joined at `since`: the timeline continues from there. Otherwise (joined
                // and left in between, or never joined) the room comes in full.
                let joined_at_since = match opts.since {
                    Some(since) => s
                        .rooms
                        .membership_at(&room, &who.user_id, since)
                        .await?
                        .is_some_and(|m| m.membership == "join"),
                    None => false,
                };
                let access = s.rooms.readable(&room, &who.user_id).await?;
                let span = Span {
                    upper: m.pos,
                    after: if joined_at_since { opts.since } else { None },
                    full: !joined_at_since && access.ever_joined(),
                };
                let entry = room_entry(s, &room, who, opts, &access, span).await?;
                let left = LeftRoom {
                    account_data: Events::default(),
                    state: Events { events: entry.state },
                    timeline: entry.timeline,
                };
                out.leave.insert(room.id.to_string(), left);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// A joined room's ephemeral events for a sync from `since` (`None`: all current ones):
/// typing and receipts, as the room's ephemeral filter allows.
async fn ephemeral_events(
    s: &Services,
    room: &RoomId,
    user: &ruma::UserId,
    since: Option<SyncToken>,
    upto: &SyncToken,
    opts: &Options,
) -> Result<Vec<Value>> {
    let wanted = &opts.filter.room.ephemeral;
    let mut events = Vec::new();
    if filter::allows_event_type(wanted, "m.typing")
        && let Some(typing) = s.typing.event(room, user, since.map(|t| t.typing))
    {
        events.push(typing);
    }
    if filter::allows_event_type(wanted, "m.receipt")
        && let Some(receipts) =
            s.receipts.event(room, user, since.map(|t| t.receipts), upto.receipts).await?
    {
        events.push(receipts);
    }
    Ok(events)
}

/// Whether the user's pending invite comes from someone they ignore.
async fn invited_by_ignored(s: &Services, room: &Room, user: &ruma::UserId) -> Result<bool> {
    let ignored = s.rooms.ignored_by(user).await?;
    if ignored.is_empty() {
        return Ok(false);
    }
    Ok(room
        .state_event(&StateEventType::RoomMember, user.as_str())
        .is_some_and(|invite| ignored.contains(&invite.sender)))
}

/// The invite entry: the room's stripped state, the invite, and the inviter's member event.
fn invite_entry(room: &Room, user: &ruma::UserId) -> Value {
    let mut events: Vec<Value> = Vec::new();
    let state = room.state();
    let inviter =
        state.get(&(StateEventType::RoomMember, user.to_string())).map(|p| p.sender.to_string());
    for (key, pdu) in state.iter() {
        let is_stripped = STRIPPED_STATE.contains(&key.0.to_string().as_str());
        let is_member = key.0 == StateEventType::RoomMember;
        let is_own_invite = is_member && key.1 == user.as_str();
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
    json!({"invite_state": {"events": events}})
}

/// The room summary: member counts and up to five other members to name the room by.
fn summary(room: &Room, user: &ruma::UserId) -> Value {
    let members = room.members();
    let joined = members.values().filter(|m| m.as_str() == "join").count();
    let invited = members.values().filter(|m| m.as_str() == "invite").count();
    let mut heroes: Vec<&ruma::OwnedUserId> = members
        .iter()
        .filter(|(u, m)| *u != user && matches!(m.as_str(), "join" | "invite"))
        .map(|(u, _)| u)
        .collect();
    if heroes.is_empty() {
        // Everyone else left: name the room after who was there.
        heroes = members.iter().filter(|(u, _)| *u != user).map(|(u, _)| u).collect();
    }
    heroes.sort();
    heroes.truncate(5);
    json!({
        "m.heroes": heroes,
        "m.joined_member_count": joined,
        "m.invited_member_count": invited,
    })
}

/// The part of a room's history one sync entry covers.
struct Span {
    /// The newest position included (the sync's `current`, or a departure).
    upper: u64,
    /// The client has everything up to here; `None` when the room is new to it.
    after: Option<u64>,
    /// Send the whole state at the timeline's start, not a delta since `after`.
    full: bool,
}

/// A room's `timeline` and `state` for one sync: the newest `limit` visible events of the
/// span that the timeline filter lets through, and the state at the timeline's start, in
/// full for rooms new to the client, as a delta from `since` when the timeline skipped
/// events, and nothing when the timeline says it all.
async fn room_entry(
    s: &Services,
    room: &Room,
    who: &Identity,
    opts: &Options,
    access: &HistoryAccess,
    span: Span,
) -> Result<RoomEntry> {
    let limit = opts.timeline_limit;
    let timeline_filter = &opts.filter.room.timeline;
    let mut scanned = s
        .rooms
        .scan(
            room,
            access,
            Direction::Backward { from: span.upper, until: span.after },
            limit + 1,
            Some(timeline_filter),
        )
        .await?;
    let limited = scanned.events.len() > limit || !scanned.exhausted;
    scanned.events.truncate(limit);
    scanned.events.reverse();
    let events = scanned.events;
    // Backward pagination from here returns what precedes the timeline.
    let prev_batch = events.first().map_or(scanned.cursor, |e| e.pos.saturating_sub(1));
    let timeline_start = events.first().map_or(span.upper, |e| e.pos.saturating_sub(1));

    let viewer = Viewer { user: &who.user_id, device_id: who.device_id.as_str() };
    let mut timeline = Vec::with_capacity(events.len());
    let in_timeline: HashSet<&str> = events.iter().map(|e| e.pdu.event_id.as_str()).collect();
    for e in &events {
        timeline
            .push(s.rooms.client_event_sync(room, access, &e.record, &e.pdu, viewer, false).await?);
    }

    // State: what the client lacks to know the state at the timeline's start. In full for
    // rooms new to it; otherwise the changes since `since`, when the timeline does not show
    // them all (it skipped events, or the filter hid some). A change the filter hid inside
    // the timeline's span comes too (the state at its end), as Synapse sends it.
    let mut state_ids: Vec<String> = Vec::new();
    if span.full || limited || scanned.filtered_out {
        let at_start = s.rooms.state_ids_at(room, timeline_start).await?;
        let at_end = if scanned.filtered_out {
            s.rooms.state_ids_at(room, span.upper).await?
        } else {
            HashMap::new()
        };
        let known = match (span.full, span.after) {
            (false, Some(after)) => s.rooms.state_ids_at(room, after).await?,
            _ => HashMap::new(),
        };
        let keys: HashSet<_> = at_start.keys().chain(at_end.keys()).collect();
        for key in keys {
            let id = match at_end.get(key) {
                Some(end) if !in_timeline.contains(end.as_str()) => Some(end),
                _ => at_start.get(key),
            };
            if let Some(id) = id
                && known.get(key) != Some(id)
                && !in_timeline.contains(id.as_str())
            {
                state_ids.push(id.clone());
            }
        }
    }

    // Lazy-loaded members: only those of the timeline's senders (and the user's own), and
    // none the device already has unless the filter asks for redundant ones.
    let lazy = opts.lazy_members();
    let (user, device, room_key) = (who.user_id.as_str(), who.device_id.as_str(), room.id.as_str());
    if lazy && span.full {
        s.lazy_members.reset(user, device, room_key);
    }
    let mut wanted_members: HashSet<&str> = events.iter().map(|e| e.pdu.sender.as_str()).collect();
    wanted_members.insert(user);
    let state_filter = &opts.filter.room.state;
    let mut state_events = Vec::with_capacity(state_ids.len());
    let mut sent_members: Vec<String> = Vec::new();
    for id in state_ids {
        if in_timeline.contains(id.as_str()) {
            continue;
        }
        let Some(SharedEvent { record, pdu }) = s.rooms.shared_event(&id).await? else {
            continue;
        };
        if !filter::allows(state_filter, &pdu) {
            continue;
        }
        if lazy && pdu.kind == TimelineEventType::RoomMember {
            let key = pdu.state_key.as_deref().unwrap_or_default();
            if !wanted_members.contains(key) {
                continue;
            }
            sent_members.push(id.clone());
        }
        state_events
            .push(s.rooms.client_event_unbundled(room, &record, &pdu, viewer, false).await?);
    }
    if lazy && !span.full {
        // The timeline's senders' member events as of the timeline's start, which the device
        // may not have yet: the current one unless it is newer than that.
        let mut at_start: Option<HashMap<StateKey, String>> = None;
        for sender in &wanted_members {
            let Some(current) = room.state_event(&StateEventType::RoomMember, sender) else {
                continue;
            };
            let Some(SharedEvent { mut record, mut pdu }) =
                s.rooms.shared_event(current.event_id.as_str()).await?
            else {
                continue;
            };
            if record.pos > timeline_start {
                if at_start.is_none() {
                    at_start = Some(s.rooms.state_ids_at(room, timeline_start).await?);
                }
                let key = (StateEventType::RoomMember, (*sender).to_owned());
                let Some(id) = at_start.as_ref().and_then(|m| m.get(&key)) else { continue };
                let Some(earlier) = s.rooms.shared_event(id).await? else { continue };
                SharedEvent { record, pdu } = earlier;
            }
            let id = pdu.event_id.as_str();
            let already = in_timeline.contains(id)
                || sent_members.iter().any(|m| m == id)
                || (!opts.redundant_members()
                    && s.lazy_members.was_sent(user, device, room_key, id));
            if already || !filter::allows(state_filter, &pdu) {
                continue;
            }
            sent_members.push(id.to_owned());
            state_events
                .push(s.rooms.client_event_unbundled(room, &record, &pdu, viewer, false).await?);
        }
    }
    if lazy {
        let in_timeline_members = events
            .iter()
            .filter(|e| e.pdu.kind == TimelineEventType::RoomMember)
            .map(|e| e.pdu.event_id.as_str());
        s.lazy_members.record(
            user,
            device,
            room_key,
            sent_members.iter().map(String::as_str).chain(in_timeline_members),
        );
    }

    Ok(RoomEntry {
        timeline: Timeline { events: timeline, limited, prev_batch: token(prev_batch) },
        state: state_events,
    })
}

#[cfg(test)]
mod tests {
    use super::SyncToken;

    #[test]
    fn older_and_longer_tokens_parse_with_missing_parts_as_zero() {
        let t = |events, account_data, to_device, device_lists| SyncToken {
            events,
            account_data,
            to_device,
            device_lists,
            ..SyncToken::default()
        };
        assert_eq!(SyncToken::parse("s5").unwrap(), t(5, 0, 0, 0));
        assert_eq!(SyncToken::parse("s5_3").unwrap(), t(5, 3, 0, 0));
        assert_eq!(SyncToken::parse("s5_3_7").unwrap(), t(5, 3, 7, 0));
        assert_eq!(SyncToken::parse("s5_3_7_9").unwrap(), t(5, 3, 7, 9));
        let full = SyncToken { receipts: 11, typing: 12, presence: 13, ..t(5, 3, 7, 9) };
        assert_eq!(SyncToken::parse("s5_3_7_9_11_12_13").unwrap(), full);
        assert_eq!(full.to_string(), "s5_3_7_9_11_12_13");
        assert!(SyncToken::parse("s5_3_x").is_err());
        assert!(SyncToken::parse("s5_6_7_x").is_err());
        assert!(SyncToken::parse("s1_2_3_4_5_6_7_8").is_err(), "too many parts");
        assert!(SyncToken::parse("s").is_err());
        assert!(SyncToken::parse("x5").is_err());
    }
}
