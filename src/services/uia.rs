//! User-interactive authentication: the sessions and their completed stages.
//!
//! Sessions live in memory; a restart only makes clients start their UIA again. Which stage is
//! valid is decided by the caller (`services::accounts`), which knows passwords and
//! registration tokens; this module only keeps the bookkeeping honest: a session is bound to
//! one purpose and one user, and succeeds once every stage of one flow is done.
//!
//! Sessions are bounded: one expires after [`SESSION_IDLE_TIMEOUT`] without use; one owner (the
//! user, or the client's IP address for registration) keeps at most
//! [`MAX_SESSIONS_PER_OWNER`], starting another evicts that owner's oldest; and when
//! [`MAX_SESSIONS`] are alive, starting one more is refused with 429 rather than evicting
//! someone else's session in the middle of its flow.
//!
//! A registration session outlives its success: it keeps the result, so a client that lost
//! the response and retries gets the same answer instead of `M_USER_IN_USE` (registration is
//! idempotent per session, as in Synapse).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ruma::{OwnedDeviceId, OwnedUserId};
use serde::Serialize;

use crate::error::{Error, Result};

/// A session not used for this long is forgotten.
pub const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Live sessions in all; past it, new sessions are refused (429) until some expire.
pub const MAX_SESSIONS: usize = 100_000;
/// Live sessions per owner; past it, the owner's oldest is evicted.
pub const MAX_SESSIONS_PER_OWNER: usize = 64;
/// How often expired sessions are swept out (on the next session started).
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// The `retry_after_ms` of the 429 when the table is full.
const FULL_RETRY_AFTER_MS: u64 = 60_000;

pub const DUMMY: &str = "m.login.dummy";
pub const PASSWORD: &str = "m.login.password";
pub const REGISTRATION_TOKEN: &str = "m.login.registration_token";

/// What a UIA session authorises; a session started for one cannot complete another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Register,
    DeleteDevices,
    ChangePassword,
    Deactivate,
    /// Replacing cross-signing keys.
    CrossSigning,
}

/// The body of a 401 UIA response.
#[derive(Debug, Clone, Serialize)]
pub struct UiaInfo {
    pub flows: Vec<FlowInfo>,
    pub params: serde_json::Map<String, serde_json::Value>,
    pub session: String,
    pub completed: Vec<String>,
    #[serde(skip)]
    pub error: Option<UiaStageError>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FlowInfo {
    pub stages: Vec<String>,
}

/// A stage that failed, reported in the 401 body as `errcode`/`error`.
#[derive(Debug, Clone)]
pub struct UiaStageError {
    pub errcode: &'static str,
    pub message: String,
}

/// What a registration produced, answered again when its session is replayed.
#[derive(Debug, Clone)]
pub struct Registration {
    pub user_id: OwnedUserId,
    /// The device and access token, unless the registration inhibited login.
    pub login: Option<(OwnedDeviceId, String)>,
}

/// Where a registration session stands once its stages are done.
#[derive(Debug, Clone)]
enum Outcome {
    /// Stages still missing, or done and the account not yet being created.
    Open,
    /// The account is being created by the request that completed the flow.
    Registering,
    Registered(Registration),
}

struct Session {
    purpose: Purpose,
    user: Option<String>,
    owner: String,
    completed: Vec<String>,
    registration_token: Option<String>,
    last_used: Instant,
    outcome: Outcome,
}

impl Session {
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.last_used) >= SESSION_IDLE_TIMEOUT
    }
}

/// What the finished authentication established.
#[derive(Debug)]
pub struct Completed {
    pub session_id: String,
    /// The registration token a `m.login.registration_token` stage accepted.
    pub registration_token: Option<String>,
}

struct Sessions {
    by_id: HashMap<String, Session>,
    /// Each owner's sessions, oldest first.
    by_owner: HashMap<String, VecDeque<String>>,
    last_sweep: Instant,
}

impl Default for Sessions {
    fn default() -> Self {
        Self { by_id: HashMap::new(), by_owner: HashMap::new(), last_sweep: Instant::now() }
    }
}

impl Sessions {
    fn remove(&mut self, id: &str) -> Option<Session> {
        let session = self.by_id.remove(id)?;
        if let Some(ids) = self.by_owner.get_mut(&session.owner) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.by_owner.remove(&session.owner);
            }
        }
        Some(session)
    }

    fn sweep(&mut self, now: Instant) {
        self.last_sweep = now;
        let expired: Vec<String> =
            self.by_id.iter().filter(|(_, s)| s.expired(now)).map(|(id, _)| id.clone()).collect();
        for id in expired {
            self.remove(&id);
        }
    }

    /// Makes room for one more session of `owner`, or refuses when the table is full.
    fn make_room(&mut self, owner: &str, now: Instant) -> Result<()> {
        if now.duration_since(self.last_sweep) >= SWEEP_INTERVAL || self.by_id.len() >= MAX_SESSIONS
        {
            self.sweep(now);
        }
        while self.by_owner.get(owner).is_some_and(|ids| ids.len() >= MAX_SESSIONS_PER_OWNER) {
            let Some(oldest) = self.by_owner.get(owner).and_then(|ids| ids.front().cloned()) else {
                break;
            };
            self.remove(&oldest);
        }
        if self.by_id.len() >= MAX_SESSIONS {
            tracing::warn!("UIA session table full; refusing new sessions");
            return Err(Error::LimitExceeded { retry_after_ms: FULL_RETRY_AFTER_MS });
        }
        Ok(())
    }
}

#[derive(Default)]
pub struct Uia {
    sessions: Mutex<Sessions>,
}

/// The session a request continues, after [`Uia::resume`].
pub struct Resumed {
    pub session_id: String,
}

impl Uia {
    fn info(session_id: &str, flows: &[&[&str]], completed: &[String]) -> UiaInfo {
        UiaInfo {
            flows: flows
                .iter()
                .map(|f| FlowInfo { stages: f.iter().map(|s| (*s).to_owned()).collect() })
                .collect(),
            params: serde_json::Map::new(),
            session: session_id.to_owned(),
            completed: completed.to_vec(),
            error: None,
        }
    }

    /// Creates a session for a purpose, user and owner; returns its ID.
    fn start_session(&self, purpose: Purpose, user: Option<&str>, owner: &str) -> Result<String> {
        let id = crate::services::tokens::random_token();
        let now = Instant::now();
        let mut sessions = self.sessions.lock();
        sessions.make_room(owner, now)?;
        sessions.by_id.insert(
            id.clone(),
            Session {
                purpose,
                user: user.map(str::to_owned),
                owner: owner.to_owned(),
                completed: Vec::new(),
                registration_token: None,
                last_used: now,
                outcome: Outcome::Open,
            },
        );
        sessions.by_owner.entry(owner.to_owned()).or_default().push_back(id.clone());
        Ok(id)
    }

    /// Starts a session and returns the 401 error that tells the client what to do (or the
    /// 429 when no session can be started).
    pub fn challenge(
        &self,
        purpose: Purpose,
        user: Option<&str>,
        owner: &str,
        flows: &[&[&str]],
    ) -> Error {
        match self.start_session(purpose, user, owner) {
            Ok(id) => Error::Uia(Box::new(Self::info(&id, flows, &[]))),
            Err(e) => e,
        }
    }

    /// Finds the session named by the client (or starts one when it named none) and checks
    /// that it belongs to this purpose and user.
    pub fn resume(
        &self,
        session_id: Option<&str>,
        purpose: Purpose,
        user: Option<&str>,
        owner: &str,
    ) -> Result<Resumed> {
        let Some(id) = session_id else {
            return Ok(Resumed { session_id: self.start_session(purpose, user, owner)? });
        };
        let now = Instant::now();
        let mut sessions = self.sessions.lock();
        match sessions.by_id.get_mut(id) {
            Some(s) if s.expired(now) => {
                sessions.remove(id);
                Err(Error::Forbidden("UIA session expired; start again".into()))
            }
            Some(s) if s.purpose != purpose || s.user.as_deref() != user => {
                Err(Error::Forbidden("UIA session belongs to another request".into()))
            }
            Some(s) => {
                s.last_used = now;
                Ok(Resumed { session_id: id.to_owned() })
            }
            None => Err(Error::Forbidden("Unknown UIA session".into())),
        }
    }

    /// Reports a failed stage: a 401 carrying the flows, the stages done so far, and the error.
    pub fn failed(&self, resumed: &Resumed, flows: &[&[&str]], error: UiaStageError) -> Error {
        let completed = self
            .sessions
            .lock()
            .by_id
            .get(&resumed.session_id)
            .map(|s| s.completed.clone())
            .unwrap_or_default();
        let mut info = Self::info(&resumed.session_id, flows, &completed);
        info.error = Some(error);
        Error::Uia(Box::new(info))
    }

    /// Records a completed stage. Returns `Ok(Completed)` once every stage of some flow is done,
    /// or the 401 listing what remains. A finished session is forgotten, except a
    /// registration's: it waits for [`Uia::registered`] (or [`Uia::registration_failed`]).
    pub fn complete_stage(
        &self,
        resumed: &Resumed,
        flows: &[&[&str]],
        stage: &str,
        registration_token: Option<String>,
    ) -> Result<Completed> {
        let mut sessions = self.sessions.lock();
        let Some(session) = sessions.by_id.get_mut(&resumed.session_id) else {
            return Err(Error::Forbidden("Unknown UIA session".into()));
        };
        if !session.completed.iter().any(|s| s == stage) {
            session.completed.push(stage.to_owned());
        }
        if registration_token.is_some() {
            session.registration_token = registration_token;
        }
        let done = flows
            .iter()
            .any(|flow| flow.iter().all(|st| session.completed.iter().any(|c| c == st)));
        if !done {
            let info = Self::info(&resumed.session_id, flows, &session.completed);
            return Err(Error::Uia(Box::new(info)));
        }
        let completed = Completed {
            session_id: resumed.session_id.clone(),
            registration_token: session.registration_token.clone(),
        };
        if session.purpose == Purpose::Register {
            match session.outcome {
                Outcome::Open => session.outcome = Outcome::Registering,
                Outcome::Registering | Outcome::Registered(_) => return Err(in_progress()),
            }
        } else {
            sessions.remove(&resumed.session_id);
        }
        Ok(completed)
    }

    /// The result of the registration this session already completed, for a replayed request;
    /// `None` when the session is unknown, for another purpose, or not registered yet.
    pub fn registration(&self, session_id: &str) -> Result<Option<Registration>> {
        let now = Instant::now();
        let sessions = self.sessions.lock();
        let Some(session) = sessions.by_id.get(session_id) else { return Ok(None) };
        if session.purpose != Purpose::Register || session.expired(now) {
            return Ok(None);
        }
        match &session.outcome {
            Outcome::Open => Ok(None),
            Outcome::Registering => Err(in_progress()),
            Outcome::Registered(r) => Ok(Some(r.clone())),
        }
    }

    /// Records what the session's registration produced. The session's idle clock is not
    /// reset by replays, so it ends [`SESSION_IDLE_TIMEOUT`] after this.
    pub fn registered(&self, session_id: &str, registration: Registration) {
        if let Some(s) = self.sessions.lock().by_id.get_mut(session_id) {
            s.outcome = Outcome::Registered(registration);
            s.last_used = Instant::now();
        }
    }

    /// The account could not be created: the session may try again (its stages stay done).
    pub fn registration_failed(&self, session_id: &str) {
        if let Some(s) = self.sessions.lock().by_id.get_mut(session_id)
            && matches!(s.outcome, Outcome::Registering)
        {
            s.outcome = Outcome::Open;
        }
    }

    /// Forgets a session (its registration's token was revoked, say).
    pub fn forget(&self, session_id: &str) {
        self.sessions.lock().remove(session_id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.sessions.lock().by_id.len()
    }
}

/// A second request of a session whose account is being created right now: clients retry
/// a 429 by themselves, and the retry gets the registration's result.
fn in_progress() -> Error {
    Error::LimitExceeded { retry_after_ms: 1000 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOWS: &[&[&str]] = &[&[REGISTRATION_TOKEN, DUMMY]];
    const PW_FLOWS: &[&[&str]] = &[&[PASSWORD]];

    fn challenge(uia: &Uia, purpose: Purpose, user: Option<&str>, owner: &str) -> String {
        match uia.challenge(purpose, user, owner, FLOWS) {
            Error::Uia(info) => info.session,
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    #[test]
    fn a_flow_completes_only_when_all_its_stages_are_done() {
        let uia = Uia::default();
        let id = challenge(&uia, Purpose::Register, None, "1.2.3.4");
        let resumed = uia.resume(Some(&id), Purpose::Register, None, "1.2.3.4").unwrap();
        let first = uia.complete_stage(&resumed, FLOWS, REGISTRATION_TOKEN, Some("tok".into()));
        match first {
            Err(Error::Uia(info)) => assert_eq!(info.completed, vec![REGISTRATION_TOKEN]),
            other => panic!("expected 401, got {other:?}"),
        }
        let done = uia.complete_stage(&resumed, FLOWS, DUMMY, None).unwrap();
        assert_eq!(done.registration_token.as_deref(), Some("tok"));
        assert_eq!(done.session_id, id);
    }

    #[test]
    fn a_session_cannot_be_reused_for_another_user_or_purpose() {
        let uia = Uia::default();
        let id = challenge(&uia, Purpose::DeleteDevices, Some("alice"), "alice");
        assert!(uia.resume(Some(&id), Purpose::DeleteDevices, Some("bob"), "bob").is_err());
        assert!(uia.resume(Some(&id), Purpose::Deactivate, Some("alice"), "alice").is_err());
        assert!(uia.resume(Some(&id), Purpose::DeleteDevices, Some("alice"), "alice").is_ok());
    }

    #[test]
    fn a_finished_session_other_than_registration_is_forgotten() {
        let uia = Uia::default();
        let id = challenge(&uia, Purpose::ChangePassword, Some("alice"), "alice");
        let resumed = uia.resume(Some(&id), Purpose::ChangePassword, Some("alice"), "a").unwrap();
        uia.complete_stage(&resumed, PW_FLOWS, PASSWORD, None).unwrap();
        assert!(uia.resume(Some(&id), Purpose::ChangePassword, Some("alice"), "a").is_err());
    }

    #[test]
    fn a_registration_session_keeps_its_result_for_replays() {
        let uia = Uia::default();
        let flows: &[&[&str]] = &[&[DUMMY]];
        let id = challenge(&uia, Purpose::Register, None, "ip");
        let resumed = uia.resume(Some(&id), Purpose::Register, None, "ip").unwrap();
        assert!(uia.registration(&id).unwrap().is_none());
        uia.complete_stage(&resumed, flows, DUMMY, None).unwrap();
        // While the account is being created, a replay is told to retry.
        assert!(matches!(uia.registration(&id), Err(Error::LimitExceeded { .. })));
        assert!(matches!(
            uia.complete_stage(&resumed, flows, DUMMY, None),
            Err(Error::LimitExceeded { .. })
        ));
        let user_id: OwnedUserId = "@a:example.org".try_into().unwrap();
        uia.registered(&id, Registration { user_id: user_id.clone(), login: None });
        assert_eq!(uia.registration(&id).unwrap().unwrap().user_id, user_id);
    }

    #[test]
    fn a_failed_registration_can_be_retried_in_its_session() {
        let uia = Uia::default();
        let flows: &[&[&str]] = &[&[DUMMY]];
        let id = challenge(&uia, Purpose::Register, None, "ip");
        let resumed = uia.resume(Some(&id), Purpose::Register, None, "ip").unwrap();
        uia.complete_stage(&resumed, flows, DUMMY, None).unwrap();
        uia.registration_failed(&id);
        assert!(uia.registration(&id).unwrap().is_none());
        assert!(uia.complete_stage(&resumed, flows, DUMMY, None).is_ok());
    }

    #[test]
    fn an_owner_keeps_a_bounded_number_of_sessions_oldest_evicted() {
        let uia = Uia::default();
        let first = challenge(&uia, Purpose::Register, None, "ip");
        for _ in 0..MAX_SESSIONS_PER_OWNER {
            challenge(&uia, Purpose::Register, None, "ip");
        }
        assert_eq!(uia.len(), MAX_SESSIONS_PER_OWNER);
        assert!(uia.resume(Some(&first), Purpose::Register, None, "ip").is_err());
        // Another owner is not affected.
        challenge(&uia, Purpose::Register, None, "other-ip");
        assert_eq!(uia.len(), MAX_SESSIONS_PER_OWNER + 1);
    }

    #[test]
    fn an_idle_session_expires() {
        let uia = Uia::default();
        let id = challenge(&uia, Purpose::Register, None, "ip");
        uia.sessions.lock().by_id.get_mut(&id).unwrap().last_used -= SESSION_IDLE_TIMEOUT;
        let res = uia.resume(Some(&id), Purpose::Register, None, "ip");
        assert!(matches!(res, Err(Error::Forbidden(m)) if m.contains("expired")));
        assert_eq!(uia.len(), 0);
    }

    #[test]
    fn a_full_table_refuses_new_sessions_with_429() {
        let uia = Uia::default();
        {
            let mut sessions = uia.sessions.lock();
            let now = Instant::now();
            for i in 0..MAX_SESSIONS {
                sessions.by_id.insert(
                    format!("s{i}"),
                    Session {
                        purpose: Purpose::Register,
                        user: None,
                        owner: format!("owner{i}"),
                        completed: Vec::new(),
                        registration_token: None,
                        last_used: now,
                        outcome: Outcome::Open,
                    },
                );
            }
        }
        let refused = uia.challenge(Purpose::Register, None, "new-ip", FLOWS);
        assert!(matches!(refused, Error::LimitExceeded { .. }), "{refused:?}");
        // Once sessions expire, there is room again.
        for s in uia.sessions.lock().by_id.values_mut() {
            s.last_used -= SESSION_IDLE_TIMEOUT;
        }
        challenge(&uia, Purpose::Register, None, "new-ip");
        assert_eq!(uia.len(), 1);
    }
}
