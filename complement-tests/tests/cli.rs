//! The admin CLI: `axon user create` and `axon token create`, with and without a running
//! server.

use complement_tests::{ServerOptions, TestServer, assert_error};

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
