//! Discovery endpoints, CORS, unknown endpoints and the metrics endpoint.

use complement_tests::{ServerOptions, TestServer, assert_error, enc, json};

/// Clients choose what to call from `/versions`: v1.3 and v1.4 send them to `/relations`
/// and `/threads` (with threaded receipts), which exist; v1.5 onwards is not claimed (but
/// v1.11, authenticated media, with MSC3916's stable flag for older clients).
/// matrix-js-sdk needs one of v1.1–v1.9.
#[tokio::test]
async fn versions_claim_only_what_is_implemented() {
    let s = TestServer::start().await;
    let (status, body) = s.get("/_matrix/client/versions", None).await;
    assert_eq!(status, 200);
    let versions = body["versions"].as_array().unwrap();
    for claimed in ["v1.1", "v1.2", "v1.3", "v1.4", "v1.11"] {
        assert!(versions.iter().any(|v| v == claimed), "{claimed}: {body}");
    }
    for unimplemented in ["v1.5", "v1.12"] {
        assert!(!versions.iter().any(|v| v == unimplemented), "{unimplemented}: {body}");
    }
    let claimed: Vec<_> = body["unstable_features"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, on)| **on == true)
        .map(|(name, _)| name.as_str())
        .collect();
    // Authenticated media, and this server's WebSocket transport of /sync (tests/sync_socket.rs).
    assert_eq!(claimed, ["io.axon.sync_ws", "org.matrix.msc3916.stable"]);
    // The endpoints v1.3 and v1.4 announce are there.
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let threads = format!("/_matrix/client/v1/rooms/{}/threads", enc(&room));
    let (status, body) = s.get(&threads, alice.token()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["chunk"], json!([]));
}

#[tokio::test]
async fn well_known_client_points_at_the_base_url() {
    let s = TestServer::start().await;
    let (status, body) = s.get("/.well-known/matrix/client", None).await;
    assert_eq!(status, 200);
    let base = body["m.homeserver"]["base_url"].as_str().unwrap();
    assert!(base.starts_with("http://"), "{base}");
    assert!(base.contains(&s.port.to_string()), "{base}");
}

/// Without federation, no other server may be sent here (Synapse answers 404 likewise when
/// federation is not set up).
#[tokio::test]
async fn well_known_server_is_not_found_without_federation() {
    let s = TestServer::start().await;
    assert_error(&s.get("/.well-known/matrix/server", None).await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn capabilities_need_a_token_and_list_room_versions() {
    let s = TestServer::start().await;
    assert_error(&s.get("/_matrix/client/v3/capabilities", None).await, 401, "M_MISSING_TOKEN");
    let alice = s.register("alice", "password-alice").await;
    let (status, body) = s.get("/_matrix/client/v3/capabilities", alice.token()).await;
    assert_eq!(status, 200);
    let caps = &body["capabilities"];
    assert_eq!(caps["m.room_versions"]["default"], "12");
    assert_eq!(caps["m.room_versions"]["available"]["1"], "stable");
    assert_eq!(caps["m.change_password"]["enabled"], true);
}

#[tokio::test]
async fn unknown_endpoints_are_unrecognized() {
    let s = TestServer::start().await;
    assert_error(&s.get("/_matrix/client/v3/no/such/thing", None).await, 404, "M_UNRECOGNIZED");
}

#[tokio::test]
async fn a_known_path_with_the_wrong_method_is_unrecognized_405() {
    let s = TestServer::start().await;
    let res = s.request(reqwest::Method::PUT, "/_matrix/client/v3/login", None, None).await;
    assert_error(&res, 405, "M_UNRECOGNIZED");
}

#[tokio::test]
async fn every_response_carries_the_cors_headers() {
    let s = TestServer::start().await;
    let res = s
        .client
        .get(format!("{}/_matrix/client/versions", s.base))
        .header("Origin", "https://app.element.io")
        .send()
        .await
        .unwrap();
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(h["access-control-allow-methods"], "GET, POST, PUT, DELETE, OPTIONS");
    assert_eq!(h["access-control-allow-headers"], "X-Requested-With, Content-Type, Authorization");
    // Errors too.
    let res = s.client.get(format!("{}/nope", s.base)).send().await.unwrap();
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn options_is_answered_without_running_the_endpoint() {
    let s = TestServer::start().await;
    // OPTIONS on an authenticated endpoint with no token succeeds: no endpoint logic ran.
    let res = s
        .client
        .request(reqwest::Method::OPTIONS, format!("{}/_matrix/client/v3/account/whoami", s.base))
        .header("Origin", "https://app.element.io")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    assert!(
        res.headers()["access-control-allow-headers"].to_str().unwrap().contains("Authorization")
    );
}

#[tokio::test]
async fn metrics_are_exposed_in_prometheus_format_on_their_own_listener() {
    let s = TestServer::start().await;
    s.get("/_matrix/client/versions", None).await;
    let url = format!("http://127.0.0.1:{}/metrics", s.metrics_port);
    let res = s.client.get(url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(text.contains("axon_http_requests_total"), "{text}");
    assert!(text.contains("route=\"/_matrix/client/versions\""), "{text}");
}

/// Metrics tell who is active when: by default they are served on loopback only
/// (127.0.0.1:9108), never on the client listener. This test binds that port, so it fails
/// if another process holds it.
#[tokio::test]
async fn metrics_are_not_served_on_the_client_listener_by_default() {
    let s = TestServer::start_with(ServerOptions {
        metrics_default_listen: true,
        ..Default::default()
    })
    .await;
    assert_error(&s.get("/metrics", None).await, 404, "M_UNRECOGNIZED");
    let res = s.client.get("http://127.0.0.1:9108/metrics").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("axon_http_requests_total"));
}

#[tokio::test]
async fn the_metrics_path_is_configurable() {
    let s = TestServer::start_with(ServerOptions {
        metrics_toml: "path = \"/m\"\n".into(),
        ..Default::default()
    })
    .await;
    let base = format!("http://127.0.0.1:{}", s.metrics_port);
    assert_eq!(s.client.get(format!("{base}/m")).send().await.unwrap().status(), 200);
    assert_eq!(s.client.get(format!("{base}/metrics")).send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn absent_features_answer_empty_not_errors() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let (status, body) = s.get("/_matrix/client/v3/account/3pid", alice.token()).await;
    assert_eq!(status, 200);
    assert_eq!(body["threepids"], serde_json::json!([]));
    let (status, body) = s.get("/_matrix/client/v3/thirdparty/protocols", alice.token()).await;
    assert_eq!((status.as_u16(), body), (200, serde_json::json!({})));
}

#[tokio::test]
async fn turn_server_is_not_found_without_a_turn_configuration() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let res = s.get("/_matrix/client/v3/voip/turnServer", alice.token()).await;
    assert_error(&res, 404, "M_NOT_FOUND");
    assert_error(&s.get("/_matrix/client/v3/voip/turnServer", None).await, 401, "M_MISSING_TOKEN");
}
