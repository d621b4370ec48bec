//! The Kubernetes API over HTTPS for kubectl and client libraries: the
//! node's certificates and admin kubeconfig ([`pki`]), TLS with client
//! certificates ([`tls`]), authentication and authorization ([`auth`]),
//! discovery, tables, selectors, patches and watch over a
//! [`controlplane::ControlPlane`], and the pod subresources that reach the
//! node (`log`; `exec` and `attach` over [`websocket`], in [`exec`];
//! `portforward` over SPDY tunnelled in WebSocket, plain [`spdy`] or
//! WebSocket channels, in [`portforward`]). Storage semantics (defaulting,
//! validation, concurrency) stay in the control plane; this crate only
//! speaks the protocol.

pub mod advertise;
pub mod apply;
pub mod auth;
pub mod authz;
pub mod bootstrap;
pub mod discovery;
pub mod exec;
pub mod exec_spdy;
pub mod fieldmanager;
pub mod logs;
pub mod nodeapi;
pub mod openapi;
pub mod pager;
pub mod patch;
pub mod pki;
pub mod portforward;
pub mod protobuf;
pub mod select;
pub mod server;
pub mod spdy;
pub mod table;
pub mod tls;
pub mod websocket;
pub mod x509;

pub use server::{serve, Settings};

/// Why the API could not be set up or served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("certificates: {0}")]
    Pki(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Config(String),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// This crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
