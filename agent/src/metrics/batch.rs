//! Scrapes that wait together share one read and its encodings.
//!
//! The first scrape to arrive while no read is running starts one; scrapes
//! that arrive while it runs join the next batch, which starts as soon as
//! the running one ends and answers them all. So a scrape never gets
//! numbers read before it arrived (scrape, act, scrape shows the act), and
//! any crowd of scrapers costs at most two reads in a row, not one each.
//!
//! Reading, encoding and compressing run on a blocking thread: done on an
//! async worker, they would stall every other connection on that worker,
//! including writing out the answers of the batch before.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

/// Batches of requests of type `Q`, each answered by one `A` that
/// `produce` makes for the whole batch.
pub struct Batches<Q, A> {
    inner: Arc<Inner<Q, A>>,
}

/// What a producer is: given every request of a batch (in arrival order),
/// one answer for them all.
type Produce<Q, A> = dyn Fn(&[Q]) -> A + Send + Sync;

struct Inner<Q, A> {
    produce: Box<Produce<Q, A>>,
    state: Mutex<State<Q, A>>,
}

struct State<Q, A> {
    /// Whether a blocking task is producing batches (it keeps going while
    /// requests wait, so there is at most one).
    running: bool,
    /// The next batch: requests that arrived after the running batch
    /// started, with where to send the answer.
    waiting: Vec<(Q, oneshot::Sender<Arc<A>>)>,
}

/// The batch a request was in was never answered: its producer panicked,
/// or the runtime shut down before running it.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the read was abandoned before it finished")]
pub struct Abandoned;

impl<Q, A> std::fmt::Debug for Batches<Q, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches").finish_non_exhaustive()
    }
}

impl<Q, A> Batches<Q, A>
where
    Q: Copy + Send + 'static,
    A: Send + Sync + 'static,
{
    /// Batches answered by `produce`.
    pub fn new(produce: impl Fn(&[Q]) -> A + Send + Sync + 'static) -> Self {
        Self {
            inner: Arc::new(Inner {
                produce: Box::new(produce),
                state: Mutex::new(State {
                    running: false,
                    waiting: Vec::new(),
                }),
            }),
        }
    }

    /// The answer of the first batch to start after this call. Must be
    /// called within a Tokio runtime (it may spawn the blocking task).
    pub async fn get(&self, request: Q) -> Result<Arc<A>, Abandoned> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut state = self.inner.lock();
            state.waiting.push((request, answer));
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            let worker = Worker::new(self.inner.clone());
            // Not awaited: the worker answers through the channels.
            drop(tokio::task::spawn_blocking(move || worker.run()));
        }
        answered.await.map_err(|_| Abandoned)
    }
}

impl<Q, A> Inner<Q, A> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<Q, A>> {
        // The state is consistent after every statement: nothing to repair
        // after a panic elsewhere.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The blocking task that produces batches until none waits.
struct Worker<Q, A> {
    inner: Arc<Inner<Q, A>>,
    /// The batch being produced.
    batch: Vec<(Q, oneshot::Sender<Arc<A>>)>,
    finished: bool,
}

impl<Q: Copy, A> Worker<Q, A> {
    fn new(inner: Arc<Inner<Q, A>>) -> Self {
        Self {
            inner,
            batch: Vec::new(),
            finished: false,
        }
    }

    fn run(mut self) {
        loop {
            {
                let mut state = self.inner.lock();
                if state.waiting.is_empty() {
                    state.running = false;
                    self.finished = true;
                    return;
                }
                self.batch = std::mem::take(&mut state.waiting);
            }
            let requests: Vec<Q> = self.batch.iter().map(|(request, _)| *request).collect();
            let answer = Arc::new((self.inner.produce)(&requests));
            for (_, sender) in self.batch.drain(..) {
                // A scraper that went away no longer wants it.
                let _ = sender.send(answer.clone());
            }
        }
    }
}

impl<Q, A> Drop for Worker<Q, A> {
    /// A worker that did not finish (its producer panicked, or the runtime
    /// dropped the task unrun) fails the requests still waiting, which
    /// would otherwise wait forever, and lets the next request start a
    /// new worker. Its own batch fails after that (the fields drop after
    /// this), so that a request its failure prompts finds no worker
    /// running and starts one.
    fn drop(&mut self) {
        if !self.finished {
            let stale = {
                let mut state = self.inner.lock();
                state.running = false;
                std::mem::take(&mut state.waiting)
            };
            drop(stale);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    /// A producer that records each batch and, until released, blocks in
    /// the batch whose number `hold` names, so that tests can make
    /// requests arrive while a read runs.
    struct Recorder {
        batches: Mutex<Vec<Vec<u32>>>,
        hold: usize,
        entered: std::sync::mpsc::SyncSender<()>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    /// Batches over a [`Recorder`] holding batch `hold` (0: the first),
    /// with a sender that releases it and a receiver told when it starts.
    #[allow(clippy::type_complexity)]
    fn recorded(
        hold: usize,
    ) -> (
        Batches<u32, (usize, Vec<u32>)>,
        Arc<Recorder>,
        std::sync::mpsc::Sender<()>,
        std::sync::mpsc::Receiver<()>,
    ) {
        let (release_tx, release_rx) = std::sync::mpsc::channel();
        let (entered_tx, entered_rx) = std::sync::mpsc::sync_channel(8);
        let recorder = Arc::new(Recorder {
            batches: Mutex::new(Vec::new()),
            hold,
            entered: entered_tx,
            release: Mutex::new(release_rx),
        });
        let shared = recorder.clone();
        let batches = Batches::new(move |requests: &[u32]| {
            let number = {
                let mut batches = shared.batches.lock().unwrap();
                batches.push(requests.to_vec());
                batches.len() - 1
            };
            if number == shared.hold {
                shared.entered.send(()).unwrap();
                shared.release.lock().unwrap().recv().unwrap();
            }
            (number, requests.to_vec())
        });
        (batches, recorder, release_tx, entered_rx)
    }

    /// Waits on a blocking thread for the producer to enter the held batch.
    async fn entered(rx: std::sync::mpsc::Receiver<()>) {
        tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .expect("the held batch started");
    }

    /// One request alone is answered by a batch of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_request_gets_its_own_batch() {
        let (batches, recorder, _release, _entered) = recorded(usize::MAX);
        assert_eq!(*batches.get(7).await.unwrap(), (0, vec![7]));
        assert_eq!(*batches.get(8).await.unwrap(), (1, vec![8]));
        assert_eq!(recorder.batches.lock().unwrap().len(), 2);
    }

    /// Requests that arrive while a batch runs are not answered by it
    /// (it read before they arrived) but all share the next one: two
    /// reads for any number of requests.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_during_a_read_share_the_next_one() {
        let (batches, recorder, release, entered_rx) = recorded(0);
        let batches = Arc::new(batches);
        let first = tokio::spawn({
            let batches = batches.clone();
            async move { batches.get(1).await }
        });
        entered(entered_rx).await;
        let later: Vec<_> = (2..=20)
            .map(|n| {
                let batches = batches.clone();
                tokio::spawn(async move { batches.get(n).await })
            })
            .collect();
        while batches.inner.lock().waiting.len() < later.len() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        release.send(()).unwrap();
        assert_eq!(*first.await.unwrap().unwrap(), (0, vec![1]));
        for (n, task) in (2..=20).zip(later) {
            let (number, requests) = &*task.await.unwrap().unwrap();
            assert_eq!(*number, 1, "request {n}");
            assert_eq!(requests.len(), 19, "every later request in one batch");
            assert!(requests.contains(&n));
        }
        assert_eq!(recorder.batches.lock().unwrap().len(), 2);
    }

    /// A producer that panics fails its batch's requests, and the next
    /// request gets a batch of its own rather than waiting forever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_producer_fails_its_batch_and_the_next_one_runs() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let batches = Batches::new(move |requests: &[u32]| {
            if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("the first read fails");
            }
            requests.to_vec()
        });
        assert!(batches.get(1).await.is_err());
        let answer = tokio::time::timeout(Duration::from_secs(10), batches.get(2))
            .await
            .expect("not stuck");
        assert_eq!(*answer.unwrap(), vec![2]);
    }
}
