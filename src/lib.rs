//! Portcullis: an edge reverse proxy that authenticates traffic with OpenID Connect.
//!
//! The modules follow a request: [`server`] accepts and parses, [`router`] routes,
//! [`upstream`] forwards and relays; [`config`] and [`control`] form the control plane.

pub mod access_log;
pub mod config;
pub mod control;
pub mod error;
pub mod http;
pub mod idp;
pub mod oidc;
pub mod plugins;
pub mod proxy;
pub mod router;
pub mod server;
pub mod upstream;
