//! `PUT /sendToDevice` and the `to_device` section of `/sync`.

use std::time::{Duration, Instant};

use complement_tests::{ServerOptions, Session, TestServer, Value, assert_error, json};

/// Sends `messages` (`user → device → content`) as `kind` with transaction `txn`.
async fn send(s: &TestServer, from: &Session, kind: &str, txn: &str, messages: Value) {
    let res = s
        .put(
            &format!("/_matrix/client/v3/sendToDevice/{kind}/{txn}"),
            from.token(),
            json!({ "messages": messages }),
        )
        .await;
    assert_eq!(res.0, 200, "sendToDevice: {}", res.1);
}

fn to_device(sync: &Value) -> Vec<Value> {
    sync["to_device"]["events"].as_array().expect("to_device.events").clone()
}

fn next_batch(sync: &Value) -> String {
    sync["next_batch"].as_str().expect("next_batch").to_owned()
}

async fn second_device(s: &TestServer, user: &str, password: &str) -> Session {
    let (status, body) = s.login(user, password).await;
    assert_eq!(status, 200, "login: {body}");
    Session::from_json(&body)
}

#[tokio::test]
async fn a_message_reaches_the_named_device_only() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let bob2 = second_device(&s, "bob", "bob-password").await;
    let before = next_batch(&s.sync(&bob2, None, 0).await);

    send(&s, &alice, "m.test", "t1", json!({ &bob.user_id: { &bob.device_id: {"n": 1} } })).await;

    let events = to_device(&s.sync(&bob, None, 0).await);
    assert_eq!(
        events,
        vec![json!({"sender": alice.user_id, "type": "m.test", "content": {"n": 1}})]
    );
    assert!(to_device(&s.sync(&bob2, Some(&before), 0).await).is_empty());
}

#[tokio::test]
async fn a_message_to_star_reaches_every_device_of_the_user() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let bob2 = second_device(&s, "bob", "bob-password").await;

    send(&s, &alice, "m.test", "t1", json!({ &bob.user_id: { "*": {"all": true} } })).await;

    for device in [&bob, &bob2] {
        let events = to_device(&s.sync(device, None, 0).await);
        assert_eq!(events.len(), 1, "device {}: {events:?}", device.device_id);
        assert_eq!(events[0]["content"], json!({"all": true}));
    }
}

#[tokio::test]
async fn messages_arrive_in_the_order_they_were_sent() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    for i in 0..5 {
        let messages = json!({ &bob.user_id: { &bob.device_id: {"i": i} } });
        send(&s, &alice, "m.test", &format!("t{i}"), messages).await;
    }
    let order: Vec<Value> =
        to_device(&s.sync(&bob, None, 0).await).iter().map(|e| e["content"]["i"].clone()).collect();
    assert_eq!(order, vec![json!(0), json!(1), json!(2), json!(3), json!(4)]);
}

#[tokio::test]
async fn at_most_100_messages_come_per_sync_and_the_next_sync_continues() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    for i in 0..150 {
        let messages = json!({ &bob.user_id: { &bob.device_id: {"i": i} } });
        send(&s, &alice, "m.test", &format!("t{i}"), messages).await;
    }
    let first = s.sync(&bob, None, 0).await;
    let got: Vec<Value> = to_device(&first).iter().map(|e| e["content"]["i"].clone()).collect();
    assert_eq!(got, (0..100).map(|i| json!(i)).collect::<Vec<_>>());
    // The rest comes at once, without waiting for the timeout.
    let started = Instant::now();
    let second = s.sync(&bob, Some(&next_batch(&first)), 60_000).await;
    assert!(started.elapsed() < Duration::from_secs(30), "the sync waited for its timeout");
    let got: Vec<Value> = to_device(&second).iter().map(|e| e["content"]["i"].clone()).collect();
    assert_eq!(got, (100..150).map(|i| json!(i)).collect::<Vec<_>>());
}

#[tokio::test]
async fn messages_and_the_stream_position_survive_a_restart() {
    let mut s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    send(&s, &alice, "m.test", "t1", json!({ &bob.user_id: { &bob.device_id: {"n": 1} } })).await;
    send(&s, &alice, "m.test", "t2", json!({ &bob.user_id: { &bob.device_id: {"n": 2} } })).await;
    let first = s.sync(&bob, None, 0).await;
    assert_eq!(to_device(&first).len(), 2);

    s.crash_and_restart().await;
    // Unacknowledged messages are still there.
    assert_eq!(to_device(&s.sync(&bob, None, 0).await), to_device(&first));
    // New messages get positions after the client's token, so they are delivered.
    send(&s, &alice, "m.test", "t3", json!({ &bob.user_id: { &bob.device_id: {"n": 3} } })).await;
    let next = s.sync(&bob, Some(&next_batch(&first)), 0).await;
    let got: Vec<Value> = to_device(&next).iter().map(|e| e["content"]["n"].clone()).collect();
    assert_eq!(got, vec![json!(3)]);
}

#[tokio::test]
async fn a_retried_transaction_is_delivered_once() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let messages = json!({ &bob.user_id: { &bob.device_id: {"n": 1} } });
    send(&s, &alice, "m.test", "same", messages.clone()).await;
    send(&s, &alice, "m.test", "same", messages.clone()).await;
    // The same transaction ID on another event type is another request.
    send(&s, &alice, "m.other", "same", messages).await;
    let types: Vec<Value> =
        to_device(&s.sync(&bob, None, 0).await).iter().map(|e| e["type"].clone()).collect();
    assert_eq!(types, vec![json!("m.test"), json!("m.other")]);
}

#[tokio::test]
async fn messages_are_not_lost_when_a_sync_response_is_discarded() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let since = next_batch(&s.sync(&bob, None, 0).await);
    send(&s, &alice, "m.test", "t1", json!({ &bob.user_id: { &bob.device_id: {"n": 1} } })).await;

    let lost = s.sync(&bob, Some(&since), 0).await;
    assert_eq!(to_device(&lost).len(), 1);
    // The client never saw that response and syncs from the old token again.
    let again = s.sync(&bob, Some(&since), 0).await;
    assert_eq!(to_device(&again), to_device(&lost));
}

#[tokio::test]
async fn acknowledged_messages_are_deleted() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let since = next_batch(&s.sync(&bob, None, 0).await);
    send(&s, &alice, "m.test", "t1", json!({ &bob.user_id: { &bob.device_id: {"n": 1} } })).await;

    let first = s.sync(&bob, Some(&since), 0).await;
    assert_eq!(to_device(&first).len(), 1);
    // Syncing with the next token acknowledges them: gone even for an initial sync.
    let acked = s.sync(&bob, Some(&next_batch(&first)), 0).await;
    assert!(to_device(&acked).is_empty(), "{acked}");
    assert!(to_device(&s.sync(&bob, None, 0).await).is_empty());
    assert!(to_device(&s.sync(&bob, Some(&since), 0).await).is_empty());
}

#[tokio::test]
async fn a_pending_long_poll_wakes_when_a_message_arrives() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let since = next_batch(&s.sync(&bob, None, 0).await);

    let started = Instant::now();
    let poll = s.sync(&bob, Some(&since), 60_000);
    let sender = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send(&s, &alice, "m.test", "t1", json!({ &bob.user_id: { &bob.device_id: {"n": 1} } }))
            .await;
    };
    let (woken, ()) = tokio::join!(poll, sender);
    assert!(started.elapsed() < Duration::from_secs(30), "the sync waited for its timeout");
    assert_eq!(to_device(&woken).len(), 1, "{woken}");
}

#[tokio::test]
async fn messages_to_unknown_devices_and_users_are_dropped() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let messages = json!({
        &bob.user_id: { "NOSUCHDEVICE": {"n": 1}, &bob.device_id: {"n": 2} },
        "@nobody:localhost": { "*": {"n": 3} },
        "@someone:elsewhere.example": { "DEV": {"n": 4} },
    });
    send(&s, &alice, "m.test", "t1", messages).await;
    let events = to_device(&s.sync(&bob, None, 0).await);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["content"], json!({"n": 2}));
}

#[tokio::test]
async fn a_request_for_too_many_devices_is_refused() {
    let s = TestServer::start_with(ServerOptions {
        extra_limits: "to_device_max_messages = 3".into(),
        ..ServerOptions::default()
    })
    .await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let path = "/_matrix/client/v3/sendToDevice/m.test/t1";
    let four = json!({ &bob.user_id: {"A": {}, "B": {}, "C": {}, &bob.device_id: {"n": 1}} });
    let res = s.put(path, alice.token(), json!({ "messages": four })).await;
    assert_error(&res, 400, "M_TOO_LARGE");

    // `*` counts as the devices it stands for.
    for _ in 0..3 {
        second_device(&s, "bob", "bob-password").await;
    }
    let star = json!({ &bob.user_id: {"*": {"n": 2}} });
    let res = s.put(path, alice.token(), json!({ "messages": star })).await;
    assert_error(&res, 400, "M_TOO_LARGE");
    assert!(to_device(&s.sync(&bob, None, 0).await).is_empty());
}

/// A device that does not sync keeps at most `to_device_max_pending` messages; past it, its
/// messages are dropped while the request still succeeds and reaches the other devices.
#[tokio::test]
async fn a_full_device_queue_drops_messages_for_it_only_until_it_syncs() {
    let s = TestServer::start_with(ServerOptions {
        extra_limits: "to_device_max_pending = 3".into(),
        ..ServerOptions::default()
    })
    .await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let carol = s.register("carol", "carol-password").await;
    let contents = |sync: &Value| -> Vec<Value> {
        to_device(sync).iter().map(|e| e["content"]["n"].clone()).collect()
    };
    // Carol syncs after each request (each sync acknowledging the previous one's messages),
    // so her queue never fills and she gets all five; Bob never syncs.
    let mut carol_since = next_batch(&s.sync(&carol, None, 0).await);
    for n in 1..=5 {
        let messages = json!({
            &bob.user_id: { &bob.device_id: {"n": n} },
            &carol.user_id: { "*": {"n": n} },
        });
        send(&s, &alice, "m.test", &format!("t{n}"), messages).await;
        let sync = s.sync(&carol, Some(&carol_since), 0).await;
        assert_eq!(contents(&sync), vec![json!(n)]);
        carol_since = next_batch(&sync);
    }
    // Bob's queue kept the first three; the last two were dropped.
    let first = s.sync(&bob, None, 0).await;
    assert_eq!(contents(&first), vec![json!(1), json!(2), json!(3)]);

    // Once Bob's sync acknowledges them, his queue takes messages again.
    let after = next_batch(&s.sync(&bob, Some(&next_batch(&first)), 0).await);
    send(&s, &alice, "m.test", "t6", json!({ &bob.user_id: { &bob.device_id: {"n": 6} } })).await;
    assert_eq!(contents(&s.sync(&bob, Some(&after), 0).await), vec![json!(6)]);
}

#[tokio::test]
async fn a_non_object_message_is_refused() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let res = s
        .put(
            "/_matrix/client/v3/sendToDevice/m.test/t1",
            alice.token(),
            json!({"messages": { &bob.user_id: { &bob.device_id: [1, 2] } }}),
        )
        .await;
    assert_error(&res, 400, "M_BAD_JSON");
    assert!(to_device(&s.sync(&bob, None, 0).await).is_empty());
}

#[tokio::test]
async fn a_deleted_devices_messages_are_gone() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let bob2 = second_device(&s, "bob", "bob-password").await;
    let messages = json!({ &bob.user_id: { &bob2.device_id: {"n": 1} } });
    send(&s, &alice, "m.test", "t1", messages).await;

    let (status, _) = s.post("/_matrix/client/v3/logout", bob2.token(), json!({})).await;
    assert_eq!(status, 200);
    // The same device ID logged in again is a new device with nothing pending.
    let (status, body) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "bob"},
                "password": "bob-password",
                "device_id": bob2.device_id,
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let again = Session::from_json(&body);
    assert_eq!(again.device_id, bob2.device_id);
    assert!(to_device(&s.sync(&again, None, 0).await).is_empty());
    // Messages to a deleted device are dropped, not kept for a later device of that ID.
    let (status, _) = s.post("/_matrix/client/v3/logout", again.token(), json!({})).await;
    assert_eq!(status, 200);
    send(&s, &alice, "m.test", "t2", json!({ &bob.user_id: { &bob2.device_id: {"n": 2} } })).await;
    let (_, body) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "bob"},
                "password": "bob-password",
                "device_id": bob2.device_id,
            }),
        )
        .await;
    let third = Session::from_json(&body);
    assert!(to_device(&s.sync(&third, None, 0).await).is_empty());
}

#[tokio::test]
async fn a_new_device_with_a_deleted_devices_id_starts_its_transactions_afresh() {
    let s = TestServer::start().await;
    s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let alice2 = second_device(&s, "alice", "alice-password").await;
    let messages = json!({ &bob.user_id: { &bob.device_id: {"n": 1} } });
    send(&s, &alice2, "m.test", "t1", messages).await;

    let (status, _) = s.post("/_matrix/client/v3/logout", alice2.token(), json!({})).await;
    assert_eq!(status, 200);
    let (status, body) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "alice"},
                "password": "alice-password",
                "device_id": alice2.device_id,
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let again = Session::from_json(&body);
    send(&s, &again, "m.test", "t1", json!({ &bob.user_id: { &bob.device_id: {"n": 2} } })).await;
    let got: Vec<Value> =
        to_device(&s.sync(&bob, None, 0).await).iter().map(|e| e["content"]["n"].clone()).collect();
    assert_eq!(got, vec![json!(1), json!(2)]);
}
