//! Checking a password without blocking the core (docs/security.md "Password checks"): an
//! argon2id verification is awaited on the password pool (`resource::blocking`); concurrent
//! checks of the same password against the same stored hash on one core share one verification
//! (a reconnect storm of clients with the same credentials costs one check per core, not one
//! per client). A salted SHA-256 hash is checked in place (one digest, about a microsecond).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::OnceLock;
use std::task::{Poll, Waker};

use super::AuthError;
use crate::resource::users::{self, HashFunction};

type Verdict = Result<bool, AuthError>;
/// (digest of user name and password, stored hash) → its verification in flight.
type Flights = HashMap<(u64, String), Rc<RefCell<Flight>>>;

enum Flight {
    /// Being verified; these requests wait for it.
    Running(Vec<Waker>),
    /// Verified (`Some`), or abandoned by the request that ran it (`None`: a waiter runs it).
    Done(Option<Verdict>),
}

thread_local! {
    /// This core's verifications in flight. Entries live only while their verification runs,
    /// so there are at most as many as checks the password pool holds.
    static FLIGHTS: RefCell<Flights> = RefCell::new(HashMap::new());
}

/// Whether `password` (whose user-name-and-password digest is `digest`) matches `stored`.
pub(super) async fn password_matches(digest: u64, password: &str, stored: &str) -> Verdict {
    if !stored.starts_with("$argon2") {
        return Ok(users::verify_password(password, stored));
    }
    let key = (digest, stored.to_string());
    loop {
        let running = FLIGHTS.with(|f| f.borrow().get(&key).cloned());
        match running {
            Some(flight) => {
                if let Some(verdict) = wait(&flight).await {
                    return verdict;
                }
                // Its leader went away before the answer: try again (as the leader, if first).
            }
            None => return lead(key, password).await,
        }
    }
}

/// A check for a user name nobody has: the same work as checking a wrong password of a user
/// whose hash is `function`'s (against a decoy hash made once per process on the pool), and
/// never a match.
pub(super) async fn unknown_user(function: HashFunction, password: &str) -> Verdict {
    static DECOY: OnceLock<String> = OnceLock::new();
    match function {
        HashFunction::Sha256 => {
            let decoy = DECOY.get_or_init(|| users::hash_password(""));
            users::verify_password(password, decoy);
        }
        HashFunction::Argon2id => {
            let password = password.to_string();
            crate::resource::blocking::run_verify(move || {
                let decoy =
                    DECOY.get_or_init(|| users::hash_password_with("", HashFunction::Argon2id));
                users::verify_password(&password, decoy)
            })
            .await
            .map_err(AuthError::from)?;
        }
    }
    Ok(false)
}

/// Runs the verification for everyone waiting on `key`.
async fn lead(key: (u64, String), password: &str) -> Verdict {
    let flight = Rc::new(RefCell::new(Flight::Running(Vec::new())));
    FLIGHTS.with(|f| f.borrow_mut().insert(key.clone(), flight.clone()));
    let mut guard = Leader {
        key,
        flight,
        verdict: None,
    };
    let (password, stored) = (password.to_string(), guard.key.1.clone());
    let verdict: Verdict =
        crate::resource::blocking::run_verify(move || users::verify_password(&password, &stored))
            .await
            .map_err(AuthError::from);
    guard.verdict = Some(verdict.clone());
    verdict
}

/// Ends a flight however its leader ends: with the verdict, or abandoned when the leader's
/// request is dropped (its connection closed) before the answer.
struct Leader {
    key: (u64, String),
    flight: Rc<RefCell<Flight>>,
    verdict: Option<Verdict>,
}

impl Drop for Leader {
    fn drop(&mut self) {
        FLIGHTS.with(|f| {
            let mut f = f.borrow_mut();
            if f.get(&self.key)
                .is_some_and(|g| Rc::ptr_eq(g, &self.flight))
            {
                f.remove(&self.key);
            }
        });
        let done = Flight::Done(self.verdict.take());
        if let Flight::Running(wakers) = std::mem::replace(&mut *self.flight.borrow_mut(), done) {
            wakers.into_iter().for_each(Waker::wake);
        }
    }
}

/// The flight's verdict once it is done; `None` when it was abandoned.
async fn wait(flight: &RefCell<Flight>) -> Option<Verdict> {
    std::future::poll_fn(|cx| match &mut *flight.borrow_mut() {
        Flight::Done(verdict) => Poll::Ready(verdict.clone()),
        Flight::Running(wakers) => {
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    /// Two checks of one password share one verification; a check whose leader is dropped
    /// before the answer runs the verification itself.
    #[test]
    fn concurrent_checks_share_one_verification() {
        let stored = users::hash_password_with("pw", users::HashFunction::Argon2id);
        let waiters = |digest: u64| {
            FLIGHTS.with(|f| match f.borrow().get(&(digest, stored.clone())) {
                Some(flight) => match &*flight.borrow() {
                    Flight::Running(w) => Some(w.len()),
                    Flight::Done(_) => None,
                },
                None => None,
            })
        };
        let mut a = Box::pin(password_matches(1, "pw", &stored));
        let mut b = Box::pin(password_matches(1, "pw", &stored));
        let mut cx = std::task::Context::from_waker(Waker::noop());
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert!(b.as_mut().poll(&mut cx).is_pending());
        assert_eq!(waiters(1), Some(1), "b waits on a's verification");
        // The leader goes away: the follower takes over and gets its own answer.
        drop(a);
        assert_eq!(waiters(1), None);
        assert_eq!(tidepool_io::block_on(b), Ok(true));

        // Both wait for one verification and get its answer.
        let mut a = Box::pin(password_matches(2, "no", &stored));
        let mut b = Box::pin(password_matches(2, "no", &stored));
        let (mut got_a, mut got_b) = (None, None);
        tidepool_io::block_on(std::future::poll_fn(|cx| {
            if got_a.is_none() {
                if let Poll::Ready(v) = a.as_mut().poll(cx) {
                    got_a = Some(v);
                }
            }
            if got_b.is_none() {
                if let Poll::Ready(v) = b.as_mut().poll(cx) {
                    got_b = Some(v);
                }
            }
            if got_a.is_none() && got_b.is_none() {
                assert_eq!(waiters(2), Some(1));
            }
            if got_a.is_some() && got_b.is_some() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }));
        assert_eq!((got_a, got_b), (Some(Ok(false)), Some(Ok(false))));
        assert_eq!(FLIGHTS.with(|f| f.borrow().len()), 0);
    }
}
