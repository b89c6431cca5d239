//! Filters, account data and profiles.

use complement_tests::{TestServer, assert_error, enc, json};

#[tokio::test]
async fn a_filter_is_stored_and_used_by_sync() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let path = format!("/_matrix/client/v3/user/{}/filter", enc(&alice.user_id));
    let def = json!({"room": {"timeline": {"limit": 1}}});
    let (status, body) = s.post(&path, alice.token(), def.clone()).await;
    assert_eq!(status, 200, "{body}");
    let id = body["filter_id"].as_str().unwrap().to_owned();
    let (status, got) = s.get(&format!("{path}/{id}"), alice.token()).await;
    assert_eq!(status, 200);
    assert_eq!(got["room"]["timeline"]["limit"], 1);
    assert_error(&s.get(&format!("{path}/{id}"), bob.token()).await, 403, "M_FORBIDDEN");
    assert_error(&s.get(&format!("{path}/999"), alice.token()).await, 404, "M_NOT_FOUND");

    let room = s.create_room(&alice, json!({})).await;
    let (_, sync) = s.get(&format!("/_matrix/client/v3/sync?filter={id}"), alice.token()).await;
    assert_eq!(sync["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap().len(), 1);
    // Used again (the server keeps it parsed), by its number however written: the same filter.
    for spelled in [id.clone(), format!("0{id}")] {
        let (status, sync) =
            s.get(&format!("/_matrix/client/v3/sync?filter={spelled}"), alice.token()).await;
        assert_eq!(status, 200, "{sync}");
        let events = sync["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "filter {spelled}");
    }
    // A filter belongs to its user: Bob has none under Alice's ID, even once it is in memory.
    let res = s.get(&format!("/_matrix/client/v3/sync?filter={id}"), bob.token()).await;
    assert_error(&res, 400, "M_INVALID_PARAM");
    let res = s.get("/_matrix/client/v3/sync?filter=12345", alice.token()).await;
    assert_error(&res, 400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn global_account_data_is_stored_and_synced() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let path = format!("/_matrix/client/v3/user/{}/account_data/m.direct", enc(&alice.user_id));
    let content = json!({"@bob:test.local": ["!room:test.local"]});
    assert_eq!(s.put(&path, alice.token(), content.clone()).await.0, 200);
    let (status, got) = s.get(&path, alice.token()).await;
    assert_eq!(status, 200);
    assert_eq!(got, content);
    let body = s.sync(&alice, Some(&since), 5000).await;
    let events = body["account_data"]["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["type"] == "m.direct" && e["content"] == content), "{body}");
    // Nothing new afterwards.
    let again = s.sync(&alice, body["next_batch"].as_str(), 0).await;
    assert!(again["account_data"]["events"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn room_account_data_appears_under_the_room() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let path = format!(
        "/_matrix/client/v3/user/{}/rooms/{}/account_data/m.tag",
        enc(&alice.user_id),
        enc(&room)
    );
    assert_eq!(s.put(&path, alice.token(), json!({"tags": {"u.work": {}}})).await.0, 200);
    let body = s.sync(&alice, Some(&since), 0).await;
    let events = &body["rooms"]["join"][&room]["account_data"]["events"];
    assert_eq!(events[0]["type"], "m.tag", "{body}");
}

#[tokio::test]
async fn account_data_of_another_user_is_forbidden_and_missing_data_is_not_found() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let path = format!("/_matrix/client/v3/user/{}/account_data/m.direct", enc(&alice.user_id));
    assert_error(&s.put(&path, bob.token(), json!({})).await, 403, "M_FORBIDDEN");
    assert_error(&s.get(&path, alice.token()).await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn a_new_display_name_reaches_the_profile_and_member_events() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    let (_, profile) =
        s.get(&format!("/_matrix/client/v3/profile/{}", enc(&alice.user_id)), None).await;
    assert_eq!(profile["displayname"], "alice", "defaults to the localpart");

    let path = format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice.user_id));
    assert_eq!(s.put(&path, alice.token(), json!({"displayname": "Alice A."})).await.0, 200);
    let (_, name) = s.get(&path, None).await;
    assert_eq!(name["displayname"], "Alice A.");
    let (_, member) = s
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(&room),
                enc(&alice.user_id)
            ),
            bob.token(),
        )
        .await;
    assert_eq!(member["displayname"], "Alice A.");
    assert_eq!(member["membership"], "join");

    let avatar = format!("/_matrix/client/v3/profile/{}/avatar_url", enc(&alice.user_id));
    assert_eq!(
        s.put(&avatar, alice.token(), json!({"avatar_url": "mxc://test.local/abc"})).await.0,
        200
    );
    let (_, got) = s.get(&avatar, None).await;
    assert_eq!(got["avatar_url"], "mxc://test.local/abc");

    assert_error(&s.put(&path, bob.token(), json!({"displayname": "x"})).await, 403, "M_FORBIDDEN");
    assert_error(
        &s.get("/_matrix/client/v3/profile/%40nobody%3Atest.local", None).await,
        404,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn push_rules_are_the_spec_defaults() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let (status, body) = s.get("/_matrix/client/v3/pushrules/", alice.token()).await;
    assert_eq!(status, 200, "{body}");
    let overrides = body["global"]["override"].as_array().unwrap();
    assert!(overrides.iter().any(|r| r["rule_id"] == ".m.rule.master"));
    assert!(
        body["global"]["underride"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["rule_id"] == ".m.rule.message")
    );
    assert_error(&s.get("/_matrix/client/v3/pushrules/", None).await, 401, "M_MISSING_TOKEN");
}

#[tokio::test]
async fn room_account_data_needs_a_membership_in_the_room() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    let path = format!(
        "/_matrix/client/v3/user/{}/rooms/{}/account_data/org.example.tag",
        enc(&bob.user_id),
        enc(&room)
    );
    let res = s.put(&path, bob.token(), json!({"x": 1})).await;
    assert_error(&res, 403, "M_FORBIDDEN");
    s.post(
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
        alice.token(),
        json!({"user_id": bob.user_id}),
    )
    .await;
    let (status, body) = s.put(&path, bob.token(), json!({"x": 1})).await;
    assert_eq!(status, 200, "{body}");
}
