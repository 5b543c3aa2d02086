//! The HTTP surface. The only module that knows HTTP: routes and handlers
//! here, connections in `server.rs` and `connections.rs`, what
//! `--web.config.file` asks for in `web_config.rs` (TLS in `server.rs`,
//! basic auth in `auth.rs`).

mod auth;
mod connections;
mod server;
mod web_config;

use std::{collections::HashMap, io, sync::Arc};

use axum::{
    Router,
    extract::{Query, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::auth::{BasicAuth, Verdict};
pub use self::web_config::{WebConfig, WebConfigError};
use crate::{
    metrics::{Format, Metrics},
    profile::{self, Profile, ProfileError, Profiler},
};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The registry served at /metrics.
    pub metrics: Arc<Metrics>,
    /// The CPU profiler, or why there is none; `None` with
    /// `--web.disable-profiling`, which leaves the profile routes out.
    pub profiler: Option<Result<Arc<Profiler>, Arc<str>>>,
}

/// The routes besides the metrics', which `--web.telemetry-path` may not take.
pub const OTHER_ROUTES: [&str; 5] = [
    "/",
    "/healthz",
    "/flamegraph.svg",
    "/stacks",
    "/debug/pprof/profile",
];

/// The one route that needs no credentials: liveness checks (a kubelet's,
/// say) cannot send them.
const HEALTHZ: &str = "/healthz";

/// The index page's line for /healthz.
const INDEX_HEALTHZ: &str =
    "/healthz                           liveness: 200 while the daemon serves\n";

/// The index page's lines for the profile routes.
const INDEX_PROFILES: &str = "\
    /flamegraph.svg?seconds=N[&pid=P]  CPU flame graph (SVG)\n\
    /stacks?seconds=N[&pid=P]          CPU profile as folded stacks\n\
    /debug/pprof/profile?seconds=N[&pid=P]  CPU profile as gzipped pprof\n\
    \n\
    Profiles also take frequency=HZ, cgroup=/PATH (that cgroup v2 and below)\n\
    and group_by=cgroup (the cgroup path as the root frame).\n\
    kind=offcpu: where threads block instead, weighted by time blocked\n\
    (folded and SVG in microseconds), min_block_us=N (default 1000).\n";

/// Serves the metrics at `telemetry_path` (none of [`OTHER_ROUTES`]), and
/// the profiles unless `state` has no profiler, as `web` says (TLS, basic
/// auth, headers), at most `max_connections` at once, until `shutdown` is
/// cancelled, then gives in-flight requests a moment to finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    web: WebConfig,
    telemetry_path: &str,
    max_connections: usize,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let profiles = match state.profiler {
        Some(_) => INDEX_PROFILES,
        None => "",
    };
    let index = format!(
        "hostscope\n\n{telemetry_path:<34} Prometheus metrics (text 0.0.4; OpenMetrics, protobuf if asked)\n{INDEX_HEALTHZ}{profiles}"
    );
    let mut app = Router::new()
        .route("/", get(move || async move { index }))
        .route(telemetry_path, get(scrape))
        .route(HEALTHZ, get(|| async { "ok\n" }));
    if state.profiler.is_some() {
        app = app
            .route("/flamegraph.svg", get(flamegraph))
            .route("/stacks", get(stacks))
            .route("/debug/pprof/profile", get(pprof));
    }
    let app = guard(
        app.with_state(state),
        BasicAuth::new(web.users),
        web.headers,
    );
    let tls = web.tls.map(tokio_rustls::TlsAcceptor::from);
    server::serve(listener, app, tls, max_connections, shutdown).await
}

/// What every request passes through when `--web.config.file` asks for
/// basic auth or headers.
#[derive(Debug)]
struct Guard {
    auth: Option<BasicAuth>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// `app` with basic auth on every route but [`HEALTHZ`] (unknown paths
/// too: a client without credentials learns nothing of the routes), and
/// `headers` on every response.
fn guard(app: Router, auth: Option<BasicAuth>, headers: Vec<(HeaderName, HeaderValue)>) -> Router {
    if auth.is_none() && headers.is_empty() {
        return app;
    }
    app.layer(middleware::from_fn_with_state(
        Arc::new(Guard { auth, headers }),
        check,
    ))
}

async fn check(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let verdict = match &guard.auth {
        Some(auth) if request.uri().path() != HEALTHZ => {
            auth.check(request.headers().get(header::AUTHORIZATION))
                .await
        }
        _ => Verdict::Allowed,
    };
    let mut response = match verdict {
        Verdict::Allowed => next.run(request).await,
        Verdict::Denied => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic")],
            "Unauthorized\n",
        )
            .into_response(),
        Verdict::Busy => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            "too many password checks at once; try again\n",
        )
            .into_response(),
    };
    for (name, value) in &guard.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

async fn scrape(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let values = |name| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
    };
    let gzip = values(header::ACCEPT_ENCODING)
        .split(',')
        .any(|coding| coding.trim().split(';').next() == Some("gzip"));
    let format = Format::negotiate(&values(header::ACCEPT));
    // Caches must not hand one scraper's format or encoding to another.
    let vary = (header::VARY, "Accept, Accept-Encoding");
    let content_type = (header::CONTENT_TYPE, format.content_type());
    match state.metrics.scrape(format, gzip).await {
        Ok(body) if gzip => (
            [content_type, vary, (header::CONTENT_ENCODING, "gzip")],
            body,
        )
            .into_response(),
        Ok(body) => ([content_type, vary], body).into_response(),
        Err(err) => {
            tracing::error!("encoding metrics failed: {err}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
                .into_response()
        }
    }
}

type Params = Query<HashMap<String, String>>;

async fn flamegraph(State(state): State<AppState>, Query(params): Params) -> Response {
    respond(&state, &params, "image/svg+xml", profile::svg).await
}

async fn stacks(State(state): State<AppState>, Query(params): Params) -> Response {
    respond(&state, &params, "text/plain; charset=utf-8", |p| {
        Ok(profile::folded(p).into_bytes())
    })
    .await
}

async fn pprof(State(state): State<AppState>, Query(params): Params) -> Response {
    respond(&state, &params, "application/octet-stream", |p| {
        profile::pprof_gzip(p)
    })
    .await
}

/// Logs what a capture found and renders it, timing both.
fn finish(
    profile: Profile,
    render: impl FnOnce(&Profile) -> Result<Vec<u8>, ProfileError>,
) -> Result<(Vec<u8>, u64), ProfileError> {
    let started = std::time::Instant::now();
    let body = render(&profile)?;
    tracing::info!(
        kind = profile.request.kind.name(),
        stacks = profile.stacks.len(),
        dropped = profile.dropped,
        "profile: last stacks unwound in {:.1} ms, symbolized in {:.1} ms, rendered in {:.1} ms",
        profile.timings.unwinding.as_secs_f64() * 1e3,
        profile.timings.symbolizing.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3
    );
    if profile.dropped > 0 {
        tracing::warn!(
            "{} samples were lost to full profile maps or stack collisions",
            profile.dropped
        );
    }
    Ok((body, profile.dropped))
}

/// Checks the parameters, takes the profile (if the client goes away, this
/// future is dropped and the sampler detached), renders it.
async fn respond(
    state: &AppState,
    params: &HashMap<String, String>,
    content_type: &'static str,
    render: impl FnOnce(&Profile) -> Result<Vec<u8>, ProfileError> + Send + 'static,
) -> Response {
    let profiler = match &state.profiler {
        Some(Ok(profiler)) => profiler,
        Some(Err(why)) => {
            let body = format!("CPU profiling is unavailable: {why}\n");
            return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
        }
        // No route leads here; as if there were none.
        None => return StatusCode::NOT_FOUND.into_response(),
    };
    let result = match profiler
        .limits
        .request(&profile::Params::from_query(params))
    {
        Ok(request) => profiler.capture(request).await,
        Err(err) => Err(err),
    };
    // Once the capture's memory is free, it is given back to the kernel,
    // after the answer is ready, so that the client does not wait for it.
    let rendered = match result {
        // Rendering a large flame graph takes a while: not on the async
        // workers, which keep answering scrapes meanwhile. The memory is
        // given back by the same blocking task: a second task, spawned
        // when the render's result arrived, found its thread not yet back
        // in the pool and started another (idle for 10 s, a thread more
        // than before the profile).
        Ok(profile) => {
            let (answer, answered) = tokio::sync::oneshot::channel();
            drop(tokio::task::spawn_blocking(move || {
                let _ = answer.send(finish(profile, render));
                crate::heap::release_free();
            }));
            answered.await.unwrap_or_else(|_| {
                Err(ProfileError::Failed(
                    "rendering failed: the render task ended without an answer".into(),
                ))
            })
        }
        Err(err) => {
            drop(tokio::task::spawn_blocking(crate::heap::release_free));
            Err(err)
        }
    };
    match rendered {
        Ok((body, dropped)) => (
            [
                (header::CONTENT_TYPE, content_type.to_owned()),
                (
                    header::HeaderName::from_static("x-hostscope-dropped-samples"),
                    dropped.to_string(),
                ),
            ],
            body,
        )
            .into_response(),
        Err(ProfileError::BadRequest(reason)) => {
            (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response()
        }
        Err(err @ ProfileError::Busy { retry_after, .. }) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, retry_after.to_string())],
            format!("{err}\n"),
        )
            .into_response(),
        Err(err @ (ProfileError::ShuttingDown | ProfileError::Unavailable(_))) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{err}\n")).into_response()
        }
        Err(err) => {
            tracing::error!("{err}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")).into_response()
        }
    }
}
