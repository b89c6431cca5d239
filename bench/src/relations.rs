//! `axon-bench relations EVENTS REACTORS REQUESTS`: a room of EVENTS messages, each with
//! REACTORS reactions (one per user) and an edit; then REQUESTS times the `/messages` page
//! of those EVENTS messages (each served with its bundled aggregations, computed from the
//! relations index), p50/p99, against the same page in a room without relations. Send
//! throughput of the reactions and edits (REACTORS concurrent senders) against plain
//! messages sent the same way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Error, Server, User, enc, percentile, unique};

async fn put(
    server: &Server,
    user: &User,
    room: &str,
    kind: &str,
    txn: &str,
    body: Value,
) -> Result<String, Error> {
    let url = format!("{}/_matrix/client/v3/rooms/{}/send/{kind}/{txn}", server.base, enc(room));
    let res = server.http.put(url).bearer_auth(&user.token).json(&body).send().await?;
    let status = res.status();
    let body: Value = res.json().await?;
    if !status.is_success() {
        return Err(format!("send {kind}: {status} {body}").into());
    }
    Ok(body["event_id"].as_str().ok_or("no event_id")?.to_owned())
}

/// Sends `per_user` events for each user concurrently (one task per user); events/s.
async fn burst(
    server: &Arc<Server>,
    users: &[Arc<User>],
    room: &str,
    per_user: usize,
    event: impl Fn(usize, usize) -> (String, Value),
) -> Result<f64, Error> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (u, user) in users.iter().enumerate() {
        let (server, user, room) = (server.clone(), user.clone(), room.to_owned());
        let events: Vec<(String, Value)> = (0..per_user).map(|i| event(u, i)).collect();
        tasks.push(tokio::spawn(async move {
            for (i, (kind, body)) in events.into_iter().enumerate() {
                put(&server, &user, &room, &kind, &format!("b{}-{i}", unique("")), body).await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((users.len() * per_user) as f64 / started.elapsed().as_secs_f64())
}

/// The stream token right after everything sent so far (`next_batch` of a sync).
async fn token_now(server: &Server, user: &User) -> Result<String, Error> {
    let body =
        server.sync_filtered(user, None, 0, json!({"room": {"timeline": {"limit": 1}}})).await?;
    Ok(body["next_batch"].as_str().ok_or("no next_batch")?.to_owned())
}

async fn page_latency(
    server: &Server,
    user: &User,
    room: &str,
    from: &str,
    events: usize,
    requests: usize,
) -> Result<(Vec<Duration>, usize), Error> {
    let url = format!(
        "{}/_matrix/client/v3/rooms/{}/messages?dir=b&limit={events}&from={from}",
        server.base,
        enc(room)
    );
    let mut times = Vec::with_capacity(requests);
    let mut bytes = 0;
    for _ in 0..requests {
        let started = Instant::now();
        let res = server.http.get(&url).bearer_auth(&user.token).send().await?;
        let body = res.bytes().await?;
        times.push(started.elapsed());
        bytes = body.len();
    }
    times.sort();
    Ok((times, bytes))
}

pub async fn relations(
    server: Arc<Server>,
    events: usize,
    reactors: usize,
    requests: usize,
) -> Result<(), Error> {
    let setup = Instant::now();
    let alice = Arc::new(server.register(&unique("rel_a")).await?);
    let mut users = Vec::new();
    for i in 0..reactors.max(1) {
        users.push(Arc::new(server.register(&unique(&format!("rel{i}_"))).await?));
    }
    let room = server.create_room(&alice).await?;
    let plain = server.create_room(&alice).await?;
    for u in &users {
        for r in [&room, &plain] {
            server
                .post(&format!("/_matrix/client/v3/join/{}", enc(r)), Some(&u.token), json!({}))
                .await?;
        }
    }
    let mut originals = Vec::with_capacity(events);
    for i in 0..events {
        let body = json!({"msgtype": "m.text", "body": format!("message {i}")});
        originals.push(
            put(&server, &alice, &room, "m.room.message", &unique(&format!("o{i}_")), body.clone())
                .await?,
        );
        put(&server, &alice, &plain, "m.room.message", &unique(&format!("p{i}_")), body).await?;
    }
    let from_rel = token_now(&server, &alice).await?;
    let originals = Arc::new(originals);

    // Reactions: every user reacts once to every message, users concurrently.
    let ids = originals.clone();
    let reaction_rate = burst(&server, &users, &room, events, move |_, i| {
        (
            "m.reaction".to_owned(),
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": ids[i], "key": "👍"}}),
        )
    })
    .await?;
    // Plain messages, the same number, the same way.
    let plain_rate = burst(&server, &users, &plain, events, |u, i| {
        (
            "m.room.message".to_owned(),
            json!({"msgtype": "m.text", "body": format!("plain {u} {i}")}),
        )
    })
    .await?;
    // An edit of each message by its sender.
    let started = Instant::now();
    for (i, id) in originals.iter().enumerate() {
        let body = json!({
            "msgtype": "m.text", "body": format!("* edited {i}"),
            "m.new_content": {"msgtype": "m.text", "body": format!("edited {i}")},
            "m.relates_to": {"rel_type": "m.replace", "event_id": id},
        });
        put(&server, &alice, &room, "m.room.message", &unique(&format!("e{i}_")), body).await?;
    }
    let edit_rate = events as f64 / started.elapsed().as_secs_f64();
    let setup = setup.elapsed();

    // The page of the originals, each with its bundle, against the plain room's.
    let (with, with_bytes) =
        page_latency(&server, &alice, &room, &from_rel, events, requests).await?;
    // Tokens are stream positions: the same one ends the plain room's originals.
    let (without, without_bytes) =
        page_latency(&server, &alice, &plain, &from_rel, events, requests).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "relations: {events} events × {} reactions + 1 edit; /messages page of {events} ({} requests): with bundles p50 {:.1} ms, p99 {:.1} ms ({with_bytes} bytes); plain room p50 {:.1} ms, p99 {:.1} ms ({without_bytes} bytes); sends: reactions {reaction_rate:.0}/s, plain messages {plain_rate:.0}/s ({} concurrent senders), edits {edit_rate:.0}/s (one sender) (setup {:.1}s)",
        users.len(),
        requests,
        ms(percentile(&with, 0.5)),
        ms(percentile(&with, 0.99)),
        ms(percentile(&without, 0.5)),
        ms(percentile(&without, 0.99)),
        users.len(),
        setup.as_secs_f64(),
    );
    // The page really carries the edits.
    let url = format!(
        "{}/_matrix/client/v3/rooms/{}/messages?dir=b&limit={events}&from={from_rel}",
        server.base,
        enc(&room)
    );
    let body: Value = server.http.get(url).bearer_auth(&alice.token).send().await?.json().await?;
    let chunk = body["chunk"].as_array().ok_or("no chunk")?;
    let edited =
        chunk.iter().filter(|e| e["unsigned"]["m.relations"]["m.replace"].is_object()).count();
    if edited != events {
        return Err(format!("{edited} of {} events carried their edit", chunk.len()).into());
    }
    Ok(())
}
