//! A worker: one thread, one monoio runtime, its own listeners, caches and upstream pools.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::Cache;
use monoio::net::TcpListener;

use super::Shared;
use crate::access_log::AccessLog;
use crate::config::Config;
use crate::plugins;
use crate::proxy::shutdown::Shutdown;
use crate::proxy::{conn, Core, LocalRoutes};
use crate::upstream::pool::Pool;

/// Counts a connection as active for as long as its task lives.
struct ActiveGuard(Rc<Core>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let n = self.0.active.get() - 1;
        self.0.active.set(n);
        if let Some(m) = &self.0.metrics {
            m.active.set(n as u64);
        }
    }
}

/// The worker's whole life: serve until the process stops, then drain.
pub async fn run(
    config: Arc<Config>,
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
    tls_listeners: Vec<std::net::TcpListener>,
) {
    let metrics = shared.metrics.new_core();
    let routes = shared.routes.clone();
    let first = routes.load_full();
    let w = Rc::new(Core {
        limits: config.limits.clone(),
        trusted: config.trusted_addresses.clone(),
        routes_src: RefCell::new(Cache::new(routes)),
        local: RefCell::new(Rc::new(LocalRoutes::new(first, None))),
        pool: RefCell::new(Pool::default()),
        log: RefCell::new(AccessLog::new(config.access_log, config.access_log_format)),
        plugins: plugins::CoreState::new(
            config.per_core.token_cache_entries,
            config.per_core.token_cache_bytes,
        ),
        shutdown: Shutdown::default(),
        active: Cell::new(0),
        metrics,
    });
    if let Some(m) = &w.metrics {
        w.plugins.count_into(m);
    }
    for l in listeners {
        match TcpListener::from_std(l) {
            Ok(l) => {
                monoio::spawn(accept_loop(l, w.clone(), shared.clone()));
            }
            Err(e) => tracing::error!(error = %e, "cannot register listener with the runtime"),
        }
    }
    if let Some(tls) = &shared.tls {
        let acceptor = monoio_rustls::TlsAcceptor::from(tls.clone());
        for l in tls_listeners {
            match TcpListener::from_std(l) {
                Ok(l) => {
                    monoio::spawn(tls_accept_loop(
                        l,
                        acceptor.clone(),
                        w.clone(),
                        shared.clone(),
                    ));
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot register TLS listener with the runtime")
                }
            }
        }
    }
    // Housekeeping: notice a stop, flush the log, close expired upstream connections.
    let mut ticks = 0u32;
    while !shared.stopping.load(Ordering::Acquire) {
        monoio::time::sleep(Duration::from_millis(50)).await;
        ticks = ticks.wrapping_add(1);
        if ticks % 20 == 0 {
            w.log.borrow_mut().flush();
            w.pool.borrow_mut().sweep();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            w.plugins.sweep(now, 1024);
        }
    }
    w.shutdown.trigger();
    let deadline = Instant::now() + w.limits.shutdown_timeout;
    while w.active.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    if w.active.get() > 0 {
        tracing::warn!(
            open = w.active.get(),
            "shutdown grace period over; closing remaining connections"
        );
    }
    w.pool.borrow_mut().clear();
    w.log.borrow_mut().flush();
}

async fn accept_loop(listener: TcpListener, w: Rc<Core>, shared: Arc<Shared>) {
    accept_each(listener, w, shared, |stream, peer, w| async move {
        conn::serve(stream, peer, w).await;
    })
    .await
}

/// Accept HTTPS connections: each handshake runs in the connection's own task, under the
/// header timeout counted from accept, so a slow, garbage or aborted handshake costs that one
/// connection and nothing else.
async fn tls_accept_loop(
    listener: TcpListener,
    acceptor: monoio_rustls::TlsAcceptor,
    w: Rc<Core>,
    shared: Arc<Shared>,
) {
    accept_each(listener, w, shared, move |stream, peer, w| {
        let acceptor = acceptor.clone();
        async move {
            let _ = stream.set_nodelay(true);
            let deadline = Instant::now() + w.limits.header_read_timeout;
            let handshake = monoio::time::timeout_at(deadline.into(), acceptor.accept(stream));
            let stream = monoio::select! {
                r = handshake => r,
                _ = w.shutdown.wait() => return,
            };
            match stream {
                Ok(Ok(tls)) => conn::serve_stream(tls, true, deadline, peer, w).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    })
    .await
}

/// The accept loop both listeners share: the connection cap, the active count, the stop.
async fn accept_each<F, Fut>(listener: TcpListener, w: Rc<Core>, shared: Arc<Shared>, serve: F)
where
    F: Fn(monoio::net::TcpStream, std::net::SocketAddr, Rc<Core>) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => Some(r),
            _ = w.shutdown.wait() => None,
        };
        match accepted {
            None => break,
            Some(Ok((stream, peer))) => {
                if let Some(m) = &w.metrics {
                    m.accepted.inc();
                }
                if w.active.get() >= w.limits.max_connections {
                    drop(stream);
                    continue;
                }
                w.active.set(w.active.get() + 1);
                if let Some(m) = &w.metrics {
                    m.handled.inc();
                    m.active.set(w.active.get() as u64);
                }
                let guard = ActiveGuard(w.clone());
                let task = serve(stream, peer, guard.0.clone());
                monoio::spawn(async move {
                    task.await;
                    drop(guard);
                });
            }
            Some(Err(_)) if shared.stopping.load(Ordering::Acquire) || w.shutdown.started() => {
                break
            }
            Some(Err(e)) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
