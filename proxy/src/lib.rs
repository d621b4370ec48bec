//! knode's service proxy (the kube-proxy part of the agent): the service
//! view from the control plane -> in nftables mode ([`nft`]) one static
//! table whose maps change by element, one netlink transaction per sync;
//! in iptables mode kube-proxy's chain structure (a pure function) -> one
//! `iptables-restore --noflush` per sync that rewrites only changed chains.
//! Both with full resyncs, a canary, UDP conntrack cleanup, metrics and
//! health. The agent calls [`run`] with the mode it chose.

pub mod conntrack;
pub mod family;
pub mod iptables;
pub mod metrics;
mod nfnetlink;
pub mod nft;
pub mod rules;
mod run;
pub mod sync;
pub mod view;

pub use iptables::{Backend, ExecIptables, Iptables};
pub use metrics::{Health, Metrics};
pub use nft::NftSyncer;
pub use rules::{ruleset, NodeConfig, Ruleset, Table};
pub use run::{run, ProxyConfig, ProxyMode};
pub use sync::{cleanup, Proxier, SyncOutcome, Syncer};
pub use view::{group, service_ports, Endpoint, ServiceKey, ServiceMap, ServicePort};

/// Errors of the proxy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An iptables tool failed or could not be run.
    #[error("{what}: {detail}")]
    Iptables { what: String, detail: String },
    /// A netfilter netlink request (conntrack, nf_tables) failed.
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        source: std::io::Error,
    },
    /// A netlink reply could not be decoded.
    #[error("{what}: decode the reply: {detail}")]
    Decode { what: String, detail: String },
    /// An nf_tables transaction or read failed (nftables mode).
    #[error("{0}")]
    Nft(#[from] hostnet::nftables::Error),
    /// A host setting (sysctl, namespace) could not be applied.
    #[error("{0}")]
    Host(#[from] hostnet::Error),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
