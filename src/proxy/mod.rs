//! The data plane above the worker runtime: one client connection's requests, each routed,
//! run through its route's plugin phases, forwarded and logged.

pub mod conn;
pub mod core;
pub mod shutdown;

pub use self::core::{Core, LocalRoutes};
