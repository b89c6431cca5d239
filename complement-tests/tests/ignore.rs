//! Ignored users (`m.ignored_user_list`): their messages and invites are hidden from the
//! user who ignores them, wherever events reach that user.

use complement_tests::{Session, TestServer, Value, assert_error, enc, json};

fn ignore_path(who: &Session) -> String {
    format!("/_matrix/client/v3/user/{}/account_data/m.ignored_user_list", enc(&who.user_id))
}

async fn ignore(s: &TestServer, who: &Session, users: &[&Session]) {
    let ignored: serde_json::Map<String, Value> =
        users.iter().map(|u| (u.user_id.clone(), json!({}))).collect();
    let res = s.put(&ignore_path(who), who.token(), json!({"ignored_users": ignored})).await;
    assert_eq!(res.0, 200, "{}", res.1);
}

fn bodies(events: &Value) -> Vec<String> {
    events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
        .collect()
}

/// alice, bob and carol in one room; carol will ignore bob.
async fn room_of_three(s: &TestServer) -> (Session, Session, Session, String) {
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let carol = s.register("carol", "carol-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    assert_eq!(s.join(&carol, &room).await.0, 200);
    (alice, bob, carol, room)
}

#[tokio::test]
async fn one_cannot_ignore_oneself() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let res = s
        .put(
            &ignore_path(&alice),
            alice.token(),
            json!({"ignored_users": {alice.user_id.clone(): {}}}),
        )
        .await;
    assert_error(&res, 400, "M_INVALID_PARAM");
    let res = s.put(&ignore_path(&alice), alice.token(), json!({"ignored_users": []})).await;
    assert_error(&res, 400, "M_BAD_JSON");
    assert_error(&s.get(&ignore_path(&alice), alice.token()).await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn an_ignored_users_messages_are_hidden_everywhere() {
    let s = TestServer::start().await;
    let (alice, bob, carol, room) = room_of_three(&s).await;
    ignore(&s, &carol, &[&bob]).await;
    let spam =
        s.send_message(&bob, &room, "b1", json!({"msgtype": "m.text", "body": "spam"})).await;
    let hello =
        s.send_message(&alice, &room, "a1", json!({"msgtype": "m.text", "body": "hello"})).await;
    s.send_message(&bob, &room, "b2", json!({"msgtype": "m.text", "body": "more spam"})).await;

    // /sync: bob's messages are gone, his membership (state) is not.
    let sync = s.sync(&carol, None, 0).await;
    let timeline = &sync["rooms"]["join"][&room]["timeline"]["events"];
    assert_eq!(bodies(timeline), vec!["hello"]);
    let members = timeline
        .as_array()
        .unwrap()
        .iter()
        .chain(sync["rooms"]["join"][&room]["state"]["events"].as_array().unwrap().iter());
    assert!(
        members.into_iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id),
        "bob's member event stays"
    );
    // bob's messages count for nothing.
    assert_eq!(sync["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 1);

    // /messages, /context, /event.
    let (status, body) = s.room_get(&carol, &room, "messages?dir=b&limit=50").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(bodies(&body["chunk"]), vec!["hello"]);
    let (status, body) = s.room_get(&carol, &room, &format!("context/{}", enc(&hello))).await;
    assert_eq!(status, 200, "{body}");
    assert!(bodies(&body["events_before"]).is_empty());
    assert!(bodies(&body["events_after"]).is_empty());
    assert_error(
        &s.room_get(&carol, &room, &format!("event/{}", enc(&spam))).await,
        404,
        "M_NOT_FOUND",
    );

    // A read receipt may still name bob's message (the client may have shown it before).
    let res = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&spam)),
            carol.token(),
            json!({}),
        )
        .await;
    assert_eq!(res.0, 200, "{}", res.1);

    // Notifications: alice's message only (they are evaluated in the background).
    let mut listed = Vec::new();
    for _ in 0..100 {
        let (status, body) = s.get("/_matrix/client/v3/notifications", carol.token()).await;
        assert_eq!(status, 200, "{body}");
        listed = body["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["event"]["content"]["body"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>();
        if !listed.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // bob's later message was evaluated after alice's: a moment more for it to show up.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, body) = s.get("/_matrix/client/v3/notifications", carol.token()).await;
    assert_eq!(body["notifications"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(listed, vec!["hello"]);

    // Others still see everything.
    let (_, body) = s.room_get(&alice, &room, "messages?dir=b&limit=50").await;
    assert_eq!(bodies(&body["chunk"]), vec!["more spam", "hello", "spam"]);

    // Ignoring no one any more: the messages are back.
    ignore(&s, &carol, &[]).await;
    let (_, body) = s.room_get(&carol, &room, "messages?dir=b&limit=50").await;
    assert_eq!(bodies(&body["chunk"]), vec!["more spam", "hello", "spam"]);
}

#[tokio::test]
async fn new_messages_of_an_ignored_user_do_not_reach_an_incremental_sync() {
    let s = TestServer::start().await;
    let (alice, bob, carol, room) = room_of_three(&s).await;
    ignore(&s, &carol, &[&bob]).await;
    let since = s.sync(&carol, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    s.send_message(&bob, &room, "b1", json!({"msgtype": "m.text", "body": "spam"})).await;
    s.send_message(&alice, &room, "a1", json!({"msgtype": "m.text", "body": "hello"})).await;
    let sync = s.sync(&carol, Some(&since), 0).await;
    assert_eq!(bodies(&sync["rooms"]["join"][&room]["timeline"]["events"]), vec!["hello"]);
}

#[tokio::test]
async fn invites_from_an_ignored_user_are_hidden() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let carol = s.register("carol", "carol-password").await;
    ignore(&s, &carol, &[&bob]).await;
    let from_bob = s.create_room(&bob, json!({"invite": [carol.user_id]})).await;
    let from_alice = s.create_room(&alice, json!({"invite": [carol.user_id]})).await;
    let sync = s.sync(&carol, None, 0).await;
    let invites = sync["rooms"]["invite"].as_object().unwrap();
    assert!(invites.contains_key(&from_alice), "{sync}");
    assert!(!invites.contains_key(&from_bob), "{sync}");
}

#[tokio::test]
async fn after_concurrent_changes_the_list_stored_last_is_the_one_applied() {
    let s = TestServer::start().await;
    let (_, bob, carol, room) = room_of_three(&s).await;
    s.send_text(&bob, &room, "t1", "hello").await;
    for round in 0..5 {
        // Alternately ignoring bob and nobody, many writes at once.
        let writes = (0..8).map(|i| {
            let list = if (i + round) % 2 == 0 { vec![&bob] } else { vec![] };
            let (s, carol) = (&s, &carol);
            async move { ignore(s, carol, &list).await }
        });
        futures_util::future::join_all(writes).await;
        let (_, stored) = s.get(&ignore_path(&carol), carol.token()).await;
        let ignoring = stored["ignored_users"].get(&bob.user_id).is_some();
        let (status, history) = s.room_get(&carol, &room, "messages?dir=b&limit=20").await;
        assert_eq!(status, 200, "{history}");
        let shown = bodies(&history["chunk"]).contains(&"hello".to_owned());
        assert_eq!(shown, !ignoring, "round {round}: stored {stored}");
    }
}
