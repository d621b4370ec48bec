//! The host's network stack behind small synchronous handles: network
//! namespaces, rtnetlink (links, addresses, routes), nf_tables over netlink,
//! iptables-restore/save and sysctl. It knows nothing of CNI or Kubernetes;
//! callers decide what to build.
//! Every call says what it did and to what when it fails.

pub mod iptables;
pub mod netlink;
pub mod netns;
pub mod nftables;
pub mod sysctl;

use std::io;

pub use netlink::{Link, Netlink, RouteEntry};
pub use netns::NetNs;

/// Errors from host networking calls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused a netlink request.
    #[error("{op}: {source}")]
    Netlink { op: String, source: io::Error },
    /// A netlink reply could not be decoded.
    #[error("{op}: decode reply: {msg}")]
    Decode { op: String, msg: String },
    /// A file or syscall operation failed.
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    /// An external command (iptables-restore, ...) failed.
    #[error("{cmd} exited with {status}: {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
}

impl Error {
    /// The errno behind the error, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { source, .. } | Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True when the object asked for does not exist (ENODEV, ENOENT, ESRCH, EADDRNOTAVAIL).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::EADDRNOTAVAIL)
        )
    }

    /// True when the object being created already exists.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
