//! `/register`, `/register/available`, registration tokens and policies.

use complement_tests::{ServerOptions, TestServer, assert_error, json};

const REGISTER: &str = "/_matrix/client/v3/register";

#[tokio::test]
async fn register_asks_for_the_dummy_stage_then_creates_the_account() {
    let s = TestServer::start().await;
    let (status, body) =
        s.post(REGISTER, None, json!({"username": "alice", "password": "pw-alice-123"})).await;
    assert_eq!(status, 401);
    assert_eq!(body["flows"], json!([{"stages": ["m.login.dummy"]}]));
    assert!(body["session"].is_string());
    assert_eq!(body["completed"], json!([]));

    let session = body["session"].as_str().unwrap();
    let (status, body) = s
        .post(
            REGISTER,
            None,
            json!({
                "username": "alice",
                "password": "pw-alice-123",
                "initial_device_display_name": "Alice's phone",
                "auth": {"type": "m.login.dummy", "session": session},
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@alice:test.local");
    let token = body["access_token"].as_str().unwrap();
    let device = body["device_id"].as_str().unwrap();
    let (status, who) = s.get("/_matrix/client/v3/account/whoami", Some(token)).await;
    assert_eq!(status, 200);
    assert_eq!(who["user_id"], "@alice:test.local");
    assert_eq!(who["device_id"], device);
    let (_, dev) = s.get(&format!("/_matrix/client/v3/devices/{device}"), Some(token)).await;
    assert_eq!(dev["display_name"], "Alice's phone");
}

#[tokio::test]
async fn a_taken_username_is_m_user_in_use() {
    let s = TestServer::start().await;
    s.register("alice", "pw-alice-123").await;
    let res = s.post(REGISTER, None, json!({"username": "alice", "password": "another-pw"})).await;
    assert_error(&res, 400, "M_USER_IN_USE");
    let res = s.get("/_matrix/client/v3/register/available?username=alice", None).await;
    assert_error(&res, 400, "M_USER_IN_USE");
}

#[tokio::test]
async fn an_invalid_username_is_m_invalid_username() {
    let s = TestServer::start().await;
    for bad in ["Alice", "al ice", "ali:ce", "_alice", "élan", ""] {
        let res =
            s.post(REGISTER, None, json!({"username": bad, "password": "pw-alice-123"})).await;
        assert_error(&res, 400, "M_INVALID_USERNAME");
    }
    let long = "a".repeat(300);
    let res = s.post(REGISTER, None, json!({"username": long, "password": "pw-alice-123"})).await;
    assert_error(&res, 400, "M_INVALID_USERNAME");
    let res = s.get("/_matrix/client/v3/register/available?username=Bad%20Name", None).await;
    assert_error(&res, 400, "M_INVALID_USERNAME");
}

#[tokio::test]
async fn a_free_username_is_available() {
    let s = TestServer::start().await;
    let (status, body) = s.get("/_matrix/client/v3/register/available?username=newbie", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["available"], true);
}

#[tokio::test]
async fn a_short_password_is_m_weak_password() {
    let s = TestServer::start().await;
    let res = s.post(REGISTER, None, json!({"username": "alice", "password": "short"})).await;
    assert_error(&res, 400, "M_WEAK_PASSWORD");
}

#[tokio::test]
async fn guest_registration_is_refused() {
    let s = TestServer::start().await;
    let res = s.post(&format!("{REGISTER}?kind=guest"), None, json!({})).await;
    assert_error(&res, 403, "M_GUEST_ACCESS_FORBIDDEN");
}

#[tokio::test]
async fn registration_is_closed_unless_configured() {
    let s = TestServer::start_with(ServerOptions { registration: "closed", ..Default::default() })
        .await;
    let res =
        s.post(REGISTER, None, json!({"username": "alice", "password": "pw-alice-123"})).await;
    assert_error(&res, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn inhibit_login_creates_the_account_without_a_session() {
    let s = TestServer::start().await;
    let (_, body) =
        s.post(REGISTER, None, json!({"username": "carol", "password": "pw-carol-123"})).await;
    let session = body["session"].as_str().unwrap();
    let (status, body) = s
        .post(
            REGISTER,
            None,
            json!({"username": "carol", "password": "pw-carol-123", "inhibit_login": true,
                   "auth": {"type": "m.login.dummy", "session": session}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@carol:test.local");
    assert!(body.get("access_token").is_none());
    assert_eq!(s.login("carol", "pw-carol-123").await.0, 200);
}

#[tokio::test]
async fn an_unknown_uia_session_is_refused() {
    let s = TestServer::start().await;
    let res = s
        .post(
            REGISTER,
            None,
            json!({"username": "dave", "password": "pw-dave-1234",
                   "auth": {"type": "m.login.dummy", "session": "made-up"}}),
        )
        .await;
    assert_error(&res, 403, "M_FORBIDDEN");
}

async fn token_server() -> TestServer {
    TestServer::start_with(ServerOptions { registration: "token", ..Default::default() }).await
}

fn create_token(s: &TestServer, args: &[&str]) -> String {
    let mut full = vec!["token", "create"];
    full.extend_from_slice(args);
    let out = s.cli(&full);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn token_registration_needs_a_valid_token() {
    let s = token_server().await;
    let token = create_token(&s, &["--uses", "1"]);

    let (status, body) =
        s.post(REGISTER, None, json!({"username": "erin", "password": "pw-erin-123"})).await;
    assert_eq!(status, 401);
    assert_eq!(body["flows"], json!([{"stages": ["m.login.registration_token"]}]));
    let session = body["session"].as_str().unwrap().to_owned();

    // A wrong token: 401 with the error, the session continues.
    let (status, body) = s
        .post(
            REGISTER,
            None,
            json!({"username": "erin", "password": "pw-erin-123",
                   "auth": {"type": "m.login.registration_token", "token": "wrong", "session": session}}),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    assert_eq!(body["session"], session.as_str());

    let (status, body) = s
        .post(
            REGISTER,
            None,
            json!({"username": "erin", "password": "pw-erin-123",
                   "auth": {"type": "m.login.registration_token", "token": token, "session": session}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@erin:test.local");
}

#[tokio::test]
async fn a_dummy_stage_does_not_satisfy_token_registration() {
    let s = token_server().await;
    let (_, body) =
        s.post(REGISTER, None, json!({"username": "frank", "password": "pw-frank-123"})).await;
    let session = body["session"].as_str().unwrap();
    let (status, body) = s
        .post(
            REGISTER,
            None,
            json!({"username": "frank", "password": "pw-frank-123",
                   "auth": {"type": "m.login.dummy", "session": session}}),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["completed"], json!([]));
}

#[tokio::test]
async fn token_validity_reflects_uses_left() {
    let s = token_server().await;
    let token = create_token(&s, &["--uses", "1"]);
    let path =
        format!("/_matrix/client/v1/register/m.login.registration_token/validity?token={token}");
    let (status, body) = s.get(&path, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["valid"], true);
    let (_, body) = s
        .get("/_matrix/client/v1/register/m.login.registration_token/validity?token=nope", None)
        .await;
    assert_eq!(body["valid"], false);

    // Use it once; then it is spent.
    let (_, body) =
        s.post(REGISTER, None, json!({"username": "gina", "password": "pw-gina-123"})).await;
    let session = body["session"].as_str().unwrap();
    let (status, _) = s
        .post(
            REGISTER,
            None,
            json!({"username": "gina", "password": "pw-gina-123",
                   "auth": {"type": "m.login.registration_token", "token": token, "session": session}}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, body) = s.get(&path, None).await;
    assert_eq!(body["valid"], false);
}

#[tokio::test]
async fn token_validity_is_forbidden_when_tokens_are_not_in_use() {
    let s = TestServer::start().await;
    let res = s
        .get("/_matrix/client/v1/register/m.login.registration_token/validity?token=x", None)
        .await;
    assert_error(&res, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn an_empty_register_request_gets_the_flows() {
    // Clients (Element among them) ask for the flows with an empty body.
    let s = TestServer::start().await;
    let (status, body) = s.post(REGISTER, None, json!({})).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["flows"], json!([{"stages": ["m.login.dummy"]}]));
    // Completing UIA without a password is refused.
    let session = body["session"].as_str().unwrap();
    let res = s
        .post(
            REGISTER,
            None,
            json!({"username": "nopw", "auth": {"type": "m.login.dummy", "session": session}}),
        )
        .await;
    assert_error(&res, 400, "M_MISSING_PARAM");
}

#[tokio::test]
async fn registering_without_a_username_picks_one() {
    let s = TestServer::start().await;
    let (_, body) = s.post(REGISTER, None, json!({"password": "some-password"})).await;
    let session = body["session"].as_str().unwrap();
    let (status, body) = s
        .post(REGISTER, None, json!({"password": "some-password", "auth": {"type": "m.login.dummy", "session": session}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["user_id"].as_str().unwrap().ends_with(":test.local"));
}

/// Completes a dummy-stage registration; returns the session ID and the final request body.
async fn register_in_session(
    s: &TestServer,
    body: serde_json::Value,
) -> (String, serde_json::Value) {
    let (status, challenge) = s.post(REGISTER, None, body.clone()).await;
    assert_eq!(status, 401, "{challenge}");
    let session = challenge["session"].as_str().unwrap().to_owned();
    let mut full = body;
    full["auth"] = json!({"type": "m.login.dummy", "session": session});
    (session, full)
}

#[tokio::test]
async fn a_completed_registration_replayed_returns_the_same_account() {
    let s = TestServer::start().await;
    let (_, full) =
        register_in_session(&s, json!({"username": "gina", "password": "pw-gina-1234"})).await;
    let (status, first) = s.post(REGISTER, None, full.clone()).await;
    assert_eq!(status, 200, "{first}");
    // The client lost the response and retries: same account, device and token.
    let (status, again) = s.post(REGISTER, None, full).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["user_id"], "@gina:test.local");
    assert_eq!(again["device_id"], first["device_id"]);
    assert_eq!(again["access_token"], first["access_token"]);
    let token = again["access_token"].as_str().unwrap();
    let (status, who) = s.get("/_matrix/client/v3/account/whoami", Some(token)).await;
    assert_eq!(status, 200, "{who}");
    assert_eq!(who["device_id"], first["device_id"]);
}

#[tokio::test]
async fn a_replayed_registration_without_username_creates_no_second_account() {
    let s = TestServer::start().await;
    let (_, full) = register_in_session(&s, json!({"password": "pw-anon-1234"})).await;
    let (status, first) = s.post(REGISTER, None, full.clone()).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = s.post(REGISTER, None, full).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["user_id"], first["user_id"]);
}

#[tokio::test]
async fn a_replayed_registration_after_logout_is_refused() {
    let s = TestServer::start().await;
    let (_, full) =
        register_in_session(&s, json!({"username": "hank", "password": "pw-hank-1234"})).await;
    let (status, first) = s.post(REGISTER, None, full.clone()).await;
    assert_eq!(status, 200, "{first}");
    let token = first["access_token"].as_str().unwrap();
    assert_eq!(s.post("/_matrix/client/v3/logout", Some(token), json!({})).await.0, 200);
    // The session must not log the account in again without its password.
    let res = s.post(REGISTER, None, full).await;
    assert_error(&res, 403, "M_FORBIDDEN");
    assert!(res.1.get("access_token").is_none());
}

#[tokio::test]
async fn a_clients_oldest_uia_session_is_evicted_past_the_cap() {
    // 64 live sessions per client IP (services::uia::MAX_SESSIONS_PER_OWNER).
    let s = TestServer::start().await;
    let (_, oldest) =
        register_in_session(&s, json!({"username": "ivan", "password": "pw-ivan-1234"})).await;
    let (_, newest) =
        register_in_session(&s, json!({"username": "ivan", "password": "pw-ivan-1234"})).await;
    for _ in 0..63 {
        let (status, _) = s.post(REGISTER, None, json!({})).await;
        assert_eq!(status, 401);
    }
    let res = s.post(REGISTER, None, oldest).await;
    assert_error(&res, 403, "M_FORBIDDEN");
    let (status, body) = s.post(REGISTER, None, newest).await;
    assert_eq!(status, 200, "a recent session still works: {body}");
}
