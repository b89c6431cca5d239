//! Notification phases: push-rule evaluation in a large room, and pushes to a gateway.
//!
//! ```text
//! axon-bench BASE_URL push_rules MEMBERS EVENTS CONCURRENCY
//!     MEMBERS users in one room; one of them sends EVENTS messages, CONCURRENCY in flight;
//!     then one marker message. Push rules are evaluated after commit, in stream order, for
//!     every member but the sender, so once the marker is in the last member's
//!     /notifications every event before it was evaluated. Reports the send rate (events/s
//!     accepted, evaluation running behind it) and the evaluation rate (events/s and
//!     member-evaluations/s from the first send until the marker was evaluated).
//! axon-bench BASE_URL push_gateway USERS EVENTS
//!     a push gateway in this process (HTTP/1.1 keep-alive on 127.0.0.1; the server must
//!     allow loopback in outbound.allowed_ip_ranges); USERS users with one pusher each in
//!     one room with a sender, who sends EVENTS messages one after the other: USERS x EVENTS
//!     notify requests. Reports notify requests/s received (first send to last request).
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{Error, Server, User, enc, server_cpu};
use crate::ephemeral::users_in_one_room;

impl Server {
    /// The newest notification's event ID of `user`.
    async fn newest_notification(&self, user: &User) -> Result<Option<String>, Error> {
        let url = format!("{}/_matrix/client/v3/notifications?limit=1", self.base);
        let body: Value = self.http.get(url).bearer_auth(&user.token).send().await?.json().await?;
        Ok(body["notifications"][0]["event"]["event_id"].as_str().map(str::to_owned))
    }

    async fn send_id(
        &self,
        user: &User,
        room: &str,
        txn: &str,
        body: Value,
    ) -> Result<String, Error> {
        let url = format!(
            "{}/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
            self.base,
            enc(room)
        );
        let res: Value =
            self.http.put(url).bearer_auth(&user.token).json(&body).send().await?.json().await?;
        res["event_id"].as_str().map(str::to_owned).ok_or_else(|| format!("send: {res}").into())
    }
}

fn cpu_since(before: Option<Duration>) -> String {
    match (before, server_cpu()) {
        (Some(a), Some(b)) => format!(", server CPU {:.2} s", b.saturating_sub(a).as_secs_f64()),
        _ => String::new(),
    }
}

pub async fn push_rules(
    server: Arc<Server>,
    members: usize,
    events: usize,
    concurrency: usize,
) -> Result<(), Error> {
    let setup = Instant::now();
    let (users, room) = users_in_one_room(&server, members).await?;
    let sender = users[0].clone();
    let watcher = users[members - 1].clone();
    eprintln!("set-up: {members} members in {:.1} s", setup.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = server_cpu();
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (server, sender, room, next) =
            (server.clone(), sender.clone(), room.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= events {
                    return Ok::<(), Error>(());
                }
                let body = json!({"msgtype": "m.text", "body": format!("message {i}")});
                server.send(&sender, &room, &format!("p{i}"), body).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let sent = started.elapsed().as_secs_f64();
    let marker = server
        .send_id(&sender, &room, "marker", json!({"msgtype": "m.text", "body": "marker"}))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if server.newest_notification(&watcher).await?.as_deref() == Some(marker.as_str()) {
            break;
        }
        if Instant::now() > deadline {
            return Err("the marker was not evaluated within 600 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let evaluated = started.elapsed().as_secs_f64();
    let n = (events + 1) as f64;
    let recipients = (members - 1) as f64;
    println!(
        "push rules, {members}-member room: {events} events sent in {sent:.2} s = {:.0} events/s accepted; all evaluated after {evaluated:.2} s = {:.0} events/s = {:.0} member-evaluations/s ({:.1} µs per member per event, incl. storing the notification){}",
        events as f64 / sent,
        n / evaluated,
        n * recipients / evaluated,
        evaluated * 1e6 / (n * recipients),
        cpu_since(cpu),
    );
    Ok(())
}

/// A push gateway counting notify requests (keep-alive, answers `{"rejected": []}`).
async fn gateway(received: Arc<AtomicU64>) -> Result<u16, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                let mut buf: Vec<u8> = Vec::new();
                let mut chunk = vec![0u8; 16 * 1024];
                loop {
                    // One request: headers, then Content-Length bytes.
                    let request_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if buf.len() >= i + 4 + length {
                                break i + 4 + length;
                            }
                        }
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    buf.drain(..request_end);
                    received.fetch_add(1, Ordering::Relaxed);
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"rejected\":[]}";
                    if conn.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

pub async fn push_gateway(server: Arc<Server>, users: usize, events: usize) -> Result<(), Error> {
    let received = Arc::new(AtomicU64::new(0));
    let port = gateway(received.clone()).await?;
    let url = format!("http://127.0.0.1:{port}/_matrix/push/v1/notify");
    let (members, room) = users_in_one_room(&server, users + 1).await?;
    let sender = members[0].clone();
    for (i, u) in members.iter().enumerate().skip(1) {
        let body = json!({
            "kind": "http", "app_id": "bench", "pushkey": format!("key{i}"),
            "app_display_name": "bench", "device_display_name": "bench", "lang": "en",
            "data": {"url": url},
        });
        let res = server.post("/_matrix/client/v3/pushers/set", Some(&u.token), body).await?;
        if res.get("errcode").is_some() {
            return Err(format!("pushers/set: {res}").into());
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let expected = (users * events) as u64;
    let cpu = server_cpu();
    let started = Instant::now();
    for i in 0..events {
        let body = json!({"msgtype": "m.text", "body": format!("push {i}")});
        server.send(&sender, &room, &format!("g{i}"), body).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last = (0, Instant::now());
    loop {
        let n = received.load(Ordering::Relaxed);
        if n != last.0 {
            last = (n, Instant::now());
        }
        if n >= expected || last.1.elapsed() > Duration::from_secs(5) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let n = received.load(Ordering::Relaxed);
    let elapsed = (last.1 - started).as_secs_f64();
    println!(
        "push gateway: {events} messages to {users} users with a pusher: {n} of {expected} notify requests in {elapsed:.2} s = {:.0} requests/s{}",
        n as f64 / elapsed,
        cpu_since(cpu),
    );
    Ok(())
}
