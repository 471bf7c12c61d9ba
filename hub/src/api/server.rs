//! Serving the router: over TLS (tokio-rustls under hyper's HTTP/1.1 server,
//! as axum's own low-level rustls example does), or plain HTTP with
//! `axum::serve` when `hub.toml` turns TLS off.
//!
//! Each connection's TLS handshake runs in its own task with a deadline, so a
//! slow or silent client holds up nobody else's. On shutdown the listener
//! closes, open connections finish the request they are in (up to a grace
//! period), then whatever is left is dropped.

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// How long requests in flight get to finish at shutdown.
const GRACE: Duration = Duration::from_secs(10);

/// Serve `app` on `listener` until `shutdown` fires: TLS with `tls`, plain
/// HTTP with `None`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) {
    match tls {
        None => {
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }
        Some(config) => serve_tls(listener, app, config, shutdown).await,
    }
}

async fn serve_tls(
    listener: TcpListener,
    app: Router,
    config: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(config);
    let graceful = GracefulShutdown::new();
    let connections = TaskTracker::new();
    // Fired after the grace period: drops connections still open.
    let hard_stop = CancellationToken::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "API listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        let hard_stop = hard_stop.clone();
        connections.spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "API TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "API TLS handshake timed out");
                    return;
                }
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = watcher.watch(conn) => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "API connection ended with an error");
                    }
                }
                _ = hard_stop.cancelled() => {}
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?GRACE, "API connections still open after the grace period; dropping them");
    }
    hard_stop.cancel();
    connections.close();
    connections.wait().await;
}
