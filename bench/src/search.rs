//! Message search (`axon-bench BASE search EVENTS CONCURRENCY`): fills one room with EVENTS
//! messages of eight words each (a 5 000-word vocabulary, plus a rare word in every
//! 1 000th), sent by CONCURRENCY senders; then times `POST /search` for a rare word, a
//! common word, two words, in rank and recent order. The indexing cost on the send path
//! is the difference in mean send latency between those messages and as many events of a
//! type nothing indexes (`m.bench.unindexed`, same body) sent the same way first.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{Error, Server, User, enc, percentile, unique};

const VOCABULARY: u64 = 5_000;

fn word(n: u64) -> String {
    // Letters only, so each is one search term: base-26 of n, prefixed to avoid collisions.
    let mut w = String::from("w");
    let mut n = n;
    loop {
        w.push((b'a' + (n % 26) as u8) as char);
        n /= 26;
        if n == 0 {
            break;
        }
    }
    w
}

fn body(i: u64) -> String {
    // A cheap deterministic mix (splitmix64) picks the words.
    let mut x = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut words = Vec::with_capacity(9);
    for _ in 0..8 {
        x ^= x >> 30;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 27;
        words.push(word(x % VOCABULARY));
    }
    if i.is_multiple_of(1000) {
        words.push("zanzibar".into());
    }
    words.join(" ")
}

/// Sends `events` events of `kind` with CONCURRENCY senders; returns (events/s, mean latency).
async fn fill(
    server: &Arc<Server>,
    user: &Arc<User>,
    room: &str,
    kind: &str,
    events: u64,
    concurrency: usize,
) -> Result<(f64, Duration), Error> {
    let next = Arc::new(AtomicU64::new(0));
    let total_ns = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let prefix = unique("s");
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (server, user, next, total_ns) =
            (server.clone(), user.clone(), next.clone(), total_ns.clone());
        let (room, kind, prefix) = (room.to_owned(), kind.to_owned(), prefix.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= events {
                    return Ok::<(), Error>(());
                }
                let url = format!(
                    "{}/_matrix/client/v3/rooms/{}/send/{kind}/{prefix}{i}",
                    server.base,
                    enc(&room)
                );
                let t = Instant::now();
                let res = server
                    .http
                    .put(url)
                    .bearer_auth(&user.token)
                    .json(&json!({"msgtype": "m.text", "body": body(i)}))
                    .send()
                    .await?;
                if !res.status().is_success() {
                    return Err(format!("send: {}", res.status()).into());
                }
                total_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let mean = Duration::from_nanos(total_ns.load(Ordering::Relaxed) / events.max(1));
    Ok((events as f64 / secs, mean))
}

pub async fn search(server: Arc<Server>, events: u64, concurrency: usize) -> Result<(), Error> {
    let user = Arc::new(server.register(&unique("searcher")).await?);
    let room = server.create_room(&user).await?;
    let baseline_n = (events / 10).clamp(1_000, 20_000).min(events);
    let (base_rate, base_mean) =
        fill(&server, &user, &room, "m.bench.unindexed", baseline_n, concurrency).await?;
    let (rate, mean) = fill(&server, &user, &room, "m.room.message", events, concurrency).await?;
    println!(
        "search fill: {events} indexed messages at {rate:.0}/s (mean send {:.2} ms); {baseline_n} unindexed events at {base_rate:.0}/s (mean send {:.2} ms); indexing cost ≈ {:.3} ms per event",
        mean.as_secs_f64() * 1e3,
        base_mean.as_secs_f64() * 1e3,
        (mean.as_secs_f64() - base_mean.as_secs_f64()) * 1e3,
    );
    let common = word(42);
    let queries = [
        ("rare word", "zanzibar".to_owned()),
        ("common word", common.clone()),
        // Two words of one message: found at least there.
        ("two words", body(7).split(' ').take(2).collect::<Vec<_>>().join(" ")),
    ];
    for (label, term) in &queries {
        for order in ["rank", "recent"] {
            let mut times = Vec::new();
            let mut found = 0;
            for _ in 0..30 {
                let t = Instant::now();
                let res = server
                    .post(
                        "/_matrix/client/v3/search",
                        Some(&user.token),
                        json!({"search_categories": {"room_events": {
                            "search_term": term, "order_by": order}}}),
                    )
                    .await?;
                times.push(t.elapsed());
                found = res["search_categories"]["room_events"]["count"].as_u64().unwrap_or(0);
            }
            times.sort();
            println!(
                "search {label:>11} ({order:>6}) over {events} events: p50 {:.1} ms, p99 {:.1} ms, count {found}",
                percentile(&times, 0.5).as_secs_f64() * 1e3,
                percentile(&times, 0.99).as_secs_f64() * 1e3,
            );
        }
    }
    Ok(())
}
