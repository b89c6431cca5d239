//! Push rules: each user's ruleset, its edits, and the evaluation of an event against it.
//!
//! A user's rules live in their global account data `m.push_rules` (`{"global": ruleset}`),
//! the copy clients read in `/sync`, so every edit is one account-data write and reaches the
//! user's clients like any other account-data change. A user who never edited their rules
//! has no such entry and gets the spec's server-default ruleset (ruma's
//! `Ruleset::server_default`); stored rulesets are brought up to date with the current
//! server defaults when read (`update_with_server_default`: their enabled flags and actions
//! kept). Rulesets are cached in memory; edits of one user are serialised.
//!
//! Evaluation ([`evaluate`]) is ruma's rule matching over an event flattened once
//! ([`FlatEvent`]) and a room context built once per event ([`room_ctx`]), the user's ID and
//! display name filled in per user: cheap enough to run for every member of a large room.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use parking_lot::Mutex;
use ruma::events::StateEventType;
use ruma::push::{
    Action, AnyPushRuleRef, FlattenedJson, PushCondition, PushConditionPowerLevelsCtx,
    PushConditionRoomCtx, Ruleset, Tweak,
};
use ruma::serde::Raw;
use ruma::{OwnedUserId, UInt, UserId};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::rooms::pdu::Pdu;
use crate::rooms::{Room, Rooms};
use crate::services::user_data::UserData;

/// The account-data type holding a user's push rules.
pub const PUSH_RULES: &str = "m.push_rules";
/// Cached rulesets before the cache starts over.
const MAX_CACHED: usize = 100_000;
/// Stripes of the per-user edit lock.
const STRIPES: usize = 64;
/// User-defined rules a user may have (each kind together); the account-data size limit
/// also applies.
pub const MAX_USER_RULES: usize = 500;
/// Relations followed to find an event's thread (the spec recommends at most 3).
const MAX_THREAD_HOPS: usize = 3;

/// A user's ruleset and what evaluating it needs.
pub struct UserRules {
    pub ruleset: Ruleset,
    /// Whether any rule has a `contains_display_name` condition (only then is the user's
    /// display name in the room looked up).
    needs_display_name: bool,
    /// Per rule, in the ruleset's order: its slot in an event's [`Memo`] when its outcome is
    /// the same for every user ([`user_independent`]), judged once here rather than per
    /// rule per member per event.
    memo_slots: Vec<Option<usize>>,
}

impl UserRules {
    // `contains_display_name` is deprecated (spec v1.17) but users may still have rules with it.
    #[allow(deprecated)]
    fn new(ruleset: Ruleset) -> Self {
        let needs_display_name =
            ruleset.override_.iter().chain(ruleset.underride.iter()).any(|r| {
                r.conditions.iter().any(|c| matches!(c, PushCondition::ContainsDisplayName))
            });
        let shared = shared_rule_ids();
        let memo_slots = ruleset
            .iter()
            .map(|rule| {
                if !user_independent(rule) {
                    return None;
                }
                shared.iter().position(|id| id == rule.rule_id()).filter(|i| *i < MEMO_SLOTS)
            })
            .collect();
        Self { ruleset, needs_display_name, memo_slots }
    }
}

/// The IDs of the server-default rules whose outcome does not depend on the user, each with
/// its slot in a [`Memo`].
fn shared_rule_ids() -> &'static [String] {
    static IDS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        Ruleset::server_default(ruma::user_id!("@_:invalid"))
            .iter()
            .filter(|rule| user_independent(*rule))
            .map(|rule| rule.rule_id().to_owned())
            .collect()
    });
    &IDS
}

pub struct PushRules {
    cache: Mutex<HashMap<OwnedUserId, Arc<UserRules>>>,
    /// Events prepared for evaluation, by stream position.
    prepared: quick_cache::sync::Cache<u64, Arc<Prepared>>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for PushRules {
    fn default() -> Self {
        Self {
            cache: Mutex::new(HashMap::new()),
            prepared: quick_cache::sync::Cache::new(PREPARED_CACHED),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: Default::default(),
        }
    }
}

impl PushRules {
    /// The user's rules (cached).
    pub async fn get(&self, user_data: &UserData, user: &UserId) -> Result<Arc<UserRules>> {
        if let Some(rules) = self.cache.lock().get(user) {
            return Ok(rules.clone());
        }
        let rules = Arc::new(UserRules::new(load(user_data, user).await?));
        let mut cache = self.cache.lock();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        // An edit stored meanwhile (`update`) is newer than what was loaded: it stays.
        Ok(cache.entry(user.to_owned()).or_insert(rules).clone())
    }

    /// The event at stream position `pos`, prepared for evaluation (cached: the members of a
    /// room share one).
    pub async fn prepared(
        &self,
        rooms: &Rooms,
        room: &Room,
        pos: u64,
        pdu: &Pdu,
    ) -> Result<Arc<Prepared>> {
        if let Some(p) = self.prepared.get(&pos) {
            return Ok(p);
        }
        let p = Arc::new(Prepared::new(rooms, room, pdu).await?);
        self.prepared.insert(pos, p.clone());
        Ok(p)
    }

    /// Changes the user's ruleset with `edit` and stores it (account data `m.push_rules`,
    /// which wakes the user's syncs). Nothing is stored when `edit` fails.
    pub async fn update<T>(
        &self,
        user_data: &UserData,
        user: &UserId,
        edit: impl FnOnce(&mut Ruleset) -> Result<T>,
    ) -> Result<T> {
        let stripe = (self.hasher.hash_one(user) % STRIPES as u64) as usize;
        let _guard = self.stripes[stripe].lock().await;
        let mut ruleset = load(user_data, user).await?;
        let out = edit(&mut ruleset)?;
        let user_defined = ruleset.iter().filter(|r| !r.is_server_default()).count();
        if user_defined > MAX_USER_RULES {
            return Err(Error::TooMany(format!("At most {MAX_USER_RULES} push rules per user")));
        }
        let content = json!({ "global": ruleset_json(&ruleset) });
        user_data.set_account_data(user, None, PUSH_RULES, content).await?;
        self.cache.lock().insert(user.to_owned(), Arc::new(UserRules::new(ruleset)));
        Ok(out)
    }
}

/// The stored ruleset, or the server default.
async fn load(user_data: &UserData, user: &UserId) -> Result<Ruleset> {
    let defaults = Ruleset::server_default(user);
    let Some(content) = user_data.account_data(user, None, PUSH_RULES).await? else {
        return Ok(defaults);
    };
    match serde_json::from_value::<Ruleset>(content["global"].clone()) {
        Ok(mut ruleset) => {
            ruleset.update_with_server_default(defaults);
            Ok(ruleset)
        }
        Err(e) => {
            tracing::warn!(%user, error = %e, "stored push rules unreadable; using the defaults");
            Ok(defaults)
        }
    }
}

/// The `m.push_rules` account-data content of a user who never changed their rules (sent in
/// initial syncs, as clients read their rules from it).
pub fn default_content(user: &UserId) -> Value {
    json!({ "global": ruleset_json(&Ruleset::server_default(user)) })
}

/// A ruleset as clients expect it: every kind listed, empty ones as `[]` (ruma leaves them
/// out; matrix-js-sdk and Element expect all five).
pub fn ruleset_json(ruleset: &Ruleset) -> Value {
    let mut value = serde_json::to_value(ruleset).unwrap_or_else(|_| json!({}));
    if let Some(obj) = value.as_object_mut() {
        for kind in ["override", "content", "room", "sender", "underride"] {
            obj.entry(kind).or_insert_with(|| json!([]));
        }
    }
    value
}

/// An event flattened once for matching against every member's rules.
pub struct FlatEvent(FlattenedJson);

#[derive(Serialize)]
struct MatchView<'a> {
    #[serde(rename = "type")]
    kind: String,
    content: &'a RawValue,
    sender: &'a UserId,
    room_id: &'a ruma::RoomId,
    event_id: &'a ruma::EventId,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_key: Option<&'a str>,
}

impl FlatEvent {
    /// The event as clients see it (type, content, sender, room, state key), flattened.
    pub fn new(pdu: &Pdu) -> Self {
        let view = MatchView {
            kind: pdu.kind.to_string(),
            content: &pdu.content,
            sender: &pdu.sender,
            room_id: &pdu.room_id,
            event_id: &pdu.event_id,
            state_key: pdu.state_key.as_deref(),
        };
        // Serializing plain strings and a valid JSON value cannot fail; if it did, the event
        // would match nothing.
        let raw = serde_json::value::to_raw_value(&view)
            .unwrap_or_else(|_| RawValue::from_string("{}".to_owned()).expect("valid JSON"));
        Self(FlattenedJson::from_raw(&Raw::<Value>::from_json(raw)))
    }
}

/// The room context of push-rule conditions (member count, power levels), built once per
/// event; [`evaluate`] fills in the user.
pub fn room_ctx(room: &Room, joined_members: usize) -> PushConditionRoomCtx {
    let ctx = PushConditionRoomCtx::new(
        room.id.clone(),
        UInt::try_from(joined_members as u64).unwrap_or(UInt::MAX),
        ruma::owned_user_id!("@_:invalid"),
        String::new(),
    );
    ctx.with_power_levels(PushConditionPowerLevelsCtx::from(room.power_levels()))
}

/// The user's display name in the room (their member event's, else their localpart).
pub fn display_name_in(room: &Room, user: &UserId) -> String {
    /// Only the name of the member event's content (the rest is skipped, not built).
    #[derive(serde::Deserialize)]
    struct Named {
        displayname: Option<Value>,
    }
    room.state_event(&StateEventType::RoomMember, user.as_str())
        .and_then(|e| e.content_as::<Named>())
        .and_then(|c| match c.displayname {
            Some(Value::String(name)) => Some(name),
            _ => None,
        })
        .unwrap_or_else(|| user.localpart().to_owned())
}

/// Slots of a [`Memo`] (the server-default rules number about 20).
const MEMO_SLOTS: usize = 64;

/// Server-default rules whose conditions name the user (their ID, name or mentions).
const USER_DEPENDENT_RULES: &[&str] = &[
    ".m.rule.invite_for_me",
    ".m.rule.is_user_mention",
    ".m.rule.contains_display_name",
    ".m.rule.contains_user_name",
];

/// Per event, what the conditions of the server-default rules that do not depend on the
/// user said, by slot ([`UserRules`]): evaluated for the first member, looked up for the
/// others. (Users cannot change the conditions of server-default rules, only enable them and
/// set actions.) Lock-free: 0 not yet known, 1 no, 2 yes.
pub struct Memo([std::sync::atomic::AtomicU8; MEMO_SLOTS]);

impl Default for Memo {
    fn default() -> Self {
        Self(std::array::from_fn(|_| std::sync::atomic::AtomicU8::new(0)))
    }
}

/// An event made ready for evaluation against many users' rules, once: flattened, with the
/// room context (member count, power levels) of its first evaluation, its thread, and the
/// [`Memo`] every user's evaluation shares. `/sync`'s unread counts and the background
/// evaluation of the same event use one ([`PushRules::prepared`]).
pub struct Prepared {
    pub flat: FlatEvent,
    ctx: PushConditionRoomCtx,
    pub thread: Option<Arc<str>>,
    memo: Memo,
}

impl Prepared {
    pub async fn new(rooms: &Rooms, room: &Room, pdu: &Pdu) -> Result<Self> {
        Ok(Self {
            flat: FlatEvent::new(pdu),
            ctx: room_ctx(room, room.joined_count()),
            thread: thread_of(rooms, pdu).await?.map(Arc::from),
            memo: Memo::default(),
        })
    }

    /// What the user's rules say about the event (see [`evaluate`]).
    pub async fn evaluate(
        &self,
        rules: &UserRules,
        sender: &UserId,
        room: &Room,
        user: &UserId,
    ) -> Vec<Action> {
        let mut ctx = self.ctx.clone();
        evaluate(rules, &self.flat, sender, &mut ctx, room, user, &self.memo).await
    }
}

/// Prepared events kept (the newest, by use).
const PREPARED_CACHED: usize = 4_096;

/// Whether a rule's outcome is the same for every user (other than the sender).
#[allow(deprecated)]
fn user_independent(rule: AnyPushRuleRef<'_>) -> bool {
    if !rule.is_server_default() || USER_DEPENDENT_RULES.contains(&rule.rule_id()) {
        return false;
    }
    match rule {
        AnyPushRuleRef::Override(r) | AnyPushRuleRef::Underride(r) => {
            r.conditions.iter().all(|c| {
                matches!(
                    c,
                    PushCondition::EventMatch(_)
                        | PushCondition::EventPropertyIs(_)
                        | PushCondition::EventPropertyContains(_)
                        | PushCondition::RoomMemberCount(_)
                        | PushCondition::SenderNotificationPermission(_)
                )
            })
        }
        _ => false,
    }
}

/// What the user's rules say about the event: the matching rule's actions (empty: no rule
/// matched, or the user sent it). `memo` is the event's, shared by every user it is
/// evaluated for.
pub async fn evaluate(
    rules: &UserRules,
    event: &FlatEvent,
    sender: &UserId,
    ctx: &mut PushConditionRoomCtx,
    room: &Room,
    user: &UserId,
    memo: &Memo,
) -> Vec<Action> {
    if sender == user {
        return Vec::new();
    }
    ctx.user_id = user.to_owned();
    ctx.user_display_name =
        if rules.needs_display_name { display_name_in(room, user) } else { String::new() };
    use std::sync::atomic::Ordering::Relaxed;
    for (rule, slot) in rules.ruleset.iter().zip(&rules.memo_slots) {
        let applies = if !rule.enabled() {
            false
        } else if let Some(cell) = slot.and_then(|i| memo.0.get(i)) {
            match cell.load(Relaxed) {
                0 => {
                    let hit = rule.applies(&event.0, ctx).await;
                    cell.store(1 + u8::from(hit), Relaxed);
                    hit
                }
                known => known == 2,
            }
        } else {
            rule.applies(&event.0, ctx).await
        };
        if applies {
            return rule.actions().to_vec();
        }
    }
    Vec::new()
}

/// Whether the actions notify, and whether they highlight.
pub fn notify_highlight(actions: &[Action]) -> (bool, bool) {
    let notify = actions.iter().any(Action::should_notify);
    (notify, notify && actions.iter().any(Action::is_highlight))
}

/// Whether two action lists are the same. Lists with custom actions or tweaks never count
/// as the same (callers only use this to share work, never to decide an outcome).
pub fn same_actions(a: &[Action], b: &[Action]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|pair| match pair {
            (Action::Notify, Action::Notify) => true,
            (Action::SetTweak(Tweak::Sound(x)), Action::SetTweak(Tweak::Sound(y))) => {
                x.as_str() == y.as_str()
            }
            (Action::SetTweak(Tweak::Highlight(x)), Action::SetTweak(Tweak::Highlight(y))) => {
                x == y
            }
            _ => false,
        })
}

/// The thread root the event belongs to: an `m.thread` relation, else (for relations such as
/// reactions and edits) the thread of the related event, at most [`MAX_THREAD_HOPS`] away.
pub async fn thread_of(rooms: &Rooms, pdu: &Pdu) -> Result<Option<String>> {
    let mut content: Value = pdu.content_as().unwrap_or_default();
    for _ in 0..MAX_THREAD_HOPS {
        let relates = &content["m.relates_to"];
        let Some(target) = relates["event_id"].as_str() else { return Ok(None) };
        if relates["rel_type"] == "m.thread" {
            return Ok(Some(target.to_owned()));
        }
        let Some((_, parent)) = rooms.event(target).await? else { return Ok(None) };
        if parent.room_id != pdu.room_id {
            return Ok(None);
        }
        content = parent.content_as().unwrap_or_default();
    }
    Ok(None)
}

#[cfg(test)]
mod same_actions_tests {
    use ruma::push::{Action, Tweak};

    use super::same_actions;

    #[test]
    fn lists_are_the_same_only_with_the_same_actions_in_the_same_order() {
        let sound = |s: &str| Action::SetTweak(Tweak::Sound(s.into()));
        let highlight = |h: bool| Action::SetTweak(Tweak::Highlight(h.into()));
        let a = vec![Action::Notify, sound("default"), highlight(true)];
        assert!(same_actions(&a, &a.clone()));
        assert!(same_actions(&[], &[]));
        assert!(!same_actions(&a, &a[..2]));
        assert!(!same_actions(&a, &[Action::Notify, sound("ring"), highlight(true)]));
        assert!(!same_actions(&a, &[Action::Notify, sound("default"), highlight(false)]));
        assert!(!same_actions(&a, &[sound("default"), Action::Notify, highlight(true)]));
    }
}
