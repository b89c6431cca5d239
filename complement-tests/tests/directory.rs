//! Room aliases, the public room directory, /context and /timestamp_to_event.

use complement_tests::{TestServer, assert_error, enc, json};

#[tokio::test]
async fn an_alias_resolves_and_can_be_added_and_removed() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"room_alias_name": "main"})).await;
    let (status, body) = s
        .get(&format!("/_matrix/client/v3/directory/room/{}", enc("#main:test.local")), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["room_id"], room);
    assert_eq!(body["servers"], json!(["test.local"]));

    let extra = format!("/_matrix/client/v3/directory/room/{}", enc("#extra:test.local"));
    assert_eq!(s.put(&extra, alice.token(), json!({"room_id": room})).await.0, 200);
    assert_error(&s.put(&extra, alice.token(), json!({"room_id": room})).await, 409, "M_UNKNOWN");
    let (_, aliases) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/aliases", enc(&room)), alice.token()).await;
    assert_eq!(aliases["aliases"].as_array().unwrap().len(), 2);
    // Bob is not in the room: he can neither add nor delete aliases.
    let other = format!("/_matrix/client/v3/directory/room/{}", enc("#bobs:test.local"));
    assert_error(&s.put(&other, bob.token(), json!({"room_id": room})).await, 403, "M_FORBIDDEN");
    let res = s.request(reqwest::Method::DELETE, &extra, bob.token(), None).await;
    assert_error(&res, 403, "M_FORBIDDEN");
    let res = s.request(reqwest::Method::DELETE, &extra, alice.token(), None).await;
    assert_eq!(res.0, 200);
    assert_error(&s.get(&extra, None).await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn public_rooms_lists_published_rooms_only() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let public = s.create_room(&alice, json!({"visibility": "public", "preset": "public_chat", "name": "Town Square", "topic": "all welcome"})).await;
    let private = s.create_room(&alice, json!({"name": "Hidden"})).await;
    let (status, body) = s.get("/_matrix/client/v3/publicRooms", None).await;
    assert_eq!(status, 200, "{body}");
    let chunk = body["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 1);
    assert_eq!(chunk[0]["room_id"], public);
    assert_eq!(chunk[0]["name"], "Town Square");
    assert_eq!(chunk[0]["num_joined_members"], 1);
    assert_eq!(chunk[0]["join_rule"], "public");

    // Publishing the other one, then searching.
    let path = format!("/_matrix/client/v3/directory/list/room/{}", enc(&private));
    assert_eq!(s.put(&path, alice.token(), json!({"visibility": "public"})).await.0, 200);
    let (_, vis) = s.get(&path, None).await;
    assert_eq!(vis["visibility"], "public");
    let (_, found) = s
        .post(
            "/_matrix/client/v3/publicRooms",
            alice.token(),
            json!({"filter": {"generic_search_term": "town"}}),
        )
        .await;
    assert_eq!(found["chunk"].as_array().unwrap().len(), 1);
    let (_, paged) = s.get("/_matrix/client/v3/publicRooms?limit=1", None).await;
    assert_eq!(paged["chunk"].as_array().unwrap().len(), 1);
    let next = paged["next_batch"].as_str().unwrap();
    let (_, second) =
        s.get(&format!("/_matrix/client/v3/publicRooms?limit=1&since={next}"), None).await;
    assert_eq!(second["chunk"].as_array().unwrap().len(), 1);
    assert_ne!(second["chunk"][0]["room_id"], paged["chunk"][0]["room_id"]);
}

#[tokio::test]
async fn context_returns_the_event_with_its_neighbours() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let (_, body) = s.send_text(&alice, &room, &format!("t{i}"), &format!("m{i}")).await;
        ids.push(body["event_id"].as_str().unwrap().to_owned());
    }
    let (status, body) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/context/{}?limit=4", enc(&room), enc(&ids[3])),
            alice.token(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["event"]["content"]["body"], "m3");
    let before: Vec<_> = body["events_before"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].clone())
        .collect();
    let after: Vec<_> = body["events_after"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].clone())
        .collect();
    assert_eq!(before, vec![json!("m2"), json!("m1")]);
    assert_eq!(after, vec![json!("m4"), json!("m5")]);
    assert!(body["state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"));
    // The end token continues forwards.
    let (_, more) = s
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=f&from={}",
                enc(&room),
                body["end"].as_str().unwrap()
            ),
            alice.token(),
        )
        .await;
    assert_eq!(more["chunk"][0]["content"]["body"], "m6");
}

#[tokio::test]
async fn timestamp_to_event_finds_the_nearest_event() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let (_, first) = s.send_text(&alice, &room, "t1", "early").await;
    let (_, ev) = s
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room),
                enc(first["event_id"].as_str().unwrap())
            ),
            alice.token(),
        )
        .await;
    let ts = ev["origin_server_ts"].as_u64().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    s.send_text(&alice, &room, "t2", "late").await;
    let path =
        format!("/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={}&dir=b", enc(&room), ts + 5);
    let (status, body) = s.get(&path, alice.token()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["event_id"], first["event_id"]);
    let path =
        format!("/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={}&dir=f", enc(&room), ts + 1);
    let (_, body) = s.get(&path, alice.token()).await;
    assert_ne!(body["event_id"], first["event_id"]);
    let path = format!(
        "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={}&dir=f",
        enc(&room),
        ts + 100_000
    );
    assert_error(&s.get(&path, alice.token()).await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn setting_visibility_without_a_value_publishes_the_room() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({"name": "Default"})).await;
    let path = format!("/_matrix/client/v3/directory/list/room/{}", enc(&room));
    let (status, body) = s.put(&path, alice.token(), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (_, vis) = s.get(&path, None).await;
    assert_eq!(vis["visibility"], "public");
}

#[tokio::test]
async fn an_unknown_visibility_is_m_invalid_param() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({"name": "Odd"})).await;
    let path = format!("/_matrix/client/v3/directory/list/room/{}", enc(&room));
    assert_error(
        &s.put(&path, alice.token(), json!({"visibility": "secret"})).await,
        400,
        "M_INVALID_PARAM",
    );
    let (_, vis) = s.get(&path, None).await;
    assert_eq!(vis["visibility"], "private");
}

/// Paging through `/publicRooms` with `since` visits every published room exactly once, in a
/// stable order (most joined first), with the total in `total_room_count_estimate`;
/// `prev_batch` leads back; a search term pages the same way.
#[tokio::test]
async fn public_room_pagination_is_stable() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let mut rooms = Vec::new();
    for i in 0..5 {
        let body = json!({"visibility": "public", "preset": "public_chat",
            "name": format!("Room {i}"), "topic": if i % 2 == 0 { "Gardening" } else { "chess" }});
        rooms.push(s.create_room(&alice, body).await);
    }
    // One room with two members comes first.
    assert_eq!(s.join(&bob, &rooms[3]).await.0, 200);
    let mut seen = Vec::new();
    let mut since: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let path = match &since {
            Some(t) => format!("/_matrix/client/v3/publicRooms?limit=2&since={t}"),
            None => "/_matrix/client/v3/publicRooms?limit=2".to_owned(),
        };
        let (status, page) = s.get(&path, None).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["total_room_count_estimate"], 5);
        seen.extend(
            page["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["room_id"].as_str().unwrap().to_owned()),
        );
        pages.push(page.clone());
        match page["next_batch"].as_str() {
            Some(next) => since = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(seen[0], rooms[3]);
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 5);
    // The second page's prev_batch gives the first page again.
    let prev = pages[1]["prev_batch"].as_str().expect("prev_batch");
    let (_, back) =
        s.get(&format!("/_matrix/client/v3/publicRooms?limit=2&since={prev}"), None).await;
    assert_eq!(back["chunk"], pages[0]["chunk"]);
    // A search term (case-insensitive), paged.
    let (_, found) = s
        .post(
            "/_matrix/client/v3/publicRooms",
            alice.token(),
            json!({"limit": 2, "filter": {"generic_search_term": "GARDEN"}}),
        )
        .await;
    assert_eq!(found["total_room_count_estimate"], 3, "{found}");
    assert_eq!(found["chunk"].as_array().unwrap().len(), 2);
    let next = found["next_batch"].as_str().expect("next_batch");
    let (_, rest) = s
        .post(
            "/_matrix/client/v3/publicRooms",
            alice.token(),
            json!({"limit": 2, "since": next, "filter": {"generic_search_term": "GARDEN"}}),
        )
        .await;
    assert_eq!(rest["chunk"].as_array().unwrap().len(), 1, "{rest}");
}
