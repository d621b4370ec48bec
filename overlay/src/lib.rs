//! The flannel part of knode: every node leases a subnet of the cluster
//! CIDR from the control plane, and pods on different nodes reach each
//! other over a kernel VXLAN overlay, plain routes (host-gw) or a TUN
//! device and a userspace UDP path in the agent (udp). It also
//! keeps pod egress masqueraded. The pieces are pure where they can be
//! (config, subnet choice, desired kernel state, iptables payloads) and
//! the I/O sits in thin apply steps behind [`dataplane::Dataplane`].

pub mod backend;
pub mod config;
pub mod controller;
pub mod dataplane;
pub mod iface;
pub mod lease;
pub mod masq;
pub mod subnet_env;
pub mod udp;

pub use config::NetConf;
pub use controller::{Overlay, Settings, Subnets};

/// Errors of the overlay.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The network config is invalid; names the field.
    #[error("network config: {0}")]
    Config(String),
    /// The underlay interface could not be chosen.
    #[error("{0}")]
    Interface(String),
    /// No lease could be acquired or kept.
    #[error("{0}")]
    Lease(String),
    /// A peer cannot be reached with the chosen backend.
    #[error("{0}")]
    Backend(String),
    #[error(transparent)]
    ControlPlane(#[from] controlplane::Error),
    #[error(transparent)]
    Host(#[from] hostnet::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
