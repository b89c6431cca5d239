//! To-device messages: per-device queues with positions in one global to-device stream.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::StorageResult;
use super::rooms::TxnKey;

/// One message as it waits for its device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToDeviceMessage {
    pub sender: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub content: Box<RawValue>,
}

/// Whom one message of a request is for.
#[derive(Debug, Clone)]
pub enum ToDeviceTarget {
    Device(String),
    /// Every device the user has when the request is stored (`*`).
    AllDevices,
}

/// A `sendToDevice` request, ready to store.
#[derive(Debug, Clone)]
pub struct ToDeviceSend {
    /// The transaction ID, scoped to the sender's device and the request path.
    pub txn: TxnKey,
    /// `(recipient localpart, target, message)`.
    pub messages: Vec<(String, ToDeviceTarget, ToDeviceMessage)>,
    /// Position of the first message stored; the others follow one by one.
    pub first_pos: u64,
    /// Most messages one request may store, after `*` is expanded.
    pub max_messages: usize,
    /// Most messages waiting for one device: messages past it are dropped.
    pub max_pending: usize,
}

/// What storing a request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToDeviceSent {
    /// The transaction was already stored: nothing was stored again.
    Retry,
    /// The highest position used (`first_pos - 1` if nothing was stored: every recipient
    /// device unknown or full), the recipients' localparts, the number of messages dropped
    /// because their device's queue was full, and those devices (`(localpart, device)`).
    Stored { last_pos: u64, recipients: Vec<String>, dropped: usize, full: Vec<(String, String)> },
}

#[async_trait]
pub trait ToDeviceStore: Send + Sync {
    /// Stores a request's messages for the devices that exist (others are dropped), and its
    /// transaction ID, in one write; atomic with respect to device deletion, so no message
    /// outlives its device. A message for a device that already has `max_pending` messages
    /// waiting is dropped. [`super::StorageError::TooMany`] if more than `max_messages`
    /// would be stored (nothing is).
    async fn send_to_device(&self, send: ToDeviceSend) -> StorageResult<ToDeviceSent>;

    /// A device's messages at positions in `(after, until]`, in order, at most `limit`.
    async fn to_device_messages(
        &self,
        localpart: &str,
        device_id: &str,
        after: u64,
        until: u64,
        limit: usize,
    ) -> StorageResult<Vec<(u64, ToDeviceMessage)>>;

    /// Deletes a device's messages at positions ≤ `upto` (the client has acknowledged them).
    async fn delete_to_device_messages(
        &self,
        localpart: &str,
        device_id: &str,
        upto: u64,
    ) -> StorageResult<()>;

    /// The highest to-device position ever used.
    async fn max_to_device_pos(&self) -> StorageResult<u64>;
}
