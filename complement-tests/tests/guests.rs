//! Guest access: this server has no guest accounts, so registering as a guest is refused
//! with the spec's error.

use complement_tests::{TestServer, assert_error, json};

#[tokio::test]
async fn guest_registration_is_refused_with_m_guest_access_forbidden() {
    let s = TestServer::start().await;
    for path in ["/_matrix/client/v3/register?kind=guest", "/_matrix/client/r0/register?kind=guest"]
    {
        let res = s.post(path, None, json!({})).await;
        assert_error(&res, 403, "M_GUEST_ACCESS_FORBIDDEN");
    }
    // Ordinary registration still works.
    s.register("alice", "alice-password").await;
}
