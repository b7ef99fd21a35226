//! What one core keeps for the requests it serves: the route table as it last saw it, with its
//! own balancer state, upstream pools, access log and plugin caches. Plain cells throughout:
//! nothing here is shared with another core.

use std::cell::{Cell, OnceCell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use arc_swap::{ArcSwap, Cache};

use super::shutdown::Shutdown;
use crate::access_log::AccessLog;
use crate::config::Cidr;
use crate::http::Limits;
use crate::metrics::{CoreMetrics, RouteStats};
use crate::plugins;
use crate::router::RouteTable;
use crate::upstream::balancer::Wrr;
use crate::upstream::pool::Pool;

/// The route table as this core uses it, with per-core balancer state.
pub struct LocalRoutes {
    /// The shared snapshot.
    pub table: Arc<RouteTable>,
    /// Balancer state per route, this core only.
    pub balancers: Vec<RefCell<Wrr>>,
    /// This core's metrics block per route, found on the route's first request.
    stats: Vec<OnceCell<Arc<RouteStats>>>,
}

impl LocalRoutes {
    /// Fresh per-core balancer state for `table`.
    pub fn new(table: Arc<RouteTable>) -> Self {
        let balancers = table
            .routes
            .iter()
            .map(|r| RefCell::new(Wrr::new(r.upstream.nodes.len())))
            .collect();
        let stats = table.routes.iter().map(|_| OnceCell::new()).collect();
        LocalRoutes {
            table,
            balancers,
            stats,
        }
    }

    /// Route `idx`'s metrics block on this core.
    pub fn stats(&self, idx: usize, metrics: &CoreMetrics) -> &RouteStats {
        self.stats[idx].get_or_init(|| metrics.route(&self.table.routes[idx].id))
    }
}

/// Everything one core owns that requests use; shared by its connection tasks through `Rc`.
pub struct Core {
    /// Request limits.
    pub limits: Limits,
    /// Peers whose forwarding headers are believed.
    pub trusted: Vec<Cidr>,
    /// Where the shared route table is read from.
    pub routes_src: RefCell<Cache<Arc<ArcSwap<RouteTable>>, Arc<RouteTable>>>,
    /// The table this core last built its balancers for.
    pub local: RefCell<Rc<LocalRoutes>>,
    /// Idle upstream connections.
    pub pool: RefCell<Pool>,
    /// Access log buffer.
    pub log: RefCell<AccessLog>,
    /// What the plugins keep on this core.
    pub plugins: plugins::CoreState,
    /// Draining signal.
    pub shutdown: Shutdown,
    /// Open client connections.
    pub active: Cell<usize>,
    /// What this core counts for `/metrics`; `None` when `status.metrics` is off.
    pub metrics: Option<Arc<CoreMetrics>>,
}

impl Core {
    /// The current route table; rebuilt locally only when the shared snapshot changed.
    pub fn routes(&self) -> Rc<LocalRoutes> {
        let mut src = self.routes_src.borrow_mut();
        let current = src.load();
        let mut local = self.local.borrow_mut();
        if !Arc::ptr_eq(current, &local.table) {
            *local = Rc::new(LocalRoutes::new(Arc::clone(current)));
        }
        Rc::clone(&local)
    }
}
