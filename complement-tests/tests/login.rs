//! `/login`, access tokens, `/logout`, `/logout/all`, `/account/whoami`.

use complement_tests::{ServerOptions, TestServer, assert_error, json};

const WHOAMI: &str = "/_matrix/client/v3/account/whoami";

#[tokio::test]
async fn get_login_offers_password_login() {
    let s = TestServer::start().await;
    let (status, body) = s.get("/_matrix/client/v3/login", None).await;
    assert_eq!(status, 200);
    assert!(body["flows"].as_array().unwrap().iter().any(|f| f["type"] == "m.login.password"));
}

#[tokio::test]
async fn login_accepts_a_localpart_a_full_user_id_and_the_legacy_user_field() {
    let s = TestServer::start().await;
    s.register("alice", "pw-alice-123").await;
    let (status, body) = s.login("alice", "pw-alice-123").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@alice:test.local");
    assert!(body["access_token"].is_string());
    assert!(body["device_id"].is_string());

    assert_eq!(s.login("@alice:test.local", "pw-alice-123").await.0, 200);
    assert_eq!(s.login("ALICE", "pw-alice-123").await.0, 200, "logins are case-insensitive");
    let (status, _) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "user": "alice", "password": "pw-alice-123"}),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_wrong_password_is_forbidden() {
    let s = TestServer::start().await;
    s.register("alice", "pw-alice-123").await;
    assert_error(&s.login("alice", "wrong-password").await, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn an_unknown_user_is_forbidden_like_a_wrong_password() {
    let s = TestServer::start().await;
    assert_error(&s.login("nobody", "whatever-pw").await, 403, "M_FORBIDDEN");
    assert_error(&s.login("@alice:other.server", "whatever-pw").await, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn an_unsupported_login_type_is_rejected() {
    let s = TestServer::start().await;
    let res = s
        .post("/_matrix/client/v3/login", None, json!({"type": "m.login.token", "token": "abc"}))
        .await;
    assert_error(&res, 400, "M_UNKNOWN");
}

#[tokio::test]
async fn whoami_names_the_user_and_device() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let (status, body) = s.get(WHOAMI, alice.token()).await;
    assert_eq!(status, 200);
    assert_eq!(body["user_id"], alice.user_id);
    assert_eq!(body["device_id"], alice.device_id);
}

#[tokio::test]
async fn an_unknown_token_is_m_unknown_token_without_soft_logout() {
    let s = TestServer::start().await;
    let res = s.get(WHOAMI, Some("axo_not_a_real_token")).await;
    assert_error(&res, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(res.1["soft_logout"], false);
}

#[tokio::test]
async fn a_missing_token_is_m_missing_token() {
    let s = TestServer::start().await;
    assert_error(&s.get(WHOAMI, None).await, 401, "M_MISSING_TOKEN");
}

#[tokio::test]
async fn the_access_token_query_parameter_is_accepted() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let (status, body) =
        s.get(&format!("{WHOAMI}?access_token={}", alice.access_token), None).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn logout_revokes_the_token_and_deletes_the_device() {
    let s = TestServer::start().await;
    let first = s.register("alice", "pw-alice-123").await;
    let (_, second) = s.login("alice", "pw-alice-123").await;
    let second = complement_tests::Session::from_json(&second);
    let (status, _) = s.post("/_matrix/client/v3/logout", first.token(), json!({})).await;
    assert_eq!(status, 200);
    assert_error(&s.get(WHOAMI, first.token()).await, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(s.get(WHOAMI, second.token()).await.0, 200);
    let (_, devices) = s.get("/_matrix/client/v3/devices", second.token()).await;
    let ids: Vec<_> =
        devices["devices"].as_array().unwrap().iter().map(|d| d["device_id"].clone()).collect();
    assert_eq!(ids, vec![json!(second.device_id)]);
}

#[tokio::test]
async fn logout_all_revokes_every_token() {
    let s = TestServer::start().await;
    let first = s.register("alice", "pw-alice-123").await;
    let (_, second) = s.login("alice", "pw-alice-123").await;
    let second = complement_tests::Session::from_json(&second);
    let (status, _) = s.post("/_matrix/client/v3/logout/all", first.token(), json!({})).await;
    assert_eq!(status, 200);
    assert_error(&s.get(WHOAMI, first.token()).await, 401, "M_UNKNOWN_TOKEN");
    assert_error(&s.get(WHOAMI, second.token()).await, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(s.login("alice", "pw-alice-123").await.0, 200, "the account itself remains");
}

#[tokio::test]
async fn logging_in_with_a_known_device_id_replaces_its_token() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let body = json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "alice"},
        "password": "pw-alice-123",
        "device_id": alice.device_id,
    });
    let (status, res) = s.post("/_matrix/client/v3/login", None, body).await;
    assert_eq!(status, 200);
    assert_eq!(res["device_id"], alice.device_id);
    assert_error(&s.get(WHOAMI, alice.token()).await, 401, "M_UNKNOWN_TOKEN");
    let new_token = res["access_token"].as_str().unwrap();
    assert_eq!(s.get(WHOAMI, Some(new_token)).await.0, 200);
}

#[tokio::test]
async fn too_many_logins_are_rate_limited() {
    let s =
        TestServer::start_with(ServerOptions { login_rate: (0.01, 3), ..Default::default() }).await;
    s.register("alice", "pw-alice-123").await;
    for _ in 0..3 {
        s.login("alice", "pw-alice-123").await;
    }
    let res = s.login("alice", "pw-alice-123").await;
    assert_error(&res, 429, "M_LIMIT_EXCEEDED");
    assert!(res.1["retry_after_ms"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn refresh_with_an_unknown_refresh_token_is_m_unknown_token() {
    let s = TestServer::start().await;
    let res = s.post("/_matrix/client/v3/refresh", None, json!({"refresh_token": "nope"})).await;
    assert_error(&res, 401, "M_UNKNOWN_TOKEN");
    let message = res.1["error"].as_str().unwrap();
    assert!(
        message.contains("refresh token"),
        "the error should name the refresh token: {message}"
    );
}

#[tokio::test]
async fn a_login_without_a_type_is_m_bad_json() {
    let s = TestServer::start().await;
    s.register("alice", "alice-password").await;
    for body in [
        json!({}),
        json!({"identifier": {"type": "m.id.user", "user": "alice"}, "password": "alice-password"}),
        json!({"type": null, "password": "alice-password"}),
    ] {
        let res = s.post("/_matrix/client/v3/login", None, body.clone()).await;
        assert_error(&res, 400, "M_BAD_JSON");
    }
}
