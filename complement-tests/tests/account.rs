//! `/account/password` and `/account/deactivate`, both behind password UIA.

use complement_tests::{TestServer, assert_error, json};

const WHOAMI: &str = "/_matrix/client/v3/account/whoami";

fn password_auth(user: &str, password: &str, session: &serde_json::Value) -> serde_json::Value {
    json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
        "session": session,
    })
}

#[tokio::test]
async fn changing_the_password_needs_the_old_one_and_logs_out_other_devices() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "old-password").await;
    let (_, other) = s.login("alice", "old-password").await;
    let other = complement_tests::Session::from_json(&other);

    let path = "/_matrix/client/v3/account/password";
    let (status, body) = s.post(path, alice.token(), json!({"new_password": "new-password"})).await;
    assert_eq!(status, 401);
    assert_eq!(body["flows"], json!([{"stages": ["m.login.password"]}]));
    let session = body["session"].clone();

    let (status, body) = s
        .post(path, alice.token(), json!({"new_password": "new-password", "auth": password_auth("alice", "wrong", &session)}))
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    let (status, body) = s
        .post(path, alice.token(), json!({"new_password": "new-password", "auth": password_auth("alice", "old-password", &session)}))
        .await;
    assert_eq!(status, 200, "{body}");

    assert_error(&s.login("alice", "old-password").await, 403, "M_FORBIDDEN");
    assert_eq!(s.login("alice", "new-password").await.0, 200);
    assert_eq!(s.get(WHOAMI, alice.token()).await.0, 200, "the requesting device stays");
    assert_error(&s.get(WHOAMI, other.token()).await, 401, "M_UNKNOWN_TOKEN");
}

#[tokio::test]
async fn changing_the_password_can_keep_other_devices() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "old-password").await;
    let (_, other) = s.login("alice", "old-password").await;
    let other = complement_tests::Session::from_json(&other);
    let path = "/_matrix/client/v3/account/password";
    let (_, body) = s.post(path, alice.token(), json!({"new_password": "new-password"})).await;
    let (status, _) = s
        .post(
            path,
            alice.token(),
            json!({"new_password": "new-password", "logout_devices": false,
                   "auth": password_auth("alice", "old-password", &body["session"])}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.get(WHOAMI, other.token()).await.0, 200);
}

#[tokio::test]
async fn uia_for_another_user_is_refused() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    s.register("bob", "bob-password").await;
    let path = "/_matrix/client/v3/account/password";
    let (_, body) = s.post(path, alice.token(), json!({"new_password": "new-password"})).await;
    let (status, body) = s
        .post(path, alice.token(), json!({"new_password": "new-password", "auth": password_auth("bob", "bob-password", &body["session"])}))
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
}

#[tokio::test]
async fn deactivation_logs_out_everywhere_and_keeps_the_name_taken() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let path = "/_matrix/client/v3/account/deactivate";
    let (status, body) = s.post(path, alice.token(), json!({})).await;
    assert_eq!(status, 401);
    let (status, body) = s
        .post(
            path,
            alice.token(),
            json!({"auth": password_auth("alice", "alice-password", &body["session"])}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id_server_unbind_result"], "no-support");

    assert_error(&s.get(WHOAMI, alice.token()).await, 401, "M_UNKNOWN_TOKEN");
    assert_error(&s.login("alice", "alice-password").await, 403, "M_USER_DEACTIVATED");
    let res = s
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": "alice", "password": "alice-password"}),
        )
        .await;
    assert_error(&res, 400, "M_USER_IN_USE");
}

#[tokio::test]
async fn a_deactivated_user_leaves_their_rooms() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    let invited = s.create_room(&alice, json!({"invite": [bob.user_id]})).await;
    let path = "/_matrix/client/v3/account/deactivate";
    let (_, body) = s.post(path, bob.token(), json!({})).await;
    let (status, _) = s
        .post(
            path,
            bob.token(),
            json!({"auth": password_auth("bob", "bob-password", &body["session"])}),
        )
        .await;
    assert_eq!(status, 200);
    for r in [&room, &invited] {
        let (_, m) = s
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                    complement_tests::enc(r),
                    complement_tests::enc(&bob.user_id)
                ),
                alice.token(),
            )
            .await;
        assert_eq!(m["membership"], "leave", "{m}");
    }
}
