//! Malformed and oversized requests get the spec's errors and change nothing.

use complement_tests::{TestServer, assert_error, json};

#[tokio::test]
async fn a_body_that_is_not_json_is_m_not_json() {
    let s = TestServer::start().await;
    let res = s.post_raw("/_matrix/client/v3/login", None, b"{not json".to_vec()).await;
    assert_error(&res, 400, "M_NOT_JSON");
}

#[tokio::test]
async fn json_of_the_wrong_shape_is_m_bad_json() {
    let s = TestServer::start().await;
    let res = s
        .post("/_matrix/client/v3/login", None, json!({"type": "m.login.password", "password": 5}))
        .await;
    assert_error(&res, 400, "M_BAD_JSON");
    let res = s.post("/_matrix/client/v3/register", None, json!(["an", "array"])).await;
    assert_error(&res, 400, "M_BAD_JSON");
}

#[tokio::test]
async fn an_oversized_body_is_m_too_large() {
    let s = TestServer::start().await; // max_body_bytes = 65536 in tests
    let big = json!({"username": "x", "password": "a".repeat(100_000)});
    let res = s.post("/_matrix/client/v3/register", None, big).await;
    assert_error(&res, 413, "M_TOO_LARGE");
}

#[tokio::test]
async fn an_oversized_chunked_body_is_m_too_large() {
    let s = TestServer::start().await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..100).map(|_| Ok(vec![b' '; 1024])).collect();
    let body = reqwest::Body::wrap_stream(futures_stream(chunks));
    let res = s.client.post(format!("{}/_matrix/client/v3/login", s.base)).body(body).send().await;
    match res {
        Ok(res) => {
            assert_eq!(res.status(), 413);
            let body: serde_json::Value = res.json().await.unwrap();
            assert_eq!(body["errcode"], "M_TOO_LARGE");
        }
        // The server may answer 413 and close while the client is still uploading; then
        // the client sees the connection end instead of the response. Anything else (the
        // body accepted, a 400) fails the test.
        Err(e) => assert!(e.is_request(), "unexpected error: {e}"),
    }
}

fn futures_stream(
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    tokio_stream::iter(chunks)
}

#[tokio::test]
async fn a_bad_request_does_not_register_anyone() {
    let s = TestServer::start().await;
    s.post_raw("/_matrix/client/v3/register", None, b"{\"username\": \"bob\", ".to_vec()).await;
    let (status, body) = s.get("/_matrix/client/v3/register/available?username=bob", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["available"], true);
}

#[tokio::test]
async fn invalid_utf8_in_a_json_body_is_m_not_json() {
    let s = TestServer::start().await;
    let body = b"{\"username\": \"b\xffb\", \"password\": \"pw-bob-1234\"}".to_vec();
    let res = s.post_raw("/_matrix/client/v3/register", None, body).await;
    assert_error(&res, 400, "M_NOT_JSON");
    // Also where the invalid bytes sit in a field no endpoint reads.
    let body = b"{\"type\": \"m.login.password\", \"x\": \"\xc3\x28\"}".to_vec();
    let res = s.post_raw("/_matrix/client/v3/login", None, body).await;
    assert_error(&res, 400, "M_NOT_JSON");
}
