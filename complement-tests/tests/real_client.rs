//! Real client libraries against the real binary.

use std::process::Command;

use complement_tests::{TestServer, client_script, nio_python};

/// Runs a client script; it must succeed and print its result as a JSON line (the last one
/// starting with `{`; client libraries may log before it).
fn run_client(program: &str, script: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(program)
        .arg(client_script(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program} {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).expect("a JSON result line");
    serde_json::from_str(line).expect("JSON from the client script")
}

/// matrix-nio (Python) logs in with a password and calls whoami.
#[tokio::test]
async fn matrix_nio_logs_in_and_calls_whoami() {
    let python = nio_python();
    let s = TestServer::start().await;
    s.register("niouser", "nio-password").await;
    let python = python.to_string_lossy();
    let result = run_client(&python, "nio_login.py", &[&s.base, "niouser", "nio-password"]);
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
    let python = python.to_string_lossy();
    let result = run_client(&python, "nio_chat.py", &[&s.base, "chat-password"]);
    assert_eq!(result["dm"], "ok");
    assert_eq!(result["group"], "ok");
    assert_eq!(
        result["group_members"],
        serde_json::json!(["@alice:test.local", "@bob:test.local", "@carol:test.local"])
    );
    assert_eq!(result["history_reaches_create"], true, "{result}");
}

/// matrix-js-sdk, the SDK under Element Web: two clients run their sync loops (startClient),
/// see an invite, exchange messages both ways and paginate back to the room's creation.
#[tokio::test]
async fn matrix_js_sdk_clients_chat() {
    let modules = client_script("js/node_modules/matrix-js-sdk");
    assert!(
        modules.exists(),
        "matrix-js-sdk is not installed in {}; run `make test` (scripts/bootstrap.sh --test)",
        modules.display()
    );
    let s = TestServer::start().await;
    for user in ["alice", "bob"] {
        s.register(user, "js-password").await;
    }
    let node = std::env::var("AXON_NODE").unwrap_or_else(|_| "node".to_owned());
    let result = run_client(&node, "js/chat.mjs", &[&s.base, "js-password"]);
    assert_eq!(result["prepared"], true, "{result}");
    assert_eq!(result["invite_seen"], true, "{result}");
    assert_eq!(result["messages"], "ok", "{result}");
    assert_eq!(result["history_reaches_create"], true, "{result}");
    assert_eq!(result["room_name"], "js chat", "{result}");
}

/// matrix-js-sdk with its Rust crypto (vodozemac): device and one-time keys uploaded and
/// their signatures accepted, cross-signing bootstrapped (keys and the device's signature
/// uploaded with UIA as Element does), and the other user sees the device signed by its
/// owner's self-signing key.
#[tokio::test]
async fn matrix_js_sdk_crypto_uploads_keys_and_cross_signs() {
    let modules = client_script("js/node_modules/matrix-js-sdk");
    assert!(
        modules.exists(),
        "matrix-js-sdk is not installed in {}; run `make test` (scripts/bootstrap.sh --test)",
        modules.display()
    );
    let s = TestServer::start().await;
    for user in ["alice", "bob"] {
        s.register(user, "js-password").await;
    }
    let node = std::env::var("AXON_NODE").unwrap_or_else(|_| "node".to_owned());
    let result = run_client(&node, "js/crypto_keys.mjs", &[&s.base, "js-password"]);
    assert_eq!(result["prepared"], true, "{result}");
    assert_eq!(result["device_keys_uploaded"], true, "{result}");
    assert_eq!(result["cross_signing_ready"], true, "{result}");
    assert_eq!(result["own_device_cross_signed"], true, "{result}");
    assert_eq!(result["bob_sees_alice_device"], true, "{result}");
    assert_eq!(result["bob_sees_alice_ed25519"], true, "{result}");
    assert_eq!(result["bob_sees_alice_device_signed_by_owner"], true, "{result}");
    assert!(result["alice_one_time_keys"].as_u64().is_some_and(|n| n > 0), "{result}");
}
