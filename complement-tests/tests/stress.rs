//! Concurrency: many long-polling clients and many senders in shared rooms. Every client must
//! see every event exactly once, in the room's order.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use complement_tests::{Session, TestServer, enc, json};
use tokio::task::JoinHandle;

/// room → event IDs of messages, in the order sync delivered them.
type Seen = HashMap<String, Vec<String>>;

/// Long-polls `/sync` from `since` until `total` messages arrived (or two minutes passed),
/// checking that no timeline is cut.
fn spawn_syncer(s: &TestServer, u: Session, since: String, total: usize) -> JoinHandle<Seen> {
    let (client, base) = (s.client.clone(), s.base.clone());
    let filter = enc(&json!({"room": {"timeline": {"limit": 1000}}}).to_string());
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut seen = Seen::new();
        let mut count = 0;
        let mut since = since;
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
                    "a 1000-event timeline should never be cut: {data}"
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
    })
}

/// Each sender sends `messages` messages, round-robin over the rooms; waits for all.
async fn send_all(s: &TestServer, senders: &[Session], rooms: &[String], messages: usize) {
    let mut tasks = Vec::new();
    for (n, u) in senders.iter().cloned().enumerate() {
        let (client, base, rooms) = (s.client.clone(), s.base.clone(), rooms.to_vec());
        tasks.push(tokio::spawn(async move {
            for m in 0..messages {
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
    for t in tasks {
        t.await.unwrap();
    }
}

/// The server's order of each room's messages, from `/messages`.
async fn server_order(s: &TestServer, who: &Session, rooms: &[String]) -> Seen {
    let mut expected = Seen::new();
    for room in rooms {
        let (_, body) = s
            .get(
                &format!("/_matrix/client/v3/rooms/{}/messages?dir=f&limit=1000", enc(room)),
                who.token(),
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
    expected
}

/// Every syncer saw exactly the server's messages of each room, once and in order.
fn assert_seen_in_order(seen: &Seen, expected: &Seen) {
    for (room, want) in expected {
        let got = seen.get(room).cloned().unwrap_or_default();
        let unique: HashSet<_> = got.iter().collect();
        assert_eq!(unique.len(), got.len(), "an event was delivered twice in {room}");
        assert_eq!(&got, want, "events missing or out of order in {room}");
    }
}

/// Public rooms and users joined to all of them.
async fn rooms_and_members(
    s: &TestServer,
    rooms: usize,
    users: usize,
) -> (Session, Vec<String>, Vec<Session>) {
    let owner = s.register("owner", "owner-password").await;
    let mut ids = Vec::new();
    for i in 0..rooms {
        ids.push(
            s.create_room(&owner, json!({"preset": "public_chat", "name": format!("room {i}")}))
                .await,
        );
    }
    let mut members = Vec::new();
    for i in 0..users {
        let user = s.register(&format!("user{i}"), "user-password").await;
        for room in &ids {
            let (status, body) = s.join(&user, room).await;
            assert_eq!(status, 200, "{body}");
        }
        members.push(user);
    }
    (owner, ids, members)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_syncing_clients_see_every_event_of_twenty_senders_once_and_in_order() {
    const SYNCERS: usize = 50;
    const SENDERS: usize = 20;
    const MESSAGES_PER_SENDER: usize = 25;
    let s = TestServer::start().await;
    let (owner, rooms, users) = rooms_and_members(&s, 4, SYNCERS + SENDERS).await;
    let (syncers, senders) = users.split_at(SYNCERS);
    let total = SENDERS * MESSAGES_PER_SENDER;

    // Every syncer starts from a token taken before any message is sent.
    let mut tasks = Vec::new();
    for u in syncers {
        let since = s.sync(u, None, 0).await["next_batch"].as_str().unwrap().to_owned();
        tasks.push(spawn_syncer(&s, u.clone(), since, total));
    }
    send_all(&s, senders, &rooms, MESSAGES_PER_SENDER).await;
    let expected = server_order(&s, &owner, &rooms).await;
    assert_eq!(expected.values().map(Vec::len).sum::<usize>(), total);
    for t in tasks {
        assert_seen_in_order(&t.await.unwrap(), &expected);
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
    let (owner, rooms, users) = rooms_and_members(&s, 3, SYNCERS + SENDERS).await;
    let (syncers, senders) = users.split_at(SYNCERS);
    let total = SENDERS * MESSAGES;
    let mut tasks = Vec::new();
    let mut renamers = Vec::new();
    for u in syncers {
        let since = s.sync(u, None, 0).await["next_batch"].as_str().unwrap().to_owned();
        tasks.push(spawn_syncer(&s, u.clone(), since, total));
        let (client, base, u) = (s.client.clone(), s.base.clone(), u.clone());
        renamers.push(tokio::spawn(async move {
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
        }));
    }
    send_all(&s, senders, &rooms, MESSAGES).await;
    for r in renamers {
        r.await.unwrap();
    }
    let expected = server_order(&s, &owner, &rooms).await;
    assert_eq!(expected.values().map(Vec::len).sum::<usize>(), total);
    for t in tasks {
        assert_seen_in_order(&t.await.unwrap(), &expected);
    }
}
