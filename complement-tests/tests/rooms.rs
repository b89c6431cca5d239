//! Rooms: creation, membership, power levels, sending, state, history.

use complement_tests::{TestServer, assert_error, enc, json};

#[tokio::test]
async fn create_room_defaults_to_version_12_with_a_hash_room_id() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({"name": "Lounge", "topic": "chat"})).await;
    assert!(!room.contains(':'), "v12 room IDs carry no server name: {room}");
    let (status, create) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.create/", enc(&room)),
            alice.token(),
        )
        .await;
    assert_eq!(status, 200, "{create}");
    assert_eq!(create["room_version"], "12");
    let (_, name) = s
        .get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.name", enc(&room)), alice.token())
        .await;
    assert_eq!(name["name"], "Lounge");
    let (_, topic) = s
        .get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room)), alice.token())
        .await;
    assert_eq!(topic["topic"], "chat");
}

#[tokio::test]
async fn every_room_version_from_1_to_12_can_be_created_and_used() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    for v in 1..=12 {
        let room = s
            .create_room(&alice, json!({"room_version": v.to_string(), "preset": "public_chat"}))
            .await;
        let (status, body) = s.send_text(&alice, &room, &format!("t{v}"), "hello").await;
        assert_eq!(status, 200, "send in v{v}: {body}");
        let (status, state) =
            s.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(&room)), alice.token()).await;
        assert_eq!(status, 200);
        assert!(state.as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"
            && e["content"]["room_version"] == v.to_string().as_str()));
    }
}

#[tokio::test]
async fn an_unknown_room_version_is_refused() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let res = s
        .post("/_matrix/client/v3/createRoom", alice.token(), json!({"room_version": "999"}))
        .await;
    assert_error(&res, 400, "M_UNSUPPORTED_ROOM_VERSION");
}

#[tokio::test]
async fn send_into_room_not_joined_is_forbidden() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({})).await;
    assert_error(&s.send_text(&bob, &room, "t1", "hi").await, 403, "M_FORBIDDEN");
    let res = s
        .get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b", enc(&room)), bob.token())
        .await;
    assert_error(&res, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn a_private_room_needs_an_invite_and_a_public_one_does_not() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let private = s.create_room(&alice, json!({})).await;
    assert_error(&s.join(&bob, &private).await, 403, "M_FORBIDDEN");
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&private)),
            alice.token(),
            json!({"user_id": bob.user_id}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.join(&bob, &private).await.0, 200);

    let public =
        s.create_room(&alice, json!({"preset": "public_chat", "room_alias_name": "town"})).await;
    let (status, body) = s
        .post(
            &format!("/_matrix/client/v3/join/{}", enc("#town:test.local")),
            bob.token(),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], public);
    let (_, joined) = s.get("/_matrix/client/v3/joined_rooms", bob.token()).await;
    let joined = joined["joined_rooms"].as_array().unwrap();
    assert!(joined.contains(&json!(private)) && joined.contains(&json!(public)));
}

#[tokio::test]
async fn a_taken_alias_is_m_room_in_use() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    s.create_room(&alice, json!({"room_alias_name": "dup"})).await;
    let res = s
        .post("/_matrix/client/v3/createRoom", alice.token(), json!({"room_alias_name": "dup"}))
        .await;
    assert_error(&res, 400, "M_ROOM_IN_USE");
}

#[tokio::test]
async fn a_member_without_power_cannot_rename_or_kick() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let carol = s.register("carol", "carol-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    s.join(&carol, &room).await;
    let res = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            bob.token(),
            json!({"name": "mine"}),
        )
        .await;
    assert_error(&res, 403, "M_FORBIDDEN");
    let res = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room)),
            bob.token(),
            json!({"user_id": carol.user_id}),
        )
        .await;
    assert_error(&res, 403, "M_FORBIDDEN");
    // The creator can.
    let res = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room)),
            alice.token(),
            json!({"user_id": carol.user_id, "reason": "bye"}),
        )
        .await;
    assert_eq!(res.0, 200, "{}", res.1);
    assert_error(&s.send_text(&carol, &room, "t1", "still here?").await, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn a_banned_user_cannot_rejoin_until_unbanned() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
            alice.token(),
            json!({"user_id": bob.user_id}),
        )
        .await;
    assert_eq!(status, 200);
    assert_error(&s.join(&bob, &room).await, 403, "M_FORBIDDEN");
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/unban", enc(&room)),
            alice.token(),
            json!({"user_id": bob.user_id}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.join(&bob, &room).await.0, 200);
}

#[tokio::test]
async fn leaving_and_rejoining_a_public_room_works_and_forget_needs_leave() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    let forget = format!("/_matrix/client/v3/rooms/{}/forget", enc(&room));
    assert_error(&s.post(&forget, bob.token(), json!({})).await, 400, "M_UNKNOWN");
    let (status, _) = s
        .post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), bob.token(), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_error(&s.send_text(&bob, &room, "t1", "x").await, 403, "M_FORBIDDEN");
    assert_eq!(s.post(&forget, bob.token(), json!({})).await.0, 200);
    assert_eq!(s.join(&bob, &room).await.0, 200);
    assert_eq!(s.send_text(&bob, &room, "t2", "back").await.0, 200);
}

#[tokio::test]
async fn a_retried_send_returns_the_same_event_and_stores_it_once() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let (_, first) = s.send_text(&alice, &room, "same-txn", "once").await;
    let (_, second) = s.send_text(&alice, &room, "same-txn", "once").await;
    assert_eq!(first["event_id"], second["event_id"]);
    let (_, msgs) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(&room)),
            alice.token(),
        )
        .await;
    let count =
        msgs["chunk"].as_array().unwrap().iter().filter(|e| e["content"]["body"] == "once").count();
    assert_eq!(count, 1);
    // Another device may reuse the txn ID for a different message.
    let (_, other) = s.login("alice", "alice-password").await;
    let other = complement_tests::Session::from_json(&other);
    let (_, third) = s.send_text(&other, &room, "same-txn", "once").await;
    assert_ne!(third["event_id"], first["event_id"]);
}

#[tokio::test]
async fn pagination_covers_hundreds_of_events_without_gaps_or_duplicates() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    for i in 0..300 {
        let (status, _) = s.send_text(&alice, &room, &format!("t{i}"), &format!("m{i}")).await;
        assert_eq!(status, 200);
    }
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=37", enc(&room));
        if let Some(f) = &from {
            path.push_str(&format!("&from={f}"));
        }
        let (status, body) = s.get(&path, alice.token()).await;
        assert_eq!(status, 200, "{body}");
        for e in body["chunk"].as_array().unwrap() {
            if e["type"] == "m.room.message" {
                seen.push(e["content"]["body"].as_str().unwrap().to_owned());
            }
        }
        match body.get("end").and_then(|e| e.as_str()) {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..300).rev().map(|i| format!("m{i}")).collect();
    assert_eq!(seen, expected);

    // And forwards from the start.
    let (_, body) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=f&limit=5", enc(&room)),
            alice.token(),
        )
        .await;
    assert_eq!(body["chunk"][0]["type"], "m.room.create");
}

#[tokio::test]
async fn redaction_removes_the_content() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let (_, sent) = s.send_text(&alice, &room, "t1", "secret").await;
    let event_id = sent["event_id"].as_str().unwrap();
    let (status, body) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&room), enc(event_id)),
            alice.token(),
            json!({"reason": "oops"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, ev) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(event_id)),
            alice.token(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(ev["content"], json!({}));
}

#[tokio::test]
async fn members_and_joined_members_list_the_room() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"invite": [bob.user_id]})).await;
    let (_, members) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/members", enc(&room)), alice.token()).await;
    assert_eq!(members["chunk"].as_array().unwrap().len(), 2);
    let (_, invited) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/members?membership=invite", enc(&room)),
            alice.token(),
        )
        .await;
    assert_eq!(invited["chunk"][0]["state_key"], bob.user_id);
    let (_, joined) = s
        .get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)), alice.token())
        .await;
    assert!(joined["joined"].get(&alice.user_id).is_some());
    assert!(joined["joined"].get(&bob.user_id).is_none());
}

#[tokio::test]
async fn joined_members_omit_an_absent_avatar() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let (status, body) = s
        .get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)), alice.token())
        .await;
    assert_eq!(status, 200, "{body}");
    let member = &body["joined"][&alice.user_id];
    assert_eq!(member["display_name"], "alice");
    assert!(member.get("avatar_url").is_none(), "avatar_url must be omitted, not null: {member}");
}

#[tokio::test]
async fn rooms_and_events_survive_kill_9() {
    let mut s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({"name": "durable"})).await;
    let (_, sent) = s.send_text(&alice, &room, "t1", "keep me").await;
    let before = s.sync(&alice, None, 0).await;
    s.crash_and_restart().await;
    let (status, ev) = s
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room),
                enc(sent["event_id"].as_str().unwrap())
            ),
            alice.token(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(ev["content"]["body"], "keep me");
    // The old sync token still works, and new events continue after it.
    s.send_text(&alice, &room, "t2", "after restart").await;
    let after = s.sync(&alice, before["next_batch"].as_str(), 0).await;
    let timeline = &after["rooms"]["join"][&room]["timeline"]["events"];
    assert_eq!(timeline.as_array().unwrap().len(), 1, "{after}");
    assert_eq!(timeline[0]["content"]["body"], "after restart");
    // The retried txn is still recognised after the restart.
    let (_, again) = s.send_text(&alice, &room, "t1", "keep me").await;
    assert_eq!(again["event_id"], sent["event_id"]);
}

#[tokio::test]
async fn concurrent_retries_of_one_transaction_store_one_event() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = s.client.clone();
        let url =
            format!("{}/_matrix/client/v3/rooms/{}/send/m.room.message/racy", s.base, enc(&room));
        let token = alice.access_token.clone();
        tasks.push(tokio::spawn(async move {
            let res = client
                .put(url)
                .bearer_auth(token)
                .json(&json!({"msgtype": "m.text", "body": "once"}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            res.json::<serde_json::Value>().await.unwrap()["event_id"].as_str().unwrap().to_owned()
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap());
    }
    assert_eq!(ids.len(), 1, "every retry must get the same event ID");
    let (_, msgs) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(&room)),
            alice.token(),
        )
        .await;
    let count =
        msgs["chunk"].as_array().unwrap().iter().filter(|e| e["content"]["body"] == "once").count();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn joined_history_visibility_hides_what_came_before_the_join() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s
        .create_room(&alice, json!({"preset": "public_chat", "initial_state": [
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}
        ]}))
        .await;
    let (_, before) = s.send_text(&alice, &room, "t1", "before bob").await;
    s.join(&bob, &room).await;
    s.send_text(&alice, &room, "t2", "after bob").await;
    let (_, msgs) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(&room)),
            bob.token(),
        )
        .await;
    let bodies: Vec<_> = msgs["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, vec!["after bob"]);
    let res = s
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room),
                enc(before["event_id"].as_str().unwrap())
            ),
            bob.token(),
        )
        .await;
    assert_error(&res, 404, "M_NOT_FOUND");
    let body = s.sync(&bob, None, 0).await;
    let timeline = body["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    assert!(timeline.iter().all(|e| e["content"]["body"] != "before bob"), "{timeline:?}");
}

#[tokio::test]
async fn shared_history_is_visible_to_new_members_and_former_members_see_up_to_their_leave() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.send_text(&alice, &room, "t1", "early").await;
    s.join(&bob, &room).await;
    let (_, msgs) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(&room)),
            bob.token(),
        )
        .await;
    assert!(msgs["chunk"].as_array().unwrap().iter().any(|e| e["content"]["body"] == "early"));
    s.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), bob.token(), json!({})).await;
    s.send_text(&alice, &room, "t2", "after bob left").await;
    let (status, msgs) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(&room)),
            bob.token(),
        )
        .await;
    assert_eq!(status, 200);
    let bodies: Vec<_> = msgs["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert!(bodies.contains(&"early") && !bodies.contains(&"after bob left"), "{bodies:?}");
}

#[tokio::test]
async fn members_at_a_token_show_the_membership_of_that_time() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    let before = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    s.join(&bob, &room).await;
    let (_, now) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/members", enc(&room)), alice.token()).await;
    assert_eq!(now["chunk"].as_array().unwrap().len(), 2);
    let (status, then) = s
        .get(&format!("/_matrix/client/v3/rooms/{}/members?at={before}", enc(&room)), alice.token())
        .await;
    assert_eq!(status, 200, "{then}");
    assert_eq!(then["chunk"].as_array().unwrap().len(), 1);
    let (_, joined) = s
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/members?not_membership=leave&membership=join",
                enc(&room)
            ),
            alice.token(),
        )
        .await;
    assert_eq!(joined["chunk"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn an_event_over_64_kib_is_too_large() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    // Under the request limit (64 KiB in tests) but over the PDU limit once signed.
    let res = s.send_text(&alice, &room, "big", &"x".repeat(65_000)).await;
    assert_error(&res, 413, "M_TOO_LARGE");
    let (_, msgs) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=5", enc(&room)),
            alice.token(),
        )
        .await;
    assert!(msgs["chunk"].as_array().unwrap().iter().all(|e| e["type"] != "m.room.message"));
}

#[tokio::test]
async fn sending_too_fast_is_rate_limited() {
    let s = TestServer::start_with(complement_tests::ServerOptions {
        event_rate: (0.01, 3),
        ..Default::default()
    })
    .await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await; // one of the three
    for i in 0..2 {
        assert_eq!(s.send_text(&alice, &room, &format!("t{i}"), "x").await.0, 200);
    }
    let res = s.send_text(&alice, &room, "t2", "x").await;
    assert_error(&res, 429, "M_LIMIT_EXCEEDED");
    assert!(res.1["retry_after_ms"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn messages_with_lazy_loading_include_the_senders_member_events() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    s.send_text(&bob, &room, "b1", "from bob").await;
    let filter = enc(&json!({"lazy_load_members": true}).to_string());
    let (status, body) = s
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1&filter={filter}",
                enc(&room)
            ),
            alice.token(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let state = body["state"].as_array().unwrap();
    assert_eq!(state.len(), 1, "{body}");
    assert_eq!(state[0]["state_key"], bob.user_id);
    assert_eq!(state[0]["content"]["displayname"], "bob");
}

#[tokio::test]
async fn event_content_with_a_float_is_bad_json() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let res = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/f1", enc(&room)),
            alice.token(),
            json!({"msgtype": "m.text", "body": "x", "n": 1.5}),
        )
        .await;
    assert_error(&res, 400, "M_BAD_JSON");
}

#[tokio::test]
async fn a_state_change_carries_the_previous_content() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({"name": "Old name"})).await;
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let (_, set) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            alice.token(),
            json!({"name": "New name"}),
        )
        .await;
    let body = s.sync(&alice, Some(&since), 0).await;
    let event = &body["rooms"]["join"][&room]["timeline"]["events"][0];
    assert_eq!(event["event_id"], set["event_id"]);
    assert_eq!(event["content"]["name"], "New name");
    assert_eq!(event["unsigned"]["prev_content"]["name"], "Old name", "{event}");
    assert!(event["unsigned"]["replaces_state"].is_string());
    assert_eq!(event["unsigned"]["prev_sender"], alice.user_id);
}

#[tokio::test]
async fn a_redacted_event_says_what_redacted_it() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let (_, sent) = s.send_text(&alice, &room, "t1", "regret").await;
    let id = sent["event_id"].as_str().unwrap();
    let (_, redaction) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&room), enc(id)),
            alice.token(),
            json!({"reason": "typo"}),
        )
        .await;
    let (_, msgs) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=5", enc(&room)),
            alice.token(),
        )
        .await;
    let redacted =
        msgs["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == id).unwrap().clone();
    assert_eq!(redacted["content"], json!({}));
    assert_eq!(redacted["unsigned"]["redacted_because"]["event_id"], redaction["event_id"]);
    assert_eq!(redacted["unsigned"]["redacted_because"]["content"]["reason"], "typo");
}

#[tokio::test]
async fn inviting_an_unknown_or_remote_user_is_refused() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let path = format!("/_matrix/client/v3/rooms/{}/invite", enc(&room));
    let res = s.post(&path, alice.token(), json!({"user_id": "@nobody:test.local"})).await;
    assert_error(&res, 404, "M_NOT_FOUND");
    let res = s.post(&path, alice.token(), json!({"user_id": "@bob:elsewhere.example"})).await;
    assert_error(&res, 400, "M_UNKNOWN");
    let res = s
        .post(
            "/_matrix/client/v3/createRoom",
            alice.token(),
            json!({"invite": ["@nobody:test.local"]}),
        )
        .await;
    assert_error(&res, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn only_the_sender_or_a_moderator_can_redact() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let carol = s.register("carol", "carol-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    s.join(&carol, &room).await;
    let (_, bobs) = s.send_text(&bob, &room, "b1", "bob's message").await;
    let id = bobs["event_id"].as_str().unwrap();
    let redact = |who: &complement_tests::Session, txn: &str| {
        let path = format!("/_matrix/client/v3/rooms/{}/redact/{}/{txn}", enc(&room), enc(id));
        let token = who.access_token.clone();
        let s = &s;
        async move { s.put(&path, Some(&token), json!({})).await }
    };
    assert_error(&redact(&carol, "c1").await, 403, "M_FORBIDDEN");
    let (_, ev) = s
        .get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(id)), alice.token())
        .await;
    assert_eq!(ev["content"]["body"], "bob's message", "a refused redaction changes nothing");
    assert_eq!(redact(&alice, "a1").await.0, 200, "the room creator moderates");
    let (_, own) = s.send_text(&bob, &room, "b2", "mine").await;
    let path = format!(
        "/_matrix/client/v3/rooms/{}/redact/{}/b3",
        enc(&room),
        enc(own["event_id"].as_str().unwrap())
    );
    assert_eq!(s.put(&path, bob.token(), json!({})).await.0, 200, "anyone redacts their own");
}

#[tokio::test]
async fn a_former_member_reads_the_state_as_it_was_when_they_left() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat", "name": "Before"})).await;
    s.join(&bob, &room).await;
    s.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), bob.token(), json!({})).await;
    s.put(
        &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
        alice.token(),
        json!({"name": "After"}),
    )
    .await;
    let (status, name) = s
        .get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)), bob.token())
        .await;
    assert_eq!(status, 200, "{name}");
    assert_eq!(name["name"], "Before");
    let (status, state) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(&room)), bob.token()).await;
    assert_eq!(status, 200);
    assert!(
        state
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Before")
    );
    // Someone who was never in the (not world-readable) room sees nothing.
    let carol = s.register("carol", "carol-password").await;
    let res = s.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(&room)), carol.token()).await;
    assert_error(&res, 403, "M_FORBIDDEN");
}

/// The event IDs of a room's timeline, newest first (up to 50).
async fn timeline_ids(s: &TestServer, who: &complement_tests::Session, room: &str) -> Vec<String> {
    let (_, msgs) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(room)),
            who.token(),
        )
        .await;
    msgs["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_txn_id_reused_in_another_room_sends_a_new_event() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let first_room = s.create_room(&alice, json!({})).await;
    let second_room = s.create_room(&alice, json!({})).await;
    let (_, first) = s.send_text(&alice, &first_room, "same", "to the first room").await;
    let (status, second) = s.send_text(&alice, &second_room, "same", "to the second room").await;
    assert_eq!(status, 200, "{second}");
    assert_ne!(first["event_id"], second["event_id"]);
    let ids = timeline_ids(&s, &alice, &second_room).await;
    assert!(ids.iter().any(|id| second["event_id"] == id.as_str()), "the message was stored");
}

#[tokio::test]
async fn a_txn_id_reused_for_another_event_type_or_a_redaction_sends_a_new_event() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let (_, message) = s.send_text(&alice, &room, "same", "a message").await;
    let message_id = message["event_id"].as_str().unwrap().to_owned();
    let (status, reaction) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.reaction/same", enc(&room)),
            alice.token(),
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": message_id, "key": "👍"}}),
        )
        .await;
    assert_eq!(status, 200, "{reaction}");
    assert_ne!(reaction["event_id"], message_id.as_str());
    let redact =
        format!("/_matrix/client/v3/rooms/{}/redact/{}/same", enc(&room), enc(&message_id));
    let (status, redaction) = s.put(&redact, alice.token(), json!({})).await;
    assert_eq!(status, 200, "{redaction}");
    assert_ne!(redaction["event_id"], message_id.as_str());
    assert_ne!(redaction["event_id"], reaction["event_id"]);
    // A retried redaction is still answered with its first event.
    let (_, again) = s.put(&redact, alice.token(), json!({})).await;
    assert_eq!(again["event_id"], redaction["event_id"]);
    let ids = timeline_ids(&s, &alice, &room).await;
    for id in [&reaction["event_id"], &redaction["event_id"]] {
        assert!(ids.iter().any(|i| id == i.as_str()), "{id} was stored");
    }
}

#[tokio::test]
async fn a_send_retried_after_leaving_the_room_returns_the_original_event() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    let (_, sent) = s.send_text(&bob, &room, "t1", "bye").await;
    s.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), bob.token(), json!({})).await;
    let (status, retried) = s.send_text(&bob, &room, "t1", "bye").await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["event_id"], sent["event_id"]);
    // A new transaction is refused: Bob is no longer in the room.
    assert_error(&s.send_text(&bob, &room, "t2", "hello?").await, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn a_send_retried_while_rate_limited_returns_the_original_event() {
    let s = TestServer::start_with(complement_tests::ServerOptions {
        event_rate: (0.01, 2),
        ..Default::default()
    })
    .await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await; // one of the two
    let (status, sent) = s.send_text(&alice, &room, "t1", "x").await;
    assert_eq!(status, 200, "{sent}");
    assert_error(&s.send_text(&alice, &room, "t2", "y").await, 429, "M_LIMIT_EXCEEDED");
    let (status, retried) = s.send_text(&alice, &room, "t1", "x").await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["event_id"], sent["event_id"]);
}

#[tokio::test]
async fn setting_identical_state_again_returns_the_current_event() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s
        .create_room(
            &alice,
            json!({
                "preset": "public_chat",
                // In v12 rooms the creator outranks every level and is not listed.
                "power_level_content_override": {"users": {&bob.user_id: 100}},
            }),
        )
        .await;
    s.join(&bob, &room).await;
    let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room));
    let (status, first) = s.put(&path, alice.token(), json!({"topic": "same"})).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = s.put(&path, alice.token(), json!({"topic": "same"})).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["event_id"], first["event_id"], "no new event for identical state");
    let ids = timeline_ids(&s, &alice, &room).await;
    assert_eq!(ids[0], first["event_id"].as_str().unwrap(), "nothing was written after it");
    // Other content, or the same content from someone else, is a new event.
    let (_, other) = s.put(&path, alice.token(), json!({"topic": "different"})).await;
    assert_ne!(other["event_id"], first["event_id"]);
    let (_, by_bob) = s.put(&path, bob.token(), json!({"topic": "different"})).await;
    assert_ne!(by_bob["event_id"], other["event_id"]);
}

#[tokio::test]
async fn an_event_type_or_state_key_over_255_bytes_is_too_large() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let long = "x".repeat(256);
    let res = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/{long}/t1", enc(&room)),
            alice.token(),
            json!({}),
        )
        .await;
    assert_error(&res, 413, "M_TOO_LARGE");
    let res = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/{long}", enc(&room)),
            alice.token(),
            json!({"topic": "x"}),
        )
        .await;
    assert_error(&res, 413, "M_TOO_LARGE");
    let ok = "x".repeat(255);
    let res = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/{ok}/t2", enc(&room)),
            alice.token(),
            json!({}),
        )
        .await;
    assert_eq!(res.0, 200, "{}", res.1);
}

#[tokio::test]
async fn sending_or_setting_state_in_an_unknown_room_is_forbidden() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = "!nowhere:test.local";
    assert_error(&s.send_text(&alice, room, "t1", "hi").await, 403, "M_FORBIDDEN");
    let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(room));
    assert_error(&s.put(&path, alice.token(), json!({"topic": "x"})).await, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn setting_state_in_a_room_not_joined_is_forbidden() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat", "topic": "old"})).await;
    let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room));
    assert_error(&s.put(&path, bob.token(), json!({"topic": "new"})).await, 403, "M_FORBIDDEN");
    let (_, topic) = s.get(&path, alice.token()).await;
    assert_eq!(topic["topic"], "old");
}
