//! Fuzzes everything a CNI plugin parses before it acts: the environment
//! (CNI_* variables) and the network config on stdin, for the bridge and
//! host-local configs. Any panic is a bug; errors are the expected outcome.
#![no_main]

use cni_plugins::skel::CmdArgs;
use libfuzzer_sys::fuzz_target;

const VARS: [&str; 6] = ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"];

fuzz_target!(|data: &[u8]| {
    // Fields separated by NUL: the six variables, then stdin.
    let mut parts = data.splitn(VARS.len() + 1, |b| *b == 0);
    let vals: Vec<Option<String>> =
        (0..VARS.len()).map(|_| parts.next().map(|p| String::from_utf8_lossy(p).into_owned())).collect();
    let stdin = parts.next().unwrap_or_default().to_vec();
    let env = |k: &str| VARS.iter().position(|v| *v == k).and_then(|i| vals[i].clone());
    let _ = CmdArgs::from_env(env, stdin.clone());
    let _ = cni_plugins::bridge::BridgeConf::parse(&stdin);
    let _ = cni_plugins::ipam::config::IpamConfig::parse(&stdin);
    let _ = cni_plugins::skel::CniResult::from_value(serde_json::from_slice(&stdin).unwrap_or_default());
});
