//! Pushers (`/pushers`, `/pushers/set`) and delivery to a push gateway: a small HTTP
//! server in the test receives the Push Gateway API's `/_matrix/push/v1/notify`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use complement_tests::{ServerOptions, Session, TestServer, Value, assert_error, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A push gateway on 127.0.0.1: records each notify request's body and answers from a
/// script (then 200 `{"rejected": []}`).
struct Gateway {
    port: u16,
    received: Arc<Mutex<Vec<Value>>>,
    answers: Arc<Mutex<VecDeque<(u16, Value)>>>,
}

impl Gateway {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(VecDeque::new()));
        let (rec, ans) = (received.clone(), answers.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else { return };
                let (rec, ans) = (rec.clone(), ans.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Headers, then Content-Length bytes of body.
                    let (head_end, length) = loop {
                        let Ok(n) = conn.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (i + 4, length);
                        }
                    };
                    while buf.len() < head_end + length {
                        let Ok(n) = conn.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let body: Value = serde_json::from_slice(&buf[head_end..head_end + length])
                        .unwrap_or_default();
                    assert!(head.starts_with("POST /_matrix/push/v1/notify "), "{head}");
                    rec.lock().unwrap().push(body);
                    let (status, answer) =
                        ans.lock().unwrap().pop_front().unwrap_or((200, json!({"rejected": []})));
                    let answer = answer.to_string();
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Self { port, received, answers }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/_matrix/push/v1/notify", self.port)
    }

    fn answer(&self, status: u16, body: Value) {
        self.answers.lock().unwrap().push_back((status, body));
    }

    fn received(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived, then a little longer to see that no more come.
    async fn wait_for(&self, n: usize) -> Vec<Value> {
        for _ in 0..200 {
            if self.received().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.received()
    }
}

/// A server that may reach the test gateway on loopback, with quick retries.
async fn server() -> TestServer {
    TestServer::start_with(ServerOptions {
        extra_toml: "[outbound]\nallowed_ip_ranges = [\"127.0.0.1/32\", \"::1/128\"]\n\n\
                     [push]\nretry_base_ms = 50\nretry_max_ms = 200\nmax_attempts = 4\n"
            .into(),
        ..ServerOptions::default()
    })
    .await
}

async fn set_pusher(s: &TestServer, who: &Session, body: Value) -> (reqwest::StatusCode, Value) {
    s.post("/_matrix/client/v3/pushers/set", who.token(), body).await
}

fn http_pusher(pushkey: &str, url: &str) -> Value {
    json!({
        "kind": "http",
        "app_id": "im.axon.test",
        "pushkey": pushkey,
        "app_display_name": "Axon test",
        "device_display_name": "phone",
        "lang": "en",
        "data": {"url": url, "extra": "kept"},
    })
}

async fn pushers_of(s: &TestServer, who: &Session) -> Vec<Value> {
    let (status, body) = s.get("/_matrix/client/v3/pushers", who.token()).await;
    assert_eq!(status, 200, "{body}");
    body["pushers"].as_array().expect("pushers").clone()
}

async fn room_of_two(s: &TestServer, alice: &Session, bob: &Session) -> String {
    let room = s.create_room(alice, json!({"preset": "public_chat", "name": "Tea room"})).await;
    assert_eq!(s.join(bob, &room).await.0, 200);
    room
}

async fn send(s: &TestServer, who: &Session, room: &str, txn: &str, body: &str) -> String {
    let (status, res) = s.send_text(who, room, txn, body).await;
    assert_eq!(status, 200, "{res}");
    res["event_id"].as_str().expect("event_id").to_owned()
}

#[tokio::test]
async fn an_offline_user_gets_one_correct_push_per_message() {
    let s = server().await;
    let gw = Gateway::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of_two(&s, &alice, &bob).await;
    let (status, body) = set_pusher(&s, &bob, http_pusher("bob-key", &gw.url())).await;
    assert_eq!(status, 200, "{body}");
    // The sender's own pusher never fires for their own messages.
    assert_eq!(set_pusher(&s, &alice, http_pusher("alice-key", &gw.url())).await.0, 200);
    let listed = pushers_of(&s, &bob).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["pushkey"], "bob-key");
    assert_eq!(listed[0]["data"]["url"], gw.url());

    let e1 = send(&s, &alice, &room, "t1", "first").await;
    let got = gw.wait_for(1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let e2 = send(&s, &alice, &room, "t2", "second").await;
    let got = gw.wait_for(2).await;
    assert_eq!(got.len(), 2, "exactly one request per message: {got:?}");
    for (n, (push, event)) in got.iter().zip([&e1, &e2]).enumerate() {
        let n_ = &push["notification"];
        assert_eq!(n_["event_id"], event.as_str(), "{push}");
        assert_eq!(n_["room_id"], room.as_str());
        assert_eq!(n_["type"], "m.room.message");
        assert_eq!(n_["sender"], alice.user_id.as_str());
        assert_eq!(n_["sender_display_name"], "alice");
        assert_eq!(n_["room_name"], "Tea room");
        assert_eq!(n_["prio"], "high", "a one-to-one message has a sound");
        assert_eq!(n_["counts"]["unread"], n as u64 + 1, "the badge: {push}");
        let devices = n_["devices"].as_array().expect("devices");
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0]["app_id"], "im.axon.test");
        assert_eq!(devices[0]["pushkey"], "bob-key");
        assert!(devices[0]["pushkey_ts"].is_u64(), "{push}");
        assert_eq!(devices[0]["data"], json!({"extra": "kept"}), "data without url");
        assert_eq!(devices[0]["tweaks"]["sound"], "default");
    }
}

#[tokio::test]
async fn event_id_only_pushers_get_ids_and_counts_only() {
    let s = server().await;
    let gw = Gateway::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of_two(&s, &alice, &bob).await;
    let mut pusher = http_pusher("bob-key", &gw.url());
    pusher["data"]["format"] = json!("event_id_only");
    assert_eq!(set_pusher(&s, &bob, pusher).await.0, 200);
    let event = send(&s, &alice, &room, "t1", "secret words").await;
    let got = gw.wait_for(1).await;
    assert_eq!(got.len(), 1);
    let n = &got[0]["notification"];
    assert_eq!(n["event_id"], event.as_str());
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["counts"]["unread"], 1);
    for absent in ["type", "sender", "sender_display_name", "room_name", "content"] {
        assert!(n.get(absent).is_none(), "{absent} sent: {n}");
    }
}

#[tokio::test]
async fn a_failing_gateway_is_retried() {
    let s = server().await;
    let gw = Gateway::start().await;
    gw.answer(500, json!({}));
    gw.answer(503, json!({}));
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of_two(&s, &alice, &bob).await;
    assert_eq!(set_pusher(&s, &bob, http_pusher("bob-key", &gw.url())).await.0, 200);
    let event = send(&s, &alice, &room, "t1", "hello").await;
    let got = gw.wait_for(3).await;
    assert_eq!(got.len(), 3, "two failures, then success, then nothing more: {got:?}");
    assert!(got.iter().all(|p| p["notification"]["event_id"] == event.as_str()));
}

#[tokio::test]
async fn a_rejected_pushkey_loses_its_pusher() {
    let s = server().await;
    let gw = Gateway::start().await;
    gw.answer(200, json!({"rejected": ["bob-key"]}));
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of_two(&s, &alice, &bob).await;
    assert_eq!(set_pusher(&s, &bob, http_pusher("bob-key", &gw.url())).await.0, 200);
    send(&s, &alice, &room, "t1", "hello").await;
    assert_eq!(gw.wait_for(1).await.len(), 1);
    let mut gone = false;
    for _ in 0..100 {
        if pushers_of(&s, &bob).await.is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(gone, "the rejected pusher is deleted");
    send(&s, &alice, &room, "t2", "again").await;
    assert_eq!(gw.wait_for(2).await.len(), 1, "no more pushes");
}

#[tokio::test]
async fn the_sender_is_never_pushed_for_their_own_message() {
    let s = server().await;
    let gw = Gateway::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of_two(&s, &alice, &bob).await;
    assert_eq!(set_pusher(&s, &bob, http_pusher("bob-key", &gw.url())).await.0, 200);
    send(&s, &bob, &room, "t1", "I am here").await;
    assert!(gw.wait_for(1).await.is_empty());
}

#[tokio::test]
async fn a_push_the_user_has_read_meanwhile_is_not_retried() {
    // Retries a second apart: time for bob to read the message after the first failure.
    let s = TestServer::start_with(ServerOptions {
        extra_toml: "[outbound]\nallowed_ip_ranges = [\"127.0.0.1/32\"]\n\n\
                     [push]\nretry_base_ms = 1500\nmax_attempts = 3\n"
            .into(),
        ..ServerOptions::default()
    })
    .await;
    let gw = Gateway::start().await;
    gw.answer(500, json!({}));
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of_two(&s, &alice, &bob).await;
    assert_eq!(set_pusher(&s, &bob, http_pusher("bob-key", &gw.url())).await.0, 200);
    let event = send(&s, &alice, &room, "t1", "hello").await;
    for _ in 0..200 {
        if !gw.received().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gw.received().len(), 1, "the first attempt failed");
    let (status, res) = s
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                complement_tests::enc(&room),
                complement_tests::enc(&event)
            ),
            bob.token(),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(gw.received().len(), 1, "no retry once bob read it");
}

#[tokio::test]
async fn a_pusher_goes_with_its_device() {
    let s = server().await;
    let gw = Gateway::start().await;
    let bob = s.register("bob", "bob-password").await;
    let (status, login) = s.login("bob", "bob-password").await;
    assert_eq!(status, 200);
    let phone = Session::from_json(&login);
    assert_eq!(set_pusher(&s, &phone, http_pusher("phone-key", &gw.url())).await.0, 200);
    assert_eq!(set_pusher(&s, &bob, http_pusher("laptop-key", &gw.url())).await.0, 200);
    assert_eq!(pushers_of(&s, &bob).await.len(), 2);
    let (status, _) = s.post("/_matrix/client/v3/logout", phone.token(), json!({})).await;
    assert_eq!(status, 200);
    let left = pushers_of(&s, &bob).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["pushkey"], "laptop-key");
}

#[tokio::test]
async fn pushers_set_validates_replaces_and_deletes() {
    let s = server().await;
    let gw = Gateway::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    // The URL must be http(s) and end in /_matrix/push/v1/notify.
    for url in [
        format!("http://127.0.0.1:{}/notify", gw.port),
        "ftp://example.org/_matrix/push/v1/notify".to_owned(),
        "not a url".to_owned(),
    ] {
        let res = set_pusher(&s, &bob, http_pusher("k", &url)).await;
        assert_error(&res, 400, "M_INVALID_PARAM");
    }
    let mut email = http_pusher("bob@example.org", &gw.url());
    email["kind"] = json!("email");
    assert_eq!(set_pusher(&s, &bob, email).await.0, 400);
    let mut no_url = http_pusher("k", &gw.url());
    no_url["data"] = json!({});
    assert!(set_pusher(&s, &bob, no_url).await.0.is_client_error());
    assert!(pushers_of(&s, &bob).await.is_empty());
    // Setting the same app ID and pushkey again replaces the pusher.
    assert_eq!(set_pusher(&s, &bob, http_pusher("shared", &gw.url())).await.0, 200);
    let mut renamed = http_pusher("shared", &gw.url());
    renamed["device_display_name"] = json!("new phone");
    assert_eq!(set_pusher(&s, &bob, renamed).await.0, 200);
    let listed = pushers_of(&s, &bob).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["device_display_name"], "new phone");
    // append: true keeps another user's pusher of that pushkey; false (the default) takes it.
    let mut appended = http_pusher("shared", &gw.url());
    appended["append"] = json!(true);
    assert_eq!(set_pusher(&s, &alice, appended).await.0, 200);
    assert_eq!(pushers_of(&s, &bob).await.len(), 1);
    assert_eq!(set_pusher(&s, &alice, http_pusher("shared", &gw.url())).await.0, 200);
    assert!(pushers_of(&s, &bob).await.is_empty(), "append false removes bob's");
    assert_eq!(pushers_of(&s, &alice).await.len(), 1);
    // kind: null deletes.
    let res = set_pusher(
        &s,
        &alice,
        json!({"kind": null, "app_id": "im.axon.test", "pushkey": "shared"}),
    )
    .await;
    assert_eq!(res.0, 200, "{}", res.1);
    assert!(pushers_of(&s, &alice).await.is_empty());
}

#[tokio::test]
async fn a_loopback_gateway_is_refused_without_the_allowance() {
    let s = TestServer::start().await;
    let gw = Gateway::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of_two(&s, &alice, &bob).await;
    // An IP literal is refused at once.
    let res = set_pusher(&s, &bob, http_pusher("bob-key", &gw.url())).await;
    assert_error(&res, 400, "M_INVALID_PARAM");
    // A name is accepted, but resolves to loopback: nothing is delivered.
    let by_name = format!("http://localhost:{}/_matrix/push/v1/notify", gw.port);
    assert_eq!(set_pusher(&s, &bob, http_pusher("bob-key", &by_name)).await.0, 200);
    send(&s, &alice, &room, "t1", "hello").await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(gw.received().is_empty(), "{:?}", gw.received());
}

/// A server whose failed pushes are retried slowly, so a crash can fall between attempts.
async fn slow_retry_server() -> TestServer {
    TestServer::start_with(ServerOptions {
        extra_toml: "[outbound]\nallowed_ip_ranges = [\"127.0.0.1/32\", \"::1/128\"]\n\n\
                     [push]\nretry_base_ms = 3000\nretry_max_ms = 3000\nmax_attempts = 10\n"
            .into(),
        ..ServerOptions::default()
    })
    .await
}

#[tokio::test]
async fn a_push_still_being_retried_at_a_crash_is_sent_after_the_restart() {
    let mut s = slow_retry_server().await;
    let gw = Gateway::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of_two(&s, &alice, &bob).await;
    assert_eq!(set_pusher(&s, &bob, http_pusher("bob-key", &gw.url())).await.0, 200);
    // The room's setup is evaluated and its progress stored (once a second) before the
    // message, so only the message is evaluated again after the crash.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gw.answer(500, json!({}));
    let event = send(&s, &alice, &room, "t1", "are you there?").await;
    let got = gw.wait_for(1).await;
    assert_eq!(got.len(), 1, "the first attempt, answered 500: {got:?}");
    // Killed while the push waits for its retry: the evaluation's progress must not have
    // passed the event, so the restarted server evaluates it again and pushes it.
    s.crash_and_restart().await;
    let got = gw.wait_for(2).await;
    assert!(got.len() >= 2, "the push after the restart: {got:?}");
    assert!(
        got[1..].iter().all(|p| p["notification"]["event_id"] == event.as_str()),
        "only the pending event is pushed again: {got:?}"
    );
    let (status, body) = s.get("/_matrix/client/v3/notifications", bob.token()).await;
    assert_eq!(status, 200, "{body}");
    let listed = body["notifications"].as_array().expect("notifications");
    assert_eq!(listed.len(), 1, "stored once: {body}");
    assert_eq!(listed[0]["event"]["event_id"], event.as_str());
}

#[tokio::test]
async fn a_delivered_push_is_not_sent_again_after_a_restart() {
    let mut s = server().await;
    let gw = Gateway::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of_two(&s, &alice, &bob).await;
    assert_eq!(set_pusher(&s, &bob, http_pusher("bob-key", &gw.url())).await.0, 200);
    send(&s, &alice, &room, "t1", "hello").await;
    assert_eq!(gw.wait_for(1).await.len(), 1);
    // The progress is stored once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.crash_and_restart().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(gw.received().len(), 1, "no second push: {:?}", gw.received());
    // Pushes go on after the restart.
    send(&s, &alice, &room, "t2", "still there").await;
    assert_eq!(gw.wait_for(2).await.len(), 2);
}
