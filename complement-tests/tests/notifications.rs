//! Unread counts (`unread_notifications`, `unread_thread_notifications`) as receipts move,
//! and `GET /notifications`.

use std::time::Duration;

use complement_tests::{Session, TestServer, Value, assert_error, enc, json};

async fn send(s: &TestServer, who: &Session, room: &str, txn: &str, content: Value) -> String {
    s.send_message(who, room, txn, content).await
}

async fn receipt(s: &TestServer, who: &Session, room: &str, event: &str, body: Value) {
    let (status, res) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(room), enc(event)),
            who.token(),
            body,
        )
        .await;
    assert_eq!(status, 200, "{res}");
}

async fn room_of_two(s: &TestServer, alice: &Session, bob: &Session) -> String {
    let room = s.create_room(alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(bob, &room).await.0, 200);
    room
}

/// A room rule with no actions: nothing in the room notifies `who`.
async fn mute_room(s: &TestServer, who: &Session, room: &str) {
    let (status, body) = s
        .put(
            &format!("/_matrix/client/v3/pushrules/global/room/{}", enc(room)),
            who.token(),
            json!({"actions": []}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// An initial sync with a filter.
async fn sync_with(s: &TestServer, who: &Session, filter: Value) -> Value {
    let path = format!("/_matrix/client/v3/sync?timeout=0&filter={}", enc(&filter.to_string()));
    let (status, body) = s.get(&path, who.token()).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn count(body: &Value, room: &str) -> Value {
    body["rooms"]["join"][room]["unread_notifications"].clone()
}

/// bob's notifications once `n` of them are stored (they are evaluated in the background).
async fn notifications(s: &TestServer, who: &Session, query: &str, n: usize) -> Value {
    for _ in 0..100 {
        let (status, body) =
            s.get(&format!("/_matrix/client/v3/notifications{query}"), who.token()).await;
        assert_eq!(status, 200, "{body}");
        if body["notifications"].as_array().is_some_and(|a| a.len() >= n) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} notifications arrived");
}

#[tokio::test]
async fn counts_fall_when_the_read_receipt_moves() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of_two(&s, &alice, &bob).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            send(
                &s,
                &alice,
                &room,
                &format!("t{i}"),
                json!({"msgtype": "m.text", "body": format!("m{i}")}),
            )
            .await,
        );
    }
    let first = s.sync(&bob, None, 0).await;
    assert_eq!(count(&first, &room)["notification_count"], 3, "{first}");
    let since = first["next_batch"].as_str().expect("next_batch").to_owned();
    receipt(&s, &bob, &room, &ids[1], json!({})).await;
    // The incremental sync carries the lower count.
    let next = s.sync(&bob, Some(&since), 5_000).await;
    assert_eq!(count(&next, &room)["notification_count"], 1, "{next}");
    receipt(&s, &bob, &room, &ids[2], json!({})).await;
    assert_eq!(count(&s.sync(&bob, None, 0).await, &room)["notification_count"], 0);
    // A new message counts again, and the count arrives with it.
    let since = s.sync(&bob, None, 0).await["next_batch"].as_str().expect("next").to_owned();
    send(&s, &alice, &room, "t9", json!({"msgtype": "m.text", "body": "new"})).await;
    let next = s.sync(&bob, Some(&since), 5_000).await;
    assert_eq!(count(&next, &room)["notification_count"], 1, "{next}");
}

#[tokio::test]
async fn thread_counts_follow_threaded_receipts() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of_two(&s, &alice, &bob).await;
    let root = send(&s, &alice, &room, "root", json!({"msgtype": "m.text", "body": "root"})).await;
    let reply = |i: u32| {
        json!({
            "msgtype": "m.text",
            "body": format!("reply {i}"),
            "m.relates_to": {"rel_type": "m.thread", "event_id": root},
        })
    };
    let r1 = send(&s, &alice, &room, "r1", reply(1)).await;
    let r2 = send(&s, &alice, &room, "r2", reply(2)).await;
    let threaded = json!({"room": {"timeline": {"unread_thread_notifications": true}}});
    let body = sync_with(&s, &bob, threaded.clone()).await;
    assert_eq!(count(&body, &room)["notification_count"], 1, "main only: {body}");
    let threads = &body["rooms"]["join"][&room]["unread_thread_notifications"];
    assert_eq!(threads[&root]["notification_count"], 2, "{body}");
    // Without the flag: everything in one count.
    assert_eq!(count(&s.sync(&bob, None, 0).await, &room)["notification_count"], 3);
    // A receipt in the thread clears the thread up to it, not the main timeline.
    receipt(&s, &bob, &room, &r1, json!({"thread_id": root})).await;
    let body = sync_with(&s, &bob, threaded.clone()).await;
    assert_eq!(count(&body, &room)["notification_count"], 1, "{body}");
    let threads = &body["rooms"]["join"][&room]["unread_thread_notifications"];
    assert_eq!(threads[&root]["notification_count"], 1, "{body}");
    // `main` clears the main timeline.
    receipt(&s, &bob, &room, &root, json!({"thread_id": "main"})).await;
    let body = sync_with(&s, &bob, threaded.clone()).await;
    assert_eq!(count(&body, &room)["notification_count"], 0, "{body}");
    // An unthreaded receipt clears everything up to it.
    receipt(&s, &bob, &room, &r2, json!({})).await;
    let body = sync_with(&s, &bob, threaded).await;
    assert_eq!(count(&body, &room)["notification_count"], 0, "{body}");
    let threads = &body["rooms"]["join"][&room]["unread_thread_notifications"];
    assert!(threads.get(&root).is_none(), "{body}");
}

#[tokio::test]
async fn notifications_are_listed_newest_first_and_paginated() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of_two(&s, &alice, &bob).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut content = json!({"msgtype": "m.text", "body": format!("m{i}")});
        if i == 2 {
            content["m.mentions"] = json!({"user_ids": [bob.user_id]});
        }
        ids.push(send(&s, &alice, &room, &format!("t{i}"), content).await);
    }
    let all = notifications(&s, &bob, "", 5).await;
    let listed: Vec<&str> = all["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .map(|n| n["event"]["event_id"].as_str().expect("event_id"))
        .collect();
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(listed, newest_first);
    let n = &all["notifications"][0];
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["read"], false);
    assert!(n["ts"].is_u64() && n["actions"].is_array(), "{n}");
    assert_eq!(n["event"]["content"]["body"], "m4");
    assert_eq!(n["event"]["sender"], alice.user_id.as_str());
    // Pages of two, by the token.
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    for _ in 0..5 {
        let (status, page) =
            s.get(&format!("/_matrix/client/v3/notifications{query}"), bob.token()).await;
        assert_eq!(status, 200, "{page}");
        let items = page["notifications"].as_array().expect("notifications");
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|n| n["event"]["event_id"].as_str().expect("id").to_owned()));
        match page["next_token"].as_str() {
            Some(next) => query = format!("?limit=2&from={}", enc(next)),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);
    // Highlights only.
    let (_, highlights) =
        s.get("/_matrix/client/v3/notifications?only=highlight", bob.token()).await;
    let items = highlights["notifications"].as_array().expect("notifications");
    assert_eq!(items.len(), 1, "{highlights}");
    assert_eq!(items[0]["event"]["event_id"], ids[2].as_str());
    // A receipt marks them read.
    receipt(&s, &bob, &room, &ids[3], json!({})).await;
    let (_, after) = s.get("/_matrix/client/v3/notifications", bob.token()).await;
    let read: Vec<bool> = after["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .map(|n| n["read"].as_bool().expect("read"))
        .collect();
    assert_eq!(read, [false, true, true, true, true]);
    // Nothing for the sender; a bad token is refused.
    let (_, mine) = s.get("/_matrix/client/v3/notifications", alice.token()).await;
    assert_eq!(mine["notifications"], json!([]));
    let bad = s.get("/_matrix/client/v3/notifications?from=nope", bob.token()).await;
    assert_error(&bad, 400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn one_event_is_judged_for_each_member_by_their_own_rules() {
    // The evaluation shares what rules that do not depend on the user said between the
    // members of a room; what does depend on the user (mentions, their own rules) stays theirs.
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let carol = s.register("carol", "carol-password").await;
    let dave = s.register("dave", "dave-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    for who in [&bob, &carol, &dave] {
        assert_eq!(s.join(who, &room).await.0, 200);
    }
    // dave mutes the room with a room rule.
    mute_room(&s, &dave, &room).await;
    let mut content = json!({"msgtype": "m.text", "body": "lunch?"});
    content["m.mentions"] = json!({"user_ids": [bob.user_id]});
    let mentioned = send(&s, &alice, &room, "t1", content).await;
    let plain = send(&s, &alice, &room, "t2", json!({"msgtype": "m.text", "body": "anyone"})).await;
    let ids = |body: &Value| -> Vec<(String, bool)> {
        body["notifications"]
            .as_array()
            .expect("notifications")
            .iter()
            .map(|n| {
                let highlight = n["actions"]
                    .as_array()
                    .expect("actions")
                    .iter()
                    .any(|a| a["set_tweak"] == "highlight" && a["value"] != false);
                (n["event"]["event_id"].as_str().expect("id").to_owned(), highlight)
            })
            .collect()
    };
    let bobs = ids(&notifications(&s, &bob, "", 2).await);
    assert_eq!(bobs, [(plain.clone(), false), (mentioned.clone(), true)], "bob is mentioned");
    let carols = ids(&notifications(&s, &carol, "", 2).await);
    assert_eq!(carols, [(plain.clone(), false), (mentioned.clone(), false)], "carol is not");
    // Both events are evaluated by now for everyone (one batch each, in order): dave's room
    // rule silenced them.
    let (_, daves) = s.get("/_matrix/client/v3/notifications", dave.token()).await;
    assert_eq!(daves["notifications"], json!([]), "dave muted the room");
}

#[tokio::test]
async fn a_rule_change_is_judged_again_for_events_already_counted() {
    // An event counted under rules the member has since changed is judged again.
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of_two(&s, &alice, &bob).await;
    let event = send(&s, &alice, &room, "t1", json!({"msgtype": "m.text", "body": "hi"})).await;
    let before = sync_with(&s, &bob, json!({})).await;
    assert_eq!(count(&before, &room)["notification_count"], 1, "{before}");
    let listed = notifications(&s, &bob, "", 1).await;
    assert_eq!(listed["notifications"][0]["event"]["event_id"], event.as_str());
    // bob mutes the room: the same event, judged by his new rules, no longer counts.
    mute_room(&s, &bob, &room).await;
    let after = sync_with(&s, &bob, json!({})).await;
    assert_eq!(count(&after, &room)["notification_count"], 0, "{after}");
}
