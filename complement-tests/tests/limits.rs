//! Bounded work per request: caps with the spec's errors, the password-hashing queue, the
//! event rate limit on membership and profile changes, the timestamp index.

use complement_tests::{ServerOptions, TestServer, Value, assert_error, enc, json};

fn tight_limits(extra: &str) -> ServerOptions {
    ServerOptions { extra_limits: extra.to_owned(), ..Default::default() }
}

#[tokio::test]
async fn create_room_with_more_invites_than_the_cap_is_refused() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    // The default cap is 100; the check comes before any invitee is looked up.
    let invite: Vec<String> = (0..101).map(|i| format!("@user{i}:test.local")).collect();
    let res =
        s.post("/_matrix/client/v3/createRoom", alice.token(), json!({"invite": invite})).await;
    assert_error(&res, 400, "M_TOO_LARGE");
    // Nothing was created, and the server goes on.
    let (_, rooms) = s.get("/_matrix/client/v3/joined_rooms", alice.token()).await;
    assert_eq!(rooms["joined_rooms"], json!([]));
    s.create_room(&alice, json!({"name": "after"})).await;
}

#[tokio::test]
async fn create_room_with_more_initial_state_than_the_cap_is_refused() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let state = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"type": "org.example.entry", "state_key": i.to_string(), "content": {"i": i}}))
            .collect()
    };
    let res = s
        .post("/_matrix/client/v3/createRoom", alice.token(), json!({"initial_state": state(201)}))
        .await;
    assert_error(&res, 400, "M_TOO_LARGE");
    // At the cap (200, the default) the room is created with every entry.
    let started = std::time::Instant::now();
    let room = s.create_room(&alice, json!({"initial_state": state(200)})).await;
    eprintln!("createRoom with 200 initial_state entries took {:?}", started.elapsed());
    let (status, entry) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state/org.example.entry/199", enc(&room)),
            alice.token(),
        )
        .await;
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["i"], 199);
}

#[tokio::test]
async fn identical_filters_share_an_id_and_distinct_ones_are_capped() {
    let s = TestServer::start_with(tight_limits("max_filters_per_user = 3")).await;
    let alice = s.register("alice", "alice-password").await;
    let path = format!("/_matrix/client/v3/user/{}/filter", enc(&alice.user_id));
    let filter = |limit: u64| json!({"room": {"timeline": {"limit": limit}}});
    let (status, first) = s.post(&path, alice.token(), filter(1)).await;
    assert_eq!(status, 200, "{first}");
    let (_, again) = s.post(&path, alice.token(), filter(1)).await;
    assert_eq!(again["filter_id"], first["filter_id"], "an identical filter is not stored twice");
    for limit in [2, 3] {
        let (status, body) = s.post(&path, alice.token(), filter(limit)).await;
        assert_eq!(status, 200, "{body}");
        assert_ne!(body["filter_id"], first["filter_id"]);
    }
    assert_error(&s.post(&path, alice.token(), filter(4)).await, 400, "M_TOO_LARGE");
    // Stored filters still answer, and an identical one is still accepted.
    let (status, _) = s.post(&path, alice.token(), filter(2)).await;
    assert_eq!(status, 200);
    let id = first["filter_id"].as_str().unwrap();
    let (status, got) = s.get(&format!("{path}/{id}"), alice.token()).await;
    assert_eq!(status, 200);
    assert_eq!(got["room"]["timeline"]["limit"], 1);
    let (status, _) = s.get(&format!("/_matrix/client/v3/sync?filter={id}"), alice.token()).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn account_data_types_are_capped_per_scope() {
    let s = TestServer::start_with(tight_limits("max_account_data_types = 2")).await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let global =
        |kind: &str| format!("/_matrix/client/v3/user/{}/account_data/{kind}", enc(&alice.user_id));
    let in_room = |kind: &str| {
        format!(
            "/_matrix/client/v3/user/{}/rooms/{}/account_data/{kind}",
            enc(&alice.user_id),
            enc(&room)
        )
    };
    for kind in ["org.example.a", "org.example.b"] {
        assert_eq!(s.put(&global(kind), alice.token(), json!({"v": 1})).await.0, 200);
    }
    let res = s.put(&global("org.example.c"), alice.token(), json!({"v": 1})).await;
    assert_error(&res, 400, "M_TOO_LARGE");
    assert_error(&s.get(&global("org.example.c"), alice.token()).await, 404, "M_NOT_FOUND");
    // Replacing a stored type is always allowed; the room has a cap of its own.
    assert_eq!(s.put(&global("org.example.a"), alice.token(), json!({"v": 2})).await.0, 200);
    assert_eq!(s.get(&global("org.example.a"), alice.token()).await.1, json!({"v": 2}));
    for kind in ["m.tag", "org.example.r"] {
        assert_eq!(s.put(&in_room(kind), alice.token(), json!({"v": 1})).await.0, 200);
    }
    let res = s.put(&in_room("org.example.s"), alice.token(), json!({"v": 1})).await;
    assert_error(&res, 400, "M_TOO_LARGE");
    s.sync(&alice, None, 0).await;
}

#[tokio::test]
async fn a_full_password_queue_refuses_logins_with_429() {
    // One waiting hash per core: a burst of concurrent logins overflows the queue.
    let s = TestServer::start_with(tight_limits("password_queue_per_core = 1")).await;
    s.register("alice", "alice-password").await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (client, url) = (s.client.clone(), format!("{}/_matrix/client/v3/login", s.base));
        tasks.push(tokio::spawn(async move {
            let res = client
                .post(url)
                .json(&json!({
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": "alice"},
                    "password": "alice-password",
                }))
                .send()
                .await
                .expect("login request");
            (res.status().as_u16(), res.json::<Value>().await.unwrap_or(Value::Null))
        }));
    }
    let mut refused = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            200 => assert!(body["access_token"].is_string(), "{body}"),
            429 => {
                assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED", "{body}");
                assert!(body["retry_after_ms"].as_u64().unwrap() > 0, "{body}");
                refused += 1;
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert!(refused > 0, "100 concurrent logins should overflow a queue of one per core");
    // Once the burst is over, logins work again.
    let (status, body) = s.login("alice", "alice-password").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn membership_changes_count_against_the_event_rate_limit() {
    let s =
        TestServer::start_with(ServerOptions { event_rate: (0.01, 4), ..Default::default() }).await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await; // alice: 1
    let r = enc(&room);
    let member = |who: &str| json!({"user_id": who});
    let invite = format!("/_matrix/client/v3/rooms/{r}/invite");
    assert_eq!(s.post(&invite, alice.token(), member(&bob.user_id)).await.0, 200); // alice: 2
    assert_eq!(s.join(&bob, &room).await.0, 200); // bob: 1
    let kick = format!("/_matrix/client/v3/rooms/{r}/kick");
    assert_eq!(s.post(&kick, alice.token(), member(&bob.user_id)).await.0, 200); // alice: 3
    let ban = format!("/_matrix/client/v3/rooms/{r}/ban");
    assert_eq!(s.post(&ban, alice.token(), member("@carol:test.local")).await.0, 200); // alice: 4
    let unban = format!("/_matrix/client/v3/rooms/{r}/unban");
    let res = s.post(&unban, alice.token(), member("@carol:test.local")).await;
    assert_error(&res, 429, "M_LIMIT_EXCEEDED");
    assert!(res.1["retry_after_ms"].as_u64().unwrap() > 0);

    let leave = format!("/_matrix/client/v3/rooms/{r}/leave");
    assert_eq!(s.join(&bob, &room).await.0, 200); // bob: 2
    assert_eq!(s.post(&leave, bob.token(), json!({})).await.0, 200); // bob: 3
    assert_eq!(s.join(&bob, &room).await.0, 200); // bob: 4
    assert_error(&s.post(&leave, bob.token(), json!({})).await, 429, "M_LIMIT_EXCEEDED");
    assert_error(&s.send_text(&bob, &room, "t1", "hi").await, 429, "M_LIMIT_EXCEEDED");

    // The refused changes did not happen; the room reads as before.
    let (status, members) =
        s.get(&format!("/_matrix/client/v3/rooms/{r}/joined_members"), alice.token()).await;
    assert_eq!(status, 200, "{members}");
    assert!(members["joined"].get(&bob.user_id).is_some(), "{members}");
    let (_, carol) = s
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{r}/state/m.room.member/{}",
                enc("@carol:test.local")
            ),
            alice.token(),
        )
        .await;
    assert_eq!(carol["membership"], "ban");
}

#[tokio::test]
async fn a_profile_change_updates_only_as_many_rooms_as_the_event_rate_limit_allows() {
    let s =
        TestServer::start_with(ServerOptions { event_rate: (0.01, 3), ..Default::default() }).await;
    let alice = s.register("alice", "alice-password").await;
    let rooms = [s.create_room(&alice, json!({})).await, s.create_room(&alice, json!({})).await];
    // One token left: the change succeeds, one room's member event is rewritten now, the
    // other waits (in the background) for the next token, a hundred seconds away.
    let path = format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice.user_id));
    assert_eq!(s.put(&path, alice.token(), json!({"displayname": "Alice A."})).await.0, 200);
    assert_eq!(s.get(&path, None).await.1["displayname"], "Alice A.");
    let mut updated = 0;
    for room in &rooms {
        let (_, member) = s
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                    enc(room),
                    enc(&alice.user_id)
                ),
                alice.token(),
            )
            .await;
        assert_eq!(member["membership"], "join");
        if member["displayname"] == "Alice A." {
            updated += 1;
        }
    }
    assert_eq!(updated, 1, "one token, one room updated");
    assert_error(&s.send_text(&alice, &rooms[0], "t1", "hi").await, 429, "M_LIMIT_EXCEEDED");
}

/// Every event of a room, oldest first, as `(event_id, origin_server_ts)`.
async fn timeline(
    s: &TestServer,
    who: &complement_tests::Session,
    room: &str,
) -> Vec<(String, u64)> {
    let (status, body) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=f&limit=1000", enc(room)),
            who.token(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (e["event_id"].as_str().unwrap().to_owned(), e["origin_server_ts"].as_u64().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn timestamp_to_event_finds_the_nearest_event_in_a_long_history() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    for i in 0..300 {
        assert_eq!(s.send_text(&alice, &room, &format!("t{i}"), &format!("m{i}")).await.0, 200);
    }
    let events = timeline(&s, &alice, &room).await;
    assert!(events.len() > 300);
    let ask = |ts: u64, dir: &str| {
        format!("/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={ts}&dir={dir}", enc(&room))
    };
    // The nearest event at or after (f) / at or before (b) a timestamp: the first / last of
    // the timeline (in stream order, which this server's timestamps follow) on that side.
    let first_at_or_after = |ts: u64| events.iter().find(|(_, t)| *t >= ts).cloned();
    let last_at_or_before = |ts: u64| events.iter().rev().find(|(_, t)| *t <= ts).cloned();
    let middle = events[events.len() / 2].1;
    let last = events.last().unwrap().1;
    let first = events[0].1;
    for ts in [middle, middle + 1, middle.saturating_sub(1), first, last] {
        for (dir, expected) in [("f", first_at_or_after(ts)), ("b", last_at_or_before(ts))] {
            let (status, body) = s.get(&ask(ts, dir), alice.token()).await;
            let (id, at) = expected.expect("an event on that side");
            assert_eq!(status, 200, "ts {ts} dir {dir}: {body}");
            assert_eq!(body["event_id"], id.as_str(), "ts {ts} dir {dir}");
            assert_eq!(body["origin_server_ts"], at, "ts {ts} dir {dir}");
        }
    }
    assert_error(&s.get(&ask(last + 1, "f"), alice.token()).await, 404, "M_NOT_FOUND");
    assert_error(&s.get(&ask(first - 1, "b"), alice.token()).await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn timestamp_to_event_skips_events_the_user_may_not_read() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    s.send_text(&alice, &room, "t0", "before bob left").await;
    let leave = format!("/_matrix/client/v3/rooms/{}/leave", enc(&room));
    let (_, left) = s.post(&leave, bob.token(), json!({})).await;
    assert!(left.is_object());
    for i in 1..4 {
        s.send_text(&alice, &room, &format!("t{i}"), "after bob left").await;
    }
    let events = timeline(&s, &alice, &room).await;
    let last_ts = events.last().unwrap().1;
    let path = format!(
        "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={}&dir=b",
        enc(&room),
        last_ts + 60_000
    );
    // Alice gets the newest event; bob, who left, the newest he could read: his leave.
    let (_, for_alice) = s.get(&path, alice.token()).await;
    assert_eq!(for_alice["event_id"], events.last().unwrap().0.as_str());
    let (status, for_bob) = s.get(&path, bob.token()).await;
    assert_eq!(status, 200, "{for_bob}");
    let (_, leave_event) = s
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}?format=event",
                enc(&room),
                enc(&bob.user_id)
            ),
            alice.token(),
        )
        .await;
    assert_eq!(leave_event["content"]["membership"], "leave", "{leave_event}");
    assert_eq!(for_bob["event_id"], leave_event["event_id"]);
}
