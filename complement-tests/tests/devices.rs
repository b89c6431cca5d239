//! `/devices` and `/delete_devices`.

use complement_tests::{Session, TestServer, assert_error, json};

#[tokio::test]
async fn devices_are_listed_fetched_and_renamed() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let (status, body) = s.get("/_matrix/client/v3/devices", alice.token()).await;
    assert_eq!(status, 200);
    let devices = body["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["device_id"], alice.device_id);
    assert!(devices[0]["last_seen_ts"].is_u64());

    let path = format!("/_matrix/client/v3/devices/{}", alice.device_id);
    let (status, _) = s.put(&path, alice.token(), json!({"display_name": "Laptop"})).await;
    assert_eq!(status, 200);
    let (status, body) = s.get(&path, alice.token()).await;
    assert_eq!(status, 200);
    assert_eq!(body["display_name"], "Laptop");
    assert_eq!(body["device_id"], alice.device_id);
}

#[tokio::test]
async fn an_unknown_device_is_not_found() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    assert_error(
        &s.get("/_matrix/client/v3/devices/NOPE", alice.token()).await,
        404,
        "M_NOT_FOUND",
    );
    let res =
        s.put("/_matrix/client/v3/devices/NOPE", alice.token(), json!({"display_name": "x"})).await;
    assert_error(&res, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn another_users_device_is_not_visible() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let res = s.get(&format!("/_matrix/client/v3/devices/{}", alice.device_id), bob.token()).await;
    assert_error(&res, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn deleting_a_device_needs_the_password_and_revokes_its_token() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let (_, other) = s.login("alice", "alice-password").await;
    let other = Session::from_json(&other);
    let path = format!("/_matrix/client/v3/devices/{}", other.device_id);

    let (status, body) =
        s.request(reqwest::Method::DELETE, &path, alice.token(), Some(json!({}))).await;
    assert_eq!(status, 401);
    assert_eq!(body["flows"], json!([{"stages": ["m.login.password"]}]));
    let auth = json!({"auth": {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "alice"},
        "password": "alice-password",
        "session": body["session"],
    }});
    let (status, body) = s.request(reqwest::Method::DELETE, &path, alice.token(), Some(auth)).await;
    assert_eq!(status, 200, "{body}");
    assert_error(
        &s.get("/_matrix/client/v3/account/whoami", other.token()).await,
        401,
        "M_UNKNOWN_TOKEN",
    );
    assert_error(&s.get(&path, alice.token()).await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn delete_devices_removes_several_at_once() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let mut others = Vec::new();
    for _ in 0..2 {
        let (_, body) = s.login("alice", "alice-password").await;
        others.push(Session::from_json(&body));
    }
    let ids: Vec<_> = others.iter().map(|o| o.device_id.clone()).collect();
    let (status, body) =
        s.post("/_matrix/client/v3/delete_devices", alice.token(), json!({"devices": ids})).await;
    assert_eq!(status, 401);
    let (status, _) = s
        .post(
            "/_matrix/client/v3/delete_devices",
            alice.token(),
            json!({"devices": ids, "auth": {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "@alice:test.local"},
                "password": "alice-password",
                "session": body["session"],
            }}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, body) = s.get("/_matrix/client/v3/devices", alice.token()).await;
    assert_eq!(body["devices"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn absent_device_fields_are_omitted_not_null() {
    let s = TestServer::start().await;
    // Registered without `initial_device_display_name`: the device has no display name.
    let alice = s.register("alice", "alice-password").await;
    let (status, body) = s.get("/_matrix/client/v3/devices", alice.token()).await;
    assert_eq!(status, 200);
    let device = &body["devices"][0];
    assert_eq!(device["device_id"], alice.device_id);
    assert!(device.get("display_name").is_none(), "display_name must be omitted: {device}");
    assert!(device["last_seen_ip"].is_string(), "{device}");
    let path = format!("/_matrix/client/v3/devices/{}", alice.device_id);
    let (status, device) = s.get(&path, alice.token()).await;
    assert_eq!(status, 200);
    assert!(device.get("display_name").is_none(), "display_name must be omitted: {device}");
    assert!(device.as_object().unwrap().values().all(|v| !v.is_null()), "{device}");
}
