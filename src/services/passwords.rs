//! Password hashing with argon2id on a dedicated pool: one thread per core, each reusing its
//! own 19 MiB argon2 work area. Hashing never blocks the async runtime, never runs more than
//! one hash per core, and its memory stays bounded (with the blocking pool, every thread's
//! malloc arena kept its own 19 MiB blocks: hundreds of MiB after a login burst).
//!
//! The queue in front of the pool is bounded: beyond `threads × (1 + queue_per_core)` jobs
//! (running or waiting), a request is refused with 429 `M_LIMIT_EXCEEDED` instead of queueing,
//! so a login flood costs a bounded amount of memory and queueing time. A job whose requester
//! went away (the client disconnected) is skipped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// Longest password accepted; argon2 would take any length, but a megabyte password is abuse.
pub const MAX_PASSWORD_BYTES: usize = 512;

type Job = Box<dyn FnOnce(&Argon2<'static>) + Send>;

/// Suggested wait when the queue is full: a few hashes' time (one takes tens of ms per core).
const RETRY_AFTER_MS: u64 = 1000;

#[derive(Clone)]
pub struct Passwords {
    jobs: Arc<Mutex<mpsc::Sender<Job>>>,
    /// Jobs submitted and not finished (running or waiting).
    outstanding: Arc<AtomicUsize>,
    /// The most jobs admitted at once.
    capacity: usize,
    /// A hash of a random password, verified against when the user does not exist, so that
    /// a login for an unknown user takes as long as one with a wrong password.
    dummy_hash: Arc<str>,
}

fn argon2() -> Argon2<'static> {
    // OWASP's first recommended argon2id configuration (m=19 MiB, t=2, p=1).
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_with(a: &Argon2<'static>, password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    a.hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("hashing password: {e}")))
}

fn verify_with(a: &Argon2<'static>, password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => a.verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// Releases a job's queue slot when the job is done or dropped unrun.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Passwords {
    /// A pool of one thread per core, each with `queue_per_core` jobs waiting at most.
    pub fn new(queue_per_core: usize) -> Result<Self> {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Self::with_threads(cores, queue_per_core)
    }

    fn with_threads(threads: usize, queue_per_core: usize) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    let a = argon2();
                    loop {
                        let job = rx.lock().recv();
                        match job {
                            Ok(job) => job(&a),
                            Err(_) => return,
                        }
                    }
                })
                .map_err(|e| Error::Internal(format!("starting hash threads: {e}")))?;
        }
        let dummy_hash = hash_with(&argon2(), &crate::services::tokens::random_token())?;
        Ok(Self {
            jobs: Arc::new(Mutex::new(tx)),
            outstanding: Arc::new(AtomicUsize::new(0)),
            capacity: threads.saturating_mul(queue_per_core.saturating_add(1)),
            dummy_hash: dummy_hash.into(),
        })
    }

    /// Runs `f` on the pool, or fails with `M_LIMIT_EXCEEDED` when the queue is full.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T> {
        let admitted = self
            .outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            metrics::counter!("axon_password_queue_full_total").increment(1);
            return Err(Error::LimitExceeded { retry_after_ms: RETRY_AFTER_MS });
        }
        let slot = Slot(self.outstanding.clone());
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |a| {
            // The request was cancelled (client gone): the work would be thrown away.
            if tx.is_closed() {
                return;
            }
            let result = f(a);
            // Free the slot before answering, so the next request of this caller finds it.
            drop(slot);
            let _ = tx.send(result);
        });
        self.jobs
            .lock()
            .send(job)
            .map_err(|_| Error::Internal("password hashing pool stopped".into()))?;
        rx.await.map_err(|_| Error::Internal("password hashing pool stopped".into()))
    }

    pub async fn hash(&self, password: &str) -> Result<String> {
        let password = password.to_owned();
        self.run(move |a| hash_with(a, &password)).await?
    }

    /// Checks `password` against `hash`; with no hash, spends the same time and fails.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> Result<bool> {
        let password = password.to_owned();
        let (hash, real) = match hash {
            Some(h) => (h.to_owned(), true),
            None => (self.dummy_hash.to_string(), false),
        };
        let ok = self.run(move |a| verify_with(a, &password, &hash)).await?;
        Ok(ok && real)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_only_its_password() {
        let p = Passwords::new(4).unwrap();
        let h = p.hash("correct horse").await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(p.verify("correct horse", Some(&h)).await.unwrap());
        assert!(!p.verify("wrong", Some(&h)).await.unwrap());
        assert!(!p.verify("correct horse", None).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_with_limit_exceeded_then_admits_again() {
        // One thread and one waiting job: two jobs at once, the third is refused.
        let p = Passwords::with_threads(1, 1).unwrap();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = oneshot::channel::<()>();
        let blocked = p.clone();
        let running = tokio::spawn(async move {
            blocked
                .run(move |_| {
                    let _ = started_tx.send(());
                    gate.recv().ok()
                })
                .await
        });
        started.await.unwrap();
        let queued = p.clone();
        let waiting = tokio::spawn(async move { queued.run(|_| 7).await });
        // Let the second job take its slot.
        while p.outstanding.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        match p.hash("refused").await {
            Err(Error::LimitExceeded { retry_after_ms }) => assert!(retry_after_ms > 0),
            other => panic!("expected LimitExceeded, got {other:?}"),
        }
        release.send(()).unwrap();
        assert_eq!(running.await.unwrap().unwrap(), Some(()));
        assert_eq!(waiting.await.unwrap().unwrap(), 7);
        // The slots are free again.
        assert!(p.hash("admitted").await.unwrap().starts_with("$argon2id$"));
        assert_eq!(p.outstanding.load(Ordering::Acquire), 0);
    }
}
