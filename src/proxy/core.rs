//! What one core keeps for the requests it serves: the route table as it last saw it, with its
//! own balancer state, upstream pools, access log and plugin caches. Plain cells throughout:
//! nothing here is shared with another core.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use arc_swap::{ArcSwap, Cache};

use super::shutdown::Shutdown;
use crate::access_log::AccessLog;
use crate::config::Cidr;
use crate::http::Limits;
use crate::metrics::{CoreMetrics, PatternCodes, RouteStats};
use crate::plugins;
use crate::router::RouteTable;
use crate::upstream::balancer::Wrr;
use crate::upstream::pool::Pool;

/// The route table as this core uses it, with per-core balancer state.
pub struct LocalRoutes {
    /// The shared snapshot.
    pub table: Arc<RouteTable>,
    /// Balancer state per route, this core only; routes naming one upstream object share one.
    pub balancers: Vec<Rc<RefCell<Wrr>>>,
    /// This core's metrics block per route, with the route's patterns as the block's codes,
    /// found on the route's first request.
    stats: Vec<OnceCell<(Arc<RouteStats>, PatternCodes)>>,
}

impl LocalRoutes {
    /// Per-core balancer state for `table`. A balancer whose key and nodes (addresses and
    /// weights) are as in `previous` carries over with its position, so that a change to one
    /// route does not restart every other route's rotation.
    pub fn new(table: Arc<RouteTable>, previous: Option<&LocalRoutes>) -> Self {
        type Nodes = Vec<(Option<std::net::SocketAddr>, u32)>;
        let nodes_of = |r: &crate::router::Route| -> Nodes {
            r.upstream
                .nodes
                .iter()
                .map(|n| (n.addr, n.weight))
                .collect()
        };
        let mut kept: HashMap<&str, (Nodes, Rc<RefCell<Wrr>>)> = HashMap::new();
        if let Some(prev) = previous {
            for (r, b) in prev.table.routes.iter().zip(&prev.balancers) {
                kept.entry(&r.balancer_key)
                    .or_insert_with(|| (nodes_of(r), Rc::clone(b)));
            }
        }
        let mut made: HashMap<&str, Rc<RefCell<Wrr>>> = HashMap::new();
        let balancers = table
            .routes
            .iter()
            .map(|r| {
                let key: &str = &r.balancer_key;
                if let Some(b) = made.get(key) {
                    return Rc::clone(b);
                }
                let b = match kept.get(key) {
                    Some((nodes, b)) if *nodes == nodes_of(r) => Rc::clone(b),
                    _ => Rc::new(RefCell::new(Wrr::new(r.upstream.nodes.len()))),
                };
                made.insert(key, Rc::clone(&b));
                b
            })
            .collect();
        let stats = table.routes.iter().map(|_| OnceCell::new()).collect();
        LocalRoutes {
            table,
            balancers,
            stats,
        }
    }

    /// Route `idx`'s metrics block on this core, and its patterns' codes there.
    pub fn stats(&self, idx: usize, metrics: &CoreMetrics) -> (&RouteStats, &PatternCodes) {
        let (block, codes) = self.stats[idx].get_or_init(|| {
            let route = &self.table.routes[idx];
            let block = metrics.route(&route.id);
            let codes = block.codes(&route.uris, &route.host_patterns);
            (block, codes)
        });
        (block, codes)
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
            *local = Rc::new(LocalRoutes::new(Arc::clone(current), Some(&local)));
            if let Some(m) = &self.metrics {
                let live: std::collections::HashSet<&str> =
                    current.routes.iter().map(|r| &*r.id).collect();
                m.retain_routes(|id| live.contains(id));
            }
        }
        Rc::clone(&local)
    }
}
