//! knode's cluster DNS as a library: the zone built from Services, their
//! endpoints and pods (`zone`), the wire handling and UDP/TCP server
//! (`server`), forwarding with a cache (`forward`) and the resolv.conf
//! files of the host and of pods (`resolvconf`). It binds nothing by
//! itself: the agent decides addresses and feeds the zone from its watches.

pub mod wire;
pub mod zone;

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
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;
