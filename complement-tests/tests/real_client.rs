//! Real client libraries against the real binary.

use std::process::Command;

use complement_tests::{TestServer, client_script, nio_python};

/// matrix-nio (Python) logs in with a password and calls whoami.
#[tokio::test]
async fn matrix_nio_logs_in_and_calls_whoami() {
    let python = nio_python();
    let s = TestServer::start().await;
    s.register("niouser", "nio-password").await;
    let out = Command::new(python)
        .arg(client_script("nio_login.py"))
        .args([&s.base, "niouser", "nio-password"])
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "nio failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let result: serde_json::Value =
        serde_json::from_str(stdout.trim()).expect("json from nio script");
    assert_eq!(result["whoami_user_id"], "@niouser:test.local");
    assert_eq!(result["login_user_id"], "@niouser:test.local");
    assert_eq!(result["device_id"], result["whoami_device_id"]);
}

/// Three matrix-nio clients: a DM and a group room, invites and joins seen through /sync,
/// messages both ways, and history paginated back to the room's creation.
#[tokio::test]
async fn matrix_nio_clients_chat_in_a_dm_and_a_group() {
    let python = nio_python();
    let s = TestServer::start().await;
    for user in ["alice", "bob", "carol"] {
        s.register(user, "chat-password").await;
    }
    let out = Command::new(python)
        .arg(client_script("nio_chat.py"))
        .args([&s.base, "chat-password"])
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "nio failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let result: serde_json::Value =
        serde_json::from_str(stdout.trim()).expect("json from nio script");
    assert_eq!(result["dm"], "ok");
    assert_eq!(result["group"], "ok");
    assert_eq!(
        result["group_members"],
        serde_json::json!(["@alice:test.local", "@bob:test.local", "@carol:test.local"])
    );
    assert_eq!(result["history_reaches_create"], true, "{result}");
}
