//! `/sync`: initial, incremental, long-poll, limited timelines, invites and leaves.

use std::time::{Duration, Instant};

use complement_tests::{TestServer, assert_error, enc, json};

#[tokio::test]
async fn initial_sync_shows_joined_rooms_with_state_before_the_timeline() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({"name": "Room"})).await;
    for i in 0..12 {
        s.send_text(&alice, &room, &format!("t{i}"), &format!("m{i}")).await;
    }
    let body = s.sync(&alice, None, 0).await;
    assert!(body["next_batch"].is_string());
    let r = &body["rooms"]["join"][&room];
    let timeline = r["timeline"]["events"].as_array().unwrap();
    assert_eq!(timeline.len(), 10);
    assert_eq!(timeline.last().unwrap()["content"]["body"], "m11");
    assert_eq!(
        timeline.last().unwrap()["unsigned"]["transaction_id"],
        "t11",
        "own txn id is echoed"
    );
    assert_eq!(r["timeline"]["limited"], true);
    let state = r["state"]["events"].as_array().unwrap();
    for kind in ["m.room.create", "m.room.member", "m.room.power_levels", "m.room.name"] {
        assert!(state.iter().any(|e| e["type"] == kind), "{kind} missing from state: {r}");
    }
    assert_eq!(r["summary"]["m.joined_member_count"], 1);
}

#[tokio::test]
async fn a_short_room_history_fits_the_timeline_and_needs_no_state() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let body = s.sync(&alice, None, 0).await;
    let r = &body["rooms"]["join"][&room];
    assert_eq!(r["timeline"]["limited"], false);
    assert_eq!(r["timeline"]["events"][0]["type"], "m.room.create");
    assert!(r["state"]["events"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn incremental_sync_returns_only_new_events() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let first = s.sync(&alice, None, 0).await;
    let since = first["next_batch"].as_str().unwrap();
    s.send_text(&alice, &room, "t1", "one").await;
    s.send_text(&alice, &room, "t2", "two").await;
    let next = s.sync(&alice, Some(since), 0).await;
    let events = next["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    let bodies: Vec<_> = events.iter().map(|e| e["content"]["body"].clone()).collect();
    assert_eq!(bodies, vec![json!("one"), json!("two")]);
    assert_eq!(next["rooms"]["join"][&room]["timeline"]["limited"], false);
    let again = s.sync(&alice, next["next_batch"].as_str(), 0).await;
    assert!(again["rooms"]["join"].as_object().unwrap().is_empty(), "{again}");
}

#[tokio::test]
async fn a_pending_sync_wakes_as_soon_as_a_message_arrives() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    let since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();

    let started = Instant::now();
    let pending = {
        let client = s.client.clone();
        let url = format!("{}/_matrix/client/v3/sync?timeout=20000&since={since}", s.base);
        let token = bob.access_token.clone();
        tokio::spawn(async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.send_text(&alice, &room, "t1", "wake up").await;
    let body = pending.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the sync should not wait for its timeout"
    );
    let events = body["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    assert_eq!(events[0]["content"]["body"], "wake up");
}

#[tokio::test]
async fn a_sync_with_nothing_new_returns_after_its_timeout() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    s.create_room(&alice, json!({})).await;
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let body = s.sync(&alice, Some(&since), 500).await;
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert_eq!(body["next_batch"], since.as_str());
}

#[tokio::test]
async fn a_limited_incremental_timeline_has_a_prev_batch_that_paginates_back() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    for i in 0..15 {
        s.send_text(&alice, &room, &format!("t{i}"), &format!("m{i}")).await;
    }
    let body = s.sync(&alice, Some(&since), 0).await;
    let r = &body["rooms"]["join"][&room];
    assert_eq!(r["timeline"]["limited"], true);
    let events = r["timeline"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 10);
    assert_eq!(events[0]["content"]["body"], "m5");
    let prev = r["timeline"]["prev_batch"].as_str().unwrap();
    let (_, older) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=5&from={prev}", enc(&room)),
            alice.token(),
        )
        .await;
    let bodies: Vec<_> =
        older["chunk"].as_array().unwrap().iter().map(|e| e["content"]["body"].clone()).collect();
    assert_eq!(bodies, vec![json!("m4"), json!("m3"), json!("m2"), json!("m1"), json!("m0")]);
}

#[tokio::test]
async fn invites_and_leaves_appear_in_sync() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let room = s
        .create_room(&alice, json!({"name": "Secret", "invite": [bob.user_id], "is_direct": true}))
        .await;
    let body = s.sync(&bob, Some(&since), 0).await;
    let invite = &body["rooms"]["invite"][&room]["invite_state"]["events"];
    let events = invite.as_array().unwrap();
    assert!(events.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Secret"));
    assert!(events.iter().any(|e| e["type"] == "m.room.member"
        && e["state_key"] == bob.user_id
        && e["content"]["is_direct"] == true));
    assert!(
        events.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == alice.user_id),
        "the inviter's member event is included"
    );

    s.join(&bob, &room).await;
    let since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    s.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), bob.token(), json!({})).await;
    let body = s.sync(&bob, Some(&since), 0).await;
    let left = &body["rooms"]["leave"][&room]["timeline"]["events"];
    assert_eq!(left.as_array().unwrap().last().unwrap()["content"]["membership"], "leave");
}

#[tokio::test]
async fn a_timeline_filter_limits_and_selects_events() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    for i in 0..3 {
        s.send_text(&alice, &room, &format!("t{i}"), &format!("m{i}")).await;
    }
    let filter =
        enc(&json!({"room": {"timeline": {"limit": 2, "types": ["m.room.message"]}}}).to_string());
    let (status, body) =
        s.get(&format!("/_matrix/client/v3/sync?filter={filter}"), alice.token()).await;
    assert_eq!(status, 200, "{body}");
    let events = body["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e["type"] == "m.room.message"));
}

#[tokio::test]
async fn unread_counts_follow_the_read_receipt_and_mentions() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    let mut last = String::new();
    for i in 0..3 {
        let (_, body) = s.send_text(&alice, &room, &format!("t{i}"), &format!("hello {i}")).await;
        last = body["event_id"].as_str().unwrap().to_owned();
    }
    s.put(
        &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/mention", enc(&room)),
        alice.token(),
        json!({"msgtype": "m.text", "body": "hey bob!", "m.mentions": {"user_ids": [bob.user_id]}}),
    )
    .await;
    let body = s.sync(&bob, None, 0).await;
    let counts = &body["rooms"]["join"][&room]["unread_notifications"];
    assert_eq!(counts["notification_count"], 4, "{body}");
    assert_eq!(counts["highlight_count"], 1);

    // Reading up to the third message leaves the mention unread.
    let since = body["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&last)),
            bob.token(),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let body = s.sync(&bob, Some(&since), 5000).await;
    let counts = &body["rooms"]["join"][&room]["unread_notifications"];
    assert_eq!(counts["notification_count"], 1, "{body}");
    assert_eq!(counts["highlight_count"], 1);

    // Sending a message marks everything before it as read.
    s.send_text(&bob, &room, "b1", "caught up").await;
    let body = s.sync(&bob, None, 0).await;
    assert_eq!(body["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 0);
}

#[tokio::test]
async fn read_markers_set_fully_read_and_reject_unknown_events() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let (_, sent) = s.send_text(&alice, &room, "t1", "x").await;
    let id = sent["event_id"].as_str().unwrap();
    let path = format!("/_matrix/client/v3/rooms/{}/read_markers", enc(&room));
    let (status, _) = s.post(&path, alice.token(), json!({"m.fully_read": id, "m.read": id})).await;
    assert_eq!(status, 200);
    let (_, fully) = s
        .get(
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{}/account_data/m.fully_read",
                enc(&alice.user_id),
                enc(&room)
            ),
            alice.token(),
        )
        .await;
    assert_eq!(fully["event_id"], id);
    let res = s.post(&path, alice.token(), json!({"m.fully_read": "$unknown"})).await;
    assert_error(&res, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn full_state_returns_the_whole_state_again() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({"name": "Full"})).await;
    for i in 0..12 {
        s.send_text(&alice, &room, &format!("t{i}"), "x").await;
    }
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let (_, body) = s
        .get(&format!("/_matrix/client/v3/sync?since={since}&full_state=true"), alice.token())
        .await;
    let state = body["rooms"]["join"][&room]["state"]["events"].as_array().unwrap();
    assert!(state.iter().any(|e| e["type"] == "m.room.name"), "{body}");
    assert!(state.iter().any(|e| e["type"] == "m.room.create"));
}

#[tokio::test]
async fn include_leave_shows_departed_rooms_in_an_initial_sync() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    s.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), bob.token(), json!({})).await;
    let plain = s.sync(&bob, None, 0).await;
    assert!(plain["rooms"]["leave"].get(&room).is_none(), "left rooms stay out by default");
    let filter = enc(&json!({"room": {"include_leave": true}}).to_string());
    let (_, body) = s.get(&format!("/_matrix/client/v3/sync?filter={filter}"), bob.token()).await;
    let timeline = body["rooms"]["leave"][&room]["timeline"]["events"].as_array().unwrap();
    assert_eq!(timeline.last().unwrap()["content"]["membership"], "leave", "{body}");
}

#[tokio::test]
async fn malformed_sync_and_pagination_tokens_are_invalid_params() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    assert_error(
        &s.get("/_matrix/client/v3/sync?since=garbage", alice.token()).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &s.get("/_matrix/client/v3/sync?since=s1_x", alice.token()).await,
        400,
        "M_INVALID_PARAM",
    );
    let res = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&from=nope", enc(&room)),
            alice.token(),
        )
        .await;
    assert_error(&res, 400, "M_INVALID_PARAM");
}
