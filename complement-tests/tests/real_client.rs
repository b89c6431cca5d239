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
    assert!(
        out.status.success(),
        "nio failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value =
        serde_json::from_str(stdout.trim()).expect("json from nio script");
    assert_eq!(result["whoami_user_id"], "@niouser:test.local");
    assert_eq!(result["login_user_id"], "@niouser:test.local");
    assert_eq!(result["device_id"], result["whoami_device_id"]);
}
