//! The accept loop: every connection gets a bound on how long its request headers may take
//! (also while it idles between kept-alive requests), and the number of open connections
//! is capped. axum's own `serve` sets neither, so a client that never finishes its headers
//! (slowloris) held a connection, a task and a file descriptor for ever.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::Service;

/// Limits of the accept loop, from `[server]`.
#[derive(Clone)]
pub struct ConnectionLimits {
    /// Time to send a request's headers, counted from the connection's start or from the
    /// end of the previous response.
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// https: the TLS handshake comes first, bounded by `header_read_timeout`.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Serves `router` on `listener` until `shutdown` resolves, then waits for the open
/// connections to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut make = router.into_make_service_with_connect_info::<SocketAddr>();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut logged_full = false;
    loop {
        // A connection is accepted only with a free slot: past the cap, clients wait in the
        // kernel's backlog rather than each costing a task here.
        let slot = if let Ok(p) = slots.clone().try_acquire_owned() {
            logged_full = false;
            p
        } else {
            if !logged_full {
                tracing::warn!(
                    max = limits.max_connections,
                    "the connection limit is reached; new connections wait"
                );
                logged_full = true;
            }
            tokio::select! {
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                () = &mut shutdown => break,
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(service) = make.call(peer).await;
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .keep_alive(true);
        let watcher = graceful.watcher();
        let tls = limits.tls.clone();
        let handshake = limits.header_read_timeout;
        // The handshake runs in the connection's own task: a client slow to finish it holds
        // only its own slot, never the accept loop.
        tokio::spawn(async move {
            let service = TowerToHyperService::new(service);
            let result = match tls {
                None => {
                    watcher
                        .watch(http.serve_connection(TokioIo::new(stream), service))
                        .await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            watcher
                                .watch(http.serve_connection(TokioIo::new(tls), service))
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    graceful.shutdown().await;
    Ok(())
}
