//! The control plane: signals, config reloads and upstream DNS refresh. Nothing here runs on a
//! worker; changes reach the workers as new snapshots.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{self, Config, RouteSpec};
use crate::metrics::{self, ConfigSource};
use crate::plugins::PluginEnv;
use crate::router::RouteTable;
use crate::server::Shared;

/// What the control plane keeps to rebuild the route table.
pub struct Control {
    config_path: PathBuf,
    config: Arc<Config>,
    /// The routes the table is built from, and a count of reloads (see the DNS refresher).
    routes: Mutex<(u64, Vec<RouteSpec>)>,
    shared: Arc<Shared>,
    plugins: PluginEnv,
}

/// Signals the process handles; blocked in every thread and taken by [`Control::wait_for_stop`].
fn handled_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local, zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Block the handled signals in this thread and every thread it starts afterwards.
pub fn block_signals() {
    let set = handled_signals();
    // SAFETY: valid set; a null old-set pointer is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

impl Control {
    /// The control plane for a running config.
    pub fn new(
        config_path: PathBuf,
        config: Arc<Config>,
        shared: Arc<Shared>,
        plugins: PluginEnv,
    ) -> Arc<Control> {
        Arc::new(Control {
            config_path,
            routes: Mutex::new((0, config.routes.clone())),
            config,
            shared,
            plugins,
        })
    }

    /// Block until SIGTERM or SIGINT; reload routes on SIGHUP meanwhile.
    pub fn wait_for_stop(&self) {
        let set = handled_signals();
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: valid set and out-pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            match sig {
                libc::SIGHUP => self.reload(),
                _ => {
                    tracing::info!(
                        signal = sig,
                        "stopping: no new connections, finishing in-flight requests"
                    );
                    return;
                }
            }
        }
    }

    /// Re-read the config file and swap in its routes; a bad file changes nothing.
    fn reload(&self) {
        match config::load_file(&self.config_path) {
            Err(errors) => {
                metrics::config_changed(ConfigSource::File, false);
                tracing::error!("reload refused, the running config stays:\n{errors}")
            }
            Ok(new) => {
                metrics::config_changed(ConfigSource::File, true);
                // Workers copy these at start (limits, trusted addresses, caches, pools, the
                // runtime itself), so a reload can only say so. Compared with what runs, not
                // with the previous file: a second reload still names a change not yet applied.
                for field in self.config.settings.changed(&new.settings) {
                    tracing::warn!(
                        "config reload: \"{field}\" changed but applies only at restart"
                    );
                }
                let table = RouteTable::compile(&new.routes, &self.config.per_core, &self.plugins);
                let n = table.routes.len();
                let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
                *routes = (routes.0 + 1, new.routes);
                self.shared.routes.store(Arc::new(table));
                tracing::info!(routes = n, "routes reloaded");
            }
        }
    }

    /// Re-resolve upstream host names every `interval`, publishing a new table when an address
    /// changed. Runs on its own thread: name lookups block.
    pub fn spawn_dns_refresher(self: &Arc<Self>) {
        let this = Arc::clone(self);
        let interval: Duration = self.config.dns_refresh_interval;
        let spawned = std::thread::Builder::new()
            .name("dns".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                if this
                    .shared
                    .stopping
                    .load(std::sync::atomic::Ordering::Acquire)
                {
                    return;
                }
                if !this.shared.routes.load().has_dns_names {
                    continue;
                }
                let (generation, specs) = this
                    .routes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                // Resolving blocks, so it happens unlocked; a reload meanwhile makes this table
                // stale, and publishing it would undo the reload.
                let table = RouteTable::compile(&specs, &this.config.per_core, &this.plugins);
                let routes = this.routes.lock().unwrap_or_else(|p| p.into_inner());
                if routes.0 == generation
                    && table.addresses() != this.shared.routes.load().addresses()
                {
                    tracing::info!("upstream addresses changed; new route table published");
                    this.shared.routes.store(Arc::new(table));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the DNS refresh thread; names stay as first resolved");
        }
    }
}
