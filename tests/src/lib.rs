//! Harness for the end-to-end tests: real components started per test on
//! loopback, in temp dirs, stopped on drop (also when the test fails).

pub mod etcd;

pub mod agent;

pub mod containerd;

pub mod image;

pub mod registry;

pub mod node;

pub use netns_tests::{our_bin, require_root, unique, TempDir};

/// A free TCP port on 127.0.0.1 (bound then released; the caller binds it
/// again soon after, as every port picker does).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
