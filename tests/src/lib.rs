//! Harness for the end-to-end tests: real components started per test on
//! loopback, in temp dirs, stopped on drop (also when the test fails).
//! The etcd and agent harnesses live in `netns-tests` (the multi-node
//! tests share them) and are re-exported here.

pub use netns_tests::{agent, etcd};

pub mod api;

pub mod containerd;

pub mod image;

pub mod registry;

pub mod node;

pub mod cluster;

pub use netns_tests::{free_port, our_bin, require_root, unique, TempDir};
