//! Unread notification and highlight counts per (user, room), as `/sync` reports them.
//!
//! A count covers the events after the user's read position, or after their own latest
//! event, whichever is later (people have read what they sent). Counts are cached per
//! (user, room) with the stream position they were computed at, so a sync only examines the
//! events that arrived since: O(new events), not O(unread). A moved read position recomputes
//! from scratch, looking at the newest [`MAX_UNREAD_SCAN`] events at most (the count
//! saturates there). Which events count and which highlight is the default push rules'
//! behaviour in short: messages, encrypted events, stickers and call invites notify
//! (`m.notice` does not); a mention (`m.mentions`, display name or user ID in the body)
//! highlights. Full push-rule evaluation comes with the notifications milestone.

use std::collections::HashMap;

use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::Value;

use crate::error::Result;
use crate::rooms::Rooms;

/// Most recent events examined when counting from scratch; the count saturates.
pub const MAX_UNREAD_SCAN: usize = 200;
/// Cached entries before the cache starts over (bounds memory; entries are cheap to redo).
const MAX_ENTRIES: usize = 1_000_000;

const NOTIFYING_TYPES: &[&str] =
    &["m.room.message", "m.room.encrypted", "m.sticker", "m.call.invite"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub notifications: u64,
    pub highlights: u64,
}

impl Counts {
    fn add(&mut self, highlight: bool) {
        self.notifications += 1;
        self.highlights += u64::from(highlight);
    }
}

#[derive(Clone, Copy)]
struct Entry {
    read_pos: Option<u64>,
    upto: u64,
    counts: Counts,
}

#[derive(Default)]
pub struct Unread {
    cache: Mutex<HashMap<(OwnedUserId, OwnedRoomId), Entry>>,
}

/// What one event does to a user's counts.
enum Effect {
    /// The user's own event: everything before it is read.
    Reset,
    Count {
        highlight: bool,
    },
    Nothing,
}

async fn effect(
    rooms: &Rooms,
    event_id: &str,
    user: &UserId,
    displayname: Option<&str>,
) -> Result<Effect> {
    let Some((record, pdu)) = rooms.event(event_id).await? else { return Ok(Effect::Nothing) };
    if pdu.sender == user {
        return Ok(Effect::Reset);
    }
    if record.redacted_by.is_some() || !NOTIFYING_TYPES.contains(&pdu.kind.to_string().as_str()) {
        return Ok(Effect::Nothing);
    }
    let content: Value = pdu.content_as().unwrap_or_default();
    if content["msgtype"] == "m.notice" {
        return Ok(Effect::Nothing);
    }
    let mentioned = content["m.mentions"]["user_ids"]
        .as_array()
        .is_some_and(|ids| ids.iter().any(|u| u.as_str() == Some(user.as_str())));
    let body = content["body"].as_str().unwrap_or_default().to_lowercase();
    let named = displayname
        .map(str::to_lowercase)
        .is_some_and(|n| !n.is_empty() && body.contains(n.as_str()))
        || body.contains(&user.as_str().to_lowercase());
    Ok(Effect::Count { highlight: mentioned || named })
}

impl Unread {
    /// The counts of `user` in `room` as of stream position `current`.
    pub async fn counts(
        &self,
        rooms: &Rooms,
        room: &RoomId,
        user: &UserId,
        displayname: Option<&str>,
        read_pos: Option<u64>,
        current: u64,
    ) -> Result<Counts> {
        let key = (user.to_owned(), room.to_owned());
        let cached = self.cache.lock().get(&key).copied();
        let counts = match cached {
            Some(e) if e.read_pos == read_pos && e.upto == current => e.counts,
            Some(e) if e.read_pos == read_pos && e.upto < current => {
                // Only what arrived since the last count, oldest first.
                let ids = rooms
                    .store()
                    .room_events(
                        room.as_str(),
                        Some(e.upto),
                        Some(current + 1),
                        false,
                        MAX_UNREAD_SCAN + 1,
                    )
                    .await?;
                if ids.len() > MAX_UNREAD_SCAN {
                    self.count_from_scratch(rooms, room, user, displayname, read_pos, current)
                        .await?
                } else {
                    let mut counts = e.counts;
                    for (_, id) in ids {
                        match effect(rooms, &id, user, displayname).await? {
                            Effect::Reset => counts = Counts::default(),
                            Effect::Count { highlight } => counts.add(highlight),
                            Effect::Nothing => {}
                        }
                    }
                    counts
                }
            }
            _ => self.count_from_scratch(rooms, room, user, displayname, read_pos, current).await?,
        };
        let mut cache = self.cache.lock();
        if cache.len() >= MAX_ENTRIES {
            cache.clear();
        }
        cache.insert(key, Entry { read_pos, upto: current, counts });
        Ok(counts)
    }

    /// Counts backwards from `current` to the read position or the user's own last event.
    async fn count_from_scratch(
        &self,
        rooms: &Rooms,
        room: &RoomId,
        user: &UserId,
        displayname: Option<&str>,
        read_pos: Option<u64>,
        current: u64,
    ) -> Result<Counts> {
        let ids = rooms
            .store()
            .room_events(room.as_str(), read_pos, Some(current + 1), true, MAX_UNREAD_SCAN)
            .await?;
        let mut counts = Counts::default();
        for (_, id) in ids {
            match effect(rooms, &id, user, displayname).await? {
                Effect::Reset => break,
                Effect::Count { highlight } => counts.add(highlight),
                Effect::Nothing => {}
            }
        }
        Ok(counts)
    }
}
