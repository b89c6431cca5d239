//! A room's new events rendered once per wake-up and shared by every member whose view of
//! them is the same ([`SharedTimelines`]).
//!
//! When a message reaches a room of a thousand members, a thousand syncs wake up and each
//! would read the same events, render them in client format and serialise them. Most of
//! those receivers see exactly the same bytes: they were joined all along (so history
//! visibility shows them everything new), their timeline filter restricts nothing, the
//! events carry no per-viewer part (no bundled aggregations, not redacted, no
//! `prev_content`), and the receiver neither sent one of them from this device (which would
//! echo its `transaction_id`) nor ignores a sender. For them the first receiver renders the
//! events of `(after, upper]` once; the others copy the serialised events whose position is
//! above their own `since`.
//!
//! An entry is keyed by the room's newest position (`upper`, the room's `last_pos` when it
//! is at or below the sync's `current`) and covers every event of the room in
//! `(after, upper]`, so it serves any receiver with `since ≥ after`. A new event in the room
//! (a message, a redaction, a relation that would bundle) moves `last_pos` and with it the
//! key: an entry is never stale, only unused. `unsigned.age` is rendered with the entry, so
//! an entry is reused for at most [`REUSE_FOR`].
//!
//! Anything else (a receiver that just joined, a limited timeline, a state delta, lazy
//! members the device lacks, a filter with types or senders) takes the per-receiver path of
//! [`super::sync`], which gives the same response.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ruma::events::{StateEventType, TimelineEventType};
use ruma::{OwnedRoomId, OwnedUserId};
use serde::Serialize;
use serde::ser::{SerializeSeq, SerializeStruct, Serializer};
use serde_json::value::RawValue;
use tokio::sync::OnceCell;

use crate::api::rooms::token;
use crate::error::{Error, Result};
use crate::rooms::client::PlainEvent;
use crate::rooms::{Room, Rooms, SharedEvent};

/// Most events an entry holds: a wake-up brings a few; more than this and receivers'
/// timelines are likely limited anyway, which the per-receiver path handles.
pub const MAX_EVENTS: usize = 64;

/// How long an entry serves receivers after it was rendered (its `age` fields date from then).
pub const REUSE_FOR: Duration = Duration::from_secs(1);

/// Entries kept per room: the receivers of one wake-up share one; a few more cover receivers
/// that were a wake-up behind.
const SLOTS_PER_ROOM: usize = 4;

/// Rooms with entries kept; past it, the map starts afresh (an entry is cheap to rebuild).
const MAX_ROOMS: usize = 10_000;

/// Serialised bytes kept in all; past it, the map starts afresh.
const MAX_BYTES: usize = 64 << 20;

/// The shared renderings, by room.
#[derive(Default)]
pub struct SharedTimelines {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    rooms: HashMap<OwnedRoomId, Vec<Slot>>,
    /// Serialised bytes of the rendered entries in `rooms`.
    bytes: usize,
}

/// One rendering of `(after, upper]`, filled by the first receiver that needs it; the
/// others of the same wake-up wait for it instead of rendering it too. `None` inside: the
/// span cannot be shared (see [`Shared::render`]).
struct Slot {
    after: u64,
    upper: u64,
    cell: Arc<OnceCell<Option<Arc<Shared>>>>,
    /// Whether its bytes are in [`Inner::bytes`].
    counted: bool,
}

impl Slot {
    fn bytes(&self) -> usize {
        match self.cell.get() {
            Some(Some(shared)) if self.counted => shared.bytes(),
            _ => 0,
        }
    }
}

/// The events of `(after, upper]` of a room as every viewer without a part of their own
/// sees them.
pub struct Shared {
    rendered_at: Instant,
    /// Oldest first.
    events: Vec<Rendered>,
    /// Each sender's member event as of `after` (`None` inside: the sender has none), for
    /// lazy-loaded members. `None`: a member event lies in the span, or a sender's member
    /// event changed after `after`; lazy-loading receivers then take the per-receiver path.
    senders: Option<Vec<(OwnedUserId, Option<SharedEvent>)>>,
}

/// One event in client format, serialised.
struct Rendered {
    pos: u64,
    json: Box<RawValue>,
    sender: OwnedUserId,
    is_state: bool,
    /// The device that sent it, when it sent it with a transaction ID (that device sees it
    /// with `unsigned.transaction_id`, not as rendered here).
    txn_device: Option<String>,
}

impl SharedTimelines {
    /// The rendering of the room's events above `since` up to `upper` (the room's newest
    /// position, which the caller checked is at or below its sync's `current`), rendered now
    /// or shared with another receiver's; `None` when the span cannot be shared.
    pub async fn get(
        &self,
        rooms: &Rooms,
        room: &Room,
        since: u64,
        upper: u64,
    ) -> Result<Option<Arc<Shared>>> {
        if upper <= since {
            return Ok(None);
        }
        let cell = self.slot(room, since, upper);
        let shared = cell
            .get_or_try_init(|| async { Shared::render(rooms, room, since, upper).await })
            .await?
            .clone();
        match shared {
            Some(shared) if shared.fresh() => {
                self.count(&room.id, &cell);
                Ok(Some(shared))
            }
            Some(_) => {
                // Too old to share (a receiver that comes back well after a wake-up):
                // rendered afresh, in a new slot.
                self.forget(&room.id, &cell);
                let cell = self.slot(room, since, upper);
                let shared = cell
                    .get_or_try_init(|| async { Shared::render(rooms, room, since, upper).await })
                    .await?
                    .clone();
                self.count(&room.id, &cell);
                Ok(shared)
            }
            None => Ok(None),
        }
    }

    /// The slot for `(since, upper]`: the exact span (the receivers of one wake-up share
    /// it), else a wider one that is ready and young enough, else a new one.
    fn slot(&self, room: &Room, since: u64, upper: u64) -> Arc<OnceCell<Option<Arc<Shared>>>> {
        let mut inner = self.inner.lock();
        let found = inner.rooms.get(&room.id).and_then(|slots| {
            slots.iter().find(|s| s.upper == upper && s.after == since).or_else(|| {
                slots.iter().find(|s| {
                    s.upper == upper
                        && s.after <= since
                        && matches!(s.cell.get(), Some(Some(shared)) if shared.fresh())
                })
            })
        });
        if let Some(slot) = found {
            return slot.cell.clone();
        }
        if inner.rooms.len() >= MAX_ROOMS && !inner.rooms.contains_key(&room.id) {
            *inner = Inner::default();
        }
        let Inner { rooms, bytes } = &mut *inner;
        let slots = rooms.entry(room.id.clone()).or_default();
        if slots.len() >= SLOTS_PER_ROOM {
            let gone = slots.remove(0);
            *bytes = bytes.saturating_sub(gone.bytes());
        }
        let cell = Arc::new(OnceCell::new());
        slots.push(Slot { after: since, upper, cell: cell.clone(), counted: false });
        cell
    }

    /// Adds a filled slot's bytes to the total, once; starts afresh past [`MAX_BYTES`].
    fn count(&self, room: &OwnedRoomId, cell: &Arc<OnceCell<Option<Arc<Shared>>>>) {
        let mut inner = self.inner.lock();
        let Inner { rooms, bytes } = &mut *inner;
        let Some(slot) = rooms
            .get_mut(room)
            .and_then(|slots| slots.iter_mut().find(|s| Arc::ptr_eq(&s.cell, cell)))
        else {
            return;
        };
        if slot.counted {
            return;
        }
        slot.counted = true;
        *bytes += slot.bytes();
        if *bytes > MAX_BYTES {
            *inner = Inner::default();
        }
    }

    fn forget(&self, room: &OwnedRoomId, cell: &Arc<OnceCell<Option<Arc<Shared>>>>) {
        let mut inner = self.inner.lock();
        let Inner { rooms, bytes } = &mut *inner;
        if let Some(slots) = rooms.get_mut(room)
            && let Some(i) = slots.iter().position(|s| Arc::ptr_eq(&s.cell, cell))
        {
            let gone = slots.remove(i);
            *bytes = bytes.saturating_sub(gone.bytes());
        }
    }
}

impl Shared {
    /// Renders every event of `(after, upper]`, or `None` when they cannot be shared: more
    /// than [`MAX_EVENTS`], or one whose client form is not the same for every viewer
    /// (bundled aggregations, redacted, replaced state).
    async fn render(
        rooms: &Rooms,
        room: &Room,
        after: u64,
        upper: u64,
    ) -> Result<Option<Arc<Shared>>> {
        let ids = rooms
            .room_events(room, Some(after), Some(upper.saturating_add(1)), true, MAX_EVENTS + 1)
            .await?;
        if ids.len() > MAX_EVENTS {
            return Ok(None);
        }
        let mut events = Vec::with_capacity(ids.len());
        let mut senders: HashSet<&OwnedUserId> = HashSet::new();
        let mut members_in_span = false;
        let mut loaded = Vec::with_capacity(ids.len());
        for (pos, id) in ids.into_iter().rev() {
            let Some(event) = rooms.shared_event(&id).await? else { return Ok(None) };
            loaded.push((pos, event));
        }
        for (pos, SharedEvent { record, pdu }) in &loaded {
            let bundles = pdu.state_key.is_none() && !room.recent_unrelated(pdu.event_id.as_str());
            let Some(plain) = PlainEvent::for_anyone(record, pdu).filter(|_| !bundles) else {
                return Ok(None);
            };
            let json = serde_json::value::to_raw_value(&plain)
                .map_err(|e| Error::Internal(format!("serialising an event: {e}")))?;
            members_in_span |= pdu.kind == TimelineEventType::RoomMember;
            senders.insert(&pdu.sender);
            events.push(Rendered {
                pos: *pos,
                json,
                sender: pdu.sender.clone(),
                is_state: pdu.state_key.is_some(),
                txn_device: record.txn.as_ref().map(|(device, _)| device.clone()),
            });
        }
        let senders = if members_in_span {
            None
        } else {
            member_events_before(rooms, room, senders, after).await?
        };
        Ok(Some(Arc::new(Shared { rendered_at: Instant::now(), events, senders })))
    }

    fn fresh(&self) -> bool {
        self.rendered_at.elapsed() < REUSE_FOR
    }

    fn bytes(&self) -> usize {
        self.events.iter().map(|e| e.json.get().len()).sum()
    }

    /// The events above `since`, oldest first (empty when there are none).
    fn above(&self, since: u64) -> &[Rendered] {
        let from = self.events.partition_point(|e| e.pos <= since);
        &self.events[from..]
    }
}

/// Each sender's current member event, if every one of them is at or below `after` (so it
/// is also their member event as of any point of the span); `None` otherwise.
async fn member_events_before(
    rooms: &Rooms,
    room: &Room,
    senders: HashSet<&OwnedUserId>,
    after: u64,
) -> Result<Option<Vec<(OwnedUserId, Option<SharedEvent>)>>> {
    let mut out = Vec::with_capacity(senders.len());
    for sender in senders {
        let member = match room.state_event(&StateEventType::RoomMember, sender.as_str()) {
            None => None,
            Some(current) => match rooms.shared_event(current.event_id.as_str()).await? {
                Some(event) if event.record.pos <= after => Some(event),
                Some(_) => return Ok(None),
                None => None,
            },
        };
        out.push((sender.clone(), member));
    }
    Ok(Some(out))
}

/// What a receiver needs to know to take a shared timeline.
pub struct Viewer<'a> {
    pub user: &'a ruma::UserId,
    pub device: &'a str,
    /// Whom the user ignores.
    pub ignored: &'a HashSet<OwnedUserId>,
    pub limit: usize,
}

/// A receiver's part of a [`Shared`] rendering: its `timeline` object.
pub struct Slice {
    shared: Arc<Shared>,
    from: usize,
}

impl Slice {
    /// The events above `since` as this viewer sees them, if they are the shared ones: none
    /// sent from the viewer's device, none from a user they ignore, no more than their limit.
    /// Lazy-loaded members are the caller's to check ([`Slice::senders`]).
    pub fn new(shared: Arc<Shared>, since: u64, viewer: &Viewer<'_>) -> Option<Self> {
        let events = shared.above(since);
        if events.is_empty() || events.len() > viewer.limit {
            return None;
        }
        let own = |e: &Rendered| {
            e.txn_device.as_deref() == Some(viewer.device) && e.sender == viewer.user
        };
        let ignored = |e: &Rendered| !e.is_state && viewer.ignored.contains(&e.sender);
        if events.iter().any(|e| own(e) || ignored(e)) {
            return None;
        }
        let from = shared.events.len() - events.len();
        Some(Self { shared, from })
    }

    fn events(&self) -> &[Rendered] {
        &self.shared.events[self.from..]
    }

    /// The position just before the first event (the timeline's start).
    pub fn start(&self) -> u64 {
        self.events().first().map_or(0, |e| e.pos.saturating_sub(1))
    }

    /// The member events of the slice's senders as of the timeline's start (`None`: not
    /// known here; lazy-loading receivers take the per-receiver path).
    pub fn senders(&self) -> Option<impl Iterator<Item = &SharedEvent>> {
        let senders = self.shared.senders.as_ref()?;
        let (events, whole) = (self.events(), self.from == 0);
        Some(
            senders
                .iter()
                .filter(move |(user, _)| whole || events.iter().any(|e| e.sender == *user))
                .filter_map(|(_, member)| member.as_ref()),
        )
    }
}

/// `{"events": [...], "limited": false, "prev_batch": "s<start>"}`, the events copied as
/// rendered.
impl Serialize for Slice {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        struct Events<'a>(&'a [Rendered]);
        impl Serialize for Events<'_> {
            fn serialize<S: Serializer>(
                &self,
                serializer: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
                for e in self.0 {
                    seq.serialize_element(&e.json)?;
                }
                seq.end()
            }
        }
        let mut timeline = serializer.serialize_struct("Timeline", 3)?;
        timeline.serialize_field("events", &Events(self.events()))?;
        timeline.serialize_field("limited", &false)?;
        timeline.serialize_field("prev_batch", &token(self.start()))?;
        timeline.end()
    }
}
