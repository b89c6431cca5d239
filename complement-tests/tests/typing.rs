//! `PUT /rooms/{roomId}/typing/{userId}` and `m.typing` in the ephemeral section of `/sync`.

use std::time::{Duration, Instant};

use complement_tests::{ServerOptions, Session, TestServer, Value, assert_error, enc, json};

/// Presence off, so that syncs (which mark users online) wake nobody but typing does.
async fn server() -> TestServer {
    TestServer::start_with(ServerOptions {
        extra_toml: "[presence]\nenabled = false\n".into(),
        ..ServerOptions::default()
    })
    .await
}

async fn typing(s: &TestServer, who: &Session, room: &str, body: Value) -> (u16, Value) {
    let path = format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(room), enc(&who.user_id));
    let (status, body) = s.put(&path, who.token(), body).await;
    (status.as_u16(), body)
}

/// The `m.typing` user IDs of `room` in a sync response, if the event is there.
fn typing_users(sync: &Value, room: &str) -> Option<Vec<String>> {
    let events = sync["rooms"]["join"][room]["ephemeral"]["events"].as_array()?;
    let event = events.iter().find(|e| e["type"] == "m.typing")?;
    Some(
        event["content"]["user_ids"]
            .as_array()
            .expect("user_ids")
            .iter()
            .map(|u| u.as_str().expect("user ID").to_owned())
            .collect(),
    )
}

fn next_batch(sync: &Value) -> String {
    sync["next_batch"].as_str().expect("next_batch").to_owned()
}

/// Alice creates a public room that Bob joins; returns the room and Bob's sync token.
async fn room_with_two(s: &TestServer) -> (Session, Session, String, String) {
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let since = next_batch(&s.sync(&bob, None, 0).await);
    (alice, bob, room, since)
}

/// A sync of `who` from `since` with a long timeout, in the background.
fn pending_sync(s: &TestServer, who: &Session, since: &str) -> tokio::task::JoinHandle<Value> {
    let client = s.client.clone();
    let url = format!("{}/_matrix/client/v3/sync?timeout=20000&since={since}", s.base);
    let token = who.access_token.clone();
    tokio::spawn(async move {
        client.get(url).bearer_auth(token).send().await.unwrap().json::<Value>().await.unwrap()
    })
}

#[tokio::test]
async fn typing_reaches_the_other_member_and_wakes_their_pending_sync() {
    let s = server().await;
    let (alice, bob, room, since) = room_with_two(&s).await;
    let started = Instant::now();
    let pending = pending_sync(&s, &bob, &since);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(typing(&s, &alice, &room, json!({"typing": true, "timeout": 30000})).await.0, 200);
    let body = pending.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(15), "woken, not timed out: {body}");
    assert_eq!(typing_users(&body, &room), Some(vec![alice.user_id.clone()]), "{body}");

    // An initial sync shows who types too; a sync from the new token shows nothing new.
    assert_eq!(typing_users(&s.sync(&bob, None, 0).await, &room), Some(vec![alice.user_id]));
    let later = s.sync(&bob, Some(&next_batch(&body)), 0).await;
    assert_eq!(typing_users(&later, &room), None, "{later}");
}

#[tokio::test]
async fn typing_false_removes_it_and_the_client_is_told() {
    let s = server().await;
    let (alice, bob, room, _) = room_with_two(&s).await;
    // No timeout given: the server's default applies.
    assert_eq!(typing(&s, &alice, &room, json!({"typing": true})).await.0, 200);
    let first = s.sync(&bob, None, 0).await;
    assert_eq!(typing_users(&first, &room), Some(vec![alice.user_id.clone()]));
    let pending = pending_sync(&s, &bob, &next_batch(&first));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(typing(&s, &alice, &room, json!({"typing": false})).await.0, 200);
    let body = pending.await.unwrap();
    assert_eq!(typing_users(&body, &room), Some(vec![]), "typing stopped: {body}");
    assert_eq!(typing_users(&s.sync(&bob, None, 0).await, &room), None);
}

#[tokio::test]
async fn typing_expires_after_its_timeout() {
    let s = server().await;
    let (alice, bob, room, since) = room_with_two(&s).await;
    assert_eq!(typing(&s, &alice, &room, json!({"typing": true, "timeout": 500})).await.0, 200);
    let seen = s.sync(&bob, Some(&since), 0).await;
    assert_eq!(typing_users(&seen, &room), Some(vec![alice.user_id.clone()]));
    // The expiry wakes the pending sync with the empty set (bounded wait).
    let pending = pending_sync(&s, &bob, &next_batch(&seen));
    let body = tokio::time::timeout(Duration::from_secs(15), pending)
        .await
        .expect("the expiry wakes the sync")
        .unwrap();
    assert_eq!(typing_users(&body, &room), Some(vec![]), "{body}");
}

#[tokio::test]
async fn leaving_the_room_stops_typing() {
    let s = server().await;
    let (alice, bob, room, _) = room_with_two(&s).await;
    assert_eq!(typing(&s, &bob, &room, json!({"typing": true, "timeout": 60000})).await.0, 200);
    let first = s.sync(&alice, None, 0).await;
    assert_eq!(typing_users(&first, &room), Some(vec![bob.user_id.clone()]));
    let (status, _) = s
        .post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), bob.token(), json!({}))
        .await;
    assert_eq!(status, 200);
    let after = s.sync(&alice, Some(&next_batch(&first)), 0).await;
    assert_eq!(typing_users(&after, &room), Some(vec![]), "{after}");
}

#[tokio::test]
async fn only_members_type_and_only_as_themselves() {
    let s = server().await;
    let (alice, bob, room, _) = room_with_two(&s).await;
    let eve = s.register("eve", "eve-password").await;
    // Not in the room.
    let res = typing(&s, &eve, &room, json!({"typing": true, "timeout": 1000})).await;
    assert_eq!(res.0, 403, "{}", res.1);
    assert_eq!(res.1["errcode"], "M_FORBIDDEN");
    // Someone else's user ID in the path.
    let path = format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&bob.user_id));
    let res = s.put(&path, alice.token(), json!({"typing": true, "timeout": 1000})).await;
    assert_error(&res, 403, "M_FORBIDDEN");
    // Bad bodies.
    let own = format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id));
    let res = s.put(&own, alice.token(), json!({"timeout": 1000})).await;
    assert_error(&res, 400, "M_BAD_JSON");
    let res = s.put(&own, alice.token(), json!({"typing": "yes"})).await;
    assert_error(&res, 400, "M_BAD_JSON");
    // An unknown room is a room one is not in.
    let path = format!(
        "/_matrix/client/v3/rooms/{}/typing/{}",
        enc("!nope:localhost"),
        enc(&alice.user_id)
    );
    let res = s.put(&path, alice.token(), json!({"typing": true, "timeout": 1000})).await;
    assert_error(&res, 403, "M_FORBIDDEN");
    // Nobody typed: Bob sees no typing.
    assert_eq!(typing_users(&s.sync(&bob, None, 0).await, &room), None);
}

#[tokio::test]
async fn a_token_from_before_a_restart_keeps_working() {
    let mut s = server().await;
    let (alice, bob, room, _) = room_with_two(&s).await;
    assert_eq!(typing(&s, &alice, &room, json!({"typing": true, "timeout": 60000})).await.0, 200);
    let before = s.sync(&bob, None, 0).await;
    assert_eq!(typing_users(&before, &room), Some(vec![alice.user_id.clone()]));
    s.crash_and_restart().await;
    // Typing lived in memory: the client is told that nobody types any more.
    let after = s.sync(&bob, Some(&next_batch(&before)), 0).await;
    assert_eq!(typing_users(&after, &room), Some(vec![]), "{after}");
    // And new typing arrives on the new token.
    assert_eq!(typing(&s, &alice, &room, json!({"typing": true, "timeout": 60000})).await.0, 200);
    let again = s.sync(&bob, Some(&next_batch(&after)), 0).await;
    assert_eq!(typing_users(&again, &room), Some(vec![alice.user_id]), "{again}");
}

#[tokio::test]
async fn typing_is_rate_limited_like_sending() {
    let s = TestServer::start_with(ServerOptions {
        extra_toml: "[presence]\nenabled = false\n".into(),
        event_rate: (0.01, 4),
        ..ServerOptions::default()
    })
    .await;
    let alice = s.register("alice", "alice-password").await;
    // createRoom takes one token of the four.
    let room = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    for on in [true, false, true] {
        let res = typing(&s, &alice, &room, json!({"typing": on, "timeout": 30000})).await;
        assert_eq!(res.0, 200, "{}", res.1);
    }
    let res = typing(&s, &alice, &room, json!({"typing": false})).await;
    assert_eq!(res.0, 429, "{}", res.1);
    assert_eq!(res.1["errcode"], "M_LIMIT_EXCEEDED");
}
