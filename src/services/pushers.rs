//! Pushers (`/pushers`, `/pushers/set`) and delivery to push gateways (the Push Gateway
//! API's `POST /_matrix/push/v1/notify`).
//!
//! A pusher belongs to the user and to the device whose access token created it: deleting
//! the device (logout, `/devices`, a password change, deactivation) deletes its pushers in
//! the same write ([`crate::storage::rocks`]). Only `http` pushers are supported; their
//! `data.url` must be an http(s) URL whose path is `/_matrix/push/v1/notify`, and an IP
//! literal must pass the outbound address policy (`outbound.allowed_ip_ranges`), as does
//! every address a name resolves to when the push is sent.
//!
//! Delivery: a notifying event for a user with pushers becomes a [`PushJob`]
//! ([`crate::services::notifications`]); each job runs on a task of its own (at most
//! `push.concurrent_requests` requests in flight, `push.max_pending_pushes` jobs pending).
//! When it runs, a job the user has read meanwhile (their receipts cover the event) is
//! dropped; otherwise each pusher of the user gets the spec's payload (the badge is the
//! user's unread notifications in all rooms), through the outbound client. 5xx, 429 and
//! connection failures are retried with exponential backoff (`push.retry_*`,
//! `push.max_attempts`); pushkeys the gateway lists as `rejected` lose their pusher.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::RwLock;
use ruma::api::client::push::set_pusher::v3::PusherAction;
use ruma::push::{Action, HighlightTweakValue, Tweak};
use ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use crate::config::PushConfig;
use crate::error::{Error, Result};
use crate::outbound::Outbound;
use crate::services::Services;
use crate::services::notifications;
use crate::storage::Store;
use crate::storage::now_ms;
use crate::storage::push::PusherRecord;

/// The path the spec requires of an http pusher's URL.
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
/// Longest `app_id` and `pushkey` (the spec's limits).
const MAX_APP_ID: usize = 64;
const MAX_PUSHKEY: usize = 512;
/// Largest pusher (its JSON), bounding `data`.
const MAX_PUSHER_BYTES: usize = 4096;

/// One notification to push to a user's pushers.
#[derive(Debug, Clone)]
pub struct PushJob {
    pub user: OwnedUserId,
    pub room_id: OwnedRoomId,
    pub event_id: String,
    pub pos: u64,
    pub thread: Option<String>,
    pub actions: Vec<Action>,
    /// Held until the push ends (delivered, given up or dropped): the evaluation's durable
    /// progress waits for it.
    pub done: Option<Arc<crate::services::notifications::BatchDone>>,
}

pub struct Pushers {
    store: Arc<dyn Store>,
    outbound: Outbound,
    config: PushConfig,
    /// Localparts of users with pushers (may keep a user whose last pusher went with a
    /// device: that costs one empty read at delivery).
    owners: RwLock<HashSet<String>>,
    pending: Arc<AtomicUsize>,
    in_flight: Arc<Semaphore>,
    services: std::sync::OnceLock<Weak<Services>>,
}

impl Pushers {
    pub async fn load(
        store: Arc<dyn Store>,
        outbound: Outbound,
        config: PushConfig,
    ) -> Result<Self> {
        let owners = store.pusher_owners().await?.into_iter().collect();
        let permits = config.concurrent_requests.max(1);
        Ok(Self {
            store,
            outbound,
            config,
            owners: RwLock::new(owners),
            pending: Arc::new(AtomicUsize::new(0)),
            in_flight: Arc::new(Semaphore::new(permits)),
            services: std::sync::OnceLock::new(),
        })
    }

    /// The services delivery needs (read receipts, counts, rooms), weakly held.
    pub fn set_services(&self, services: Weak<Services>) {
        let _ = self.services.set(services);
    }

    pub fn has_pushers(&self, user: &UserId) -> bool {
        self.owners.read().contains(user.localpart())
    }

    /// `GET /pushers`: the user's pushers, as they were set.
    pub async fn list(&self, user: &UserId) -> Result<Vec<Value>> {
        Ok(self.store.pushers(user.localpart()).await?.into_iter().map(|p| p.pusher).collect())
    }

    /// `POST /pushers/set`, by `device_id` of `user`.
    pub async fn set(&self, user: &UserId, device_id: &str, action: PusherAction) -> Result<()> {
        let post = match action {
            PusherAction::Delete(ids) => {
                self.store.delete_pusher(user.localpart(), &ids.app_id, &ids.pushkey).await?;
                return Ok(());
            }
            PusherAction::Post(post) => post,
            _ => return Err(Error::InvalidParam("Unsupported pusher action".into())),
        };
        let ids = &post.pusher.ids;
        if ids.app_id.is_empty() || ids.app_id.len() > MAX_APP_ID {
            return Err(Error::InvalidParam(format!("app_id must have 1 to {MAX_APP_ID} bytes")));
        }
        if ids.pushkey.is_empty() || ids.pushkey.len() > MAX_PUSHKEY {
            return Err(Error::InvalidParam(format!("pushkey must have 1 to {MAX_PUSHKEY} bytes")));
        }
        let ruma::api::client::push::PusherKind::Http(data) = &post.pusher.kind else {
            return Err(Error::InvalidParam("Only http pushers are supported".into()));
        };
        let url = url::Url::parse(&data.url)
            .map_err(|_| Error::InvalidParam("data.url is not a URL".into()))?;
        if !matches!(url.scheme(), "http" | "https") || url.path() != NOTIFY_PATH {
            return Err(Error::InvalidParam(format!(
                "data.url must be an http(s) URL with the path {NOTIFY_PATH}"
            )));
        }
        self.outbound.check_url(&url).map_err(|e| Error::InvalidParam(format!("data.url: {e}")))?;
        let pusher = serde_json::to_value(&post.pusher)
            .map_err(|e| Error::Internal(format!("serializing a pusher: {e}")))?;
        if pusher.to_string().len() > MAX_PUSHER_BYTES {
            return Err(Error::TooLarge);
        }
        let existing = self.store.pushers(user.localpart()).await?;
        let replaces = existing.iter().any(|p| p.app_id == ids.app_id && p.pushkey == ids.pushkey);
        if !replaces && existing.len() >= self.config.max_pushers_per_user {
            return Err(Error::TooMany(format!(
                "At most {} pushers per user",
                self.config.max_pushers_per_user
            )));
        }
        let record = PusherRecord {
            user_id: user.to_string(),
            device_id: Some(device_id.to_owned()),
            app_id: ids.app_id.clone(),
            pushkey: ids.pushkey.clone(),
            pusher,
            pushkey_ts: now_ms(),
        };
        self.store.put_pusher(user.localpart(), record, !post.append).await?;
        self.owners.write().insert(user.localpart().to_owned());
        Ok(())
    }

    /// Queues a push (dropped, and logged, when `push.max_pending_pushes` are pending).
    pub fn enqueue(&self, job: PushJob) {
        let Some(services) = self.services.get().cloned() else { return };
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.config.max_pending_pushes {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!("axon_push_dropped_total").increment(1);
            tracing::warn!(user = %job.user, "too many pushes pending; one dropped");
            return;
        }
        let pending = self.pending.clone();
        let permits = self.in_flight.clone();
        tokio::spawn(async move {
            if let Ok(_permit) = permits.acquire_owned().await
                && let Some(s) = services.upgrade()
                && let Err(e) = deliver(&s, &job).await
            {
                tracing::warn!(user = %job.user, event = %job.event_id, error = %e, "push failed");
            }
            pending.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Sends one notification to each of the user's pushers, unless the user has read it.
async fn deliver(s: &Services, job: &PushJob) -> Result<()> {
    let pushers = s.store.pushers(job.user.localpart()).await?;
    if pushers.is_empty() {
        return Ok(());
    }
    let marks = s.receipts.read_marks(&job.room_id, &job.user).await?;
    if marks.is_read(job.pos, job.thread.as_deref()) {
        return Ok(()); // the user is reading the room
    }
    let Some((_, pdu)) = s.rooms.event(&job.event_id).await? else { return Ok(()) };
    let Some(room) = s.rooms.get(&job.room_id) else { return Ok(()) };
    let badge = notifications::badge(s, &job.user).await?;
    let tweaks = tweaks(&job.actions);
    let high = pdu.kind == ruma::events::TimelineEventType::RoomEncrypted
        || tweaks.contains_key("sound")
        || tweaks.get("highlight").is_some_and(|h| h != &json!(false));
    let prio = if high { "high" } else { "low" };
    let sender_display_name = crate::services::push::display_name_in(&room, &pdu.sender);
    let room_name = room
        .state_event(&ruma::events::StateEventType::RoomName, "")
        .and_then(|e| e.content_as::<Value>())
        .and_then(|c| c["name"].as_str().map(str::to_owned));
    for pusher in pushers {
        let data = pusher.pusher["data"].as_object().cloned().unwrap_or_default();
        let Some(url) = data.get("url").and_then(Value::as_str).map(str::to_owned) else {
            continue;
        };
        let event_id_only = data.get("format").and_then(Value::as_str) == Some("event_id_only");
        let mut device_data = data.clone();
        device_data.remove("url");
        let device = json!({
            "app_id": pusher.app_id,
            "pushkey": pusher.pushkey,
            "pushkey_ts": pusher.pushkey_ts / 1000,
            "data": device_data,
            "tweaks": tweaks,
        });
        let mut notification = json!({
            "event_id": pdu.event_id,
            "room_id": pdu.room_id,
            "counts": {"unread": badge},
            "prio": prio,
            "devices": [device],
        });
        if !event_id_only {
            let n = notification.as_object_mut().expect("object literal");
            n.insert("type".into(), json!(pdu.kind));
            n.insert("sender".into(), json!(pdu.sender));
            n.insert("sender_display_name".into(), json!(sender_display_name));
            if let Some(name) = &room_name {
                n.insert("room_name".into(), json!(name));
            }
            if let Some(content) = pdu.content_as::<Value>() {
                n.insert("content".into(), content);
            }
            if pdu.kind == ruma::events::TimelineEventType::RoomMember {
                n.insert(
                    "user_is_target".into(),
                    json!(pdu.state_key.as_deref() == Some(job.user.as_str())),
                );
            }
        }
        let body = json!({ "notification": notification });
        send(s, job, &pusher, &url, &body).await;
    }
    Ok(())
}

/// The tweaks of the actions (`sound`, `highlight`).
fn tweaks(actions: &[Action]) -> Map<String, Value> {
    let mut out = Map::new();
    for action in actions {
        if let Action::SetTweak(tweak) = action {
            match tweak {
                Tweak::Highlight(h) => {
                    out.insert("highlight".into(), json!(*h == HighlightTweakValue::Yes));
                }
                Tweak::Sound(sound) => {
                    out.insert("sound".into(), json!(sound));
                }
                other => {
                    if let Some(value) = other.value()
                        && let Ok(v) = serde_json::from_str::<Value>(value.get())
                    {
                        out.insert(other.set_tweak().to_owned(), v);
                    }
                }
            }
        }
    }
    out
}

/// POSTs a notification to one pusher's gateway, retrying failures with backoff (unless the
/// user read the event meanwhile); deletes the pusher if the gateway rejects its pushkey.
async fn send(s: &Services, job: &PushJob, pusher: &PusherRecord, url: &str, body: &Value) {
    let Ok(url) = url::Url::parse(url) else { return };
    if let Err(e) = s.outbound.check_url(&url) {
        tracing::warn!(url = %url, error = %e, "push gateway refused by the outbound policy");
        return;
    }
    let cfg = &s.config.push;
    let mut delay = Duration::from_millis(cfg.retry_base_ms.max(1));
    let max_delay = Duration::from_millis(cfg.retry_max_ms.max(cfg.retry_base_ms).max(1));
    for attempt in 1..=cfg.max_attempts.max(1) {
        if attempt > 1
            && s.receipts
                .read_marks(&job.room_id, &job.user)
                .await
                .is_ok_and(|marks| marks.is_read(job.pos, job.thread.as_deref()))
        {
            return; // read meanwhile: the push would be stale
        }
        let started = std::time::Instant::now();
        let result = s.outbound.client().post(url.clone()).json(body).send().await;
        metrics::histogram!("axon_push_request_seconds").record(started.elapsed().as_secs_f64());
        let retry = match result {
            Ok(resp) if resp.status().is_success() => {
                metrics::counter!("axon_push_sent_total").increment(1);
                let answer: Value = read_bounded(resp, MAX_GATEWAY_ANSWER)
                    .await
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                    .unwrap_or_default();
                let rejected = answer["rejected"].as_array().is_some_and(|keys| {
                    keys.iter().any(|k| k.as_str() == Some(pusher.pushkey.as_str()))
                });
                if rejected {
                    tracing::info!(app_id = %pusher.app_id, user = %pusher.user_id,
                        "push gateway rejected the pushkey; pusher deleted");
                    let localpart = pusher
                        .user_id
                        .strip_prefix('@')
                        .and_then(|u| u.split(':').next())
                        .unwrap_or_default();
                    if let Err(e) =
                        s.store.delete_pusher(localpart, &pusher.app_id, &pusher.pushkey).await
                    {
                        tracing::warn!(error = %e, "deleting a rejected pusher failed");
                    }
                }
                return;
            }
            Ok(resp) => {
                let status = resp.status();
                if status.is_server_error() || status.as_u16() == 429 {
                    true
                } else {
                    tracing::warn!(url = %url, %status, "push gateway refused a notification");
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(url = %url, error = %e, "push gateway unreachable");
                true
            }
        };
        if retry && attempt < cfg.max_attempts {
            metrics::counter!("axon_push_retries_total").increment(1);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(max_delay);
        }
    }
    metrics::counter!("axon_push_failed_total").increment(1);
    tracing::warn!(url = %url, user = %pusher.user_id, "push given up after retries");
}

/// The most of a push gateway's answer read: `{"rejected": [...]}` is small, and a gateway
/// (any user may name one) must not make the server buffer an endless body.
const MAX_GATEWAY_ANSWER: usize = 64 * 1024;

/// A response body of at most `max` bytes; `None` when it is longer or breaks off.
async fn read_bounded(mut resp: reqwest::Response, max: usize) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.ok()? {
        if body.len() + chunk.len() > max {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::push::SoundTweakValue;

    #[test]
    fn tweaks_carry_sound_and_highlight() {
        let actions = vec![
            Action::Notify,
            Action::SetTweak(Tweak::Sound(SoundTweakValue::Default)),
            Action::SetTweak(Tweak::Highlight(HighlightTweakValue::Yes)),
        ];
        let t = tweaks(&actions);
        assert_eq!(t["sound"], json!("default"));
        assert_eq!(t["highlight"], json!(true));
    }
}
