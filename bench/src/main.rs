//! Load generator for Axon's event hot paths, run against a live server by `bench/run.sh`.
//!
//! ```text
//! axon-bench BASE_URL latency RATE SECONDS       send at RATE/s into one room; measure the time
//!                                                from PUT /send to arrival in another user's
//!                                                pending /sync
//! axon-bench BASE_URL throughput ROOMS CONCURRENCY SECONDS
//!                                                send as fast as CONCURRENCY senders can, spread
//!                                                over ROOMS rooms; report events/s
//! axon-bench BASE_URL to_device RECEIVERS SENDERS SECONDS
//!                                                SENDERS senders send to-device messages as
//!                                                fast as they can, each to one of RECEIVERS
//!                                                users whose /sync long-poll is always pending;
//!                                                report messages/s delivered
//! axon-bench BASE_URL keys USERS DEVICES CONCURRENCY SECONDS
//!                                                USERS users with DEVICES devices each, every
//!                                                device with signed device keys, one-time
//!                                                keys and a fallback key; then CONCURRENCY
//!                                                clients call /keys/query (all users per
//!                                                request, then one) and /keys/claim (one
//!                                                device per request, then 100), SECONDS each;
//!                                                report requests/s
//! axon-bench BASE_URL fanout RECEIVERS SENDERS RATE SECONDS
//!                                                SENDERS and RECEIVERS users in one room, every
//!                                                receiver's /sync long-poll always pending;
//!                                                senders send RATE events/s in all (open loop),
//!                                                or as fast as they can for RATE 0 (closed
//!                                                loop); report deliveries/s, send→delivery
//!                                                latency, and with AXON_PID the server's CPU
//!                                                time per delivery
//! axon-bench BASE_URL search EVENTS CONCURRENCY
//!                                                fill one room with EVENTS messages, then
//!                                                time POST /search (search.rs); the index
//!                                                cost per event on the send path
//! axon-bench BASE_URL receipts USERS SYNCERS SECONDS
//!                                                USERS members of one room post read receipts
//!                                                as fast as they can, SYNCERS of them
//!                                                long-poll; report receipts/s (receipts.rs)
//! axon-bench BASE_URL relations EVENTS REACTORS REQUESTS
//!                                                EVENTS messages with REACTORS reactions and
//!                                                an edit each; /messages latency of their
//!                                                page with bundles vs a plain room, and
//!                                                send rates (relations.rs)
//! ```
//! and the typing and presence phases (`ephemeral.rs`), and the media repository's upload,
//! download and thumbnail modes (`media.rs`, run by `bench/media.sh`).
//! The server must have open registration and generous rate limits (run.sh configures it).

mod ephemeral;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite;

mod media;
mod push;
mod receipts;
mod relations;
mod search;

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Server {
    base: String,
    http: reqwest::Client,
}

struct User {
    token: String,
    user_id: String,
    device_id: String,
}

impl User {
    fn from_login(body: &Value) -> Option<Self> {
        Some(Self {
            token: body["access_token"].as_str()?.to_owned(),
            user_id: body["user_id"].as_str()?.to_owned(),
            device_id: body["device_id"].as_str()?.to_owned(),
        })
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Server {
    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Result<Value, Error> {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Ok(req.send().await?.json().await?)
    }

    async fn register(&self, name: &str) -> Result<User, Error> {
        let body = json!({"username": name, "password": "bench-password"});
        let first = self.post("/_matrix/client/v3/register", None, body).await?;
        let session = first["session"].as_str().ok_or("no UIA session")?;
        let done = self
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({"username": name, "password": "bench-password",
                       "auth": {"type": "m.login.dummy", "session": session}}),
            )
            .await?;
        User::from_login(&done).ok_or_else(|| format!("register: {done}").into())
    }

    /// Another device of an existing user (password login).
    async fn login(&self, name: &str) -> Result<User, Error> {
        let body = json!({"type": "m.login.password", "password": "bench-password",
                          "identifier": {"type": "m.id.user", "user": name}});
        let done = self.post("/_matrix/client/v3/login", None, body).await?;
        User::from_login(&done).ok_or_else(|| format!("login: {done}").into())
    }

    async fn create_room(&self, user: &User) -> Result<String, Error> {
        let body = self
            .post(
                "/_matrix/client/v3/createRoom",
                Some(&user.token),
                json!({"preset": "public_chat"}),
            )
            .await?;
        Ok(body["room_id"].as_str().ok_or_else(|| format!("createRoom: {body}"))?.to_owned())
    }

    async fn send(&self, user: &User, room: &str, txn: &str, body: Value) -> Result<(), Error> {
        let url = format!(
            "{}/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
            self.base,
            enc(room)
        );
        let res = self.http.put(url).bearer_auth(&user.token).json(&body).send().await?;
        if !res.status().is_success() {
            return Err(format!("send: {}", res.status()).into());
        }
        Ok(())
    }

    /// One to-device message to every device of `to`.
    async fn send_to_device(&self, user: &User, to: &User, txn: &str) -> Result<(), Error> {
        let url = format!("{}/_matrix/client/v3/sendToDevice/m.bench/{txn}", self.base);
        let body = json!({"messages": {&to.user_id: {"*": {"txn": txn}}}});
        let res = self.http.put(url).bearer_auth(&user.token).json(&body).send().await?;
        if !res.status().is_success() {
            return Err(format!("sendToDevice: {}", res.status()).into());
        }
        Ok(())
    }

    async fn sync(
        &self,
        user: &User,
        since: Option<&str>,
        timeout_ms: u64,
    ) -> Result<Value, Error> {
        self.sync_filtered(user, since, timeout_ms, json!({"room": {"timeline": {"limit": 5000}}}))
            .await
    }

    /// `/sync` with a filter given inline.
    async fn sync_filtered(
        &self,
        user: &User,
        since: Option<&str>,
        timeout_ms: u64,
        filter: Value,
    ) -> Result<Value, Error> {
        let filter = enc(&filter.to_string());
        let mut url =
            format!("{}/_matrix/client/v3/sync?timeout={timeout_ms}&filter={filter}", self.base);
        if let Some(s) = since {
            url.push_str(&format!("&since={s}"));
        }
        Ok(self.http.get(url).bearer_auth(&user.token).send().await?.json().await?)
    }

    /// A `/sync` WebSocket (docs/websocket.md) with this filter, from an initial sync.
    async fn sync_socket(
        &self,
        user: &User,
        filter: &Value,
    ) -> Result<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        Error,
    > {
        let base = self.base.replacen("http://", "ws://", 1);
        let filter = enc(&filter.to_string());
        let url = format!(
            "{base}/_matrix/client/unstable/io.axon.sync_ws/sync?filter={filter}&access_token={}",
            user.token
        );
        let (socket, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(socket)
    }
}

/// An error with its sources ("a: b: c"): reqwest's own message leaves out the cause.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// The first 200 characters of a response body, for an error message.
fn clip(text: &str) -> String {
    text.chars().take(200).collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}{}", n % 1_000_000_000)
}

/// Send → sync latency. With `quiet_rooms`, the receiver is also in that many rooms where
/// nothing happens: a wake-up should cost what changed, not what the receiver has.
async fn latency(
    server: Arc<Server>,
    rate: u64,
    secs: u64,
    quiet_rooms: usize,
) -> Result<(), Error> {
    let sender = server.register(&unique("lsend")).await?;
    let receiver = Arc::new(server.register(&unique("lrecv")).await?);
    for _ in 0..quiet_rooms {
        server.create_room(&receiver).await?;
    }
    let room = server.create_room(&sender).await?;
    let join = format!("/_matrix/client/v3/join/{}", enc(&room));
    server.post(&join, Some(&receiver.token), json!({})).await?;
    let start = server.sync(&receiver, None, 0).await?;
    let mut since = start["next_batch"].as_str().ok_or("no next_batch")?.to_owned();

    let total = (rate * secs) as usize;
    let sent_at: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; total]));
    let arrived: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; total]));
    let received = Arc::new(AtomicU64::new(0));

    let rx_task = {
        let (server, receiver, arrived, received, room) =
            (server.clone(), receiver.clone(), arrived.clone(), received.clone(), room.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(secs + 10);
            while (received.load(Ordering::Relaxed) as usize) < total && Instant::now() < deadline {
                let Ok(body) = server.sync(&receiver, Some(&since), 5000).await else { continue };
                let now = Instant::now();
                if let Some(events) = body["rooms"]["join"][&room]["timeline"]["events"].as_array()
                {
                    let mut arrived = arrived.lock().await;
                    for e in events {
                        if let Some(seq) = e["content"]["seq"].as_u64()
                            && let Some(slot) = arrived.get_mut(seq as usize)
                        {
                            slot.get_or_insert(now);
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if let Some(next) = body["next_batch"].as_str() {
                    since = next.to_owned();
                }
            }
        })
    };

    let sender = Arc::new(sender);
    let cpu_before = server_cpu();
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sends = Vec::with_capacity(total);
    let errors = Arc::new(AtomicU64::new(0));
    for seq in 0..total {
        ticker.tick().await;
        let (server, sender, sent_at, room, errors) =
            (server.clone(), sender.clone(), sent_at.clone(), room.clone(), errors.clone());
        sends.push(tokio::spawn(async move {
            sent_at.lock().await[seq] = Some(Instant::now());
            let body = json!({"msgtype": "m.text", "body": "latency probe", "seq": seq});
            if server.send(&sender, &room, &format!("l{seq}"), body).await.is_err() {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for s in sends {
        let _ = s.await;
    }
    let _ = rx_task.await;
    // The server's CPU per event: its send, its delivery to the receiver's sync, and
    // whatever of the receiver's other rooms a wake-up looks at (which must be nothing).
    let cpu = match (cpu_before, server_cpu()) {
        (Some(before), Some(after)) if total > 0 => format!(
            ", server CPU {:.1} µs per event (send + delivery)",
            (after - before).as_secs_f64() * 1e6 / total as f64
        ),
        _ => String::new(),
    };

    let sent_at = sent_at.lock().await;
    let arrived = arrived.lock().await;
    let mut lat: Vec<Duration> = sent_at
        .iter()
        .zip(arrived.iter())
        .filter_map(|(s, a)| Some(a.as_ref()?.saturating_duration_since(*s.as_ref()?)))
        .collect();
    lat.sort();
    println!(
        "latency @ {rate} events/s for {secs}s, receiver in {} rooms: delivered {}/{total}, send errors {}, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{cpu}",
        quiet_rooms + 1,
        lat.len(),
        errors.load(Ordering::Relaxed),
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    Ok(())
}

async fn throughput(
    server: Arc<Server>,
    rooms: usize,
    concurrency: usize,
    secs: u64,
) -> Result<(), Error> {
    let user = Arc::new(server.register(&unique("tput")).await?);
    let setup = Instant::now();
    let mut room_ids = Vec::with_capacity(rooms);
    let mut pending = Vec::new();
    for _ in 0..rooms {
        let (server, user) = (server.clone(), user.clone());
        pending.push(tokio::spawn(async move { server.create_room(&user).await }));
        if pending.len() >= 32 {
            for p in pending.drain(..) {
                room_ids.push(p.await??);
            }
        }
    }
    for p in pending {
        room_ids.push(p.await??);
    }
    let room_ids = Arc::new(room_ids);
    let setup = setup.elapsed();

    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (server, user, room_ids, sent, errors) =
            (server.clone(), user.clone(), room_ids.clone(), sent.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < deadline {
                let room = &room_ids[i % room_ids.len()];
                let body = json!({"msgtype": "m.text", "body": "throughput"});
                match server.send(&user, room, &format!("t{w}-{i}"), body).await {
                    Ok(()) => sent.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
                i += concurrency;
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = sent.load(Ordering::Relaxed);
    println!(
        "throughput into {rooms} room(s), {concurrency} concurrent senders, {secs}s: {n} events, {:.0} events/s, errors {} (setup of {rooms} rooms: {:.1}s)",
        n as f64 / elapsed,
        errors.load(Ordering::Relaxed),
        setup.as_secs_f64(),
    );
    Ok(())
}

async fn to_device(
    server: Arc<Server>,
    receivers: usize,
    senders: usize,
    secs: u64,
) -> Result<(), Error> {
    let mut recv = Vec::with_capacity(receivers);
    for i in 0..receivers {
        recv.push(Arc::new(server.register(&unique(&format!("tdr{i}x"))).await?));
    }
    let sender = Arc::new(server.register(&unique("tds")).await?);
    let recv = Arc::new(recv);
    let sent = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    // Receivers keep polling until everything sent has arrived (or 10 s after the end).
    let give_up = deadline + Duration::from_secs(10);
    let last_delivery = Arc::new(Mutex::new(started));

    let mut pollers = Vec::new();
    for r in recv.iter() {
        let (server, r, delivered, last) =
            (server.clone(), r.clone(), delivered.clone(), last_delivery.clone());
        let (sent, errors) = (sent.clone(), errors.clone());
        let since = server.sync(&r, None, 0).await?["next_batch"]
            .as_str()
            .ok_or("no next_batch")?
            .to_owned();
        pollers.push(tokio::spawn(async move {
            let mut since = since;
            loop {
                let done = Instant::now() >= deadline
                    && delivered.load(Ordering::Relaxed) >= sent.load(Ordering::Relaxed);
                if done || Instant::now() >= give_up {
                    break;
                }
                match server.sync(&r, Some(&since), 1000).await {
                    Ok(body) => {
                        let n = body["to_device"]["events"].as_array().map_or(0, Vec::len);
                        if n > 0 {
                            delivered.fetch_add(n as u64, Ordering::Relaxed);
                            *last.lock().await = Instant::now();
                        }
                        if let Some(next) = body["next_batch"].as_str() {
                            since = next.to_owned();
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let mut workers = Vec::new();
    for w in 0..senders {
        let (server, sender, recv, sent, errors) =
            (server.clone(), sender.clone(), recv.clone(), sent.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < deadline {
                let to = &recv[i % recv.len()];
                match server.send_to_device(&sender, to, &format!("d{w}-{i}")).await {
                    Ok(()) => sent.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
                i += senders;
            }
        }));
    }
    for w in workers.into_iter().chain(pollers) {
        let _ = w.await;
    }
    let (n_sent, n_delivered) = (sent.load(Ordering::Relaxed), delivered.load(Ordering::Relaxed));
    let elapsed = last_delivery.lock().await.duration_since(started).as_secs_f64().max(1e-9);
    println!(
        "to-device to {receivers} long-polling receivers, {senders} concurrent senders, {secs}s: {n_sent} sent, {n_delivered} delivered, {:.0} messages/s delivered, errors {}",
        n_delivered as f64 / elapsed,
        errors.load(Ordering::Relaxed),
    );
    Ok(())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

/// Signs `object` as the device would: ed25519 over its canonical JSON (serde_json sorts
/// keys and writes no spaces), without `signatures` and `unsigned`.
fn sign(key: &SigningKey, device: &User, mut object: Value) -> Value {
    let signature = key.sign(object.to_string().as_bytes());
    object["signatures"][&device.user_id][format!("ed25519:{}", device.device_id)] =
        json!(b64(&signature.to_bytes()));
    object
}

/// Uploads a device's signed device keys, `otks` signed one-time keys and a fallback key.
async fn upload_keys(server: &Server, device: &User, seed: u64, otks: usize) -> Result<(), Error> {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&seed.to_be_bytes());
    secret[8] = 1;
    let key = SigningKey::from_bytes(&secret);
    let d = &device.device_id;
    let device_keys = sign(
        &key,
        device,
        json!({
            "user_id": device.user_id,
            "device_id": d,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                format!("curve25519:{d}"): b64(&secret),
                format!("ed25519:{d}"): b64(key.verifying_key().as_bytes()),
            },
        }),
    );
    let mut one_time_keys = serde_json::Map::new();
    for i in 0..otks {
        let public = b64(&[(i % 251) as u8; 32]);
        one_time_keys
            .insert(format!("signed_curve25519:K{i}"), sign(&key, device, json!({"key": public})));
    }
    let fallback = sign(&key, device, json!({"key": b64(&[7; 32]), "fallback": true}));
    let body = json!({
        "device_keys": device_keys,
        "one_time_keys": one_time_keys,
        "fallback_keys": {"signed_curve25519:F": fallback},
    });
    let res = server.post("/_matrix/client/v3/keys/upload", Some(&device.token), body).await?;
    if res["one_time_key_counts"]["signed_curve25519"].as_u64() != Some(otks as u64) {
        return Err(format!("keys/upload: {res}").into());
    }
    Ok(())
}

/// The body of a client's `i`-th request.
type MakeBody = Arc<dyn Fn(usize) -> Value + Send + Sync>;
/// Whether a response is the expected one.
type Check = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

/// Concurrent clients of one user, each sending requests as fast as it can for `secs`.
struct Clients {
    server: Arc<Server>,
    token: String,
    concurrency: usize,
    secs: u64,
}

impl Clients {
    /// POSTs bodies made by `body` to `path`; `check` judges each response. Prints and
    /// returns requests/s.
    async fn hammer(
        &self,
        label: &str,
        path: &'static str,
        body: MakeBody,
        check: Check,
    ) -> Result<f64, Error> {
        let done = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let deadline = started + Duration::from_secs(self.secs);
        let mut workers = Vec::new();
        for w in 0..self.concurrency {
            let (server, token, body, check) =
                (self.server.clone(), self.token.clone(), body.clone(), check.clone());
            let (done, errors, concurrency) = (done.clone(), errors.clone(), self.concurrency);
            workers.push(tokio::spawn(async move {
                let mut i = w;
                while Instant::now() < deadline {
                    match server.post(path, Some(&token), body(i)).await {
                        Ok(res) if check(&res) => done.fetch_add(1, Ordering::Relaxed),
                        _ => errors.fetch_add(1, Ordering::Relaxed),
                    };
                    i += concurrency;
                }
            }));
        }
        for w in workers {
            let _ = w.await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let n = done.load(Ordering::Relaxed);
        let rate = n as f64 / elapsed;
        println!(
            "{label}, {} concurrent clients, {}s: {n} requests, {rate:.0} requests/s, errors {}",
            self.concurrency,
            self.secs,
            errors.load(Ordering::Relaxed)
        );
        Ok(rate)
    }
}

async fn keys(
    server: Arc<Server>,
    users: usize,
    devices: usize,
    concurrency: usize,
    secs: u64,
) -> Result<(), Error> {
    const OTKS: usize = 100;
    let setup = Instant::now();
    let run = unique("k");
    // Users and devices: registration and logins hash passwords (argon2), 2 at a time.
    let mut all: Vec<User> = Vec::with_capacity(users * devices);
    let mut pending = Vec::new();
    for u in 0..users {
        let server = server.clone();
        let name = format!("{run}u{u}");
        pending.push(tokio::spawn(async move {
            let mut mine = vec![server.register(&name).await?];
            for _ in 1..devices {
                mine.push(server.login(&name).await?);
            }
            Ok::<_, Error>(mine)
        }));
        if pending.len() >= 4 {
            for p in pending.drain(..) {
                all.extend(p.await??);
            }
        }
    }
    for p in pending {
        all.extend(p.await??);
    }
    let all = Arc::new(all);
    let mut pending = Vec::new();
    for i in 0..all.len() {
        let (server, all) = (server.clone(), all.clone());
        pending
            .push(tokio::spawn(async move { upload_keys(&server, &all[i], i as u64, OTKS).await }));
        if pending.len() >= 16 {
            for p in pending.drain(..) {
                p.await??;
            }
        }
    }
    for p in pending {
        p.await??;
    }
    let asker = server.register(&format!("{run}asker")).await?;
    println!(
        "keys: {users} users x {devices} devices = {} devices with device keys, {OTKS} one-time keys and a fallback key each (setup {:.1}s)",
        all.len(),
        setup.elapsed().as_secs_f64()
    );

    let clients = Clients { server, token: asker.token, concurrency, secs };
    let user_ids: std::collections::BTreeSet<String> =
        all.iter().map(|d| d.user_id.clone()).collect();
    let user_ids: Arc<Vec<String>> = Arc::new(user_ids.into_iter().collect());
    let total_devices = all.len();
    let query_all = {
        let user_ids = user_ids.clone();
        let map: serde_json::Map<String, Value> =
            user_ids.iter().map(|u| (u.clone(), json!([]))).collect();
        let body = json!({"device_keys": map});
        Arc::new(move |_: usize| body.clone())
    };
    let all_devices = Arc::new(move |res: &Value| {
        res["device_keys"].as_object().is_some_and(|m| {
            m.values().map(|d| d.as_object().map_or(0, serde_json::Map::len)).sum::<usize>()
                == total_devices
        })
    });
    let label = format!("keys/query of all {users} users ({total_devices} devices) per request");
    clients.hammer(&label, QUERY, query_all, all_devices).await?;

    let query_one = {
        let user_ids = user_ids.clone();
        Arc::new(move |i: usize| json!({"device_keys": {&user_ids[i % user_ids.len()]: []}}))
    };
    let one_user = Arc::new(move |res: &Value| {
        res["device_keys"].as_object().is_some_and(|m| {
            m.values().next().and_then(Value::as_object).map_or(0, serde_json::Map::len) == devices
        })
    });
    let label = format!("keys/query of one user ({devices} devices) per request");
    clients.hammer(&label, QUERY, query_one, one_user).await?;

    // Claims: which answers were one-time keys and which the fallback key (once a device's
    // one-time keys run out).
    let fallbacks = Arc::new(AtomicU64::new(0));
    let claimed = Arc::new(AtomicU64::new(0));
    let counted = |want: usize| {
        let (fallbacks, claimed) = (fallbacks.clone(), claimed.clone());
        Arc::new(move |res: &Value| {
            let mut n = 0;
            for devices in res["one_time_keys"].as_object().into_iter().flat_map(|m| m.values()) {
                for keys in devices.as_object().into_iter().flat_map(|m| m.values()) {
                    for key in keys.as_object().into_iter().flat_map(|m| m.values()) {
                        n += 1;
                        if key["fallback"] == json!(true) {
                            fallbacks.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            claimed.fetch_add(n as u64, Ordering::Relaxed);
            n == want
        })
    };
    let claim_one = {
        let all = all.clone();
        Arc::new(move |i: usize| {
            let d = &all[(i * 7919) % all.len()];
            json!({"one_time_keys": {&d.user_id: {&d.device_id: "signed_curve25519"}}})
        })
    };
    let label = "keys/claim of one device per request";
    clients.hammer(label, CLAIM, claim_one, counted(1)).await?;
    println!(
        "  keys claimed: {} ({} of them fallback keys)",
        claimed.swap(0, Ordering::Relaxed),
        fallbacks.swap(0, Ordering::Relaxed)
    );
    let many = 100.min(all.len());
    let claim_many = {
        let all = all.clone();
        Arc::new(move |i: usize| {
            let mut map = serde_json::Map::new();
            for j in 0..many {
                let d = &all[(i * many + j) % all.len()];
                let entry = map.entry(d.user_id.clone()).or_insert_with(|| json!({}));
                entry[&d.device_id] = json!("signed_curve25519");
            }
            json!({"one_time_keys": map})
        })
    };
    let label = format!("keys/claim of {many} devices per request");
    clients.hammer(&label, CLAIM, claim_many, counted(many)).await?;
    println!(
        "  keys claimed: {} ({} of them fallback keys)",
        claimed.load(Ordering::Relaxed),
        fallbacks.load(Ordering::Relaxed)
    );
    Ok(())
}

const QUERY: &str = "/_matrix/client/v3/keys/query";
const CLAIM: &str = "/_matrix/client/v3/keys/claim";

/// CPU time (user + system) the process `AXON_PID` has used so far, if known.
fn server_cpu() -> Option<Duration> {
    server_cpu_split().map(|(user, kernel)| user + kernel)
}

/// The server's CPU time so far, in user space and in the kernel (its system calls, and the
/// TCP receive of loopback peers, which the kernel does in the writer's system call).
fn server_cpu_split() -> Option<(Duration, Duration)> {
    let pid = std::env::var("AXON_PID").ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may contain spaces) start at the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let hz = 100; // USER_HZ on Linux
    let time = |t: u64| Duration::from_millis(t * 1000 / hz);
    Some((time(ticks(11)?), time(ticks(12)?)))
}

/// Group fan-out: SENDERS send into one room that RECEIVERS long-poll.
async fn fanout(
    server: Arc<Server>,
    receivers: usize,
    senders: usize,
    rate: u64,
    secs: u64,
    websocket: bool,
) -> Result<(), Error> {
    let setup = Instant::now();
    let mut users = Vec::with_capacity(receivers + senders);
    let mut pending = Vec::new();
    for i in 0..receivers + senders {
        let server = server.clone();
        pending
            .push(tokio::spawn(async move { server.register(&unique(&format!("f{i}_"))).await }));
        if pending.len() >= 32 {
            for p in pending.drain(..) {
                users.push(Arc::new(p.await??));
            }
        }
    }
    for p in pending {
        users.push(Arc::new(p.await??));
    }
    let (sender_users, receiver_users) = users.split_at(senders);
    let room = server.create_room(&sender_users[0]).await?;
    let join = format!("/_matrix/client/v3/join/{}", enc(&room));
    let mut pending = Vec::new();
    for u in users.iter().skip(1) {
        let (server, u, join) = (server.clone(), u.clone(), join.clone());
        pending
            .push(tokio::spawn(async move { server.post(&join, Some(&u.token), json!({})).await }));
        if pending.len() >= 32 {
            for p in pending.drain(..) {
                p.await??;
            }
        }
    }
    for p in pending {
        p.await??;
    }

    const MAX_EVENTS: usize = 4_000_000;
    let epoch = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..MAX_EVENTS).map(|_| AtomicU64::new(0)).collect());
    let next_seq = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deliveries = Arc::new(AtomicU64::new(0));
    let stop_receiving = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Failures on the receiving side, so that a missing delivery can be told from a receiver
    // that never got going: initial syncs (or sockets) that failed, and failed long-polls.
    let failed_starts = Arc::new(AtomicU64::new(0));
    let poll_errors = Arc::new(AtomicU64::new(0));
    let first_error: Arc<std::sync::Mutex<Option<String>>> = Arc::default();

    // Receivers: an initial sync, then long-polls back to back, with the filter Element
    // uses in large rooms (lazy-loaded members).
    let filter = json!({"room": {"timeline": {"limit": 50}, "state": {"lazy_load_members": true}}});
    let ready = Arc::new(AtomicU64::new(0));
    let mut rx_tasks = Vec::new();
    for r in receiver_users {
        let (server, r, room, sent_at, deliveries, stop, ready, filter) = (
            server.clone(),
            r.clone(),
            room.clone(),
            sent_at.clone(),
            deliveries.clone(),
            stop_receiving.clone(),
            ready.clone(),
            filter.clone(),
        );
        let (failed_starts, poll_errors, first_error) =
            (failed_starts.clone(), poll_errors.clone(), first_error.clone());
        let note_error = move |what: String| {
            let mut first = first_error.lock().unwrap_or_else(|e| e.into_inner());
            first.get_or_insert(what);
        };
        rx_tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<Duration> = Vec::new();
            let count = |body: &Value, latencies: &mut Vec<Duration>| {
                let now = epoch.elapsed();
                let events = body["rooms"]["join"][&room]["timeline"]["events"].as_array();
                for e in events.into_iter().flatten() {
                    let Some(seq) = e["content"]["seq"].as_u64() else { continue };
                    let Some(at) = sent_at.get(seq as usize) else { continue };
                    let at = Duration::from_nanos(at.load(Ordering::Relaxed));
                    latencies.push(now.saturating_sub(at));
                    deliveries.fetch_add(1, Ordering::Relaxed);
                }
            };
            if websocket {
                // One connection per receiver; every frame is a sync response.
                let mut socket = match server.sync_socket(&r, &filter).await {
                    Ok(socket) => socket,
                    Err(e) => {
                        failed_starts.fetch_add(1, Ordering::Relaxed);
                        note_error(format!("socket: {e}"));
                        ready.fetch_add(1, Ordering::Relaxed);
                        return latencies;
                    }
                };
                let mut first = true;
                loop {
                    let frame = tokio::select! {
                        frame = socket.next() => frame,
                        () = tokio::time::sleep(Duration::from_millis(200)) => {
                            if stop.load(Ordering::Relaxed) { break }
                            continue;
                        }
                    };
                    let Some(Ok(tungstenite::Message::Text(text))) = frame else {
                        if matches!(frame, Some(Ok(_))) {
                            continue;
                        }
                        break;
                    };
                    let Ok(body) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                    if first {
                        first = false;
                        ready.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    count(&body, &mut latencies);
                }
                if first {
                    failed_starts.fetch_add(1, Ordering::Relaxed);
                    note_error("socket closed before its first frame".into());
                    ready.fetch_add(1, Ordering::Relaxed);
                }
                return latencies;
            }
            let first = server.sync_filtered(&r, None, 0, filter.clone()).await;
            ready.fetch_add(1, Ordering::Relaxed);
            let since = match &first {
                Ok(body) => body["next_batch"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("initial sync: {}", clip(&body.to_string()))),
                Err(e) => Err(format!("initial sync: {}", chain(e.as_ref()))),
            };
            let mut since = match since {
                Ok(since) => since,
                Err(e) => {
                    failed_starts.fetch_add(1, Ordering::Relaxed);
                    note_error(e);
                    return latencies;
                }
            };
            while !stop.load(Ordering::Relaxed) {
                let body = match server.sync_filtered(&r, Some(&since), 2000, filter.clone()).await
                {
                    Ok(body) if body["next_batch"].is_string() => body,
                    Ok(body) => {
                        poll_errors.fetch_add(1, Ordering::Relaxed);
                        note_error(format!("sync: {}", clip(&body.to_string())));
                        continue;
                    }
                    Err(e) => {
                        poll_errors.fetch_add(1, Ordering::Relaxed);
                        note_error(format!("sync: {}", chain(e.as_ref())));
                        continue;
                    }
                };
                count(&body, &mut latencies);
                if let Some(next) = body["next_batch"].as_str() {
                    since = next.to_owned();
                }
            }
            latencies
        }));
    }
    // Let every receiver finish its initial sync and reach its long-poll before measuring.
    let ready_deadline = Instant::now() + Duration::from_secs(300);
    while (ready.load(Ordering::Relaxed) as usize) < receivers && Instant::now() < ready_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let setup = setup.elapsed();

    let cpu_before = server_cpu_split();
    let started = Instant::now();
    // Sending lasts SECONDS from here, however long the receivers' initial syncs took.
    let stop_sending = started + Duration::from_secs(secs);
    let mut tx_tasks = Vec::new();
    for (w, u) in sender_users.iter().enumerate() {
        let (server, u, room, sent_at, next_seq, sent, errors) = (
            server.clone(),
            u.clone(),
            room.clone(),
            sent_at.clone(),
            next_seq.clone(),
            sent.clone(),
            errors.clone(),
        );
        tx_tasks.push(tokio::spawn(async move {
            // Open loop: each sender sends RATE/SENDERS events/s on a fixed schedule.
            let mut ticker = (rate > 0).then(|| {
                let per_sender = (rate as f64 / senders as f64).max(0.001);
                let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sender));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            let mut i = 0u64;
            while Instant::now() < stop_sending {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let seq = next_seq.fetch_add(1, Ordering::Relaxed);
                let Some(slot) = sent_at.get(seq as usize) else { break };
                slot.store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
                let body = json!({"msgtype": "m.text", "body": "fan-out", "seq": seq});
                match server.send(&u, &room, &format!("f{w}-{i}"), body).await {
                    Ok(()) => sent.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
            }
        }));
    }
    for t in tx_tasks {
        let _ = t.await;
    }
    let send_elapsed = started.elapsed().as_secs_f64();
    // Wait (bounded) for the deliveries of what was sent, then stop the receivers.
    let expected = sent.load(Ordering::Relaxed) * receivers as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    while deliveries.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = match (cpu_before, server_cpu_split()) {
        (Some(a), Some(b)) => Some((b.0.saturating_sub(a.0), b.1.saturating_sub(a.1))),
        _ => None,
    };
    stop_receiving.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    // Receivers that got fewer than every event sent, and the fewest any receiver got.
    let (mut short_receivers, mut fewest) = (0usize, u64::MAX);
    let per_receiver = sent.load(Ordering::Relaxed);
    for t in rx_tasks {
        if let Ok(l) = t.await {
            let got = l.len() as u64;
            if got < per_receiver {
                short_receivers += 1;
            }
            fewest = fewest.min(got);
            latencies.extend(l);
        }
    }
    latencies.sort();
    let n = sent.load(Ordering::Relaxed);
    let delivered = deliveries.load(Ordering::Relaxed);
    let cpu_text = match cpu {
        Some((user, kernel)) if delivered > 0 => {
            let per_delivery = |d: Duration| d.as_secs_f64() * 1e6 / delivered as f64;
            let cpu = user + kernel;
            format!(
                ", server CPU {:.2} s = {:.1} µs per delivery (user {:.1}, kernel {:.1}; {:.2} cores)",
                cpu.as_secs_f64(),
                per_delivery(cpu),
                per_delivery(user),
                per_delivery(kernel),
                cpu.as_secs_f64() / elapsed
            )
        }
        _ => String::new(),
    };
    let mode = if rate > 0 { format!("{rate} events/s open loop") } else { "closed loop".into() };
    let transport = if websocket { "WebSocket" } else { "long-poll" };
    println!(
        "fanout ({transport}) {senders} senders → {receivers} receivers in one room, {mode}, {secs}s: {n} events ({:.0}/s), errors {}, {delivered}/{expected} deliveries ({:.0}/s), latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{cpu_text} (setup {:.1}s)",
        n as f64 / send_elapsed,
        errors.load(Ordering::Relaxed),
        delivered as f64 / elapsed,
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        setup.as_secs_f64(),
    );
    let (failed, polls) =
        (failed_starts.load(Ordering::Relaxed), poll_errors.load(Ordering::Relaxed));
    if short_receivers > 0 || failed > 0 || polls > 0 {
        let first = first_error.lock().unwrap_or_else(|e| e.into_inner()).take();
        println!(
            "  receivers short of deliveries: {short_receivers} (fewest {fewest} of {per_receiver}); failed starts {failed}; failed long-polls {polls}; first error: {}",
            first.as_deref().unwrap_or("none")
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: axon-bench BASE_URL (latency RATE SECONDS [QUIET_ROOMS] | throughput ROOMS CONCURRENCY SECONDS | to_device RECEIVERS SENDERS SECONDS | keys USERS DEVICES CONCURRENCY SECONDS | fanout[_ws] RECEIVERS SENDERS RATE SECONDS | receipts USERS SYNCERS SECONDS | typing RECEIVERS TYPERS SECONDS | presence RECEIVERS ROUNDS | media SIZE_MIB | thumbnail | push_rules MEMBERS EVENTS CONCURRENCY | push_gateway USERS EVENTS | relations EVENTS REACTORS REQUESTS | search EVENTS CONCURRENCY)";
    let base = args.get(1).ok_or(usage)?.trim_end_matches('/').to_owned();
    let http = reqwest::Client::builder().pool_max_idle_per_host(1024).build()?;
    let server = Arc::new(Server { base, http });
    let num = |i: usize| -> Result<u64, Error> { Ok(args.get(i).ok_or(usage)?.parse()?) };
    match args.get(2).map(String::as_str) {
        Some("latency") => {
            let quiet_rooms = if args.len() > 5 { num(5)? as usize } else { 0 };
            latency(server, num(3)?, num(4)?, quiet_rooms).await
        }
        Some("throughput") => throughput(server, num(3)? as usize, num(4)? as usize, num(5)?).await,
        Some(mode @ ("fanout" | "fanout_ws")) => {
            let websocket = mode == "fanout_ws";
            fanout(server, num(3)? as usize, num(4)? as usize, num(5)?, num(6)?, websocket).await
        }
        Some("receipts") => {
            receipts::receipts(server, num(3)? as usize, num(4)? as usize, num(5)?).await
        }
        Some("typing") => {
            ephemeral::typing(server, num(3)? as usize, num(4)? as usize, num(5)?).await
        }
        Some("push_rules") => {
            push::push_rules(server, num(3)? as usize, num(4)? as usize, num(5)? as usize).await
        }
        Some("push_gateway") => {
            push::push_gateway(server, num(3)? as usize, num(4)? as usize).await
        }
        Some("presence") => ephemeral::presence(server, num(3)? as usize, num(4)? as usize).await,
        Some("to_device") => to_device(server, num(3)? as usize, num(4)? as usize, num(5)?).await,
        Some("keys") => {
            keys(server, num(3)? as usize, num(4)? as usize, num(5)? as usize, num(6)?).await
        }
        Some("media") => media::media(server, num(3)?).await,
        Some("thumbnail") => media::thumbnail(server).await,
        Some("search") => search::search(server, num(3)?, num(4)? as usize).await,
        Some("relations") => {
            relations::relations(server, num(3)? as usize, num(4)? as usize, num(5)? as usize).await
        }
        _ => Err(usage.into()),
    }
}
