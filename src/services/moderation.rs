//! Content reports and OpenID tokens.
//!
//! **Reports** (`POST /rooms/{roomId}/report/{eventId}`, `POST /rooms/{roomId}/report`)
//! are stored for the server's admins (CF `reports`), who list them through the admin API
//! in Synapse's shape (`/_synapse/admin/v1/event_reports`). An event can be reported only by
//! a joined member of its room (spec v1.8+) whom the history visibility lets see it, even
//! if they ignore its sender (else 404, as the spec and Synapse answer, so a report reveals
//! nothing about events one cannot see); a room only if this server knows it (404). Each
//! report takes a token of the reporter's event rate limit (`limits.events`).
//!
//! **OpenID tokens** (`POST /user/{userId}/openid/request_token`) prove to a third party
//! (a widget, an integration manager) who the user is: the third party asks
//! `GET /_matrix/federation/v1/openid/userinfo` (401 `M_UNKNOWN_TOKEN` for a missing,
//! unknown or expired token, or one of a since deactivated account). Stored by SHA-256 for
//! an hour; each takes a token of the user's `limits.events`.

use ruma::{EventId, RoomId, UserId};

use super::Services;
use crate::error::{Error, Result};
use crate::storage::moderation::{OpenIdTokenRecord, ReportRecord};
use crate::storage::{TokenHash, now_ms};

/// Longest report reason, in bytes.
pub const MAX_REASON_BYTES: usize = 4096;
/// How long an OpenID token is valid.
pub const OPENID_TOKEN_SECS: u64 = 3600;

fn check_reason(reason: Option<&str>) -> Result<()> {
    if reason.is_some_and(|r| r.len() > MAX_REASON_BYTES) {
        return Err(Error::InvalidParam(format!(
            "The reason may have at most {MAX_REASON_BYTES} bytes"
        )));
    }
    Ok(())
}

impl Services {
    /// Reports an event the user may see.
    pub async fn report_event(
        &self,
        user: &UserId,
        room_id: &RoomId,
        event_id: &EventId,
        reason: Option<String>,
        score: Option<i64>,
    ) -> Result<u64> {
        check_reason(reason.as_deref())?;
        let not_found = || {
            Error::NotFound(
                "Unable to report event: it does not exist or you aren't able to see it".into(),
            )
        };
        let room = self.rooms.get(room_id).ok_or_else(not_found)?;
        let (record, pdu) = self.rooms.event(event_id.as_str()).await?.ok_or_else(not_found)?;
        if record.room_id != room_id.as_str() {
            return Err(not_found());
        }
        // Spec (v1.8+): only a joined member reports an event. Whom the reporter ignores
        // does not matter (an ignored user's abuse is what one reports), the history
        // visibility does.
        if !room.is_joined(user) {
            return Err(not_found());
        }
        let visible = match self.rooms.readable(&room, user).await {
            Ok(access) => access.history_allows(record.pos, &pdu),
            Err(Error::Forbidden(_)) => false,
            Err(e) => return Err(e),
        };
        if !visible {
            return Err(not_found());
        }
        self.rooms.charge_event(user)?;
        let id = self
            .store
            .add_report(ReportRecord {
                id: 0,
                received_ts: now_ms(),
                room_id: room_id.to_string(),
                event_id: Some(event_id.to_string()),
                sender: Some(pdu.sender.to_string()),
                user_id: user.to_string(),
                reason,
                score,
            })
            .await?;
        tracing::info!(report = id, %room_id, %event_id, reporter = %user, "event reported");
        Ok(id)
    }

    /// Reports a room this server knows.
    pub async fn report_room(
        &self,
        user: &UserId,
        room_id: &RoomId,
        reason: String,
    ) -> Result<u64> {
        check_reason(Some(&reason))?;
        if self.rooms.get(room_id).is_none() {
            return Err(Error::NotFound("Room does not exist".into()));
        }
        self.rooms.charge_event(user)?;
        let id = self
            .store
            .add_report(ReportRecord {
                id: 0,
                received_ts: now_ms(),
                room_id: room_id.to_string(),
                event_id: None,
                sender: None,
                user_id: user.to_string(),
                reason: Some(reason),
                score: None,
            })
            .await?;
        tracing::info!(report = id, %room_id, reporter = %user, "room reported");
        Ok(id)
    }

    /// A new OpenID token for `user`, valid for [`OPENID_TOKEN_SECS`].
    /// Each takes a token of the user's event rate limit (`limits.events`): every token is
    /// a synced write, kept for an hour.
    pub async fn openid_token(&self, user: &UserId) -> Result<String> {
        self.event_limiter.check(user.as_str())?;
        let token = super::tokens::random_token();
        let now = now_ms();
        let record = OpenIdTokenRecord {
            user_id: user.to_string(),
            expires_ms: now + OPENID_TOKEN_SECS * 1000,
        };
        self.store.put_openid_token(TokenHash::of(&token), record, now).await?;
        Ok(token)
    }

    /// Whose an unexpired OpenID token is, if that account is still active; 401
    /// `M_UNKNOWN_TOKEN` otherwise.
    pub async fn openid_user(&self, token: &str) -> Result<String> {
        let unknown = || Error::UnknownToken { soft_logout: false };
        let record = match self.store.openid_token(&TokenHash::of(token)).await? {
            Some(record) if record.expires_ms > now_ms() => record,
            _ => return Err(unknown()),
        };
        let user = UserId::parse(&record.user_id).map_err(|_| unknown())?;
        let active = self.store.user(user.localpart()).await?.is_some_and(|u| !u.deactivated);
        if !active {
            return Err(unknown());
        }
        Ok(record.user_id)
    }
}
