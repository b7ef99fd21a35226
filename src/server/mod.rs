//! The data plane: worker threads, each with its own runtime and listeners.

pub mod listener;
pub mod worker;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;

use crate::config::{Config, DriverChoice, UringFlags};
use crate::metrics::Registry;
use crate::router::RouteTable;

/// State every core reads: immutable snapshots and the stop flag.
pub struct Shared {
    /// The route table, swapped whole on change.
    pub routes: Arc<ArcSwap<RouteTable>>,
    /// Set once when the process begins a graceful stop.
    pub stopping: AtomicBool,
    /// The certificates TLS handshakes choose from; the control plane publishes new ones.
    pub certs: Arc<crate::tls::Certs>,
    /// The server config of every TLS listener (one, so that ticket keys are shared by the
    /// cores); `None` without `tls.listen`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Every worker's metrics block.
    pub metrics: Arc<Registry>,
}

/// The I/O driver workers actually run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// io_uring.
    IoUring,
    /// epoll.
    Epoll,
}

/// Decide the driver from the config and what the kernel allows.
pub fn choose_driver(choice: DriverChoice) -> Result<Driver, String> {
    let uring = monoio::utils::detect_uring();
    match choice {
        DriverChoice::Epoll => Ok(Driver::Epoll),
        DriverChoice::IoUring if uring => Ok(Driver::IoUring),
        DriverChoice::IoUring => {
            Err("runtime.driver is io_uring, but this kernel does not allow io_uring".into())
        }
        DriverChoice::Auto => Ok(if uring {
            Driver::IoUring
        } else {
            Driver::Epoll
        }),
    }
}

/// The running workers and what is needed to stop them.
pub struct Workers {
    handles: Vec<JoinHandle<()>>,
    /// Duplicates of every listening socket, to stop accepting from outside the workers.
    listener_fds: Vec<OwnedFd>,
    shared: Arc<Shared>,
}

impl Workers {
    /// Stop accepting at once, let workers finish in-flight requests, and wait for them.
    pub fn stop(self) {
        // The flag first, so that workers read the failing accepts below as the stop they are.
        self.shared.stopping.store(true, Ordering::Release);
        // shutdown(2) on a listening socket makes the kernel refuse new connections right away,
        // before any worker has noticed the stop flag. (These are our own duplicates, valid
        // whatever the workers do with theirs.)
        for fd in &self.listener_fds {
            // SAFETY: the descriptor is a valid duplicate we own.
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
        for h in self.handles {
            let _ = h.join();
        }
    }
}

/// Start `config.workers` worker threads on the given listeners (`tls_listeners`: the HTTPS
/// ones, per worker like `listeners`).
pub fn start_workers(
    config: Arc<Config>,
    shared: Arc<Shared>,
    listeners: Vec<Vec<std::net::TcpListener>>,
    tls_listeners: Vec<Vec<std::net::TcpListener>>,
    driver: Driver,
) -> io::Result<Workers> {
    let mut listener_fds = Vec::new();
    for l in listeners.iter().chain(&tls_listeners).flatten() {
        // SAFETY: dup of a valid descriptor; the result is owned by the OwnedFd.
        let fd = unsafe { libc::dup(l.as_raw_fd()) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        listener_fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut handles = Vec::new();
    let mut tls_listeners = tls_listeners.into_iter();
    for (i, ls) in listeners.into_iter().enumerate() {
        let tls_ls = tls_listeners.next().unwrap_or_default();
        let config = config.clone();
        let shared = shared.clone();
        let h = std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || {
                if config.cpu_affinity {
                    if let Err(e) = monoio::utils::bind_to_cpu_set([i % cores]) {
                        tracing::warn!(worker = i, error = %e, "cannot pin worker to its core");
                    }
                }
                run_runtime(i, driver, &config, || {
                    worker::run(config.clone(), shared, ls, tls_ls)
                });
            })?;
        handles.push(h);
    }
    Ok(Workers {
        handles,
        listener_fds,
        shared,
    })
}

fn run_runtime<F, Fut>(worker: usize, driver: Driver, config: &Config, make: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if driver == Driver::IoUring {
        let mut ring = io_uring::IoUring::builder();
        match config.runtime.uring_flags {
            UringFlags::CoopTaskrun => {
                ring.setup_coop_taskrun().setup_taskrun_flag();
            }
            UringFlags::DeferTaskrun => {
                ring.setup_single_issuer().setup_defer_taskrun();
            }
            UringFlags::None => {}
        }
        let built = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .with_entries(config.runtime.uring_entries)
            .uring_builder(ring)
            .build();
        match built {
            Ok(mut rt) => return rt.block_on(make()),
            Err(e) => {
                tracing::warn!(worker, error = %e, "io_uring runtime could not start; this worker uses epoll")
            }
        }
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut rt) => rt.block_on(make()),
        Err(e) => tracing::error!(worker, error = %e, "worker runtime could not start"),
    }
}
