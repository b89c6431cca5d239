//! End-to-end encryption through Axon with the Rust `matrix-sdk` (the SDK under Element X,
//! vodozemac underneath), as a user would live it: two clients register, chat in an encrypted
//! room and decrypt each other's messages and replies; one of them enables recovery (secret
//! storage and a server-side key backup), logs in on a second device, recovers with the
//! recovery key, so that device is cross-signed, and reads the room's history with keys
//! restored from the backup.
//!
//! The SDK is built without `automatic-room-key-forwarding`, so the second device cannot get
//! the room keys by asking the first one: it first fails to decrypt the history, and decrypts
//! it once the keys are downloaded from the backup.
//!
//! The SDK's warnings and errors are printed (shown when the test fails); `AXON_SDK_LOG`
//! takes a `tracing` filter for more (e.g. `matrix_sdk=debug`). `RUST_LOG` sets the server's
//! log level (e.g. `tower_http=debug` for a request trace).

// The SDK's futures are deep: proving them `Send` needs more than the default 128.
#![recursion_limit = "256"]

use std::future::Future;
use std::time::Duration;

use complement_tests::{TestServer, Value, json};
use matrix_sdk::config::SyncSettings;
use matrix_sdk::deserialized_responses::{TimelineEvent, TimelineEventKind};
use matrix_sdk::encryption::{BackupDownloadStrategy, EncryptionSettings};
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::api::client::account::register;
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::api::client::uiaa::{AuthData, Dummy};
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::relation::Reply;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::message::{Relation, RoomMessageEventContent};
use matrix_sdk::ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId};
use matrix_sdk::{Client, Room, RoomState};
use tokio::task::JoinHandle;

const KEYS_QUERY: &str = "/_matrix/client/v3/keys/query";
const PASSWORD: &str = "correct horse battery staple";
/// How long a step may take before the test fails.
const STEP: Duration = Duration::from_secs(30);

/// One logged-in SDK client (one device), syncing in the background.
struct Device {
    name: &'static str,
    client: Client,
    sync: JoinHandle<matrix_sdk::Result<()>>,
}

impl Device {
    fn new(name: &'static str, client: Client) -> Self {
        let syncing = client.clone();
        let sync = tokio::spawn(async move {
            syncing.sync(SyncSettings::default().timeout(Duration::from_secs(1))).await
        });
        Self { name, client, sync }
    }

    /// Fails the test if the sync loop stopped (the SDK stops it on an error).
    async fn check_syncing(&mut self) {
        if self.sync.is_finished() {
            let result = (&mut self.sync).await;
            panic!("{}: the sync loop stopped: {result:?}", self.name);
        }
    }

    /// Polls `probe` (every 200 ms, at most [`STEP`]) until it returns `Some`.
    async fn wait_for<T, F, Fut>(&mut self, what: &str, mut probe: F) -> T
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            self.check_syncing().await;
            if let Some(found) = probe(self.client.clone()).await {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: {what} did not happen within {STEP:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn room(&self, room_id: &RoomId) -> Room {
        self.client.get_room(room_id).unwrap_or_else(|| panic!("{}: no room {room_id}", self.name))
    }

    /// Waits until `event_id` can be fetched and decrypted; returns the decrypted event.
    async fn decrypted(&mut self, room_id: &RoomId, event_id: &EventId) -> Value {
        let what = format!("decrypting {event_id}");
        self.wait_for(&what, |client| {
            let (room_id, event_id) = (room_id.to_owned(), event_id.to_owned());
            async move {
                let event = client.get_room(&room_id)?.event(&event_id, None).await.ok()?;
                decrypted_json(&event)
            }
        })
        .await
    }

    async fn send_text(&self, room_id: &RoomId, content: RoomMessageEventContent) -> OwnedEventId {
        let response = self.room(room_id).send(content).await;
        response.unwrap_or_else(|e| panic!("{}: sending failed: {e}", self.name)).response.event_id
    }

    fn access_token(&self) -> String {
        self.client.access_token().expect("logged in")
    }

    /// The cross-signing keys this device holds (private parts), after the SDK's start-up
    /// tasks (device keys upload, cross-signing bootstrap, backup and recovery setup) ran.
    async fn has_cross_signing_secrets(&self) -> bool {
        self.client.encryption().wait_for_e2ee_initialization_tasks().await;
        let status = self.client.encryption().cross_signing_status().await;
        status.is_some_and(|s| s.has_master && s.has_self_signing && s.has_user_signing)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.sync.abort();
    }
}

/// The decrypted event as JSON, or `None` if it is not (yet) decrypted.
fn decrypted_json(event: &TimelineEvent) -> Option<Value> {
    match &event.kind {
        TimelineEventKind::Decrypted(decrypted) => {
            serde_json::from_str(decrypted.event.json().get()).ok()
        }
        _ => None,
    }
}

fn sdk_logging() {
    let filter = std::env::var("AXON_SDK_LOG")
        .unwrap_or_else(|_| "matrix_sdk=warn,matrix_sdk_base=warn,matrix_sdk_crypto=warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// A client of its own (fresh in-memory stores: a new device). Room keys are only downloaded
/// from the backup when the test asks.
async fn new_client(server: &TestServer) -> Client {
    let settings = EncryptionSettings {
        auto_enable_cross_signing: true,
        backup_download_strategy: BackupDownloadStrategy::Manual,
        auto_enable_backups: false,
    };
    Client::builder()
        .homeserver_url(&server.base)
        .with_encryption_settings(settings)
        .build()
        .await
        .expect("build client")
}

/// Registers through the SDK (user-interactive auth, dummy stage), which logs the client in.
async fn register(server: &TestServer, name: &'static str) -> Device {
    let client = new_client(server).await;
    let mut request = register::v3::Request::new();
    request.username = Some(name.to_owned());
    request.password = Some(PASSWORD.to_owned());
    request.initial_device_display_name = Some(format!("{name}'s first device"));
    let session = match client.matrix_auth().register(request.clone()).await {
        Ok(_) => panic!("registration must ask for user-interactive auth"),
        Err(e) => e.as_uiaa_response().and_then(|uiaa| uiaa.session.clone()),
    };
    let mut dummy = Dummy::new();
    dummy.session = session;
    request.auth = Some(AuthData::Dummy(dummy));
    client.matrix_auth().register(request).await.unwrap_or_else(|e| panic!("register {name}: {e}"));
    assert!(client.user_id().is_some(), "{name} is logged in after registering");
    Device::new(name, client)
}

async fn login(server: &TestServer, name: &'static str, user: &str) -> Device {
    let client = new_client(server).await;
    client
        .matrix_auth()
        .login_username(user, PASSWORD)
        .initial_device_display_name(name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{name}: login: {e}"));
    Device::new(name, client)
}

fn text(body: &str) -> RoomMessageEventContent {
    RoomMessageEventContent::text_plain(body)
}

fn reply(body: &str, to: &EventId) -> RoomMessageEventContent {
    let mut content = text(body);
    content.relates_to = Some(Relation::Reply(Reply::with_event_id(to.to_owned())));
    content
}

#[track_caller]
fn assert_message(event: &Value, sender: &str, body: &str, in_reply_to: Option<&EventId>) {
    assert_eq!(event["type"], "m.room.message", "decrypted type: {event}");
    assert_eq!(event["sender"], sender, "sender: {event}");
    assert_eq!(event["content"]["body"], body, "plaintext: {event}");
    let replied = &event["content"]["m.relates_to"]["m.in_reply_to"]["event_id"];
    match in_reply_to {
        Some(id) => assert_eq!(replied, id.as_str(), "reply relation: {event}"),
        None => assert!(replied.is_null(), "not a reply: {event}"),
    }
}

/// One encrypted message and its reply: `from` sends, `to` decrypts it and replies, `from`
/// decrypts the reply. Returns both event IDs with their senders and plaintexts.
async fn message_and_reply(
    from: &mut Device,
    to: &mut Device,
    room_id: &RoomId,
    body: &str,
    reply_body: &str,
) -> [(OwnedEventId, String, String, Option<OwnedEventId>); 2] {
    let (from_id, to_id) = (user_id(from), user_id(to));
    let sent = from.send_text(room_id, text(body)).await;
    let received = to.decrypted(room_id, &sent).await;
    assert_message(&received, &from_id, body, None);

    let answer = to.send_text(room_id, reply(reply_body, &sent)).await;
    let answered = from.decrypted(room_id, &answer).await;
    assert_message(&answered, &to_id, reply_body, Some(&sent));
    [
        (sent.clone(), from_id, body.to_owned(), None),
        (answer, to_id, reply_body.to_owned(), Some(sent)),
    ]
}

fn user_id(device: &Device) -> String {
    device.client.user_id().expect("logged in").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn matrix_sdk_clients_chat_encrypted_and_a_second_device_restores_history_from_backup() {
    sdk_logging();
    let server = TestServer::start().await;

    // 1. Two users register with the SDK; each bootstraps cross-signing on login.
    let mut alice = register(&server, "alice").await;
    let mut bob = register(&server, "bob").await;
    for device in [&alice, &bob] {
        assert!(device.has_cross_signing_secrets().await, "{} has cross-signing keys", device.name);
        // … and uploaded them: the server publishes them, and its device signed by them.
        let user = user_id(device);
        let body = json!({"device_keys": {&user: []}});
        let (status, keys) = server.post(KEYS_QUERY, Some(&device.access_token()), body).await;
        assert_eq!(status, 200, "{keys}");
        let self_signing = keys["self_signing_keys"][&user]["keys"].as_object();
        let self_signing = self_signing.and_then(|k| k.keys().next()).cloned();
        let self_signing = self_signing.unwrap_or_else(|| panic!("no self-signing key: {keys}"));
        assert!(keys["master_keys"][&user].is_object(), "no master key: {keys}");
        let device_id = device.client.device_id().expect("device").to_string();
        let signatures = &keys["device_keys"][&user][&device_id]["signatures"][&user];
        assert!(signatures[&self_signing].is_string(), "device not cross-signed: {keys}");
    }
    let bob_id = bob.client.user_id().expect("bob").to_owned();

    // 2. An encrypted room, bob invited; he joins.
    let mut request = create_room::v3::Request::new();
    request.name = Some("secrets".to_owned());
    request.invite = vec![bob_id.clone()];
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let room = alice.client.create_room(request).await.expect("create the encrypted room");
    let room_id: OwnedRoomId = room.room_id().to_owned();
    assert!(
        room.latest_encryption_state().await.expect("encryption state").is_encrypted(),
        "the SDK sees the room as encrypted"
    );
    bob.wait_for("the invite", |client| {
        let room_id = room_id.clone();
        async move { (client.get_room(&room_id)?.state() == RoomState::Invited).then_some(()) }
    })
    .await;
    bob.client.join_room_by_id(&room_id).await.expect("bob joins");
    alice
        .wait_for("bob's join", |client| {
            let room_id = room_id.clone();
            async move { (client.get_room(&room_id)?.joined_members_count() == 2).then_some(()) }
        })
        .await;

    // Messages and replies both ways, each decrypted by the other side.
    let mut history = Vec::new();
    history.extend(
        message_and_reply(
            &mut alice,
            &mut bob,
            &room_id,
            "Hello Bob, this is secret",
            "Got it, Alice",
        )
        .await,
    );
    history.extend(
        message_and_reply(
            &mut bob,
            &mut alice,
            &room_id,
            "Bob's turn to whisper",
            "Heard you, Bob",
        )
        .await,
    );
    // The server stores only ciphertext.
    let (status, page) = server
        .room_get(
            &complement_tests::Session {
                user_id: user_id(&alice),
                access_token: alice.access_token(),
                device_id: alice.client.device_id().expect("device").to_string(),
            },
            room_id.as_str(),
            "messages?dir=b&limit=50",
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let stored = page["chunk"].as_array().expect("chunk");
    for (event_id, _, body, _) in &history {
        let event =
            stored.iter().find(|e| e["event_id"] == event_id.as_str()).expect("stored event");
        assert_eq!(event["type"], "m.room.encrypted", "{event}");
        assert!(!event.to_string().contains(body.as_str()), "plaintext on the server: {event}");
    }

    // 3. Alice enables recovery: secret storage, a key backup, her keys uploaded to it.
    let recovery_key = alice
        .client
        .encryption()
        .recovery()
        .enable()
        .wait_for_backups_to_upload()
        .await
        .expect("enable recovery");
    alice.client.encryption().backups().wait_for_steady_state().await.expect("backup upload");
    let (status, version) =
        server.get("/_matrix/client/v3/room_keys/version", Some(&alice.access_token())).await;
    assert_eq!(status, 200, "backup version: {version}");
    // Alice's session and Bob's: every room key she has is in the backup.
    assert!(version["count"].as_u64() >= Some(2), "room keys backed up: {version}");

    // 4. A second device of alice's recovers with the recovery key: it imports the
    // cross-signing keys from secret storage and signs itself.
    let mut second = login(&server, "alice's second device", "alice").await;
    second.client.encryption().wait_for_e2ee_initialization_tasks().await;
    let second_device_id = second.client.device_id().expect("device").to_owned();
    let alice_user = second.client.user_id().expect("alice").to_owned();
    // Its device keys must be on the server before it can sign them.
    let (user, device, token) =
        (alice_user.to_string(), second_device_id.to_string(), second.access_token());
    second
        .wait_for("the second device's keys uploaded", |_| {
            let (server, user, device, token) = (&server, &user, &device, &token);
            async move {
                let body = json!({"device_keys": {user: [device]}});
                let (status, keys) = server.post(KEYS_QUERY, Some(token), body).await;
                assert_eq!(status, 200, "{keys}");
                keys["device_keys"][user].get(device).map(|_| ())
            }
        })
        .await;
    second.client.encryption().recovery().recover(&recovery_key).await.expect("recover");
    assert!(second.has_cross_signing_secrets().await, "the secrets came from secret storage");
    second
        .wait_for("the second device verified by itself", |client| async move {
            let own = client.encryption().get_own_device().await.ok()??;
            (own.is_cross_signed_by_owner() && own.is_verified()).then_some(())
        })
        .await;

    // Seen from alice's first device (verified: she trusts her own identity) and from bob
    // (signed by alice's self-signing key).
    alice
        .wait_for("the second device verified", |client| {
            let (user, device) = (alice_user.clone(), second_device_id.clone());
            async move {
                let device = client.encryption().get_device(&user, &device).await.ok()??;
                device.is_verified().then_some(())
            }
        })
        .await;
    bob.wait_for("alice's second device cross-signed", |client| {
        let (user, device) = (alice_user.clone(), second_device_id.clone());
        async move {
            let device = client.encryption().get_device(&user, &device).await.ok()??;
            device.is_cross_signed_by_owner().then_some(())
        }
    })
    .await;

    // 5. The history, read with /messages: not decryptable before the backup is used (no
    // key reached this device any other way), then decrypted with the backup's keys.
    second
        .wait_for("the room", |client| {
            let room_id = room_id.clone();
            async move { (client.get_room(&room_id)?.state() == RoomState::Joined).then_some(()) }
        })
        .await;
    let room = second.room(&room_id);
    let before = room.messages(MessagesOptions::backward()).await.expect("/messages");
    for (event_id, ..) in &history {
        let event = before
            .chunk
            .iter()
            .find(|e| e.event_id().as_ref() == Some(event_id))
            .unwrap_or_else(|| panic!("{event_id} is in the history"));
        assert!(decrypted_json(event).is_none(), "{event_id} decrypted without the backup");
    }

    second
        .client
        .encryption()
        .backups()
        .download_room_keys_for_room(&room_id)
        .await
        .expect("download the room's keys from the backup");
    let after = room.messages(MessagesOptions::backward()).await.expect("/messages");
    for (event_id, sender, body, in_reply_to) in &history {
        let event = after
            .chunk
            .iter()
            .find(|e| e.event_id().as_ref() == Some(event_id))
            .unwrap_or_else(|| panic!("{event_id} is in the history"));
        let decrypted = decrypted_json(event).unwrap_or_else(|| {
            panic!("{event_id} not decrypted with the backup's keys: {event:?}")
        });
        assert_message(&decrypted, sender, body, in_reply_to.as_deref());
    }
}
