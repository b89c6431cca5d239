//! The user directory (`POST /user_directory/search`): prefix and word matching on user IDs
//! and display names (case- and accent-insensitive), `limit` and `limited`; by default only
//! users sharing a room with the searcher or in a public room, every local user when
//! `user_directory.search_all_users` says so; profile changes searchable at once.

use complement_tests::{ServerOptions, Session, TestServer, Value, assert_error, json};

async fn search(s: &TestServer, who: &Session, term: &str, limit: Option<u64>) -> Value {
    let mut body = json!({"search_term": term});
    if let Some(l) = limit {
        body["limit"] = json!(l);
    }
    let (status, res) = s.post("/_matrix/client/v3/user_directory/search", who.token(), body).await;
    assert_eq!(status, 200, "{res}");
    res
}

fn ids(res: &Value) -> Vec<String> {
    let mut out: Vec<String> = res["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|u| u["user_id"].as_str().expect("user_id").to_owned())
        .collect();
    out.sort();
    out
}

async fn set_name(s: &TestServer, who: &Session, name: &str) {
    let (status, body) = s
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", who.user_id),
            who.token(),
            json!({"displayname": name}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// A private room with `a` and `b` joined.
async fn private_room(s: &TestServer, a: &Session, b: &Session) -> String {
    let room = s.create_room(a, json!({"preset": "private_chat", "invite": [b.user_id]})).await;
    let (status, body) = s.join(b, &room).await;
    assert_eq!(status, 200, "{body}");
    room
}

#[tokio::test]
async fn a_user_finds_a_room_mate_by_a_fragment_of_their_display_name() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    set_name(&s, &bob, "Björn Ångström").await;
    private_room(&s, &alice, &bob).await;
    for term in ["bjö", "BJORN", "angst", "ångström", "björn ång", "@bob:test.local", "bo"] {
        let res = search(&s, &alice, term, None).await;
        assert_eq!(ids(&res), vec![bob.user_id.clone()], "term {term}: {res}");
        assert_eq!(res["limited"], false);
        assert_eq!(res["results"][0]["display_name"], "Björn Ångström");
    }
    // Every word must match.
    assert!(ids(&search(&s, &alice, "björn smith", None).await).is_empty());
    assert!(ids(&search(&s, &alice, "orn", None).await).is_empty(), "prefixes only");
}

#[tokio::test]
async fn a_stranger_is_not_found_when_the_directory_is_restricted() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let _stranger = s.register("zed", "zed-password").await;
    let res = search(&s, &alice, "zed", None).await;
    assert!(ids(&res).is_empty(), "{res}");
    // Someone in a public room can be found by anyone.
    let carol = s.register("zelda", "zelda-password").await;
    s.create_room(&carol, json!({"preset": "public_chat"})).await;
    assert_eq!(ids(&search(&s, &alice, "ze", None).await), vec![carol.user_id.clone()]);
    // Leaving the public room makes them a stranger again.
    let rooms = s.get("/_matrix/client/v3/joined_rooms", carol.token()).await.1;
    let room = rooms["joined_rooms"][0].as_str().unwrap().to_owned();
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", complement_tests::enc(&room)),
            carol.token(),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(ids(&search(&s, &alice, "ze", None).await).is_empty());
}

#[tokio::test]
async fn every_local_user_is_found_when_the_directory_is_open() {
    let s = TestServer::start_with(ServerOptions {
        extra_toml: "[user_directory]\nsearch_all_users = true\n".into(),
        ..Default::default()
    })
    .await;
    let alice = s.register("alice", "alice-password").await;
    let stranger = s.register("zed", "zed-password").await;
    assert_eq!(ids(&search(&s, &alice, "zed", None).await), vec![stranger.user_id.clone()]);
}

#[tokio::test]
async fn a_display_name_change_is_searchable_at_once() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    private_room(&s, &alice, &bob).await;
    set_name(&s, &bob, "Quentin").await;
    assert_eq!(ids(&search(&s, &alice, "quen", None).await), vec![bob.user_id.clone()]);
    set_name(&s, &bob, "Rupert").await;
    assert!(ids(&search(&s, &alice, "quen", None).await).is_empty());
    let res = search(&s, &alice, "rup", None).await;
    assert_eq!(ids(&res), vec![bob.user_id.clone()]);
    assert_eq!(res["results"][0]["display_name"], "Rupert");
}

#[tokio::test]
async fn limit_cuts_the_results_and_says_so() {
    let s = TestServer::start_with(ServerOptions {
        extra_toml: "[user_directory]\nsearch_all_users = true\n".into(),
        ..Default::default()
    })
    .await;
    let alice = s.register("alice", "alice-password").await;
    for i in 0..5 {
        s.register(&format!("member{i}"), "member-password").await;
    }
    let res = search(&s, &alice, "member", Some(3)).await;
    assert_eq!(ids(&res).len(), 3, "{res}");
    assert_eq!(res["limited"], true);
    let res = search(&s, &alice, "member", None).await;
    assert_eq!(ids(&res).len(), 5);
    assert_eq!(res["limited"], false);
}

#[tokio::test]
async fn deactivated_users_are_not_found() {
    let s = TestServer::start_with(ServerOptions {
        extra_toml: "[user_directory]\nsearch_all_users = true\n".into(),
        ..Default::default()
    })
    .await;
    let alice = s.register("alice", "alice-password").await;
    let gone = s.register("gone", "gone-password").await;
    assert_eq!(ids(&search(&s, &alice, "gone", None).await), vec![gone.user_id.clone()]);
    let path = "/_matrix/client/v3/account/deactivate";
    let (status, first) = s.post(path, gone.token(), json!({})).await;
    assert_eq!(status, 401, "{first}");
    let auth = json!({"type": "m.login.password", "password": "gone-password",
        "identifier": {"type": "m.id.user", "user": "gone"}, "session": first["session"]});
    let (status, body) = s.post(path, gone.token(), json!({"auth": auth})).await;
    assert_eq!(status, 200, "{body}");
    assert!(ids(&search(&s, &alice, "gone", None).await).is_empty());
}

#[tokio::test]
async fn the_directory_survives_a_restart() {
    let mut s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    set_name(&s, &bob, "Quentin").await;
    private_room(&s, &alice, &bob).await;
    s.crash_and_restart().await;
    assert_eq!(ids(&search(&s, &alice, "quentin", None).await), vec![bob.user_id.clone()]);
}

#[tokio::test]
async fn a_search_needs_a_search_term_and_a_token() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let res = s.post("/_matrix/client/v3/user_directory/search", alice.token(), json!({})).await;
    assert_error(&res, 400, "M_BAD_JSON");
    let res =
        s.post("/_matrix/client/v3/user_directory/search", None, json!({"search_term": "a"})).await;
    assert_error(&res, 401, "M_MISSING_TOKEN");
    // Punctuation only: nothing to match, nothing found.
    assert!(ids(&search(&s, &alice, "...", None).await).is_empty());
}
