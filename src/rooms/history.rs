//! Reading a room's history: bounded scans of its timeline that keep only the events a user
//! may see ([`HistoryAccess`]) and a filter lets through. `/messages`, `/context` and the
//! timelines of `/sync` are built on [`Rooms::scan`].
//!
//! **Bounded work.** One scan examines at most [`MAX_SCANNED`] events, whatever the filter
//! or the visibility hides; it then stops and says where, so that the caller hands out a
//! token to continue from (`/messages` `end`, a limited `/sync` timeline's `prev_batch`).

use std::sync::Arc;

use ruma::api::client::filter::RoomEventFilter;

use super::pdu::Pdu;
use super::visibility::HistoryAccess;
use super::{Room, Rooms, SharedEvent};
use crate::error::Result;
use crate::storage::rooms::EventRecord;

/// Most events one request examines in a room's timeline.
pub const MAX_SCANNED: usize = 1000;

/// Events the timestamp seek looks past (ones the user may not read) before giving up.
const TIMESTAMP_SEEK_STEPS: usize = 64;

/// Events read from storage per round trip.
const BATCH: usize = 128;

/// A stored event with its stream position.
pub struct StoredEvent {
    pub pos: u64,
    pub record: Arc<EventRecord>,
    pub pdu: Arc<Pdu>,
}

/// Which way to read, and where to start and stop (stream positions).
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// Newest first: events at or below `from`, above `until` (exclusive) if given.
    Backward { from: u64, until: Option<u64> },
    /// Oldest first: events above `from` (exclusive), at or below `until` if given.
    Forward { from: u64, until: Option<u64> },
}

/// What a scan found, in the order read.
pub struct Scanned {
    pub events: Vec<StoredEvent>,
    /// Where to continue: backward, the highest position not yet examined (every position
    /// above it was); forward, the highest position examined.
    pub cursor: u64,
    /// Nothing is left in the scanned range.
    pub exhausted: bool,
    /// The filter left out some of the events examined.
    pub filtered_out: bool,
}

impl Rooms {
    /// Reads up to `limit` events of `room` that `access` lets the user see and `filter`
    /// lets through, examining at most [`MAX_SCANNED`] events.
    pub async fn scan(
        &self,
        room: &Room,
        access: &HistoryAccess,
        direction: Direction,
        limit: usize,
        filter: Option<&RoomEventFilter>,
    ) -> Result<Scanned> {
        let mut events = Vec::new();
        let mut scanned = 0;
        let mut filtered_out = false;
        // Clamp the range to what the user can possibly read.
        let (mut cursor, mut exhausted) = match direction {
            Direction::Backward { from, .. } => {
                let top = from.min(access.until);
                (top, top == 0 || top < access.from)
            }
            Direction::Forward { from, until } => {
                let bottom = from.max(access.from.saturating_sub(1));
                let top = until.unwrap_or(u64::MAX).min(access.until);
                (bottom, bottom >= top)
            }
        };
        while !exhausted && events.len() < limit && scanned < MAX_SCANNED {
            let want = (limit - events.len()).clamp(16, BATCH).min(MAX_SCANNED - scanned);
            let batch = match direction {
                Direction::Backward { until, .. } => {
                    let floor = access.from.checked_sub(1);
                    let lower = match (until, floor) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                    self.room_events(room, lower, Some(cursor.saturating_add(1)), true, want)
                        .await?
                }
                Direction::Forward { until, .. } => {
                    let top = until.unwrap_or(u64::MAX).min(access.until);
                    self.room_events(room, Some(cursor), Some(top.saturating_add(1)), false, want)
                        .await?
                }
            };
            let (short, n) = (batch.len() < want, batch.len());
            let mut stopped_early = false;
            for (i, (pos, event_id)) in batch.into_iter().enumerate() {
                scanned += 1;
                cursor = match direction {
                    Direction::Backward { .. } => pos.saturating_sub(1),
                    Direction::Forward { .. } => pos,
                };
                let Some(SharedEvent { record, pdu }) = self.shared_event(&event_id).await? else {
                    continue;
                };
                let wanted = filter.is_none_or(|f| super::filter::allows(f, &pdu));
                filtered_out |= !wanted;
                if wanted && access.can_see(pos, &pdu) {
                    events.push(StoredEvent { pos, record, pdu });
                    if events.len() >= limit {
                        stopped_early = i + 1 < n;
                        break;
                    }
                }
            }
            let bottom = matches!(direction, Direction::Backward { .. }) && cursor == 0;
            exhausted = bottom || (short && !stopped_early);
        }
        Ok(Scanned { events, cursor, exhausted, filtered_out })
    }

    /// The event nearest to `ts` (milliseconds) at or after it (`backwards`: at or before)
    /// that `access` lets the user see: one seek in the room's timestamp index, started at
    /// the edge of what the user can read, looking past at most 64 events they may not, then
    /// one bounded [`Rooms::scan`] of the timeline from there.
    pub async fn event_near(
        &self,
        room: &Room,
        access: &HistoryAccess,
        ts: u64,
        backwards: bool,
    ) -> Result<Option<Pdu>> {
        let store = self.store();
        let room_id = room.id.as_str();
        // Start within the readable window, so that what precedes (or follows) it costs
        // nothing.
        let edge = if backwards {
            match access.until {
                u64::MAX => None,
                until => store
                    .room_events(room_id, None, Some(until.saturating_add(1)), true, 1)
                    .await?
                    .pop(),
            }
        } else {
            match access.from {
                0 => None,
                from => store.room_events(room_id, Some(from - 1), None, false, 1).await?.pop(),
            }
        };
        let mut ts = ts;
        if let Some((_, event_id)) = edge
            && let Some((_, pdu)) = self.event(&event_id).await?
        {
            let edge_ts: u64 = pdu.origin_server_ts.get().into();
            ts = if backwards { ts.min(edge_ts) } else { ts.max(edge_ts) };
        }
        let candidates =
            store.room_events_by_ts(room_id, ts, backwards, TIMESTAMP_SEEK_STEPS).await?;
        let mut last = None;
        for (_, pos, event_id) in candidates {
            let Some((_, pdu)) = self.event(&event_id).await? else { continue };
            if access.can_see(pos, &pdu) {
                return Ok(Some(pdu));
            }
            last = Some(pos);
        }
        // Past a run the user may not read (history before their join, say), the timeline
        // itself is scanned on from there, within the bound of one scan.
        let Some(last) = last else { return Ok(None) };
        let direction = if backwards {
            Direction::Backward { from: last.saturating_sub(1), until: None }
        } else {
            Direction::Forward { from: last, until: None }
        };
        Ok(self
            .scan(room, access, direction, 1, None)
            .await?
            .events
            .pop()
            .map(|e| Arc::unwrap_or_clone(e.pdu)))
    }
}
