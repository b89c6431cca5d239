//! Push rules (`/pushrules`): the spec's defaults, their effect on unread counts, and edits
//! (add with `before`/`after`, delete, enable/disable, actions), mirrored in the
//! `m.push_rules` account data clients read in `/sync`.

use complement_tests::{Session, TestServer, Value, assert_error, enc, json};

const RULES: &str = "/_matrix/client/v3/pushrules";

/// A room of alice (creator) and bob with `extra` more members; bob is in it.
async fn room_of(s: &TestServer, alice: &Session, bob: &Session, extra: &[&Session]) -> String {
    let room = s.create_room(alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(bob, &room).await.0, 200);
    for who in extra {
        assert_eq!(s.join(who, &room).await.0, 200);
    }
    room
}

async fn send(s: &TestServer, who: &Session, room: &str, txn: &str, content: Value) -> String {
    s.send_message(who, room, txn, content).await
}

/// (notification_count, highlight_count) of the room in an initial sync.
async fn counts(s: &TestServer, who: &Session, room: &str) -> (u64, u64) {
    let body = s.sync(who, None, 0).await;
    let unread = &body["rooms"]["join"][room]["unread_notifications"];
    (
        unread["notification_count"].as_u64().unwrap_or_else(|| panic!("no counts: {body}")),
        unread["highlight_count"].as_u64().expect("highlight_count"),
    )
}

fn text(body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body})
}

fn rule_ids(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("rule list")
        .iter()
        .map(|r| r["rule_id"].as_str().expect("rule_id").to_owned())
        .collect()
}

#[tokio::test]
async fn the_default_ruleset_lists_every_kind_and_the_spec_rules() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let (status, body) = s.get(&format!("{RULES}/"), alice.token()).await;
    assert_eq!(status, 200, "{body}");
    let global = &body["global"];
    for kind in ["override", "content", "room", "sender", "underride"] {
        assert!(global[kind].is_array(), "{kind} missing: {body}");
    }
    let overrides = rule_ids(&global["override"]);
    for id in [
        ".m.rule.master",
        ".m.rule.suppress_notices",
        ".m.rule.invite_for_me",
        ".m.rule.member_event",
        ".m.rule.is_user_mention",
        ".m.rule.is_room_mention",
        ".m.rule.tombstone",
        ".m.rule.reaction",
    ] {
        assert!(overrides.contains(&id.to_owned()), "{id} missing: {overrides:?}");
    }
    assert_eq!(overrides[0], ".m.rule.master");
    let underrides = rule_ids(&global["underride"]);
    for id in [
        ".m.rule.call",
        ".m.rule.encrypted_room_one_to_one",
        ".m.rule.room_one_to_one",
        ".m.rule.message",
        ".m.rule.encrypted",
    ] {
        assert!(underrides.contains(&id.to_owned()), "{id} missing: {underrides:?}");
    }
    // The same under /global/, and one rule alone.
    let (status, scope) = s.get(&format!("{RULES}/global/"), alice.token()).await;
    assert_eq!(status, 200);
    assert_eq!(&scope, global);
    let (status, rule) =
        s.get(&format!("{RULES}/global/override/.m.rule.master"), alice.token()).await;
    assert_eq!(status, 200, "{rule}");
    assert_eq!(rule["enabled"], false);
    assert_eq!(rule["default"], true);
    let missing = s.get(&format!("{RULES}/global/override/nope"), alice.token()).await;
    assert_error(&missing, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn a_direct_message_notifies() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of(&s, &alice, &bob, &[]).await;
    send(&s, &alice, &room, "t1", text("hello")).await;
    send(&s, &alice, &room, "t2", text("again")).await;
    assert_eq!(counts(&s, &bob, &room).await, (2, 0));
}

#[tokio::test]
async fn a_group_message_notifies_and_a_mention_highlights() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let carol = s.register("carol", "carol-password").await;
    let room = room_of(&s, &alice, &bob, &[&carol]).await;
    send(&s, &alice, &room, "t1", text("hello all")).await;
    assert_eq!(counts(&s, &bob, &room).await, (1, 0));
    // An intentional mention (m.mentions) highlights bob, not carol.
    send(
        &s,
        &alice,
        &room,
        "t2",
        json!({"msgtype": "m.text", "body": "bob: look", "m.mentions": {"user_ids": [bob.user_id]}}),
    )
    .await;
    assert_eq!(counts(&s, &bob, &room).await, (2, 1));
    assert_eq!(counts(&s, &carol, &room).await, (2, 0));
    // A room mention needs the sender's power (alice created the room: 100).
    send(
        &s,
        &alice,
        &room,
        "t3",
        json!({"msgtype": "m.text", "body": "@room hi", "m.mentions": {"room": true}}),
    )
    .await;
    assert_eq!(counts(&s, &carol, &room).await, (3, 1));
    // carol (power 0) may not notify the room: a plain notification.
    send(
        &s,
        &carol,
        &room,
        "t4",
        json!({"msgtype": "m.text", "body": "@room", "m.mentions": {"room": true}}),
    )
    .await;
    assert_eq!(counts(&s, &bob, &room).await, (4, 2));
}

#[tokio::test]
async fn own_messages_never_notify_and_notices_are_suppressed() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of(&s, &alice, &bob, &[]).await;
    send(&s, &alice, &room, "t1", text("mine")).await;
    assert_eq!(counts(&s, &alice, &room).await, (0, 0));
    send(&s, &alice, &room, "t2", json!({"msgtype": "m.notice", "body": "bot says"})).await;
    assert_eq!(counts(&s, &bob, &room).await, (1, 0));
    // bob answering marks what came before as read.
    send(&s, &bob, &room, "t3", text("ok")).await;
    assert_eq!(counts(&s, &bob, &room).await, (0, 0));
}

#[tokio::test]
async fn a_room_rule_mutes_the_room() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of(&s, &alice, &bob, &[]).await;
    let path = format!("{RULES}/global/room/{}", enc(&room));
    let (status, body) = s.put(&path, bob.token(), json!({"actions": []})).await;
    assert_eq!(status, 200, "{body}");
    send(&s, &alice, &room, "t1", text("you will not hear this")).await;
    assert_eq!(counts(&s, &bob, &room).await, (0, 0));
    // Disabled, the room notifies again.
    let (status, body) =
        s.put(&format!("{path}/enabled"), bob.token(), json!({"enabled": false})).await;
    assert_eq!(status, 200, "{body}");
    let (_, enabled) = s.get(&format!("{path}/enabled"), bob.token()).await;
    assert_eq!(enabled["enabled"], false);
    send(&s, &alice, &room, "t2", text("now you do")).await;
    assert_eq!(counts(&s, &bob, &room).await.0, 2, "counts are recomputed with the new rules");
}

#[tokio::test]
async fn a_keyword_content_rule_highlights() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let carol = s.register("carol", "carol-password").await;
    let room = room_of(&s, &alice, &bob, &[&carol]).await;
    let (status, body) = s
        .put(
            &format!("{RULES}/global/content/cake"),
            bob.token(),
            json!({
                "pattern": "cake",
                "actions": ["notify", {"set_tweak": "highlight"}, {"set_tweak": "sound", "value": "cakealarm.wav"}]
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, rule) = s.get(&format!("{RULES}/global/content/cake"), bob.token()).await;
    assert_eq!(rule["pattern"], "cake");
    assert_eq!(rule["default"], false);
    assert_eq!(rule["enabled"], true);
    send(&s, &alice, &room, "t1", text("who wants Cake?")).await;
    send(&s, &alice, &room, "t2", text("pancakes are not it")).await;
    assert_eq!(counts(&s, &bob, &room).await, (2, 1));
    assert_eq!(counts(&s, &carol, &room).await, (2, 0));
}

#[tokio::test]
async fn rules_are_added_in_order_edited_and_deleted() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let put = |id: &str, query: &str| {
        let path = format!("{RULES}/global/override/{id}{query}");
        let body = json!({
            "conditions": [{"kind": "event_match", "key": "content.body", "pattern": id}],
            "actions": ["notify"]
        });
        let s = &s;
        let alice = &alice;
        async move { s.put(&path, alice.token(), body).await }
    };
    assert_eq!(put("one", "").await.0, 200);
    assert_eq!(put("two", "").await.0, 200);
    assert_eq!(put("three", "?before=one").await.0, 200);
    assert_eq!(put("four", "?after=two").await.0, 200);
    let (_, body) = s.get(&format!("{RULES}/global/"), alice.token()).await;
    let user_rules: Vec<String> =
        rule_ids(&body["override"]).into_iter().filter(|id| !id.starts_with('.')).collect();
    // A new rule is the most important user-defined one (after .m.rule.master);
    // before/after place it.
    assert_eq!(user_rules, ["two", "four", "three", "one"], "{body}");
    assert_eq!(rule_ids(&body["override"])[0], ".m.rule.master");
    // Unknown anchors, server-default IDs and anchors are refused.
    assert_error(&put("five", "?before=nope").await, 404, "M_NOT_FOUND");
    assert_error(&put(".m.rule.mine", "").await, 400, "M_INVALID_PARAM");
    assert_error(&put("six", "?after=.m.rule.master").await, 400, "M_INVALID_PARAM");
    // Actions.
    let actions = format!("{RULES}/global/override/one/actions");
    let (status, _) = s.put(&actions, alice.token(), json!({"actions": ["dont_notify"]})).await;
    assert_eq!(status, 200);
    let (_, got) = s.get(&actions, alice.token()).await;
    assert_eq!(got["actions"], json!(["dont_notify"]), "{got}");
    // A server-default rule's actions and enabled flag can change; it cannot be deleted.
    let master = format!("{RULES}/global/override/.m.rule.master");
    let (status, _) =
        s.put(&format!("{master}/enabled"), alice.token(), json!({"enabled": true})).await;
    assert_eq!(status, 200);
    let (_, got) = s.get(&master, alice.token()).await;
    assert_eq!(got["enabled"], true);
    let (status, _) = s.request(reqwest::Method::DELETE, &master, alice.token(), None).await;
    assert_eq!(status, 400);
    // Delete.
    let one = format!("{RULES}/global/override/one");
    let (status, _) = s.request(reqwest::Method::DELETE, &one, alice.token(), None).await;
    assert_eq!(status, 200);
    assert_error(&s.get(&one, alice.token()).await, 404, "M_NOT_FOUND");
    let gone = s.request(reqwest::Method::DELETE, &one, alice.token(), None).await;
    assert_error(&gone, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn sync_carries_the_rules_as_account_data_and_they_cannot_be_set_there() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let global_rules = |body: &Value| {
        body["account_data"]["events"]
            .as_array()
            .and_then(|events| events.iter().find(|e| e["type"] == "m.push_rules").cloned())
    };
    let first = s.sync(&alice, None, 0).await;
    let rules = global_rules(&first).expect("m.push_rules in an initial sync");
    assert!(rules["content"]["global"]["underride"].is_array(), "{rules}");
    let since = first["next_batch"].as_str().expect("next_batch").to_owned();
    // An edit reaches the next incremental sync.
    let (status, _) = s
        .put(
            &format!("{RULES}/global/sender/{}", enc("@spam:localhost")),
            alice.token(),
            json!({"actions": []}),
        )
        .await;
    assert_eq!(status, 200);
    let next = s.sync(&alice, Some(&since), 5_000).await;
    let rules = global_rules(&next).expect("m.push_rules after an edit");
    assert_eq!(rule_ids(&rules["content"]["global"]["sender"]), ["@spam:localhost"], "{rules}");
    // Server-managed: 405 through /account_data.
    let (status, body) = s
        .put(
            &format!("/_matrix/client/v3/user/{}/account_data/m.push_rules", enc(&alice.user_id)),
            alice.token(),
            json!({"global": {}}),
        )
        .await;
    assert_eq!(status, 405, "{body}");
}
