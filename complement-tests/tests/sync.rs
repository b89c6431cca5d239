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

/// `/sync` with an inline filter.
async fn sync_with(
    s: &TestServer,
    who: &complement_tests::Session,
    since: Option<&str>,
    filter: serde_json::Value,
    extra: &str,
) -> serde_json::Value {
    let mut path = format!("/_matrix/client/v3/sync?timeout=0&filter={}", enc(&filter.to_string()));
    if let Some(since) = since {
        path.push_str(&format!("&since={since}"));
    }
    path.push_str(extra);
    let (status, body) = s.get(&path, who.token()).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn next_batch(body: &serde_json::Value) -> String {
    body["next_batch"].as_str().expect("next_batch").to_owned()
}

fn timeline_bodies(room: &serde_json::Value) -> Vec<String> {
    room["timeline"]["events"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_profile_change_is_not_a_rejoin() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat", "name": "R"})).await;
    s.join(&bob, &room).await;
    for i in 0..12 {
        s.send_text(&alice, &room, &format!("t{i}"), &format!("m{i}")).await;
    }
    let since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&bob.user_id)),
            bob.token(),
            json!({"displayname": "Bobby"}),
        )
        .await;
    assert_eq!(status, 200);
    let body = s.sync(&bob, Some(&since), 0).await;
    let r = &body["rooms"]["join"][&room];
    let timeline = r["timeline"]["events"].as_array().unwrap();
    assert_eq!(timeline.len(), 1, "only the member event: {r}");
    assert_eq!(timeline[0]["content"]["displayname"], "Bobby");
    assert_eq!(r["timeline"]["limited"], false);
    assert!(r["state"]["events"].as_array().unwrap().is_empty(), "no full state: {r}");
}

#[tokio::test]
async fn a_filtered_timeline_is_filled_up_to_its_limit() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    for i in 0..4 {
        s.send_text(&alice, &room, &format!("a{i}"), &format!("text {i}")).await;
        for j in 0..6 {
            s.put(
                &format!("/_matrix/client/v3/rooms/{}/send/m.other/b{i}{j}", enc(&room)),
                alice.token(),
                json!({"x": j}),
            )
            .await;
        }
    }
    let filter = json!({"room": {"timeline": {"limit": 3, "types": ["m.room.message"]}}});
    let body = sync_with(&s, &alice, None, filter.clone(), "").await;
    let r = &body["rooms"]["join"][&room];
    assert_eq!(timeline_bodies(r), vec!["text 1", "text 2", "text 3"], "{r}");
    assert_eq!(r["timeline"]["limited"], true, "one more message exists: {r}");

    let filter = json!({"room": {"timeline": {"limit": 10, "types": ["m.room.message"]}}});
    let body = sync_with(&s, &alice, None, filter, "").await;
    let r = &body["rooms"]["join"][&room];
    assert_eq!(timeline_bodies(r).len(), 4, "{r}");
    assert_eq!(r["timeline"]["limited"], false, "every matching event is there: {r}");
}

#[tokio::test]
async fn room_filters_select_rooms_and_urls_and_state_types() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let one = s.create_room(&alice, json!({"name": "One"})).await;
    let two = s.create_room(&alice, json!({"name": "Two"})).await;
    s.send_text(&alice, &one, "t1", "plain").await;
    s.put(
        &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t2", enc(&one)),
        alice.token(),
        json!({"msgtype": "m.image", "body": "picture", "url": "mxc://test.local/abc"}),
    )
    .await;
    for i in 0..12 {
        s.send_text(&alice, &one, &format!("p{i}"), "padding").await;
    }

    let body = sync_with(&s, &alice, None, json!({"room": {"rooms": [one]}}), "").await;
    assert!(body["rooms"]["join"].get(&one).is_some());
    assert!(body["rooms"]["join"].get(&two).is_none(), "rooms filter: {body}");
    let body = sync_with(&s, &alice, None, json!({"room": {"not_rooms": [one]}}), "").await;
    assert!(body["rooms"]["join"].get(&one).is_none(), "not_rooms filter: {body}");
    assert!(body["rooms"]["join"].get(&two).is_some());

    let filter = json!({"room": {"rooms": [one], "timeline": {"contains_url": true}}});
    let body = sync_with(&s, &alice, None, filter, "").await;
    assert_eq!(timeline_bodies(&body["rooms"]["join"][&one]), vec!["picture"], "{body}");

    let filter = json!({"room": {"rooms": [one], "state": {"types": ["m.room.name"]}}});
    let body = sync_with(&s, &alice, None, filter, "").await;
    let state = body["rooms"]["join"][&one]["state"]["events"].as_array().unwrap();
    assert!(!state.is_empty());
    assert!(state.iter().all(|e| e["type"] == "m.room.name"), "state filter: {state:?}");
}

#[tokio::test]
async fn account_data_filters_select_types() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    for kind in ["org.example.a", "org.example.b"] {
        s.put(
            &format!("/_matrix/client/v3/user/{}/account_data/{kind}", enc(&alice.user_id)),
            alice.token(),
            json!({"k": kind}),
        )
        .await;
    }
    let body =
        sync_with(&s, &alice, None, json!({"account_data": {"types": ["org.example.a"]}}), "")
            .await;
    let events = body["account_data"]["events"].as_array().unwrap();
    let types: Vec<_> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, vec!["org.example.a"], "{body}");
}

#[tokio::test]
async fn lazy_loaded_members_are_not_repeated_unless_asked() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    for i in 0..12 {
        s.send_text(&alice, &room, &format!("f{i}"), "filler").await;
    }
    let lazy = json!({"room": {"state": {"lazy_load_members": true}}});
    let members = |body: &serde_json::Value| {
        body["rooms"]["join"][&room]["state"]["events"]
            .as_array()
            .map(|a| a.iter().filter(|e| e["state_key"] == bob.user_id.as_str()).count())
            .unwrap_or(0)
    };
    let body = sync_with(&s, &alice, None, lazy.clone(), "").await;
    assert_eq!(members(&body), 0, "bob sent nothing in this timeline: {body}");
    s.send_text(&bob, &room, "t1", "one").await;
    let body = sync_with(&s, &alice, Some(&next_batch(&body)), lazy.clone(), "").await;
    assert_eq!(members(&body), 1, "bob's membership comes with his first message: {body}");
    s.send_text(&bob, &room, "t2", "two").await;
    let body = sync_with(&s, &alice, Some(&next_batch(&body)), lazy.clone(), "").await;
    assert_eq!(members(&body), 0, "bob's membership was sent already: {body}");
    let redundant =
        json!({"room": {"state": {"lazy_load_members": true, "include_redundant_members": true}}});
    s.send_text(&bob, &room, "t3", "three").await;
    let body = sync_with(&s, &alice, Some(&next_batch(&body)), redundant, "").await;
    assert_eq!(members(&body), 1, "include_redundant_members sends it again: {body}");
}

#[tokio::test]
async fn a_gapped_sync_carries_every_state_change_since_the_token() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let carol = s.register("carol", "carol-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&carol, &room).await;
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    s.join(&bob, &room).await;
    s.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), carol.token(), json!({}))
        .await;
    s.put(
        &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room)),
        alice.token(),
        json!({"topic": "new"}),
    )
    .await;
    for i in 0..15 {
        s.send_text(&alice, &room, &format!("t{i}"), "filler").await;
    }
    let body = s.sync(&alice, Some(&since), 0).await;
    let r = &body["rooms"]["join"][&room];
    assert_eq!(r["timeline"]["limited"], true);
    let state = r["state"]["events"].as_array().unwrap();
    let has = |kind: &str, key: &str, field: &str, value: &str| {
        state
            .iter()
            .any(|e| e["type"] == kind && e["state_key"] == key && e["content"][field] == value)
    };
    assert!(has("m.room.member", &bob.user_id, "membership", "join"), "bob's join: {r}");
    assert!(has("m.room.member", &carol.user_id, "membership", "leave"), "carol's leave: {r}");
    assert!(has("m.room.topic", "", "topic", "new"), "topic: {r}");
    assert!(!state.iter().any(|e| e["type"] == "m.room.create"), "unchanged state stays out: {r}");
    assert_eq!(r["summary"]["m.joined_member_count"], 2);
}

#[tokio::test]
async fn a_room_joined_and_left_between_syncs_arrives_in_full() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat", "name": "Brief"})).await;
    for i in 0..12 {
        s.send_text(&alice, &room, &format!("f{i}"), "earlier").await;
    }
    let since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    s.join(&bob, &room).await;
    s.send_text(&alice, &room, "t1", "hello bob").await;
    s.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), bob.token(), json!({})).await;
    let body = s.sync(&bob, Some(&since), 0).await;
    let r = &body["rooms"]["leave"][&room];
    assert_eq!(timeline_bodies(r).last().map(String::as_str), Some("hello bob"), "{body}");
    assert_eq!(r["timeline"]["limited"], true, "{r}");
    let state = r["state"]["events"].as_array().unwrap();
    assert!(state.iter().any(|e| e["type"] == "m.room.name"), "the room's state comes along: {r}");
    assert!(state.iter().any(|e| e["type"] == "m.room.create"), "{r}");
    assert!(r["timeline"]["prev_batch"].is_string(), "{r}");
}

#[tokio::test]
async fn a_leave_with_a_long_history_is_limited_with_a_prev_batch() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    let since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    for i in 0..15 {
        s.send_text(&alice, &room, &format!("t{i}"), "x").await;
    }
    s.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), bob.token(), json!({})).await;
    let body = s.sync(&bob, Some(&since), 0).await;
    let r = &body["rooms"]["leave"][&room];
    assert_eq!(r["timeline"]["limited"], true, "{r}");
    assert!(r["timeline"]["prev_batch"].is_string(), "{r}");
    assert_eq!(r["timeline"]["events"].as_array().unwrap().len(), 10);
}

#[tokio::test]
async fn summaries_follow_membership_changes() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let carol = s.register("carol", "carol-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    s.post(
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
        alice.token(),
        json!({"user_id": carol.user_id}),
    )
    .await;
    s.join(&bob, &room).await;
    let body = s.sync(&alice, Some(&since), 0).await;
    let summary = &body["rooms"]["join"][&room]["summary"];
    assert_eq!(summary["m.joined_member_count"], 2, "{body}");
    assert_eq!(summary["m.invited_member_count"], 1, "{body}");
    let heroes: Vec<_> = summary["m.heroes"].as_array().unwrap().iter().collect();
    assert_eq!(heroes, vec![&json!(bob.user_id), &json!(carol.user_id)]);
    let since = next_batch(&body);
    s.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), bob.token(), json!({})).await;
    let body = s.sync(&alice, Some(&since), 0).await;
    assert_eq!(body["rooms"]["join"][&room]["summary"]["m.joined_member_count"], 1, "{body}");
}

#[tokio::test]
async fn lazy_loading_sends_only_the_timeline_senders_in_gapped_syncs() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    let mut others = Vec::new();
    for name in ["bob", "carol", "dave"] {
        let who = s.register(name, "some-password").await;
        s.join(&who, &room).await;
        others.push(who);
    }
    // The initial sync's timeline holds none of their member events.
    for i in 0..3 {
        s.send_text(&alice, &room, &format!("a{i}"), "from alice").await;
    }
    let lazy = json!({"room": {"state": {"lazy_load_members": true}, "timeline": {"limit": 2}}});
    let since = next_batch(&sync_with(&s, &alice, None, lazy.clone(), "").await);
    for i in 0..5 {
        s.send_text(&others[0], &room, &format!("b{i}"), "from bob").await;
    }
    s.join(&s.register("erin", "erin-password").await, &room).await;
    s.send_text(&others[1], &room, "c", "from carol").await;
    s.send_text(&others[1], &room, "c2", "from carol").await;
    let body = sync_with(&s, &alice, Some(&since), lazy, "").await;
    let r = &body["rooms"]["join"][&room];
    assert_eq!(r["timeline"]["limited"], true);
    let members: Vec<&str> = r["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert_eq!(members, vec![others[1].user_id.as_str()], "only carol, the timeline's sender: {r}");
}

#[tokio::test]
async fn thirty_new_rooms_then_one_message_each_sync_one_event_per_room() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let mut creating = Vec::new();
    for _ in 0..30 {
        let s = &s;
        let alice = &alice;
        creating.push(async move { s.create_room(alice, json!({})).await });
    }
    let rooms = futures_util::future::join_all(creating).await;
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    for (i, room) in rooms.iter().enumerate() {
        s.send_text(&alice, room, &format!("t{i}"), &format!("hello {i}")).await;
    }
    let body = s.sync(&alice, Some(&since), 0).await;
    for (i, room) in rooms.iter().enumerate() {
        let r = &body["rooms"]["join"][room];
        let events = r["timeline"]["events"].as_array().unwrap_or_else(|| panic!("{room}: {body}"));
        assert_eq!(events.len(), 1, "{r}");
        assert_eq!(events[0]["content"]["body"], format!("hello {i}"));
    }
}

#[tokio::test]
async fn a_state_change_hidden_by_the_timeline_filter_comes_in_state() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    let filter = json!({"room": {"timeline": {"types": ["m.room.message"]}}});
    let since = next_batch(&sync_with(&s, &alice, None, filter.clone(), "").await);
    s.put(
        &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
        alice.token(),
        json!({"name": "renamed"}),
    )
    .await;
    let body = sync_with(&s, &alice, Some(&since), filter.clone(), "").await;
    let state = &body["rooms"]["join"][&room]["state"]["events"];
    assert!(
        state.as_array().is_some_and(|a| a.iter().any(|e| e["content"]["name"] == "renamed")),
        "a rename alone: {body}"
    );
    let since = next_batch(&body);
    s.put(
        &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room)),
        alice.token(),
        json!({"topic": "new topic"}),
    )
    .await;
    s.send_text(&alice, &room, "t1", "after the topic").await;
    let body = sync_with(&s, &alice, Some(&since), filter, "").await;
    let r = &body["rooms"]["join"][&room];
    assert_eq!(timeline_bodies(r), vec!["after the topic"]);
    let state = r["state"]["events"].as_array().unwrap();
    assert!(state.iter().any(|e| e["content"]["topic"] == "new topic"), "{r}");
}

/// A sync loop resumes the subscription its previous response parked: whatever changed
/// between two syncs, in any room or stream, comes in the next one; a different filter or a
/// repeated older token takes the full path and sees the same.
#[tokio::test]
async fn changes_between_two_syncs_of_a_loop_all_arrive() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let rooms = [
        s.create_room(&alice, json!({"preset": "public_chat"})).await,
        s.create_room(&alice, json!({"preset": "public_chat"})).await,
    ];
    for room in &rooms {
        assert_eq!(s.join(&bob, room).await.0, 200);
    }
    let first = s.sync(&bob, None, 0).await;
    let since = next_batch(&first);
    // Bob's loop goes on: a quiet incremental sync parks under its (unchanged) token.
    let quiet = s.sync(&bob, Some(&since), 0).await;
    let since = next_batch(&quiet);
    s.send_text(&alice, &rooms[0], "a", "in room 0").await;
    s.send_text(&alice, &rooms[1], "b", "in room 1").await;
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/user/{}/account_data/m.test", enc(&bob.user_id)),
            bob.token(),
            json!({"n": 1}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&rooms[1]), enc(&alice.user_id)),
            alice.token(),
            json!({"typing": true, "timeout": 30000}),
        )
        .await;
    assert_eq!(status, 200);
    let check = |body: &serde_json::Value| {
        assert_eq!(timeline_bodies(&body["rooms"]["join"][&rooms[0]]), vec!["in room 0"], "{body}");
        assert_eq!(timeline_bodies(&body["rooms"]["join"][&rooms[1]]), vec!["in room 1"], "{body}");
        let global = body["account_data"]["events"].as_array().expect("account data");
        assert!(global.iter().any(|e| e["type"] == "m.test"), "{body}");
        let ephemeral =
            body["rooms"]["join"][&rooms[1]]["ephemeral"]["events"].as_array().expect("ephemeral");
        assert!(ephemeral.iter().any(|e| e["type"] == "m.typing"), "{body}");
    };
    let resumed = s.sync(&bob, Some(&since), 0).await;
    check(&resumed);
    // The same token again (a retried request): the full path, the same answer.
    check(&s.sync(&bob, Some(&since), 0).await);
    // Another filter with the token of the loop: the full path too.
    let filtered =
        sync_with(&s, &bob, Some(&since), json!({"room": {"timeline": {"limit": 5}}}), "").await;
    check(&filtered);
    // And the loop continues from the resumed response: nothing new.
    let after = s.sync(&bob, Some(&next_batch(&resumed)), 0).await;
    assert!(after["rooms"]["join"].as_object().expect("join").is_empty(), "{after}");
}

/// One message, several members: each is sent it as their own view requires (the sending
/// device with its transaction ID, a user ignoring the sender not at all, a receiver further
/// behind with what it missed, a smaller limit limited), and the members who see it alike get
/// the same bytes but for `unsigned.age`. The guard for any sharing of renderings between
/// receivers (session 14 tried one).
#[tokio::test]
async fn members_woken_by_one_message_each_get_their_own_view_of_it() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let carol = s.register("carol", "carol-password").await;
    let dan = s.register("dan", "dan-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    for who in [&bob, &carol, &dan] {
        assert_eq!(s.join(who, &room).await.0, 200);
    }
    let ignore =
        format!("/_matrix/client/v3/user/{}/account_data/m.ignored_user_list", enc(&dan.user_id));
    let ignored = json!({"ignored_users": {alice.user_id.clone(): {}}});
    assert_eq!(s.put(&ignore, dan.token(), ignored).await.0, 200);
    // Element's filter: lazy-loaded members.
    let lazy = json!({"room": {"state": {"lazy_load_members": true}}});
    let mut since = std::collections::HashMap::new();
    for who in [&alice, &bob, &carol, &dan] {
        let body = sync_with(&s, who, None, lazy.clone(), "").await;
        since.insert(who.user_id.clone(), next_batch(&body));
    }
    let before_hello = since[&bob.user_id].clone();

    s.send_text(&alice, &room, "t1", "hello").await;
    let entry = |body: &serde_json::Value| body["rooms"]["join"][&room].clone();
    let without_age = |mut event: serde_json::Value| {
        event["unsigned"].as_object_mut().expect("unsigned").remove("age");
        event
    };
    let bob_body = sync_with(&s, &bob, Some(&since[&bob.user_id]), lazy.clone(), "").await;
    let carol_body = sync_with(&s, &carol, Some(&since[&carol.user_id]), lazy.clone(), "").await;
    let (b, c) = (entry(&bob_body), entry(&carol_body));
    assert_eq!(timeline_bodies(&b), ["hello"], "{b}");
    assert_eq!(b["timeline"]["limited"], false);
    assert_eq!(b["timeline"]["prev_batch"], c["timeline"]["prev_batch"]);
    let hello = without_age(b["timeline"]["events"][0].clone());
    assert_eq!(hello, without_age(c["timeline"]["events"][0].clone()));
    assert!(hello["unsigned"].get("transaction_id").is_none(), "{hello}");
    assert!(b["timeline"]["events"][0]["unsigned"]["age"].is_u64(), "{b}");
    assert_eq!(hello["sender"], alice.user_id.as_str());
    assert!(
        b["state"]["events"].as_array().unwrap().is_empty(),
        "alice's member event was sent: {b}"
    );
    // The sending device sees its transaction ID; a user ignoring the sender sees nothing.
    let alice_body = sync_with(&s, &alice, Some(&since[&alice.user_id]), lazy.clone(), "").await;
    assert_eq!(entry(&alice_body)["timeline"]["events"][0]["unsigned"]["transaction_id"], "t1");
    let dan_body = sync_with(&s, &dan, Some(&since[&dan.user_id]), lazy.clone(), "").await;
    let dan_events = entry(&dan_body)["timeline"]["events"].as_array().cloned().unwrap_or_default();
    assert!(dan_events.iter().all(|e| e["content"]["body"] != "hello"), "{dan_body}");

    // Two more: carol is one event behind, bob three (from before "hello").
    s.send_text(&alice, &room, "t2", "two").await;
    s.send_text(&alice, &room, "t3", "three").await;
    let carol_body = sync_with(&s, &carol, Some(&next_batch(&carol_body)), lazy.clone(), "").await;
    assert_eq!(timeline_bodies(&entry(&carol_body)), ["two", "three"]);
    let bob_again = sync_with(&s, &bob, Some(&before_hello), lazy.clone(), "").await;
    assert_eq!(timeline_bodies(&entry(&bob_again)), ["hello", "two", "three"]);
    assert_eq!(entry(&bob_again)["timeline"]["limited"], false);
    // A smaller limit than the new events: limited, with the newest only.
    let one = json!({"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": true}}});
    let limited = sync_with(&s, &bob, Some(&before_hello), one, "").await;
    assert_eq!(timeline_bodies(&entry(&limited)), ["three"]);
    assert_eq!(entry(&limited)["timeline"]["limited"], true);

    // A redaction is a new event: a receiver behind it sees "hello" redacted, not as it was
    // rendered before.
    let hello_id = hello["event_id"].as_str().unwrap();
    let path = format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&room), enc(hello_id));
    assert_eq!(s.put(&path, alice.token(), json!({})).await.0, 200);
    let after = sync_with(&s, &bob, Some(&before_hello), lazy.clone(), "").await;
    let events = entry(&after)["timeline"]["events"].as_array().unwrap().clone();
    let first = events.iter().find(|e| e["event_id"] == hello_id).expect("hello");
    assert_eq!(first["content"], json!({}), "{first}");
    assert!(events.iter().any(|e| e["type"] == "m.room.redaction"));
}
