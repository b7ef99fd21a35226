//! Portcullis: an edge reverse proxy that authenticates traffic with OpenID Connect.
//!
//! The modules follow a request: [`server`] accepts, [`http`] parses, [`router`] routes,
//! [`proxy`] runs the route's [`plugins`] phases, [`upstream`] forwards and relays; [`config`],
//! [`control`], [`idp`] and [`status`] form the control plane. Layers import downwards only:
//! `http`, `jose`, `clock`, `error`, `metrics`, `fsutil` and `config::error` at the bottom;
//! `idp` and `upstream` above them; then `plugins`, `router`, `proxy` and `server`.

pub mod access_log;
pub mod admin;
pub mod clock;
pub mod config;
pub mod control;
pub mod error;
pub mod etcd;
pub mod fsutil;
pub mod http;
pub mod idp;
pub mod jose;
pub mod metrics;
pub mod plugins;
pub mod proxy;
pub mod router;
pub mod server;
pub mod status;
pub mod tls;
pub mod upstream;
