//! End-to-end encryption keys: `/keys/upload`, `/keys/query`, `/keys/claim`, and the key
//! counts in `/sync`. Test devices sign their keys with an ed25519 key of their own, in
//! canonical JSON, as clients (vodozemac) do.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use complement_tests::{Session, TestServer, Value, assert_error, json};
use ed25519_dalek::{Signer, SigningKey};

const UPLOAD: &str = "/_matrix/client/v3/keys/upload";
const QUERY: &str = "/_matrix/client/v3/keys/query";
const CLAIM: &str = "/_matrix/client/v3/keys/claim";

fn b64(bytes: &[u8]) -> String {
    STANDARD_NO_PAD.encode(bytes)
}

/// Signs `object` (without `signatures` and `unsigned`, in canonical JSON: serde_json sorts
/// keys and writes no spaces) with `key`, as `signatures.<user>.<key_id>`.
fn sign_with(key: &SigningKey, user: &str, key_id: &str, mut object: Value) -> Value {
    let mut unsigned = object.clone();
    let map = unsigned.as_object_mut().unwrap();
    map.remove("signatures");
    map.remove("unsigned");
    let signature = key.sign(serde_json::to_string(&unsigned).unwrap().as_bytes());
    object["signatures"][user][key_id] = json!(b64(&signature.to_bytes()));
    object
}

/// A client device with its ed25519 identity key.
struct Device {
    session: Session,
    key: SigningKey,
}

impl Device {
    fn new(session: Session, seed: u8) -> Self {
        Self { session, key: SigningKey::from_bytes(&[seed; 32]) }
    }

    fn key_id(&self) -> String {
        format!("ed25519:{}", self.session.device_id)
    }

    /// Signs `object` with this device's key.
    fn sign(&self, object: Value) -> Value {
        sign_with(&self.key, &self.session.user_id, &self.key_id(), object)
    }

    /// Device keys for this device, signed by it. `curve` varies the curve25519 key.
    fn device_keys(&self, curve: u8) -> Value {
        let d = &self.session.device_id;
        self.sign(json!({
            "user_id": self.session.user_id,
            "device_id": d,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                format!("curve25519:{d}"): b64(&[curve; 32]),
                format!("ed25519:{d}"): b64(self.key.verifying_key().as_bytes()),
            },
        }))
    }

    /// A signed curve25519 one-time key (`fallback` marks a fallback key).
    fn one_time_key(&self, seed: u8, fallback: bool) -> Value {
        let mut key = json!({"key": b64(&[seed; 32])});
        if fallback {
            key["fallback"] = json!(true);
        }
        self.sign(key)
    }

    fn token(&self) -> Option<&str> {
        self.session.token()
    }
}

async fn device(s: &TestServer, name: &str, seed: u8) -> Device {
    Device::new(s.register(name, &format!("{name}-password")).await, seed)
}

async fn query(s: &TestServer, asker: &Device, user: &str) -> Value {
    let (status, body) = s.post(QUERY, asker.token(), json!({"device_keys": {user: []}})).await;
    assert_eq!(status, 200, "query: {body}");
    body
}

async fn claim(s: &TestServer, asker: &Device, owner: &Device) -> Value {
    let (status, body) = s
        .post(
            CLAIM,
            asker.token(),
            json!({"one_time_keys": {&owner.session.user_id: {&owner.session.device_id: "signed_curve25519"}}}),
        )
        .await;
    assert_eq!(status, 200, "claim: {body}");
    body
}

#[tokio::test]
async fn keys_query_for_oneself_right_after_registration_succeeds() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let body = query(&s, &alice, &alice.session.user_id).await;
    assert_eq!(body["device_keys"][&alice.session.user_id], json!({}), "{body}");
}

#[tokio::test]
async fn uploaded_device_keys_are_returned_by_query_with_the_display_name() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let bob = device(&s, "bob", 2).await;
    let path = format!("/_matrix/client/v3/devices/{}", alice.session.device_id);
    assert_eq!(s.put(&path, alice.token(), json!({"display_name": "Laptop"})).await.0, 200);
    let keys = alice.device_keys(7);
    let (status, body) = s.post(UPLOAD, alice.token(), json!({"device_keys": keys})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 0, "{body}");

    let body = query(&s, &bob, &alice.session.user_id).await;
    let got = &body["device_keys"][&alice.session.user_id][&alice.session.device_id];
    assert_eq!(got["unsigned"]["device_display_name"], "Laptop", "{body}");
    let mut without_unsigned = got.clone();
    without_unsigned.as_object_mut().unwrap().remove("unsigned");
    assert_eq!(without_unsigned, keys);
}

#[tokio::test]
async fn query_lists_only_the_requested_devices() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    s.post(UPLOAD, alice.token(), json!({"device_keys": alice.device_keys(7)})).await;
    let (status, body) = s
        .post(QUERY, alice.token(), json!({"device_keys": {&alice.session.user_id: ["OTHER"]}}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["device_keys"][&alice.session.user_id], json!({}), "{body}");
}

#[tokio::test]
async fn query_reports_other_servers_as_failures_and_unknown_users_as_empty() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let (status, body) = s
        .post(
            QUERY,
            alice.token(),
            json!({"device_keys": {"@bob:elsewhere.example": [], "@nobody:localhost": []}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["failures"]["elsewhere.example"].is_object(), "{body}");
    assert!(body["device_keys"].get("@bob:elsewhere.example").is_none(), "{body}");
    let nobody = &body["device_keys"]["@nobody:localhost"];
    assert!(nobody.is_null() || *nobody == json!({}), "{body}");
}

#[tokio::test]
async fn device_keys_with_a_bad_signature_are_refused() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let mut keys = alice.device_keys(7);
    keys["algorithms"] = json!(["m.megolm.v1.aes-sha2"]); // changed after signing
    assert_error(
        &s.post(UPLOAD, alice.token(), json!({"device_keys": keys})).await,
        400,
        "M_INVALID_PARAM",
    );
    let mut unsigned = alice.device_keys(7);
    unsigned["signatures"] = json!({});
    assert_error(
        &s.post(UPLOAD, alice.token(), json!({"device_keys": unsigned})).await,
        400,
        "M_INVALID_PARAM",
    );
    // Signed by a key other than the device's ed25519 key it lists.
    let impostor = Device::new(alice.session.clone(), 9);
    let mut keys = alice.device_keys(7);
    keys.as_object_mut().unwrap().remove("signatures");
    assert_error(
        &s.post(UPLOAD, alice.token(), json!({"device_keys": impostor.sign(keys)})).await,
        400,
        "M_INVALID_PARAM",
    );
    let body = query(&s, &alice, &alice.session.user_id).await;
    assert_eq!(body["device_keys"][&alice.session.user_id], json!({}), "stored anyway: {body}");
}

#[tokio::test]
async fn device_keys_of_another_device_are_refused() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let bob = device(&s, "bob", 2).await;
    // Bob's correctly signed keys, uploaded with Alice's token.
    assert_error(
        &s.post(UPLOAD, alice.token(), json!({"device_keys": bob.device_keys(7)})).await,
        403,
        "M_FORBIDDEN",
    );
    // Keys naming another device of Alice's, signed by that device's key.
    let mut other = Device::new(alice.session.clone(), 3);
    other.session.device_id = "OTHERDEVICE".into();
    assert_error(
        &s.post(UPLOAD, alice.token(), json!({"device_keys": other.device_keys(7)})).await,
        403,
        "M_FORBIDDEN",
    );
    let body = query(&s, &bob, &bob.session.user_id).await;
    assert_eq!(body["device_keys"][&bob.session.user_id], json!({}), "{body}");
}

#[tokio::test]
async fn device_keys_cannot_be_replaced_once_uploaded() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let first = alice.device_keys(7);
    assert_eq!(s.post(UPLOAD, alice.token(), json!({"device_keys": first})).await.0, 200);
    // The same keys again (a retry) are fine.
    assert_eq!(s.post(UPLOAD, alice.token(), json!({"device_keys": first})).await.0, 200);
    assert_error(
        &s.post(UPLOAD, alice.token(), json!({"device_keys": alice.device_keys(8)})).await,
        400,
        "M_INVALID_PARAM",
    );
    let body = query(&s, &alice, &alice.session.user_id).await;
    let got = &body["device_keys"][&alice.session.user_id][&alice.session.device_id];
    assert_eq!(got["keys"], first["keys"], "{body}");
}

/// matrix-sdk uploads its device keys again, now also signed by its new self-signing key,
/// once it has bootstrapped cross-signing, and that upload races its first plain one: the
/// same keys with other signatures are a re-upload, in either order. The stored copy is kept
/// (signatures by cross-signing keys are published only through `/keys/signatures/upload`,
/// which checks them); the request's one-time keys are stored.
#[tokio::test]
async fn the_same_device_keys_with_other_signatures_are_accepted_and_the_stored_copy_kept() {
    let s = TestServer::start().await;
    for (name, seed, cross_signed_first) in [("alice", 1, false), ("bob", 2, true)] {
        let who = device(&s, name, seed).await;
        let user = &who.session.user_id;
        let plain = who.device_keys(7);
        let ssk = CrossKey::new(&who.session, "self_signing", 41);
        let cross_signed = sign_with(&ssk.key, user, &ssk.id(), plain.clone());
        let (first, second) = match cross_signed_first {
            false => (&plain, &cross_signed),
            true => (&cross_signed, &plain),
        };
        assert_eq!(s.post(UPLOAD, who.token(), json!({"device_keys": first})).await.0, 200);
        let otk = who.one_time_key(9, false);
        let body = json!({
            "device_keys": second,
            "one_time_keys": {"signed_curve25519:AAAAAQ": otk},
        });
        let (status, res) = s.post(UPLOAD, who.token(), body).await;
        assert_eq!(status, 200, "{name}: re-upload with other signatures: {res}");
        assert_eq!(res["one_time_key_counts"]["signed_curve25519"], 1, "{name}: {res}");

        let body = query(&s, &who, user).await;
        let got = &body["device_keys"][user][&who.session.device_id];
        assert_eq!(got["keys"], plain["keys"], "{name}: {body}");
        assert_eq!(got["signatures"], first["signatures"], "{name}: the stored copy: {body}");

        // Other keys under the same device are still refused, whatever their signatures.
        let changed = sign_with(&ssk.key, user, &ssk.id(), who.device_keys(8));
        assert_error(
            &s.post(UPLOAD, who.token(), json!({"device_keys": changed})).await,
            400,
            "M_INVALID_PARAM",
        );
    }
}

#[tokio::test]
async fn malformed_key_json_is_refused() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    assert_error(
        &s.post(UPLOAD, alice.token(), json!({"device_keys": {"user_id": 5}})).await,
        400,
        "M_BAD_JSON",
    );
    s.post(UPLOAD, alice.token(), json!({"device_keys": alice.device_keys(7)})).await;
    assert_error(
        &s.post(UPLOAD, alice.token(), json!({"one_time_keys": {"signed_curve25519:A": 5}})).await,
        400,
        "M_BAD_JSON",
    );
    assert_error(
        &s.post(UPLOAD, alice.token(), json!({"one_time_keys": {"signed_curve25519:A": {}}})).await,
        400,
        "M_BAD_JSON",
    );
}

#[tokio::test]
async fn a_one_time_key_with_a_bad_signature_is_refused() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let mut otk = alice.one_time_key(10, false);
    otk["key"] = json!(b64(&[11; 32]));
    let (status, body) = s
        .post(
            UPLOAD,
            alice.token(),
            json!({"device_keys": alice.device_keys(7), "one_time_keys": {"signed_curve25519:A": otk}}),
        )
        .await;
    assert_error(&(status, body), 400, "M_INVALID_PARAM");
    // Nothing of the refused upload was stored, the device keys included.
    let body = query(&s, &alice, &alice.session.user_id).await;
    assert_eq!(body["device_keys"][&alice.session.user_id], json!({}), "{body}");
}

#[tokio::test]
async fn a_reused_one_time_key_id_with_other_content_is_refused() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let otk = alice.one_time_key(10, false);
    let (status, body) = s
        .post(
            UPLOAD,
            alice.token(),
            json!({"device_keys": alice.device_keys(7), "one_time_keys": {"signed_curve25519:A": otk}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 1, "{body}");
    // The same key again is a harmless retry.
    let (status, body) =
        s.post(UPLOAD, alice.token(), json!({"one_time_keys": {"signed_curve25519:A": otk}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 1, "{body}");
    let other = alice.one_time_key(12, false);
    assert_error(
        &s.post(
            UPLOAD,
            alice.token(),
            json!({"one_time_keys": {"signed_curve25519:B": otk, "signed_curve25519:A": other}}),
        )
        .await,
        400,
        "M_INVALID_PARAM",
    );
    // Nothing of the refused upload was stored (not even key B).
    let (_, body) = s.post(UPLOAD, alice.token(), json!({})).await;
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 1, "{body}");
}

#[tokio::test]
async fn a_claimed_one_time_key_is_handed_out_once() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let bob = device(&s, "bob", 2).await;
    let otk = alice.one_time_key(10, false);
    s.post(
        UPLOAD,
        alice.token(),
        json!({"device_keys": alice.device_keys(7), "one_time_keys": {"signed_curve25519:A": otk}}),
    )
    .await;
    let body = claim(&s, &bob, &alice).await;
    let got = &body["one_time_keys"][&alice.session.user_id][&alice.session.device_id];
    assert_eq!(got["signed_curve25519:A"], otk, "{body}");
    let body = claim(&s, &bob, &alice).await;
    assert_eq!(body["one_time_keys"], json!({}), "claimed twice: {body}");
    let (_, body) = s.post(UPLOAD, alice.token(), json!({})).await;
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 0, "{body}");
}

#[tokio::test]
async fn a_claim_for_an_unknown_user_or_device_is_empty() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let (status, body) = s
        .post(
            CLAIM,
            alice.token(),
            json!({"one_time_keys": {
                "@nobody:localhost": {"DEV": "signed_curve25519"},
                &alice.session.user_id: {"NODEVICE": "signed_curve25519"},
            }}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_keys"], json!({}), "{body}");
}

#[tokio::test]
async fn concurrent_claims_of_the_last_key_get_it_once_and_then_the_fallback_key() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let bob = device(&s, "bob", 2).await;
    let carol = device(&s, "carol", 3).await;
    let otk = alice.one_time_key(10, false);
    let fallback = alice.one_time_key(20, true);
    let (status, body) = s
        .post(
            UPLOAD,
            alice.token(),
            json!({
                "device_keys": alice.device_keys(7),
                "one_time_keys": {"signed_curve25519:A": otk},
                "fallback_keys": {"signed_curve25519:F": fallback},
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sync = s.sync(&alice.session, None, 0).await;
    assert_eq!(sync["device_unused_fallback_key_types"], json!(["signed_curve25519"]), "{sync}");
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 1, "{sync}");

    let (b, c) = tokio::join!(claim(&s, &bob, &alice), claim(&s, &carol, &alice));
    let mut got: Vec<Value> = [b, c]
        .iter()
        .map(|body| body["one_time_keys"][&alice.session.user_id][&alice.session.device_id].clone())
        .collect();
    got.sort_by_key(|k| k.to_string());
    assert_eq!(
        got,
        vec![json!({"signed_curve25519:A": otk}), json!({"signed_curve25519:F": fallback})]
    );

    // The fallback key stays available, now reported as used.
    let body = claim(&s, &bob, &alice).await;
    let again = &body["one_time_keys"][&alice.session.user_id][&alice.session.device_id];
    assert_eq!(again["signed_curve25519:F"], fallback, "{body}");
    let sync = s.sync(&alice.session, None, 0).await;
    assert_eq!(sync["device_unused_fallback_key_types"], json!([]), "{sync}");
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 0, "{sync}");
}

#[tokio::test]
async fn a_logged_out_device_loses_its_keys() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let bob = device(&s, "bob", 2).await;
    s.post(
        UPLOAD,
        alice.token(),
        json!({"device_keys": alice.device_keys(7), "one_time_keys": {"signed_curve25519:A": alice.one_time_key(10, false)}}),
    )
    .await;
    let body = query(&s, &bob, &alice.session.user_id).await;
    assert!(body["device_keys"][&alice.session.user_id][&alice.session.device_id].is_object());
    assert_eq!(s.post("/_matrix/client/v3/logout", alice.token(), json!({})).await.0, 200);
    let body = query(&s, &bob, &alice.session.user_id).await;
    assert_eq!(body["device_keys"][&alice.session.user_id], json!({}), "{body}");
    assert_eq!(claim(&s, &bob, &alice).await["one_time_keys"], json!({}));
}

/// The `device_lists` of a sync since `since` (waiting up to 10 s for news).
async fn lists_since(s: &TestServer, who: &Device, since: &str) -> (Value, String) {
    let body = s.sync(&who.session, Some(since), 10_000).await;
    let next = body["next_batch"].as_str().unwrap().to_owned();
    (body["device_lists"].clone(), next)
}

fn has(list: &Value, user: &Session) -> bool {
    list.as_array().is_some_and(|a| a.iter().any(|u| u == user.user_id.as_str()))
}

async fn next_batch(s: &TestServer, who: &Device) -> String {
    s.sync(&who.session, None, 0).await["next_batch"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn new_device_keys_wake_room_members_with_device_lists_changed() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let bob = device(&s, "bob", 2).await;
    let carol = device(&s, "carol", 3).await;
    let room = s.create_room(&alice.session, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob.session, &room).await.0, 200);
    let alice_since = next_batch(&s, &alice).await;
    let carol_since = next_batch(&s, &carol).await;
    // Last: Alice's first sync made her online, which is news for Bob too.
    let bob_since = next_batch(&s, &bob).await;

    // Bob is already long-polling when Alice uploads her keys.
    let pending = {
        let s = &s;
        let bob = &bob;
        let since = bob_since.clone();
        async move { lists_since(s, bob, &since).await }
    };
    let upload = async {
        tokio::task::yield_now().await;
        let (status, body) =
            s.post(UPLOAD, alice.token(), json!({"device_keys": alice.device_keys(7)})).await;
        assert_eq!(status, 200, "{body}");
    };
    let ((lists, _), ()) = tokio::join!(pending, upload);
    assert!(has(&lists["changed"], &alice.session), "{lists}");

    let body = s.sync(&alice.session, Some(&alice_since), 0).await;
    assert!(has(&body["device_lists"]["changed"], &alice.session), "own change: {body}");
    let body = s.sync(&carol.session, Some(&carol_since), 0).await;
    assert!(!has(&body["device_lists"]["changed"], &alice.session), "no shared room: {body}");
}

#[tokio::test]
async fn joining_and_leaving_a_room_report_device_lists_changed_and_left() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let bob = device(&s, "bob", 2).await;
    let room = s.create_room(&alice.session, json!({"preset": "public_chat"})).await;
    let alice_since = next_batch(&s, &alice).await;
    let bob_since = next_batch(&s, &bob).await;
    assert_eq!(s.join(&bob.session, &room).await.0, 200);
    let (lists, alice_since) = lists_since(&s, &alice, &alice_since).await;
    assert!(has(&lists["changed"], &bob.session), "joiner: {lists}");
    let (lists, _) = lists_since(&s, &bob, &bob_since).await;
    assert!(has(&lists["changed"], &alice.session), "members of a joined room: {lists}");

    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", complement_tests::enc(&room)),
            bob.token(),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let (lists, _) = lists_since(&s, &alice, &alice_since).await;
    assert!(has(&lists["left"], &bob.session), "leaver: {lists}");
    assert!(!has(&lists["changed"], &bob.session), "{lists}");
}

/// The same news for a sync that was already waiting (a woken pass looks only at the rooms
/// announced to it), including when the user is in many other rooms.
#[tokio::test]
async fn a_waiting_sync_reports_a_join_and_a_leave_in_one_of_many_rooms() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let bob = device(&s, "bob", 2).await;
    for _ in 0..5 {
        s.create_room(&alice.session, json!({})).await;
    }
    let room = s.create_room(&alice.session, json!({"preset": "public_chat"})).await;
    let alice_since = next_batch(&s, &alice).await;
    // Parks Alice's subscription under `alice_since`: the next sync resumes it, scoped.
    let idle = s.sync(&alice.session, Some(&alice_since), 0).await;
    let alice_since = idle["next_batch"].as_str().unwrap().to_owned();

    let waiting = lists_since(&s, &alice, &alice_since);
    let join = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(s.join(&bob.session, &room).await.0, 200);
    };
    let ((lists, alice_since), ()) = tokio::join!(waiting, join);
    assert!(has(&lists["changed"], &bob.session), "joiner: {lists}");

    let waiting = lists_since(&s, &alice, &alice_since);
    let leave = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let path = format!("/_matrix/client/v3/rooms/{}/leave", complement_tests::enc(&room));
        assert_eq!(s.post(&path, bob.token(), json!({})).await.0, 200);
    };
    let ((lists, _), ()) = tokio::join!(waiting, leave);
    assert!(has(&lists["left"], &bob.session), "leaver: {lists}");
}

#[tokio::test]
async fn deleting_a_device_reports_the_device_list_changed() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let bob = device(&s, "bob", 2).await;
    let room = s.create_room(&alice.session, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob.session, &room).await.0, 200);
    let (status, body) = s.login("alice", "alice-password").await;
    assert_eq!(status, 200, "{body}");
    let second = Session::from_json(&body);
    let bob_since = next_batch(&s, &bob).await;
    assert_eq!(s.post("/_matrix/client/v3/logout", second.token(), json!({})).await.0, 200);
    let (lists, _) = lists_since(&s, &bob, &bob_since).await;
    assert!(has(&lists["changed"], &alice.session), "{lists}");
}

#[tokio::test]
async fn keys_changes_reports_changes_between_two_sync_tokens() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let bob = device(&s, "bob", 2).await;
    let room = s.create_room(&alice.session, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob.session, &room).await.0, 200);
    let from = next_batch(&s, &bob).await;
    s.post(UPLOAD, alice.token(), json!({"device_keys": alice.device_keys(7)})).await;
    let to = next_batch(&s, &bob).await;
    let (status, body) =
        s.get(&format!("/_matrix/client/v3/keys/changes?from={from}&to={to}"), bob.token()).await;
    assert_eq!(status, 200, "{body}");
    assert!(has(&body["changed"], &alice.session), "{body}");
    // Nothing changed after `to`.
    let (status, body) =
        s.get(&format!("/_matrix/client/v3/keys/changes?from={to}&to={to}"), bob.token()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], json!([]), "{body}");
    // Tokens of the older two-part form stay valid.
    let (status, body) =
        s.get("/_matrix/client/v3/keys/changes?from=s0_0&to=s0_0", bob.token()).await;
    assert_eq!(status, 200, "{body}");
}

/// A cross-signing key of `user` with usage `kind`.
struct CrossKey {
    key: SigningKey,
    user: String,
    kind: &'static str,
}

impl CrossKey {
    fn new(user: &Session, kind: &'static str, seed: u8) -> Self {
        Self { key: SigningKey::from_bytes(&[seed; 32]), user: user.user_id.clone(), kind }
    }

    fn public(&self) -> String {
        b64(self.key.verifying_key().as_bytes())
    }

    fn id(&self) -> String {
        format!("ed25519:{}", self.public())
    }

    /// The public key object, signed by `signer` (the master key) if given.
    fn json(&self, signer: Option<&CrossKey>) -> Value {
        let object = json!({
            "user_id": self.user,
            "usage": [self.kind],
            "keys": {self.id(): self.public()},
        });
        match signer {
            Some(m) => sign_with(&m.key, &m.user, &m.id(), object),
            None => object,
        }
    }
}

const SIGNING_UPLOAD: &str = "/_matrix/client/v3/keys/device_signing/upload";

/// Master, self-signing and user-signing keys of `user`, the last two signed by the first.
fn cross_signing(user: &Session, seed: u8) -> (CrossKey, Value) {
    let master = CrossKey::new(user, "master", seed);
    let ssk = CrossKey::new(user, "self_signing", seed + 1);
    let usk = CrossKey::new(user, "user_signing", seed + 2);
    let body = json!({
        "master_key": master.json(None),
        "self_signing_key": ssk.json(Some(&master)),
        "user_signing_key": usk.json(Some(&master)),
    });
    (master, body)
}

#[tokio::test]
async fn cross_signing_keys_are_shown_in_query_the_user_signing_key_only_to_its_owner() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let bob = device(&s, "bob", 2).await;
    let (_, body) = cross_signing(&alice.session, 40);
    let (status, res) = s.post(SIGNING_UPLOAD, alice.token(), body.clone()).await;
    assert_eq!(status, 200, "{res}");
    let user = &alice.session.user_id;

    let own = query(&s, &alice, user).await;
    assert_eq!(own["master_keys"][user], body["master_key"], "{own}");
    assert_eq!(own["self_signing_keys"][user], body["self_signing_key"], "{own}");
    assert_eq!(own["user_signing_keys"][user], body["user_signing_key"], "{own}");

    let other = query(&s, &bob, user).await;
    assert_eq!(other["master_keys"][user], body["master_key"], "{other}");
    assert_eq!(other["self_signing_keys"][user], body["self_signing_key"], "{other}");
    assert!(other["user_signing_keys"].get(user).is_none(), "{other}");
}

#[tokio::test]
async fn replacing_cross_signing_keys_requires_user_interactive_auth() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let (_, first) = cross_signing(&alice.session, 40);
    assert_eq!(s.post(SIGNING_UPLOAD, alice.token(), first.clone()).await.0, 200);
    // The same keys again need no authentication.
    assert_eq!(s.post(SIGNING_UPLOAD, alice.token(), first.clone()).await.0, 200);

    let (_, second) = cross_signing(&alice.session, 50);
    let (status, res) = s.post(SIGNING_UPLOAD, alice.token(), second.clone()).await;
    assert_eq!(status, 401, "{res}");
    let session = res["session"].as_str().expect("UIA session").to_owned();
    let user = &alice.session.user_id;
    let own = query(&s, &alice, user).await;
    assert_eq!(own["master_keys"][user], first["master_key"], "replaced without auth: {own}");

    let mut authed = second.clone();
    authed["auth"] = json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "alice"},
        "password": "alice-password",
        "session": session,
    });
    let (status, res) = s.post(SIGNING_UPLOAD, alice.token(), authed).await;
    assert_eq!(status, 200, "{res}");
    let own = query(&s, &alice, user).await;
    assert_eq!(own["master_keys"][user], second["master_key"], "{own}");
}

#[tokio::test]
async fn a_self_signing_key_not_signed_by_the_master_key_is_refused() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let master = CrossKey::new(&alice.session, "master", 40);
    let other = CrossKey::new(&alice.session, "master", 60);
    let ssk = CrossKey::new(&alice.session, "self_signing", 41);
    let body = json!({"master_key": master.json(None), "self_signing_key": ssk.json(Some(&other))});
    assert_error(&s.post(SIGNING_UPLOAD, alice.token(), body).await, 400, "M_INVALID_PARAM");
    let own = query(&s, &alice, &alice.session.user_id).await;
    assert!(own["master_keys"].get(&alice.session.user_id).is_none(), "stored anyway: {own}");
}

#[tokio::test]
async fn cross_signing_keys_of_another_user_are_refused() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let bob = device(&s, "bob", 2).await;
    let (_, body) = cross_signing(&bob.session, 40);
    assert_error(&s.post(SIGNING_UPLOAD, alice.token(), body).await, 403, "M_FORBIDDEN");
}

const SIGNATURES_UPLOAD: &str = "/_matrix/client/v3/keys/signatures/upload";

#[tokio::test]
async fn a_device_signed_by_the_self_signing_key_carries_the_signature_in_query() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let bob = device(&s, "bob", 2).await;
    let keys = alice.device_keys(7);
    assert_eq!(s.post(UPLOAD, alice.token(), json!({"device_keys": keys})).await.0, 200);
    let (master, body) = cross_signing(&alice.session, 40);
    assert_eq!(s.post(SIGNING_UPLOAD, alice.token(), body).await.0, 200);
    let ssk = CrossKey::new(&alice.session, "self_signing", 41);
    let user = &alice.session.user_id;
    let dev = &alice.session.device_id;

    let signed = sign_with(&ssk.key, user, &ssk.id(), keys.clone());
    // Alice's device signing her master key, with a signature that does not verify.
    let mut tampered = alice.sign(master.json(None));
    tampered["signatures"][user][alice.key_id()] = json!(b64(&[0; 64]));
    let (status, res) = s
        .post(
            SIGNATURES_UPLOAD,
            alice.token(),
            json!({user: {dev: signed, master.public(): tampered}}),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["failures"][user][master.public()]["errcode"], "M_INVALID_SIGNATURE", "{res}");
    assert!(res["failures"][user].get(dev).is_none(), "{res}");

    let other = query(&s, &bob, user).await;
    let got = &other["device_keys"][user][dev];
    assert_eq!(got["signatures"][user][ssk.id()], signed["signatures"][user][ssk.id()], "{other}");
    assert_eq!(
        got["signatures"][user][alice.key_id()],
        keys["signatures"][user][alice.key_id()],
        "{other}"
    );
}

#[tokio::test]
async fn a_signature_of_another_users_master_key_is_shown_only_to_the_signer() {
    let s = TestServer::start().await;
    let alice = device(&s, "alice", 1).await;
    let bob = device(&s, "bob", 2).await;
    let (_, body) = cross_signing(&alice.session, 40);
    assert_eq!(s.post(SIGNING_UPLOAD, alice.token(), body).await.0, 200);
    let (bob_master, body) = cross_signing(&bob.session, 50);
    assert_eq!(s.post(SIGNING_UPLOAD, bob.token(), body).await.0, 200);
    let usk = CrossKey::new(&alice.session, "user_signing", 42);

    let signed = sign_with(&usk.key, &alice.session.user_id, &usk.id(), bob_master.json(None));
    let (status, res) = s
        .post(
            SIGNATURES_UPLOAD,
            alice.token(),
            json!({&bob.session.user_id: {bob_master.public(): signed}}),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    assert!(res["failures"].as_object().is_none_or(|f| f.is_empty()), "{res}");

    let bob_id = &bob.session.user_id;
    let alice_id = &alice.session.user_id;
    let seen_by_alice = query(&s, &alice, bob_id).await;
    let sig = &seen_by_alice["master_keys"][bob_id]["signatures"][alice_id][usk.id()];
    assert_eq!(*sig, signed["signatures"][alice_id][usk.id()], "{seen_by_alice}");
    let seen_by_bob = query(&s, &bob, bob_id).await;
    assert!(
        seen_by_bob["master_keys"][bob_id]["signatures"].get(alice_id).is_none(),
        "{seen_by_bob}"
    );
}
