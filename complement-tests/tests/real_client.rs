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

/// Two matrix-nio clients: Bob sees Alice online with her status message, typing, then her
/// message, and the typing stop.
#[tokio::test]
async fn matrix_nio_sees_presence_and_typing() {
    let python = nio_python();
    let s = TestServer::start().await;
    for user in ["alice", "bob"] {
        s.register(user, "chat-password").await;
    }
    let python = python.to_string_lossy();
    let result = run_client(&python, "nio_presence_typing.py", &[&s.base, "chat-password"]);
    assert_eq!(result["presence"], "online", "{result}");
    assert_eq!(result["status_msg"], "writing tests");
    assert_eq!(result["currently_active"], true);
    assert_eq!(result["typing"], serde_json::json!(["@alice:test.local"]));
    assert_eq!(result["message"], "done typing");
    assert_eq!(result["typing_after"], serde_json::json!([]));
}

/// matrix-nio, the Messenger features around a conversation: bob sees alice online with her
/// status message, then typing, then her message; his read receipt reaches alice's client;
/// a user who shares no room with alice never sees her presence.
#[tokio::test]
async fn matrix_nio_clients_see_presence_typing_and_read_receipts() {
    let python = nio_python();
    let s = TestServer::start().await;
    for user in ["alice", "bob", "eve"] {
        s.register(user, "presence-password").await;
    }
    let python = python.to_string_lossy();
    let result = run_client(&python, "nio_presence.py", &[&s.base, "presence-password"]);
    assert_eq!(result["presence"], "online", "{result}");
    assert_eq!(result["status_msg"], "at my desk", "{result}");
    assert_eq!(result["currently_active"], true, "{result}");
    assert_eq!(result["typing_seen"], true, "{result}");
    assert_eq!(result["message_seen"], true, "{result}");
    assert_eq!(result["receipt_seen"], true, "{result}");
    assert_eq!(result["stranger_sees_presence"], false, "{result}");
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

/// matrix-js-sdk with `threadSupport` (as Element Web): Bob's reaction, Alice's edit and
/// Alice's thread reply appear in the other client as the user sees them (the reaction on
/// the message, the edited content, the thread holding the reply once), a second identical
/// reaction is refused, and a client syncing afresh sees the same through the server's
/// bundled aggregations and `/threads`.
#[tokio::test]
async fn matrix_js_sdk_clients_react_edit_and_reply_in_threads() {
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
    let result = run_client(&node, "js/relations.mjs", &[&s.base, "js-password"]);
    assert_eq!(result["threads_supported"], true, "{result}");
    assert_eq!(result["reaction"]["keys"], serde_json::json!([["👍", 1]]), "{result}");
    assert_eq!(result["reaction"]["id_seen"], true, "{result}");
    assert_eq!(result["duplicate"], "M_DUPLICATE_ANNOTATION", "{result}");
    assert_eq!(result["edit_seen_by_bob"], true, "{result}");
    assert_eq!(result["bob_thread"]["replies"], serde_json::json!(["in the thread"]), "{result}");
    assert_eq!(result["bob_thread"]["length"], 1, "one reply, counted once: {result}");
    assert_eq!(result["bob_thread"]["root_in_main_timeline"], true, "{result}");
    assert_eq!(result["bob_thread"]["reply_not_in_main_timeline"], true, "{result}");
    assert_eq!(result["fresh"]["original_body"], "edited", "{result}");
    assert_eq!(result["fresh"]["thread_replies"], serde_json::json!(["in the thread"]), "{result}");
    assert_eq!(result["fresh"]["thread_length"], 1, "{result}");
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

/// End-to-end encryption with Element's SDK: two matrix-js-sdk clients with their Rust crypto
/// (vodozemac) share a room with `m.room.encryption` (Megolm) and exchange messages both ways,
/// then encrypted replies both ways. Each message is `m.room.encrypted` on the wire and on the
/// server (which never sees the text), and the other side decrypts it to the text sent, from
/// the sender device's keys: the room keys reached it as Olm to-device messages set up through
/// /keys/query and /keys/claim.
#[tokio::test]
async fn matrix_js_sdk_clients_exchange_encrypted_messages() {
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
    let result = run_client(&node, "js/encrypted_chat.mjs", &[&s.base, "js-password"]);
    assert_eq!(result["prepared"], true, "{result}");
    assert_eq!(result["alice_room_encrypted"], true, "{result}");
    assert_eq!(result["bob_room_encrypted"], true, "{result}");
    for (step, body, reply_to) in [
        ("alice_to_bob", "a secret from alice", None),
        ("bob_to_alice", "a secret from bob", None),
        ("alice_to_bob_again", "second secret from alice", Some("bob_to_alice")),
        ("bob_to_alice_again", "second secret from bob", Some("alice_to_bob_again")),
    ] {
        let m = &result[step];
        let replied_to =
            reply_to.map_or(serde_json::Value::Null, |r| result[r]["event_id"].clone());
        assert_eq!(m["in_reply_to"], replied_to, "{step}: {result}");
        assert_eq!(m["same_event"], true, "{step}: {result}");
        assert_eq!(m["decrypted_body"], body, "{step}: {result}");
        assert_eq!(m["wire_type"], "m.room.encrypted", "{step}: {result}");
        assert_eq!(m["server_type"], "m.room.encrypted", "{step}: {result}");
        assert_eq!(m["server_algorithm"], "m.megolm.v1.aes-sha2", "{step}: {result}");
        assert_eq!(m["server_sees_plaintext"], false, "{step}: {result}");
        assert_eq!(m["sender_keys_match"], true, "{step}: {result}");
    }
}

/// matrix-nio: bob's read receipt (threaded `main`, as nio sends it) reaches alice's client;
/// his private receipt reaches his own client only.
#[tokio::test]
async fn matrix_nio_sees_read_receipts() {
    let python = nio_python();
    let s = TestServer::start().await;
    for user in ["alice", "bob"] {
        s.register(user, "chat-password").await;
    }
    let python = python.to_string_lossy();
    let result = run_client(&python, "nio_receipts.py", &[&s.base, "chat-password"]);
    assert_eq!(result["public"], serde_json::json!({"type": "m.read", "thread_id": "main"}));
    assert_eq!(result["private_to_owner"], "m.read.private", "{result}");
    assert_eq!(result["private_leaked"], false, "{result}");
}

/// Two matrix-nio clients share media: an m.image uploaded by Alice, downloaded with a
/// thumbnail by Bob (authenticated media endpoints), and an encrypted attachment (m.file
/// with `file` info) that Bob downloads as ciphertext and decrypts.
#[tokio::test]
async fn matrix_nio_clients_share_an_image_and_an_encrypted_file() {
    let python = nio_python();
    let s = TestServer::start().await;
    for user in ["alice", "bob"] {
        s.register(user, "media-password").await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let image_path = dir.path().join("photo.png");
    let png = complement_tests::media::image_bytes(640, 480, image::ImageFormat::Png);
    std::fs::write(&image_path, &png).expect("write the image");
    let python = python.to_string_lossy();
    let image_arg = image_path.to_string_lossy();
    let result =
        run_client(&python, "nio_media.py", &[&s.base, "media-password", image_arg.as_ref()]);
    assert_eq!(result["image_identical"], true, "{result}");
    assert_eq!(result["image_content_type"], "image/png", "{result}");
    assert_eq!(result["thumbnail_type"], "image/png", "{result}");
    let thumb = std::fs::read(dir.path().join("photo.png.thumb")).expect("the thumbnail");
    assert_eq!(complement_tests::media::decode_dims(&thumb), (96, 96));
    assert_eq!(result["ciphertext_differs"], true, "{result}");
    assert_eq!(result["decrypted_identical"], true, "{result}");
}

/// matrix-nio: alice finds her room-mate bob in the user directory by fragments of the
/// display name he set with nio (accents folded), then searches his messages, newest first,
/// paging with `next_batch`, with his profile in the results' context.
#[tokio::test]
async fn matrix_nio_searches_the_user_directory_and_messages() {
    let python = nio_python();
    let s = TestServer::start().await;
    for user in ["alice", "bob"] {
        s.register(user, "search-password").await;
    }
    let python = python.to_string_lossy();
    let result = run_client(&python, "nio_search.py", &[&s.base, "search-password"]);
    assert_eq!(
        result["directory"],
        serde_json::json!([["@bob:test.local", "Bartholomew Ñandú"]]),
        "{result}"
    );
    let expected: Vec<String> = (0..5).rev().map(|i| format!("the quokka number {i}")).collect();
    assert_eq!(result["messages"], serde_json::json!(expected), "{result}");
    assert_eq!(result["profile"]["displayname"], "Bartholomew Ñandú", "{result}");
}
