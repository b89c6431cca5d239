//! Event filters: the one matcher `/messages`, `/context` and `/sync` share for room events
//! (`RoomEventFilter`), and the one for account data (`Filter`).

use ruma::api::client::filter::{Filter, RoomEventFilter, RoomFilter, UrlFilter};
use ruma::{RoomId, UserId};

use super::pdu::Pdu;

/// Type patterns match exactly, or by prefix with a trailing `*`.
fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

fn types_allow(types: Option<&[String]>, not_types: &[String], kind: &str) -> bool {
    types.is_none_or(|types| types.iter().any(|t| type_matches(t, kind)))
        && !not_types.iter().any(|t| type_matches(t, kind))
}

fn senders_allow(
    senders: Option<&[ruma::OwnedUserId]>,
    not_senders: &[ruma::OwnedUserId],
    sender: &UserId,
) -> bool {
    senders.is_none_or(|senders| senders.iter().any(|u| u == sender))
        && !not_senders.iter().any(|u| u == sender)
}

fn rooms_allow(
    rooms: Option<&[ruma::OwnedRoomId]>,
    not_rooms: &[ruma::OwnedRoomId],
    room: &RoomId,
) -> bool {
    rooms.is_none_or(|rooms| rooms.iter().any(|r| r == room))
        && !not_rooms.iter().any(|r| r == room)
}

/// Does an event of `kind` from `sender` pass the filter's type and sender lists?
pub fn allows_kind(filter: &RoomEventFilter, kind: &str, sender: &UserId) -> bool {
    types_allow(filter.types.as_deref(), &filter.not_types, kind)
        && senders_allow(filter.senders.as_deref(), &filter.not_senders, sender)
}

/// Does an event type pass a room event filter's type lists (for events without a sender,
/// such as room account data)?
pub fn allows_event_type(filter: &RoomEventFilter, kind: &str) -> bool {
    types_allow(filter.types.as_deref(), &filter.not_types, kind)
}

/// Does the event pass the filter: types, senders, rooms and `contains_url`?
pub fn allows(filter: &RoomEventFilter, pdu: &Pdu) -> bool {
    if !allows_kind(filter, &pdu.kind.to_string(), &pdu.sender)
        || !allows_room(filter, &pdu.room_id)
    {
        return false;
    }
    match filter.url_filter {
        None => true,
        Some(want) => {
            let has_url = pdu
                .content_as::<serde_json::Value>()
                .is_some_and(|c| c.get("url").is_some_and(|u| u.is_string()));
            has_url == (want == UrlFilter::EventsWithUrl)
        }
    }
}

/// Does the event filter's `rooms`/`not_rooms` let this room through?
pub fn allows_room(filter: &RoomEventFilter, room: &RoomId) -> bool {
    rooms_allow(filter.rooms.as_deref(), &filter.not_rooms, room)
}

/// Does the sync filter's top-level `room.rooms`/`room.not_rooms` include this room?
pub fn includes_room(filter: &RoomFilter, room: &RoomId) -> bool {
    rooms_allow(filter.rooms.as_deref(), &filter.not_rooms, room)
}

/// Does an account-data (or presence) event of `kind` pass a `Filter`?
/// Account data has no sender, so only the type lists apply.
pub fn allows_type(filter: &Filter, kind: &str) -> bool {
    types_allow(filter.types.as_deref(), &filter.not_types, kind)
}

/// Does a `Filter` let nothing through (types `[]`, or `*` among the excluded types)? Then
/// its section need not even be computed.
pub fn excludes_all(filter: &Filter) -> bool {
    filter.types.as_ref().is_some_and(Vec::is_empty) || filter.not_types.iter().any(|t| t == "*")
}

/// Does a presence event of `sender` pass a `Filter` (types and senders)?
pub fn allows_presence(filter: &Filter, sender: &str) -> bool {
    let sender_ok = filter.senders.as_ref().is_none_or(|s| s.iter().any(|u| u.as_str() == sender))
        && !filter.not_senders.iter().any(|u| u.as_str() == sender);
    sender_ok && allows_type(filter, "m.presence")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_match_exactly_or_by_wildcard_prefix_and_senders_by_id() {
        let alice = UserId::parse("@alice:x").unwrap();
        let bob = UserId::parse("@bob:x").unwrap();
        let mut f = RoomEventFilter::default();
        f.types = Some(vec!["m.room.*".into()]);
        f.not_types = vec!["m.room.member".into()];
        f.not_senders = vec![bob.clone()];
        assert!(allows_kind(&f, "m.room.message", &alice));
        assert!(!allows_kind(&f, "m.room.member", &alice));
        assert!(!allows_kind(&f, "m.reaction", &alice));
        assert!(!allows_kind(&f, "m.room.message", &bob));
    }

    #[test]
    fn rooms_and_not_rooms_select_rooms() {
        let one = RoomId::parse("!one:x").unwrap();
        let two = RoomId::parse("!two:x").unwrap();
        let mut f = RoomFilter::default();
        f.rooms = Some(vec![one.clone()]);
        assert!(includes_room(&f, &one));
        assert!(!includes_room(&f, &two));
        f.rooms = None;
        f.not_rooms = vec![one.clone()];
        assert!(!includes_room(&f, &one));
        assert!(includes_room(&f, &two));
    }

    #[test]
    fn account_data_filters_match_types() {
        let mut f = Filter::default();
        f.types = Some(vec!["org.example.*".into()]);
        f.not_types = vec!["org.example.secret".into()];
        assert!(allows_type(&f, "org.example.a"));
        assert!(!allows_type(&f, "org.example.secret"));
        assert!(!allows_type(&f, "m.direct"));
    }
}
