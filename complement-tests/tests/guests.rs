//! Guest access (`[guests] enabled`) and the room-preview stream `GET /events`.
//!
//! Off (the default), registering as a guest is refused with the spec's error. On, a guest
//! account gets a token that works only on the spec's guest endpoints, and joins only rooms
//! whose `m.room.guest_access` is `can_join`. `/events?room_id=` streams a room's events to
//! members and, for world-readable rooms, to anyone.

use complement_tests::{ServerOptions, Session, TestServer, assert_error, enc, json};
use reqwest::Method;

async fn guests_server() -> TestServer {
    TestServer::start_with(ServerOptions {
        extra_toml: "[guests]\nenabled = true\n".into(),
        ..ServerOptions::default()
    })
    .await
}

async fn register_guest(s: &TestServer) -> Session {
    let res = s.post("/_matrix/client/v3/register?kind=guest", None, json!({})).await;
    assert_eq!(res.0, 200, "guest registration: {}", res.1);
    Session::from_json(&res.1)
}

#[tokio::test]
async fn guest_registration_is_refused_with_m_guest_access_forbidden() {
    let s = TestServer::start().await;
    for path in ["/_matrix/client/v3/register?kind=guest", "/_matrix/client/r0/register?kind=guest"]
    {
        let res = s.post(path, None, json!({})).await;
        assert_error(&res, 403, "M_GUEST_ACCESS_FORBIDDEN");
    }
    // Ordinary registration still works.
    s.register("alice", "alice-password").await;
}

#[tokio::test]
async fn enabled_guest_registration_gives_a_numeric_guest_account_with_a_session() {
    let mut s = guests_server().await;
    let guest = register_guest(&s).await;
    let localpart = guest.user_id.trim_start_matches('@').split(':').next().unwrap().to_owned();
    assert!(!localpart.is_empty() && localpart.bytes().all(|b| b.is_ascii_digit()), "{localpart}");
    assert!(guest.user_id.ends_with(":test.local"));

    let who = s.get("/_matrix/client/v3/account/whoami", guest.token()).await;
    assert_eq!(who.0, 200, "{}", who.1);
    assert_eq!(who.1["user_id"], guest.user_id.as_str());
    assert_eq!(who.1["is_guest"], true);
    assert_eq!(who.1["device_id"], guest.device_id.as_str());

    // Two guests are two accounts.
    let other = register_guest(&s).await;
    assert_ne!(other.user_id, guest.user_id);

    // A guest has no password: it cannot log in with one.
    let login = s.login(&localpart, "").await;
    assert_eq!(login.0, 403, "{}", login.1);

    // The flag is stored: after kill -9 the token is still a guest's.
    s.crash_and_restart().await;
    let who = s.get("/_matrix/client/v3/account/whoami", guest.token()).await;
    assert_eq!(who.1["is_guest"], true, "{}", who.1);
    let res = s.post("/_matrix/client/v3/createRoom", guest.token(), json!({})).await;
    assert_error(&res, 403, "M_GUEST_ACCESS_FORBIDDEN");

    // Full accounts are not guests.
    let alice = s.register("alice", "alice-password").await;
    let who = s.get("/_matrix/client/v3/account/whoami", alice.token()).await;
    assert_eq!(who.0, 200, "{}", who.1);
    // `is_guest` defaults to false when left out.
    assert!(who.1.get("is_guest").is_none_or(|v| v == false), "{}", who.1);
}

#[tokio::test]
async fn guest_tokens_work_only_on_the_guest_endpoints() {
    let s = guests_server().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    // private_chat rooms let guests join; make the room public to join without an invite.
    let (status, body) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.join_rules/", enc(&room)),
            alice.token(),
            json!({"join_rule": "public"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let event_id = s
        .send_message(&alice, &room, "t1", json!({"msgtype": "m.text", "body": "hi guests"}))
        .await;

    let guest = register_guest(&s).await;
    let token = guest.token();
    let r = enc(&room);

    // Forbidden: creating rooms, account data, filters, push rules, presence, typing,
    // receipts, directory, search, password change, logout... every other endpoint.
    let forbidden: Vec<(Method, String, Option<serde_json::Value>)> = vec![
        (Method::POST, "/_matrix/client/v3/createRoom".into(), Some(json!({}))),
        (Method::POST, "/_matrix/client/r0/createRoom".into(), Some(json!({}))),
        (
            Method::PUT,
            format!("/_matrix/client/v3/user/{}/account_data/m.x", enc(&guest.user_id)),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/_matrix/client/v3/user/{}/filter", enc(&guest.user_id)),
            Some(json!({})),
        ),
        (Method::GET, "/_matrix/client/v3/pushrules/".into(), None),
        (Method::GET, "/_matrix/client/v3/joined_rooms".into(), None),
        (
            Method::PUT,
            format!("/_matrix/client/v3/rooms/{r}/typing/{}", enc(&guest.user_id)),
            Some(json!({"typing": true, "timeout": 1000})),
        ),
        (Method::POST, "/_matrix/client/v3/search".into(), Some(json!({"search_categories": {}}))),
        (
            Method::POST,
            "/_matrix/client/v3/account/password".into(),
            Some(json!({"new_password": "x"})),
        ),
        (Method::POST, "/_matrix/client/v3/logout/all".into(), Some(json!({}))),
        (
            Method::PUT,
            format!("/_matrix/client/v3/profile/{}/avatar_url", enc(&guest.user_id)),
            Some(json!({"avatar_url": "mxc://x/y"})),
        ),
        (
            Method::POST,
            format!("/_matrix/client/v3/rooms/{r}/invite"),
            Some(json!({"user_id": alice.user_id})),
        ),
        (Method::GET, "/_synapse/admin/v2/users/%40alice%3Atest.local".into(), None),
    ];
    for (method, path, body) in forbidden {
        let res = s.request(method.clone(), &path, token, body).await;
        assert_error(&res, 403, "M_GUEST_ACCESS_FORBIDDEN");
    }

    // Allowed: join, read, send, leave, display name, devices, keys, sync, whoami.
    let (status, body) = s.join(&guest, &room).await;
    assert_eq!(status, 200, "guest join: {body}");
    let (status, body) =
        s.post(&format!("/_matrix/client/v3/rooms/{r}/join"), token, json!({})).await;
    assert_eq!(status, 200, "guest join by id: {body}");
    for rest in ["state", "members", "messages?dir=b", "initialSync", "state/m.room.create/"] {
        let res = s.room_get(&guest, &room, rest).await;
        assert_eq!(res.0, 200, "GET rooms/../{rest}: {}", res.1);
    }
    let res = s.room_get(&guest, &room, &format!("event/{}", enc(&event_id))).await;
    assert_eq!(res.0, 200, "{}", res.1);
    let res = s.room_get(&guest, &room, &format!("context/{}", enc(&event_id))).await;
    assert_eq!(res.0, 200, "{}", res.1);
    let (status, body) = s.send_text(&guest, &room, "g1", "hello from a guest").await;
    assert_eq!(status, 200, "guest send: {body}");
    let sync = s.sync(&guest, None, 0).await;
    assert!(sync["rooms"]["join"][&room].is_object(), "{sync}");
    for path in ["/_matrix/client/v3/devices", "/_matrix/client/v3/account/whoami"] {
        let res = s.get(path, token).await;
        assert_eq!(res.0, 200, "{path}: {}", res.1);
    }
    let res = s
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&guest.user_id)),
            token,
            json!({"displayname": "Guesty"}),
        )
        .await;
    assert_eq!(res.0, 200, "{}", res.1);
    let res = s
        .post(
            "/_matrix/client/v3/keys/query",
            token,
            json!({"device_keys": {alice.user_id.clone(): []}}),
        )
        .await;
    assert_eq!(res.0, 200, "{}", res.1);
    let res =
        s.put("/_matrix/client/v3/sendToDevice/m.test/txn1", token, json!({"messages": {}})).await;
    assert_eq!(res.0, 200, "{}", res.1);
    let res = s.post(&format!("/_matrix/client/v3/rooms/{r}/leave"), token, json!({})).await;
    assert_eq!(res.0, 200, "{}", res.1);

    // Bad tokens are still bad tokens, guest access or not.
    let res = s.get("/_matrix/client/v3/account/whoami", Some("not-a-token")).await;
    assert_error(&res, 401, "M_UNKNOWN_TOKEN");
    let res = s.get("/_matrix/client/v3/sync", None).await;
    assert_error(&res, 401, "M_MISSING_TOKEN");
}

#[tokio::test]
async fn guests_join_only_rooms_whose_guest_access_is_can_join() {
    let s = guests_server().await;
    let alice = s.register("alice", "alice-password").await;
    // public_chat: no m.room.guest_access, so guests may not join.
    let public = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    let guest = register_guest(&s).await;
    let res = s.join(&guest, &public).await;
    assert_error(&res, 403, "M_FORBIDDEN");
    let res = s
        .post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&public)), guest.token(), json!({}))
        .await;
    assert_error(&res, 403, "M_FORBIDDEN");
    // A full user joins it fine.
    let bob = s.register("bob", "bob-password").await;
    assert_eq!(s.join(&bob, &public).await.0, 200);

    // Turning guest access on lets the guest in.
    let res = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.guest_access/", enc(&public)),
            alice.token(),
            json!({"guest_access": "can_join"}),
        )
        .await;
    assert_eq!(res.0, 200, "{}", res.1);
    let res = s.join(&guest, &public).await;
    assert_eq!(res.0, 200, "{}", res.1);

    // Explicitly forbidden again: a second guest is refused.
    let res = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.guest_access/", enc(&public)),
            alice.token(),
            json!({"guest_access": "forbidden"}),
        )
        .await;
    assert_eq!(res.0, 200, "{}", res.1);
    // ...and the guest who had joined is made to leave; the full member stays.
    let member = |user: &str| format!("state/m.room.member/{}", enc(user));
    let res = s.room_get(&alice, &public, &member(&guest.user_id)).await;
    assert_eq!(res.1["membership"], "leave", "{}", res.1);
    let res = s.room_get(&alice, &public, &member(&bob.user_id)).await;
    assert_eq!(res.1["membership"], "join", "{}", res.1);
    let guest2 = register_guest(&s).await;
    assert_error(&s.join(&guest2, &public).await, 403, "M_FORBIDDEN");
    // Guests cannot create rooms either.
    let res = s.post("/_matrix/client/v3/createRoom", guest2.token(), json!({})).await;
    assert_error(&res, 403, "M_GUEST_ACCESS_FORBIDDEN");
}

async fn make_world_readable(s: &TestServer, who: &Session, room: &str) {
    let res = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/", enc(room)),
            who.token(),
            json!({"history_visibility": "world_readable"}),
        )
        .await;
    assert_eq!(res.0, 200, "{}", res.1);
}

fn bodies(chunk: &serde_json::Value) -> Vec<String> {
    chunk
        .as_array()
        .expect("chunk")
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn events_streams_a_world_readable_room_to_a_peeking_non_member() {
    for guests in [false, true] {
        let s = if guests { guests_server().await } else { TestServer::start().await };
        let alice = s.register("alice", "alice-password").await;
        let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
        s.send_message(&alice, &room, "t0", json!({"msgtype": "m.text", "body": "shared"})).await;
        make_world_readable(&s, &alice, &room).await;
        s.send_message(&alice, &room, "t1", json!({"msgtype": "m.text", "body": "one"})).await;
        let peeker =
            if guests { register_guest(&s).await } else { s.register("bob", "bob-pw-123").await };

        // initialSync gives the token to stream from.
        let init = s.room_get(&peeker, &room, "initialSync").await;
        assert_eq!(init.0, 200, "{}", init.1);
        let from = init.1["messages"]["end"].as_str().expect("end").to_owned();
        assert!(bodies(&init.1["messages"]["chunk"]).contains(&"one".to_owned()));

        // From the start: only what was sent while the room was world-readable.
        let all = s
            .get(
                &format!("/_matrix/client/v3/events?room_id={}&from=s0&timeout=0", enc(&room)),
                peeker.token(),
            )
            .await;
        assert_eq!(all.0, 200, "{}", all.1);
        assert_eq!(bodies(&all.1["chunk"]), vec!["one".to_owned()], "{}", all.1);

        let path =
            format!("/_matrix/client/v3/events?room_id={}&from={from}&timeout=0", enc(&room));
        let res = s.get(&path, peeker.token()).await;
        assert_eq!(res.0, 200, "{}", res.1);
        assert_eq!(bodies(&res.1["chunk"]), Vec::<String>::new());
        assert_eq!(res.1["start"], from.as_str());
        assert_eq!(res.1["end"], from.as_str());

        s.send_message(&alice, &room, "t2", json!({"msgtype": "m.text", "body": "two"})).await;
        let res = s.get(&path, peeker.token()).await;
        assert_eq!(res.0, 200, "{}", res.1);
        assert_eq!(bodies(&res.1["chunk"]), vec!["two".to_owned()]);
        assert_eq!(res.1["chunk"][0]["room_id"], room.as_str());
        let end = res.1["end"].as_str().expect("end").to_owned();
        assert_ne!(end, from);

        // A long-poll from `end` wakes up for the next message.
        let long =
            format!("/_matrix/client/r0/events?room_id={}&from={end}&timeout=10000", enc(&room));
        let started = std::time::Instant::now();
        let (res, _) = tokio::join!(s.get(&long, peeker.token()), async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            s.send_message(&alice, &room, "t3", json!({"msgtype": "m.text", "body": "three"})).await
        });
        assert_eq!(res.0, 200, "{}", res.1);
        assert_eq!(bodies(&res.1["chunk"]), vec!["three".to_owned()]);
        assert!(started.elapsed() < std::time::Duration::from_secs(8));

        // A long-poll with nothing new waits out its timeout and returns the same token.
        let end = res.1["end"].as_str().expect("end").to_owned();
        let quiet =
            format!("/_matrix/client/v3/events?room_id={}&from={end}&timeout=500", enc(&room));
        let started = std::time::Instant::now();
        let res = s.get(&quiet, peeker.token()).await;
        assert_eq!(res.0, 200, "{}", res.1);
        assert!(started.elapsed() >= std::time::Duration::from_millis(400));
        assert_eq!(res.1["chunk"], json!([]));
        assert_eq!(res.1["end"], end.as_str());
    }
}

#[tokio::test]
async fn events_refuses_private_rooms_and_bad_parameters() {
    let s = guests_server().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    s.send_message(&alice, &room, "t1", json!({"msgtype": "m.text", "body": "secret"})).await;
    let bob = s.register("bob", "bob-password").await;
    let guest = register_guest(&s).await;
    let path = format!("/_matrix/client/v3/events?room_id={}&timeout=0", enc(&room));
    for who in [&bob, &guest] {
        assert_error(&s.get(&path, who.token()).await, 403, "M_FORBIDDEN");
    }
    // Unknown rooms are refused the same way.
    let res = s
        .get("/_matrix/client/v3/events?room_id=%21nope%3Atest.local&timeout=0", bob.token())
        .await;
    assert_error(&res, 403, "M_FORBIDDEN");

    // A member streams the room (from now, without a token: nothing yet).
    let res = s.get(&path, alice.token()).await;
    assert_eq!(res.0, 200, "{}", res.1);
    assert_eq!(res.1["chunk"], json!([]));
    let from = res.1["end"].as_str().expect("end").to_owned();
    s.send_message(&alice, &room, "t2", json!({"msgtype": "m.text", "body": "more"})).await;
    let res = s.get(&format!("{path}&from={from}"), alice.token()).await;
    assert_eq!(bodies(&res.1["chunk"]), vec!["more".to_owned()]);

    // Bad parameters and tokens.
    let base = "/_matrix/client/v3/events";
    assert_error(
        &s.get(&format!("{path}&from=garbage"), alice.token()).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &s.get(&format!("{path}&timeout=soon"), alice.token()).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &s.get(&format!("{base}?room_id=not-a-room"), alice.token()).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(&s.get(&format!("{base}?timeout=0"), alice.token()).await, 400, "M_MISSING_PARAM");
    assert_error(&s.get(&path, Some("bad-token")).await, 401, "M_UNKNOWN_TOKEN");
    assert_error(&s.get(&path, None).await, 401, "M_MISSING_TOKEN");
}

/// `POST /register` with `guest_access_token`, through the dummy UIA stage.
async fn upgrade(
    s: &TestServer,
    body: serde_json::Value,
) -> (reqwest::StatusCode, serde_json::Value) {
    let first = s.post("/_matrix/client/v3/register", None, body.clone()).await;
    if first.0 != 401 {
        return first;
    }
    let session = first.1["session"].as_str().expect("session").to_owned();
    let mut body = body;
    body["auth"] = json!({"type": "m.login.dummy", "session": session});
    s.post("/_matrix/client/v3/register", None, body).await
}

#[tokio::test]
async fn a_guest_upgrades_to_a_full_account_keeping_its_user_id_and_rooms() {
    let s = guests_server().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    let res = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.join_rules/", enc(&room)),
            alice.token(),
            json!({"join_rule": "public"}),
        )
        .await;
    assert_eq!(res.0, 200, "{}", res.1);
    let guest = register_guest(&s).await;
    assert_eq!(s.join(&guest, &room).await.0, 200);
    let localpart = guest.user_id.trim_start_matches('@').split(':').next().unwrap().to_owned();

    // Refusals: not a guest's token, no username, someone else's localpart.
    let res = upgrade(
        &s,
        json!({"username": "alice", "password": "pw-12345678", "guest_access_token": alice.access_token}),
    )
    .await;
    assert_error(&res, 403, "M_FORBIDDEN");
    let res = upgrade(
        &s,
        json!({"username": localpart, "password": "pw-12345678", "guest_access_token": "nope"}),
    )
    .await;
    assert_error(&res, 403, "M_FORBIDDEN");
    let res =
        upgrade(&s, json!({"password": "pw-12345678", "guest_access_token": guest.access_token}))
            .await;
    assert_error(&res, 400, "M_MISSING_PARAM");
    let res = upgrade(
        &s,
        json!({"username": "someone", "password": "pw-12345678", "guest_access_token": guest.access_token}),
    )
    .await;
    assert_error(&res, 400, "M_INVALID_PARAM");

    let res = upgrade(
        &s,
        json!({"username": localpart, "password": "pw-12345678", "guest_access_token": guest.access_token}),
    )
    .await;
    assert_eq!(res.0, 200, "upgrade: {}", res.1);
    let full = Session::from_json(&res.1);
    assert_eq!(full.user_id, guest.user_id);

    // Both the new and the old token are a full account's now.
    for token in [full.token(), guest.token()] {
        let who = s.get("/_matrix/client/v3/account/whoami", token).await;
        assert_eq!(who.0, 200, "{}", who.1);
        assert!(who.1.get("is_guest").is_none_or(|v| v == false), "{}", who.1);
        let res = s.post("/_matrix/client/v3/createRoom", token, json!({})).await;
        assert_eq!(res.0, 200, "{}", res.1);
    }
    // Still in the room, and the password logs in.
    let res =
        s.room_get(&full, &room, &format!("state/m.room.member/{}", enc(&full.user_id))).await;
    assert_eq!(res.1["membership"], "join", "{}", res.1);
    assert_eq!(s.login(&localpart, "pw-12345678").await.0, 200);
    // A second upgrade finds no guest.
    let res = upgrade(
        &s,
        json!({"username": localpart, "password": "pw-12345678", "guest_access_token": guest.access_token}),
    )
    .await;
    assert_error(&res, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn redacting_the_guest_access_event_makes_guests_leave() {
    let s = guests_server().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    let res = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.guest_access/", enc(&room)),
            alice.token(),
            json!({"guest_access": "can_join"}),
        )
        .await;
    assert_eq!(res.0, 200, "{}", res.1);
    let access_event = res.1["event_id"].as_str().expect("event_id").to_owned();
    let guest = register_guest(&s).await;
    assert_eq!(s.join(&guest, &room).await.0, 200);
    // The redacted event has no `guest_access`: guests may no longer join, and leave.
    let res = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&room), enc(&access_event)),
            alice.token(),
            json!({}),
        )
        .await;
    assert_eq!(res.0, 200, "{}", res.1);
    let member = format!("state/m.room.member/{}", enc(&guest.user_id));
    let res = s.room_get(&alice, &room, &member).await;
    assert_eq!(res.1["membership"], "leave", "{}", res.1);
    let guest2 = register_guest(&s).await;
    assert_error(&s.join(&guest2, &room).await, 403, "M_FORBIDDEN");
}
