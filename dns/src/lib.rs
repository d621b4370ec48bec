//! knode's cluster DNS as a library: the zone built from Services, their
//! endpoints and pods (`zone`), the wire handling and UDP/TCP server
//! (`server`), forwarding with a cache (`forward`) and the resolv.conf
//! files of the host and of pods (`resolvconf`). It binds nothing by
//! itself: the agent decides addresses and feeds the zone from its watches.

pub mod cache;
pub mod forward;
mod mmsg;
pub mod resolvconf;
pub mod server;
pub mod wire;
pub mod zone;

pub use forward::{ForwardConfig, Forwarder};
pub use server::{Running, Server, ServerConfig, SharedZone, Sockets};
pub use zone::{Answer, Zone, ZoneConfig, DEFAULT_TTL};

/// Errors of the DNS library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is unusable.
    #[error("dns config {field}: {problem}")]
    Config {
        /// The option at fault, as the user spells it.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// An upstream server gave no usable answer.
    #[error("forward to {upstream}: {problem}")]
    Upstream {
        /// The upstream's address.
        upstream: String,
        /// What went wrong.
        problem: String,
    },
    /// A listening socket could not be set up.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;
