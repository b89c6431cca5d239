//! Send-to-device messaging: per-device queues on one global to-device stream (the third
//! part of sync tokens).
//!
//! A message waits for its device until a sync acknowledges it, by presenting a `since`
//! token whose to-device part covers it; a response that is never read loses nothing, since
//! the next sync from the old token delivers the same messages again. Writes are serialised
//! so positions become visible in order; each wakes the recipients' pending syncs once
//! durable.
//!
//! A device's queue holds at most `limits.to_device_max_pending` messages: a message for a
//! device whose queue is full is dropped, and the request succeeds for its other
//! recipients. A queue fills only when its device does not sync for a long time (an active
//! client empties it 100 messages per sync), which in practice is an abandoned device; if a
//! full queue failed the request instead, every sender's room keys would stop reaching all
//! the other devices too. Dropped messages are logged (a warning) and counted
//! (`axon_to_device_dropped_total`), not reported to the sender: the response has no place
//! for them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ruma::OwnedUserId;
use ruma::events::AnyToDeviceEventContent;
use ruma::serde::Raw;
use ruma::to_device::DeviceIdOrAllDevices;

use crate::error::{Error, Result};
use crate::rooms::notify::{Change, Notifier, Stream};
use crate::services::accounts::Identity;
use crate::storage::rooms::TxnKey;
use crate::storage::to_device::{ToDeviceMessage, ToDeviceSend, ToDeviceSent, ToDeviceTarget};
use crate::storage::{StorageError, Store};

/// Most messages one sync delivers; the next sync continues.
pub const MAX_PER_SYNC: usize = 100;

/// The messages of a `sendToDevice` request, as ruma parses them.
pub type Messages =
    BTreeMap<OwnedUserId, BTreeMap<DeviceIdOrAllDevices, Raw<AnyToDeviceEventContent>>>;

pub struct ToDevice {
    store: Arc<dyn Store>,
    notifier: Arc<Notifier>,
    server_name: String,
    /// `limits.to_device_max_messages`: per request, counted as given (`*` is one) and
    /// again after `*` is expanded to the users' devices.
    max_messages: usize,
    /// `limits.to_device_max_pending`: messages waiting for one device.
    max_pending: usize,
    position: AtomicU64,
    write: tokio::sync::Mutex<()>,
    /// What syncs need to know without reading storage: most syncs of most devices find
    /// nothing to deliver and nothing to delete.
    inboxes: parking_lot::Mutex<Inboxes>,
}

/// Devices whose acknowledged position [`Inboxes`] remembers.
const MAX_TRACKED_DEVICES: usize = 200_000;

/// In memory, per user and device: where their queues may have messages.
#[derive(Default)]
struct Inboxes {
    /// The stream position at start-up: a queue may hold messages up to it.
    loaded_at: u64,
    /// Per user (localpart): the newest message stored for any of their devices since
    /// start-up.
    newest: std::collections::HashMap<String, u64>,
    /// Per (localpart, device): everything up to here is deleted.
    deleted_upto: std::collections::HashMap<(String, String), u64>,
}

impl Inboxes {
    /// The newest position a message for the user's devices may have.
    fn newest(&self, localpart: &str) -> u64 {
        self.newest.get(localpart).copied().unwrap_or(self.loaded_at)
    }
}

impl ToDevice {
    pub async fn load(
        store: Arc<dyn Store>,
        notifier: Arc<Notifier>,
        server_name: String,
        max_messages: usize,
        max_pending: usize,
    ) -> Result<Self> {
        let pos = store.max_to_device_pos().await?;
        Ok(Self {
            store,
            notifier,
            server_name,
            max_messages,
            max_pending,
            position: AtomicU64::new(pos),
            write: tokio::sync::Mutex::new(()),
            inboxes: parking_lot::Mutex::new(Inboxes { loaded_at: pos, ..Inboxes::default() }),
        })
    }

    /// The to-device stream position everything up to which is stored and visible.
    pub fn current(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// `PUT /sendToDevice/{event_type}/{txn_id}`. Messages for unknown users or devices are
    /// dropped; remote users are ignored until federation exists. A retried transaction
    /// stores nothing again.
    pub async fn send(
        &self,
        who: &Identity,
        event_type: &str,
        txn_id: &str,
        messages: Messages,
    ) -> Result<()> {
        let requested: usize = messages.values().map(BTreeMap::len).sum();
        if requested > self.max_messages {
            return Err(self.too_many());
        }
        let mut batch = Vec::with_capacity(requested);
        let mut users = Vec::new();
        for (user, devices) in messages {
            let local = user.server_name().as_str() == self.server_name;
            for (target, content) in devices {
                let content = content.into_json();
                // Valid JSON by now; an object is what the spec asks for.
                if !content.get().starts_with('{') {
                    return Err(Error::BadJson("A to-device message must be a JSON object".into()));
                }
                if !local {
                    continue;
                }
                let target = match target {
                    DeviceIdOrAllDevices::DeviceId(id) => ToDeviceTarget::Device(id.to_string()),
                    DeviceIdOrAllDevices::AllDevices => ToDeviceTarget::AllDevices,
                };
                let message = ToDeviceMessage {
                    sender: who.user_id.to_string(),
                    kind: event_type.to_owned(),
                    content,
                };
                batch.push((user.localpart().to_owned(), target, message));
            }
            if local {
                users.push(user);
            }
        }

        let _guard = self.write.lock().await;
        let first_pos = self.current() + 1;
        let send = ToDeviceSend {
            txn: TxnKey::send_to_device(&who.localpart, who.device_id.as_str(), event_type, txn_id),
            messages: batch,
            first_pos,
            max_messages: self.max_messages,
            max_pending: self.max_pending,
        };
        match self.store.send_to_device(send).await {
            Ok(ToDeviceSent::Retry) => Ok(()),
            Ok(ToDeviceSent::Stored { last_pos, recipients, dropped, full }) => {
                if let Some((localpart, device_id)) = full.first() {
                    metrics::counter!("axon_to_device_dropped_total").increment(dropped as u64);
                    tracing::warn!(
                        sender = %who.user_id,
                        event_type,
                        dropped,
                        full_devices = full.len(),
                        %localpart,
                        %device_id,
                        max_pending = self.max_pending,
                        "to-device messages dropped: the recipient device's queue is full"
                    );
                }
                if last_pos >= first_pos {
                    {
                        let mut inboxes = self.inboxes.lock();
                        for r in &recipients {
                            inboxes.newest.insert(r.clone(), last_pos);
                        }
                    }
                    // Announced before published: a sync that sees the position was told.
                    let woken = users
                        .iter()
                        .filter(|u| recipients.iter().any(|r| r == u.localpart()))
                        .map(|u| &**u);
                    self.notifier.wake(woken, Change::user(Stream::ToDevice, last_pos));
                    self.position.store(last_pos, Ordering::Release);
                }
                Ok(())
            }
            Err(StorageError::TooMany) => Err(self.too_many()),
            Err(e) => Err(e.into()),
        }
    }

    /// The device's messages after position `after` up to `until`, at most
    /// [`MAX_PER_SYNC`], and the position the client has seen once it has them: `until`,
    /// or the last one delivered when more are waiting.
    pub async fn pending(
        &self,
        who: &Identity,
        after: u64,
        until: u64,
    ) -> Result<(Vec<ToDeviceMessage>, u64)> {
        if after >= until || self.inboxes.lock().newest(&who.localpart) <= after {
            // Nothing was sent to this user's devices since: no read (a sync woken by a
            // room message, say).
            return Ok((Vec::new(), until));
        }
        let rows = self
            .store
            .to_device_messages(&who.localpart, who.device_id.as_str(), after, until, MAX_PER_SYNC)
            .await?;
        let seen = match rows.last() {
            Some((pos, _)) if rows.len() == MAX_PER_SYNC => *pos,
            _ => until,
        };
        Ok((rows.into_iter().map(|(_, m)| m).collect(), seen))
    }

    /// The device's client has seen every message up to `upto` (its sync's `since`):
    /// they are deleted. A position beyond the stream's (a forged token) deletes nothing
    /// that is not there yet.
    pub async fn acknowledge(&self, who: &Identity, upto: u64) -> Result<()> {
        let upto = upto.min(self.current());
        let device = (who.localpart.clone(), who.device_id.to_string());
        {
            // Nothing to delete (the common case): no write, no fsync.
            let inboxes = self.inboxes.lock();
            let deleted = inboxes.deleted_upto.get(&device).copied().unwrap_or(0);
            if upto <= deleted || inboxes.newest(&who.localpart) <= deleted {
                return Ok(());
            }
        }
        self.store.delete_to_device_messages(&who.localpart, who.device_id.as_str(), upto).await?;
        let mut inboxes = self.inboxes.lock();
        // Bounded: forgetting a device only costs its next sync one (empty) deletion.
        if inboxes.deleted_upto.len() >= MAX_TRACKED_DEVICES {
            inboxes.deleted_upto.clear();
        }
        let deleted = inboxes.deleted_upto.entry(device).or_insert(0);
        *deleted = (*deleted).max(upto);
        Ok(())
    }

    fn too_many(&self) -> Error {
        Error::TooMany(format!(
            "At most {} to-device messages are accepted per request",
            self.max_messages
        ))
    }
}
