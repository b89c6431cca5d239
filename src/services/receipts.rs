//! Read receipts (`m.read`, `m.read.private`, threaded), delivered as `m.receipt` in the
//! ephemeral section of `/sync`. Skeleton: the receipts helper implements it.

use ruma::{RoomId, UserId};
use serde_json::Value;

use crate::error::Result;

#[derive(Default)]
pub struct Receipts {}

impl Receipts {
    /// The receipt stream's published position (the sync token's fifth part).
    pub fn current(&self) -> u64 {
        0
    }

    /// Whether receipts of the room changed after `since`.
    pub fn changed(&self, _room: &RoomId, _since: u64) -> bool {
        false
    }

    /// The room's `m.receipt` event for `viewer`: the receipts that changed in
    /// `(since, upto]` (all current ones for `None`); private receipts only the viewer's own.
    pub async fn event(
        &self,
        _room: &RoomId,
        _viewer: &UserId,
        _since: Option<u64>,
        _upto: u64,
    ) -> Result<Option<Value>> {
        Ok(None)
    }
}
