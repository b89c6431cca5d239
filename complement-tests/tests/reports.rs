//! Reports of events and rooms (stored for admins, listed by the admin API in Synapse's
//! shape) and OpenID tokens (`/openid/request_token`, `/openid/userinfo`).

use complement_tests::{Session, TestServer, assert_error, enc, json};
use reqwest::Method;

/// alice and bob in a room, carol outside, and an admin.
async fn setup() -> (TestServer, Session, Session, Session, Session, String) {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let carol = s.register("carol", "carol-password").await;
    let out = s.cli(&["user", "create", "root", "--password", "root-password", "--admin"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, body) = s.login("root", "root-password").await;
    assert_eq!(status, 200, "{body}");
    let root = Session::from_json(&body);
    let room = s.create_room(&alice, json!({"preset": "public_chat", "name": "Town"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    (s, alice, bob, carol, root, room)
}

fn report_path(room: &str, event: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/report/{}", enc(room), enc(event))
}

#[tokio::test]
async fn a_member_reports_an_event_and_admins_list_it() {
    let (s, alice, bob, _, root, room) = setup().await;
    let event =
        s.send_message(&bob, &room, "t1", json!({"msgtype": "m.text", "body": "rude"})).await;
    let res = s
        .post(&report_path(&room, &event), alice.token(), json!({"reason": "rude", "score": -100}))
        .await;
    assert_eq!(res.0, 200, "{}", res.1);
    assert_eq!(res.1, json!({}));
    // Without reason or score too.
    let res = s.post(&report_path(&room, &event), alice.token(), json!({})).await;
    assert_eq!(res.0, 200, "{}", res.1);

    let (status, body) = s.get("/_synapse/admin/v1/event_reports", root.token()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 2);
    let reports = body["event_reports"].as_array().unwrap();
    // Newest first.
    assert_eq!(reports[1]["reason"], "rude");
    assert_eq!(reports[1]["score"], -100);
    assert_eq!(reports[1]["event_id"], event);
    assert_eq!(reports[1]["room_id"], room);
    assert_eq!(reports[1]["user_id"], alice.user_id);
    assert_eq!(reports[1]["sender"], bob.user_id);
    assert_eq!(reports[1]["name"], "Town");
    assert!(reports[1]["received_ts"].is_u64());
    let id = reports[1]["id"].as_u64().unwrap();

    // Paging, filters, one report with its event.
    let (_, page) = s.get("/_synapse/admin/v1/event_reports?limit=1&dir=f", root.token()).await;
    assert_eq!(page["event_reports"][0]["id"], id);
    assert_eq!(page["next_token"], 1);
    assert_eq!(page["total"], 2);
    let (_, last) =
        s.get("/_synapse/admin/v1/event_reports?limit=1&from=1&dir=f", root.token()).await;
    assert_eq!(last["event_reports"].as_array().map(Vec::len), Some(1), "{last}");
    assert_ne!(last["event_reports"][0]["id"], id);
    assert!(last.get("next_token").is_none(), "{last}");
    let (_, past) = s.get("/_synapse/admin/v1/event_reports?from=5", root.token()).await;
    assert_eq!(past["event_reports"], json!([]));
    assert_eq!(past["total"], 2);
    let (_, none) = s
        .get(
            &format!("/_synapse/admin/v1/event_reports?user_id={}", enc(&bob.user_id)),
            root.token(),
        )
        .await;
    assert_eq!(none["total"], 0);
    let (status, one) =
        s.get(&format!("/_synapse/admin/v1/event_reports/{id}"), root.token()).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["event_json"]["content"]["body"], "rude");
    assert_error(
        &s.get("/_synapse/admin/v1/event_reports/999", root.token()).await,
        404,
        "M_NOT_FOUND",
    );

    // Admins delete reports they dealt with.
    let one = format!("/_synapse/admin/v1/event_reports/{id}");
    assert_error(&s.request(Method::DELETE, &one, alice.token(), None).await, 403, "M_FORBIDDEN");
    assert_eq!(s.request(Method::DELETE, &one, root.token(), None).await.0, 200);
    assert_error(&s.request(Method::DELETE, &one, root.token(), None).await, 404, "M_NOT_FOUND");
    let (_, body) = s.get("/_synapse/admin/v1/event_reports", root.token()).await;
    assert_eq!(body["total"], 1);

    // Admins only.
    assert_error(
        &s.get("/_synapse/admin/v1/event_reports", alice.token()).await,
        403,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn only_those_who_can_see_an_event_may_report_it() {
    let (s, alice, bob, carol, root, room) = setup().await;
    let event = s.send_message(&bob, &room, "t1", json!({"msgtype": "m.text", "body": "hi"})).await;
    // carol is not in the room: as if the event did not exist.
    let res = s.post(&report_path(&room, &event), carol.token(), json!({"reason": "x"})).await;
    assert_error(&res, 404, "M_NOT_FOUND");
    // An unknown event, an event of another room.
    let res = s.post(&report_path(&room, "$nope"), alice.token(), json!({})).await;
    assert_error(&res, 404, "M_NOT_FOUND");
    let other = s.create_room(&alice, json!({})).await;
    let res = s.post(&report_path(&other, &event), alice.token(), json!({})).await;
    assert_error(&res, 404, "M_NOT_FOUND");
    // A score that is not an integer.
    let res = s.post(&report_path(&room, &event), alice.token(), json!({"score": "bad"})).await;
    assert_error(&res, 400, "M_BAD_JSON");
    let (_, body) = s.get("/_synapse/admin/v1/event_reports", root.token()).await;
    assert_eq!(body["total"], 0, "{body}");
}

#[tokio::test]
async fn a_room_can_be_reported() {
    let (s, _, _, carol, root, room) = setup().await;
    let path = format!("/_matrix/client/v3/rooms/{}/report", enc(&room));
    let res = s.post(&path, carol.token(), json!({"reason": "illegal content"})).await;
    assert_eq!(res.0, 200, "{}", res.1);
    let res = s.post(&path, carol.token(), json!({})).await;
    assert_error(&res, 400, "M_BAD_JSON");
    let res = s
        .post(
            "/_matrix/client/v3/rooms/!nope:test.local/report",
            carol.token(),
            json!({"reason": "x"}),
        )
        .await;
    assert_error(&res, 404, "M_NOT_FOUND");
    let (status, body) = s.get("/_synapse/admin/v1/room_reports", root.token()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 1);
    assert_eq!(body["room_reports"][0]["reason"], "illegal content");
    assert_eq!(body["room_reports"][0]["user_id"], carol.user_id);
    // Room reports are not event reports.
    let (_, events) = s.get("/_synapse/admin/v1/event_reports", root.token()).await;
    assert_eq!(events["total"], 0);
}

#[tokio::test]
async fn openid_tokens_identify_their_user() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let path = format!("/_matrix/client/v3/user/{}/openid/request_token", enc(&alice.user_id));
    let (status, body) = s.post(&path, alice.token(), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["matrix_server_name"], "test.local");
    assert_eq!(body["expires_in"], 3600);
    let token = body["access_token"].as_str().unwrap();

    let (status, info) = s
        .get(&format!("/_matrix/federation/v1/openid/userinfo?access_token={}", enc(token)), None)
        .await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info, json!({"sub": alice.user_id}));
    // The OpenID token is no access token, and the access token no OpenID token.
    assert_error(
        &s.get("/_matrix/client/v3/account/whoami", Some(token)).await,
        401,
        "M_UNKNOWN_TOKEN",
    );
    let res = s
        .get(
            &format!(
                "/_matrix/federation/v1/openid/userinfo?access_token={}",
                enc(&alice.access_token)
            ),
            None,
        )
        .await;
    assert_error(&res, 401, "M_UNKNOWN_TOKEN");

    // Only for oneself.
    assert_error(&s.post(&path, bob.token(), json!({})).await, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn an_ignored_users_event_can_be_reported_by_a_member_only() {
    let (s, alice, bob, _, root, room) = setup().await;
    let event =
        s.send_message(&bob, &room, "t1", json!({"msgtype": "m.text", "body": "abuse"})).await;
    let ignore =
        format!("/_matrix/client/v3/user/{}/account_data/m.ignored_user_list", enc(&alice.user_id));
    let res =
        s.put(&ignore, alice.token(), json!({"ignored_users": {bob.user_id.clone(): {}}})).await;
    assert_eq!(res.0, 200, "{}", res.1);
    // alice ignores bob, yet may report his abuse.
    let res = s.post(&report_path(&room, &event), alice.token(), json!({"reason": "abuse"})).await;
    assert_eq!(res.0, 200, "{}", res.1);
    // Once she has left, she may not (the spec: only joined members report).
    let leave = format!("/_matrix/client/v3/rooms/{}/leave", enc(&room));
    assert_eq!(s.post(&leave, alice.token(), json!({})).await.0, 200);
    let res = s.post(&report_path(&room, &event), alice.token(), json!({"reason": "again"})).await;
    assert_error(&res, 404, "M_NOT_FOUND");
    let (_, body) = s.get("/_synapse/admin/v1/event_reports", root.token()).await;
    assert_eq!(body["total"], 1, "{body}");
}

#[tokio::test]
async fn report_ids_are_never_reused() {
    let (s, alice, bob, _, root, room) = setup().await;
    let event = s.send_message(&bob, &room, "t1", json!({"msgtype": "m.text", "body": "x"})).await;
    let newest_id = |body: &serde_json::Value| body["event_reports"][0]["id"].as_u64().unwrap();
    for _ in 0..2 {
        let res = s.post(&report_path(&room, &event), alice.token(), json!({})).await;
        assert_eq!(res.0, 200, "{}", res.1);
    }
    let (_, body) = s.get("/_synapse/admin/v1/event_reports", root.token()).await;
    let deleted = newest_id(&body);
    let one = format!("/_synapse/admin/v1/event_reports/{deleted}");
    assert_eq!(s.request(Method::DELETE, &one, root.token(), None).await.0, 200);
    let res = s.post(&report_path(&room, &event), alice.token(), json!({})).await;
    assert_eq!(res.0, 200, "{}", res.1);
    let (_, body) = s.get("/_synapse/admin/v1/event_reports", root.token()).await;
    assert_eq!(body["total"], 2, "{body}");
    assert!(newest_id(&body) > deleted, "{body}");
    // The deleted report stays deleted.
    assert_error(&s.get(&one, root.token()).await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn openid_userinfo_refuses_missing_tokens_and_deactivated_accounts() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let res = s.get("/_matrix/federation/v1/openid/userinfo", None).await;
    assert_error(&res, 401, "M_UNKNOWN_TOKEN");
    let path = format!("/_matrix/client/v3/user/{}/openid/request_token", enc(&alice.user_id));
    let (status, body) = s.post(&path, alice.token(), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let info = format!(
        "/_matrix/federation/v1/openid/userinfo?access_token={}",
        enc(body["access_token"].as_str().unwrap())
    );
    assert_eq!(s.get(&info, None).await.0, 200);
    let deactivate = "/_matrix/client/v3/account/deactivate";
    let (status, body) = s.post(deactivate, alice.token(), json!({})).await;
    assert_eq!(status, 401, "{body}");
    let auth = json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "alice"},
        "password": "alice-password",
        "session": body["session"],
    });
    let (status, body) = s.post(deactivate, alice.token(), json!({"auth": auth})).await;
    assert_eq!(status, 200, "{body}");
    assert_error(&s.get(&info, None).await, 401, "M_UNKNOWN_TOKEN");
}

#[tokio::test]
async fn openid_token_requests_are_rate_limited() {
    let s = TestServer::start_with(complement_tests::ServerOptions {
        event_rate: (0.01, 2),
        ..Default::default()
    })
    .await;
    let alice = s.register("alice", "alice-password").await;
    let path = format!("/_matrix/client/v3/user/{}/openid/request_token", enc(&alice.user_id));
    for _ in 0..2 {
        let (status, body) = s.post(&path, alice.token(), json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_error(&s.post(&path, alice.token(), json!({})).await, 429, "M_LIMIT_EXCEEDED");
}
