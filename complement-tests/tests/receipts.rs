//! Read receipts (`/receipt`), read markers (`/read_markers`) and `m.receipt` in `/sync`.

use std::time::Duration;

use complement_tests::{Session, TestServer, Value, assert_error, enc, json};

/// A room of alice (creator) and bob, with `n` messages of alice; their event IDs.
async fn room_with_messages(
    s: &TestServer,
    alice: &Session,
    bob: &Session,
    n: usize,
) -> (String, Vec<String>) {
    let room = s.create_room(alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(bob, &room).await.0, 200);
    let mut ids = Vec::new();
    for i in 0..n {
        let (status, body) =
            s.send_text(alice, &room, &format!("m{i}"), &format!("message {i}")).await;
        assert_eq!(status, 200, "{body}");
        ids.push(body["event_id"].as_str().expect("event_id").to_owned());
    }
    (room, ids)
}

async fn receipt(
    s: &TestServer,
    who: &Session,
    room: &str,
    kind: &str,
    event: &str,
    body: Value,
) -> (reqwest::StatusCode, Value) {
    s.post(
        &format!("/_matrix/client/v3/rooms/{}/receipt/{kind}/{}", enc(room), enc(event)),
        who.token(),
        body,
    )
    .await
}

/// The room's `m.receipt` content in a sync response (`{}` when there is none).
fn receipts_in(sync: &Value, room: &str) -> Value {
    let events =
        sync["rooms"]["join"][room]["ephemeral"]["events"].as_array().cloned().unwrap_or_default();
    let mut content = json!({});
    for e in events.iter().filter(|e| e["type"] == "m.receipt") {
        for (event, by_type) in e["content"].as_object().expect("content").iter() {
            content[event] = by_type.clone();
        }
    }
    content
}

fn next_batch(sync: &Value) -> String {
    sync["next_batch"].as_str().expect("next_batch").to_owned()
}

#[tokio::test]
async fn a_room_mate_sees_the_receipt_and_a_pending_sync_is_woken() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let (room, ids) = room_with_messages(&s, &alice, &bob, 2).await;
    let since = next_batch(&s.sync(&bob, None, 0).await);
    // Bob long-polls; alice's receipt must wake it (an un-woken sync would answer empty at
    // its timeout).
    let pending = s.sync(&bob, Some(&since), 20_000);
    let send = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let res = receipt(&s, &alice, &room, "m.read", &ids[1], json!({})).await;
        assert_eq!(res.0, 200, "{}", res.1);
    };
    let (body, ()) = tokio::join!(pending, send);
    let content = receipts_in(&body, &room);
    let mine = &content[&ids[1]]["m.read"][&alice.user_id];
    assert!(mine["ts"].as_u64().is_some_and(|ts| ts > 0), "{body}");
    assert!(mine.get("thread_id").is_none(), "an unthreaded receipt: {body}");
    // The next incremental sync does not repeat it; an initial one has it.
    let again = s.sync(&bob, Some(&next_batch(&body)), 0).await;
    assert_eq!(receipts_in(&again, &room), json!({}), "{again}");
    let initial = s.sync(&bob, None, 0).await;
    assert!(receipts_in(&initial, &room)[&ids[1]]["m.read"][&alice.user_id].is_object());
}

#[tokio::test]
async fn a_private_receipt_reaches_only_its_owner() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let (room, ids) = room_with_messages(&s, &alice, &bob, 2).await;
    let bob_since = next_batch(&s.sync(&bob, None, 0).await);
    let alice_since = next_batch(&s.sync(&alice, None, 0).await);
    assert_eq!(receipt(&s, &alice, &room, "m.read.private", &ids[0], json!({})).await.0, 200);
    // A public receipt afterwards, so bob's sync has something to return.
    assert_eq!(receipt(&s, &bob, &room, "m.read", &ids[1], json!({})).await.0, 200);

    let mine = s.sync(&alice, Some(&alice_since), 0).await;
    assert!(
        receipts_in(&mine, &room)[&ids[0]]["m.read.private"][&alice.user_id].is_object(),
        "{mine}"
    );
    let theirs = s.sync(&bob, Some(&bob_since), 0).await;
    let content = receipts_in(&theirs, &room);
    assert!(content[&ids[1]]["m.read"][&bob.user_id].is_object(), "{theirs}");
    assert!(!theirs.to_string().contains("m.read.private"), "{theirs}");
    let initial = s.sync(&bob, None, 0).await;
    assert!(receipts_in(&initial, &room)[&ids[1]]["m.read"][&bob.user_id].is_object());
    assert!(!initial.to_string().contains("m.read.private"), "{initial}");
    let initial = s.sync(&alice, None, 0).await;
    assert!(receipts_in(&initial, &room)[&ids[0]]["m.read.private"][&alice.user_id].is_object());
}

#[tokio::test]
async fn receipts_only_move_forward() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let (room, ids) = room_with_messages(&s, &alice, &bob, 2).await;
    assert_eq!(receipt(&s, &bob, &room, "m.read", &ids[1], json!({})).await.0, 200);
    let since = next_batch(&s.sync(&alice, None, 0).await);
    // An earlier event: accepted, and nothing changes.
    let res = receipt(&s, &bob, &room, "m.read", &ids[0], json!({})).await;
    assert_eq!(res.0, 200, "{}", res.1);
    let later = s.sync(&alice, Some(&since), 0).await;
    assert_eq!(receipts_in(&later, &room), json!({}), "{later}");
    let content = receipts_in(&s.sync(&alice, None, 0).await, &room);
    assert!(content[&ids[1]]["m.read"][&bob.user_id].is_object(), "{content}");
    assert!(content.get(&ids[0]).is_none(), "{content}");
}

#[tokio::test]
async fn threaded_receipts_carry_their_thread_and_are_kept_per_thread() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let (room, ids) = room_with_messages(&s, &alice, &bob, 2).await;
    let root = &ids[0];
    let (status, reply) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/reply", enc(&room)),
            alice.token(),
            json!({"msgtype": "m.text", "body": "in thread",
                   "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let reply = reply["event_id"].as_str().unwrap().to_owned();
    let res = receipt(&s, &bob, &room, "m.read", &reply, json!({"thread_id": root})).await;
    assert_eq!(res.0, 200, "{}", res.1);
    // The main timeline's receipt is another slot: it does not replace the thread's,
    // although the event is earlier.
    let res = receipt(&s, &bob, &room, "m.read", &ids[1], json!({"thread_id": "main"})).await;
    assert_eq!(res.0, 200, "{}", res.1);
    let content = receipts_in(&s.sync(&alice, None, 0).await, &room);
    assert_eq!(content[&reply]["m.read"][&bob.user_id]["thread_id"], json!(root), "{content}");
    assert_eq!(content[&ids[1]]["m.read"][&bob.user_id]["thread_id"], "main", "{content}");

    // Bad thread IDs: empty, not an event ID, not an event of the room; and with
    // m.fully_read.
    for thread in [json!(""), json!("thread"), json!("$unknown:localhost")] {
        let res = receipt(&s, &bob, &room, "m.read", &ids[1], json!({"thread_id": thread})).await;
        assert_eq!(res.0, 400, "{thread}: {}", res.1);
    }
    let res = receipt(&s, &bob, &room, "m.fully_read", &ids[1], json!({"thread_id": "main"})).await;
    assert_error(&res, 400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn bad_receipts_get_the_spec_errors() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let carol = s.register("carol", "carol-password").await;
    let (room, ids) = room_with_messages(&s, &alice, &bob, 1).await;
    let (other, other_ids) = room_with_messages(&s, &alice, &bob, 1).await;
    assert_ne!(room, other);

    let res = receipt(&s, &carol, &room, "m.read", &ids[0], json!({})).await;
    assert_error(&res, 403, "M_FORBIDDEN");
    let res = receipt(&s, &carol, &room, "m.read.private", &ids[0], json!({})).await;
    assert_error(&res, 403, "M_FORBIDDEN");
    let res = receipt(&s, &bob, &room, "m.read", "$unknown:localhost", json!({})).await;
    assert_error(&res, 404, "M_NOT_FOUND");
    let res = receipt(&s, &bob, &room, "m.read", &other_ids[0], json!({})).await;
    assert_error(&res, 404, "M_NOT_FOUND");
    let res = receipt(&s, &bob, &room, "m.fully_read", &other_ids[0], json!({})).await;
    assert_error(&res, 404, "M_NOT_FOUND");
    let res = receipt(&s, &bob, &room, "m.unknown", &ids[0], json!({})).await;
    assert_error(&res, 400, "M_INVALID_PARAM");
    let path = format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&ids[0]));
    let res = s.post_raw(&path, bob.token(), b"{not json".to_vec()).await;
    assert_eq!(res.0, 400, "{}", res.1);
    let res = s.post_raw(&path, bob.token(), br#"{"thread_id": 5}"#.to_vec()).await;
    assert_eq!(res.0, 400, "{}", res.1);
    // A former member may not send receipts either.
    let (status, _) = s
        .post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), bob.token(), json!({}))
        .await;
    assert_eq!(status, 200);
    let res = receipt(&s, &bob, &room, "m.read", &ids[0], json!({})).await;
    assert_error(&res, 403, "M_FORBIDDEN");
    let markers = format!("/_matrix/client/v3/rooms/{}/read_markers", enc(&room));
    let res = s.post(&markers, bob.token(), json!({"m.read": ids[0]})).await;
    assert_error(&res, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn unread_counts_drop_after_the_users_own_read_receipt_public_or_private() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let (room, ids) = room_with_messages(&s, &alice, &bob, 4).await;
    let count = |body: &Value| {
        body["rooms"]["join"][&room]["unread_notifications"]["notification_count"].clone()
    };
    let body = s.sync(&bob, None, 0).await;
    assert_eq!(count(&body), 4, "{body}");
    // A private receipt (only the owner's) moves the count, in an incremental sync.
    assert_eq!(receipt(&s, &bob, &room, "m.read.private", &ids[1], json!({})).await.0, 200);
    let body = s.sync(&bob, Some(&next_batch(&body)), 5_000).await;
    assert_eq!(count(&body), 2, "{body}");
    // Then a public one further on.
    assert_eq!(receipt(&s, &bob, &room, "m.read", &ids[2], json!({})).await.0, 200);
    let body = s.sync(&bob, Some(&next_batch(&body)), 5_000).await;
    assert_eq!(count(&body), 1, "{body}");
    // Someone else's receipt does not change bob's count.
    assert_eq!(receipt(&s, &alice, &room, "m.read", &ids[3], json!({})).await.0, 200);
    assert_eq!(count(&s.sync(&bob, None, 0).await), 1);
    // The latest of the two counts: an older public receipt than the private one.
    assert_eq!(receipt(&s, &bob, &room, "m.read.private", &ids[3], json!({})).await.0, 200);
    assert_eq!(count(&s.sync(&bob, None, 0).await), 0);
}

#[tokio::test]
async fn receipts_survive_a_restart() {
    let mut s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let (room, ids) = room_with_messages(&s, &alice, &bob, 3).await;
    assert_eq!(receipt(&s, &bob, &room, "m.read", &ids[1], json!({})).await.0, 200);
    assert_eq!(receipt(&s, &bob, &room, "m.read.private", &ids[2], json!({})).await.0, 200);
    let since = next_batch(&s.sync(&alice, None, 0).await);
    s.crash_and_restart().await;

    let content = receipts_in(&s.sync(&alice, None, 0).await, &room);
    assert!(content[&ids[1]]["m.read"][&bob.user_id].is_object(), "{content}");
    assert!(content.get(&ids[2]).is_none(), "private: {content}");
    let body = s.sync(&bob, None, 0).await;
    assert_eq!(body["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 0);
    // The stream continues where it was: a token from before the restart still works,
    // and a new receipt comes after it.
    assert_eq!(receipt(&s, &bob, &room, "m.read", &ids[2], json!({})).await.0, 200);
    let later = s.sync(&alice, Some(&since), 5_000).await;
    let content = receipts_in(&later, &room);
    assert!(content[&ids[2]]["m.read"][&bob.user_id].is_object(), "{later}");
    assert!(content.get(&ids[1]).is_none(), "already seen before the restart: {later}");
}

#[tokio::test]
async fn read_markers_set_all_three() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let (room, ids) = room_with_messages(&s, &alice, &bob, 3).await;
    let path = format!("/_matrix/client/v3/rooms/{}/read_markers", enc(&room));
    let res = s
        .post(
            &path,
            bob.token(),
            json!({"m.fully_read": ids[0], "m.read": ids[1], "m.read.private": ids[2]}),
        )
        .await;
    assert_eq!(res.0, 200, "{}", res.1);
    let (_, fully) = s
        .get(
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{}/account_data/m.fully_read",
                enc(&bob.user_id),
                enc(&room)
            ),
            bob.token(),
        )
        .await;
    assert_eq!(fully["event_id"], ids[0].as_str());
    let mine = s.sync(&bob, None, 0).await;
    let content = receipts_in(&mine, &room);
    assert!(content[&ids[1]]["m.read"][&bob.user_id].is_object(), "{mine}");
    assert!(content[&ids[2]]["m.read.private"][&bob.user_id].is_object(), "{mine}");
    assert_eq!(mine["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 0);
    let theirs = receipts_in(&s.sync(&alice, None, 0).await, &room);
    assert!(theirs[&ids[1]]["m.read"][&bob.user_id].is_object(), "{theirs}");
    assert!(theirs.get(&ids[2]).is_none(), "{theirs}");
    // One unknown event and nothing is written.
    let res = s.post(&path, bob.token(), json!({"m.read": "$nope:localhost"})).await;
    assert_error(&res, 404, "M_NOT_FOUND");
}
