//! Password hashing with argon2id on a dedicated pool: one thread per core, each reusing its
//! own 19 MiB argon2 work area. Hashing never blocks the async runtime, never runs more than
//! one hash per core, and its memory stays bounded (with the blocking pool, every thread's
//! malloc arena kept its own 19 MiB blocks: hundreds of MiB after a login burst).

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

#[derive(Clone)]
pub struct Passwords {
    jobs: Arc<Mutex<mpsc::Sender<Job>>>,
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

impl Passwords {
    pub fn new() -> Result<Self> {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..cores {
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
        Ok(Self { jobs: Arc::new(Mutex::new(tx)), dummy_hash: dummy_hash.into() })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |a| {
            let _ = tx.send(f(a));
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
        let p = Passwords::new().unwrap();
        let h = p.hash("correct horse").await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(p.verify("correct horse", Some(&h)).await.unwrap());
        assert!(!p.verify("wrong", Some(&h)).await.unwrap());
        assert!(!p.verify("correct horse", None).await.unwrap());
    }
}
