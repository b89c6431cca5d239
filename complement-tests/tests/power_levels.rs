//! Power levels as the room version reads them: string levels up to room version 9, and
//! creators above every level from room version 12.

use complement_tests::{Session, TestServer, assert_error, enc, json};

/// The largest power level there is (canonical JSON integers stop at 2^53 - 1).
const MAX_LEVEL: i64 = 9_007_199_254_740_991;

/// A public v9 room of alice's where bob's level and the redaction level are strings.
async fn v9_room_with_string_levels(s: &TestServer) -> (Session, Session, String) {
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s
        .create_room(
            &alice,
            json!({
                "room_version": "9",
                "preset": "public_chat",
                "power_level_content_override": {
                    "users": {"@alice:test.local": 100, "@bob:test.local": "50"},
                    "redact": "50",
                },
            }),
        )
        .await;
    let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", enc(&room));
    let (_, levels) = s.get(&path, alice.token()).await;
    assert_eq!(levels["users"]["@bob:test.local"], "50", "{levels}");
    assert_eq!(s.join(&bob, &room).await.0, 200);
    (alice, bob, room)
}

async fn redact(s: &TestServer, who: &Session, room: &str, event_id: &str, txn: &str) -> u16 {
    let path = format!("/_matrix/client/v3/rooms/{}/redact/{}/{txn}", enc(room), enc(event_id));
    s.put(&path, who.token(), json!({"reason": "test"})).await.0.as_u16()
}

async fn send(s: &TestServer, who: &Session, room: &str, txn: &str) -> String {
    let (status, body) = s.send_text(who, room, txn, "hello").await;
    assert_eq!(status, 200, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_string_power_level_lets_a_moderator_redact_in_a_v9_room() {
    let s = TestServer::start().await;
    let (alice, bob, room) = v9_room_with_string_levels(&s).await;
    let carol = s.register("carol", "carol-password").await;
    assert_eq!(s.join(&carol, &room).await.0, 200);
    let message = send(&s, &alice, &room, "m1").await;
    // carol (level 0) may not redact alice's message; bob ("50") may.
    assert_eq!(redact(&s, &carol, &room, &message, "r1").await, 403);
    assert_eq!(redact(&s, &bob, &room, &message, "r2").await, 200);
}

#[tokio::test]
async fn a_string_power_level_lets_a_moderator_publish_a_v9_room() {
    let s = TestServer::start().await;
    let (_, bob, room) = v9_room_with_string_levels(&s).await;
    let path = format!("/_matrix/client/v3/directory/list/room/{}", enc(&room));
    let (status, body) = s.put(&path, bob.token(), json!({"visibility": "public"})).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = s.get(&path, None).await;
    assert_eq!(body["visibility"], "public");
}

#[tokio::test]
async fn in_a_v12_room_the_creator_outranks_everyone() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s
        .create_room(
            &alice,
            json!({
                "room_version": "12",
                "preset": "public_chat",
                "power_level_content_override": {
                    "users": {"@bob:test.local": MAX_LEVEL},
                    "redact": MAX_LEVEL,
                    "kick": MAX_LEVEL,
                },
            }),
        )
        .await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let bobs = send(&s, &bob, &room, "b1").await;
    // alice, at no listed level, redacts and kicks bob, who has the highest one there is.
    assert_eq!(redact(&s, &alice, &room, &bobs, "r1").await, 200);
    let kick = format!("/_matrix/client/v3/rooms/{}/kick", enc(&room));
    let res = s.post(&kick, bob.token(), json!({"user_id": "@alice:test.local"})).await;
    assert_error(&res, 403, "M_FORBIDDEN");
    let (status, body) = s.post(&kick, alice.token(), json!({"user_id": "@bob:test.local"})).await;
    assert_eq!(status, 200, "{body}");
}
