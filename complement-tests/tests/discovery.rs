//! Discovery endpoints, CORS, unknown endpoints and the metrics endpoint.

use complement_tests::{TestServer, assert_error};

#[tokio::test]
async fn versions_lists_stable_spec_versions() {
    let s = TestServer::start().await;
    let (status, body) = s.get("/_matrix/client/versions", None).await;
    assert_eq!(status, 200);
    let versions = body["versions"].as_array().unwrap();
    assert!(versions.iter().any(|v| v == "v1.1"));
    assert!(body["unstable_features"].is_object());
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

#[tokio::test]
async fn well_known_server_names_a_host_and_port() {
    let s = TestServer::start().await;
    let (status, body) = s.get("/.well-known/matrix/server", None).await;
    assert_eq!(status, 200);
    assert!(body["m.server"].as_str().unwrap().contains(':'));
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
async fn metrics_are_exposed_in_prometheus_format() {
    let s = TestServer::start().await;
    s.get("/_matrix/client/versions", None).await;
    let res = s.client.get(format!("{}/metrics", s.base)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(text.contains("axon_http_requests_total"), "{text}");
    assert!(text.contains("route=\"/_matrix/client/versions\""), "{text}");
}

#[tokio::test]
async fn metrics_can_have_a_listener_of_their_own() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s = TestServer::start_with(complement_tests::ServerOptions {
        extra_toml: format!(
            "[metrics]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\npath = \"/m\"\n"
        ),
        ..Default::default()
    })
    .await;
    let res = s.client.get(format!("http://127.0.0.1:{port}/m")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    // Not on the main listener any more.
    assert_error(&s.get("/metrics", None).await, 404, "M_UNRECOGNIZED");
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
