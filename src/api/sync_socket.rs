//! The WebSocket transport of `/sync` (docs/websocket.md): one connection carries the
//! responses of a sync loop, pushed as they happen, instead of one long-poll per response.
//!
//! `GET /_matrix/client/unstable/io.axon.sync_ws/sync` with the query parameters of
//! `GET /sync` (`since`, `filter`, `full_state`, `set_presence`; `timeout` is ignored) and the
//! access token (the `Authorization` header, or `access_token` in the query for browsers,
//! which cannot set headers on a WebSocket). Each text frame the server sends is one `/sync`
//! response, byte for byte what the long-poll would have answered for the previous frame's
//! `next_batch`. The connection reuses one subscription ([`crate::rooms::notify`]) and
//! [`sync::respond`]: a frame costs what changed, as a resumed long-poll does, minus the
//! request.
//!
//! A client that reads slowly is sent fewer, larger frames: while a frame waits in the
//! socket, changes accumulate in the subscription and the next frame covers them all.
//!
//! To-device messages are deleted only when acknowledged: by the `since` of a new
//! connection (as with `/sync`), or by a text frame `{"ack": "<next_batch>"}` from the
//! client once it has processed that frame. The server pings an idle connection every
//! [`KEEPALIVE`].
//!
//! A device has at most one connection ([`Sockets`]): a new one closes the previous one
//! (code 4000), so a client that reconnects after a network change does not leave a
//! half-open connection being woken and written to, and a token cannot open thousands. A
//! user has at most `limits.sync_sockets_per_user` devices connected, and a device at most
//! [`MAX_PER_DEVICE`] connections (the open one and the one replacing it): another upgrade
//! is refused with 429 `M_LIMIT_EXCEEDED`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::Method;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use ruma::api::client::sync::sync_events;
use tokio::sync::Notify;

use super::sync::{self, Options, Start, SyncToken};
use crate::error::{Error, Result};
use crate::http::auth::{Authed, token_from};
use crate::http::ruma::{AppState, parse_request};
use crate::services::accounts::Identity;

/// How long a connection stays silent before the server pings it.
pub const KEEPALIVE: Duration = Duration::from_secs(30);

/// Largest frame a client may send (acknowledgements are about 60 bytes).
const MAX_CLIENT_FRAME: usize = 4 * 1024;

/// The path of the transport.
pub const PATH: &str = "/_matrix/client/unstable/io.axon.sync_ws/sync";

/// Close code of a connection replaced by a newer one of the same device.
const CLOSE_REPLACED: u16 = 4000;

/// Close code of a connection whose access token was revoked (logout, device deletion,
/// deactivation): the client must log in again, as after `M_UNKNOWN_TOKEN`.
const CLOSE_UNKNOWN_TOKEN: u16 = 4001;

/// Close code of a connection whose response could not be built (RFC 6455 "internal error").
const CLOSE_SERVER_ERROR: u16 = 1011;

/// Connections one device may hold at once, upgrades in flight included: the open one and
/// one replacing it (a replaced connection takes a few seconds to end).
const MAX_PER_DEVICE: usize = 2;

/// The open connections, by device: each one's ID and the signal that ends it.
#[derive(Default)]
pub struct Sockets {
    by_device: parking_lot::Mutex<HashMap<DeviceKey, (u64, Arc<Notify>)>>,
    next_id: AtomicU64,
    /// What the limits count: see [`Held`].
    held: Arc<parking_lot::Mutex<Held>>,
}

/// Per user, per device, the connections that passed the limits and have not ended yet
/// (upgrades in flight included).
type Held = HashMap<String, HashMap<String, usize>>;

/// A device's place under its user's limit, from the check before the upgrade until the
/// connection ends (or the upgrade never happens): dropping it gives the place back.
pub struct Slot {
    held: Arc<parking_lot::Mutex<Held>>,
    user: String,
    device: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.held.lock();
        let Some(devices) = held.get_mut(&self.user) else { return };
        if let Some(count) = devices.get_mut(&self.device) {
            *count -= 1;
            if *count == 0 {
                devices.remove(&self.device);
            }
        }
        if devices.is_empty() {
            held.remove(&self.user);
        }
    }
}

/// `(user ID, device ID)`.
type DeviceKey = (String, String);

/// Longest a frame may wait to be written to a client that does not read: then the
/// connection is dropped (the client reconnects from its last `next_batch`).
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an ending connection waits for the client's remaining frames.
const READER_DRAIN: Duration = Duration::from_secs(5);

/// The read buffer of a connection (client frames are at most [`MAX_CLIENT_FRAME`]).
const READ_BUFFER: usize = 8 * 1024;

impl Sockets {
    /// A place for a connection of `who`'s device: granted when the device holds fewer than
    /// [`MAX_PER_DEVICE`] (its new connection replaces the old) and, for a device holding
    /// none, when fewer than `limit` of the user's devices hold one. Checked and taken under
    /// one lock, so concurrent upgrades cannot pass it together.
    pub fn reserve(&self, who: &Identity, limit: usize) -> Option<Slot> {
        let (user, device) = (who.user_id.to_string(), who.device_id.to_string());
        let mut held = self.held.lock();
        let devices = held.entry(user.clone()).or_default();
        let allowed = match devices.get(&device) {
            Some(count) => *count < MAX_PER_DEVICE,
            None => devices.len() < limit,
        };
        if !allowed {
            return None; // the user holds places (`limit` ≥ 1), so the entry is not empty
        }
        *devices.entry(device.clone()).or_insert(0) += 1;
        Some(Slot { held: self.held.clone(), user, device })
    }

    /// Registers a new connection of `who`'s device, ending the one it had.
    fn open(&self, who: &Identity, end: Arc<Notify>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let key = (who.user_id.to_string(), who.device_id.to_string());
        if let Some((_, previous)) = self.by_device.lock().insert(key, (id, end)) {
            previous.notify_one();
        }
        id
    }

    /// Forgets a connection that ended (unless a newer one of the device replaced it).
    fn close(&self, who: &Identity, id: u64) {
        let key = (who.user_id.to_string(), who.device_id.to_string());
        let mut by_device = self.by_device.lock();
        if by_device.get(&key).is_some_and(|(current, _)| *current == id) {
            by_device.remove(&key);
        }
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.by_device.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a client sends: acknowledgements of the frames it processed.
#[derive(serde::Deserialize)]
struct ClientFrame {
    ack: String,
}

/// Checks the request as `/sync` would (token, parameters, filter) before upgrading, so a
/// bad request gets its HTTP error and no connection.
pub async fn connect(
    State(s): State<AppState>,
    Authed(who): Authed,
    RawQuery(query): RawQuery,
    headers: axum::http::HeaderMap,
    upgrade: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response> {
    // Kept to check, before each frame, that the token was not revoked meanwhile.
    let token = token_from(&headers, query.as_deref()).ok_or(Error::MissingToken)?;
    let upgrade = upgrade.map_err(|e| {
        Error::Unknown(format!("This endpoint is a WebSocket (docs/websocket.md): {e}"))
    })?;
    let uri = format!("/_matrix/client/v3/sync?{}", query.unwrap_or_default());
    let request = axum::http::Request::builder()
        .method(Method::GET)
        .uri(uri)
        .body(&[][..])
        .map_err(|_| Error::InvalidParam("Invalid query string".into()))?;
    let req: sync_events::v3::Request = parse_request(request, &[])?;
    let since = req.since.as_deref().map(SyncToken::parse).transpose()?;
    let filter = sync::resolve_filter(&s, &who, req.filter).await?;
    let options = Options::new(since, req.full_state, filter);
    let slot = s
        .sync_sockets
        .reserve(&who, s.config.limits.sync_sockets_per_user)
        .ok_or(Error::LimitExceeded { retry_after_ms: KEEPALIVE.as_millis() as u64 })?;
    Ok(upgrade
        .read_buffer_size(READ_BUFFER)
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| async move {
            run(s, who, token, socket, options, req.set_presence).await;
            drop(slot);
        }))
}

/// The connection's sync loop: respond, send, continue from the response's `next_batch`.
async fn run(
    s: AppState,
    who: Identity,
    token: String,
    socket: WebSocket,
    mut opts: Options,
    set_presence: ruma::presence::PresenceState,
) {
    let _syncing = s.presence.syncing(&who.user_id, &set_presence);
    // The device starts from `since` again: member events a previous connection was sent
    // in frames the client may not have processed are sent again when needed.
    s.lazy_members.reset_device(who.user_id.as_str(), who.device_id.as_str());
    if let Some(since) = opts.since_token()
        && let Err(e) = s.to_device.acknowledge(&who, since.to_device).await
    {
        tracing::warn!(error = %e, "sync socket: acknowledging to-device messages failed");
    }
    let (mut tx, rx) = socket.split();
    let closed = Arc::new(Notify::new());
    let replaced = Arc::new(Notify::new());
    let id = s.sync_sockets.open(&who, replaced.clone());
    metrics::gauge!("axon_sync_sockets").set(s.sync_sockets.len() as f64);
    let reader = tokio::spawn(read_acks(s.clone(), who.clone(), rx, closed.clone()));
    let (subscription, mut start) = sync::start_subscription(&s, &who).await;
    loop {
        let deadline = tokio::time::Instant::now() + KEEPALIVE;
        let built = tokio::select! {
            built = sync::respond(&s, &who, &opts, &subscription, start, Some(deadline)) => built,
            () = closed.notified() => break,
            () = replaced.notified() => {
                let reason = "replaced by a newer connection of the device";
                close(&mut tx, CLOSE_REPLACED, reason.into()).await;
                break;
            }
        };
        let built = match built {
            Ok(built) => built,
            Err(e) => {
                tracing::warn!(error = %e, "sync socket: building a response failed");
                let reason: String = e.to_string().chars().take(100).collect();
                close(&mut tx, CLOSE_SERVER_ERROR, reason.into()).await;
                break;
            }
        };
        subscription.restore(built.uncovered);
        start = Start::Resumed;
        // A logged-out, deleted or deactivated device gets nothing more (a memory lookup).
        if s.accounts.authenticate(&token).await.is_err() {
            close(&mut tx, CLOSE_UNKNOWN_TOKEN, "the access token is no longer valid".into()).await;
            break;
        }
        let message = if built.news {
            let text = built.body;
            opts = opts.continued(built.next_batch);
            Message::Text(text.into())
        } else {
            Message::Ping(Default::default())
        };
        // A client that does not read is dropped rather than holding the frame for ever.
        match tokio::time::timeout(SEND_TIMEOUT, tx.send(message)).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    // The client's last frames (an acknowledgement before its close) are still applied;
    // a client that does not close is not waited for long.
    let mut reader = reader;
    if tokio::time::timeout(READER_DRAIN, &mut reader).await.is_err() {
        reader.abort();
    }
    s.sync_sockets.close(&who, id);
    metrics::gauge!("axon_sync_sockets").set(s.sync_sockets.len() as f64);
}

/// Sends a close frame, giving up after [`SEND_TIMEOUT`] (the connection ends either way).
async fn close(
    tx: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    code: u16,
    reason: Utf8Bytes,
) {
    let frame = Message::Close(Some(CloseFrame { code, reason }));
    let _ = tokio::time::timeout(SEND_TIMEOUT, tx.send(frame)).await;
}

/// Reads the client's frames: acknowledgements delete the to-device messages they cover; a
/// close or an error ends the connection.
async fn read_acks(
    s: AppState,
    who: Identity,
    mut rx: futures_util::stream::SplitStream<WebSocket>,
    closed: Arc<Notify>,
) {
    while let Some(Ok(message)) = rx.next().await {
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => break,
            _ => continue, // pings are answered by the socket; pongs and binary ignored
        };
        let Ok(frame) = serde_json::from_str::<ClientFrame>(text.as_str()) else {
            tracing::debug!("sync socket: ignoring a frame that is not an acknowledgement");
            continue;
        };
        let Ok(token) = SyncToken::parse(&frame.ack) else { continue };
        if let Err(e) = s.to_device.acknowledge(&who, token.to_device).await {
            tracing::warn!(error = %e, "sync socket: acknowledging to-device messages failed");
        }
    }
    closed.notify_one();
}
