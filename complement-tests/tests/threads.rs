//! Threads: `/threads` (by latest activity, `include`, pagination), the `m.thread`
//! aggregation on thread roots wherever they are served, redactions of replies, and the
//! agreement between the thread index and the threaded unread counts.

use complement_tests::{Session, TestServer, Value, assert_error, enc, json};

async fn sent(
    s: &TestServer,
    who: &Session,
    room: &str,
    kind: &str,
    txn: &str,
    content: Value,
) -> String {
    let path = format!("/_matrix/client/v3/rooms/{}/send/{kind}/{txn}", enc(room));
    let (status, body) = s.put(&path, who.token(), content).await;
    assert_eq!(status, 200, "{body}");
    body["event_id"].as_str().expect("event_id").to_owned()
}

fn text(body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body})
}

fn in_thread(root: &str, body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body, "m.relates_to": {"rel_type": "m.thread", "event_id": root, "is_falling_back": true, "m.in_reply_to": {"event_id": root}}})
}

async fn room_of_two(s: &TestServer, alice: &Session, bob: &Session) -> String {
    let room = s.create_room(alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(bob, &room).await.0, 200);
    room
}

async fn threads(s: &TestServer, who: &Session, room: &str, query: &str) -> Value {
    let path = format!("/_matrix/client/v1/rooms/{}/threads{query}", enc(room));
    let (status, body) = s.get(&path, who.token()).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn ids(body: &Value) -> Vec<String> {
    body["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn event(s: &TestServer, who: &Session, room: &str, event: &str) -> Value {
    let (status, body) = s.room_get(who, room, &format!("event/{}", enc(event))).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn redact(s: &TestServer, who: &Session, room: &str, event: &str, txn: &str) {
    let path = format!("/_matrix/client/v3/rooms/{}/redact/{}/{txn}", enc(room), enc(event));
    let (status, body) = s.put(&path, who.token(), json!({})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn threads_are_listed_by_latest_activity_and_paginated() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of_two(&s, &alice, &bob).await;
    let t1 = sent(&s, &alice, &room, "m.room.message", "1", text("one")).await;
    let t2 = sent(&s, &alice, &room, "m.room.message", "2", text("two")).await;
    let t3 = sent(&s, &bob, &room, "m.room.message", "3", text("three")).await;
    sent(&s, &alice, &room, "m.room.message", "4", text("no thread")).await;
    sent(&s, &bob, &room, "m.room.message", "r1", in_thread(&t1, "a")).await;
    sent(&s, &alice, &room, "m.room.message", "r3", in_thread(&t3, "b")).await;
    sent(&s, &alice, &room, "m.room.message", "r2", in_thread(&t2, "c")).await;
    // t1 gets the latest reply: first again.
    sent(&s, &alice, &room, "m.room.message", "r1b", in_thread(&t1, "d")).await;
    let all = threads(&s, &bob, &room, "").await;
    assert_eq!(ids(&all), vec![t1.clone(), t2.clone(), t3.clone()]);
    assert!(all.get("next_batch").is_none(), "{all}");
    let root = &all["chunk"][0];
    assert_eq!(root["unsigned"]["m.relations"]["m.thread"]["count"], 2, "{root}");
    assert_eq!(root["unsigned"]["m.relations"]["m.thread"]["latest_event"]["content"]["body"], "d");

    // Pages of one.
    let mut seen = Vec::new();
    let mut query = "?limit=1".to_owned();
    loop {
        let page = threads(&s, &bob, &room, &query).await;
        seen.extend(ids(&page));
        match page["next_batch"].as_str() {
            Some(next) => query = format!("?limit=1&from={next}"),
            None => break,
        }
    }
    assert_eq!(seen, vec![t1.clone(), t2.clone(), t3.clone()]);

    // Participated: threads one started or replied in.
    assert_eq!(
        ids(&threads(&s, &bob, &room, "?include=participated").await),
        vec![t1.clone(), t3.clone()]
    );
    assert_eq!(ids(&threads(&s, &alice, &room, "?include=participated").await), vec![t1, t2, t3]);
    let res = s
        .get(&format!("/_matrix/client/v1/rooms/{}/threads?from=bad", enc(&room)), bob.token())
        .await;
    assert_error(&res, 400, "M_INVALID_PARAM");
    // The unstable path of MSC3856 answers too.
    let path = format!("/_matrix/client/unstable/org.matrix.msc3856/rooms/{}/threads", enc(&room));
    assert_eq!(s.get(&path, bob.token()).await.0, 200);
}

#[tokio::test]
async fn thread_roots_carry_the_thread_aggregation_everywhere() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let carol = s.register("carol", "carol-password").await;
    let room = room_of_two(&s, &alice, &bob).await;
    assert_eq!(s.join(&carol, &room).await.0, 200);
    let root = sent(&s, &alice, &room, "m.room.message", "root", text("root")).await;
    sent(&s, &bob, &room, "m.room.message", "a", in_thread(&root, "first")).await;
    let latest = sent(&s, &bob, &room, "m.room.message", "b", in_thread(&root, "second")).await;
    // The latest reply, edited: its own bundle carries the edit.
    let edit = json!({
        "msgtype": "m.text", "body": "* second!",
        "m.new_content": {"msgtype": "m.text", "body": "second!"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": latest},
    });
    let e = sent(&s, &bob, &room, "m.room.message", "e", edit).await;

    let check = |view: &Value, participated: bool| {
        let thread = &view["unsigned"]["m.relations"]["m.thread"];
        assert_eq!(thread["count"], 2, "{view}");
        assert_eq!(thread["current_user_participated"], participated, "{view}");
        assert_eq!(thread["latest_event"]["event_id"], latest, "{view}");
        assert_eq!(
            thread["latest_event"]["unsigned"]["m.relations"]["m.replace"]["event_id"], e,
            "{view}"
        );
    };
    check(&event(&s, &alice, &room, &root).await, true); // the root's sender
    check(&event(&s, &bob, &room, &root).await, true); // replied
    check(&event(&s, &carol, &room, &root).await, false);
    let (_, page) = s.room_get(&carol, &room, "messages?dir=b&limit=20").await;
    let in_page = page["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == root).unwrap();
    check(in_page, false);
    let filter = enc(&json!({"room": {"timeline": {"limit": 20}}}).to_string());
    let (_, body) =
        s.get(&format!("/_matrix/client/v3/sync?timeout=0&filter={filter}"), carol.token()).await;
    let timeline = body["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    check(timeline.iter().find(|e| e["event_id"] == root).expect("root in sync"), false);
    // Replies themselves carry no thread aggregation.
    assert!(
        event(&s, &carol, &room, &latest).await["unsigned"]["m.relations"]
            .get("m.thread")
            .is_none()
    );
    // /relations lists the replies (and the root's thread bundle is on the root only).
    let path = format!("/_matrix/client/v1/rooms/{}/relations/{}/m.thread", enc(&room), enc(&root));
    let (status, rel) = s.get(&path, carol.token()).await;
    assert_eq!(status, 200);
    assert_eq!(rel["chunk"].as_array().unwrap().len(), 2, "{rel}");
}

#[tokio::test]
async fn redacted_replies_leave_the_thread() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of_two(&s, &alice, &bob).await;
    let t1 = sent(&s, &alice, &room, "m.room.message", "1", text("one")).await;
    let t2 = sent(&s, &alice, &room, "m.room.message", "2", text("two")).await;
    let a = sent(&s, &bob, &room, "m.room.message", "a", in_thread(&t1, "a")).await;
    sent(&s, &alice, &room, "m.room.message", "x", in_thread(&t2, "x")).await;
    let b = sent(&s, &bob, &room, "m.room.message", "b", in_thread(&t1, "b")).await;
    assert_eq!(ids(&threads(&s, &alice, &room, "").await), vec![t1.clone(), t2.clone()]);
    // The latest reply redacted: the one before is latest, and t1 falls behind t2.
    redact(&s, &bob, &room, &b, "r1").await;
    let view = event(&s, &alice, &room, &t1).await;
    let thread = &view["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(
        (thread["count"].clone(), thread["latest_event"]["event_id"].clone()),
        (json!(1), json!(a)),
        "{view}"
    );
    assert_eq!(ids(&threads(&s, &alice, &room, "").await), vec![t2.clone(), t1.clone()]);
    // Bob's last reply redacted: he no longer participates; the thread is gone.
    redact(&s, &bob, &room, &a, "r2").await;
    assert_eq!(ids(&threads(&s, &alice, &room, "").await), vec![t2.clone()]);
    assert!(ids(&threads(&s, &bob, &room, "?include=participated").await).is_empty());
    assert!(event(&s, &alice, &room, &t1).await["unsigned"].get("m.relations").is_none());
    // Redacting a root keeps it redacted and its thread listed.
    redact(&s, &alice, &room, &t2, "r3").await;
    let page = threads(&s, &alice, &room, "").await;
    assert_eq!(ids(&page), vec![t2.clone()]);
    assert!(page["chunk"][0]["content"].get("body").is_none(), "{page}");
    assert_eq!(page["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"], 1);
}

#[tokio::test]
async fn a_thread_reply_counts_in_its_thread_for_unread_notifications() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of_two(&s, &alice, &bob).await;
    let root = sent(&s, &alice, &room, "m.room.message", "root", text("root")).await;
    sent(&s, &alice, &room, "m.room.message", "a", in_thread(&root, "a")).await;
    // A reaction to a reply belongs to the thread too (push rules' "thread of an event")
    // but is no reply: the thread's count stays 1.
    let reply = sent(&s, &alice, &room, "m.room.message", "b", in_thread(&root, "b")).await;
    sent(
        &s,
        &alice,
        &room,
        "m.reaction",
        "r",
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": reply, "key": "k"}}),
    )
    .await;
    let filter =
        enc(&json!({"room": {"timeline": {"unread_thread_notifications": true, "limit": 20}}})
            .to_string());
    let (_, body) =
        s.get(&format!("/_matrix/client/v3/sync?timeout=0&filter={filter}"), bob.token()).await;
    let joined = &body["rooms"]["join"][&room];
    assert_eq!(joined["unread_thread_notifications"][&root]["notification_count"], 2, "{body}");
    assert_eq!(joined["unread_notifications"]["notification_count"], 1, "the root only: {body}");
    // The same thread, as /threads and the bundle see it.
    let listed = threads(&s, &bob, &room, "").await;
    assert_eq!(ids(&listed), vec![root.clone()]);
    assert_eq!(listed["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"], 2);
}

#[tokio::test]
async fn replies_of_ignored_users_leave_the_thread_summary() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let carol = s.register("carol", "carol-password").await;
    let room = room_of_two(&s, &alice, &bob).await;
    assert_eq!(s.join(&carol, &room).await.0, 200);
    let root = sent(&s, &alice, &room, "m.room.message", "root", text("root")).await;
    let first = sent(&s, &alice, &room, "m.room.message", "a", in_thread(&root, "alice")).await;
    sent(&s, &carol, &room, "m.room.message", "c1", in_thread(&root, "carol 1")).await;
    sent(&s, &carol, &room, "m.room.message", "c2", in_thread(&root, "carol 2")).await;
    let path =
        format!("/_matrix/client/v3/user/{}/account_data/m.ignored_user_list", enc(&bob.user_id));
    let (status, body) =
        s.put(&path, bob.token(), json!({"ignored_users": {&carol.user_id: {}}})).await;
    assert_eq!(status, 200, "{body}");
    // Bob: Carol's replies neither count nor are the latest.
    let view = event(&s, &bob, &room, &root).await;
    let thread = &view["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(thread["count"], 1, "{view}");
    assert_eq!(thread["latest_event"]["event_id"], first, "{view}");
    // Alice sees all three.
    let view = event(&s, &alice, &room, &root).await;
    assert_eq!(view["unsigned"]["m.relations"]["m.thread"]["count"], 3, "{view}");
    // A thread of ignored replies only has no summary for Bob.
    let other = sent(&s, &alice, &room, "m.room.message", "o", text("other")).await;
    sent(&s, &carol, &room, "m.room.message", "c3", in_thread(&other, "carol 3")).await;
    let view = event(&s, &bob, &room, &other).await;
    assert!(view["unsigned"].get("m.relations").is_none(), "{view}");
    let path = format!("/_matrix/client/v1/rooms/{}/relations/{}", enc(&room), enc(&other));
    let (_, rel) = s.get(&path, bob.token()).await;
    assert_eq!(rel["chunk"], json!([]), "{rel}");
}
