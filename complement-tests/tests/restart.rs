//! Durability: what the server acknowledged survives kill -9.

use complement_tests::{TestServer, json};

#[tokio::test]
async fn accounts_and_tokens_survive_kill_9() {
    let mut s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let path = format!("/_matrix/client/v3/devices/{}", alice.device_id);
    let (status, _) = s.put(&path, alice.token(), json!({"display_name": "Renamed"})).await;
    assert_eq!(status, 200);

    s.crash_and_restart().await;

    let (status, body) = s.get("/_matrix/client/v3/account/whoami", alice.token()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], alice.user_id);
    let (_, body) = s.get(&path, alice.token()).await;
    assert_eq!(body["display_name"], "Renamed");
    assert_eq!(s.login("alice", "alice-password").await.0, 200);
}
