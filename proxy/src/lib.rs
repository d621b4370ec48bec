//! knode's service proxy (the kube-proxy part of the agent): the service
//! view from the control plane -> the desired ruleset in kube-proxy's
//! iptables structure (a pure function) -> one `iptables-restore --noflush`
//! per sync that rewrites only changed chains, with full resyncs, a canary,
//! UDP conntrack cleanup, metrics and health. The agent calls [`run`].

pub mod conntrack;
pub mod iptables;
pub mod metrics;
mod nfnetlink;
pub mod rules;
mod run;
pub mod sync;
pub mod view;

pub use iptables::{Backend, ExecIptables, Iptables};
pub use metrics::{Health, Metrics};
pub use rules::{ruleset, NodeConfig, Ruleset, Table};
pub use run::{run, ProxyConfig};
pub use sync::{cleanup, SyncOutcome, Syncer};
pub use view::{service_ports, Endpoint, ServicePort};

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
    /// A host setting (sysctl, namespace) could not be applied.
    #[error("{0}")]
    Host(#[from] hostnet::Error),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
