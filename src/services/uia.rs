//! User-interactive authentication: the sessions and their completed stages.
//!
//! Sessions live in memory for [`SESSION_LIFETIME`]; a restart only makes clients start their
//! UIA again. Which stage is valid is decided by the caller (`services::accounts`), which knows
//! passwords and registration tokens; this module only keeps the bookkeeping honest: a session
//! is bound to one purpose and one user, and succeeds once every stage of one flow is done.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use crate::error::{Error, Result};

pub const SESSION_LIFETIME: Duration = Duration::from_secs(15 * 60);
const MAX_SESSIONS: usize = 100_000;

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

struct Session {
    purpose: Purpose,
    user: Option<String>,
    completed: Vec<String>,
    registration_token: Option<String>,
    created: Instant,
}

/// What the finished authentication established.
#[derive(Debug, Default)]
pub struct Completed {
    /// The registration token a `m.login.registration_token` stage accepted.
    pub registration_token: Option<String>,
}

#[derive(Default)]
pub struct Uia {
    sessions: Mutex<HashMap<String, Session>>,
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

    /// Creates a session for a purpose and user; returns its ID.
    fn start_session(&self, purpose: Purpose, user: Option<&str>) -> String {
        let id = crate::services::tokens::random_token();
        let mut sessions = self.sessions.lock();
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| s.created.elapsed() < SESSION_LIFETIME);
        }
        sessions.insert(
            id.clone(),
            Session {
                purpose,
                user: user.map(str::to_owned),
                completed: Vec::new(),
                registration_token: None,
                created: Instant::now(),
            },
        );
        id
    }

    /// Starts a session and returns the 401 error that tells the client what to do.
    pub fn challenge(&self, purpose: Purpose, user: Option<&str>, flows: &[&[&str]]) -> Error {
        let id = self.start_session(purpose, user);
        Error::Uia(Box::new(Self::info(&id, flows, &[])))
    }

    /// Finds the session named by the client (or starts one when it named none) and checks
    /// that it belongs to this purpose and user.
    pub fn resume(
        &self,
        session_id: Option<&str>,
        purpose: Purpose,
        user: Option<&str>,
    ) -> Result<Resumed> {
        let Some(id) = session_id else {
            return Ok(Resumed { session_id: self.start_session(purpose, user) });
        };
        let mut sessions = self.sessions.lock();
        match sessions.get(id) {
            Some(s) if s.created.elapsed() >= SESSION_LIFETIME => {
                sessions.remove(id);
                Err(Error::Forbidden("UIA session expired; start again".into()))
            }
            Some(s) if s.purpose != purpose || s.user.as_deref() != user => {
                Err(Error::Forbidden("UIA session belongs to another request".into()))
            }
            Some(_) => Ok(Resumed { session_id: id.to_owned() }),
            None => Err(Error::Forbidden("Unknown UIA session".into())),
        }
    }

    /// Reports a failed stage: a 401 carrying the flows, the stages done so far, and the error.
    pub fn failed(&self, resumed: &Resumed, flows: &[&[&str]], error: UiaStageError) -> Error {
        let completed = self
            .sessions
            .lock()
            .get(&resumed.session_id)
            .map(|s| s.completed.clone())
            .unwrap_or_default();
        let mut info = Self::info(&resumed.session_id, flows, &completed);
        info.error = Some(error);
        Error::Uia(Box::new(info))
    }

    /// Records a completed stage. Returns `Ok(Completed)` once every stage of some flow is done
    /// (and forgets the session), or the 401 listing what remains.
    pub fn complete_stage(
        &self,
        resumed: &Resumed,
        flows: &[&[&str]],
        stage: &str,
        registration_token: Option<String>,
    ) -> Result<Completed> {
        let mut sessions = self.sessions.lock();
        let Some(session) = sessions.get_mut(&resumed.session_id) else {
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
        if done {
            let session = sessions.remove(&resumed.session_id);
            Ok(Completed { registration_token: session.and_then(|s| s.registration_token) })
        } else {
            let info = Self::info(&resumed.session_id, flows, &session.completed);
            Err(Error::Uia(Box::new(info)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOWS: &[&[&str]] = &[&[REGISTRATION_TOKEN, DUMMY]];

    #[test]
    fn a_flow_completes_only_when_all_its_stages_are_done() {
        let uia = Uia::default();
        let Error::Uia(info) = uia.challenge(Purpose::Register, None, FLOWS) else {
            panic!("expected a challenge")
        };
        let resumed = uia.resume(Some(&info.session), Purpose::Register, None).unwrap();
        let first = uia.complete_stage(&resumed, FLOWS, REGISTRATION_TOKEN, Some("tok".into()));
        match first {
            Err(Error::Uia(info)) => assert_eq!(info.completed, vec![REGISTRATION_TOKEN]),
            other => panic!("expected 401, got {other:?}"),
        }
        let done = uia.complete_stage(&resumed, FLOWS, DUMMY, None).unwrap();
        assert_eq!(done.registration_token.as_deref(), Some("tok"));
        assert!(uia.resume(Some(&info.session), Purpose::Register, None).is_err());
    }

    #[test]
    fn a_session_cannot_be_reused_for_another_user_or_purpose() {
        let uia = Uia::default();
        let Error::Uia(info) = uia.challenge(Purpose::DeleteDevices, Some("alice"), FLOWS) else {
            panic!("expected a challenge")
        };
        assert!(uia.resume(Some(&info.session), Purpose::DeleteDevices, Some("bob")).is_err());
        assert!(uia.resume(Some(&info.session), Purpose::Deactivate, Some("alice")).is_err());
        assert!(uia.resume(Some(&info.session), Purpose::DeleteDevices, Some("alice")).is_ok());
    }
}
