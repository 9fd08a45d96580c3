//! The HTTP listener, bounded against idle and slow clients: no client can
//! hold the agent's file descriptors or lock out `/healthz` and `POST
//! /events`.
//!
//! - A request's headers must arrive within `header_read_timeout`.
//! - A connection with no request in flight is closed after `idle_timeout`.
//! - At most `max_connections` are open. At the cap, a new connection
//!   evicts the connection idle the longest; only when every connection is
//!   busy is the new one turned away.
//! - Accept errors (EMFILE, say) are logged, rate-limited, and accepting
//!   goes on after a short pause.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::logging::RateLimit;

/// Log lines about refused or failed connections, per minute.
static CONNECTION_LOGS: RateLimit = RateLimit::new(10, Duration::from_secs(60));
/// How long a closing connection may take to finish its response.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

struct Connection {
    /// Requests being answered on it.
    in_flight: usize,
    /// Since when it has had none (accept time for a silent client).
    idle_since: Instant,
    close: Arc<Notify>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Connection>,
}

type Shared = Arc<Mutex<Table>>;

fn lock(table: &Shared) -> std::sync::MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves `app` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let table: Shared = Arc::default();
    let reaper = tokio::spawn(reap_idle(table.clone(), limits.idle_timeout));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if let Some(held_back) = CONNECTION_LOGS.allow() {
                    warn!(error = %e, held_back, "cannot accept an HTTP connection");
                }
                // EMFILE and the like persist for a moment: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some((id, close)) = admit(&table, limits.max_connections) else {
            if let Some(held_back) = CONNECTION_LOGS.allow() {
                warn!(%peer, held_back, max = limits.max_connections, "every HTTP connection is busy; refused a new one");
            }
            continue;
        };
        tokio::spawn(connection(
            stream,
            peer,
            app.clone(),
            limits,
            table.clone(),
            id,
            close,
        ));
    }
    reaper.abort();
    // Close every idle connection now; busy ones finish their response.
    for c in lock(&table).open.values() {
        c.close.notify_one();
    }
}

/// Registers a new connection, evicting the longest-idle one at the cap.
fn admit(table: &Shared, max: usize) -> Option<(u64, Arc<Notify>)> {
    let mut t = lock(table);
    if t.open.len() >= max {
        let victim = t
            .open
            .iter()
            .filter(|(_, c)| c.in_flight == 0)
            .min_by_key(|(_, c)| c.idle_since)
            .map(|(id, _)| *id)?;
        if let Some(c) = t.open.remove(&victim) {
            c.close.notify_one();
        }
        debug!("connection cap reached; closed the longest-idle connection");
    }
    let id = t.next_id;
    t.next_id += 1;
    let close = Arc::new(Notify::new());
    t.open.insert(
        id,
        Connection {
            in_flight: 0,
            idle_since: Instant::now(),
            close: close.clone(),
        },
    );
    Some((id, close))
}

/// Closes connections idle for longer than `idle`.
async fn reap_idle(table: Shared, idle: Duration) {
    let mut every = tokio::time::interval(Duration::from_secs(1).min(idle));
    loop {
        every.tick().await;
        let mut t = lock(&table);
        let expired: Vec<u64> = t
            .open
            .iter()
            .filter(|(_, c)| c.in_flight == 0 && c.idle_since.elapsed() >= idle)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(c) = t.open.remove(&id) {
                c.close.notify_one();
            }
        }
    }
}

/// Marks a connection busy while a request is answered.
struct Busy {
    table: Shared,
    id: u64,
}

impl Busy {
    fn new(table: &Shared, id: u64) -> Busy {
        if let Some(c) = lock(table).open.get_mut(&id) {
            c.in_flight += 1;
        }
        Busy {
            table: table.clone(),
            id,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(c) = lock(&self.table).open.get_mut(&self.id) {
            c.in_flight = c.in_flight.saturating_sub(1);
            c.idle_since = Instant::now();
        }
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    table: Shared,
    id: u64,
    close: Arc<Notify>,
) {
    let _ = stream.set_nodelay(true);
    let service_table = table.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let busy = Busy::new(&service_table, id);
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await;
            drop(busy);
            response
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let finished = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = close.notified() => None,
    };
    let result = match finished {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(DRAIN, conn).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
    lock(&table).open.remove(&id);
}

/// Raises the soft limit on open files to the hard limit: systemd's default
/// soft limit (1024) is far below what a busy listener needs.
pub fn raise_fd_limit() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        let before = limit.rlim_cur;
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return None;
            }
        }
        // rlim_t is u64 on Linux but narrower elsewhere.
        #[allow(clippy::unnecessary_cast)]
        Some((before as u64, limit.rlim_cur as u64))
    }
}
