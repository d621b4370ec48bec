//! knode-bridge + knode-host-local against the real kernel, inside namespaces
//! the tests create: ADD, DEL, CHECK, GC, parallel load, exhaustion.

use std::collections::HashSet;
use std::path::Path;

use anyhow::Result;
use netns_tests::{first_ip, our_bin, require_root, unique, CniCall, TempDir, TestNs};
use serde_json::{json, Value};

/// A host namespace with a bridge network config and a data dir.
struct Net {
    host: TestNs,
    data: TempDir,
    conf: Value,
}

impl Net {
    fn new(subnet: &str, ipam_extra: Value) -> Result<Net> {
        let host = TestNs::new("host")?;
        let data = TempDir::new("ipam")?;
        let mut range = json!({ "subnet": subnet });
        if let Value::Object(extra) = ipam_extra {
            for (k, v) in extra {
                range[k] = v;
            }
        }
        let conf = json!({
            "cniVersion": "1.1.0",
            "name": unique("net"),
            "type": "knode-bridge",
            "bridge": unique("kb"),
            "isGateway": true,
            "isDefaultGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": { "type": "knode-host-local", "ranges": [[range]], "dataDir": data.path() },
        });
        Ok(Net { host, data, conf })
    }

    fn call(
        &self,
        cmd: &'static str,
        id: &str,
        netns: Option<&Path>,
        conf: &Value,
    ) -> Result<netns_tests::CniOutcome> {
        let call = CniCall::new(&our_bin("knode-bridge"), cmd, id, netns, "eth0");
        self.host.run(|| call.run(conf))?
    }

    fn add(&self, id: &str, pod: &TestNs) -> Result<Value> {
        self.call("ADD", id, Some(pod.path()), &self.conf)?
            .expect_ok("ADD")
    }

    fn del(&self, id: &str, netns: Option<&Path>, prev: Option<&Value>) -> Result<()> {
        let mut conf = self.conf.clone();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        self.call("DEL", id, netns, &conf)?
            .expect_ok("DEL")
            .map(|_| ())
    }

    /// IP reservation files in the network's data dir.
    fn reservations(&self) -> Vec<String> {
        let dir = self
            .data
            .path()
            .join(self.conf["name"].as_str().unwrap_or_default());
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The veth links left in the host namespace once DEL's background
    /// deletes have had up to 3 s to finish.
    fn veths_after_reaping(&self) -> Result<String> {
        let mut left = String::new();
        for _ in 0..30 {
            left = self
                .host
                .sh(&["ip", "-o", "link", "show", "type", "veth"])?;
            if left.trim().is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(left)
    }

    fn host_has_link(&self, name: &str) -> bool {
        self.host.sh(&["ip", "link", "show", name]).is_ok()
    }
}

#[test]
fn add_gives_ip_default_route_and_reachability() -> Result<()> {
    if !require_root("add_gives_ip_default_route_and_reachability") {
        return Ok(());
    }
    let net = Net::new("10.91.0.0/24", json!({}))?;
    let (a, b) = (TestNs::new("pod")?, TestNs::new("pod")?);
    let ra = net.add("ctr-a", &a)?;
    let rb = net.add("ctr-b", &b)?;
    let ip_a = first_ip(&ra).expect("ip a");
    let ip_b = first_ip(&rb).expect("ip b");
    assert_ne!(ip_a, ip_b);
    assert_eq!(ra["ips"][0]["gateway"], "10.91.0.1");
    assert_eq!(ra["interfaces"][2]["name"], "eth0");
    assert_eq!(
        ra["interfaces"][2]["sandbox"],
        a.path().display().to_string()
    );

    let addr = a.sh(&["ip", "-o", "addr", "show", "dev", "eth0"])?;
    assert!(addr.contains(&format!("{ip_a}/24")), "{addr}");
    let routes = a.sh(&["ip", "route"])?;
    assert!(
        routes.contains("default via 10.91.0.1 dev eth0"),
        "{routes}"
    );
    assert!(a.ping("10.91.0.1"), "pod a pings the gateway");
    assert!(a.ping(&ip_b), "pod a pings pod b on the same bridge");
    assert!(b.ping(&ip_a), "pod b pings pod a");

    // Hairpin is set on the host port; ip_forward is on in the host namespace.
    let host_veth = ra["interfaces"][1]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let details = net.host.sh(&["ip", "-d", "link", "show", &host_veth])?;
    assert!(details.contains("hairpin on"), "{details}");
    assert_eq!(
        net.host
            .sh(&["cat", "/proc/sys/net/ipv4/ip_forward"])?
            .trim(),
        "1"
    );

    // One masquerade rule set for the network, not one chain per container.
    let nat = net.host.sh(&["iptables-save", "-t", "nat"])?;
    let jumps = nat
        .lines()
        .filter(|l| l.starts_with("-A POSTROUTING") && l.contains("KNODE-MASQ-"))
        .count();
    assert_eq!(jumps, 1, "{nat}");
    Ok(())
}

#[test]
fn del_removes_veth_frees_ip_and_is_idempotent() -> Result<()> {
    if !require_root("del_removes_veth_frees_ip_and_is_idempotent") {
        return Ok(());
    }
    let net = Net::new("10.92.0.0/24", json!({}))?;
    let pod = TestNs::new("pod")?;
    let r = net.add("ctr-del", &pod)?;
    let host_veth = r["interfaces"][1]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(net.host_has_link(&host_veth));
    assert_eq!(net.reservations().len(), 1);

    net.del("ctr-del", Some(pod.path()), Some(&r))?;
    assert!(!net.host_has_link(&host_veth), "host veth gone");
    assert!(
        pod.sh(&["ip", "link", "show", "eth0"]).is_err(),
        "eth0 gone"
    );
    assert!(net.reservations().is_empty(), "IP released");
    let left = net.veths_after_reaping()?;
    assert!(left.trim().is_empty(), "the pair is deleted: {left}");
    assert!(pod
        .sh(&["ip", "-o", "link", "show", "type", "veth"])?
        .trim()
        .is_empty());
    net.del("ctr-del", Some(pod.path()), Some(&r))?; // second DEL succeeds
                                                     // DEL frees the names at once: the same attachment can be added again right away.
    let again = net.add("ctr-del", &pod)?;
    net.del("ctr-del", Some(pod.path()), Some(&again))?;
    Ok(())
}

#[test]
fn del_after_netns_is_gone_frees_ip() -> Result<()> {
    if !require_root("del_after_netns_is_gone_frees_ip") {
        return Ok(());
    }
    let net = Net::new("10.93.0.0/24", json!({}))?;
    let pod = TestNs::new("pod")?;
    let path = pod.path().to_path_buf();
    let r = net.add("ctr-gone", &pod)?;
    drop(pod); // the namespace is deleted
    net.del("ctr-gone", Some(&path), None)?; // no prevResult either: the store is scanned
    assert!(net.reservations().is_empty());
    let host_veth = r["interfaces"][1]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!net.host_has_link(&host_veth));
    net.del("ctr-gone", None, None)?;
    Ok(())
}

#[test]
fn two_hundred_parallel_adds_get_distinct_reachable_ips() -> Result<()> {
    if !require_root("two_hundred_parallel_adds_get_distinct_reachable_ips") {
        return Ok(());
    }
    const PODS: usize = 200;
    const WORKERS: usize = 16;
    let net = Net::new("10.94.0.0/24", json!({}))?;
    let pods: Vec<TestNs> = (0..PODS).map(|_| TestNs::new("p")).collect::<Result<_>>()?;
    let results: Vec<(usize, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (net, pods) = (&net, &pods);
                s.spawn(move || -> Result<Vec<(usize, Value)>> {
                    (w..PODS)
                        .step_by(WORKERS)
                        .map(|i| Ok((i, net.add(&format!("ctr-{i}"), &pods[i])?)))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect::<Result<Vec<_>>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    let ips: HashSet<String> = results.iter().filter_map(|(_, r)| first_ip(r)).collect();
    assert_eq!(ips.len(), PODS, "distinct IPs");
    assert_eq!(net.reservations().len(), PODS);

    // Every pod answers from the host namespace.
    let ips: Vec<String> = ips.into_iter().collect();
    let unreachable: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = ips
            .chunks(PODS / WORKERS + 1)
            .map(|chunk| {
                let host = &net.host;
                s.spawn(move || {
                    chunk
                        .iter()
                        .filter(|ip| !host.ping(ip))
                        .cloned()
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().expect("pinger"))
            .collect()
    });
    assert!(unreachable.is_empty(), "unreachable pods: {unreachable:?}");

    std::thread::scope(|s| {
        for w in 0..WORKERS {
            let (net, pods, results) = (&net, &pods, &results);
            s.spawn(move || {
                for (i, r) in results.iter().skip(w).step_by(WORKERS) {
                    net.del(&format!("ctr-{i}"), Some(pods[*i].path()), Some(r))
                        .expect("DEL");
                }
            });
        }
    });
    assert!(
        net.reservations().is_empty(),
        "no reservation left: {:?}",
        net.reservations()
    );
    let veths = net.veths_after_reaping()?;
    assert!(veths.trim().is_empty(), "no veth left: {veths}");
    Ok(())
}

#[test]
fn exhausted_range_fails_cleanly() -> Result<()> {
    if !require_root("exhausted_range_fails_cleanly") {
        return Ok(());
    }
    let net = Net::new(
        "10.95.0.0/24",
        json!({ "rangeStart": "10.95.0.10", "rangeEnd": "10.95.0.12" }),
    )?;
    let pods: Vec<TestNs> = (0..4).map(|_| TestNs::new("pod")).collect::<Result<_>>()?;
    for (i, p) in pods.iter().take(3).enumerate() {
        net.add(&format!("ctr-{i}"), p)?;
    }
    let out = net.call("ADD", "ctr-3", Some(pods[3].path()), &net.conf)?;
    assert!(!out.ok, "fourth ADD must fail");
    assert_eq!(
        out.code(),
        Some(100),
        "error JSON with code 100: {}",
        out.stdout
    );
    assert!(
        out.json["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("no IP addresses available"),
        "{}",
        out.stdout
    );
    assert_eq!(net.reservations().len(), 3);
    assert!(
        pods[3].sh(&["ip", "link", "show", "eth0"]).is_err(),
        "no eth0 in the failed pod"
    );
    let veths = net.host.sh(&["ip", "-o", "link", "show", "type", "veth"])?;
    assert_eq!(veths.lines().count(), 3, "no partial veth: {veths}");
    Ok(())
}

#[test]
fn gc_releases_exactly_the_invalid_attachments() -> Result<()> {
    if !require_root("gc_releases_exactly_the_invalid_attachments") {
        return Ok(());
    }
    let net = Net::new("10.96.0.0/24", json!({}))?;
    let pods: Vec<TestNs> = (0..3).map(|_| TestNs::new("pod")).collect::<Result<_>>()?;
    let results: Vec<Value> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| net.add(&format!("ctr-{i}"), p))
        .collect::<Result<_>>()?;
    let mut conf = net.conf.clone();
    conf["cni.dev/valid-attachments"] = json!([{ "containerID": "ctr-1", "ifname": "eth0" }]);
    // A tombstone whose background delete never ran (say, it was killed).
    net.host.sh(&[
        "ip",
        "link",
        "add",
        "kdel00000001",
        "type",
        "veth",
        "peer",
        "name",
        "kdel00000002",
    ])?;
    let call = CniCall::new(&our_bin("knode-bridge"), "GC", "", None, "");
    net.host.run(|| call.run(&conf))??.expect_ok("GC")?;
    assert_eq!(net.reservations(), vec![first_ip(&results[1]).expect("ip")]);
    assert!(
        !net.host_has_link("kdel00000001"),
        "GC deletes leftover tombstones"
    );
    Ok(())
}

#[test]
fn check_reports_removed_ip_and_route() -> Result<()> {
    if !require_root("check_reports_removed_ip_and_route") {
        return Ok(());
    }
    let net = Net::new("10.97.0.0/24", json!({}))?;
    let (a, b) = (TestNs::new("pod")?, TestNs::new("pod")?);
    let ra = net.add("ctr-a", &a)?;
    let rb = net.add("ctr-b", &b)?;
    let check = |id: &str, pod: &TestNs, prev: &Value| -> Result<netns_tests::CniOutcome> {
        let mut conf = net.conf.clone();
        conf["prevResult"] = prev.clone();
        net.call("CHECK", id, Some(pod.path()), &conf)
    };
    assert!(
        check("ctr-a", &a, &ra)?.ok,
        "CHECK passes on an intact attachment"
    );

    let addr = ra["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    a.sh(&["ip", "addr", "del", &addr, "dev", "eth0"])?;
    let out = check("ctr-a", &a, &ra)?;
    assert!(!out.ok);
    assert!(
        out.stdout.contains(&format!("address {addr} is missing")),
        "{}",
        out.stdout
    );

    b.sh(&["ip", "route", "del", "default"])?;
    let out = check("ctr-b", &b, &rb)?;
    assert!(!out.ok);
    assert!(
        out.stdout
            .contains("route 0.0.0.0/0 via 10.97.0.1 is missing"),
        "{}",
        out.stdout
    );

    // Flushing the masquerade rules is reported too.
    let mut conf = net.conf.clone();
    conf["prevResult"] = rb.clone();
    b.sh(&["ip", "route", "add", "default", "via", "10.97.0.1"])?;
    net.host
        .sh(&["iptables", "-t", "nat", "-F", "POSTROUTING"])?;
    let out = net.call("CHECK", "ctr-b", Some(b.path()), &conf)?;
    assert!(!out.ok);
    assert!(out.stdout.contains("ipMasq"), "{}", out.stdout);
    Ok(())
}

/// Connects from `pod` to `vip:80`, DNAT'ed back to the pod itself, as a
/// pod reaching its own service does. True when the pod's server answers
/// within `tries` one-second attempts.
fn reaches_itself(net: &Net, pod: &TestNs, pod_ip: &str, vip: &str, tries: usize) -> Result<bool> {
    net.host.sh(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        vip,
        "-p",
        "tcp",
        "--dport",
        "80",
        "-j",
        "DNAT",
        "--to-destination",
        &format!("{pod_ip}:8080"),
    ])?;
    // A packet from the pod's own address would be a martian to it: masquerade the hairpin, as kube-proxy does.
    net.host.sh(&[
        "iptables",
        "-t",
        "nat",
        "-I",
        "POSTROUTING",
        "-s",
        pod_ip,
        "-d",
        pod_ip,
        "-j",
        "MASQUERADE",
    ])?;
    let mut server = pod
        .cmd(&[
            "socat",
            "TCP-LISTEN:8080,reuseaddr,fork",
            "SYSTEM:echo hairpin-ok",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut ok = false;
    for _ in 0..tries {
        let out = pod
            .cmd(&[
                "socat",
                "-T",
                "1",
                "-",
                &format!("TCP:{vip}:80,connect-timeout=1"),
            ])
            .output()?;
        if String::from_utf8_lossy(&out.stdout).contains("hairpin-ok") {
            ok = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    Ok(ok)
}

#[test]
fn hairpin_lets_a_pod_reach_itself_through_a_dnat() -> Result<()> {
    if !require_root("hairpin_lets_a_pod_reach_itself_through_a_dnat") {
        return Ok(());
    }
    // Hairpin matters when bridged traffic is NATed (br_netfilter), as with
    // kube-proxy. The sysctl is per namespace; only our test host sets it.
    let loaded = std::path::Path::new("/proc/sys/net/bridge").exists()
        || std::process::Command::new("modprobe")
            .arg("br_netfilter")
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        loaded || std::env::var("CI").as_deref() != Ok("true"),
        "br_netfilter is needed for the hairpin test"
    );
    if !loaded {
        eprintln!("SKIP hairpin_lets_a_pod_reach_itself_through_a_dnat: no br_netfilter");
        return Ok(());
    }
    let net = Net::new("10.90.0.0/24", json!({}))?;
    net.host
        .sh(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"])?;
    let (a, b) = (TestNs::new("pod")?, TestNs::new("pod")?);
    let ra = net.add("ctr-a", &a)?;
    let rb = net.add("ctr-b", &b)?;
    // Both pods must have learned the gateway's MAC path through the bridge first.
    assert!(a.ping("10.90.0.1") && b.ping("10.90.0.1"));

    let ip_a = first_ip(&ra).expect("ip a");
    assert!(
        reaches_itself(&net, &a, &ip_a, "10.90.1.1", 20)?,
        "hairpinMode: the pod reaches itself"
    );

    // The same path with hairpin turned off on B's port fails: the flag is what makes it work.
    let port_b = rb["interfaces"][1]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    net.host.sh(&[
        "ip",
        "link",
        "set",
        "dev",
        &port_b,
        "type",
        "bridge_slave",
        "hairpin",
        "off",
    ])?;
    let ip_b = first_ip(&rb).expect("ip b");
    assert!(
        !reaches_itself(&net, &b, &ip_b, "10.90.1.2", 3)?,
        "without hairpin the pod cannot reach itself"
    );
    Ok(())
}

#[test]
fn dual_stack_add_gives_both_families_and_routes() -> Result<()> {
    if !require_root("dual_stack_add_gives_both_families_and_routes") {
        return Ok(());
    }
    let mut net = Net::new("10.89.0.0/24", json!({}))?;
    net.conf["ipam"]["ranges"] =
        json!([[{ "subnet": "10.89.0.0/24" }], [{ "subnet": "fd89::/64" }]]);
    let (a, b) = (TestNs::new("pod")?, TestNs::new("pod")?);
    let ra = net.add("ctr-a", &a)?;
    net.add("ctr-b", &b)?;
    let ips = ra["ips"].as_array().cloned().unwrap_or_default();
    assert_eq!(ips.len(), 2, "one address per range set: {ra}");
    let v6 = ips[1]["address"].as_str().unwrap_or_default().to_string();
    assert!(v6.starts_with("fd89::") && v6.ends_with("/64"), "{v6}");
    assert_eq!(ips[1]["gateway"], "fd89::1");

    let addrs = a.sh(&["ip", "-o", "addr", "show", "dev", "eth0"])?;
    assert!(addrs.contains(&v6), "{addrs}");
    let routes6 = a.sh(&["ip", "-6", "route"])?;
    assert!(
        routes6.contains("default via fd89::1 dev eth0"),
        "{routes6}"
    );
    let ok6 = a
        .cmd(&["ping", "-6", "-c", "1", "-W", "2", "fd89::1"])
        .status()?
        .success();
    assert!(ok6, "pod pings the IPv6 gateway");
    assert_eq!(
        net.host
            .sh(&["cat", "/proc/sys/net/ipv6/conf/all/forwarding"])?
            .trim(),
        "1"
    );
    net.del("ctr-a", Some(a.path()), Some(&ra))?;
    assert_eq!(net.reservations().len(), 2, "only b's two addresses remain");
    Ok(())
}
