//! The floor under the fan-out benchmark: a server that answers what `axon-bench fanout` and
//! `fanout_ws` ask (register, createRoom, join, send, `/sync` long-polls and Axon's `/sync`
//! WebSocket) on the stack Axon is built on (tokio, hyper, axum, serde_json, mimalloc), with
//! nothing of a homeserver behind it: one room held in memory, no storage, no push rules, no
//! unread counts, no presence, no lazy loading, no filters applied.
//!
//! What it does per delivery is what any server must do for one: take the HTTP request (or,
//! on the WebSocket, the wake-up), look up the access token, parse the query and the inline
//! filter's JSON, build the receiver's response body (the events since its `since`) and
//! serialise it, and write it. The CPU it needs per delivery in a benchmark shape is the
//! least any server on this stack and machine can need in that shape (bench/README.md).
//!
//! With `--shared` it serialises a body once and sends the same bytes to every receiver with
//! the same `since`: the floor of the stack alone (HTTP or WebSocket, the scheduler and the
//! kernel), as if a response cost nothing to build.
//!
//!     floor 127.0.0.1:PORT [--shared]   then: AXON_PID=<its pid> axon-bench http://127.0.0.1:PORT fanout …

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Json, Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};
use tokio::sync::watch;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROOM: &str = "!floor:floor.local";

struct Floor {
    /// Access token → user ID.
    tokens: RwLock<HashMap<String, String>>,
    next_user: AtomicU64,
    /// The room's events, in order; a sync token is a position in this list.
    events: RwLock<Vec<Value>>,
    /// The number of events, for waking syncs.
    head: watch::Sender<u64>,
    /// `--shared`: the last body serialised, reused by every receiver with the same `since`
    /// (the floor of the stack itself: no per-receiver response work at all).
    shared: Option<Mutex<Option<(u64, u64, Bytes)>>>,
}

type Shared = Arc<Floor>;

fn error(status: StatusCode, errcode: &str) -> Response {
    (status, Json(json!({"errcode": errcode, "error": errcode}))).into_response()
}

fn user_of(floor: &Floor, headers: &HeaderMap, query: &HashMap<String, String>) -> Option<String> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| query.get("access_token").map(String::as_str))?;
    floor.tokens.read().unwrap_or_else(|e| e.into_inner()).get(token).cloned()
}

async fn register(State(floor): State<Shared>, Json(body): Json<Value>) -> Response {
    if body.get("auth").is_none() {
        let flows =
            json!({"session": "floor", "flows": [{"stages": ["m.login.dummy"]}], "params": {}});
        return (StatusCode::UNAUTHORIZED, Json(flows)).into_response();
    }
    let n = floor.next_user.fetch_add(1, Ordering::Relaxed);
    let name = body["username"].as_str().map(str::to_owned).unwrap_or_else(|| format!("u{n}"));
    let user_id = format!("@{name}:floor.local");
    let token = format!("floor_token_{n}_{:016x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    floor.tokens.write().unwrap_or_else(|e| e.into_inner()).insert(token.clone(), user_id.clone());
    Json(json!({"user_id": user_id, "access_token": token, "device_id": format!("DEV{n}")}))
        .into_response()
}

async fn create_room() -> Response {
    Json(json!({"room_id": ROOM})).into_response()
}

async fn join() -> Response {
    Json(json!({"room_id": ROOM})).into_response()
}

async fn send(
    State(floor): State<Shared>,
    headers: HeaderMap,
    Path((_room, event_type, txn)): Path<(String, String, String)>,
    Json(content): Json<Value>,
) -> Response {
    let Some(sender) = user_of(&floor, &headers, &HashMap::new()) else {
        return error(StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let count = {
        let mut events = floor.events.write().unwrap_or_else(|e| e.into_inner());
        let event_id = format!("${:043}", events.len());
        events.push(json!({
            "type": event_type,
            "content": content,
            "sender": sender,
            "event_id": event_id,
            "origin_server_ts": now,
            "unsigned": {"txn": txn},
        }));
        events.len() as u64
    };
    floor.head.send_replace(count);
    Json(json!({"event_id": format!("${:043}", count - 1)})).into_response()
}

/// The serialised body of a sync response from `since` to the room's head: built for this
/// receiver, or with `--shared` the bytes the previous receiver with this `since` got.
fn sync_bytes(floor: &Floor, since: u64) -> (u64, Bytes) {
    let Some(shared) = &floor.shared else {
        let (head, body) = sync_body(floor, since);
        return (head, Bytes::from(body.to_string()));
    };
    let head = floor.events.read().unwrap_or_else(|e| e.into_inner()).len() as u64;
    let mut last = shared.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((s, h, bytes)) = &*last
        && (*s, *h) == (since, head)
    {
        return (head, bytes.clone());
    }
    let (head, body) = sync_body(floor, since);
    let bytes = Bytes::from(body.to_string());
    *last = Some((since, head, bytes.clone()));
    (head, bytes)
}

/// The body of a sync response from `since` to the room's head, in the shape Axon answers a
/// joined room with (the sections a lazy-loading client gets for one new message).
fn sync_body(floor: &Floor, since: u64) -> (u64, Value) {
    let events = floor.events.read().unwrap_or_else(|e| e.into_inner());
    let head = events.len() as u64;
    if since >= head {
        return (head, json!({"next_batch": format!("f{head}")}));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let timeline: Vec<Value> = events[since as usize..]
        .iter()
        .map(|e| {
            let mut e = e.clone();
            let age = now.saturating_sub(e["origin_server_ts"].as_u64().unwrap_or(now));
            e["unsigned"] = json!({"age": age});
            e
        })
        .collect();
    let body = json!({
        "next_batch": format!("f{head}"),
        "rooms": {"join": {ROOM: {
            "timeline": {"events": timeline, "limited": false, "prev_batch": format!("f{since}")},
            "state": {"events": []},
            "account_data": {"events": []},
            "ephemeral": {"events": []},
            "unread_notifications": {"notification_count": head - since, "highlight_count": 0},
            "summary": {},
        }}},
    });
    (head, body)
}

fn parse_since(query: &HashMap<String, String>) -> Option<u64> {
    query.get("since").and_then(|s| s.strip_prefix('f')).and_then(|n| n.parse().ok())
}

/// What a sync request (long-poll or socket) costs before its response: the token looked
/// up and the inline filter parsed, as a server must to apply it. The refusal, if any.
fn refuse_sync(
    floor: &Floor,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Option<Response> {
    if user_of(floor, headers, query).is_none() {
        return Some(error(StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN"));
    }
    if let Some(filter) = query.get("filter")
        && serde_json::from_str::<Value>(filter).is_err()
    {
        return Some(error(StatusCode::BAD_REQUEST, "M_INVALID_PARAM"));
    }
    None
}

async fn sync(
    State(floor): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = refuse_sync(&floor, &headers, &query) {
        return refused;
    }
    let Some(since) = parse_since(&query) else {
        // An initial sync: the position now.
        let (head, _) = sync_body(&floor, u64::MAX);
        return Json(json!({"next_batch": format!("f{head}")})).into_response();
    };
    let timeout: u64 = query.get("timeout").and_then(|t| t.parse().ok()).unwrap_or(0);
    let mut head = floor.head.subscribe();
    let _ =
        tokio::time::timeout(Duration::from_millis(timeout), head.wait_for(|&n| n > since)).await;
    let (_, body) = sync_bytes(&floor, since);
    ([(CONTENT_TYPE, "application/json")], body).into_response()
}

async fn sync_socket(
    State(floor): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Some(refused) = refuse_sync(&floor, &headers, &query) {
        return refused;
    }
    let since = parse_since(&query);
    upgrade.on_upgrade(move |socket| push_frames(floor, socket, since))
}

/// One text frame per wake-up, each a sync body from the previous frame's position.
async fn push_frames(floor: Shared, mut socket: WebSocket, since: Option<u64>) {
    let mut head = floor.head.subscribe();
    let mut position = match since {
        Some(since) => since,
        None => {
            let (now, body) = sync_body(&floor, u64::MAX);
            if socket.send(Message::Text(body.to_string().into())).await.is_err() {
                return;
            }
            now
        }
    };
    loop {
        if head.wait_for(|&n| n > position).await.is_err() {
            return;
        }
        let (now, body) = sync_bytes(&floor, position);
        position = now;
        let Ok(text) = Utf8Bytes::try_from(body) else { return };
        if socket.send(Message::Text(text)).await.is_err() {
            return;
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr: SocketAddr = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8448)));
    let shared = args.iter().any(|a| a == "--shared").then(Mutex::default);
    let floor = Arc::new(Floor {
        tokens: RwLock::default(),
        next_user: AtomicU64::new(0),
        events: RwLock::default(),
        head: watch::channel(0u64).0,
        shared,
    });
    let app = Router::new()
        .route("/_matrix/client/versions", get(|| async { Json(json!({"versions": ["v1.12"]})) }))
        .route("/_matrix/client/v3/register", post(register))
        .route("/_matrix/client/v3/createRoom", post(create_room))
        .route("/_matrix/client/v3/join/{room}", post(join))
        .route("/_matrix/client/v3/rooms/{room}/send/{type}/{txn}", put(send))
        .route("/_matrix/client/v3/sync", get(sync))
        .route("/_matrix/client/unstable/io.axon.sync_ws/sync", get(sync_socket))
        .with_state(floor);
    // The accept queue Axon's own listener has (src/listeners.rs): the receivers connect at once.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    axum::serve(listener, app).await
}
