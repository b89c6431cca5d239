//! Redactions: who may redact what (through `/redact` and `/send/m.room.redaction` alike),
//! and that a redacted event is redacted everywhere it is shown, also after a restart.

use complement_tests::{Session, TestServer, Value, assert_error, enc, json};
use reqwest::StatusCode;

/// `PUT /rooms/{room}/redact/{event}/{txn}`.
async fn redact(
    s: &TestServer,
    who: &Session,
    room: &str,
    event: &str,
    txn: &str,
) -> (StatusCode, Value) {
    let path = format!("/_matrix/client/v3/rooms/{}/redact/{}/{txn}", enc(room), enc(event));
    s.put(&path, who.token(), json!({"reason": "because"})).await
}

/// `PUT /rooms/{room}/send/m.room.redaction/{txn}` with `redacts` in the content, as clients
/// send it (for every room version; the server moves it to the top level before v11).
async fn send_redaction(
    s: &TestServer,
    who: &Session,
    room: &str,
    event: &str,
    txn: &str,
) -> (StatusCode, Value) {
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.redaction/{txn}", enc(room));
    s.put(&path, who.token(), json!({"redacts": event, "reason": "because"})).await
}

/// `GET /rooms/{room}/event/{event}`, asserting success.
async fn event(s: &TestServer, who: &Session, room: &str, event: &str) -> Value {
    let path = format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room), enc(event));
    let (status, body) = s.get(&path, who.token()).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn event_id(response: &(StatusCode, Value)) -> String {
    assert_eq!(response.0, 200, "{}", response.1);
    response.1["event_id"].as_str().expect("event_id").to_owned()
}

#[tokio::test]
async fn redacting_an_event_of_another_room_is_not_found_and_changes_nothing() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    for version in ["10", "12"] {
        let bobs_room = s.create_room(&bob, json!({"room_version": version})).await;
        let secret =
            event_id(&s.send_text(&bob, &bobs_room, &format!("b{version}"), "secret").await);
        // Alice moderates a room of her own, but is not in Bob's.
        let alices_room = s.create_room(&alice, json!({"room_version": version})).await;
        let res = send_redaction(&s, &alice, &alices_room, &secret, &format!("s{version}")).await;
        assert_error(&res, 404, "M_NOT_FOUND");
        let res = redact(&s, &alice, &alices_room, &secret, &format!("r{version}")).await;
        assert_error(&res, 404, "M_NOT_FOUND");
        let ev = event(&s, &bob, &bobs_room, &secret).await;
        assert_eq!(ev["content"]["body"], "secret", "v{version}: {ev}");
        assert!(ev["unsigned"].get("redacted_because").is_none(), "v{version}: {ev}");
    }
}

#[tokio::test]
async fn an_ordinary_member_cannot_redact_another_users_message_through_either_endpoint() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let carol = s.register("carol", "carol-password").await;
    for version in ["10", "12"] {
        let room =
            s.create_room(&alice, json!({"room_version": version, "preset": "public_chat"})).await;
        s.join(&bob, &room).await;
        s.join(&carol, &room).await;
        let bobs = event_id(&s.send_text(&bob, &room, &format!("b{version}"), "bob's").await);
        let res = send_redaction(&s, &carol, &room, &bobs, &format!("s{version}")).await;
        assert_error(&res, 403, "M_FORBIDDEN");
        let res = redact(&s, &carol, &room, &bobs, &format!("r{version}")).await;
        assert_error(&res, 403, "M_FORBIDDEN");
        let ev = event(&s, &alice, &room, &bobs).await;
        assert_eq!(ev["content"]["body"], "bob's", "v{version}: {ev}");
    }
}

#[tokio::test]
async fn the_sender_and_a_moderator_can_redact_through_send() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    for version in ["10", "12"] {
        let room =
            s.create_room(&alice, json!({"room_version": version, "preset": "public_chat"})).await;
        s.join(&bob, &room).await;
        let first = event_id(&s.send_text(&bob, &room, &format!("b1-{version}"), "one").await);
        let second = event_id(&s.send_text(&bob, &room, &format!("b2-{version}"), "two").await);
        let by_alice =
            event_id(&send_redaction(&s, &alice, &room, &first, &format!("a{version}")).await);
        let by_bob =
            event_id(&send_redaction(&s, &bob, &room, &second, &format!("b{version}")).await);
        for (target, redaction) in [(&first, &by_alice), (&second, &by_bob)] {
            let ev = event(&s, &bob, &room, target).await;
            assert_eq!(ev["content"], json!({}), "v{version}: {ev}");
            assert_eq!(ev["unsigned"]["redacted_because"]["event_id"], redaction.as_str());
            // Clients find the target at the top level in every version (and in the
            // content from v11 on).
            let r = event(&s, &bob, &room, redaction).await;
            assert_eq!(r["redacts"], target.as_str(), "v{version}: {r}");
            if version == "12" {
                assert_eq!(r["content"]["redacts"], target.as_str(), "{r}");
            }
        }
    }
}

#[tokio::test]
async fn redacting_an_unknown_event_is_not_found() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let unknown = "$doesnotexist0000000000000000000000000000000";
    assert_error(&redact(&s, &alice, &room, unknown, "r1").await, 404, "M_NOT_FOUND");
    assert_error(&send_redaction(&s, &alice, &room, unknown, "s1").await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn a_redaction_without_a_valid_redacts_is_bad_json() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.redaction/x1", enc(&room));
    assert_error(&s.put(&path, alice.token(), json!({})).await, 400, "M_BAD_JSON");
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.redaction/x2", enc(&room));
    let res = s.put(&path, alice.token(), json!({"redacts": "not an event ID"})).await;
    assert_error(&res, 400, "M_BAD_JSON");
}

#[tokio::test]
async fn redacting_in_an_unknown_room_or_one_not_joined_is_forbidden() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let id = event_id(&s.send_text(&alice, &room, "t1", "hello").await);
    let unknown_room = "!nowhere:test.local";
    assert_error(&redact(&s, &alice, unknown_room, &id, "r1").await, 403, "M_FORBIDDEN");
    assert_error(&send_redaction(&s, &alice, unknown_room, &id, "s1").await, 403, "M_FORBIDDEN");
    assert_error(&redact(&s, &bob, &room, &id, "r2").await, 403, "M_FORBIDDEN");
    assert_error(&send_redaction(&s, &bob, &room, &id, "s2").await, 403, "M_FORBIDDEN");
    assert_eq!(event(&s, &alice, &room, &id).await["content"]["body"], "hello");
}

#[tokio::test]
async fn the_create_event_cannot_be_redacted() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.create/?format=event", enc(&room));
    let (_, create) = s.get(&path, alice.token()).await;
    let id = create["event_id"].as_str().expect("create event_id");
    assert_error(&redact(&s, &alice, &room, id, "r1").await, 403, "M_FORBIDDEN");
}

/// The `m.room.name` state event as `/state` lists it.
fn name_event(state: &Value) -> Value {
    state.as_array().unwrap().iter().find(|e| e["type"] == "m.room.name").cloned().unwrap()
}

#[tokio::test]
async fn a_redacted_room_name_is_redacted_in_state_and_sync_also_after_a_restart() {
    let mut s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({"name": "Secret plans"})).await;
    let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.name/?format=event", enc(&room));
    let (_, name) = s.get(&path, alice.token()).await;
    let name_id = name["event_id"].as_str().expect("name event_id").to_owned();
    let redaction = event_id(&redact(&s, &alice, &room, &name_id, "r1").await);
    for round in ["before restart", "after restart"] {
        let (_, state) =
            s.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(&room)), alice.token()).await;
        let ev = name_event(&state);
        assert_eq!(ev["content"], json!({}), "{round}: {ev}");
        assert_eq!(ev["unsigned"]["redacted_because"]["event_id"], redaction, "{round}: {ev}");
        let (status, content) = s
            .get(
                &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
                alice.token(),
            )
            .await;
        assert_eq!(status, 200, "{round}: {content}");
        assert_eq!(content, json!({}), "{round}");
        let (_, full) = s.get(&path, alice.token()).await;
        assert_eq!(full["content"], json!({}), "{round}: {full}");
        assert_eq!(full["unsigned"]["redacted_because"]["event_id"], redaction, "{round}: {full}");
        // An initial sync shows the name event, in the state block or the timeline.
        let sync = s.sync(&alice, None, 0).await;
        let r = &sync["rooms"]["join"][&room];
        let shown: Vec<&Value> = r["state"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .chain(r["timeline"]["events"].as_array().unwrap())
            .filter(|e| e["event_id"] == name_id.as_str())
            .collect();
        assert_eq!(shown.len(), 1, "{round}: {r}");
        assert_eq!(shown[0]["content"], json!({}), "{round}: {r}");
        assert_eq!(shown[0]["unsigned"]["redacted_because"]["event_id"], redaction, "{round}");
        if round == "before restart" {
            s.crash_and_restart().await;
        }
    }
}

#[tokio::test]
async fn a_redacted_member_event_loses_its_displayname_everywhere() {
    let mut s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.member/{}?format=event",
        enc(&room),
        enc(&bob.user_id)
    );
    let (_, member) = s.get(&path, alice.token()).await;
    assert_eq!(member["content"]["displayname"], "bob", "{member}");
    let member_id = member["event_id"].as_str().unwrap().to_owned();
    s.send_text(&bob, &room, "b1", "hi").await;
    let redaction = event_id(&redact(&s, &alice, &room, &member_id, "r1").await);
    let redacted = json!({"membership": "join"});
    for round in ["before restart", "after restart"] {
        let (_, members) =
            s.get(&format!("/_matrix/client/v3/rooms/{}/members", enc(&room)), alice.token()).await;
        let ev = members["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["state_key"] == bob.user_id.as_str())
            .cloned()
            .unwrap();
        assert_eq!(ev["content"], redacted, "{round}: {ev}");
        assert_eq!(ev["unsigned"]["redacted_because"]["event_id"], redaction, "{round}: {ev}");
        let ev = event(&s, &alice, &room, &member_id).await;
        assert_eq!(ev["content"], redacted, "{round}: {ev}");
        assert_eq!(ev["unsigned"]["redacted_because"]["event_id"], redaction, "{round}: {ev}");
        let (_, joined) = s
            .get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)), alice.token())
            .await;
        assert!(joined["joined"][&bob.user_id]["display_name"].is_null(), "{round}: {joined}");
        // Lazy-loaded members of /messages come from the cached state.
        let filter = enc(&json!({"lazy_load_members": true}).to_string());
        let (_, msgs) = s
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=2&filter={filter}",
                    enc(&room)
                ),
                alice.token(),
            )
            .await;
        let lazy = msgs["state"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["state_key"] == bob.user_id.as_str())
            .cloned()
            .unwrap();
        assert_eq!(lazy["content"], redacted, "{round}: {msgs}");
        // Bob's initial sync shows his member event redacted.
        let sync = s.sync(&bob, None, 0).await;
        let r = &sync["rooms"]["join"][&room];
        let shown: Vec<&Value> = r["state"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .chain(r["timeline"]["events"].as_array().unwrap())
            .filter(|e| e["event_id"] == member_id.as_str())
            .collect();
        assert_eq!(shown.len(), 1, "{round}: {r}");
        assert_eq!(shown[0]["content"], redacted, "{round}: {r}");
        assert_eq!(shown[0]["unsigned"]["redacted_because"]["event_id"], redaction, "{round}");
        if round == "before restart" {
            s.crash_and_restart().await;
        }
    }
}

#[tokio::test]
async fn a_redacted_message_is_redacted_in_event_messages_and_sync_also_after_a_restart() {
    let mut s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let id = event_id(&s.send_text(&alice, &room, "t1", "regret").await);
    let redaction = event_id(&send_redaction(&s, &alice, &room, &id, "r1").await);
    for round in ["before restart", "after restart"] {
        let ev = event(&s, &alice, &room, &id).await;
        assert_eq!(ev["content"], json!({}), "{round}: {ev}");
        assert_eq!(ev["unsigned"]["redacted_because"]["event_id"], redaction, "{round}: {ev}");
        let (_, msgs) = s
            .get(
                &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=5", enc(&room)),
                alice.token(),
            )
            .await;
        let ev = msgs["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == id.as_str());
        let ev = ev.cloned().unwrap();
        assert_eq!(ev["content"], json!({}), "{round}: {ev}");
        assert_eq!(ev["unsigned"]["redacted_because"]["event_id"], redaction, "{round}: {ev}");
        let sync = s.sync(&alice, None, 0).await;
        let timeline = &sync["rooms"]["join"][&room]["timeline"]["events"];
        let ev = timeline.as_array().unwrap().iter().find(|e| e["event_id"] == id.as_str());
        let ev = ev.cloned().unwrap();
        assert_eq!(ev["content"], json!({}), "{round}: {ev}");
        assert_eq!(ev["unsigned"]["redacted_because"]["event_id"], redaction, "{round}: {ev}");
        if round == "before restart" {
            s.crash_and_restart().await;
        }
    }
}
