//! Relations: `/relations` (by type and event type, both directions, `recurse`), the
//! aggregations bundled into `unsigned.m.relations` wherever events are served (`m.replace`,
//! `m.reference`; `m.annotation` is not bundled), redactions, and the refusals at send time.

use complement_tests::{Session, TestServer, Value, assert_error, enc, json};
use reqwest::StatusCode;

async fn send(
    s: &TestServer,
    who: &Session,
    room: &str,
    kind: &str,
    txn: &str,
    content: Value,
) -> (StatusCode, Value) {
    s.put(
        &format!("/_matrix/client/v3/rooms/{}/send/{kind}/{txn}", enc(room)),
        who.token(),
        content,
    )
    .await
}

async fn sent(
    s: &TestServer,
    who: &Session,
    room: &str,
    kind: &str,
    txn: &str,
    content: Value,
) -> String {
    let (status, body) = send(s, who, room, kind, txn, content).await;
    assert_eq!(status, 200, "{body}");
    body["event_id"].as_str().expect("event_id").to_owned()
}

fn text(body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body})
}

fn reaction(parent: &str, key: &str) -> Value {
    json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": parent, "key": key}})
}

fn edit(parent: &str, body: &str) -> Value {
    json!({
        "msgtype": "m.text",
        "body": format!("* {body}"),
        "m.new_content": {"msgtype": "m.text", "body": body},
        "m.relates_to": {"rel_type": "m.replace", "event_id": parent},
    })
}

fn reference(parent: &str) -> Value {
    json!({"msgtype": "m.text", "body": "see", "m.relates_to": {"rel_type": "m.reference", "event_id": parent}})
}

async fn room_of_two(s: &TestServer, alice: &Session, bob: &Session) -> String {
    let room = s.create_room(alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(bob, &room).await.0, 200);
    room
}

/// `GET /_matrix/client/v1/rooms/{room}/relations/{event}{rest}`.
async fn relations(
    s: &TestServer,
    who: &Session,
    room: &str,
    event: &str,
    rest: &str,
) -> (StatusCode, Value) {
    let path = format!("/_matrix/client/v1/rooms/{}/relations/{}{rest}", enc(room), enc(event));
    s.get(&path, who.token()).await
}

async fn relation_ids(
    s: &TestServer,
    who: &Session,
    room: &str,
    event: &str,
    rest: &str,
) -> (Vec<String>, Option<String>) {
    let (status, body) = relations(s, who, room, event, rest).await;
    assert_eq!(status, 200, "{body}");
    let ids = body["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .map(|e| e["event_id"].as_str().expect("event_id").to_owned())
        .collect();
    (ids, body["next_batch"].as_str().map(str::to_owned))
}

async fn event(s: &TestServer, who: &Session, room: &str, event: &str) -> Value {
    let (status, body) = s.room_get(who, room, &format!("event/{}", enc(event))).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn redact(s: &TestServer, who: &Session, room: &str, event: &str, txn: &str) {
    let path = format!("/_matrix/client/v3/rooms/{}/redact/{}/{txn}", enc(room), enc(event));
    let (status, body) = s.put(&path, who.token(), json!({})).await;
    assert_eq!(status, 200, "{body}");
}

/// The event with this ID in a `/messages` page (newest first, 50 events).
async fn in_messages(s: &TestServer, who: &Session, room: &str, id: &str) -> Value {
    let (status, body) = s.room_get(who, room, "messages?dir=b&limit=50").await;
    assert_eq!(status, 200, "{body}");
    body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == id)
        .cloned()
        .expect("in /messages")
}

#[tokio::test]
async fn relations_are_listed_by_type_and_event_type_and_paginated_both_ways() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of_two(&s, &alice, &bob).await;
    let parent = sent(&s, &alice, &room, "m.room.message", "p", text("parent")).await;
    let mut reactions = Vec::new();
    for i in 0..5 {
        reactions.push(
            sent(
                &s,
                &bob,
                &room,
                "m.reaction",
                &format!("r{i}"),
                reaction(&parent, &format!("k{i}")),
            )
            .await,
        );
    }
    let reply = sent(&s, &bob, &room, "m.room.message", "ref", reference(&parent)).await;
    // An unrelated message and a plain reply (`m.in_reply_to` only) are no relations.
    sent(&s, &bob, &room, "m.room.message", "x", text("unrelated")).await;
    let in_reply = json!({"msgtype": "m.text", "body": "re", "m.relates_to": {"m.in_reply_to": {"event_id": parent}}});
    sent(&s, &bob, &room, "m.room.message", "y", in_reply).await;

    // All of them, newest first.
    let (ids, next) = relation_ids(&s, &alice, &room, &parent, "?limit=10").await;
    let mut all = reactions.clone();
    all.push(reply.clone());
    let newest_first: Vec<String> = all.iter().rev().cloned().collect();
    assert_eq!(ids, newest_first);
    assert!(next.is_none(), "nothing more");
    // By type, and by type and event type.
    let (ids, _) = relation_ids(&s, &alice, &room, &parent, "/m.reference").await;
    assert_eq!(ids, vec![reply.clone()]);
    let (ids, _) =
        relation_ids(&s, &alice, &room, &parent, "/m.annotation/m.reaction?limit=10").await;
    assert_eq!(ids, reactions.iter().rev().cloned().collect::<Vec<_>>());
    let (ids, _) = relation_ids(&s, &alice, &room, &parent, "/m.annotation/m.room.message").await;
    assert!(ids.is_empty());

    // Backwards in pages of two, then forwards in pages of two: every relation once.
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let rest = match &from {
            Some(f) => format!("?limit=2&from={f}"),
            None => "?limit=2".to_owned(),
        };
        let (ids, next) = relation_ids(&s, &alice, &room, &parent, &rest).await;
        assert!(ids.len() <= 2);
        seen.extend(ids);
        match next {
            Some(n) => from = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, newest_first, "backwards pages");
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let rest = match &from {
            Some(f) => format!("?dir=f&limit=2&from={f}"),
            None => "?dir=f&limit=2".to_owned(),
        };
        let (ids, next) = relation_ids(&s, &alice, &room, &parent, &rest).await;
        seen.extend(ids);
        match next {
            Some(n) => from = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, all, "forwards pages");
    // After a redaction in the middle, the pages skip it, both ways.
    redact(&s, &bob, &room, &reactions[2], "red").await;
    let remaining: Vec<String> = all.iter().filter(|id| **id != reactions[2]).cloned().collect();
    for (dir, expected) in
        [("b", remaining.iter().rev().cloned().collect::<Vec<_>>()), ("f", remaining.clone())]
    {
        let mut seen = Vec::new();
        let mut from: Option<String> = None;
        loop {
            let rest = match &from {
                Some(f) => format!("?dir={dir}&limit=2&from={f}"),
                None => format!("?dir={dir}&limit=2"),
            };
            let (ids, next) = relation_ids(&s, &alice, &room, &parent, &rest).await;
            seen.extend(ids);
            match next {
                Some(n) => from = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, expected, "dir={dir} after a redaction");
    }
    // The unstable path answers too.
    let path = format!("/_matrix/client/unstable/rooms/{}/relations/{}", enc(&room), enc(&parent));
    assert_eq!(s.get(&path, alice.token()).await.0, 200);
}

#[tokio::test]
async fn recurse_follows_relations_of_relations() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let root = sent(&s, &alice, &room, "m.room.message", "root", text("root")).await;
    let child = sent(&s, &alice, &room, "m.room.message", "c", reference(&root)).await;
    let grandchild = sent(&s, &alice, &room, "m.reaction", "g", reaction(&child, "👍")).await;
    let (_, body) = relations(&s, &alice, &room, &root, "").await;
    assert!(body.get("recursion_depth").is_none(), "{body}");
    assert_eq!(body["chunk"].as_array().unwrap().len(), 1);
    let (status, body) = relations(&s, &alice, &room, &root, "?recurse=true").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["recursion_depth"], 3, "{body}");
    let ids: Vec<&str> =
        body["chunk"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![grandchild.as_str(), child.as_str()]);
    // The filters apply to every level.
    let (_, body) = relations(&s, &alice, &room, &root, "/m.annotation?recurse=true").await;
    assert_eq!(body["chunk"][0]["event_id"], grandchild, "{body}");
    assert_eq!(body["chunk"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn edits_are_bundled_by_the_spec_rules_everywhere_events_are_served() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of_two(&s, &alice, &bob).await;
    let since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let original = sent(&s, &alice, &room, "m.room.message", "o", text("first")).await;
    let e1 = sent(&s, &alice, &room, "m.room.message", "e1", edit(&original, "second")).await;
    let e2 = sent(&s, &alice, &room, "m.room.message", "e2", edit(&original, "third")).await;
    // Ignored: an edit by someone else, one changing the type, one without m.new_content,
    // an edit of an edit.
    sent(&s, &bob, &room, "m.room.message", "b", edit(&original, "bob's")).await;
    sent(&s, &alice, &room, "org.example.other", "t", edit(&original, "other type")).await;
    let bare = json!({"msgtype": "m.text", "body": "x", "m.relates_to": {"rel_type": "m.replace", "event_id": original}});
    sent(&s, &alice, &room, "m.room.message", "n", bare).await;
    sent(&s, &alice, &room, "m.room.message", "ee", edit(&e2, "edit of edit")).await;

    let check = |view: &Value, latest: &str, body: &str| {
        let replace = &view["unsigned"]["m.relations"]["m.replace"];
        assert_eq!(replace["event_id"], latest, "{view}");
        assert_eq!(replace["content"]["m.new_content"]["body"], body, "{view}");
        assert_eq!(view["content"]["body"], "first", "the original's content is left alone");
        assert!(view["unsigned"]["m.relations"].get("m.annotation").is_none());
    };
    check(&event(&s, &bob, &room, &original).await, &e2, "third");
    check(&in_messages(&s, &bob, &room, &original).await, &e2, "third");
    let (status, ctx) =
        s.room_get(&bob, &room, &format!("context/{}?limit=2", enc(&original))).await;
    assert_eq!(status, 200, "{ctx}");
    check(&ctx["event"], &e2, "third");
    let filter = enc(&json!({"room": {"timeline": {"limit": 50}}}).to_string());
    let (_, body) = s
        .get(
            &format!("/_matrix/client/v3/sync?timeout=0&since={since}&filter={filter}"),
            bob.token(),
        )
        .await;
    let timeline = body["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    let in_sync = timeline.iter().find(|e| e["event_id"] == original).expect("in sync");
    check(in_sync, &e2, "third");
    // The edits themselves carry no bundle; an edited edit is not aggregated.
    assert!(event(&s, &bob, &room, &e2).await["unsigned"].get("m.relations").is_none());

    // Redacting the latest edit reverts to the one before; redacting the original drops it.
    redact(&s, &alice, &room, &e2, "r1").await;
    check(&event(&s, &bob, &room, &original).await, &e1, "second");
    let (ids, _) = relation_ids(&s, &bob, &room, &original, "/m.replace?limit=10").await;
    assert!(!ids.contains(&e2), "a redacted relation leaves /relations");
    redact(&s, &alice, &room, &original, "r2").await;
    let view = event(&s, &bob, &room, &original).await;
    assert!(view["unsigned"]["m.relations"].get("m.replace").is_none(), "{view}");
    assert!(view["content"].get("body").is_none(), "still redacted: {view}");
    // An edit sent after the redaction is not bundled either.
    sent(&s, &alice, &room, "m.room.message", "e3", edit(&original, "fourth")).await;
    let view = event(&s, &bob, &room, &original).await;
    assert!(
        view["unsigned"].get("m.relations").is_none_or(|r| r.get("m.replace").is_none()),
        "{view}"
    );
    assert!(view["content"].get("body").is_none(), "{view}");
}

#[tokio::test]
async fn references_are_bundled_and_reactions_are_not() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of_two(&s, &alice, &bob).await;
    let parent = sent(&s, &alice, &room, "m.room.message", "p", text("parent")).await;
    let r1 = sent(&s, &bob, &room, "m.room.message", "r1", reference(&parent)).await;
    let r2 = sent(&s, &alice, &room, "m.room.message", "r2", reference(&parent)).await;
    sent(&s, &bob, &room, "m.reaction", "k", reaction(&parent, "👍")).await;
    let view = event(&s, &alice, &room, &parent).await;
    let relations = &view["unsigned"]["m.relations"];
    assert_eq!(
        relations["m.reference"],
        json!({"chunk": [{"event_id": r1}, {"event_id": r2}]}),
        "{view}"
    );
    assert!(relations.get("m.annotation").is_none(), "no reaction bundle (spec v1.7): {view}");
    redact(&s, &bob, &room, &r1, "x").await;
    let view = event(&s, &alice, &room, &parent).await;
    assert_eq!(
        view["unsigned"]["m.relations"]["m.reference"],
        json!({"chunk": [{"event_id": r2}]})
    );
}

#[tokio::test]
async fn a_reaction_is_accepted_once_per_sender_and_key() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = room_of_two(&s, &alice, &bob).await;
    let parent = sent(&s, &alice, &room, "m.room.message", "p", text("parent")).await;
    let first = sent(&s, &bob, &room, "m.reaction", "1", reaction(&parent, "👍")).await;
    let again = send(&s, &bob, &room, "m.reaction", "2", reaction(&parent, "👍")).await;
    assert_error(&again, 400, "M_DUPLICATE_ANNOTATION");
    // Another key, another sender: fine. The retried transaction answers the first event.
    sent(&s, &bob, &room, "m.reaction", "3", reaction(&parent, "🎉")).await;
    sent(&s, &alice, &room, "m.reaction", "4", reaction(&parent, "👍")).await;
    assert_eq!(sent(&s, &bob, &room, "m.reaction", "1", reaction(&parent, "👍")).await, first);
    // Once redacted, the same reaction may be sent again.
    redact(&s, &bob, &room, &first, "r").await;
    sent(&s, &bob, &room, "m.reaction", "5", reaction(&parent, "👍")).await;
    let (ids, _) = relation_ids(&s, &bob, &room, &parent, "/m.annotation?limit=10").await;
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(!ids.contains(&first));
}

/// A relation to an event the sender may not read (another room's, or one before they
/// joined a room whose history is for members since joining) is answered exactly as one to
/// an event that does not exist, and stores nothing.
#[tokio::test]
async fn a_relation_reveals_nothing_of_events_the_sender_cannot_see() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s
        .create_room(
            &alice,
            json!({"preset": "public_chat", "initial_state": [{"type": "m.room.history_visibility",
            "state_key": "", "content": {"history_visibility": "joined"}}]}),
        )
        .await;
    let hidden = sent(&s, &alice, &room, "m.room.message", "h", text("before bob")).await;
    let hidden_like = sent(&s, &alice, &room, "m.reaction", "l", reaction(&hidden, "k")).await;
    let private = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    let elsewhere = sent(&s, &alice, &private, "m.room.message", "e", text("elsewhere")).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let unknown = send(&s, &bob, &room, "m.reaction", "1", reaction("$nope:test.local", "k")).await;
    assert_error(&unknown, 400, "M_UNKNOWN");
    for (txn, parent) in [("2", &hidden), ("3", &elsewhere)] {
        let res = send(&s, &bob, &room, "m.reaction", txn, reaction(parent, "k")).await;
        assert_eq!(res, unknown, "relating to {parent}");
    }
    // Nor does a thread reveal that a hidden event has a relation of its own.
    let thread = json!({"msgtype": "m.text", "body": "t", "m.relates_to": {"rel_type": "m.thread", "event_id": hidden_like}});
    assert_eq!(send(&s, &bob, &room, "m.room.message", "4", thread).await, unknown);
    // Alice, who sees the event, may relate to it; nothing of Bob's was stored.
    sent(&s, &alice, &room, "m.reaction", "5", reaction(&hidden, "j")).await;
    let (ids, _) = relation_ids(&s, &alice, &room, &hidden, "?limit=10").await;
    assert_eq!(ids.len(), 2, "{ids:?}");
}

#[tokio::test]
async fn bad_relations_are_refused_and_store_nothing() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let other = s.create_room(&alice, json!({})).await;
    let parent = sent(&s, &alice, &room, "m.room.message", "p", text("parent")).await;
    let elsewhere = sent(&s, &alice, &other, "m.room.message", "q", text("elsewhere")).await;
    // Unknown parent, a parent in another room (Synapse: 400 M_UNKNOWN).
    let res = send(&s, &alice, &room, "m.reaction", "1", reaction("$unknown:localhost", "k")).await;
    assert_error(&res, 400, "M_UNKNOWN");
    let res = send(&s, &alice, &room, "m.room.message", "2", reference("not an id")).await;
    assert_error(&res, 400, "M_UNKNOWN");
    let res = send(&s, &alice, &room, "m.reaction", "3", reaction(&elsewhere, "k")).await;
    assert_error(&res, 400, "M_UNKNOWN");
    // A reaction without a key, or with a key over 500 bytes.
    let keyless = json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": parent}});
    assert_error(&send(&s, &alice, &room, "m.reaction", "4", keyless).await, 400, "M_UNKNOWN");
    let long = reaction(&parent, &"k".repeat(501));
    assert_error(&send(&s, &alice, &room, "m.reaction", "5", long).await, 400, "M_UNKNOWN");
    // A thread from an event with a relation (a thread reply, a reaction).
    let thread = |root: &str| json!({"msgtype": "m.text", "body": "t", "m.relates_to": {"rel_type": "m.thread", "event_id": root}});
    let reply = sent(&s, &alice, &room, "m.room.message", "6", thread(&parent)).await;
    assert_error(
        &send(&s, &alice, &room, "m.room.message", "7", thread(&reply)).await,
        400,
        "M_UNKNOWN",
    );
    let like = sent(&s, &alice, &room, "m.reaction", "8", reaction(&parent, "k")).await;
    assert_error(
        &send(&s, &alice, &room, "m.room.message", "9", thread(&like)).await,
        400,
        "M_UNKNOWN",
    );
    // Nothing refused was stored.
    let (ids, _) = relation_ids(&s, &alice, &room, &parent, "?limit=10").await;
    assert_eq!(ids, vec![like.clone(), reply.clone()]);
    assert!(relation_ids(&s, &alice, &room, &reply, "").await.0.is_empty());
    // Bad tokens; unknown or invisible parents.
    assert_error(
        &relations(&s, &alice, &room, &parent, "?from=nonsense").await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(&relations(&s, &alice, &room, &parent, "?to=x1").await, 400, "M_INVALID_PARAM");
    assert_error(&relations(&s, &alice, &room, "$nope:localhost", "").await, 404, "M_NOT_FOUND");
    assert_error(&relations(&s, &alice, &room, &elsewhere, "").await, 404, "M_NOT_FOUND");
    let eve = s.register("eve", "eve-password").await;
    let res = relations(&s, &eve, &room, &parent, "").await;
    assert!(matches!(res.0.as_u16(), 403 | 404), "{res:?}");
}

#[tokio::test]
async fn only_relations_the_user_may_see_are_listed_and_bundled() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    // History visible from one's join only.
    let room = s
        .create_room(&alice, json!({"preset": "public_chat", "initial_state": [{"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}]}))
        .await;
    let parent = sent(&s, &alice, &room, "m.room.message", "p", text("parent")).await;
    let early = sent(&s, &alice, &room, "m.room.message", "r1", reference(&parent)).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let late = sent(&s, &alice, &room, "m.room.message", "r2", reference(&parent)).await;
    let before = sent(&s, &alice, &room, "m.room.message", "x", text("x")).await;
    let _ = (early, before);
    // Bob cannot see the parent: 404.
    assert_error(&relations(&s, &bob, &room, &parent, "").await, 404, "M_NOT_FOUND");
    // Bob sees the late reference's own relations; Alice sees both on the parent.
    let view = event(&s, &alice, &room, &parent).await;
    assert_eq!(
        view["unsigned"]["m.relations"]["m.reference"]["chunk"].as_array().unwrap().len(),
        2
    );
    let child = sent(&s, &alice, &room, "m.room.message", "c", reference(&late)).await;
    let (ids, _) = relation_ids(&s, &bob, &room, &late, "").await;
    assert_eq!(ids, vec![child]);
}

#[tokio::test]
async fn the_relations_index_survives_kill_9() {
    let mut s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let parent = sent(&s, &alice, &room, "m.room.message", "p", text("parent")).await;
    let e = sent(&s, &alice, &room, "m.room.message", "e", edit(&parent, "edited")).await;
    let like = sent(&s, &alice, &room, "m.reaction", "k", reaction(&parent, "k")).await;
    s.crash_and_restart().await;
    assert_eq!(
        event(&s, &alice, &room, &parent).await["unsigned"]["m.relations"]["m.replace"]["event_id"],
        e
    );
    let (ids, _) = relation_ids(&s, &alice, &room, &parent, "").await;
    assert_eq!(ids, vec![like, e]);
    assert_error(
        &send(&s, &alice, &room, "m.reaction", "k2", reaction(&parent, "k")).await,
        400,
        "M_DUPLICATE_ANNOTATION",
    );
}
