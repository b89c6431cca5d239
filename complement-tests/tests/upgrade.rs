//! Room upgrades (`POST /rooms/{roomId}/upgrade`).

use complement_tests::{Session, TestServer, Value, assert_error, enc, json};

async fn upgrade(s: &TestServer, who: &Session, room: &str, version: &str) -> (u16, Value) {
    let (status, body) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/upgrade", enc(room)),
            who.token(),
            json!({"new_version": version}),
        )
        .await;
    (status.as_u16(), body)
}

async fn state(s: &TestServer, who: &Session, room: &str, kind: &str, key: &str) -> Value {
    let (status, body) = s.room_get(who, room, &format!("state/{kind}/{}", enc(key))).await;
    assert_eq!(status, 200, "{kind}: {body}");
    body
}

/// The full state event (`/state` lists them with sender and IDs).
async fn state_event(s: &TestServer, who: &Session, room: &str, kind: &str) -> Value {
    let (status, body) = s.room_get(who, room, "state").await;
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().iter().find(|e| e["type"] == kind).cloned().expect(kind)
}

#[tokio::test]
async fn an_upgrade_replaces_the_room_and_carries_its_state() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let carol = s.register("carol", "carol-password").await;
    let old = s
        .create_room(
            &alice,
            json!({
                "room_version": "10",
                "preset": "public_chat",
                "visibility": "public",
                "name": "Lobby",
                "topic": "all welcome",
                "room_alias_name": "lobby",
            }),
        )
        .await;
    assert_eq!(s.join(&bob, &old).await.0, 200);
    assert_eq!(s.join(&carol, &old).await.0, 200);
    let res = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&old)),
            alice.token(),
            json!({"user_id": carol.user_id, "reason": "spam"}),
        )
        .await;
    assert_eq!(res.0, 200, "{}", res.1);

    // Tags in the old room follow their users into the new one.
    for (who, tag) in [(&alice, "u.alice"), (&bob, "u.bob")] {
        let res = s.put(&tag_path(who, &old, tag), who.token(), json!({"order": 0.5})).await;
        assert_eq!(res.0, 200, "{}", res.1);
    }

    let (status, body) = upgrade(&s, &alice, &old, "11").await;
    assert_eq!(status, 200, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    let (_, tags) = s.get(&tag_path(&alice, &new, ""), alice.token()).await;
    assert_eq!(tags["tags"]["u.alice"]["order"], 0.5, "{tags}");

    // The new room: predecessor, copied state, the ban, the alias.
    let create = state(&s, &alice, &new, "m.room.create", "").await;
    assert_eq!(create["room_version"], "11");
    assert_eq!(create["predecessor"]["room_id"], old);
    assert!(create.get("creator").is_none(), "v11 has no creator: {create}");
    assert_eq!(state(&s, &alice, &new, "m.room.name", "").await["name"], "Lobby");
    assert_eq!(state(&s, &alice, &new, "m.room.topic", "").await["topic"], "all welcome");
    assert_eq!(state(&s, &alice, &new, "m.room.join_rules", "").await["join_rule"], "public");
    assert_eq!(state(&s, &alice, &new, "m.room.member", &carol.user_id).await["membership"], "ban");
    let (_, resolved) = s
        .get(&format!("/_matrix/client/v3/directory/room/{}", enc("#lobby:test.local")), None)
        .await;
    assert_eq!(resolved["room_id"], new);
    assert_eq!(
        state(&s, &alice, &new, "m.room.canonical_alias", "").await["alias"],
        "#lobby:test.local"
    );
    let (_, public) = s.get("/_matrix/client/v3/publicRooms", None).await;
    let listed: Vec<&Value> =
        public["chunk"].as_array().unwrap().iter().map(|r| &r["room_id"]).collect();
    assert_eq!(listed, vec![&json!(new)]);

    // The old room: tombstone, canonical alias gone, ordinary members silenced.
    let tombstone = state(&s, &alice, &old, "m.room.tombstone", "").await;
    assert_eq!(tombstone["replacement_room"], new);
    assert!(state(&s, &alice, &old, "m.room.canonical_alias", "").await.get("alias").is_none());
    let levels = state(&s, &alice, &old, "m.room.power_levels", "").await;
    assert_eq!(levels["events_default"], 50);
    assert_eq!(levels["invite"], 50);
    assert_error(&s.send_text(&bob, &old, "t1", "still here?").await, 403, "M_FORBIDDEN");

    // Upgrading it again is refused; bob may join the new room.
    let (status, _) = upgrade(&s, &alice, &old, "11").await;
    assert_eq!(status, 400);
    assert_eq!(s.join(&bob, &new).await.0, 200);
    let (_, tags) = s.get(&tag_path(&bob, &new, ""), bob.token()).await;
    assert_eq!(tags["tags"], json!({"u.bob": {"order": 0.5}}));
}

/// `/user/{userId}/rooms/{roomId}/tags[/{tag}]` (no tag: the list).
fn tag_path(who: &Session, room: &str, tag: &str) -> String {
    let base = format!("/_matrix/client/v3/user/{}/rooms/{}/tags", enc(&who.user_id), enc(room));
    if tag.is_empty() { base } else { format!("{base}/{tag}") }
}

#[tokio::test]
async fn the_upgrader_gains_no_power() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let old = s
        .create_room(
            &alice,
            json!({
                "room_version": "10",
                "preset": "public_chat",
                "power_level_content_override": {
                    "users": {alice.user_id.clone(): 100, bob.user_id.clone(): 50},
                    "events": {"m.room.tombstone": 50, "m.room.power_levels": 100},
                },
            }),
        )
        .await;
    assert_eq!(s.join(&bob, &old).await.0, 200);
    let (status, body) = upgrade(&s, &bob, &old, "10").await;
    assert_eq!(status, 200, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    let levels = state(&s, &bob, &new, "m.room.power_levels", "").await;
    assert_eq!(levels["users"][&bob.user_id], 50, "{levels}");
    assert_eq!(levels["users"][&alice.user_id], 100, "{levels}");
    assert_eq!(levels["events"]["m.room.tombstone"], 50, "{levels}");
    // The room ends with the original levels, sent by bob, who was raised only meanwhile.
    let event = state_event(&s, &bob, &new, "m.room.power_levels").await;
    assert_eq!(event["sender"], bob.user_id);
    let (_, history) = s.room_get(&bob, &new, "messages?dir=f&limit=50").await;
    let levels: Vec<&Value> = history["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.power_levels")
        .map(|e| &e["content"]["users"][&bob.user_id])
        .collect();
    assert_eq!(levels, vec![&json!(100), &json!(50)], "raised while copying, then restored");
}

#[tokio::test]
async fn into_v12_the_upgrader_is_the_creator() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let old = s.create_room(&alice, json!({"room_version": "10", "name": "Old"})).await;
    let (status, body) = upgrade(&s, &alice, &old, "12").await;
    assert_eq!(status, 200, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    let create = state_event(&s, &alice, &new, "m.room.create").await;
    assert_eq!(create["sender"], alice.user_id);
    assert!(create["content"].get("creator").is_none());
    assert_eq!(create["content"]["predecessor"]["room_id"], old);
    // Creators are privileged by the create event, never listed in the power levels.
    let levels = state(&s, &alice, &new, "m.room.power_levels", "").await;
    assert!(levels["users"].get(&alice.user_id).is_none(), "{levels}");
    assert_eq!(state(&s, &alice, &new, "m.room.name", "").await["name"], "Old");
    // alice can still do everything (send a state event that needs 100).
    let res = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/", enc(&new)),
            alice.token(),
            json!({"history_visibility": "joined"}),
        )
        .await;
    assert_eq!(res.0, 200, "{}", res.1);
}

#[tokio::test]
async fn an_upgrade_needs_a_supported_version_and_power() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let carol = s.register("carol", "carol-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let res = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/upgrade", enc(&room)),
            alice.token(),
            json!({"new_version": "99"}),
        )
        .await;
    assert_error(&res, 400, "M_UNSUPPORTED_ROOM_VERSION");
    let res = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/upgrade", enc(&room)),
            bob.token(),
            json!({"new_version": "12"}),
        )
        .await;
    assert_error(&res, 403, "M_FORBIDDEN");
    let res = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/upgrade", enc(&room)),
            carol.token(),
            json!({"new_version": "12"}),
        )
        .await;
    assert_error(&res, 403, "M_FORBIDDEN");
    // Nothing changed.
    let (status, _) = s.room_get(&alice, &room, "state/m.room.tombstone/").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn concurrent_upgrades_make_one_replacement() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({"room_version": "10"})).await;
    let (a, b) = tokio::join!(upgrade(&s, &alice, &room, "11"), upgrade(&s, &alice, &room, "11"));
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 400], "{a:?} {b:?}");
    let winner = if a.0 == 200 { &a.1 } else { &b.1 };
    let tombstone = state(&s, &alice, &room, "m.room.tombstone", "").await;
    assert_eq!(tombstone["replacement_room"], winner["replacement_room"]);
}

#[tokio::test]
async fn in_v12_an_admin_who_is_no_creator_may_not_upgrade() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s
        .create_room(
            &alice,
            json!({
                "room_version": "12",
                "preset": "public_chat",
                "power_level_content_override": {"users": {bob.user_id.clone(): 100}},
            }),
        )
        .await;
    let levels = state(&s, &alice, &room, "m.room.power_levels", "").await;
    assert_eq!(levels["events"]["m.room.tombstone"], 150, "{levels}");
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let res = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/upgrade", enc(&room)),
            bob.token(),
            json!({"new_version": "12"}),
        )
        .await;
    assert_error(&res, 403, "M_FORBIDDEN");
    // Older versions keep 100; an upgrade into v12 raises it to 150.
    let old = s.create_room(&alice, json!({"room_version": "11"})).await;
    let levels = state(&s, &alice, &old, "m.room.power_levels", "").await;
    assert_eq!(levels["events"]["m.room.tombstone"], 100, "{levels}");
    let (status, body) = upgrade(&s, &alice, &old, "12").await;
    assert_eq!(status, 200, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    let levels = state(&s, &alice, &new, "m.room.power_levels", "").await;
    assert_eq!(levels["events"]["m.room.tombstone"], 150, "{levels}");
}

#[tokio::test]
async fn an_alias_moved_by_an_upgrade_stays_its_creators() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let old = s.create_room(&alice, json!({"room_version": "10"})).await;
    let alias = "#moving:test.local";
    let path = format!("/_matrix/client/v3/directory/room/{}", enc(alias));
    let res = s.put(&path, alice.token(), json!({"room_id": old})).await;
    assert_eq!(res.0, 200, "{}", res.1);
    let (status, body) = upgrade(&s, &alice, &old, "11").await;
    assert_eq!(status, 200, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    let (_, resolved) = s.get(&path, None).await;
    assert_eq!(resolved["room_id"], new);
    // Listed under the new room only, and still alice's to delete.
    let (_, listed) = s.room_get(&alice, &new, "aliases").await;
    assert_eq!(listed["aliases"], json!([alias]), "{listed}");
    let (_, listed) = s.room_get(&alice, &old, "aliases").await;
    assert_eq!(listed["aliases"], json!([]), "{listed}");
    let res = s.request(reqwest::Method::DELETE, &path, alice.token(), None).await;
    assert_eq!(res.0, 200, "{}", res.1);
    // A second upgrade of the old room is refused.
    let (status, body) = upgrade(&s, &alice, &old, "11").await;
    assert_eq!(status, 400, "{body}");
}
