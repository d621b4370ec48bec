//! `knode-bridge`: the CNI bridge plugin binary.

fn main() {
    cni_plugins::skel::plugin_main(&cni_plugins::bridge::Bridge)
}
