//! The admin API (Synapse's shapes, under `/_synapse/admin`): server admins only.

use complement_tests::{ServerOptions, Session, TestServer, assert_error, enc, json};
use reqwest::Method;

/// A server with an admin made by `axon user create --admin` and a plain user, both
/// logged in.
async fn server_with_admin() -> (TestServer, Session, Session) {
    let s =
        TestServer::start_with(ServerOptions { registration: "token", ..Default::default() }).await;
    let out = s.cli(&["user", "create", "root", "--password", "root-password", "--admin"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = s.cli(&["user", "create", "bob", "--password", "bob-password"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, body) = s.login("root", "root-password").await;
    assert_eq!(status, 200, "{body}");
    let root = Session::from_json(&body);
    let (status, body) = s.login("bob", "bob-password").await;
    assert_eq!(status, 200, "{body}");
    let bob = Session::from_json(&body);
    (s, root, bob)
}

/// The device-list stream position: the fourth part of a sync token.
fn device_list_pos(token: &str) -> u64 {
    token.split('_').nth(3).and_then(|p| p.parse().ok()).unwrap_or(0)
}

/// Every endpoint, with a body where it takes one.
fn endpoints() -> Vec<(Method, String, Option<serde_json::Value>)> {
    let bob = enc("@bob:test.local");
    vec![
        (Method::GET, "/_synapse/admin/v1/server_version".into(), None),
        (Method::GET, format!("/_synapse/admin/v2/users/{bob}"), None),
        (Method::POST, format!("/_synapse/admin/v1/deactivate/{bob}"), Some(json!({}))),
        (Method::GET, format!("/_synapse/admin/v1/users/{bob}/admin"), None),
        (
            Method::PUT,
            format!("/_synapse/admin/v1/users/{bob}/admin"),
            Some(json!({"admin": true})),
        ),
        (Method::GET, "/_synapse/admin/v1/registration_tokens".into(), None),
        (Method::POST, "/_synapse/admin/v1/registration_tokens/new".into(), Some(json!({}))),
        (Method::GET, "/_synapse/admin/v1/registration_tokens/abc".into(), None),
        (Method::DELETE, "/_synapse/admin/v1/registration_tokens/abc".into(), None),
    ]
}

#[tokio::test]
async fn the_admin_api_needs_an_access_token() {
    let (s, _, _) = server_with_admin().await;
    for (method, path, body) in endpoints() {
        let res = s.request(method.clone(), &path, None, body).await;
        assert_error(&res, 401, "M_MISSING_TOKEN");
    }
}

#[tokio::test]
async fn a_user_who_is_not_an_admin_is_forbidden_the_admin_api() {
    let (s, root, bob) = server_with_admin().await;
    for (method, path, body) in endpoints() {
        let res = s.request(method.clone(), &path, bob.token(), body).await;
        assert_error(&res, 403, "M_FORBIDDEN");
    }
    // Nothing happened: bob is still active and still no admin.
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", bob.token()).await.0, 200);
    let path = format!("/_synapse/admin/v1/users/{}/admin", enc("@bob:test.local"));
    assert_eq!(s.get(&path, root.token()).await.1, json!({"admin": false}));
}

#[tokio::test]
async fn an_admin_reads_the_server_version() {
    let (s, root, _) = server_with_admin().await;
    let (status, body) = s.get("/_synapse/admin/v1/server_version", root.token()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["server_version"].as_str().is_some_and(|v| !v.is_empty()), "{body}");
}

#[tokio::test]
async fn an_admin_queries_a_user() {
    let (s, root, _) = server_with_admin().await;
    let path = format!("/_synapse/admin/v2/users/{}", enc("@bob:test.local"));
    let (status, body) = s.get(&path, root.token()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "@bob:test.local");
    assert_eq!(body["displayname"], "bob");
    assert_eq!(body["admin"], false);
    assert_eq!(body["deactivated"], false);
    assert_eq!(body["is_guest"], false);
    assert_eq!(body["threepids"], json!([]));
    assert!(body["creation_ts"].as_u64().is_some_and(|t| t > 0), "{body}");

    let nobody = format!("/_synapse/admin/v2/users/{}", enc("@nobody:test.local"));
    assert_error(&s.get(&nobody, root.token()).await, 404, "M_NOT_FOUND");
    let remote = format!("/_synapse/admin/v2/users/{}", enc("@bob:elsewhere.example"));
    assert_error(&s.get(&remote, root.token()).await, 400, "M_UNKNOWN");
    let invalid = format!("/_synapse/admin/v2/users/{}", enc("bob"));
    assert_error(&s.get(&invalid, root.token()).await, 400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn an_admin_grants_admin_rights_and_they_take_effect() {
    let (s, root, bob) = server_with_admin().await;
    let path = format!("/_synapse/admin/v1/users/{}/admin", enc("@bob:test.local"));
    let (status, body) = s.get(&path, root.token()).await;
    assert_eq!((status.as_u16(), body), (200, json!({"admin": false})));

    let (status, body) = s.put(&path, root.token(), json!({"admin": true})).await;
    assert_eq!((status.as_u16(), body), (200, json!({})));
    let (status, body) = s.get(&path, bob.token()).await;
    assert_eq!((status.as_u16(), body), (200, json!({"admin": true})));

    // And back: root revokes them, bob is forbidden again.
    assert_eq!(s.put(&path, root.token(), json!({"admin": false})).await.0, 200);
    assert_error(&s.get(&path, bob.token()).await, 403, "M_FORBIDDEN");
    assert_error(&s.put(&path, root.token(), json!({})).await, 400, "M_MISSING_PARAM");
}

#[tokio::test]
async fn an_admin_may_not_demote_themselves() {
    let (s, root, _) = server_with_admin().await;
    let path = format!("/_synapse/admin/v1/users/{}/admin", enc("@root:test.local"));
    assert_error(&s.put(&path, root.token(), json!({"admin": false})).await, 400, "M_UNKNOWN");
    let (_, body) = s.get(&path, root.token()).await;
    assert_eq!(body, json!({"admin": true}));
}

#[tokio::test]
async fn an_admin_deactivates_a_user() {
    let (s, root, bob) = server_with_admin().await;
    let room = s.create_room(&root, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let since = s.sync(&root, None, 0).await["next_batch"].as_str().unwrap().to_owned();

    let path = format!("/_synapse/admin/v1/deactivate/{}", enc("@bob:test.local"));
    let (status, body) = s.post(&path, root.token(), json!({"erase": true})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id_server_unbind_result"], "success");

    // Bob's devices are gone: his device list changed (the device-list position, the sync
    // token's fourth part, moved), and he no longer shares a room with root.
    let sync = s.sync(&root, Some(&since), 0).await;
    let next = sync["next_batch"].as_str().unwrap();
    assert!(device_list_pos(next) > device_list_pos(&since), "{since} → {next}");
    assert_eq!(sync["device_lists"]["left"], json!(["@bob:test.local"]), "{sync}");

    assert_error(
        &s.get("/_matrix/client/v3/account/whoami", bob.token()).await,
        401,
        "M_UNKNOWN_TOKEN",
    );
    assert_error(&s.login("bob", "bob-password").await, 403, "M_USER_DEACTIVATED");
    let user = format!("/_synapse/admin/v2/users/{}", enc("@bob:test.local"));
    let (_, body) = s.get(&user, root.token()).await;
    assert_eq!(body["deactivated"], true, "{body}");
    assert_eq!(body["displayname"], serde_json::Value::Null, "erased: {body}");
    // Bob left the room.
    let members = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room));
    let (_, body) = s.get(&members, root.token()).await;
    assert!(body["joined"].get("@bob:test.local").is_none(), "{body}");

    let nobody = format!("/_synapse/admin/v1/deactivate/{}", enc("@nobody:test.local"));
    assert_error(&s.post(&nobody, root.token(), json!({})).await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn an_admin_manages_registration_tokens() {
    let (s, root, _) = server_with_admin().await;
    let (status, made) = s
        .post(
            "/_synapse/admin/v1/registration_tokens/new",
            root.token(),
            json!({"token": "welcome-1", "uses_allowed": 1}),
        )
        .await;
    assert_eq!(status, 200, "{made}");
    assert_eq!(
        made,
        json!({"token": "welcome-1", "uses_allowed": 1, "pending": 0, "completed": 0, "expiry_time": null})
    );
    let (status, random) = s
        .post("/_synapse/admin/v1/registration_tokens/new", root.token(), json!({"length": 24}))
        .await;
    assert_eq!(status, 200, "{random}");
    assert_eq!(random["token"].as_str().unwrap().len(), 24);

    // The token works for registration, which uses it up.
    let validity =
        "/_matrix/client/v1/register/m.login.registration_token/validity?token=welcome-1";
    assert_eq!(s.get(validity, None).await.1["valid"], true);
    let (_, body) = s
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": "carol", "password": "carol-password"}),
        )
        .await;
    let session = body["session"].as_str().unwrap();
    let auth =
        json!({"type": "m.login.registration_token", "token": "welcome-1", "session": session});
    let (status, body) = s
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": "carol", "password": "carol-password", "auth": auth}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let (_, one) = s.get("/_synapse/admin/v1/registration_tokens/welcome-1", root.token()).await;
    assert_eq!(one["completed"], 1, "{one}");
    let (_, all) = s.get("/_synapse/admin/v1/registration_tokens", root.token()).await;
    assert_eq!(all["registration_tokens"].as_array().unwrap().len(), 2, "{all}");
    let (_, used_up) =
        s.get("/_synapse/admin/v1/registration_tokens?valid=false", root.token()).await;
    assert_eq!(used_up["registration_tokens"], json!([one]));

    let path = "/_synapse/admin/v1/registration_tokens/welcome-1";
    let (status, body) = s.request(Method::DELETE, path, root.token(), None).await;
    assert_eq!((status.as_u16(), body), (200, json!({})));
    assert_error(&s.get(path, root.token()).await, 404, "M_NOT_FOUND");
    assert_error(&s.request(Method::DELETE, path, root.token(), None).await, 404, "M_NOT_FOUND");
    let taken = json!({"token": random["token"]});
    assert_error(
        &s.post("/_synapse/admin/v1/registration_tokens/new", root.token(), taken).await,
        400,
        "M_INVALID_PARAM",
    );
}
