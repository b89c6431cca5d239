//! Endpoints older clients and test suites still call, as Synapse serves them: `POST /send`
//! without a transaction ID, `GET /rooms/{id}/initialSync` (with peeking into world-readable
//! rooms), `/messages` without `from`, and canonical alias validation.

use complement_tests::{Session, TestServer, assert_error, enc, json};

async fn put_state(
    s: &TestServer,
    who: &Session,
    room: &str,
    kind: &str,
    content: serde_json::Value,
) -> (reqwest::StatusCode, serde_json::Value) {
    s.put(&format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(room)), who.token(), content)
        .await
}

#[tokio::test]
async fn post_send_without_a_transaction_id_sends_each_time() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message", enc(&room));
    let body = json!({"msgtype": "m.text", "body": "legacy"});
    let (status, first) = s.post(&path, alice.token(), body.clone()).await;
    assert_eq!(status, 200, "{first}");
    let (status, second) = s.post(&path, alice.token(), body).await;
    assert_eq!(status, 200, "{second}");
    assert_ne!(first["event_id"], second["event_id"]);
    let (_, page) = s.room_get(&alice, &room, "messages?dir=b&limit=2").await;
    assert_eq!(page["chunk"][0]["content"]["body"], "legacy");
    assert_eq!(page["chunk"][1]["content"]["body"], "legacy");
    // Not a member: 403; not an object: 400.
    let eve = s.register("eve", "eve-password").await;
    assert_error(&s.post(&path, eve.token(), json!({"body": "x"})).await, 403, "M_FORBIDDEN");
    assert_error(&s.post(&path, alice.token(), json!([1])).await, 400, "M_BAD_JSON");
}

#[tokio::test]
async fn messages_without_from_start_at_the_end_backwards_and_the_start_forwards() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    s.send_message(&alice, &room, "t1", json!({"msgtype": "m.text", "body": "last"})).await;
    let (status, page) = s.room_get(&alice, &room, "messages?dir=b&limit=1").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["chunk"][0]["content"]["body"], "last");
    let (status, page) = s.room_get(&alice, &room, "messages?dir=f&limit=1").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["chunk"][0]["type"], "m.room.create");
}

#[tokio::test]
async fn room_initial_sync_gives_members_the_timeline_and_state_and_lets_anyone_peek_into_world_readable_rooms()
 {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let eve = s.register("eve", "eve-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat", "name": "Open"})).await;
    s.send_message(&alice, &room, "t1", json!({"msgtype": "m.text", "body": "hello"})).await;
    let (status, body) = s.room_get(&alice, &room, "initialSync").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    assert_eq!(body["membership"], "join");
    let chunk = body["messages"]["chunk"].as_array().unwrap();
    assert_eq!(chunk.last().unwrap()["content"]["body"], "hello");
    assert!(body["state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.name"));
    assert!(body["messages"]["start"].is_string() && body["messages"]["end"].is_string());

    // A stranger may not peek while the history is `shared`.
    assert_error(&s.room_get(&eve, &room, "initialSync").await, 403, "M_FORBIDDEN");
    let (status, _) = put_state(
        &s,
        &alice,
        &room,
        "m.room.history_visibility",
        json!({"history_visibility": "world_readable"}),
    )
    .await;
    assert_eq!(status, 200);
    s.send_message(&alice, &room, "t2", json!({"msgtype": "m.text", "body": "peek"})).await;
    let (status, body) = s.room_get(&eve, &room, "initialSync").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("membership").is_none());
    let bodies: Vec<&str> = body["messages"]["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    // What was sent while the history was `shared` stays hidden from a non-member.
    assert_eq!(bodies, vec!["peek"], "{body}");
    assert!(body["state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.name"));
    // Unknown rooms: 403, as for any room one is not in.
    assert_error(&s.room_get(&eve, "!nope:test.local", "initialSync").await, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn a_canonical_alias_must_exist_and_point_at_the_room() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    let other = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    for (alias, target) in [("#here:test.local", &room), ("#there:test.local", &other)] {
        let (status, body) = s
            .put(
                &format!("/_matrix/client/v3/directory/room/{}", enc(alias)),
                alice.token(),
                json!({"room_id": target}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let canonical = "m.room.canonical_alias";
    let ok = put_state(&s, &alice, &room, canonical, json!({"alias": "#here:test.local"})).await;
    assert_eq!(ok.0, 200, "{}", ok.1);
    let missing = put_state(&s, &alice, &room, canonical, json!({"alias": "#nowhere:test.local"}));
    assert_error(&missing.await, 400, "M_BAD_ALIAS");
    let elsewhere = put_state(
        &s,
        &alice,
        &room,
        canonical,
        json!({"alias": "#here:test.local", "alt_aliases": ["#there:test.local"]}),
    );
    assert_error(&elsewhere.await, 400, "M_BAD_ALIAS");
    let malformed = put_state(&s, &alice, &room, canonical, json!({"alias": "not an alias"}));
    assert_error(&malformed.await, 400, "M_INVALID_PARAM");
    // Removing the canonical alias is always allowed.
    let (status, body) = put_state(&s, &alice, &room, canonical, json!({})).await;
    assert_eq!(status, 200, "{body}");
}
