//! An encrypted attachment through Axon with the Rust `matrix-sdk` (the SDK under Element X):
//! Alice sends an image into an encrypted room (the SDK encrypts the file before uploading
//! it and sends `m.image` with `file` info inside a Megolm-encrypted event); Bob decrypts the
//! event, downloads the file through the authenticated media endpoints (the SDK uses them
//! because `/versions` lists v1.11; the legacy ones are frozen for new media) and decrypts
//! it. The server only ever holds ciphertext.

// The SDK's futures are deep: proving them `Send` needs more than the default 128.
#![recursion_limit = "256"]

use std::future::Future;
use std::time::Duration;

use complement_tests::media::{AUTH_DOWNLOAD, image_bytes, parse_mxc};
use complement_tests::{TestServer, Value};
use matrix_sdk::attachment::AttachmentConfig;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::deserialized_responses::TimelineEventKind;
use matrix_sdk::encryption::EncryptionSettings;
use matrix_sdk::ruma::api::client::account::register;
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::api::client::uiaa::{AuthData, Dummy};
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::message::{MessageType, RoomMessageEventContent};
use matrix_sdk::ruma::{OwnedRoomId, RoomId};
use matrix_sdk::{Client, RoomState};
use tokio::task::JoinHandle;

const PASSWORD: &str = "correct horse battery staple";
const STEP: Duration = Duration::from_secs(30);

struct Device {
    name: &'static str,
    client: Client,
    sync: JoinHandle<matrix_sdk::Result<()>>,
}

impl Device {
    async fn register(server: &TestServer, name: &'static str) -> Self {
        let client = Client::builder()
            .homeserver_url(&server.base)
            .with_encryption_settings(EncryptionSettings {
                auto_enable_cross_signing: true,
                ..Default::default()
            })
            .build()
            .await
            .expect("build client");
        let mut request = register::v3::Request::new();
        request.username = Some(name.to_owned());
        request.password = Some(PASSWORD.to_owned());
        let session = match client.matrix_auth().register(request.clone()).await {
            Ok(_) => panic!("registration must ask for user-interactive auth"),
            Err(e) => e.as_uiaa_response().and_then(|uiaa| uiaa.session.clone()),
        };
        let mut dummy = Dummy::new();
        dummy.session = session;
        request.auth = Some(AuthData::Dummy(dummy));
        client.matrix_auth().register(request).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        client.encryption().wait_for_e2ee_initialization_tasks().await;
        let syncing = client.clone();
        let sync = tokio::spawn(async move {
            syncing.sync(SyncSettings::default().timeout(Duration::from_secs(1))).await
        });
        Self { name, client, sync }
    }

    async fn wait_for<T, F, Fut>(&mut self, what: &str, mut probe: F) -> T
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            if self.sync.is_finished() {
                let result = (&mut self.sync).await;
                panic!("{}: the sync loop stopped: {result:?}", self.name);
            }
            if let Some(found) = probe(self.client.clone()).await {
                return found;
            }
            assert!(tokio::time::Instant::now() < deadline, "{}: {what} timed out", self.name);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn joined(&self, room_id: &RoomId) -> impl Future<Output = Option<()>> + use<> {
        let (client, room_id) = (self.client.clone(), room_id.to_owned());
        async move { (client.get_room(&room_id)?.state() == RoomState::Joined).then_some(()) }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.sync.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn matrix_sdk_sends_and_decrypts_an_encrypted_image() {
    let server = TestServer::start().await;
    let mut alice = Device::register(&server, "alice").await;
    let mut bob = Device::register(&server, "bob").await;
    let bob_id = bob.client.user_id().expect("bob").to_owned();

    let mut request = create_room::v3::Request::new();
    request.invite = vec![bob_id];
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let room = alice.client.create_room(request).await.expect("create the encrypted room");
    let room_id: OwnedRoomId = room.room_id().to_owned();
    bob.wait_for("the invite", |client| {
        let room_id = room_id.clone();
        async move { (client.get_room(&room_id)?.state() == RoomState::Invited).then_some(()) }
    })
    .await;
    bob.client.join_room_by_id(&room_id).await.expect("bob joins");
    let probe = bob.joined(&room_id);
    probe.await.expect("bob joined");
    alice
        .wait_for("bob's join", |client| {
            let room_id = room_id.clone();
            async move { (client.get_room(&room_id)?.joined_members_count() == 2).then_some(()) }
        })
        .await;

    let png = image_bytes(320, 200, image::ImageFormat::Png);
    let sent = room
        .send_attachment("secret.png", &mime::IMAGE_PNG, png.clone(), AttachmentConfig::new())
        .await
        .expect("send the attachment");
    let event_id = sent.event_id;

    // Bob decrypts the event: an m.image whose file is encrypted (no plain `url`).
    let decrypted: Value = bob
        .wait_for("decrypting the image event", |client| {
            let (room_id, event_id) = (room_id.clone(), event_id.clone());
            async move {
                let event = client.get_room(&room_id)?.event(&event_id, None).await.ok()?;
                match &event.kind {
                    TimelineEventKind::Decrypted(d) => {
                        serde_json::from_str(d.event.json().get()).ok()
                    }
                    _ => None,
                }
            }
        })
        .await;
    let content = &decrypted["content"];
    assert_eq!(content["msgtype"], "m.image", "{decrypted}");
    assert!(content["url"].is_null(), "an encrypted attachment has no plain url: {decrypted}");
    let mxc = content["file"]["url"].as_str().expect("file.url").to_owned();

    // The server holds ciphertext only.
    let (server_name, media_id) = parse_mxc(&mxc);
    let raw = server
        .client
        .get(format!("{}{AUTH_DOWNLOAD}/{server_name}/{media_id}", server.base))
        .bearer_auth(bob.client.access_token().expect("token"))
        .send()
        .await
        .expect("download");
    assert_eq!(raw.status(), 200);
    let ciphertext = raw.bytes().await.expect("body");
    assert_eq!(ciphertext.len(), png.len(), "AES-CTR keeps the length");
    assert_ne!(&ciphertext[..], &png[..], "the stored file is encrypted");

    // Bob's SDK downloads and decrypts it.
    let parsed: RoomMessageEventContent =
        serde_json::from_value(content.clone()).expect("an m.room.message content");
    let MessageType::Image(image) = parsed.msgtype else { panic!("not an image: {decrypted}") };
    let file = bob.client.media().get_file(&image, false).await.expect("download and decrypt");
    assert_eq!(file.as_deref(), Some(&png[..]), "decrypted bytes equal the original");
}
