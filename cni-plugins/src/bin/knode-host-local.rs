//! `knode-host-local`: the host-local IPAM plugin as a CNI binary. All logic
//! lives in `cni_plugins::ipam`; this file only hands it to the skel.

fn main() {
    cni_plugins::skel::plugin_main(&cni_plugins::ipam::HostLocal)
}
