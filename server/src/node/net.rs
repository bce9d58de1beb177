//! Listening sockets and address files.
//!
//! `--listen 127.0.0.1:0` binds an ephemeral port; `--address-file` receives the bound
//! `host:port` (written atomically, so a reader polling for it never sees half a line) once the
//! server accepts connections. Tests and scripts read the file instead of guessing ports.

use std::net::SocketAddr;
use std::path::Path;

use tokio::net::TcpListener;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http;
use tonic::transport::server::Router;
use tonic::transport::server::TcpIncoming;

use crate::error::{QuiverError, Result};
use crate::storage::catalog::write_atomically;
use crate::task::AbortOnDrop;

/// Binds `addr`; returns the incoming-connection stream and the bound address.
///
/// Accepted sockets get TCP_NODELAY: gRPC replies are small writes, and with Nagle's algorithm
/// each one waited for the peer's delayed ACK (~40 ms; `SELECT 1` took 88 ms). tonic's
/// `Server::tcp_nodelay` does not apply to connections a server is handed, so it is set here.
pub(crate) async fn bind(addr: SocketAddr) -> Result<(TcpIncoming, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| QuiverError::io(format!("binding {addr}"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| QuiverError::io("reading the bound address", e))?;
    Ok((TcpIncoming::from(listener).with_nodelay(Some(true)), bound))
}

pub(crate) fn write_address_file(path: &Path, addr: SocketAddr) -> Result<()> {
    write_atomically(path, format!("{addr}\n").as_bytes())
        .map_err(|e| QuiverError::io(format!("writing address file {}", path.display()), e))
}

/// Parses a `--listen` value; a bare port means loopback.
pub fn parse_listen(s: &str) -> std::result::Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .map_err(|_| format!("'{s}' is not HOST:PORT (e.g. 127.0.0.1:50051)"))
}

/// Answers a gRPC request with `status` without calling the service (for wrappers that check
/// requests before a service sees them).
pub(crate) fn refuse<E: 'static>(
    status: Status,
) -> futures::future::BoxFuture<'static, std::result::Result<http::Response<Body>, E>> {
    Box::pin(async move { Ok(status.into_http()) })
}

/// Calls `inner`, which the wrapper's `poll_ready` readied: the readied instance takes the
/// request and a clone stays for the next one (tower's rule for services that are cloned).
pub(crate) fn call_readied<S: Service<R> + Clone, R>(inner: &mut S, request: R) -> S::Future {
    let clone = inner.clone();
    std::mem::replace(inner, clone).call(request)
}

/// A gRPC server running on its own task. Dropping the handle stops the server.
///
/// The server runs with a shutdown signal, which is what makes tonic watch every connection it
/// accepts: when the aborted server future drops that watch, the listener closes at once and
/// each open connection finishes its in-flight calls gracefully (the same as sending the
/// signal). Without a signal, connections would outlive the server. [`ServerHandle::shutdown`]
/// sends it and waits for the in-flight calls.
#[derive(Debug)]
pub(crate) struct ServerHandle {
    name: &'static str,
    task: AbortOnDrop<std::result::Result<(), tonic::transport::Error>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ServerHandle {
    pub(crate) fn spawn(name: &'static str, router: Router, incoming: TcpIncoming) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = AbortOnDrop::spawn_named(
            "a gRPC server",
            router.serve_with_incoming_shutdown(incoming, async move {
                // Only a sent signal stops it; a dropped sender means the task is aborted anyway.
                if stopped.await.is_err() {
                    std::future::pending::<()>().await;
                }
            }),
        );
        Self {
            name,
            task,
            stop: Some(stop),
        }
    }

    /// Runs until the server stops on its own (an error). Cancel-safe: a caller may stop
    /// waiting and shut the server down instead.
    pub(crate) async fn wait(&mut self) -> Result<()> {
        (&mut self.task)
            .await?
            .map_err(|e| QuiverError::Internal(format!("{} server: {e}", self.name)))
    }

    /// Stops accepting connections and waits up to `limit` for the calls in flight to end.
    pub(crate) async fn shutdown(mut self, limit: std::time::Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(limit, &mut self.task).await.is_err() {
            tracing::warn!(server = self.name, "calls still in flight at shutdown: cut");
        }
    }
}
