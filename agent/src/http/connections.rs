//! The open connections: how many there are, which are answering a request,
//! which has been idle longest. Enforces `--web.max-connections`.
//!
//! At the limit, a new connection takes the place of the one idle longest
//! (no request in progress: a keep-alive connection between requests, or one
//! that has not finished sending its headers). Holding new clients in the
//! listen backlog instead, as Go's `netutil.LimitListener` does, would let
//! idle connections starve /metrics until they time out; closing new ones
//! would do the same. When every connection is busy, new clients wait in
//! the backlog: busy connections end within a request's time, since profile
//! requests beyond a short queue are refused at once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often, at most, the limit is logged while it keeps being hit.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The connection table.
#[derive(Debug)]
pub struct Connections {
    max: usize,
    table: Mutex<Table>,
    /// Woken when a connection closes or finishes a request.
    room: Notify,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Entry>,
    /// Connections told to close that have not closed yet.
    closing: usize,
    /// Connections closed to make room since the limit was last logged.
    evicted: u64,
    last_logged: Option<Instant>,
}

#[derive(Debug)]
struct Entry {
    /// Requests being answered.
    busy: u32,
    /// Whether any request was ever received.
    served: bool,
    /// When the last request started or ended, or the connection opened.
    active: Instant,
    /// Cancelled to make the connection close.
    close: CancellationToken,
    closing: bool,
}

/// One open connection's place in the table, freed on drop.
#[derive(Debug)]
pub struct Handle {
    connections: Arc<Connections>,
    id: u64,
}

/// A request being answered on a connection; the connection is busy (never
/// evicted) until this is dropped.
#[derive(Debug)]
pub struct Busy(Arc<Handle>);

impl Connections {
    /// A table for at most `max` connections.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            table: Mutex::new(Table::default()),
            room: Notify::new(),
        })
    }

    /// Returns once a new connection fits: at once below the limit;
    /// otherwise after telling the connection idle longest to close, or,
    /// if every connection is busy, once one is not.
    pub async fn make_room(&self) {
        let mut waited = false;
        loop {
            let room = self.room.notified();
            {
                let mut table = self.lock();
                if table.open.len() - table.closing < self.max {
                    return;
                }
                let idle_longest = table
                    .open
                    .iter_mut()
                    .filter(|(_, e)| e.busy == 0 && !e.closing)
                    .min_by_key(|(_, e)| e.active)
                    .map(|(_, e)| e);
                if let Some(entry) = idle_longest {
                    entry.closing = true;
                    entry.close.cancel();
                    table.closing += 1;
                    table.evicted += 1;
                    self.log_limit(&mut table, "closing the connection idle longest");
                    return;
                }
                if !waited {
                    self.log_limit(&mut table, "every connection is busy; new ones wait");
                    waited = true;
                }
            }
            room.await;
        }
    }

    /// Adds a connection that closes when `close` is cancelled (by
    /// [`Connections::make_room`] or by the caller, at shutdown).
    pub fn open(self: &Arc<Self>, close: CancellationToken) -> Handle {
        let mut table = self.lock();
        let id = table.next_id;
        table.next_id += 1;
        table.open.insert(
            id,
            Entry {
                busy: 0,
                served: false,
                active: Instant::now(),
                close,
                closing: false,
            },
        );
        Handle {
            connections: self.clone(),
            id,
        }
    }

    /// Connections open now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().open.len()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Logs the limit once, then at most every [`LOG_EVERY`] while it is
    /// hit: a flood of connections must not become a flood of log lines.
    fn log_limit(&self, table: &mut Table, what: &str) {
        let now = Instant::now();
        if table
            .last_logged
            .is_some_and(|at| now.duration_since(at) < LOG_EVERY)
        {
            return;
        }
        table.last_logged = Some(now);
        tracing::warn!(
            max = self.max,
            evicted = table.evicted,
            "HTTP connection limit reached (--web.max-connections): {what}"
        );
        table.evicted = 0;
    }

    fn with_entry(&self, id: u64, change: impl FnOnce(&mut Entry)) {
        if let Some(entry) = self.lock().open.get_mut(&id) {
            change(entry);
        }
    }
}

impl Handle {
    /// The token that closes this connection.
    pub fn close_token(&self) -> CancellationToken {
        let table = self.connections.lock();
        table
            .open
            .get(&self.id)
            .map_or_else(CancellationToken::new, |e| e.close.clone())
    }

    /// Marks a request in progress until the guard is dropped.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.connections.with_entry(self.id, |e| {
            e.busy += 1;
            e.served = true;
            e.active = Instant::now();
        });
        Busy(self.clone())
    }

    /// Whether no request ever arrived: such a connection can be dropped
    /// at once, with no response to lose.
    pub fn never_served(&self) -> bool {
        let table = self.connections.lock();
        table.open.get(&self.id).is_none_or(|e| !e.served)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let handle = &self.0;
        handle.connections.with_entry(handle.id, |e| {
            e.busy = e.busy.saturating_sub(1);
            e.active = Instant::now();
        });
        handle.connections.room.notify_one();
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut table = self.connections.lock();
        if table.open.remove(&self.id).is_some_and(|e| e.closing) {
            table.closing -= 1;
        }
        drop(table);
        self.connections.room.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn below_the_limit_nothing_is_closed() {
        let connections = Connections::new(2);
        let a = connections.open(CancellationToken::new());
        connections.make_room().await;
        assert!(!a.close_token().is_cancelled());
        assert_eq!(connections.len(), 1);
    }

    #[tokio::test]
    async fn at_the_limit_the_idle_longest_makes_room() {
        let connections = Connections::new(2);
        let oldest = connections.open(CancellationToken::new());
        let newer = connections.open(CancellationToken::new());
        connections.make_room().await;
        assert!(oldest.close_token().is_cancelled());
        assert!(!newer.close_token().is_cancelled());
        // A connection being closed no longer counts: the next one evicts `newer`.
        let newest = connections.open(CancellationToken::new());
        connections.make_room().await;
        assert!(newer.close_token().is_cancelled());
        assert!(!newest.close_token().is_cancelled());
    }

    #[tokio::test]
    async fn busy_connections_are_kept_and_a_new_one_waits() {
        let connections = Connections::new(1);
        let busy = Arc::new(connections.open(CancellationToken::new()));
        let request = busy.busy();
        let wait = tokio::spawn({
            let connections = connections.clone();
            async move { connections.make_room().await }
        });
        tokio::task::yield_now().await;
        assert!(!wait.is_finished());
        assert!(!busy.close_token().is_cancelled());
        // Its request done, the connection is idle and gives way.
        drop(request);
        wait.await.unwrap();
        assert!(busy.close_token().is_cancelled());
        assert!(!busy.never_served());
    }
}
