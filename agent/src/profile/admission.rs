//! Which profile requests may wait for the sampler, and when they all stop.
//!
//! One capture runs at a time; at most `max_queue` more wait behind it.
//! A request beyond that is refused at once with an estimate of when to
//! retry, rather than holding a connection for minutes. At shutdown every
//! waiting and running capture ends at once.

use std::{
    future::Future,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::ProfileError;

/// Requests that may wait behind the running capture unless told otherwise.
pub const DEFAULT_MAX_QUEUE: usize = 4;

/// Admission to the sampler and the signal that ends every capture.
#[derive(Debug)]
pub struct Admission {
    /// One permit for the running capture and one per place in the queue.
    places: Semaphore,
    max_queue: usize,
    /// When the running capture stops sampling, if one is sampling.
    sampling_until: Mutex<Option<Instant>>,
    shutdown: CancellationToken,
}

/// Marks a capture as sampling until it is dropped.
pub struct SamplingUntil<'a>(&'a Admission);

impl Admission {
    /// Lets `max_queue` requests wait behind the running one.
    pub fn new(max_queue: usize) -> Self {
        // Semaphore::new panics above MAX_PERMITS; no queue is that long.
        let places = max_queue.saturating_add(1).min(Semaphore::MAX_PERMITS);
        Self {
            places: Semaphore::new(places),
            max_queue: places - 1,
            sampling_until: Mutex::new(None),
            shutdown: CancellationToken::new(),
        }
    }

    /// A place in the queue (or the sampler itself), held until the
    /// capture ends; [`ProfileError::Busy`] if there is none.
    pub fn admit(&self) -> Result<SemaphorePermit<'_>, ProfileError> {
        if self.shutdown.is_cancelled() {
            return Err(ProfileError::ShuttingDown);
        }
        self.places.try_acquire().map_err(|_| ProfileError::Busy {
            waiting: self.max_queue,
            retry_after: self.retry_after(),
        })
    }

    /// Runs `work` unless shutdown comes first.
    pub async fn unless_shutdown<F: Future>(&self, work: F) -> Result<F::Output, ProfileError> {
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => Err(ProfileError::ShuttingDown),
            output = work => Ok(output),
        }
    }

    /// Records that the running capture samples until `deadline`.
    pub fn sampling(&self, deadline: Instant) -> SamplingUntil<'_> {
        *self.lock() = Some(deadline);
        SamplingUntil(self)
    }

    /// Ends every capture, running or waiting, and refuses new ones.
    pub fn shut_down(&self) {
        self.shutdown.cancel();
    }

    /// Whole seconds until a place frees up: the running capture's
    /// remaining sampling time (at least 1 s; symbolizing takes a moment).
    fn retry_after(&self) -> u64 {
        let remaining = self.lock().map_or(Duration::ZERO, |until| {
            until.saturating_duration_since(Instant::now())
        });
        remaining.as_secs_f64().ceil().max(1.0) as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.sampling_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for SamplingUntil<'_> {
    fn drop(&mut self) {
        *self.0.lock() = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_the_queue_is_busy_with_the_remaining_time() {
        let admission = Admission::new(1);
        let _running = admission.admit().unwrap();
        let _waiting = admission.admit().unwrap();
        let _sampling = admission.sampling(Instant::now() + Duration::from_millis(2500));
        match admission.admit() {
            Err(ProfileError::Busy {
                waiting,
                retry_after,
            }) => assert_eq!((waiting, retry_after), (1, 3)),
            other => panic!("expected Busy, got {other:?}"),
        }
    }

    #[test]
    fn a_place_frees_when_its_capture_ends() {
        let admission = Admission::new(0);
        let running = admission.admit().unwrap();
        assert!(admission.admit().is_err());
        drop(running);
        assert!(admission.admit().is_ok());
    }

    #[tokio::test]
    async fn shutdown_ends_waiting_and_refuses_new() {
        let admission = Admission::new(4);
        admission.shut_down();
        let waited = admission
            .unless_shutdown(std::future::pending::<()>())
            .await;
        assert!(matches!(waited, Err(ProfileError::ShuttingDown)));
        assert!(matches!(admission.admit(), Err(ProfileError::ShuttingDown)));
    }
}
