//! Accepting and serving connections with bounded resources: a connection
//! limit (see `connections.rs`), deadlines for the TLS handshake and for
//! request headers, and a shutdown that waits for in-flight requests only
//! briefly.
//!
//! axum::serve has no header timeout and no connection limit, so this
//! drives hyper's HTTP/1 connections itself, as axum::serve does inside.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{Router, extract::Request};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower_service::Service as _;

use super::connections::{Connections, Handle};

/// How long a client has to send a request's headers, counted from the
/// connection's start or the end of its previous response. Closes
/// slowloris clients (headers a byte at a time) and keep-alive connections
/// left idle; Prometheus sends its request at once and reconnects when
/// its next scrape finds the connection closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client has to finish the TLS handshake, counted from the
/// connection's start: the same 10 s, so that a client that connects and
/// says nothing is closed as soon over TLS as without it. (The header
/// timeout starts after the handshake.)
pub const HANDSHAKE_TIMEOUT: Duration = HEADER_TIMEOUT;

/// How long a connection told to make room may take to finish a response
/// it is writing.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How long shutdown waits for in-flight requests (a scrape takes
/// milliseconds; profile captures are cancelled by the same signal).
const DRAIN: Duration = Duration::from_millis(1500);

/// How often, at most, failing accepts are logged.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Serves `app` on `listener` (over TLS if `tls` is given), at most
/// `max_connections` at once, until `shutdown` is cancelled; then closes
/// idle connections, lets in-flight requests finish for up to [`DRAIN`],
/// and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    max_connections: usize,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let handshake_failures = Arc::new(HandshakeFailures::default());
    let connections = Connections::new(max_connections);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let mut tasks = JoinSet::new();
    let mut accept_failures = AcceptFailures::default();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_failures.wait(err).await;
                    continue;
                }
            },
        };
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = connections.make_room() => {}
        }
        let handle = Arc::new(connections.open(shutdown.child_token()));
        let (app, http) = (app.clone(), http.clone());
        match &tls {
            None => tasks.spawn(connection(stream, handle, app, http)),
            Some(tls) => tasks.spawn(tls_connection(
                stream,
                peer,
                tls.clone(),
                handle,
                app,
                http,
                handshake_failures.clone(),
            )),
        };
        // Reap finished tasks so the set stays as small as the table.
        while tasks.try_join_next().is_some() {}
    }
    // New clients are refused from here on.
    drop(listener);
    let drained =
        tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "closing connections whose requests did not finish within {DRAIN:?} of shutdown"
        );
    }
    tasks.shutdown().await;
    Ok(())
}

/// Completes the TLS handshake within [`HANDSHAKE_TIMEOUT`] (or until the
/// handle's token says close: the connection has not been served), then
/// serves the connection as [`connection`] does.
async fn tls_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: TlsAcceptor,
    handle: Arc<Handle>,
    app: Router,
    http: http1::Builder,
    failures: Arc<HandshakeFailures>,
) {
    let close = handle.close_token();
    let handshake = tokio::select! {
        handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)) => handshake,
        () = close.cancelled() => return,
    };
    match handshake {
        Ok(Ok(stream)) => connection(stream, handle, app, http).await,
        Ok(Err(err)) => failures.log(peer, &err.to_string()),
        Err(_) => failures.log(peer, &format!("not finished within {HANDSHAKE_TIMEOUT:?}")),
    }
}

/// Serves one connection until the client closes it, the header timeout
/// fires, or its handle's token says close: then a connection that never
/// received a request is dropped at once, and any other finishes the
/// response it is writing (for up to [`CLOSE_GRACE`]) and closes.
async fn connection<S>(stream: S, handle: Arc<Handle>, app: Router, http: http1::Builder)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let close = handle.close_token();
    let service = {
        let handle = handle.clone();
        service_fn(move |request: Request<Incoming>| {
            let busy = handle.busy();
            let response = app.clone().call(request);
            async move {
                let response = response.await;
                drop(busy);
                Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
            }
        })
    };
    let conn = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                // Timeouts and clients that vanish: routine, one per connection.
                tracing::debug!("connection closed: {err}");
            }
            return;
        }
        () = close.cancelled() => {}
    }
    if handle.never_served() {
        return;
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
}

/// Failed TLS handshakes: a scraper with the wrong CA or no client
/// certificate, or a port scanner. One is logged at info a minute, so that
/// a misconfigured scraper shows in the default log without letting
/// clients flood it; the rest at debug.
#[derive(Default)]
struct HandshakeFailures {
    last_logged: Mutex<Option<Instant>>,
}

impl HandshakeFailures {
    fn log(&self, peer: SocketAddr, why: &str) {
        let now = Instant::now();
        let mut last = self
            .last_logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|at| now.duration_since(at) >= LOG_EVERY) {
            *last = Some(now);
            tracing::info!(
                %peer,
                "TLS handshake failed: {why} (more failures within a minute are logged at debug)"
            );
        } else {
            tracing::debug!(%peer, "TLS handshake failed: {why}");
        }
    }
}

/// Failed accepts: out of file descriptors, most likely. Logged once a
/// minute at most; the pending clients wait in the backlog meanwhile.
#[derive(Default)]
struct AcceptFailures {
    last_logged: Option<Instant>,
}

impl AcceptFailures {
    async fn wait(&mut self, err: io::Error) {
        // A client that gave up before being accepted: nothing to do.
        if matches!(
            err.kind(),
            io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
        ) {
            return;
        }
        let now = Instant::now();
        if self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
        {
            self.last_logged = Some(now);
            tracing::warn!(
                "cannot accept HTTP connections ({err}); retrying. If the open-file \
                 limit is reached, raise it (LimitNOFILE=) or lower --web.max-connections"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
