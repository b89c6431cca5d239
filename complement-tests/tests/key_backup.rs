//! Server-side key backups: `/room_keys/version` and `/room_keys/keys`.

use complement_tests::{ServerOptions, Session, TestServer, Value, assert_error, enc, json};
use reqwest::Method;

const VERSION: &str = "/_matrix/client/v3/room_keys/version";
const KEYS: &str = "/_matrix/client/v3/room_keys/keys";
const ROOM: &str = "!room:test.local";
const MEGOLM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";

fn algorithm(public_key: &str) -> Value {
    json!({
        "algorithm": MEGOLM,
        "auth_data": {
            "public_key": public_key,
            "signatures": {"@alice:test.local": {"ed25519:DEV": "c2lnbmF0dXJl"}}
        }
    })
}

fn key_data(verified: bool, first_message_index: u64, forwarded_count: u64, tag: &str) -> Value {
    json!({
        "first_message_index": first_message_index,
        "forwarded_count": forwarded_count,
        "is_verified": verified,
        "session_data": {"ephemeral": "ZXBo", "ciphertext": tag, "mac": "bWFj"}
    })
}

fn session_path(room: &str, session: &str, version: &str) -> String {
    format!("{KEYS}/{}/{}?version={version}", enc(room), enc(session))
}

async fn create_version(s: &TestServer, who: &Session) -> String {
    let (status, body) = s.post(VERSION, who.token(), algorithm("cHVibGlja2V5")).await;
    assert_eq!(status, 200, "{body}");
    body["version"].as_str().expect("version").to_owned()
}

async fn put_session(
    s: &TestServer,
    who: &Session,
    version: &str,
    session: &str,
    data: Value,
) -> (reqwest::StatusCode, Value) {
    s.put(&session_path(ROOM, session, version), who.token(), data).await
}

async fn delete(s: &TestServer, who: &Session, path: &str) -> (reqwest::StatusCode, Value) {
    s.request(Method::DELETE, path, who.token(), None).await
}

#[tokio::test]
async fn a_created_version_is_the_current_one_and_versions_increase() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    assert_error(&s.get(VERSION, alice.token()).await, 404, "M_NOT_FOUND");

    let first = create_version(&s, &alice).await;
    let (status, body) = s.get(VERSION, alice.token()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], first.as_str());
    assert_eq!(body["algorithm"], MEGOLM);
    assert_eq!(body["auth_data"]["public_key"], "cHVibGlja2V5");
    assert_eq!(body["count"], 0);
    assert!(body["etag"].is_string(), "{body}");

    let second = create_version(&s, &alice).await;
    assert!(second.parse::<u64>().unwrap() > first.parse::<u64>().unwrap());
    assert_eq!(s.get(VERSION, alice.token()).await.1["version"], second.as_str());
    // The older version can still be read by its number.
    let (status, body) = s.get(&format!("{VERSION}/{first}"), alice.token()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], first.as_str());
    assert_error(&s.get(&format!("{VERSION}/999"), alice.token()).await, 404, "M_NOT_FOUND");
    assert_error(&s.get(&format!("{VERSION}/nope"), alice.token()).await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn a_version_without_algorithm_or_auth_data_is_refused() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let res = s.post(VERSION, alice.token(), json!({"auth_data": {}})).await;
    assert_error(&res, 400, "M_BAD_JSON");
    let res = s.post(VERSION, alice.token(), json!({"algorithm": MEGOLM})).await;
    assert_error(&res, 400, "M_BAD_JSON");
    assert_error(&s.get(VERSION, alice.token()).await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn updating_a_version_replaces_auth_data_only_when_the_algorithm_matches() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let v = create_version(&s, &alice).await;
    let path = format!("{VERSION}/{v}");

    let mut update = algorithm("bmV3a2V5");
    update["version"] = json!(v);
    let (status, body) = s.put(&path, alice.token(), update).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.get(&path, alice.token()).await.1["auth_data"]["public_key"], "bmV3a2V5");

    let other = json!({"algorithm": "org.example.other", "auth_data": {"k": "v"}});
    assert_error(&s.put(&path, alice.token(), other).await, 400, "M_INVALID_PARAM");
    let mut wrong_version = algorithm("b3RoZXI");
    wrong_version["version"] = json!("12345");
    assert_error(&s.put(&path, alice.token(), wrong_version).await, 400, "M_INVALID_PARAM");
    // Neither refused update changed anything.
    assert_eq!(s.get(&path, alice.token()).await.1["auth_data"]["public_key"], "bmV3a2V5");
    let missing = format!("{VERSION}/999");
    assert_error(&s.put(&missing, alice.token(), algorithm("eA")).await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn a_deleted_version_stays_not_found_and_its_number_is_not_reused() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let first = create_version(&s, &alice).await;
    let second = create_version(&s, &alice).await;
    assert_eq!(put_session(&s, &alice, &second, "s1", key_data(true, 0, 0, "YQ")).await.0, 200);

    let (status, body) = delete(&s, &alice, &format!("{VERSION}/{second}")).await;
    assert_eq!(status, 200, "{body}");
    assert_error(&s.get(&format!("{VERSION}/{second}"), alice.token()).await, 404, "M_NOT_FOUND");
    let keys = format!("{KEYS}?version={second}");
    assert_error(&s.get(&keys, alice.token()).await, 404, "M_NOT_FOUND");
    let res = put_session(&s, &alice, &second, "s1", key_data(true, 0, 0, "YQ")).await;
    assert_error(&res, 404, "M_NOT_FOUND");
    assert_error(&delete(&s, &alice, &format!("{VERSION}/{second}")).await, 404, "M_NOT_FOUND");
    // The current version falls back to the older one still there.
    assert_eq!(s.get(VERSION, alice.token()).await.1["version"], first.as_str());

    let third = create_version(&s, &alice).await;
    assert!(third.parse::<u64>().unwrap() > second.parse::<u64>().unwrap(), "{third}");
    assert_error(&s.get(&format!("{VERSION}/{second}"), alice.token()).await, 404, "M_NOT_FOUND");
    // Keys of the deleted version did not come back with a new one.
    let (_, all) = s.get(&format!("{KEYS}?version={third}"), alice.token()).await;
    assert_eq!(all, json!({"rooms": {}}));

    assert_eq!(delete(&s, &alice, &format!("{VERSION}/{first}")).await.0, 200);
    assert_eq!(delete(&s, &alice, &format!("{VERSION}/{third}")).await.0, 200);
    assert_error(&s.get(VERSION, alice.token()).await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn keys_are_stored_and_read_at_all_three_levels() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let v = create_version(&s, &alice).await;
    let other_room = "!other:test.local";

    // All rooms at once.
    let body = json!({"rooms": {
        ROOM: {"sessions": {"s1": key_data(true, 0, 0, "MQ"), "s2": key_data(false, 3, 1, "Mg")}},
        other_room: {"sessions": {"s3": key_data(false, 0, 0, "Mw")}}
    }});
    let (status, res) = s.put(&format!("{KEYS}?version={v}"), alice.token(), body).await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["count"], 3);
    assert!(res["etag"].is_string());

    // One room.
    let room_path = format!("{KEYS}/{}?version={v}", enc(ROOM));
    let body = json!({"sessions": {"s4": key_data(true, 1, 0, "NA")}});
    let (status, res) = s.put(&room_path, alice.token(), body).await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["count"], 4);

    // One session.
    let (status, res) = put_session(&s, &alice, &v, "s5", key_data(true, 0, 0, "NQ")).await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["count"], 5);

    let (status, all) = s.get(&format!("{KEYS}?version={v}"), alice.token()).await;
    assert_eq!(status, 200, "{all}");
    let sessions = all["rooms"][ROOM]["sessions"].as_object().unwrap();
    assert_eq!(sessions.keys().collect::<Vec<_>>(), ["s1", "s2", "s4", "s5"]);
    assert_eq!(all["rooms"][ROOM]["sessions"]["s2"], key_data(false, 3, 1, "Mg"));
    assert_eq!(all["rooms"][other_room]["sessions"]["s3"], key_data(false, 0, 0, "Mw"));

    let (status, room) = s.get(&room_path, alice.token()).await;
    assert_eq!(status, 200, "{room}");
    assert_eq!(room["sessions"].as_object().unwrap().len(), 4);
    assert_eq!(room["sessions"]["s4"], key_data(true, 1, 0, "NA"));

    let (status, one) = s.get(&session_path(ROOM, "s5", &v), alice.token()).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one, key_data(true, 0, 0, "NQ"));

    // Nothing stored: empty maps for rooms and the version, 404 for a session.
    let empty_room = format!("{KEYS}/{}?version={v}", enc("!empty:test.local"));
    assert_eq!(s.get(&empty_room, alice.token()).await.1, json!({"sessions": {}}));
    let res = s.get(&session_path(ROOM, "missing", &v), alice.token()).await;
    assert_error(&res, 404, "M_NOT_FOUND");
    let (_, info) = s.get(VERSION, alice.token()).await;
    assert_eq!(info["count"], 5);
}

#[tokio::test]
async fn keys_are_deleted_at_all_three_levels() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let v = create_version(&s, &alice).await;
    let other_room = "!other:test.local";
    let body = json!({"rooms": {
        ROOM: {"sessions": {"s1": key_data(true, 0, 0, "MQ"), "s2": key_data(true, 0, 0, "Mg")}},
        other_room: {"sessions": {"s3": key_data(true, 0, 0, "Mw"), "s4": key_data(true, 0, 0, "NA")}}
    }});
    let (_, put) = s.put(&format!("{KEYS}?version={v}"), alice.token(), body).await;
    assert_eq!(put["count"], 4, "{put}");

    let (status, res) = delete(&s, &alice, &session_path(ROOM, "s1", &v)).await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["count"], 3);
    assert_ne!(res["etag"], put["etag"]);
    assert_error(&s.get(&session_path(ROOM, "s1", &v), alice.token()).await, 404, "M_NOT_FOUND");
    assert_eq!(s.get(&session_path(ROOM, "s2", &v), alice.token()).await.0, 200);

    let (status, res) =
        delete(&s, &alice, &format!("{KEYS}/{}?version={v}", enc(other_room))).await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["count"], 1);
    let (_, all) = s.get(&format!("{KEYS}?version={v}"), alice.token()).await;
    assert_eq!(all["rooms"].as_object().unwrap().len(), 1, "{all}");
    assert!(all["rooms"][ROOM]["sessions"]["s2"].is_object(), "{all}");

    let (status, res) = delete(&s, &alice, &format!("{KEYS}?version={v}")).await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["count"], 0);
    assert_eq!(s.get(&format!("{KEYS}?version={v}"), alice.token()).await.1, json!({"rooms": {}}));
    assert_eq!(s.get(VERSION, alice.token()).await.1["count"], 0);
    // The version itself stays.
    assert_eq!(s.get(&format!("{VERSION}/{v}"), alice.token()).await.0, 200);
    assert_error(&delete(&s, &alice, &format!("{KEYS}?version=999")).await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn a_stored_key_is_replaced_only_by_a_better_one() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let v = create_version(&s, &alice).await;
    let stored = || async { s.get(&session_path(ROOM, "s", &v), alice.token()).await.1 };

    put_session(&s, &alice, &v, "s", key_data(false, 5, 2, "dW52ZXJpZmllZA")).await;
    // Verified beats unverified, even with a higher index and more forwards.
    put_session(&s, &alice, &v, "s", key_data(true, 9, 4, "dmVyaWZpZWQ")).await;
    assert_eq!(stored().await, key_data(true, 9, 4, "dmVyaWZpZWQ"));
    // An unverified key never replaces a verified one, however good otherwise.
    put_session(&s, &alice, &v, "s", key_data(false, 0, 0, "YmV0dGVyLXVudmVyaWZpZWQ")).await;
    assert_eq!(stored().await, key_data(true, 9, 4, "dmVyaWZpZWQ"));
    // Same verification: the lower first_message_index wins, whatever the forwards.
    put_session(&s, &alice, &v, "s", key_data(true, 3, 8, "bG93ZXItaW5kZXg")).await;
    assert_eq!(stored().await, key_data(true, 3, 8, "bG93ZXItaW5kZXg"));
    put_session(&s, &alice, &v, "s", key_data(true, 4, 0, "aGlnaGVyLWluZGV4")).await;
    assert_eq!(stored().await, key_data(true, 3, 8, "bG93ZXItaW5kZXg"));
    // Same index: the lower forwarded_count wins.
    put_session(&s, &alice, &v, "s", key_data(true, 3, 9, "bW9yZS1mb3J3YXJkcw")).await;
    assert_eq!(stored().await, key_data(true, 3, 8, "bG93ZXItaW5kZXg"));
    put_session(&s, &alice, &v, "s", key_data(true, 3, 1, "ZmV3ZXItZm9yd2FyZHM")).await;
    assert_eq!(stored().await, key_data(true, 3, 1, "ZmV3ZXItZm9yd2FyZHM"));
    // Replacing never changes the count.
    assert_eq!(s.get(VERSION, alice.token()).await.1["count"], 1);
}

#[tokio::test]
async fn the_etag_changes_when_keys_change_and_only_then() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let v = create_version(&s, &alice).await;
    let etag = || async { s.get(VERSION, alice.token()).await.1["etag"].clone() };
    let initial = etag().await;

    let (_, first) = put_session(&s, &alice, &v, "s", key_data(true, 2, 0, "YQ")).await;
    assert_ne!(first["etag"], initial);
    assert_eq!(etag().await, first["etag"]);
    // A worse key is not stored: nothing changed, the etag stays.
    let (_, kept) = put_session(&s, &alice, &v, "s", key_data(true, 5, 0, "Yg")).await;
    assert_eq!(kept["etag"], first["etag"]);
    assert_eq!(kept["count"], 1);
    // The same key again: no change either.
    let (_, same) = put_session(&s, &alice, &v, "s", key_data(true, 2, 0, "YQ")).await;
    assert_eq!(same["etag"], first["etag"]);
    // A better key replaces it: the etag changes, the count does not.
    let (_, better) = put_session(&s, &alice, &v, "s", key_data(true, 1, 0, "Yw")).await;
    assert_ne!(better["etag"], first["etag"]);
    assert_eq!(better["count"], 1);
    // Deleting a key that is not there changes nothing.
    let (_, none) = delete(&s, &alice, &session_path(ROOM, "missing", &v)).await;
    assert_eq!(none["etag"], better["etag"]);
    // Updating auth_data is not a change of keys.
    s.put(&format!("{VERSION}/{v}"), alice.token(), algorithm("bmV3")).await;
    assert_eq!(etag().await, better["etag"]);
}

#[tokio::test]
async fn writing_to_an_older_version_is_refused_with_the_current_version() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let old = create_version(&s, &alice).await;
    let current = create_version(&s, &alice).await;

    let res = put_session(&s, &alice, &old, "s", key_data(true, 0, 0, "YQ")).await;
    assert_error(&res, 403, "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(res.1["current_version"], current.as_str());
    let body = json!({"rooms": {ROOM: {"sessions": {"s": key_data(true, 0, 0, "YQ")}}}});
    let res = s.put(&format!("{KEYS}?version={old}"), alice.token(), body).await;
    assert_error(&res, 403, "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(res.1["current_version"], current.as_str());
    // Nothing was stored in the old version.
    assert_eq!(
        s.get(&format!("{KEYS}?version={old}"), alice.token()).await.1,
        json!({"rooms": {}})
    );
    // A version that never existed is not found.
    let res = put_session(&s, &alice, "999", "s", key_data(true, 0, 0, "YQ")).await;
    assert_error(&res, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn malformed_key_data_is_refused_and_nothing_is_stored() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let v = create_version(&s, &alice).await;
    let res = put_session(&s, &alice, &v, "s", json!({"first_message_index": 0})).await;
    assert_error(&res, 400, "M_BAD_JSON");
    let body = json!({"rooms": {ROOM: {"sessions": {
        "good": key_data(true, 0, 0, "YQ"),
        "bad": {"first_message_index": "zero", "forwarded_count": 0, "is_verified": true, "session_data": {}}
    }}}});
    let res = s.put(&format!("{KEYS}?version={v}"), alice.token(), body).await;
    assert_error(&res, 400, "M_BAD_JSON");
    assert_eq!(s.get(&format!("{KEYS}?version={v}"), alice.token()).await.1, json!({"rooms": {}}));
    assert_eq!(s.get(VERSION, alice.token()).await.1["count"], 0);
}

#[tokio::test]
async fn another_users_backup_is_not_visible() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let v = create_version(&s, &alice).await;
    put_session(&s, &alice, &v, "s", key_data(true, 0, 0, "YQ")).await;

    assert_error(&s.get(VERSION, bob.token()).await, 404, "M_NOT_FOUND");
    assert_error(&s.get(&format!("{VERSION}/{v}"), bob.token()).await, 404, "M_NOT_FOUND");
    assert_error(&s.get(&format!("{KEYS}?version={v}"), bob.token()).await, 404, "M_NOT_FOUND");
    let res = s.get(&session_path(ROOM, "s", &v), bob.token()).await;
    assert_error(&res, 404, "M_NOT_FOUND");
    let res = put_session(&s, &bob, &v, "s", key_data(true, 0, 0, "Yg")).await;
    assert_error(&res, 404, "M_NOT_FOUND");
    assert_error(&delete(&s, &bob, &format!("{VERSION}/{v}")).await, 404, "M_NOT_FOUND");
    assert_error(&delete(&s, &bob, &format!("{KEYS}?version={v}")).await, 404, "M_NOT_FOUND");

    // Bob's own backup is numbered and stored apart from Alice's.
    let bobs = create_version(&s, &bob).await;
    let (_, bob_keys) = s.get(&format!("{KEYS}?version={bobs}"), bob.token()).await;
    assert_eq!(bob_keys, json!({"rooms": {}}));
    assert_eq!(
        s.get(&session_path(ROOM, "s", &v), alice.token()).await.1,
        key_data(true, 0, 0, "YQ")
    );
    assert_eq!(s.get(VERSION, alice.token()).await.1["count"], 1);
}

#[tokio::test]
async fn key_backup_needs_an_access_token() {
    let s = TestServer::start().await;
    assert_error(&s.get(VERSION, None).await, 401, "M_MISSING_TOKEN");
    assert_error(&s.post(VERSION, None, algorithm("eA")).await, 401, "M_MISSING_TOKEN");
}

#[tokio::test]
async fn an_upload_past_the_key_cap_is_refused_whole_but_replacing_stays_allowed() {
    let s = TestServer::start_with(ServerOptions {
        extra_limits: "max_backup_keys_per_version = 2".into(),
        ..Default::default()
    })
    .await;
    let alice = s.register("alice", "alice-password").await;
    let v = create_version(&s, &alice).await;
    assert_eq!(put_session(&s, &alice, &v, "s1", key_data(false, 5, 0, "YQ")).await.0, 200);
    let body = json!({"rooms": {ROOM: {"sessions": {
        "s2": key_data(true, 0, 0, "Yg"),
        "s3": key_data(true, 0, 0, "Yw")
    }}}});
    let res = s.put(&format!("{KEYS}?version={v}"), alice.token(), body).await;
    assert_error(&res, 400, "M_TOO_LARGE");
    let (_, info) = s.get(VERSION, alice.token()).await;
    assert_eq!(info["count"], 1, "nothing of the refused upload was stored: {info}");
    assert_error(&s.get(&session_path(ROOM, "s2", &v), alice.token()).await, 404, "M_NOT_FOUND");

    assert_eq!(put_session(&s, &alice, &v, "s2", key_data(true, 0, 0, "Yg")).await.0, 200);
    let (status, res) = put_session(&s, &alice, &v, "s1", key_data(true, 0, 0, "Yw")).await;
    assert_eq!(status, 200, "replacing a key at the cap: {res}");
    assert_eq!(res["count"], 2);
}

#[tokio::test]
async fn an_oversized_upload_is_refused() {
    let s = TestServer::start().await; // max_body_bytes = 65536 in tests
    let alice = s.register("alice", "alice-password").await;
    let v = create_version(&s, &alice).await;
    let sessions: serde_json::Map<String, Value> =
        (0..1000).map(|i| (format!("session{i}"), key_data(true, 0, 0, "YQ"))).collect();
    let body = json!({"rooms": {ROOM: {"sessions": sessions}}});
    // A client of its own: the server may close the connection after its 413, which must
    // not poison the shared client's pool for the requests that follow.
    let res = reqwest::Client::new()
        .put(format!("{}{KEYS}?version={v}", s.base))
        .bearer_auth(&alice.access_token)
        .json(&body)
        .send()
        .await;
    match res {
        Ok(res) => {
            assert_eq!(res.status(), 413);
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["errcode"], "M_TOO_LARGE");
        }
        // The server may answer 413 and close while the client is still uploading; then
        // the client sees the connection end instead of the response.
        Err(e) => assert!(e.is_request(), "unexpected error: {e}"),
    }
    assert_eq!(s.get(VERSION, alice.token()).await.1["count"], 0);
}

#[tokio::test]
async fn backups_survive_kill_9() {
    let mut s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let deleted = create_version(&s, &alice).await;
    assert_eq!(delete(&s, &alice, &format!("{VERSION}/{deleted}")).await.0, 200);
    let v = create_version(&s, &alice).await;
    let (_, put) = put_session(&s, &alice, &v, "s", key_data(true, 0, 0, "YQ")).await;
    s.crash_and_restart().await;

    let (status, info) = s.get(VERSION, alice.token()).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["version"], v.as_str());
    assert_eq!(info["count"], 1);
    assert_eq!(info["etag"], put["etag"]);
    assert_eq!(
        s.get(&session_path(ROOM, "s", &v), alice.token()).await.1,
        key_data(true, 0, 0, "YQ")
    );
    let next = create_version(&s, &alice).await;
    assert!(next.parse::<u64>().unwrap() > v.parse::<u64>().unwrap());
}
