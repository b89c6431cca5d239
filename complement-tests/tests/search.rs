//! Message search (`POST /search`, `room_events`): words of visible events only (history
//! visibility, never events from before the searcher joined a `joined` room), never redacted
//! text, `order_by`, `keys`, `filter`, `event_context`, `include_state`, `groupings`,
//! `next_batch`.

use complement_tests::{Session, TestServer, Value, assert_error, enc, json};

async fn search(s: &TestServer, who: &Session, criteria: Value, next: Option<&str>) -> Value {
    let path = match next {
        Some(n) => format!("/_matrix/client/v3/search?next_batch={}", enc(n)),
        None => "/_matrix/client/v3/search".to_owned(),
    };
    let (status, res) =
        s.post(&path, who.token(), json!({"search_categories": {"room_events": criteria}})).await;
    assert_eq!(status, 200, "{res}");
    res["search_categories"]["room_events"].clone()
}

fn bodies(room_events: &Value) -> Vec<String> {
    room_events["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["result"]["content"]["body"].as_str().unwrap_or("").to_owned())
        .collect()
}

async fn joined_room(s: &TestServer, a: &Session, b: &Session, preset: &str) -> String {
    let room = s.create_room(a, json!({"preset": preset, "invite": [b.user_id]})).await;
    let (status, body) = s.join(b, &room).await;
    assert_eq!(status, 200, "{body}");
    room
}

#[tokio::test]
async fn search_finds_words_in_visible_events() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = joined_room(&s, &alice, &bob, "private_chat").await;
    s.send_message(
        &alice,
        &room,
        "t1",
        json!({"msgtype": "m.text", "body": "The Crème brûlée was great"}),
    )
    .await;
    s.send_message(&alice, &room, "t2", json!({"msgtype": "m.text", "body": "nothing here"})).await;
    s.send_message(
        &bob,
        &room,
        "t3",
        json!({"msgtype": "m.text", "body": "creme BRULEE again, brulee!"}),
    )
    .await;
    let res = search(&s, &bob, json!({"search_term": "brûlée crème"}), None).await;
    assert_eq!(res["count"], 2, "{res}");
    // Ranked: the event with more occurrences first.
    assert_eq!(bodies(&res), vec!["creme BRULEE again, brulee!", "The Crème brûlée was great"]);
    assert_eq!(res["results"][0]["result"]["room_id"], room.as_str());
    assert!(res["highlights"].as_array().unwrap().contains(&json!("brulee")));
    let res = search(&s, &bob, json!({"search_term": "brulee", "order_by": "recent"}), None).await;
    assert_eq!(bodies(&res), vec!["creme BRULEE again, brulee!", "The Crème brûlée was great"]);
    // Whole words: a fragment is no match; every word must be in the event.
    assert_eq!(res["count"], 2);
    assert!(bodies(&search(&s, &bob, json!({"search_term": "brul"}), None).await).is_empty());
    assert!(
        bodies(&search(&s, &bob, json!({"search_term": "brulee nothing"}), None).await).is_empty()
    );
    // A stranger finds nothing.
    let eve = s.register("eve", "eve-password").await;
    assert!(bodies(&search(&s, &eve, json!({"search_term": "brulee"}), None).await).is_empty());
}

#[tokio::test]
async fn search_never_finds_events_from_before_the_searcher_joined_a_joined_room() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let state = json!([{"type": "m.room.history_visibility", "state_key": "",
        "content": {"history_visibility": "joined"}}]);
    let room =
        s.create_room(&alice, json!({"preset": "public_chat", "initial_state": state})).await;
    s.send_message(&alice, &room, "t1", json!({"msgtype": "m.text", "body": "secret before"}))
        .await;
    let (status, body) = s.join(&bob, &room).await;
    assert_eq!(status, 200, "{body}");
    s.send_message(&alice, &room, "t2", json!({"msgtype": "m.text", "body": "secret after"})).await;
    let res = search(&s, &bob, json!({"search_term": "secret"}), None).await;
    assert_eq!(bodies(&res), vec!["secret after"], "{res}");
    // Alice saw both.
    assert_eq!(bodies(&search(&s, &alice, json!({"search_term": "secret"}), None).await).len(), 2);
    // After bob leaves, what came later stays hidden from him.
    s.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), bob.token(), json!({})).await;
    s.send_message(&alice, &room, "t3", json!({"msgtype": "m.text", "body": "secret later"})).await;
    assert_eq!(
        bodies(&search(&s, &bob, json!({"search_term": "secret"}), None).await),
        vec!["secret after"]
    );
}

#[tokio::test]
async fn search_never_finds_redacted_text() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    let id = s
        .send_message(
            &alice,
            &room,
            "t1",
            json!({"msgtype": "m.text", "body": "my password hunter2"}),
        )
        .await;
    s.send_message(&alice, &room, "t2", json!({"msgtype": "m.text", "body": "hunter2 is a game"}))
        .await;
    assert_eq!(bodies(&search(&s, &alice, json!({"search_term": "hunter2"}), None).await).len(), 2);
    let (status, body) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&room), enc(&id)),
            alice.token(),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let res = search(&s, &alice, json!({"search_term": "hunter2"}), None).await;
    assert_eq!(bodies(&res), vec!["hunter2 is a game"], "{res}");
    assert!(bodies(&search(&s, &alice, json!({"search_term": "password"}), None).await).is_empty());
}

#[tokio::test]
async fn search_pages_with_next_batch_in_both_orders() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    for i in 0..7 {
        s.send_message(
            &alice,
            &room,
            &format!("t{i}"),
            json!({"msgtype": "m.text", "body": format!("apple number {i}")}),
        )
        .await;
    }
    for order in ["recent", "rank"] {
        let mut seen = Vec::new();
        let mut next: Option<String> = None;
        for _ in 0..10 {
            let criteria =
                json!({"search_term": "apple", "order_by": order, "filter": {"limit": 3}});
            let res = search(&s, &alice, criteria, next.as_deref()).await;
            let page = bodies(&res);
            assert!(page.len() <= 3);
            seen.extend(page);
            next = res["next_batch"].as_str().map(str::to_owned);
            if next.is_none() {
                break;
            }
        }
        let expected: Vec<String> = (0..7).rev().map(|i| format!("apple number {i}")).collect();
        assert_eq!(seen, expected, "order {order}");
    }
    let res = s
        .post(
            "/_matrix/client/v3/search?next_batch=bogus",
            alice.token(),
            json!({"search_categories": {"room_events": {"search_term": "apple"}}}),
        )
        .await;
    assert_error(&res, 400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn search_keys_filter_context_state_and_groupings() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = joined_room(&s, &alice, &bob, "private_chat").await;
    let other = s
        .create_room(
            &alice,
            json!({"preset": "private_chat", "name": "Banana Republic",
        "topic": "all about bananas"}),
        )
        .await;
    s.send_message(&alice, &room, "t1", json!({"msgtype": "m.text", "body": "before"})).await;
    s.send_message(&bob, &room, "t2", json!({"msgtype": "m.text", "body": "banana split"})).await;
    s.send_message(&alice, &room, "t3", json!({"msgtype": "m.text", "body": "after"})).await;
    s.send_message(&alice, &other, "t4", json!({"msgtype": "m.text", "body": "banana bread"}))
        .await;

    // Keys: the room name only.
    let res =
        search(&s, &alice, json!({"search_term": "banana", "keys": ["content.name"]}), None).await;
    assert_eq!(res["count"], 1, "{res}");
    assert_eq!(res["results"][0]["result"]["type"], "m.room.name");
    let res =
        search(&s, &alice, json!({"search_term": "bananas", "keys": ["content.topic"]}), None)
            .await;
    assert_eq!(res["results"][0]["result"]["type"], "m.room.topic", "{res}");
    // Filter: one room, one sender.
    let res =
        search(&s, &alice, json!({"search_term": "banana", "filter": {"rooms": [room]}}), None)
            .await;
    assert_eq!(bodies(&res), vec!["banana split"]);
    let res = search(
        &s,
        &alice,
        json!({"search_term": "banana", "keys": ["content.body"],
        "filter": {"senders": [alice.user_id]}}),
        None,
    )
    .await;
    assert_eq!(bodies(&res), vec!["banana bread"]);
    // Context with profiles, state, groupings.
    let res = search(
        &s,
        &alice,
        json!({
            "search_term": "split",
            "event_context": {"before_limit": 1, "after_limit": 1, "include_profile": true},
            "include_state": true,
            "groupings": {"group_by": [{"key": "room_id"}, {"key": "sender"}]},
        }),
        None,
    )
    .await;
    let ctx = &res["results"][0]["context"];
    assert_eq!(ctx["events_before"][0]["content"]["body"], "before", "{res}");
    assert_eq!(ctx["events_after"][0]["content"]["body"], "after");
    assert_eq!(ctx["profile_info"][&bob.user_id]["displayname"], "bob");
    let state = res["state"][&room].as_array().expect("state of the room");
    assert!(state.iter().any(|e| e["type"] == "m.room.create"));
    assert_eq!(res["groups"]["room_id"][&room]["results"].as_array().unwrap().len(), 1);
    assert_eq!(res["groups"]["sender"][&bob.user_id]["results"].as_array().unwrap().len(), 1);
    // Errors.
    let res = s
        .post(
            "/_matrix/client/v3/search",
            alice.token(),
            json!({"search_categories": {"room_events": {"search_term": "x", "keys": ["content.nope"]}}}),
        )
        .await;
    assert!(res.0.as_u16() == 400, "{res:?}");
    let res = s.post("/_matrix/client/v3/search", None, json!({"search_categories": {}})).await;
    assert_error(&res, 401, "M_MISSING_TOKEN");
}

#[tokio::test]
async fn the_search_index_survives_kill_9() {
    let mut s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    s.send_message(&alice, &room, "t1", json!({"msgtype": "m.text", "body": "durable zebra"}))
        .await;
    s.crash_and_restart().await;
    assert_eq!(
        bodies(&search(&s, &alice, json!({"search_term": "zebra"}), None).await),
        vec!["durable zebra"]
    );
}

#[tokio::test]
async fn encrypted_events_are_not_indexed() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    let (status, body) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.encrypted/e1", enc(&room)),
            alice.token(),
            json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "opaque", "body": "opaque",
                "sender_key": "k", "session_id": "s", "device_id": "D"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(bodies(&search(&s, &alice, json!({"search_term": "opaque"}), None).await).is_empty());
}
