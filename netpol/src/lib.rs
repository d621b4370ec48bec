//! knode's NetworkPolicy enforcement (`networking.k8s.io/v1`), for the
//! pods of one node, in its own nftables tables `ip knode-policy` and,
//! on a dual-stack node, `ip6 knode-policy` (one engine each):
//! [`compile`] reads a policy, [`ruleset`] turns it into chains and sets
//! that depend on its spec only, [`engine`] tracks which pod IPs belong
//! in which set and sends element changes, and [`run`] follows the
//! control plane. A pod's address is dropped until the engine programmed
//! it ([`Gate`]), so a new pod is isolated from its first packet.
//! It does not touch other tables, and does not decide what a pod is:
//! the kubelet tells it through the gate, the control plane through watches.

pub mod compile;
pub mod engine;
pub mod metrics;
pub mod pods;
pub mod ruleset;
mod run;

pub use engine::{cleanup, Engine, SyncOutcome};
pub use metrics::Metrics;
pub use ruleset::{IpFamily, NodeConfig};
pub use run::{run, Config, Gate, Shared};

/// Errors of the policy engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An nf_tables request failed.
    #[error(transparent)]
    Nft(#[from] hostnet::nftables::Error),
    /// The engine is not ready (its first lists are not in yet).
    #[error("network policy: {0}")]
    NotReady(String),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests;
