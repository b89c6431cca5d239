//! Room history: pagination with `/messages`, and history visibility judged at each event
//! (client-server API, "History visibility"): the `m.room.history_visibility` in force at the
//! event and the user's membership at the event decide, for `/messages`, `/context`, `/event`
//! and `/sync`.

use complement_tests::{Session, TestServer, Value, enc, json};

fn bodies(events: &Value) -> Vec<String> {
    events
        .as_array()
        .map(|a| {
            a.iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect()
        })
        .unwrap_or_default()
}

/// Every message body `who` can page back to, oldest first (empty when refused).
async fn readable_bodies(s: &TestServer, who: &Session, room: &str) -> Vec<String> {
    let (status, body) = s.room_get(who, room, "messages?dir=b&limit=100").await;
    if status == 403 {
        return Vec::new();
    }
    assert_eq!(status, 200, "{body}");
    let mut out = bodies(&body["chunk"]);
    out.reverse();
    out
}

async fn public_room_with_visibility(s: &TestServer, who: &Session, visibility: &str) -> String {
    let state = json!([{"type": "m.room.history_visibility", "state_key": "",
        "content": {"history_visibility": visibility}}]);
    s.create_room(who, json!({"preset": "public_chat", "initial_state": state})).await
}

async fn set_visibility(s: &TestServer, who: &Session, room: &str, visibility: &str) {
    let (status, body) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/", enc(room)),
            who.token(),
            json!({"history_visibility": visibility}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn leave(s: &TestServer, who: &Session, room: &str) {
    let (status, body) = s
        .post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(room)), who.token(), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn event_status(s: &TestServer, who: &Session, room: &str, event_id: &str) -> u16 {
    s.room_get(who, room, &format!("event/{}", enc(event_id))).await.0.as_u16()
}

#[tokio::test]
async fn an_invitee_who_rejected_reads_no_history() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    let (_, secret) = s.send_text(&alice, &room, "t1", "secret").await;
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            alice.token(),
            json!({"user_id": bob.user_id}),
        )
        .await;
    assert_eq!(status, 200);
    s.send_text(&alice, &room, "t2", "after the invite").await;
    leave(&s, &bob, &room).await; // rejects the invite
    s.send_text(&alice, &room, "t3", "after the rejection").await;

    assert!(readable_bodies(&s, &bob, &room).await.is_empty());
    let secret = secret["event_id"].as_str().unwrap();
    assert!(matches!(event_status(&s, &bob, &room, secret).await, 403 | 404));
    let (status, context) = s.room_get(&bob, &room, &format!("context/{}", enc(secret))).await;
    assert!(matches!(status.as_u16(), 403 | 404), "{context}");
    let filter = enc(&json!({"room": {"include_leave": true}}).to_string());
    let (_, sync) = s.get(&format!("/_matrix/client/v3/sync?filter={filter}"), bob.token()).await;
    let timeline = &sync["rooms"]["leave"][&room]["timeline"]["events"];
    assert!(bodies(timeline).is_empty(), "{timeline}");
}

#[tokio::test]
async fn a_user_banned_before_joining_reads_no_history() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.send_text(&alice, &room, "t1", "before the ban").await;
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
            alice.token(),
            json!({"user_id": bob.user_id}),
        )
        .await;
    assert_eq!(status, 200);
    s.send_text(&alice, &room, "t2", "after the ban").await;
    assert!(readable_bodies(&s, &bob, &room).await.is_empty());
}

#[tokio::test]
async fn a_former_member_of_a_joined_room_reads_only_while_they_were_in_it() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = public_room_with_visibility(&s, &alice, "joined").await;
    for i in 0..3 {
        s.send_text(&alice, &room, &format!("b{i}"), &format!("before {i}")).await;
    }
    let since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    s.join(&bob, &room).await;
    let (_, during) = s.send_text(&alice, &room, "d", "during").await;
    leave(&s, &bob, &room).await;
    s.send_text(&alice, &room, "a", "after").await;

    assert_eq!(readable_bodies(&s, &bob, &room).await, vec!["during"]);
    // The context of the one readable event has nothing before the join.
    let (status, context) = s
        .room_get(
            &bob,
            &room,
            &format!("context/{}?limit=20", enc(during["event_id"].as_str().unwrap())),
        )
        .await;
    assert_eq!(status, 200, "{context}");
    assert!(bodies(&context["events_before"]).is_empty(), "{context}");
    assert!(bodies(&context["events_after"]).is_empty(), "{context}");
    // The leave section of sync: from the join to the departure, nothing before.
    let sync = s.sync(&bob, Some(&since), 0).await;
    let timeline = &sync["rooms"]["leave"][&room]["timeline"]["events"];
    assert_eq!(bodies(timeline), vec!["during"], "{sync}");
}

#[tokio::test]
async fn visibility_is_judged_by_the_setting_at_each_event() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.send_text(&alice, &room, "t1", "shared era").await;
    set_visibility(&s, &alice, &room, "joined").await;
    s.send_text(&alice, &room, "t2", "joined era").await;
    set_visibility(&s, &alice, &room, "invited").await;
    s.send_text(&alice, &room, "t3", "invited era, before the invite").await;
    s.post(
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
        alice.token(),
        json!({"user_id": bob.user_id}),
    )
    .await;
    s.send_text(&alice, &room, "t4", "invited era, after the invite").await;
    s.join(&bob, &room).await;
    s.send_text(&alice, &room, "t5", "after the join").await;

    assert_eq!(
        readable_bodies(&s, &bob, &room).await,
        vec!["shared era", "invited era, after the invite", "after the join"]
    );
    // The initial sync's timeline follows the same rule.
    let filter = enc(&json!({"room": {"timeline": {"limit": 50}}}).to_string());
    let (_, sync) = s.get(&format!("/_matrix/client/v3/sync?filter={filter}"), bob.token()).await;
    assert_eq!(
        bodies(&sync["rooms"]["join"][&room]["timeline"]["events"]),
        vec!["shared era", "invited era, after the invite", "after the join"],
        "{sync}"
    );
}

#[tokio::test]
async fn world_readable_history_is_readable_without_joining() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let carol = s.register("carol", "carol-password").await;
    let room = public_room_with_visibility(&s, &alice, "world_readable").await;
    let (_, open) = s.send_text(&alice, &room, "t1", "open").await;
    assert_eq!(readable_bodies(&s, &carol, &room).await, vec!["open"]);
    assert_eq!(event_status(&s, &carol, &room, open["event_id"].as_str().unwrap()).await, 200);
}

#[tokio::test]
async fn a_user_sees_their_own_membership_changes() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = public_room_with_visibility(&s, &alice, "joined").await;
    s.join(&bob, &room).await;
    leave(&s, &bob, &room).await;
    let (_, msgs) = s.room_get(&bob, &room, "messages?dir=b&limit=100").await;
    let own: Vec<&str> = msgs["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
        .filter_map(|e| e["content"]["membership"].as_str())
        .collect();
    assert_eq!(own, vec!["leave", "join"], "{msgs}");
}

#[tokio::test]
async fn a_profile_change_does_not_restart_joined_history() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = public_room_with_visibility(&s, &alice, "joined").await;
    s.join(&bob, &room).await;
    s.send_text(&alice, &room, "t1", "after bob joined").await;
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&bob.user_id)),
            bob.token(),
            json!({"displayname": "Bobby"}),
        )
        .await;
    assert_eq!(status, 200);
    s.send_text(&alice, &room, "t2", "after the rename").await;
    assert_eq!(
        readable_bodies(&s, &bob, &room).await,
        vec!["after bob joined", "after the rename"]
    );
}

#[tokio::test]
async fn messages_gives_an_end_token_whenever_it_returns_events() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    s.send_text(&alice, &room, "t1", "only").await;
    let (status, body) = s.room_get(&alice, &room, "messages?dir=b&limit=100").await;
    assert_eq!(status, 200);
    assert!(!body["chunk"].as_array().unwrap().is_empty());
    let end = body["end"].as_str().expect("end comes with events");
    // Paging on from there reaches the start: no events, no end.
    let (status, body) =
        s.room_get(&alice, &room, &format!("messages?dir=b&limit=100&from={end}")).await;
    assert_eq!(status, 200);
    assert!(body["chunk"].as_array().unwrap().is_empty(), "{body}");
    assert!(body.get("end").is_none(), "{body}");
}

#[tokio::test]
async fn a_filter_that_matches_nothing_pages_through_a_long_history_in_bounded_steps() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    for i in 0..1200 {
        s.send_text(&alice, &room, &format!("t{i}"), "x").await;
    }
    let filter = enc(&json!({"types": ["org.example.nothing"]}).to_string());
    let mut from: Option<String> = None;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 10, "the scan never ends");
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=10&filter={filter}",
            enc(&room)
        );
        if let Some(f) = &from {
            path.push_str(&format!("&from={f}"));
        }
        let (status, body) = s.get(&path, alice.token()).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["chunk"].as_array().unwrap().is_empty(), "{body}");
        match body["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    assert!(pages >= 2, "1 200 events are more than one request scans");
}

async fn invite(s: &TestServer, by: &Session, room: &str, user: &str) {
    let (status, body) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(room)),
            by.token(),
            json!({"user_id": user}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn an_invitee_cannot_read_the_room_state() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "private_chat", "name": "plans"})).await;
    invite(&s, &alice, &room, &bob.user_id).await;
    let res = s.room_get(&bob, &room, "state").await;
    complement_tests::assert_error(&res, 403, "M_FORBIDDEN");
    let res = s.room_get(&bob, &room, "state/m.room.name/").await;
    complement_tests::assert_error(&res, 403, "M_FORBIDDEN");
    let res = s.room_get(&bob, &room, "members").await;
    complement_tests::assert_error(&res, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn a_user_banned_before_joining_cannot_read_the_room_state() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "private_chat", "name": "plans"})).await;
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
            alice.token(),
            json!({"user_id": bob.user_id}),
        )
        .await;
    assert_eq!(status, 200);
    let res = s.room_get(&bob, &room, "state").await;
    complement_tests::assert_error(&res, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn a_former_member_reads_the_member_list_as_they_left_it() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let carol = s.register("carol", "carol-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    leave(&s, &bob, &room).await;
    s.join(&carol, &room).await;
    let (status, body) = s.room_get(&bob, &room, "members").await;
    assert_eq!(status, 200, "{body}");
    let members: Vec<&str> =
        body["chunk"].as_array().unwrap().iter().filter_map(|e| e["state_key"].as_str()).collect();
    assert!(members.contains(&alice.user_id.as_str()), "{body}");
    assert!(!members.contains(&carol.user_id.as_str()), "carol joined after bob left: {body}");
}

#[tokio::test]
async fn lazy_loaded_members_of_a_former_member_stop_at_their_departure() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    s.send_text(&alice, &room, "t1", "hello").await;
    leave(&s, &bob, &room).await;
    let (status, _) = s
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(&room),
                enc(&alice.user_id)
            ),
            alice.token(),
            json!({"membership": "join", "displayname": "renamed after bob left"}),
        )
        .await;
    assert_eq!(status, 200);
    let filter = enc(&json!({"lazy_load_members": true}).to_string());
    let (status, body) =
        s.room_get(&bob, &room, &format!("messages?dir=b&limit=10&filter={filter}")).await;
    assert_eq!(status, 200, "{body}");
    let state = body["state"].as_array().expect("lazy members");
    assert!(state.iter().any(|e| e["state_key"] == alice.user_id.as_str()), "{body}");
    assert!(!body.to_string().contains("renamed after bob left"), "{body}");
}

#[tokio::test]
async fn members_at_a_point_before_the_join_of_a_joined_room_are_forbidden() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = public_room_with_visibility(&s, &alice, "joined").await;
    s.send_text(&alice, &room, "t1", "before bob").await;
    let early = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    s.join(&bob, &room).await;
    let res = s.room_get(&bob, &room, &format!("members?at={early}")).await;
    complement_tests::assert_error(&res, 403, "M_FORBIDDEN");
    let (status, _) = s.room_get(&alice, &room, &format!("members?at={early}")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn messages_from_the_largest_token_read_the_newest_events() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    s.send_text(&alice, &room, "t1", "newest").await;
    let (status, body) =
        s.room_get(&alice, &room, &format!("messages?dir=b&limit=1&from=s{}", u64::MAX)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(bodies(&body["chunk"]), vec!["newest"]);
}

#[tokio::test]
async fn a_rejected_invite_shows_its_own_leave() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    let since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    invite(&s, &alice, &room, &bob.user_id).await;
    let since = s.sync(&bob, Some(&since), 0).await["next_batch"].as_str().unwrap().to_owned();
    leave(&s, &bob, &room).await;
    let sync = s.sync(&bob, Some(&since), 0).await;
    let timeline = sync["rooms"]["leave"][&room]["timeline"]["events"].as_array().unwrap();
    let last = timeline.last().expect("the leave event");
    assert_eq!(last["content"]["membership"], "leave", "{sync}");
    assert_eq!(last["state_key"], bob.user_id.as_str());
}

#[tokio::test]
async fn timestamp_to_event_starts_at_the_edge_of_what_the_user_may_read() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = public_room_with_visibility(&s, &alice, "joined").await;
    let (_, first) = s.send_text(&alice, &room, "t", "before bob").await;
    for i in 0..100 {
        s.send_text(&alice, &room, &format!("t{i}"), "before bob").await;
    }
    s.join(&bob, &room).await;
    let (_, after) = s.send_text(&alice, &room, "a", "after bob").await;
    let (_, first) = s
        .room_get(&alice, &room, &format!("event/{}", enc(first["event_id"].as_str().unwrap())))
        .await;
    // From the first message bob may not read, 100 more he may not read follow.
    let ts = first["origin_server_ts"].as_u64().unwrap();
    let (status, body) = s
        .get(
            &format!("/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={ts}&dir=f", enc(&room)),
            bob.token(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, event) = s
        .room_get(&bob, &room, &format!("event/{}", enc(body["event_id"].as_str().unwrap())))
        .await;
    let own_join = event["type"] == "m.room.member" && event["state_key"] == bob.user_id.as_str();
    assert!(own_join || body["event_id"] == after["event_id"], "{event}");
}
