//! The admin CLI: `axon user create`, `axon user deactivate` and `axon token create`, with
//! and without a running server.

use complement_tests::{ServerOptions, Session, TestServer, assert_error, json};

#[tokio::test]
async fn user_create_works_while_the_server_runs() {
    let s = TestServer::start_with(ServerOptions { registration: "closed", ..Default::default() })
        .await;
    let out = s.cli(&["user", "create", "admin", "--password", "admin-password", "--admin"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("@admin:test.local"));
    assert_eq!(s.login("admin", "admin-password").await.0, 200);
}

#[tokio::test]
async fn user_create_works_on_a_stopped_server() {
    let mut s =
        TestServer::start_with(ServerOptions { registration: "closed", ..Default::default() })
            .await;
    s.kill9();
    let out = s.cli(&["user", "create", "bob", "--password", "bob-password"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s.crash_and_restart().await;
    assert_eq!(s.login("bob", "bob-password").await.0, 200);
}

#[tokio::test]
async fn user_create_refuses_a_taken_name_and_a_bad_name() {
    let s = TestServer::start().await;
    s.register("alice", "alice-password").await;
    let out = s.cli(&["user", "create", "alice", "--password", "x-password"]);
    assert!(!out.status.success());
    let out = s.cli(&["user", "create", "Not Valid", "--password", "x-password"]);
    assert!(!out.status.success());
    assert_error(&s.login("alice", "x-password").await, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn token_create_list_and_delete() {
    let s =
        TestServer::start_with(ServerOptions { registration: "token", ..Default::default() }).await;
    let out = s.cli(&["token", "create", "--token", "invite-123", "--uses", "5"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = s.cli(&["token", "list"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["token"], "invite-123");
    assert_eq!(list[0]["uses_allowed"], 5);
    let (_, body) = s
        .get(
            "/_matrix/client/v1/register/m.login.registration_token/validity?token=invite-123",
            None,
        )
        .await;
    assert_eq!(body["valid"], true);
    let out = s.cli(&["token", "delete", "invite-123"]);
    assert!(out.status.success());
    let (_, body) = s
        .get(
            "/_matrix/client/v1/register/m.login.registration_token/validity?token=invite-123",
            None,
        )
        .await;
    assert_eq!(body["valid"], false);
}

/// The device-list stream position: the fourth part of a sync token.
fn device_list_pos(token: &str) -> u64 {
    token.split('_').nth(3).and_then(|p| p.parse().ok()).unwrap_or(0)
}

fn next_batch(sync: &serde_json::Value) -> String {
    sync["next_batch"].as_str().expect("next_batch").to_owned()
}

/// Alice and Bob share a room; Bob's sync token from before.
async fn alice_and_bob_in_a_room(s: &TestServer) -> (Session, Session, String) {
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&bob, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&alice, &room).await.0, 200);
    let since = next_batch(&s.sync(&bob, None, 0).await);
    (alice, bob, since)
}

/// What a deactivation leaves, seen by Alice's client and by Bob's sync since `since`: her
/// token and password are refused; her device list changed (the device-list position moved)
/// and she left the shared room.
async fn assert_alice_deactivated(s: &TestServer, alice: &Session, bob: &Session, since: &str) {
    let whoami = s.get("/_matrix/client/v3/account/whoami", alice.token()).await;
    assert_error(&whoami, 401, "M_UNKNOWN_TOKEN");
    assert_error(&s.login("alice", "alice-password").await, 403, "M_USER_DEACTIVATED");
    let sync = s.sync(bob, Some(since), 0).await;
    let next = next_batch(&sync);
    assert!(device_list_pos(&next) > device_list_pos(since), "{since} → {next}");
    assert_eq!(sync["device_lists"]["left"], json!([alice.user_id]), "{sync}");
}

#[tokio::test]
async fn user_deactivate_works_while_the_server_runs() {
    let s = TestServer::start().await;
    let (alice, bob, since) = alice_and_bob_in_a_room(&s).await;
    let out = s.cli(&["user", "deactivate", "alice"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("@alice:test.local"));
    assert_alice_deactivated(&s, &alice, &bob, &since).await;
}

/// On the database directly, the deactivation's device-list change is stored with it, so
/// the server finds it when it starts again.
#[tokio::test]
async fn user_deactivate_works_on_a_stopped_server() {
    let mut s = TestServer::start().await;
    let (alice, bob, since) = alice_and_bob_in_a_room(&s).await;
    s.kill9();
    let out = s.cli(&["user", "deactivate", "alice"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s.crash_and_restart().await;
    assert_alice_deactivated(&s, &alice, &bob, &since).await;
}

#[tokio::test]
async fn user_deactivate_refuses_an_unknown_user() {
    let s = TestServer::start().await;
    let out = s.cli(&["user", "deactivate", "nobody"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"), "{out:?}");
}
