//! Accepting connections: HTTP/1 with a deadline for each request head (which
//! also ends idle keep-alive connections) and a cap on open connections below
//! the process's descriptor limit. At the cap a new connection takes the place
//! of the connection idle the longest (no request in progress: it waits for its
//! next request, or for the rest of a slowly sent head); when every connection
//! is busy, the new one is answered 503 and closed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

/// How long a connection may take over each part of a request, and how many
/// may be open.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// From a connection's opening, or the end of its previous response, to
    /// the end of the next request head: bounds idle keep-alive connections and
    /// heads sent a byte at a time.
    pub header_timeout: Duration,
    /// For reading a request body.
    pub body_timeout: Duration,
    /// Open connections; see [`descriptor_budget`].
    pub max_connections: usize,
}

/// What the descriptor limit leaves for connections.
#[derive(Clone, Copy, Debug)]
pub struct DescriptorBudget {
    /// RLIMIT_NOFILE's soft limit.
    pub limit: u64,
    /// Descriptors open now (model files, the runtime's own).
    pub open: usize,
    /// Connections that fit: the limit less those open and a reserve (an
    /// eighth of the limit, at least 32) for what opens later.
    pub connections: usize,
}

/// The connections the descriptor limit allows, where the limit is known.
pub fn descriptor_budget() -> Option<DescriptorBudget> {
    let (soft, _) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()?;
    let limit = soft;
    let soft = usize::try_from(soft).unwrap_or(usize::MAX).min(1 << 24);
    // (/proc/self/fd lists the descriptor reading it too: one spare.)
    let open = std::fs::read_dir("/proc/self/fd").map_or(16, |d| d.count());
    let reserve = (soft / 8).max(32);
    Some(DescriptorBudget {
        limit,
        open,
        connections: soft.saturating_sub(open + reserve),
    })
}

/// Serves `app` on `listener` until `shutdown` resolves, then asks every open
/// connection to finish its request and close, and returns once they have.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let registry = Arc::new(Registry::new(limits.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let (stop_tx, stop_rx) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some((id, activity)) = registry.open() else {
            refuse(&stream, limits.max_connections);
            continue;
        };
        tokio::spawn(serve_connection(
            stream,
            app.clone(),
            http.clone(),
            ConnectionSlot {
                registry: registry.clone(),
                id,
                activity,
            },
            stop_rx.clone(),
        ));
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(());
    // Resolves when every connection task has dropped its receiver.
    stop_tx.closed().await;
}

/// Serves one connection until it closes, is shed, or shutdown lets its last
/// request finish.
async fn serve_connection(
    stream: TcpStream,
    app: Router,
    http: http1::Builder,
    slot: ConnectionSlot,
    mut stop: watch::Receiver<()>,
) {
    let activity = slot.activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let busy = Busy::new(activity.clone());
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await?;
            Ok::<_, Infallible>(response.map(|inner| TrackedBody { inner, _busy: busy }))
        }
    });
    let connection = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            // Closed by the client, a timeout, or an error: all end it alike.
            _ = connection.as_mut() => break,
            // Idle, and its place is wanted: dropping it closes the socket.
            () = slot.activity.shed.notified() => break,
            _ = stop.changed(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Pauses after a failed accept that is not the client's doing (out of
/// descriptors or memory), so that open connections can close first.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    eprintln!("grok1: accepting a connection failed: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Answers a connection beyond the cap, when none can be shed, and drops it.
fn refuse(stream: &TcpStream, max: usize) {
    let body = format!(
        r#"{{"error":{{"message":"the server has {max} connections open, all with requests in progress; retry later","type":"server_error","param":null,"code":null}}}}"#
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // A fresh socket's send buffer takes it whole; a failure changes nothing.
    let _ = stream.try_write(response.as_bytes());
}

/// The open connections.
struct Registry {
    max: usize,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
}

/// What the accept loop knows of a connection.
struct Activity {
    /// Requests whose handler or response body is alive.
    busy: AtomicUsize,
    /// When its last request ended (or it opened).
    idle_since: Mutex<Instant>,
    /// Wakes its task to close it.
    shed: Notify,
}

impl Registry {
    fn new(max: usize) -> Self {
        Registry {
            max: max.max(1),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Registers a new connection; at the cap, first sheds the connection idle
    /// the longest. None: every connection is busy.
    fn open(&self) -> Option<(u64, Arc<Activity>)> {
        let mut open = lock(&self.open);
        if open.len() >= self.max {
            let victim = open
                .iter()
                .filter(|(_, a)| a.busy.load(Ordering::SeqCst) == 0)
                .min_by_key(|(_, a)| *lock(&a.idle_since))
                .map(|(&id, _)| id)?;
            if let Some(activity) = open.remove(&victim) {
                activity.shed.notify_one();
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity {
            busy: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            shed: Notify::new(),
        });
        open.insert(id, activity.clone());
        Some((id, activity))
    }
}

/// A lock whose holder cannot leave the data half-changed: poison is ignored.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connection's place in the registry, given up when its task ends.
struct ConnectionSlot {
    registry: Arc<Registry>,
    id: u64,
    activity: Arc<Activity>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        lock(&self.registry.open).remove(&self.id);
    }
}

/// Marks its connection busy while alive.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: Arc<Activity>) -> Self {
        activity.busy.fetch_add(1, Ordering::SeqCst);
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
            *lock(&self.0.idle_since) = Instant::now();
        }
    }
}

/// A response body that keeps its connection busy until it is sent or dropped
/// (a stream may run for minutes after its handler returned).
struct TrackedBody {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails with [`BodyTimedOut`] once its time is up.
pub(crate) struct TimedBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl TimedBody {
    pub(crate) fn new(inner: Body, timeout: Duration) -> Self {
        TimedBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        }
    }
}

/// A request body that had not arrived in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} s", .0.as_secs_f64())]
pub(crate) struct BodyTimedOut(pub Duration);

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(this.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
