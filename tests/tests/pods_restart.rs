//! The agent killed with SIGKILL, in steady state and in the middle of a
//! burst of pod creations: after a restart every pod runs, adopted (same
//! container PIDs and IPs, no restart counted), with no duplicate container
//! and no leaked IP.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Result;
use knode_tests::node::Node;
use serde_json::Value;

fn node(test: &str) -> Option<Node> {
    Node::for_test(test)
}

fn pods_yaml(names: &[String]) -> String {
    names
        .iter()
        .map(|name| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: c\n    image: {}\n    command: [\"sleep\", \"3600\"]\n",
                knode_tests::image::BUSYBOX
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Task pids by container id (`ctr tasks ls`).
fn task_pids(n: &Node) -> Result<BTreeMap<String, String>> {
    n.containerd.task_pids(n.namespace())
}

/// IPs reserved by host-local.
fn reserved_ips(n: &Node) -> Result<BTreeSet<String>> {
    let mut ips = BTreeSet::new();
    if let Ok(dir) = std::fs::read_dir(n.path("ipam/knode")) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.parse::<std::net::IpAddr>().is_ok() {
                ips.insert(name);
            }
        }
    }
    Ok(ips)
}

/// Every pod Running; returns name → (podIP, restartCount).
fn all_running(n: &Node, names: &[String]) -> Result<BTreeMap<String, (String, i64)>> {
    let mut out = BTreeMap::new();
    for name in names {
        let p: Value = n.wait_running(name)?;
        let ip = p["status"]["podIP"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let restarts = p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(-1);
        out.insert(name.clone(), (ip, restarts));
    }
    Ok(out)
}

fn check_no_duplicates_or_leaks(n: &Node, pods: &BTreeMap<String, (String, i64)>) -> Result<()> {
    let containers = n.containers()?;
    assert_eq!(
        containers.len(),
        pods.len() * 2,
        "one pause and one app container per pod: {containers:?}\nagent log:\n{}",
        n.agent.log()
    );
    assert!(
        pods.values().all(|(_, restarts)| *restarts == 0),
        "no restart counted: {pods:?}"
    );
    let ips: BTreeSet<String> = pods.values().map(|(ip, _)| ip.clone()).collect();
    assert_eq!(ips.len(), pods.len(), "pod IPs are unique: {pods:?}");
    assert_eq!(
        reserved_ips(n)?,
        ips,
        "reservations are exactly the pods' IPs"
    );
    Ok(())
}

#[test]
fn kill9_in_steady_state_adopts_running_pods() -> Result<()> {
    let Some(mut n) = node("kill9_in_steady_state_adopts_running_pods") else {
        return Ok(());
    };
    let names: Vec<String> = (0..3).map(|i| format!("steady-{i}")).collect();
    n.apply(&pods_yaml(&names))?;
    let before = all_running(&n, &names)?;
    let pids = task_pids(&n)?;
    assert_eq!(pids.len(), 6);

    n.agent.restart()?;
    // Give the new agent time to adopt (and, if it were wrong, to restart
    // something).
    std::thread::sleep(Duration::from_secs(3));
    let after = all_running(&n, &names)?;
    assert_eq!(before, after, "same IPs, no restarts");
    assert_eq!(task_pids(&n)?, pids, "same containers, same PIDs");
    check_no_duplicates_or_leaks(&n, &after)?;
    Ok(())
}

#[test]
fn kill9_during_a_burst_of_creations_finishes_every_pod() -> Result<()> {
    let Some(mut n) = node("kill9_during_a_burst_of_creations_finishes_every_pod") else {
        return Ok(());
    };
    let names: Vec<String> = (0..20).map(|i| format!("burst-{i}")).collect();
    n.apply(&pods_yaml(&names))?;
    // Kill it while pods are half made: some running, not all.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let list: Value = serde_json::from_str(&n.knode(&["get", "pods", "-o", "json"])?)?;
        let running = list["items"].as_array().map_or(0, |ps| {
            ps.iter()
                .filter(|p| p["status"]["phase"] == "Running")
                .count()
        });
        if running >= 1 {
            assert!(running < names.len(), "the burst finished before the kill");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no pod started");
        std::thread::sleep(Duration::from_millis(20));
    }
    n.agent.kill9()?;
    std::thread::sleep(Duration::from_millis(200));
    n.agent.restart()?;
    let pods = all_running(&n, &names)?;
    // Let the sweep and any stray restart happen before counting.
    std::thread::sleep(Duration::from_secs(2));
    let pods_again = all_running(&n, &names)?;
    assert_eq!(pods, pods_again, "stable after the restart");
    check_no_duplicates_or_leaks(&n, &pods)?;
    Ok(())
}

/// What no pod owns is removed at startup: the agent is killed, its store
/// is lost, and the new agent (knowing no pods) removes the containers,
/// netns pins, veths and IP reservations the old one made.
#[test]
fn a_restarted_agent_removes_what_no_pod_owns() -> Result<()> {
    let Some(mut n) = node("a_restarted_agent_removes_what_no_pod_owns") else {
        return Ok(());
    };
    let names: Vec<String> = (0..3).map(|i| format!("orphan-{i}")).collect();
    n.apply(&pods_yaml(&names))?;
    all_running(&n, &names)?;
    assert_eq!(n.containers()?.len(), 6);
    n.agent.kill9()?;
    std::fs::remove_file(n.agent.data_dir().join("store.redb"))?;
    n.agent.restart()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let containers = n.containers()?;
        let pins = std::fs::read_dir(n.path("netns"))
            .map(|d| d.count())
            .unwrap_or(0);
        let veths = n.host_sh(&["ip", "-o", "link", "show", "type", "veth"])?;
        let ips = reserved_ips(&n)?;
        if containers.is_empty() && pins == 0 && veths.trim().is_empty() && ips.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left: containers {containers:?}, {pins} netns pins, veths {veths:?}, ips {ips:?}\n{}",
            knode_tests::node::tail(&n.agent.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[test]
fn sigterm_stops_the_agent_and_leaves_pods_and_the_data_plane() -> Result<()> {
    let Some(mut n) = node("sigterm_stops_the_agent_and_leaves_pods_and_the_data_plane") else {
        return Ok(());
    };
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: term-0, labels: {{app: term}}}}\nspec:\n  containers:\n  - name: c\n    image: {}\n    command: [\"sleep\", \"3600\"]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: term}}\nspec:\n  selector: {{app: term}}\n  ports: [{{port: 80}}]\n",
        knode_tests::image::BUSYBOX
    );
    n.apply(&yaml)?;
    let before = all_running(&n, &["term-0".to_string()])?;
    let pids = task_pids(&n)?;
    // The proxy's rules (nftables mode, the default): the Service's
    // ClusterIP is an element of table ip kube-proxy.
    let svc: serde_json::Value =
        serde_json::from_str(&n.knode(&["get", "svc", "term", "-o", "json"])?)?;
    let vip = svc["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let nat = |n: &Node| {
        n.host_sh(&["nft", "list", "table", "ip", "kube-proxy"])
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while vip.is_empty() || !nat(&n).contains(&vip) {
        assert!(
            std::time::Instant::now() < deadline,
            "no rules: {}",
            nat(&n)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let rules_before = nat(&n);

    let status = n.agent.terminate(Duration::from_secs(10))?;
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        n.agent.log()
    );
    assert!(!n.agent.socket().exists(), "the socket is removed");
    assert_eq!(task_pids(&n)?, pids, "pods keep running");
    assert_eq!(nat(&n), rules_before, "Service rules stay");
    assert!(
        n.host_sh(&["ip", "link", "show", "cni0"]).is_ok(),
        "cni0 stays"
    );

    n.agent.restart()?;
    std::thread::sleep(Duration::from_secs(2));
    let after = all_running(&n, &["term-0".to_string()])?;
    assert_eq!(before, after, "same IP, no restart");
    assert_eq!(task_pids(&n)?, pids, "adopted, not restarted");
    Ok(())
}
