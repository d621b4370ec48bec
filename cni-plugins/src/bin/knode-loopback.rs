//! `knode-loopback`: the CNI loopback plugin binary.

fn main() {
    cni_plugins::skel::plugin_main(&cni_plugins::loopback::Loopback)
}
