//! Full-text search over room events (`POST /search`), on an inverted index of our own in
//! RocksDB (CF `search_index`), not tantivy: the index is a handful of keys per event
//! written in the event's own batch (so kill -9 never loses or half-writes it), and
//! queries need no second storage engine.
//!
//! **Terms.** [`words`] normalises text (Unicode NFKD, combining marks dropped, lowercase)
//! and splits it at every character that is not a letter or digit. An event is indexed
//! under `<key>:<word>` with the count of that word, where `<key>` is `b` (`content.body`
//! of `m.room.message`), `n` (`content.name` of `m.room.name`) or `t` (`content.topic` of
//! `m.room.topic`). Encrypted events have no such content: nothing of them is indexed.
//!
//! **Redaction.** The redaction's batch deletes its target's entries; and every hit is read
//! back (the stored copy, redacted in place) and matched again, so a redacted event can
//! never be found by its old text.
//!
//! **Visibility.** Every hit passes [`HistoryAccess::can_see`] before it is returned, like
//! every other path that hands out events.
//!
//! **Bounded work.** A query reads at most [`MAX_POSTINGS_PER_ROOM`] postings of one term
//! per room and examines at most [`MAX_CANDIDATES`] events; `recent` order pages by stream
//! position, `rank` order by offset.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use ruma::api::client::filter::RoomEventFilter;
use ruma::events::TimelineEventType;
use ruma::{OwnedRoomId, UserId};
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use super::pdu::Pdu;
use super::visibility::HistoryAccess;
use super::{Room, Rooms};
use crate::error::{Error, Result};
use crate::storage::rooms::EventRecord;

/// `meta` key marking that every stored event is in the search index.
const SEARCH_INDEX_BUILT: &str = "search_index_built";

/// Longest word indexed, in characters (longer ones are cut).
const MAX_WORD_CHARS: usize = 64;
/// Most distinct terms indexed for one event.
const MAX_TERMS_PER_EVENT: usize = 512;
/// Most postings of one term read in one room for one query.
pub const MAX_POSTINGS_PER_ROOM: usize = 1000;
/// Most events one query examines.
pub const MAX_CANDIDATES: usize = 2000;
/// Postings one query reads in all (shared out over the user's rooms and the keys, at least
/// [`MIN_POSTINGS_PER_ROOM`] each): a user in thousands of rooms cannot make one search read
/// millions of rows.
const MAX_TOTAL_POSTINGS: usize = 4 * MAX_CANDIDATES;
const MIN_POSTINGS_PER_ROOM: usize = 10;
/// Most words of a search term used.
const MAX_QUERY_WORDS: usize = 16;

/// The normalised words of a text: NFKD, combining marks dropped, lowercase, split at
/// every character that is neither a letter nor a digit.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = 0;
    for c in text.nfkd() {
        if is_combining_mark(c) {
            continue;
        }
        if c.is_alphanumeric() {
            if chars < MAX_WORD_CHARS {
                current.extend(c.to_lowercase());
                chars += 1;
            }
        } else if !current.is_empty() {
            out.push(std::mem::take(&mut current));
            chars = 0;
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The searchable keys: `(name in the API, content field, event type, index prefix)`.
const KEYS: [(&str, &str, TimelineEventType, char); 3] = [
    ("content.body", "body", TimelineEventType::RoomMessage, 'b'),
    ("content.name", "name", TimelineEventType::RoomName, 'n'),
    ("content.topic", "topic", TimelineEventType::RoomTopic, 't'),
];

/// The index prefix of an API key name (`content.body` …).
pub fn key_prefix(name: &str) -> Option<char> {
    KEYS.iter().find(|(n, ..)| *n == name).map(|k| k.3)
}

/// The text of an event under one key, if the event has it.
fn text_of(pdu: &Pdu, prefix: char) -> Option<String> {
    let (_, field, kind, _) = KEYS.iter().find(|k| k.3 == prefix)?;
    if pdu.kind != *kind {
        return None;
    }
    let content: serde_json::Value = pdu.content_as()?;
    content.get(*field)?.as_str().map(str::to_owned)
}

/// The index terms of an event with their counts (`b:word` …); empty for events nothing
/// searchable is in.
pub fn index_terms(pdu: &Pdu) -> Vec<(String, u32)> {
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for (_, _, _, prefix) in &KEYS {
        let Some(text) = text_of(pdu, *prefix) else { continue };
        for word in words(&text) {
            let term = format!("{prefix}:{word}");
            if counts.len() >= MAX_TERMS_PER_EVENT && !counts.contains_key(&term) {
                continue;
            }
            *counts.entry(term).or_default() += 1;
        }
    }
    counts.into_iter().collect()
}

/// How a search orders its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Most occurrences of the search words first, then newest.
    Rank,
    /// Newest first.
    Recent,
}

/// One search, as `POST /search` asks it.
pub struct EventSearch<'a> {
    pub user: &'a UserId,
    pub term: &'a str,
    /// Index prefixes of the keys searched (`b`, `n`, `t`).
    pub keys: Vec<char>,
    pub filter: &'a RoomEventFilter,
    pub order: Order,
    pub limit: usize,
    pub next_batch: Option<&'a str>,
}

/// One event found.
pub struct Hit {
    pub room: Arc<Room>,
    pub access: Arc<HistoryAccess>,
    pub pos: u64,
    pub record: EventRecord,
    pub pdu: Pdu,
    pub rank: f64,
}

/// A page of results.
pub struct Found {
    pub hits: Vec<Hit>,
    /// How many matching events the query found (at most what it examined).
    pub count: usize,
    pub next_batch: Option<String>,
    /// The normalised search words (`highlights`).
    pub words: Vec<String>,
}

/// Where a page continues: `r<pos>` (recent: below that position), `k<offset>` (rank).
enum Cursor {
    Start,
    Before(u64),
    Offset(usize),
}

fn parse_cursor(token: Option<&str>, order: Order) -> Result<Cursor> {
    let bad = || Error::InvalidParam("Invalid next_batch".into());
    match token {
        None => Ok(Cursor::Start),
        Some(t) => match (order, t.split_at_checked(1)) {
            (Order::Recent, Some(("r", pos))) => pos.parse().map(Cursor::Before).map_err(|_| bad()),
            (Order::Rank, Some(("k", n))) => n.parse().map(Cursor::Offset).map_err(|_| bad()),
            _ => Err(bad()),
        },
    }
}

impl Rooms {
    /// Searches the events of the user's rooms (those the filter allows) for every word of
    /// the search term, in the keys asked, returning only events the user may see.
    pub async fn search_events(&self, q: EventSearch<'_>) -> Result<Found> {
        let mut query_words = words(q.term);
        query_words.sort();
        query_words.dedup();
        query_words.truncate(MAX_QUERY_WORDS);
        let cursor = parse_cursor(q.next_batch, q.order)?;
        let empty =
            Found { hits: Vec::new(), count: 0, next_batch: None, words: query_words.clone() };
        // The longest word drives the index read (usually the rarest); the others are
        // matched on the events read.
        let Some(driver) = query_words.iter().max_by_key(|w| w.len()).cloned() else {
            return Ok(empty);
        };
        let before = match cursor {
            Cursor::Before(pos) => Some(pos),
            _ => None,
        };
        let rooms: Vec<Arc<Room>> = self
            .rooms_of(q.user)
            .into_iter()
            .filter(|r| super::filter::allows_room(q.filter, &r.id))
            .collect();
        // Postings: (pos, room index, event ID), deduplicated across keys.
        let mut postings: HashMap<u64, (usize, String)> = HashMap::new();
        let mut capped_at: Option<u64> = None;
        let per_room = (MAX_TOTAL_POSTINGS / (rooms.len() * q.keys.len()).max(1))
            .clamp(MIN_POSTINGS_PER_ROOM, MAX_POSTINGS_PER_ROOM);
        for (i, room) in rooms.iter().enumerate() {
            for key in &q.keys {
                let term = format!("{key}:{driver}");
                let found =
                    self.store().search_postings(&term, room.id.as_str(), before, per_room).await?;
                if found.len() >= per_room
                    && let Some((lowest, _)) = found.last()
                {
                    capped_at = Some(capped_at.map_or(*lowest, |c: u64| c.max(*lowest)));
                }
                for (pos, event_id) in found {
                    postings.insert(pos, (i, event_id));
                }
            }
        }
        let mut candidates: Vec<(u64, usize, String)> =
            postings.into_iter().map(|(pos, (i, id))| (pos, i, id)).collect();
        candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
        // Below the highest capped room's lowest posting, some room's postings were not
        // read: the examination stops there and the next page starts there.
        if let Some(cap) = capped_at {
            candidates.retain(|c| c.0 >= cap);
        }
        let mut truncated = capped_at.is_some();
        if candidates.len() > MAX_CANDIDATES {
            candidates.truncate(MAX_CANDIDATES);
            truncated = true;
        }
        let mut accesses: HashMap<usize, Option<Arc<HistoryAccess>>> = HashMap::new();
        let mut hits = Vec::new();
        let mut last_examined = None;
        for (pos, i, event_id) in candidates {
            if q.order == Order::Recent && hits.len() > q.limit {
                break;
            }
            last_examined = Some(pos);
            let room = &rooms[i];
            let access = match accesses.get(&i) {
                Some(a) => a.clone(),
                None => {
                    let a = self.readable(room, q.user).await.ok().map(Arc::new);
                    accesses.insert(i, a.clone());
                    a
                }
            };
            let Some(access) = access else { continue };
            let Some((record, pdu)) = self.event(&event_id).await? else { continue };
            if record.redacted_by.is_some()
                || record.room_id != room.id.as_str()
                || !super::filter::allows(q.filter, &pdu)
                || !access.can_see(pos, &pdu)
            {
                continue;
            }
            // The stored copy is matched again: every word, in one of the keys asked.
            let mut counts: HashMap<&str, u32> = HashMap::new();
            for key in &q.keys {
                if let Some(text) = text_of(&pdu, *key) {
                    for w in words(&text) {
                        if let Some(qw) = query_words.iter().find(|qw| **qw == w) {
                            *counts.entry(qw.as_str()).or_default() += 1;
                        }
                    }
                }
            }
            if counts.len() < query_words.len() {
                continue;
            }
            let rank = f64::from(counts.values().sum::<u32>());
            hits.push(Hit { room: room.clone(), access, pos, record, pdu, rank });
        }
        let count = hits.len();
        match (q.order, cursor) {
            (Order::Recent, _) => {
                let more = hits.len() > q.limit;
                hits.truncate(q.limit);
                let next_batch = if more {
                    hits.last().map(|h| format!("r{}", h.pos))
                } else if truncated {
                    last_examined.map(|p| format!("r{p}"))
                } else {
                    None
                };
                Ok(Found { hits, count, next_batch, words: query_words })
            }
            (Order::Rank, cursor) => {
                hits.sort_by(|a, b| {
                    b.rank
                        .partial_cmp(&a.rank)
                        .unwrap_or(std::cmp::Ordering::Equal)
                        .then(b.pos.cmp(&a.pos))
                });
                let offset = match cursor {
                    Cursor::Offset(n) => n,
                    _ => 0,
                };
                let page: Vec<Hit> = hits.into_iter().skip(offset).take(q.limit + 1).collect();
                let more = page.len() > q.limit;
                let mut page = page;
                page.truncate(q.limit);
                let next_batch = more.then(|| format!("k{}", offset + q.limit));
                Ok(Found { hits: page, count, next_batch, words: query_words })
            }
        }
    }

    /// Indexes the events stored before the search index existed (a one-time migration,
    /// run in the background at start-up; `meta` `search_index_built` marks it done). Events
    /// written meanwhile are indexed in their own batches; rewriting an entry is harmless,
    /// and a redaction racing the migration is caught by the re-check of every hit.
    pub async fn build_search_index(&self) -> Result<()> {
        if self.store().meta(SEARCH_INDEX_BUILT).await?.is_some() {
            return Ok(());
        }
        let rooms: Vec<Arc<Room>> = self.rooms.read().values().cloned().collect();
        let mut indexed = 0usize;
        for room in rooms {
            let until = room.last_pos();
            let mut after = None;
            loop {
                let batch = self
                    .store()
                    .room_events(room.id.as_str(), after, Some(until.saturating_add(1)), false, 512)
                    .await?;
                let Some((last, _)) = batch.last() else { break };
                after = Some(*last);
                let mut entries = Vec::new();
                for (pos, event_id) in batch {
                    let Some(record) = self.store().event(&event_id).await? else { continue };
                    if record.redacted_by.is_some() {
                        continue;
                    }
                    let Ok(id) = ruma::OwnedEventId::try_from(event_id.as_str()) else { continue };
                    let pdu = Pdu::from_json(record.pdu, &id, &room.id)?;
                    let terms = index_terms(&pdu);
                    if !terms.is_empty() {
                        entries.push((pos, event_id, terms));
                    }
                }
                indexed += entries.len();
                self.store().index_search_terms(room.id.as_str(), entries).await?;
            }
        }
        self.store().set_meta(SEARCH_INDEX_BUILT, b"1".to_vec()).await?;
        if indexed > 0 {
            tracing::info!(events = indexed, "indexed the stored events for search");
        }
        Ok(())
    }

    /// The rooms among `hits` (for `include_state` and `groupings`), each once.
    pub fn rooms_of_hits(hits: &[Hit]) -> Vec<OwnedRoomId> {
        let mut seen = HashSet::new();
        hits.iter().filter(|h| seen.insert(h.room.id.clone())).map(|h| h.room.id.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_normalised() {
        assert_eq!(words("Héllo, WORLD! Crème-brûlée"), vec!["hello", "world", "creme", "brulee"]);
        assert_eq!(words("  ...  "), Vec::<String>::new());
        assert_eq!(words("ｆｕｌｌ width"), vec!["full", "width"]);
        assert_eq!(words("Straße 42"), vec!["straße", "42"]);
    }
}
