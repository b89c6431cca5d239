//! Room tags (`/user/{userId}/rooms/{roomId}/tags`): room account data `m.tag`.

use complement_tests::{Session, TestServer, assert_error, enc, json};
use reqwest::Method;

fn tags_path(who: &Session, room: &str) -> String {
    format!("/_matrix/client/v3/user/{}/rooms/{}/tags", enc(&who.user_id), enc(room))
}

#[tokio::test]
async fn tags_are_set_listed_deleted_and_synced() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let room = s.create_room(&alice, json!({})).await;
    let path = tags_path(&alice, &room);

    let (status, body) = s.get(&path, alice.token()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"tags": {}}));

    let res = s.put(&format!("{path}/u.work"), alice.token(), json!({"order": 0.25})).await;
    assert_eq!(res.0, 200, "{}", res.1);
    let res = s.put(&format!("{path}/m.favourite"), alice.token(), json!({})).await;
    assert_eq!(res.0, 200, "{}", res.1);
    let (_, body) = s.get(&path, alice.token()).await;
    assert_eq!(body, json!({"tags": {"u.work": {"order": 0.25}, "m.favourite": {}}}));

    // /sync delivers them as the room's account data.
    let sync = s.sync(&alice, None, 0).await;
    let events = sync["rooms"]["join"][&room]["account_data"]["events"].as_array().unwrap();
    let tag = events.iter().find(|e| e["type"] == "m.tag").expect("m.tag in sync");
    assert_eq!(tag["content"]["tags"]["u.work"]["order"], 0.25);
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    let res = s.request(Method::DELETE, &format!("{path}/u.work"), alice.token(), None).await;
    assert_eq!(res.0, 200, "{}", res.1);
    // Deleting a tag that is not there is not an error.
    let res = s.request(Method::DELETE, &format!("{path}/u.none"), alice.token(), None).await;
    assert_eq!(res.0, 200, "{}", res.1);
    let (_, body) = s.get(&path, alice.token()).await;
    assert_eq!(body, json!({"tags": {"m.favourite": {}}}));

    let sync = s.sync(&alice, Some(&since), 0).await;
    let events = sync["rooms"]["join"][&room]["account_data"]["events"].as_array().unwrap();
    let tag = events.iter().find(|e| e["type"] == "m.tag").expect("the change is synced");
    assert_eq!(tag["content"], json!({"tags": {"m.favourite": {}}}));
}

#[tokio::test]
async fn tags_are_only_for_oneself_and_validated() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let path = tags_path(&alice, &room);

    // Another user's tags: neither read nor written.
    assert_error(&s.get(&path, bob.token()).await, 403, "M_FORBIDDEN");
    let res = s.put(&format!("{path}/u.x"), bob.token(), json!({})).await;
    assert_error(&res, 403, "M_FORBIDDEN");
    let res = s.request(Method::DELETE, &format!("{path}/u.x"), bob.token(), None).await;
    assert_error(&res, 403, "M_FORBIDDEN");

    // A tag name too long, an order that is not a number.
    let long = "u.".to_owned() + &"x".repeat(300);
    let res = s.put(&format!("{path}/{long}"), alice.token(), json!({})).await;
    assert_error(&res, 400, "M_INVALID_PARAM");
    let res = s.put(&format!("{path}/u.x"), alice.token(), json!({"order": "first"})).await;
    assert_error(&res, 400, "M_BAD_JSON");

    // A room the user was never in.
    let other = s.create_room(&bob, json!({})).await;
    let res = s.put(&format!("{}/u.x", tags_path(&alice, &other)), alice.token(), json!({})).await;
    assert_error(&res, 403, "M_FORBIDDEN");

    // Nothing was stored by the refused requests.
    let (_, body) = s.get(&path, alice.token()).await;
    assert_eq!(body, json!({"tags": {}}));
}

#[tokio::test]
async fn tags_follow_only_a_real_upgrade() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "alice-password").await;
    let mallory = s.register("mallory", "mallory-password").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    let res =
        s.put(&format!("{}/u.secret", tags_path(&alice, &room)), alice.token(), json!({})).await;
    assert_eq!(res.0, 200, "{}", res.1);
    // mallory names alice's room as the predecessor of hers, which replaced nothing.
    let forged = s
        .create_room(
            &mallory,
            json!({
                "preset": "public_chat",
                "creation_content": {"predecessor": {"room_id": room}},
            }),
        )
        .await;
    assert_eq!(s.join(&alice, &forged).await.0, 200);
    let (status, body) = s.get(&tags_path(&alice, &forged), alice.token()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"tags": {}}), "no tags copied into a forged successor");
    // A real upgrade carries them (alice is the upgrader and joined at once).
    let (status, body) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/upgrade", enc(&room)),
            alice.token(),
            json!({"new_version": "11"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    let (_, body) = s.get(&tags_path(&alice, &new), alice.token()).await;
    assert_eq!(body, json!({"tags": {"u.secret": {}}}), "{body}");
}
