//! Basic authentication against `basic_auth_users`' bcrypt hashes.
//!
//! bcrypt is slow on purpose (tens of milliseconds at cost 10), which a
//! client could turn against the daemon by sending passwords as fast as it
//! can. So: a password that verified is remembered (its SHA-256, per user),
//! and the next request with it skips bcrypt, as exporter-toolkit caches
//! it; bcrypt runs on a blocking thread, never on the async workers, one
//! check at a time; and at most [`MAX_WAITING`] checks wait for it, the
//! rest getting 429 at once. A scraper whose password verified once is
//! never held up by any of this.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
};

use axum::http::HeaderValue;
use base64::Engine as _;
use subtle::ConstantTimeEq as _;
use tokio::sync::Semaphore;

/// bcrypt checks that may wait for the one running; more get 429.
pub const MAX_WAITING: usize = 8;

/// What a request's credentials earn it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A configured user with that user's password.
    Allowed,
    /// No credentials, an unknown user or a wrong password: 401.
    Denied,
    /// Too many checks are waiting for bcrypt: 429.
    Busy,
}

/// The users and what has been verified.
#[derive(Debug)]
pub struct BasicAuth {
    /// User name to bcrypt hash.
    users: HashMap<String, String>,
    /// A configured hash that unknown users' passwords are checked
    /// against, so that they take as long to refuse as wrong passwords.
    decoy: String,
    /// Per user, the SHA-256 of the password last verified.
    verified: Mutex<HashMap<String, [u8; 32]>>,
    /// Places for checks waiting for or running bcrypt.
    waiting: Semaphore,
    /// One bcrypt at a time.
    running: Arc<Semaphore>,
}

impl BasicAuth {
    /// Basic auth for `users` (name to bcrypt hash, already checked), or
    /// `None` if there are none: no authentication then.
    pub fn new(users: BTreeMap<String, String>) -> Option<BasicAuth> {
        let decoy = users.values().next()?.clone();
        Some(BasicAuth {
            users: users.into_iter().collect(),
            decoy,
            verified: Mutex::new(HashMap::new()),
            waiting: Semaphore::new(MAX_WAITING),
            running: Arc::new(Semaphore::new(1)),
        })
    }

    /// Checks a request's `Authorization` header.
    pub async fn check(&self, authorization: Option<&HeaderValue>) -> Verdict {
        let Some((user, password)) = authorization.and_then(credentials) else {
            return Verdict::Denied;
        };
        let digest = sha256(&password);
        let hash = match self.users.get(&user) {
            Some(hash) => {
                if self.remembered(&user, &digest) {
                    return Verdict::Allowed;
                }
                Some(hash.clone())
            }
            None => None,
        };
        let Ok(_waiting) = self.waiting.try_acquire() else {
            return Verdict::Busy;
        };
        let Ok(running) = self.running.clone().acquire_owned().await else {
            return Verdict::Denied;
        };
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.decoy.clone());
        // The permit goes with the check: if this request is dropped
        // meanwhile, the next bcrypt still waits for this one to end.
        let verified = tokio::task::spawn_blocking(move || {
            let ok = bcrypt::verify(&password, &hash);
            drop(running);
            ok
        })
        .await;
        if known && matches!(verified, Ok(Ok(true))) {
            self.lock().insert(user, digest);
            Verdict::Allowed
        } else {
            Verdict::Denied
        }
    }

    /// Whether `digest` is that of the password last verified for `user`.
    fn remembered(&self, user: &str, digest: &[u8; 32]) -> bool {
        self.lock()
            .get(user)
            .is_some_and(|known| bool::from(known.ct_eq(digest)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, [u8; 32]>> {
        self.verified.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The user and password of a `Basic` authorization, if that is what it
/// is. A user name that is not UTF-8 matches no configured user.
fn credentials(header: &HeaderValue) -> Option<(String, Vec<u8>)> {
    let value = header.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> HeaderValue {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap()
    }

    fn auth() -> BasicAuth {
        // Cost 4, the lowest: these tests are about the logic, not bcrypt.
        let hash = bcrypt::hash("s3cret:with colon", 4).unwrap();
        BasicAuth::new(BTreeMap::from([("prometheus".to_owned(), hash)])).unwrap()
    }

    #[tokio::test]
    async fn the_right_password_and_nothing_else() {
        let auth = auth();
        let right = basic("prometheus", "s3cret:with colon");
        assert_eq!(auth.check(Some(&right)).await, Verdict::Allowed);
        // Remembered: allowed again without bcrypt.
        assert!(auth.remembered("prometheus", &sha256(b"s3cret:with colon")));
        assert_eq!(auth.check(Some(&right)).await, Verdict::Allowed);
        for denied in [
            basic("prometheus", "wrong"),
            basic("prometheus", ""),
            basic("nobody", "s3cret:with colon"),
            HeaderValue::from_static("Basic !!!"),
            HeaderValue::from_static("Bearer abc"),
            HeaderValue::from_static("Basic"),
        ] {
            assert_eq!(
                auth.check(Some(&denied)).await,
                Verdict::Denied,
                "{denied:?}"
            );
        }
        assert_eq!(auth.check(None).await, Verdict::Denied);
        // The scheme's case does not matter.
        let lower =
            HeaderValue::from_str(&right.to_str().unwrap().replacen("Basic", "basic", 1)).unwrap();
        assert_eq!(auth.check(Some(&lower)).await, Verdict::Allowed);
    }

    #[test]
    fn no_users_no_auth() {
        assert!(BasicAuth::new(BTreeMap::new()).is_none());
    }

    #[tokio::test]
    async fn checks_beyond_the_queue_are_refused() {
        let auth = auth();
        let held: Vec<_> = (0..MAX_WAITING)
            .map(|_| auth.waiting.try_acquire().unwrap())
            .collect();
        let wrong = basic("prometheus", "wrong");
        assert_eq!(auth.check(Some(&wrong)).await, Verdict::Busy);
        // A remembered password needs no place.
        let right = basic("prometheus", "s3cret:with colon");
        auth.lock()
            .insert("prometheus".into(), sha256(b"s3cret:with colon"));
        assert_eq!(auth.check(Some(&right)).await, Verdict::Allowed);
        drop(held);
        assert_eq!(auth.check(Some(&wrong)).await, Verdict::Denied);
    }
}
