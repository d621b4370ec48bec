//! knode-loopback in a namespace the test creates: ADD brings lo up, DEL
//! brings it down, and both tolerate what a runtime may throw at them.

use anyhow::Result;
use netns_tests::{our_bin, require_root, CniCall, TestNs};
use serde_json::json;

#[test]
fn loopback_up_and_down() -> Result<()> {
    if !require_root("loopback_up_and_down") {
        return Ok(());
    }
    let pod = TestNs::new("lo")?;
    pod.sh(&["ip", "link", "set", "lo", "down"])?;
    let conf = json!({ "cniVersion": "1.0.0", "name": "lo", "type": "knode-loopback" });
    let bin = our_bin("knode-loopback");

    let r = CniCall::new(&bin, "ADD", "c1", Some(pod.path()), "lo")
        .run(&conf)?
        .expect_ok("ADD")?;
    assert_eq!(r["interfaces"][0]["name"], "lo");
    assert!(r["ips"].to_string().contains("127.0.0.1/8"), "{r}");
    assert!(pod.sh(&["ip", "link", "show", "lo"])?.contains("UP"));
    assert!(pod.ping("127.0.0.1"));

    let mut check = conf.clone();
    check["prevResult"] = r.clone();
    CniCall::new(&bin, "CHECK", "c1", Some(pod.path()), "lo")
        .run(&check)?
        .expect_ok("CHECK")?;

    CniCall::new(&bin, "DEL", "c1", Some(pod.path()), "lo")
        .run(&conf)?
        .expect_ok("DEL")?;
    assert!(!pod.sh(&["ip", "link", "show", "lo"])?.contains(",UP"));
    // DEL of a namespace that no longer exists succeeds.
    CniCall::new(
        &bin,
        "DEL",
        "c1",
        Some(std::path::Path::new("/run/netns/knode-none")),
        "lo",
    )
    .run(&conf)?
    .expect_ok("DEL gone")?;
    Ok(())
}
