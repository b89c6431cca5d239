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

/// Replaces `old` by `new` by hand: a tombstone through `PUT /state`.
async fn tombstone(s: &TestServer, who: &Session, old: &str, new: &str) {
    let res = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.tombstone/", enc(old)),
            who.token(),
            json!({"body": "This room has been replaced", "replacement_room": new}),
        )
        .await;
    assert_eq!(res.0, 200, "{}", res.1);
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

/// Joining the replacement room carries over what the user had set up for the old one, as
/// Synapse does: a direct chat stays in `m.direct`, a muted room stays muted, a room rule
/// comes along; rules of other rooms, disabled ones and rules the user already has for the
/// new room are left alone.
#[tokio::test]
async fn a_direct_chat_stays_direct_and_muted_in_its_replacement() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let old = s
        .create_room(
            &alice,
            json!({"room_version": "10", "preset": "trusted_private_chat", "is_direct": true,
                   "invite": [bob.user_id]}),
        )
        .await;
    assert_eq!(s.join(&bob, &old).await.0, 200);
    let other = s.create_room(&bob, json!({})).await;
    let direct = |who: &Session| {
        format!("/_matrix/client/v3/user/{}/account_data/m.direct", enc(&who.user_id))
    };
    let server = &s;
    let put = move |path: String, who: &Session, body: Value| {
        let token = who.token().map(str::to_owned);
        async move {
            let res = server.put(&path, token.as_deref(), body).await;
            assert_eq!(res.0, 200, "{path}: {}", res.1);
        }
    };
    put(
        direct(&alice),
        &alice,
        json!({bob.user_id.clone(): [old.clone(), "!elsewhere:test.local"]}),
    )
    .await;
    put(
        direct(&bob),
        &bob,
        json!({alice.user_id.clone(): [old.clone()], "@x:test.local": [other.clone()]}),
    )
    .await;
    let rule =
        |kind: &str, id: &str| format!("/_matrix/client/v3/pushrules/global/{kind}/{}", enc(id));
    // Alice: mentions and keywords only (a room rule). Bob: muted (Element's override rule),
    // and a muted other room, and a disabled rule on the old room.
    put(rule("room", &old), &alice, json!({"actions": []})).await;
    let mute = |room: &str| json!({"conditions": [{"kind": "event_match", "key": "room_id", "pattern": room}], "actions": []});
    put(rule("override", &old), &bob, mute(&old)).await;
    put(rule("override", &other), &bob, mute(&other)).await;
    put(rule("underride", "u.off"), &bob, {
        let mut r = mute(&old);
        r["actions"] = json!(["notify"]);
        r
    })
    .await;
    put(format!("{}/enabled", rule("underride", "u.off")), &bob, json!({"enabled": false})).await;

    let (status, body) = upgrade(&s, &alice, &old, "11").await;
    assert_eq!(status, 200, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    // The upgrader's own things come along at once.
    let (_, alice_direct) = s.get(&direct(&alice), alice.token()).await;
    assert_eq!(
        alice_direct,
        json!({bob.user_id.clone(): [old.clone(), "!elsewhere:test.local", new.clone()]})
    );
    let (status, room_rule) = s.get(&rule("room", &new), alice.token()).await;
    assert_eq!(status, 200, "{room_rule}");
    assert_eq!(room_rule["actions"], json!([]));
    // Bob's, when he joins.
    let (status, _) = s.get(&rule("override", &new), bob.token()).await;
    assert_eq!(status, 404, "nothing before bob joins");
    // The new room is invite-only, as the old one: alice invites bob (clients do that).
    let res = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&new)),
            alice.token(),
            json!({"user_id": bob.user_id}),
        )
        .await;
    assert_eq!(res.0, 200, "{}", res.1);
    assert_eq!(s.join(&bob, &new).await.0, 200);
    let (_, bob_direct) = s.get(&direct(&bob), bob.token()).await;
    assert_eq!(
        bob_direct,
        json!({alice.user_id.clone(): [old.clone(), new.clone()], "@x:test.local": [other.clone()]})
    );
    let (status, muted) = s.get(&rule("override", &new), bob.token()).await;
    assert_eq!(status, 200, "{muted}");
    assert_eq!(muted["conditions"], mute(&new)["conditions"]);
    assert_eq!(muted["actions"], json!([]));
    assert_eq!(muted["enabled"], true);
    let (_, all) = s.get("/_matrix/client/v3/pushrules/", bob.token()).await;
    let ids = |kind: &str| -> Vec<String> {
        all["global"][kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(ids("override").contains(&other), "the other room's rule stays: {all}");
    assert_eq!(ids("override").iter().filter(|id| **id == new).count(), 1, "{all}");
    assert!(!ids("underride").contains(&new), "a disabled rule is not copied: {all}");

    // The copied mute applies: alice's message does not count for bob.
    let first = s.sync(&bob, None, 0).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(s.send_text(&alice, &new, "m1", "hello again").await.0, 200);
    let next = s.sync(&bob, Some(&since), 10_000).await;
    let room = &next["rooms"]["join"][&new];
    assert_eq!(room["timeline"]["events"][0]["content"]["body"], "hello again", "{next}");
    assert_eq!(room["unread_notifications"]["notification_count"], 0, "{room}");

    // Joining again changes nothing more (no second copy, no second entry).
    assert_eq!(s.join(&bob, &new).await.0, 200);
    let (_, again) = s.get(&direct(&bob), bob.token()).await;
    assert_eq!(again, bob_direct);
}

/// A room replaced by hand (a new room naming the old one as `predecessor` in
/// `creation_content`, then a tombstone in the old one, as Complement's
/// `TestPushRuleRoomUpgrade` does): the members already in the new room get their rules
/// copied when the tombstone is set, the others when they join. A room that only claims a
/// predecessor whose tombstone does not name it gets nothing.
#[tokio::test]
async fn a_room_replaced_by_hand_carries_the_rules_over_at_its_tombstone() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let carol = s.register("carol", "carol-password").await;
    let old = s.create_room(&alice, json!({"preset": "public_chat", "room_version": "10"})).await;
    assert_eq!(s.join(&carol, &old).await.0, 200);
    let rule = |id: &str| format!("/_matrix/client/v3/pushrules/global/room/{}", enc(id));
    for who in [&alice, &carol] {
        let res = s.put(&rule(&old), who.token(), json!({"actions": ["dont_notify"]})).await;
        assert_eq!(res.0, 200, "{}", res.1);
    }
    let claim = json!({"preset": "public_chat", "room_version": "11",
                       "creation_content": {"predecessor": {"room_id": old}}});
    // A room claiming the old one as predecessor, never named by a tombstone.
    let pretender = s.create_room(&alice, claim.clone()).await;
    let new = s.create_room(&alice, claim).await;
    assert_eq!(s.get(&rule(&new), alice.token()).await.0, 404, "no tombstone yet");
    tombstone(&s, &alice, &old, &new).await;
    let (status, copied) = s.get(&rule(&new), alice.token()).await;
    assert_eq!(status, 200, "alice was in the new room when the tombstone came: {copied}");
    assert_eq!(copied["actions"], json!(["dont_notify"]));
    assert_eq!(s.get(&rule(&new), carol.token()).await.0, 404, "carol is not in it yet");
    assert_eq!(s.join(&carol, &new).await.0, 200);
    let (status, copied) = s.get(&rule(&new), carol.token()).await;
    assert_eq!(status, 200, "{copied}");
    assert_eq!(copied["actions"], json!(["dont_notify"]));
    // What carol changes afterwards stays changed: the same tombstone again, or a join
    // while joined, copies nothing.
    let res = s.request(reqwest::Method::DELETE, &rule(&new), carol.token(), None).await;
    assert_eq!(res.0, 200, "{}", res.1);
    tombstone(&s, &alice, &old, &new).await;
    assert_eq!(s.join(&carol, &new).await.0, 200);
    assert_eq!(s.get(&rule(&new), carol.token()).await.0, 404, "carol's deletion stands");
    // The old rules stay; the pretender got none.
    assert_eq!(s.get(&rule(&old), carol.token()).await.0, 200);
    assert_eq!(s.join(&carol, &pretender).await.0, 200);
    assert_eq!(s.get(&rule(&pretender), carol.token()).await.0, 404);
    assert_eq!(s.get(&rule(&pretender), alice.token()).await.0, 404);
}
