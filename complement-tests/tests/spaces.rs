//! Spaces (`m.space.child`, `/hierarchy`) and restricted joins.

use complement_tests::{Session, TestServer, Value, assert_error, enc, json};

async fn put_state(
    s: &TestServer,
    who: &Session,
    room: &str,
    kind: &str,
    key: &str,
    content: Value,
) {
    let res = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/{kind}/{}", enc(room), enc(key)),
            who.token(),
            content,
        )
        .await;
    assert_eq!(res.0, 200, "{}", res.1);
}

async fn add_child(s: &TestServer, who: &Session, space: &str, child: &str, extra: Value) {
    let mut content = json!({"via": ["test.local"]});
    for (k, v) in extra.as_object().unwrap() {
        content[k] = v.clone();
    }
    put_state(s, who, space, "m.space.child", child, content).await;
}

async fn hierarchy(s: &TestServer, who: &Session, space: &str, query: &str) -> (u16, Value) {
    let (status, body) = s
        .get(&format!("/_matrix/client/v1/rooms/{}/hierarchy{query}", enc(space)), who.token())
        .await;
    (status.as_u16(), body)
}

fn ids(body: &Value) -> Vec<String> {
    body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room_id"].as_str().unwrap().into())
        .collect()
}

async fn space(s: &TestServer, who: &Session, name: &str) -> String {
    s.create_room(
        who,
        json!({"preset": "public_chat", "name": name, "creation_content": {"type": "m.space"}}),
    )
    .await
}

#[tokio::test]
async fn the_hierarchy_lists_the_rooms_a_user_may_see_in_order() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let space = space(&s, &alice, "Company").await;
    let public = s
        .create_room(&alice, json!({"preset": "public_chat", "name": "Lobby", "topic": "hi"}))
        .await;
    let private = s.create_room(&alice, json!({"name": "Board"})).await;
    let unknown = "!nowhere:elsewhere.example";
    add_child(&s, &alice, &space, &public, json!({"order": "b"})).await;
    add_child(&s, &alice, &space, &private, json!({"order": "a", "suggested": true})).await;
    add_child(&s, &alice, &space, unknown, json!({})).await;
    // A child without `via` is no child.
    put_state(&s, &alice, &space, "m.space.child", "!gone:test.local", json!({})).await;

    // alice sees everything this server knows, children ordered by `order`.
    let (status, body) = hierarchy(&s, &alice, &space, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), vec![space.clone(), private.clone(), public.clone()]);
    assert!(body.get("next_batch").is_none());
    let root = &body["rooms"][0];
    assert_eq!(root["room_type"], "m.space");
    assert_eq!(root["name"], "Company");
    assert_eq!(root["join_rule"], "public");
    assert_eq!(root["num_joined_members"], 1);
    let children = root["children_state"].as_array().unwrap();
    assert_eq!(children.len(), 3, "{root}");
    assert!(
        children.iter().all(|c| c["type"] == "m.space.child" && c["origin_server_ts"].is_u64())
    );
    let lobby = &body["rooms"][2];
    assert_eq!(lobby["topic"], "hi");
    assert_eq!(lobby["children_state"], json!([]));

    // bob, in none of them, sees the public ones only.
    let (status, body) = hierarchy(&s, &bob, &space, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), vec![space.clone(), public.clone()]);

    // suggested_only, max_depth.
    let (_, body) = hierarchy(&s, &alice, &space, "?suggested_only=true").await;
    assert_eq!(ids(&body), vec![space.clone(), private.clone()]);
    let (_, body) = hierarchy(&s, &alice, &space, "?max_depth=0").await;
    assert_eq!(ids(&body), vec![space.clone()]);

    // A room bob may not preview: 403.
    let (status, body) = hierarchy(&s, &bob, &private, "").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
}

#[tokio::test]
async fn the_hierarchy_pages_and_refuses_bad_tokens() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let space = space(&s, &alice, "Top").await;
    let sub = space_room(&s, &alice).await;
    add_child(&s, &alice, &space, &sub, json!({})).await;
    let mut rooms = Vec::new();
    for i in 0..3 {
        let room = s.create_room(&alice, json!({"name": format!("r{i}")})).await;
        add_child(&s, &alice, &sub, &room, json!({"order": format!("{i}")})).await;
        rooms.push(room);
    }
    // A cycle back to the top is walked once.
    add_child(&s, &alice, &sub, &space, json!({})).await;

    let mut all = Vec::new();
    let mut from = None::<String>;
    let mut pages = 0;
    loop {
        let query = match &from {
            Some(t) => format!("?limit=2&from={}", enc(t)),
            None => "?limit=2".into(),
        };
        let (status, body) = hierarchy(&s, &alice, &space, &query).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["rooms"].as_array().unwrap().len() <= 2);
        all.extend(ids(&body));
        pages += 1;
        match body["next_batch"].as_str() {
            Some(t) => from = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut expected = vec![space.clone(), sub.clone()];
    expected.extend(rooms.iter().cloned());
    assert_eq!(all, expected);

    // Tokens: not ours, or for other parameters.
    let (status, body) = hierarchy(&s, &alice, &space, "?from=nonsense").await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
    let (_, first) = hierarchy(&s, &alice, &space, "?limit=1").await;
    let token = first["next_batch"].as_str().unwrap();
    let (status, body) =
        hierarchy(&s, &alice, &space, &format!("?limit=1&max_depth=1&from={}", enc(token))).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
    let (status, body) = hierarchy(&s, &alice, &space, "?limit=0").await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
}

async fn space_room(s: &TestServer, who: &Session) -> String {
    s.create_room(who, json!({"name": "Sub", "creation_content": {"type": "m.space"}})).await
}

/// A room whose join rule admits the members of `space` (`rule`: `restricted` or
/// `knock_restricted`), in room version 10.
async fn restricted_room(s: &TestServer, owner: &Session, space: &str, rule: &str) -> String {
    s.create_room(
        owner,
        json!({
            "room_version": "10",
            "name": "Members only",
            "initial_state": [{
                "type": "m.room.join_rules",
                "state_key": "",
                "content": {
                    "join_rule": rule,
                    "allow": [{"type": "m.room_membership", "room_id": space}],
                },
            }],
        }),
    )
    .await
}

#[tokio::test]
async fn members_of_an_allowed_room_join_a_restricted_room() {
    for rule in ["restricted", "knock_restricted"] {
        let s = TestServer::start().await;
        let alice = s.register("alice", "alice-password").await;
        let bob = s.register("bob", "bob-password").await;
        let carol = s.register("carol", "carol-password").await;
        let space = space(&s, &alice, "Company").await;
        let room = restricted_room(&s, &alice, &space, rule).await;
        add_child(&s, &alice, &space, &room, json!({})).await;
        assert_eq!(s.join(&bob, &space).await.0, 200);

        // bob, a member of the space, joins; the join names alice as its authoriser.
        let res = s.join(&bob, &room).await;
        assert_eq!(res.0, 200, "{rule}: {}", res.1);
        let (status, member) =
            s.room_get(&bob, &room, &format!("state/m.room.member/{}", enc(&bob.user_id))).await;
        assert_eq!(status, 200, "{member}");
        assert_eq!(member["membership"], "join");
        assert_eq!(member["join_authorised_via_users_server"], alice.user_id);

        // carol is in no allowed room: 403, and nothing was written.
        assert_error(&s.join(&carol, &room).await, 403, "M_FORBIDDEN");
        let (_, members) = s.room_get(&alice, &room, "joined_members").await;
        assert!(members["joined"].get(&carol.user_id).is_none());

        // The hierarchy shows the rule and the allowed rooms; carol may not preview it.
        let (_, body) = hierarchy(&s, &bob, &space, "").await;
        let entry =
            body["rooms"].as_array().unwrap().iter().find(|r| r["room_id"] == room).unwrap();
        assert_eq!(entry["join_rule"], rule);
        assert_eq!(entry["allowed_room_ids"], json!([space]));
        let (_, body) = hierarchy(&s, &carol, &space, "").await;
        let listed = ids(&body).contains(&room);
        // A knock_restricted room may be previewed by anyone (they could knock).
        assert_eq!(listed, rule == "knock_restricted", "{rule}: {body}");

        // Once carol joins the space, she may join too.
        assert_eq!(s.join(&carol, &space).await.0, 200);
        assert_eq!(s.join(&carol, &room).await.0, 200, "{rule}");
    }
}

#[tokio::test]
async fn a_restricted_join_needs_a_member_who_could_invite() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let space = space(&s, &alice, "Company").await;
    let room = restricted_room(&s, &alice, &space, "restricted").await;
    assert_eq!(s.join(&bob, &space).await.0, 200);
    // Nobody left in the room to vouch for bob.
    let res = s
        .post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), alice.token(), json!({}))
        .await;
    assert_eq!(res.0, 200, "{}", res.1);
    assert_error(&s.join(&bob, &room).await, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn a_large_space_pages_through_all_its_rooms() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let space = space(&s, &alice, "Big").await;
    let mut rooms = Vec::new();
    for i in 0..120 {
        let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
        add_child(&s, &alice, &space, &room, json!({"order": format!("{i:03}")})).await;
        rooms.push(room);
    }
    let mut listed = Vec::new();
    let mut from = None::<String>;
    let mut pages = Vec::new();
    loop {
        let query = from.as_ref().map(|t| format!("?from={}", enc(t))).unwrap_or_default();
        let started = std::time::Instant::now();
        let (status, body) = hierarchy(&s, &alice, &space, &query).await;
        pages.push(started.elapsed());
        assert_eq!(status, 200, "{body}");
        listed.extend(ids(&body));
        match body["next_batch"].as_str() {
            Some(t) => from = Some(t.to_owned()),
            None => break,
        }
    }
    // The default page is 50 rooms: 121 rooms in 3 pages, the space first, then by order.
    assert_eq!(pages.len(), 3);
    assert_eq!(listed.len(), 121);
    assert_eq!(listed[0], space);
    assert_eq!(&listed[1..], &rooms[..]);
    eprintln!("hierarchy pages of a 121-room space: {pages:?}");
}

#[tokio::test]
async fn a_banned_user_sees_no_summary_of_the_room() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let space = space(&s, &alice, "Club").await;
    let open = s.create_room(&alice, json!({"preset": "public_chat", "name": "Open"})).await;
    let closed = s.create_room(&alice, json!({"preset": "public_chat", "name": "Closed"})).await;
    add_child(&s, &alice, &space, &open, json!({})).await;
    add_child(&s, &alice, &space, &closed, json!({})).await;
    let (status, body) = hierarchy(&s, &bob, &space, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body).len(), 3, "{body}");
    for room in [&space, &closed] {
        let res = s
            .post(
                &format!("/_matrix/client/v3/rooms/{}/ban", enc(room)),
                alice.token(),
                json!({"user_id": bob.user_id}),
            )
            .await;
        assert_eq!(res.0, 200, "{}", res.1);
    }
    // Banned from the space: 403 although it is public.
    let res =
        s.get(&format!("/_matrix/client/v1/rooms/{}/hierarchy", enc(&space)), bob.token()).await;
    assert_error(&res, 403, "M_FORBIDDEN");
    // Unbanned from the space, still banned from one child: that child is skipped.
    let res = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/unban", enc(&space)),
            alice.token(),
            json!({"user_id": bob.user_id}),
        )
        .await;
    assert_eq!(res.0, 200, "{}", res.1);
    let (status, body) = hierarchy(&s, &bob, &space, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), vec![space.clone(), open.clone()], "{body}");
    // alice still sees both.
    let (_, body) = hierarchy(&s, &alice, &space, "").await;
    assert_eq!(ids(&body).len(), 3, "{body}");
}

#[tokio::test]
async fn a_spaces_children_are_found_after_a_restart() {
    let mut s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let space = space(&s, &alice, "Persisted").await;
    let first = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    let second = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    add_child(&s, &alice, &space, &first, json!({"order": "a"})).await;
    add_child(&s, &alice, &space, &second, json!({"order": "b"})).await;
    s.crash_and_restart().await;
    let (status, body) = hierarchy(&s, &alice, &space, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), vec![space.clone(), first.clone(), second.clone()], "{body}");
    // A child removed (empty content) and one added after the restart.
    put_state(&s, &alice, &space, "m.space.child", &first, json!({})).await;
    let third = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    add_child(&s, &alice, &space, &third, json!({"order": "c"})).await;
    let (_, body) = hierarchy(&s, &alice, &space, "").await;
    assert_eq!(ids(&body), vec![space, second, third], "{body}");
    assert_eq!(body["rooms"][0]["children_state"].as_array().unwrap().len(), 2, "{body}");
}

#[tokio::test]
async fn hierarchy_requests_count_against_the_event_rate_limit() {
    let s = TestServer::start_with(complement_tests::ServerOptions {
        event_rate: (0.01, 3),
        ..Default::default()
    })
    .await;
    let alice = s.register("alice", "alice-password").await;
    let space = space(&s, &alice, "Busy").await; // alice: 1
    assert_eq!(hierarchy(&s, &alice, &space, "").await.0, 200); // 2
    assert_eq!(hierarchy(&s, &alice, &space, "").await.0, 200); // 3
    let res =
        s.get(&format!("/_matrix/client/v1/rooms/{}/hierarchy", enc(&space)), alice.token()).await;
    assert_error(&res, 429, "M_LIMIT_EXCEEDED");
}
