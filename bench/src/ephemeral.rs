//! Typing and presence fan-out phases.
//!
//! ```text
//! axon-bench BASE_URL typing RECEIVERS TYPERS SECONDS
//!     RECEIVERS + TYPERS users in one room, every receiver's /sync long-poll always
//!     pending; each typer toggles its typing (true/false) as fast as it can; report the
//!     updates/s accepted, m.typing deliveries/s, and with AXON_PID the server's CPU per
//!     delivery
//! axon-bench BASE_URL presence RECEIVERS ROUNDS
//!     one user and RECEIVERS room-mates whose /sync long-polls are pending; the user
//!     changes their status ROUNDS times, one every 200 ms; report the time from the PUT
//!     until every room-mate received it (fan-out time) and the server's CPU per delivery
//! ```
//! Receivers sync with `set_presence=offline` so that their own syncs change no presence.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Error, Server, User, enc, percentile, server_cpu, unique};

impl Server {
    async fn put(&self, path: &str, token: &str, body: Value) -> Result<(), Error> {
        let url = format!("{}{path}", self.base);
        let res = self.http.put(url).bearer_auth(token).json(&body).send().await?;
        if !res.status().is_success() {
            return Err(format!("PUT {path}: {}", res.status()).into());
        }
        Ok(())
    }

    /// A sync that does not change the syncing user's presence.
    async fn quiet_sync(
        &self,
        user: &User,
        since: Option<&str>,
        timeout_ms: u64,
    ) -> Result<Value, Error> {
        let mut url = format!(
            "{}/_matrix/client/v3/sync?timeout={timeout_ms}&set_presence=offline",
            self.base
        );
        if let Some(s) = since {
            url.push_str(&format!("&since={s}"));
        }
        Ok(self.http.get(url).bearer_auth(&user.token).send().await?.json().await?)
    }
}

/// `n` new users, all joined to one room the first one created.
pub(crate) async fn users_in_one_room(
    server: &Arc<Server>,
    n: usize,
) -> Result<(Vec<Arc<User>>, String), Error> {
    let mut users = Vec::with_capacity(n);
    let mut pending = Vec::new();
    for i in 0..n {
        let server = server.clone();
        pending
            .push(tokio::spawn(async move { server.register(&unique(&format!("e{i}_"))).await }));
        if pending.len() >= 32 {
            for p in pending.drain(..) {
                users.push(Arc::new(p.await??));
            }
        }
    }
    for p in pending {
        users.push(Arc::new(p.await??));
    }
    let room = server.create_room(&users[0]).await?;
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
    Ok((users, room))
}

/// Long-polls `user`'s sync back to back until `stop`, calling `seen` on every response;
/// counts itself in `ready` once its initial sync is done.
fn keep_syncing(
    server: Arc<Server>,
    user: Arc<User>,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicU64>,
    seen: impl Fn(&Value) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(first) = server.quiet_sync(&user, None, 0).await else { return };
        let Some(mut since) = first["next_batch"].as_str().map(str::to_owned) else { return };
        ready.fetch_add(1, Ordering::Relaxed);
        while !stop.load(Ordering::Relaxed) {
            let Ok(body) = server.quiet_sync(&user, Some(&since), 2000).await else { continue };
            seen(&body);
            if let Some(next) = body["next_batch"].as_str() {
                since = next.to_owned();
            }
        }
    })
}

/// Waits (at most 120 s) until every receiver finished its initial sync, then a second so
/// that their long-polls are pending: the measurement starts after the set-up's syncs.
async fn wait_ready(ready: &AtomicU64, receivers: usize) {
    let until = Instant::now() + Duration::from_secs(120);
    while (ready.load(Ordering::Relaxed) as usize) < receivers && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
}

fn cpu_per_delivery(cpu_before: Option<Duration>, delivered: u64, elapsed: f64) -> String {
    match (cpu_before, server_cpu()) {
        (Some(a), Some(b)) if delivered > 0 => {
            let cpu = b.saturating_sub(a).as_secs_f64();
            format!(
                ", server CPU {cpu:.2} s = {:.1} µs per delivery ({:.2} cores)",
                cpu * 1e6 / delivered as f64,
                cpu / elapsed
            )
        }
        _ => String::new(),
    }
}

/// Typers toggle their typing as fast as they can into a room that receivers long-poll.
pub async fn typing(
    server: Arc<Server>,
    receivers: usize,
    typers: usize,
    secs: u64,
) -> Result<(), Error> {
    let (users, room) = users_in_one_room(&server, receivers + typers).await?;
    let (typer_users, receiver_users) = users.split_at(typers);
    let stop = Arc::new(AtomicBool::new(false));
    let deliveries = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicU64::new(0));
    let mut rx = Vec::new();
    for r in receiver_users {
        let (deliveries, room) = (deliveries.clone(), room.clone());
        rx.push(keep_syncing(
            server.clone(),
            r.clone(),
            stop.clone(),
            ready.clone(),
            move |body| {
                let events = body["rooms"]["join"][&room]["ephemeral"]["events"].as_array();
                if events.is_some_and(|e| e.iter().any(|e| e["type"] == "m.typing")) {
                    deliveries.fetch_add(1, Ordering::Relaxed);
                }
            },
        ));
    }
    wait_ready(&ready, receivers).await;
    let cpu_before = server_cpu();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let updates = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tx = Vec::new();
    for u in typer_users {
        let (server, u, updates, errors) =
            (server.clone(), u.clone(), updates.clone(), errors.clone());
        let path = format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&u.user_id));
        tx.push(tokio::spawn(async move {
            let mut typing = true;
            while Instant::now() < deadline {
                let body = if typing {
                    json!({"typing": true, "timeout": 30000})
                } else {
                    json!({"typing": false})
                };
                match server.put(&path, &u.token, body).await {
                    Ok(()) => updates.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
                typing = !typing;
            }
        }));
    }
    for t in tx {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let delivered = deliveries.load(Ordering::Relaxed);
    let cpu = cpu_per_delivery(cpu_before, delivered, elapsed);
    stop.store(true, Ordering::Relaxed);
    for t in rx {
        let _ = t.await;
    }
    let n = updates.load(Ordering::Relaxed);
    println!(
        "typing {typers} typers → {receivers} receivers in one room, closed loop, {secs}s: {n} updates ({:.0}/s), errors {}, {delivered} m.typing deliveries ({:.0}/s){cpu}",
        n as f64 / elapsed,
        errors.load(Ordering::Relaxed),
        delivered as f64 / elapsed,
    );
    Ok(())
}

/// One user changes their status; how long until every room-mate has it.
pub async fn presence(server: Arc<Server>, receivers: usize, rounds: usize) -> Result<(), Error> {
    let (users, room) = users_in_one_room(&server, receivers + 1).await?;
    let _ = room;
    let subject = users[0].clone();
    let stop = Arc::new(AtomicBool::new(false));
    // arrivals[round] = receivers that have seen it; last_at[round] = when the last one did.
    let arrivals: Arc<Vec<AtomicU64>> = Arc::new((0..rounds).map(|_| AtomicU64::new(0)).collect());
    let last_at: Arc<Vec<AtomicU64>> = Arc::new((0..rounds).map(|_| AtomicU64::new(0)).collect());
    let epoch = Instant::now();
    let deliveries = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicU64::new(0));
    let mut rx = Vec::new();
    for r in &users[1..] {
        let (arrivals, last_at, deliveries, subject_id) =
            (arrivals.clone(), last_at.clone(), deliveries.clone(), subject.user_id.clone());
        rx.push(keep_syncing(
            server.clone(),
            r.clone(),
            stop.clone(),
            ready.clone(),
            move |body| {
                let Some(events) = body["presence"]["events"].as_array() else { return };
                for e in events.iter().filter(|e| e["sender"] == subject_id.as_str()) {
                    let round =
                        e["content"]["status_msg"].as_str().and_then(|m| m.parse::<usize>().ok());
                    if let Some(round) = round.filter(|r| *r < arrivals.len()) {
                        deliveries.fetch_add(1, Ordering::Relaxed);
                        arrivals[round].fetch_add(1, Ordering::Relaxed);
                        last_at[round]
                            .fetch_max(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    }
                }
            },
        ));
    }
    wait_ready(&ready, receivers).await;
    let cpu_before = server_cpu();
    let started = Instant::now();
    let path = format!("/_matrix/client/v3/presence/{}/status", enc(&subject.user_id));
    let mut put_at = Vec::with_capacity(rounds);
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    for round in 0..rounds {
        ticker.tick().await;
        let state = if round % 2 == 0 { "online" } else { "unavailable" };
        put_at.push(epoch.elapsed());
        server
            .put(&path, &subject.token, json!({"presence": state, "status_msg": round.to_string()}))
            .await?;
    }
    // Wait (bounded) until every receiver saw the last round.
    let wait_until = Instant::now() + Duration::from_secs(30);
    while arrivals[rounds - 1].load(Ordering::Relaxed) < receivers as u64
        && Instant::now() < wait_until
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let delivered = deliveries.load(Ordering::Relaxed);
    let cpu = cpu_per_delivery(cpu_before, delivered, elapsed);
    stop.store(true, Ordering::Relaxed);
    for t in rx {
        let _ = t.await;
    }
    // Rounds seen by everyone, and their fan-out time. A receiver whose sync spans two
    // rounds sees only the newer one, so only complete rounds count.
    let mut times: Vec<Duration> = (0..rounds)
        .filter(|r| arrivals[*r].load(Ordering::Relaxed) == receivers as u64)
        .map(|r| Duration::from_nanos(last_at[r].load(Ordering::Relaxed)).saturating_sub(put_at[r]))
        .collect();
    let complete = times.len();
    times.sort();
    println!(
        "presence 1 user → {receivers} room-mates, {rounds} changes 200 ms apart: {complete} reached everyone, {delivered} deliveries; fan-out time to the last room-mate p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{cpu}",
        percentile(&times, 0.50).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    Ok(())
}
