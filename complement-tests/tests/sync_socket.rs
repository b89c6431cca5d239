//! The WebSocket transport of `/sync` (docs/websocket.md): frames are sync responses, pushed
//! as things happen; to-device messages are deleted only once acknowledged.

use std::time::Duration;

use complement_tests::{ServerOptions, Session, TestServer, Value, assert_error, enc, json};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, Message};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const PATH: &str = "/_matrix/client/unstable/io.axon.sync_ws/sync";

fn url(s: &TestServer, query: &str) -> String {
    format!("{}{PATH}?{query}", s.base.replacen("http://", "ws://", 1))
}

async fn connect(s: &TestServer, who: &Session, query: &str) -> Socket {
    let query = format!("access_token={}&{query}", who.access_token);
    let (socket, response) =
        tokio_tungstenite::connect_async(url(s, &query)).await.expect("websocket handshake");
    assert_eq!(response.status(), 101);
    socket
}

/// The next sync response on the socket (pings skipped), within 10 s.
async fn frame(socket: &mut Socket) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("a frame within 10 s")
            .expect("the connection is open")
            .expect("a valid frame");
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).expect("JSON frame"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Frames until one satisfies `done` (within 10 s in all).
async fn frame_until(socket: &mut Socket, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let f = tokio::time::timeout_at(deadline, frame(socket)).await.expect("the frame in 10 s");
        if done(&f) {
            return f;
        }
    }
}

/// The code of the close frame that ends the connection (within 10 s); any other frame but
/// a ping fails the test.
async fn close_code(socket: &mut Socket) -> u16 {
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    });
    closed.await.expect("the connection is closed")
}

fn timeline(sync: &Value, room: &str) -> Vec<Value> {
    sync["rooms"]["join"][room]["timeline"]["events"].as_array().cloned().unwrap_or_default()
}

fn bodies(sync: &Value, room: &str) -> Vec<String> {
    timeline(sync, room)
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

fn to_device(sync: &Value) -> Vec<Value> {
    sync["to_device"]["events"].as_array().cloned().unwrap_or_default()
}

/// The upgrade's HTTP error, as a `(status, body)` pair.
async fn refused(s: &TestServer, query: &str) -> (u16, Value) {
    match tokio_tungstenite::connect_async(url(s, query)).await {
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            (response.status().as_u16(), serde_json::from_slice(&body).expect("JSON error"))
        }
        Ok(_) => panic!("the handshake of {query:?} succeeded"),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn frames_carry_the_sync_loop_and_messages_arrive_as_sent() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    s.send_text(&alice, &room, "t0", "before").await;

    let mut socket = connect(&s, &bob, "").await;
    let initial = frame(&mut socket).await;
    assert!(initial["next_batch"].is_string(), "{initial}");
    assert_eq!(bodies(&initial, &room), vec!["before"], "the initial sync comes first");

    // Each message arrives in a frame of its own (nothing else is happening), in order.
    let mut previous = initial["next_batch"].as_str().unwrap().to_owned();
    for i in 0..3 {
        let body = format!("live {i}");
        assert_eq!(s.send_text(&alice, &room, &format!("t{}", i + 1), &body).await.0, 200);
        let f = frame_until(&mut socket, |f| !timeline(f, &room).is_empty()).await;
        assert_eq!(bodies(&f, &room), vec![body.clone()], "{f}");
        // The frame is what a long-poll from the previous frame's token answers.
        let polled = s.sync(&bob, Some(&previous), 0).await;
        assert_eq!(bodies(&polled, &room), vec![body]);
        assert_eq!(timeline(&polled, &room)[0]["event_id"], timeline(&f, &room)[0]["event_id"]);
        previous = f["next_batch"].as_str().unwrap().to_owned();
    }

    // Ephemeral streams ride the same frames: typing.
    let typing = format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id));
    let res = s.put(&typing, alice.token(), json!({"typing": true, "timeout": 10000})).await;
    assert_eq!(res.0, 200, "{}", res.1);
    let f = frame_until(&mut socket, |f| {
        f["rooms"]["join"][&room]["ephemeral"]["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["type"] == "m.typing"))
    })
    .await;
    let typing = &f["rooms"]["join"][&room]["ephemeral"]["events"];
    assert!(typing.to_string().contains(&alice.user_id), "{typing}");
}

#[tokio::test]
async fn a_connection_resumes_from_since_with_its_filter() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    s.send_text(&alice, &room, "t1", "one").await;
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    s.send_text(&alice, &room, "t2", "two").await;
    s.send_text(&alice, &room, "t3", "three").await;

    let filter = enc(&json!({"room": {"timeline": {"limit": 1}}}).to_string());
    let mut socket = connect(&s, &alice, &format!("since={since}&filter={filter}")).await;
    let f = frame(&mut socket).await;
    assert_eq!(bodies(&f, &room), vec!["three"], "only what came after since, as filtered");
    assert_eq!(f["rooms"]["join"][&room]["timeline"]["limited"], true);
    // The sender's own device sees its transaction ID, as on /sync.
    assert_eq!(timeline(&f, &room)[0]["unsigned"]["transaction_id"], "t3");
}

#[tokio::test]
async fn to_device_messages_stay_until_acknowledged() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let start = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();

    let mut socket = connect(&s, &bob, &format!("since={start}")).await;
    let send = |txn: &'static str, n: u64| {
        let (s, alice, bob) = (&s, &alice, &bob);
        async move {
            let path = format!("/_matrix/client/v3/sendToDevice/m.test/{txn}");
            let body = json!({"messages": {&bob.user_id: {&bob.device_id: {"n": n}}}});
            assert_eq!(s.put(&path, alice.token(), body).await.0, 200);
        }
    };
    send("a", 1).await;
    let first = frame_until(&mut socket, |f| !to_device(f).is_empty()).await;
    assert_eq!(to_device(&first)[0]["content"]["n"], 1);
    drop(socket);

    // Not acknowledged: a new connection from the same `since` gets it again.
    let mut socket = connect(&s, &bob, &format!("since={start}")).await;
    let again = frame_until(&mut socket, |f| !to_device(f).is_empty()).await;
    assert_eq!(to_device(&again), to_device(&first));

    // Acknowledged by a frame: gone, even for a connection from the old `since`.
    let ack = json!({"ack": again["next_batch"]}).to_string();
    socket.send(Message::Text(ack.into())).await.unwrap();
    send("b", 2).await;
    let second = frame_until(&mut socket, |f| !to_device(f).is_empty()).await;
    assert_eq!(to_device(&second)[0]["content"]["n"], 2, "the next message, not the first");
    // A clean close: the server applies the frames sent before it, then ends.
    socket.close(None).await.unwrap();
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = socket.next().await {}
    });
    drained.await.expect("the server ends the connection");
    let mut socket = connect(&s, &bob, &format!("since={start}")).await;
    let after_ack = frame(&mut socket).await;
    let got: Vec<Value> = to_device(&after_ack).iter().map(|e| e["content"]["n"].clone()).collect();
    assert_eq!(got, vec![json!(2)], "message 1 was acknowledged, message 2 was not");
}

#[tokio::test]
async fn the_upgrade_is_refused_with_the_spec_errors() {
    let s = TestServer::start().await;
    let bob = s.register("bob", "bob-password").await;
    let (status, body) = refused(&s, "").await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_MISSING_TOKEN")), "{body}");
    let (status, body) = refused(&s, "access_token=nope").await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")), "{body}");
    let token = &bob.access_token;
    let (status, body) = refused(&s, &format!("access_token={token}&since=garbage")).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
    let (status, body) = refused(&s, &format!("access_token={token}&filter=unknown")).await;
    assert_eq!(status, 400, "{body}");
    // A filter that is not JSON: the socket answers as /sync does.
    let bad = "filter=%7Bnot%20json";
    let (status, body) = refused(&s, &format!("access_token={token}&{bad}")).await;
    let polled = s.get(&format!("/_matrix/client/v3/sync?{bad}"), bob.token()).await;
    assert_eq!((status, &body["errcode"]), (polled.0.as_u16(), &polled.1["errcode"]));
    assert_eq!(status, 400, "{body}");
    // A plain GET without the upgrade headers is not a sync.
    let res = s.get(PATH, bob.token()).await;
    assert_error(&res, 400, "M_UNKNOWN");
}

#[tokio::test]
async fn a_user_connects_at_most_the_configured_number_of_devices() {
    let s = TestServer::start_with(ServerOptions {
        extra_limits: "sync_sockets_per_user = 2".into(),
        ..ServerOptions::default()
    })
    .await;
    let first = s.register("bob", "bob-password").await;
    let mut devices = vec![first];
    for _ in 0..2 {
        let (status, body) = s.login("bob", "bob-password").await;
        assert_eq!(status, 200, "{body}");
        devices.push(Session::from_json(&body));
    }
    let mut one = connect(&s, &devices[0], "").await;
    frame(&mut one).await;
    let mut two = connect(&s, &devices[1], "").await;
    frame(&mut two).await;
    // A third device is refused, before any upgrade.
    let third = format!("access_token={}", devices[2].access_token);
    let (status, body) = refused(&s, &third).await;
    assert_eq!((status, body["errcode"].as_str()), (429, Some("M_LIMIT_EXCEEDED")), "{body}");
    assert!(body["retry_after_ms"].is_u64(), "{body}");
    // Another user is not counted against bob.
    let alice = s.register("alice", "alice-password").await;
    frame(&mut connect(&s, &alice, "").await).await;
    // A connected device may replace its own connection.
    let mut one_again = connect(&s, &devices[0], "").await;
    frame(&mut one_again).await;
    // Not a third one while the replaced one has not ended (it waits for the client's close).
    let first = format!("access_token={}", devices[0].access_token);
    let (status, body) = refused(&s, &first).await;
    assert_eq!((status, body["errcode"].as_str()), (429, Some("M_LIMIT_EXCEEDED")), "{body}");
    assert_eq!(close_code(&mut one).await, 4000);
    // Once a device disconnects, the third one gets its place.
    two.close(None).await.expect("close");
    drop(two);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut three = loop {
        match tokio_tungstenite::connect_async(url(&s, &third)).await {
            Ok((socket, _)) => break socket,
            Err(tungstenite::Error::Http(r)) if r.status() == 429 => {
                assert!(tokio::time::Instant::now() < deadline, "the place was never freed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    };
    frame(&mut three).await;
}

#[tokio::test]
async fn guests_use_the_long_poll() {
    let s = TestServer::start_with(ServerOptions {
        extra_toml: "[guests]\nenabled = true\n".into(),
        ..ServerOptions::default()
    })
    .await;
    let (status, guest) = s.post("/_matrix/client/v3/register?kind=guest", None, json!({})).await;
    assert_eq!(status, 200, "{guest}");
    let token = guest["access_token"].as_str().unwrap();
    let (status, body) = refused(&s, &format!("access_token={token}")).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_GUEST_ACCESS_FORBIDDEN")));
}

#[tokio::test]
async fn the_versions_endpoint_advertises_the_transport() {
    let s = TestServer::start().await;
    let (status, body) = s.get("/_matrix/client/versions", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["unstable_features"]["io.axon.sync_ws"], true, "{body}");
}

#[tokio::test]
async fn a_new_connection_of_the_device_closes_the_previous_one() {
    let s = TestServer::start().await;
    let bob = s.register("bob", "bob-password").await;
    let mut first = connect(&s, &bob, "").await;
    frame(&mut first).await;
    let mut second = connect(&s, &bob, "").await;
    frame(&mut second).await;
    assert_eq!(close_code(&mut first).await, 4000);
    // The newer connection goes on.
    let room = s.create_room(&bob, json!({})).await;
    let f = frame_until(&mut second, |f| f["rooms"]["join"].get(&room).is_some()).await;
    assert!(f["next_batch"].is_string());
}

#[tokio::test]
async fn a_logged_out_device_gets_no_more_frames() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let mut socket = connect(&s, &bob, "").await;
    frame(&mut socket).await;

    let (status, body) = s.post("/_matrix/client/v3/logout", bob.token(), json!({})).await;
    assert_eq!(status, 200, "{body}");
    s.send_text(&alice, &room, "t1", "after the logout").await;
    assert_eq!(close_code(&mut socket).await, 4001, "closed, with no frame after the logout");
}

/// Many sockets while several users send at once: every socket gets every message exactly
/// once, in each sender's order (the frames chain `next_batch` to `since` with no gap and no
/// repeat), whatever frames the sends fall into.
#[tokio::test]
async fn every_socket_gets_every_message_once_under_concurrent_senders() {
    const SOCKETS: usize = 8;
    const SENDERS: usize = 4;
    const MESSAGES: usize = 30;
    let s = std::sync::Arc::new(TestServer::start().await);
    let owner = s.register("owner", "owner-password").await;
    let room = s.create_room(&owner, json!({"preset": "public_chat"})).await;
    let mut readers = Vec::new();
    for i in 0..SOCKETS {
        let user = s.register(&format!("reader{i}"), "reader-password").await;
        assert_eq!(s.join(&user, &room).await.0, 200);
        // A timeline limit above the test's messages: a frame that covers many sends is
        // never `limited`, so a gap would be the server's.
        let filter = enc(&json!({"room": {"timeline": {"limit": 1000}}}).to_string());
        let mut socket = connect(&s, &user, &format!("filter={filter}")).await;
        frame(&mut socket).await;
        readers.push(socket);
    }
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let user = s.register(&format!("sender{i}"), "sender-password").await;
        assert_eq!(s.join(&user, &room).await.0, 200);
        senders.push(user);
    }
    let mut sends = Vec::new();
    for (i, sender) in senders.into_iter().enumerate() {
        let (s, room) = (s.clone(), room.clone());
        sends.push(tokio::spawn(async move {
            for n in 0..MESSAGES {
                let (status, body) =
                    s.send_text(&sender, &room, &format!("t{n}"), &format!("{i}:{n}")).await;
                assert_eq!(status, 200, "{body}");
            }
        }));
    }
    let mut checks = Vec::new();
    for mut socket in readers {
        let room = room.clone();
        checks.push(tokio::spawn(async move {
            let mut seen: Vec<String> = Vec::new();
            while seen.len() < SENDERS * MESSAGES {
                let f = frame(&mut socket).await;
                assert_ne!(f["rooms"]["join"][&room]["timeline"]["limited"], true, "{f}");
                seen.extend(bodies(&f, &room).into_iter().filter(|b| b.contains(':')));
            }
            seen
        }));
    }
    for send in sends {
        send.await.unwrap();
    }
    for check in checks {
        let seen = tokio::time::timeout(Duration::from_secs(60), check)
            .await
            .expect("every message within a minute")
            .unwrap();
        assert_eq!(seen.len(), SENDERS * MESSAGES, "no repeats: {seen:?}");
        for i in 0..SENDERS {
            let from: Vec<String> =
                seen.iter().filter(|b| b.starts_with(&format!("{i}:"))).cloned().collect();
            let expected: Vec<String> = (0..MESSAGES).map(|n| format!("{i}:{n}")).collect();
            assert_eq!(from, expected, "sender {i}'s messages once each, in order");
        }
    }
}
