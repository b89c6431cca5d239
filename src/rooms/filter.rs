//! Room event filters (`RoomEventFilter`): the one matcher `/messages` and `/sync` share.

use ruma::UserId;
use ruma::api::client::filter::RoomEventFilter;

/// Does an event of `kind` from `sender` pass the filter's type and sender lists?
/// Type patterns match exactly, or by prefix with a trailing `*`.
pub fn allows(filter: &RoomEventFilter, kind: &str, sender: &UserId) -> bool {
    let matches = |pattern: &String| match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    };
    filter.types.as_ref().is_none_or(|types| types.iter().any(matches))
        && !filter.not_types.iter().any(matches)
        && filter.senders.as_ref().is_none_or(|senders| senders.iter().any(|u| u == sender))
        && !filter.not_senders.iter().any(|u| u == sender)
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
        assert!(allows(&f, "m.room.message", &alice));
        assert!(!allows(&f, "m.room.member", &alice));
        assert!(!allows(&f, "m.reaction", &alice));
        assert!(!allows(&f, "m.room.message", &bob));
    }
}
