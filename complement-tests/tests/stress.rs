//! Concurrency: many long-polling clients and many senders in shared rooms. Every client must
//! see every event exactly once, in the room's order.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use complement_tests::{Session, TestServer, enc, json};

const SYNCERS: usize = 50;
const SENDERS: usize = 20;
const ROOMS: usize = 4;
const MESSAGES_PER_SENDER: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_syncing_clients_see_every_event_of_twenty_senders_once_and_in_order() {
    let s = TestServer::start().await;
    let owner = s.register("owner", "owner-password").await;
    let mut rooms = Vec::new();
    for i in 0..ROOMS {
        rooms.push(
            s.create_room(&owner, json!({"preset": "public_chat", "name": format!("room {i}")}))
                .await,
        );
    }
    let mut users: Vec<Session> = Vec::new();
    for i in 0..SYNCERS + SENDERS {
        let user = s.register(&format!("user{i}"), "user-password").await;
        for room in &rooms {
            let (status, body) = s.join(&user, room).await;
            assert_eq!(status, 200, "{body}");
        }
        users.push(user);
    }
    let (syncers, senders) = users.split_at(SYNCERS);
    let total = SENDERS * MESSAGES_PER_SENDER;
    let filter = enc(&json!({"room": {"timeline": {"limit": 1000}}}).to_string());

    // Every syncer starts from a token taken before any message is sent.
    let mut starts = Vec::new();
    for u in syncers {
        starts.push(s.sync(u, None, 0).await["next_batch"].as_str().unwrap().to_owned());
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut sync_tasks = Vec::new();
    for (u, start) in syncers.iter().cloned().zip(starts) {
        let client = s.client.clone();
        let base = s.base.clone();
        let filter = filter.clone();
        sync_tasks.push(tokio::spawn(async move {
            // room → event IDs of messages, in the order sync delivered them
            let mut seen: HashMap<String, Vec<String>> = HashMap::new();
            let mut count = 0;
            let mut since = start;
            while count < total && Instant::now() < deadline {
                let url = format!(
                    "{base}/_matrix/client/v3/sync?timeout=10000&since={since}&filter={filter}"
                );
                let body: serde_json::Value = client
                    .get(url)
                    .bearer_auth(&u.access_token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                for (room, data) in body["rooms"]["join"].as_object().unwrap() {
                    assert_eq!(
                        data["timeline"]["limited"], false,
                        "a 1000-event timeline should never be cut"
                    );
                    for e in data["timeline"]["events"].as_array().unwrap() {
                        if e["type"] == "m.room.message" {
                            seen.entry(room.clone())
                                .or_default()
                                .push(e["event_id"].as_str().unwrap().to_owned());
                            count += 1;
                        }
                    }
                }
                since = body["next_batch"].as_str().unwrap().to_owned();
            }
            seen
        }));
    }

    let mut send_tasks = Vec::new();
    for (n, u) in senders.iter().cloned().enumerate() {
        let client = s.client.clone();
        let base = s.base.clone();
        let rooms = rooms.clone();
        send_tasks.push(tokio::spawn(async move {
            for m in 0..MESSAGES_PER_SENDER {
                let room = &rooms[(n + m) % rooms.len()];
                let url = format!(
                    "{base}/_matrix/client/v3/rooms/{}/send/m.room.message/s{n}m{m}",
                    enc(room)
                );
                let res = client
                    .put(url)
                    .bearer_auth(&u.access_token)
                    .json(&json!({"msgtype": "m.text", "body": format!("{n}/{m}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
            }
        }));
    }
    for t in send_tasks {
        t.await.unwrap();
    }

    // The server's order of each room, from /messages.
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    for room in &rooms {
        let (_, body) = s
            .get(
                &format!("/_matrix/client/v3/rooms/{}/messages?dir=f&limit=1000", enc(room)),
                owner.token(),
            )
            .await;
        let ids = body["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.message")
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect();
        expected.insert(room.clone(), ids);
    }
    assert_eq!(expected.values().map(Vec::len).sum::<usize>(), total);

    for t in sync_tasks {
        let seen = t.await.unwrap();
        for room in &rooms {
            let got = seen.get(room).cloned().unwrap_or_default();
            let unique: HashSet<_> = got.iter().collect();
            assert_eq!(unique.len(), got.len(), "an event was delivered twice in {room}");
            assert_eq!(&got, &expected[room], "events missing or out of order in {room}");
        }
    }
}

/// Membership changes racing the sync: while messages flow, every syncer keeps renaming
/// itself (a member event in each of its rooms, committed at any moment relative to the
/// position a pending sync reads). No message may be skipped or sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn syncers_that_change_their_membership_events_still_see_every_message_once() {
    const SYNCERS: usize = 10;
    const SENDERS: usize = 8;
    const MESSAGES: usize = 30;
    const RENAMES: usize = 15;
    let s = TestServer::start().await;
    let owner = s.register("owner", "owner-password").await;
    let mut rooms = Vec::new();
    for i in 0..3 {
        rooms.push(
            s.create_room(&owner, json!({"preset": "public_chat", "name": format!("r{i}")})).await,
        );
    }
    let mut users: Vec<Session> = Vec::new();
    for i in 0..SYNCERS + SENDERS {
        let user = s.register(&format!("user{i}"), "user-password").await;
        for room in &rooms {
            assert_eq!(s.join(&user, room).await.0, 200);
        }
        users.push(user);
    }
    let (syncers, senders) = users.split_at(SYNCERS);
    let total = SENDERS * MESSAGES;
    let filter = enc(&json!({"room": {"timeline": {"limit": 1000}}}).to_string());
    let mut starts = Vec::new();
    for u in syncers {
        starts.push(s.sync(u, None, 0).await["next_batch"].as_str().unwrap().to_owned());
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut tasks = Vec::new();
    for (u, start) in syncers.iter().cloned().zip(starts) {
        let (client, base, filter) = (s.client.clone(), s.base.clone(), filter.clone());
        // The syncer's own renames, concurrent with its long-polls.
        let renamer = {
            let (client, base, u) = (client.clone(), base.clone(), u.clone());
            tokio::spawn(async move {
                for i in 0..RENAMES {
                    let url =
                        format!("{base}/_matrix/client/v3/profile/{}/displayname", enc(&u.user_id));
                    let res = client
                        .put(url)
                        .bearer_auth(&u.access_token)
                        .json(&json!({"displayname": format!("name {i}")}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(res.status(), 200);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        tasks.push(tokio::spawn(async move {
            let mut seen: HashMap<String, Vec<String>> = HashMap::new();
            let mut count = 0;
            let mut since = start;
            while count < total && Instant::now() < deadline {
                let url = format!(
                    "{base}/_matrix/client/v3/sync?timeout=10000&since={since}&filter={filter}"
                );
                let body: serde_json::Value = client
                    .get(url)
                    .bearer_auth(&u.access_token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                for (room, data) in body["rooms"]["join"].as_object().unwrap() {
                    assert_eq!(data["timeline"]["limited"], false, "{data}");
                    for e in data["timeline"]["events"].as_array().unwrap() {
                        if e["type"] == "m.room.message" {
                            seen.entry(room.clone())
                                .or_default()
                                .push(e["event_id"].as_str().unwrap().to_owned());
                            count += 1;
                        }
                    }
                }
                since = body["next_batch"].as_str().unwrap().to_owned();
            }
            renamer.await.unwrap();
            seen
        }));
    }
    let mut send_tasks = Vec::new();
    for (n, u) in senders.iter().cloned().enumerate() {
        let (client, base, rooms) = (s.client.clone(), s.base.clone(), rooms.clone());
        send_tasks.push(tokio::spawn(async move {
            for m in 0..MESSAGES {
                let room = &rooms[(n + m) % rooms.len()];
                let url = format!(
                    "{base}/_matrix/client/v3/rooms/{}/send/m.room.message/s{n}m{m}",
                    enc(room)
                );
                let res = client
                    .put(url)
                    .bearer_auth(&u.access_token)
                    .json(&json!({"msgtype": "m.text", "body": format!("{n}/{m}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
            }
        }));
    }
    for t in send_tasks {
        t.await.unwrap();
    }
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    for room in &rooms {
        let (_, body) = s
            .get(
                &format!("/_matrix/client/v3/rooms/{}/messages?dir=f&limit=1000", enc(room)),
                owner.token(),
            )
            .await;
        let ids = body["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.message")
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect();
        expected.insert(room.clone(), ids);
    }
    assert_eq!(expected.values().map(Vec::len).sum::<usize>(), total);
    for t in tasks {
        let seen = t.await.unwrap();
        for room in &rooms {
            let got = seen.get(room).cloned().unwrap_or_default();
            assert_eq!(&got, &expected[room], "events missing, repeated or out of order in {room}");
        }
    }
}
