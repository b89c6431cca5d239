//! Durability: what the server acknowledged survives kill -9.

use complement_tests::{TestServer, json};

#[tokio::test]
async fn accounts_and_tokens_survive_kill_9() {
    let mut s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let path = format!("/_matrix/client/v3/devices/{}", alice.device_id);
    let (status, _) = s.put(&path, alice.token(), json!({"display_name": "Renamed"})).await;
    assert_eq!(status, 200);

    s.crash_and_restart().await;

    let (status, body) = s.get("/_matrix/client/v3/account/whoami", alice.token()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], alice.user_id);
    let (_, body) = s.get(&path, alice.token()).await;
    assert_eq!(body["display_name"], "Renamed");
    assert_eq!(s.login("alice", "alice-password").await.0, 200);
}

/// Concurrent senders, kill -9 in the middle: every event that got a 200 is there after the
/// restart, and the room accepts new events on top of what survived.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_event_survives_kill_9_under_load() {
    use std::sync::{Arc, Mutex};

    use complement_tests::enc;

    let mut s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for w in 0..8 {
        let client = s.client.clone();
        let base = s.base.clone();
        let token = alice.access_token.clone();
        let room = room.clone();
        let acked = acked.clone();
        senders.push(tokio::spawn(async move {
            for i in 0.. {
                let url = format!(
                    "{base}/_matrix/client/v3/rooms/{}/send/m.room.message/w{w}-{i}",
                    enc(&room)
                );
                let body = json!({"msgtype": "m.text", "body": format!("{w}/{i}")});
                // The harness holds the listening socket: once the server is killed, a new
                // connection waits in its backlog, so a request without a timeout would wait
                // for the restart that waits for this task. (The restarted server may still
                // accept and store such a request: only acknowledged events are checked.)
                let request = client.put(url).bearer_auth(&token).json(&body);
                match request.timeout(std::time::Duration::from_secs(10)).send().await {
                    Ok(res) if res.status() == 200 => {
                        let v: serde_json::Value = match res.json().await {
                            Ok(v) => v,
                            Err(_) => return, // the connection died mid-answer: not acknowledged
                        };
                        acked.lock().unwrap().push(v["event_id"].as_str().unwrap().to_owned());
                    }
                    _ => return, // the server is gone
                }
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    s.kill9();
    for t in senders {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "the load should have produced events: {}", acked.len());

    s.crash_and_restart().await;
    for id in &acked {
        let (status, body) = s
            .get(
                &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(id)),
                alice.token(),
            )
            .await;
        assert_eq!(status, 200, "acknowledged event {id} lost: {body}");
    }
    let (status, _) = s.send_text(&alice, &room, "after", "still works").await;
    assert_eq!(status, 200);
    let (_, msgs) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1", enc(&room)),
            alice.token(),
        )
        .await;
    assert_eq!(msgs["chunk"][0]["content"]["body"], "still works");
}

/// The harness passes its listening socket to every server process (socket activation, as
/// systemd does it): a request made while the server is down waits in the socket's backlog
/// and is answered by the restarted server, instead of being refused.
#[tokio::test]
async fn a_request_made_while_the_server_is_down_is_answered_after_the_restart() {
    let mut s = TestServer::start().await;
    s.kill9();
    let url = format!("{}/_matrix/client/versions", s.base);
    let pending = tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status()) });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "with the server down, the request should wait");
    s.crash_and_restart().await;
    let status = pending.await.expect("task").expect("the request should be answered");
    assert_eq!(status, 200);
}
