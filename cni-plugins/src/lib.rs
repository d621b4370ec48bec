//! knode's CNI plugins: `knode-bridge`, `knode-host-local` and
//! `knode-loopback`, each a thin binary over this library. The skel owns the
//! CNI protocol; each plugin module owns one plugin's behaviour.

pub mod bridge;
pub mod delegate;
pub mod ipam;
pub mod lockfile;
pub mod loopback;
pub mod skel;
