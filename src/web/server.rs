//! The HTTP server: the router on hyper, with the protections `axum::serve` does not give.
//!
//! - A client must send its request head within [`HEADER_READ_TIMEOUT`] of connecting or of
//!   the head's first byte (hyper's header timeout needs a timer, which `axum::serve` never
//!   installs; without it a connection that dribbles header bytes, slowloris-style, is held
//!   open forever, and hyper's timer only starts at the first byte).
//! - A connection with nothing to read for [`IDLE_TIMEOUT`] (an idle keep-alive) is closed.
//! - At most [`MAX_CONNECTIONS`] connections are open at once; beyond that, new ones wait in
//!   the kernel's accept queue until one closes, so file descriptors are never exhausted.
//! - Each request, body included, is answered within [`REQUEST_TIMEOUT`] (408 after it; a
//!   webhook's store commit waits at most the store's busy timeout, well below it).
//!
//! On shutdown the listener closes, idle connections close, and requests in progress finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_CONNECTIONS: usize = 4096;

/// The protections' settings; the service runs with [`Limits::default`] (the constants
/// above, which the README states), tests with shorter ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub header_read: Duration,
    pub request: Duration,
    pub idle: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read: HEADER_READ_TIMEOUT,
            request: REQUEST_TIMEOUT,
            idle: IDLE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then drains the connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    serve_with(listener, app, Limits::default(), shutdown).await
}

/// [`serve`] with other limits.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let app = app.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        limits.request,
    ));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    builder.http2().timer(TokioTimer::new());
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            // A silent connection: nothing within the header timeout, closed.
            // (`peek` waits for a byte; `readable` can wake without one.)
            let mut first = [0u8; 1];
            if !matches!(
                tokio::time::timeout(limits.header_read, stream.peek(&mut first)).await,
                Ok(Ok(1))
            ) {
                drop(permit);
                return;
            }
            let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
            stream.set_read_timeout(Some(limits.idle));
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(Box::pin(stream)), service)
                .into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
