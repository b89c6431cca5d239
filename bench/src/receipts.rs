//! `axon-bench receipts USERS SYNCERS SECONDS`: USERS members of one room post read receipts
//! as fast as they go (each on the room's next event, so every receipt moves forwards and is
//! written), while SYNCERS of them long-poll `/sync`; receipts/s accepted, receipt entries/s
//! delivered, and with AXON_PID the server's CPU time per receipt.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Error, Server, User, enc, server_cpu, unique};

/// Events sent into the room before the run: each user's receipts walk through them.
const EVENTS: usize = 600;

async fn sync(
    server: &Server,
    user: &User,
    since: Option<&str>,
    timeout_ms: u64,
) -> Result<Value, Error> {
    let filter = enc(&json!({"room": {"timeline": {"limit": 1}}}).to_string());
    let mut url =
        format!("{}/_matrix/client/v3/sync?timeout={timeout_ms}&filter={filter}", server.base);
    if let Some(s) = since {
        url.push_str(&format!("&since={s}"));
    }
    Ok(server.http.get(url).bearer_auth(&user.token).send().await?.json().await?)
}

/// Runs tasks `width` at a time.
async fn in_batches<T: Send + 'static>(
    width: usize,
    tasks: impl IntoIterator<Item = tokio::task::JoinHandle<Result<T, Error>>>,
) -> Result<Vec<T>, Error> {
    let mut out = Vec::new();
    let mut pending = Vec::new();
    for t in tasks {
        pending.push(t);
        if pending.len() >= width {
            for p in pending.drain(..) {
                out.push(p.await??);
            }
        }
    }
    for p in pending {
        out.push(p.await??);
    }
    Ok(out)
}

pub async fn receipts(
    server: Arc<Server>,
    users: usize,
    syncers: usize,
    secs: u64,
) -> Result<(), Error> {
    let setup = Instant::now();
    let registered = in_batches(
        32,
        (0..users.max(1)).map(|i| {
            let server = server.clone();
            tokio::spawn(async move { server.register(&unique(&format!("rc{i}_"))).await })
        }),
    )
    .await?;
    let users: Vec<Arc<User>> = registered.into_iter().map(Arc::new).collect();
    let room = server.create_room(&users[0]).await?;
    let join = format!("/_matrix/client/v3/join/{}", enc(&room));
    in_batches(
        32,
        users.iter().skip(1).map(|u| {
            let (server, u, join) = (server.clone(), u.clone(), join.clone());
            tokio::spawn(async move { server.post(&join, Some(&u.token), json!({})).await })
        }),
    )
    .await?;
    // The events to read, in timeline order.
    let mut events = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        let url = format!(
            "{}/_matrix/client/v3/rooms/{}/send/m.room.message/r{i}",
            server.base,
            enc(&room)
        );
        let res: Value = server
            .http
            .put(url)
            .bearer_auth(&users[0].token)
            .json(&json!({"msgtype": "m.text", "body": "read me"}))
            .send()
            .await?
            .json()
            .await?;
        events.push(res["event_id"].as_str().ok_or_else(|| format!("send: {res}"))?.to_owned());
    }
    let events = Arc::new(events);
    let setup = setup.elapsed();

    let accepted = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let mut pollers = Vec::new();
    for u in users.iter().take(syncers) {
        let (server, u, room, delivered, stop) =
            (server.clone(), u.clone(), room.clone(), delivered.clone(), stop.clone());
        let first = sync(&server, &u, None, 0).await?;
        let mut since = first["next_batch"].as_str().ok_or("no next_batch")?.to_owned();
        pollers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(body) = sync(&server, &u, Some(&since), 1000).await else { continue };
                let ephemeral = &body["rooms"]["join"][&room]["ephemeral"]["events"];
                for e in ephemeral.as_array().into_iter().flatten() {
                    if e["type"] != "m.receipt" {
                        continue;
                    }
                    let n: usize = e["content"]
                        .as_object()
                        .into_iter()
                        .flat_map(|c| c.values())
                        .filter_map(|by_type| by_type["m.read"].as_object())
                        .map(|users| users.len())
                        .sum();
                    delivered.fetch_add(n as u64, Ordering::Relaxed);
                }
                if let Some(next) = body["next_batch"].as_str() {
                    since = next.to_owned();
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let cpu_before = server_cpu();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut writers = Vec::new();
    for (w, u) in users.iter().enumerate() {
        let (server, u, room, events, accepted, errors) = (
            server.clone(),
            u.clone(),
            room.clone(),
            events.clone(),
            accepted.clone(),
            errors.clone(),
        );
        writers.push(tokio::spawn(async move {
            // Each user starts at its own place, so that receipts spread over the events.
            let mut i = w % 50;
            while Instant::now() < deadline && i < events.len() {
                let url = format!(
                    "{}/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                    server.base,
                    enc(&room),
                    enc(&events[i])
                );
                match server.http.post(url).bearer_auth(&u.token).json(&json!({})).send().await {
                    Ok(r) if r.status().is_success() => accepted.fetch_add(1, Ordering::Relaxed),
                    _ => errors.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
            }
        }));
    }
    for w in writers {
        let _ = w.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = match (cpu_before, server_cpu()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    // Let the pollers take the last receipts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for p in pollers {
        let _ = p.await;
    }
    let n = accepted.load(Ordering::Relaxed);
    let cpu_text = match cpu {
        Some(cpu) if n > 0 => format!(
            ", server CPU {:.2} s = {:.0} µs per receipt ({:.2} cores)",
            cpu.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / n as f64,
            cpu.as_secs_f64() / elapsed
        ),
        _ => String::new(),
    };
    println!(
        "receipts: {} members of one room posting m.read as fast as they go, {syncers} of them long-polling, {secs}s: {n} receipts ({:.0}/s), errors {}, {} receipt entries delivered ({:.0}/s){cpu_text} (setup {:.1}s)",
        users.len(),
        n as f64 / elapsed,
        errors.load(Ordering::Relaxed),
        delivered.load(Ordering::Relaxed),
        delivered.load(Ordering::Relaxed) as f64 / elapsed,
        setup.as_secs_f64(),
    );
    Ok(())
}
