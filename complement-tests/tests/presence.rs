//! `PUT`/`GET /presence/{userId}/status`, `set_presence` on `/sync`, and the `presence`
//! section of `/sync`.

use std::time::{Duration, Instant};

use complement_tests::{ServerOptions, Session, TestServer, Value, assert_error, enc, json};

fn status_path(user: &str) -> String {
    format!("/_matrix/client/v3/presence/{}/status", enc(user))
}

async fn set(s: &TestServer, who: &Session, body: Value) {
    let res = s.put(&status_path(&who.user_id), who.token(), body).await;
    assert_eq!(res.0, 200, "PUT presence: {}", res.1);
}

/// The `m.presence` content of `user` in a sync response, if there.
fn presence_of(sync: &Value, user: &str) -> Option<Value> {
    let events = sync["presence"]["events"].as_array().expect("presence.events");
    events.iter().find(|e| e["sender"] == user).map(|e| {
        assert_eq!(e["type"], "m.presence");
        e["content"].clone()
    })
}

fn next_batch(sync: &Value) -> String {
    sync["next_batch"].as_str().expect("next_batch").to_owned()
}

/// Alice and Bob share a room; Eve shares none with them.
async fn three(s: &TestServer) -> (Session, Session, Session) {
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let eve = s.register("eve", "eve-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    (alice, bob, eve)
}

#[tokio::test]
async fn presence_reaches_room_mates_and_never_strangers() {
    let s = TestServer::start().await;
    let (alice, bob, eve) = three(&s).await;
    set(&s, &alice, json!({"presence": "online", "status_msg": "lunch soon"})).await;

    let seen = presence_of(&s.sync(&bob, None, 0).await, &alice.user_id).expect("bob sees alice");
    assert_eq!(seen["presence"], "online");
    assert_eq!(seen["status_msg"], "lunch soon");
    assert_eq!(seen["currently_active"], true);
    assert!(seen["last_active_ago"].as_u64().is_some(), "{seen}");
    assert!(presence_of(&s.sync(&eve, None, 0).await, &alice.user_id).is_none());

    let (status, body) = s.get(&status_path(&alice.user_id), bob.token()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["presence"], "online");
    assert_eq!(body["status_msg"], "lunch soon");
    assert_eq!(body["currently_active"], true);
    assert!(body["last_active_ago"].as_u64().is_some_and(|ago| ago < 60_000), "{body}");
    assert_error(&s.get(&status_path(&alice.user_id), eve.token()).await, 403, "M_FORBIDDEN");
    let (status, own) = s.get(&status_path(&eve.user_id), eve.token()).await;
    assert_eq!(status, 200);
    assert_eq!(own["presence"], "online", "eve's own syncs made her online: {own}");
    assert_error(
        &s.get(&status_path("@nobody:localhost"), alice.token()).await,
        404,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn a_status_change_wakes_a_pending_sync() {
    let s = TestServer::start().await;
    let (alice, bob, _) = three(&s).await;
    set(&s, &alice, json!({"presence": "online"})).await;
    let since = next_batch(&s.sync(&bob, None, 0).await);
    let started = Instant::now();
    let pending = {
        let client = s.client.clone();
        let url = format!("{}/_matrix/client/v3/sync?timeout=20000&since={since}", s.base);
        let token = bob.access_token.clone();
        tokio::spawn(async move {
            client.get(url).bearer_auth(token).send().await.unwrap().json::<Value>().await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    set(&s, &alice, json!({"presence": "unavailable", "status_msg": "away"})).await;
    let body = pending.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(15), "woken, not timed out: {body}");
    let content = presence_of(&body, &alice.user_id).expect("the change");
    assert_eq!(content["presence"], "unavailable");
    assert_eq!(content["status_msg"], "away");
    assert!(content.get("currently_active").is_none(), "only sent while online: {content}");
    // Nothing changed since: the next sync has no presence of alice.
    let later = s.sync(&bob, Some(&next_batch(&body)), 0).await;
    assert!(presence_of(&later, &alice.user_id).is_none(), "{later}");
}

#[tokio::test]
async fn set_presence_on_sync() {
    let s = TestServer::start().await;
    let (alice, bob, _) = three(&s).await;
    let get = |who: &Session| {
        let path = status_path(&who.user_id);
        let token = alice.access_token.clone();
        let s = &s;
        async move { s.get(&path, Some(&token)).await }
    };
    // unavailable: sets it.
    let (status, _) =
        s.get("/_matrix/client/v3/sync?timeout=0&set_presence=unavailable", bob.token()).await;
    assert_eq!(status, 200);
    assert_eq!(get(&bob).await.1["presence"], "unavailable");
    // offline: changes nothing (bob stays unavailable; a new user stays offline).
    let (status, _) =
        s.get("/_matrix/client/v3/sync?timeout=0&set_presence=offline", bob.token()).await;
    assert_eq!(status, 200);
    assert_eq!(get(&bob).await.1["presence"], "unavailable");
    let carol = s.register("carol", "carol-password").await;
    let (status, _) =
        s.get("/_matrix/client/v3/sync?timeout=0&set_presence=offline", carol.token()).await;
    assert_eq!(status, 200);
    let (status, own) = s.get(&status_path(&carol.user_id), carol.token()).await;
    assert_eq!((status.as_u16(), own["presence"].as_str()), (200, Some("offline")));
    // The default (online).
    s.sync(&bob, None, 0).await;
    let (_, body) = get(&bob).await;
    assert_eq!(body["presence"], "online");
    assert_eq!(body["currently_active"], true);
}

#[tokio::test]
async fn only_ones_own_presence_can_be_set_and_only_to_a_known_state() {
    let s = TestServer::start().await;
    let (alice, bob, _) = three(&s).await;
    let res = s.put(&status_path(&bob.user_id), alice.token(), json!({"presence": "online"})).await;
    assert_error(&res, 403, "M_FORBIDDEN");
    let own = status_path(&alice.user_id);
    let res = s.put(&own, alice.token(), json!({"presence": "busy"})).await;
    assert_error(&res, 400, "M_INVALID_PARAM");
    let res = s.put(&own, alice.token(), json!({"status_msg": "no state"})).await;
    assert_error(&res, 400, "M_BAD_JSON");
    let long = "x".repeat(2_000);
    let res = s.put(&own, alice.token(), json!({"presence": "online", "status_msg": long})).await;
    assert_error(&res, 400, "M_TOO_LARGE");
    // Nothing of that reached Bob.
    let (_, body) = s.get(&own, bob.token()).await;
    assert!(body.get("status_msg").is_none(), "{body}");
}

#[tokio::test]
async fn presence_disabled_tracks_and_sends_nothing() {
    let s = TestServer::start_with(ServerOptions {
        extra_toml: "[presence]\nenabled = false\n".into(),
        ..ServerOptions::default()
    })
    .await;
    let (alice, bob, eve) = three(&s).await;
    set(&s, &alice, json!({"presence": "online", "status_msg": "here"})).await;
    let sync = s.sync(&bob, None, 0).await;
    assert_eq!(sync["presence"]["events"], json!([]), "{sync}");
    for viewer in [&alice, &bob, &eve] {
        let (status, body) = s.get(&status_path(&alice.user_id), viewer.token()).await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({"presence": "offline"}));
    }
    // Setting someone else's is still refused.
    let res = s.put(&status_path(&bob.user_id), alice.token(), json!({"presence": "online"})).await;
    assert_error(&res, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn a_token_from_before_a_restart_keeps_working() {
    let mut s = TestServer::start().await;
    let (alice, bob, _) = three(&s).await;
    set(&s, &alice, json!({"presence": "online", "status_msg": "before"})).await;
    let before = s.sync(&bob, None, 0).await;
    assert!(presence_of(&before, &alice.user_id).is_some());
    s.crash_and_restart().await;
    let after = s.sync(&bob, Some(&next_batch(&before)), 0).await;
    // Presence lived in memory: alice is unknown until she comes back.
    assert!(presence_of(&after, &alice.user_id).is_none(), "{after}");
    set(&s, &alice, json!({"presence": "unavailable", "status_msg": "after"})).await;
    let again = s.sync(&bob, Some(&next_batch(&after)), 0).await;
    let content = presence_of(&again, &alice.user_id).expect("the new status");
    assert_eq!(content["presence"], "unavailable");
    assert_eq!(content["status_msg"], "after");
}

#[tokio::test]
async fn a_joiner_and_the_members_see_each_others_presence() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    set(&s, &alice, json!({"presence": "online", "status_msg": "host"})).await;
    let first = s.sync(&bob, None, 0).await;
    assert!(presence_of(&first, &alice.user_id).is_none(), "strangers still");
    // After Bob went online (his first sync), so that his presence is not news by itself.
    let alice_since = next_batch(&s.sync(&alice, None, 0).await);
    assert_eq!(s.join(&bob, &room).await.0, 200);
    // Nothing changed in Alice's presence, yet Bob learns it, and Alice learns Bob's.
    let bob_after = s.sync(&bob, Some(&next_batch(&first)), 0).await;
    let content = presence_of(&bob_after, &alice.user_id).expect("alice's presence");
    assert_eq!(content["status_msg"], "host");
    let alice_after = s.sync(&alice, Some(&alice_since), 0).await;
    let content = presence_of(&alice_after, &bob.user_id).expect("bob's presence");
    assert_eq!(content["presence"], "online");
}
