//! hostnet's overlay requests against the real kernel, inside namespaces the
//! tests create: VXLAN devices, permanent neighbours, VXLAN FDB entries,
//! onlink routes, the change monitor, and two "nodes" that ping each other
//! across the overlay the way flannel programs it. `ip`/`bridge` check each step.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use hostnet::netlink::{
    Change, FdbEntry, Monitor, NeighEntry, RouteEntry, RouteRequest, VxlanInfo, VxlanRequest,
};
use hostnet::{NetNs, Netlink};
use netns_tests::{require_root, TestNs};

const MAC_A: [u8; 6] = [0x0e, 0x6b, 0x6e, 0x00, 0x01, 0x00];
const MAC_B: [u8; 6] = [0x0e, 0x6b, 0x6e, 0x00, 0x02, 0x00];

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

/// A netlink connection bound to `ns` (opened on a thread inside it).
fn netlink(ns: &TestNs) -> Result<Netlink> {
    Ok(ns.run(Netlink::new)??)
}

/// Adds a veth pair `name`/`name`p inside `ns` and sets both up (the
/// kernel here has no dummy driver).
fn local_link(ns: &TestNs, name: &str) -> Result<()> {
    let peer = format!("{name}p");
    ns.sh(&[
        "ip", "link", "add", name, "type", "veth", "peer", "name", &peer,
    ])?;
    ns.sh(&["ip", "link", "set", &peer, "up"])?;
    ns.sh(&["ip", "link", "set", name, "up"])?;
    Ok(())
}

/// A namespace with an underlay link `ul0` at `192.0.2.1/24`, and its index.
fn with_underlay(tag: &str) -> Result<(TestNs, Netlink, u32)> {
    let ns = TestNs::new(tag)?;
    local_link(&ns, "ul0")?;
    ns.sh(&["ip", "addr", "add", "192.0.2.1/24", "dev", "ul0"])?;
    let mut nl = netlink(&ns)?;
    let ul = nl.link().get_by_name("ul0")?.context("ul0")?.index;
    Ok((ns, nl, ul))
}

fn vxlan(name: &str, local: &str, underlay: u32, mac: &[u8]) -> VxlanRequest {
    VxlanRequest {
        name: name.to_string(),
        vni: 1,
        port: 8472,
        local: Some(ip(local)),
        underlay: Some(underlay),
        learning: false,
        mtu: Some(1450),
        mac: Some(mac.to_vec()),
    }
}

/// Creates `knode.1` on the underlay, sets it up, returns its index.
fn vxlan_up(nl: &mut Netlink, underlay: u32, mac: &[u8]) -> Result<u32> {
    nl.link()
        .add_vxlan(&vxlan("knode.1", "192.0.2.1", underlay, mac))?;
    let index = nl.link().get_by_name("knode.1")?.context("knode.1")?.index;
    nl.link().set_up(index, true)?;
    Ok(index)
}

#[test]
fn vxlan_device_has_the_requested_settings_and_reads_them_back() -> Result<()> {
    if !require_root("vxlan_device_has_the_requested_settings_and_reads_them_back") {
        return Ok(());
    }
    let (ns, mut nl, ul) = with_underlay("vx")?;
    nl.link()
        .add_vxlan(&vxlan("knode.1", "192.0.2.1", ul, &MAC_A))?;

    let shown = ns.sh(&["ip", "-d", "link", "show", "knode.1"])?;
    for want in [
        "vxlan id 1 ",
        "local 192.0.2.1 ",
        "dev ul0 ",
        "dstport 8472 ",
        "nolearning",
        "mtu 1450 ",
        "link/ether 0e:6b:6e:00:01:00 ",
    ] {
        assert!(shown.contains(want), "{want:?} not in: {shown}");
    }
    assert!(shown.contains("state DOWN"), "created down: {shown}");

    let (link, info) = nl.link().vxlan_info("knode.1")?.context("knode.1 gone")?;
    assert_eq!(
        info,
        Some(VxlanInfo {
            vni: 1,
            port: 8472,
            local: Some(ip("192.0.2.1")),
            underlay: Some(ul),
            learning: false,
        })
    );
    assert_eq!(link.mac, MAC_A);
    assert_eq!(link.mtu, 1450);
    assert_eq!(link.kind.as_deref(), Some("vxlan"));
    assert!(!link.up);

    // Creating it twice fails as "exists"; other links are not vxlan; absent is None.
    let again = nl
        .link()
        .add_vxlan(&vxlan("knode.1", "192.0.2.1", ul, &MAC_A))
        .expect_err("second create");
    assert!(again.is_exists(), "{again}");
    let (ul_link, ul_info) = nl.link().vxlan_info("ul0")?.context("ul0")?;
    assert_eq!((ul_link.index, ul_info), (ul, None));
    assert_eq!(nl.link().vxlan_info("knode.9")?, None);

    // MTU and MAC can be changed in place.
    nl.link().set_mtu(link.index, 1400)?;
    nl.link().set_mac(link.index, &MAC_B)?;
    let shown = ns.sh(&["ip", "link", "show", "knode.1"])?;
    assert!(shown.contains("mtu 1400 "), "{shown}");
    assert!(shown.contains("link/ether 0e:6b:6e:00:02:00 "), "{shown}");
    Ok(())
}

#[test]
fn permanent_neighbours_are_replaced_listed_and_deleted() -> Result<()> {
    if !require_root("permanent_neighbours_are_replaced_listed_and_deleted") {
        return Ok(());
    }
    let (ns, mut nl, ul) = with_underlay("neigh")?;
    let vx = vxlan_up(&mut nl, ul, &MAC_A)?;
    let peer = ip("10.244.2.0");

    // IPv6 multicast entries come and go on their own; look at ours only.
    let ours = |nl: &mut Netlink, ifindex: u32| -> Result<Vec<NeighEntry>> {
        let all = nl.neigh().list(ifindex)?;
        assert!(all.iter().all(|e| e.ifindex == ifindex), "{all:?}");
        Ok(all.into_iter().filter(|e| e.ip.is_ipv4()).collect())
    };
    nl.neigh().replace(vx, peer, &MAC_B)?;
    let want = NeighEntry {
        ifindex: vx,
        ip: peer,
        mac: MAC_B.to_vec(),
        permanent: true,
    };
    assert_eq!(ours(&mut nl, vx)?, vec![want.clone()]);
    let shown = ns.sh(&["ip", "neigh", "show", "dev", "knode.1"])?;
    assert!(
        shown.contains("10.244.2.0 lladdr 0e:6b:6e:00:02:00 PERMANENT"),
        "{shown}"
    );
    // Entries on other links are listed there, not here.
    nl.neigh().replace(ul, ip("192.0.2.9"), &MAC_A)?;
    assert_eq!(ours(&mut nl, vx)?, vec![want.clone()]);
    assert_eq!(
        ours(&mut nl, ul)?,
        vec![NeighEntry {
            ifindex: ul,
            ip: ip("192.0.2.9"),
            mac: MAC_A.to_vec(),
            permanent: true,
        }]
    );

    // Replace is idempotent and changes the MAC in place.
    nl.neigh().replace(vx, peer, &MAC_B)?;
    nl.neigh().replace(vx, peer, &MAC_A)?;
    assert_eq!(
        ours(&mut nl, vx)?,
        vec![NeighEntry {
            mac: MAC_A.to_vec(),
            ..want
        }]
    );

    nl.neigh().del(vx, peer)?;
    assert_eq!(ours(&mut nl, vx)?, vec![]);
    let shown = ns.sh(&["ip", "neigh", "show", "dev", "knode.1"])?;
    assert!(!shown.contains("10.244.2.0"), "{shown}");
    let again = nl.neigh().del(vx, peer).expect_err("second delete");
    assert!(again.is_not_found(), "{again}");
    Ok(())
}

#[test]
fn vxlan_fdb_entries_are_replaced_listed_and_deleted() -> Result<()> {
    if !require_root("vxlan_fdb_entries_are_replaced_listed_and_deleted") {
        return Ok(());
    }
    let (ns, mut nl, ul) = with_underlay("fdb")?;
    let vx = vxlan_up(&mut nl, ul, &MAC_A)?;

    nl.fdb().replace(vx, &MAC_B, ip("192.0.2.2"))?;
    let want = FdbEntry {
        ifindex: vx,
        mac: MAC_B.to_vec(),
        dst: Some(ip("192.0.2.2")),
        permanent: true,
    };
    let ours = |nl: &mut Netlink| -> Result<Vec<FdbEntry>> {
        Ok(nl
            .fdb()
            .list(vx)?
            .into_iter()
            .filter(|e| e.mac == MAC_B)
            .collect())
    };
    assert_eq!(ours(&mut nl)?, vec![want.clone()]);
    let shown = ns.sh(&["bridge", "fdb", "show", "dev", "knode.1"])?;
    assert!(
        shown.contains("0e:6b:6e:00:02:00 dst 192.0.2.2 self permanent"),
        "{shown}"
    );
    assert!(nl.fdb().list(vx)?.iter().all(|e| e.ifindex == vx));

    // Replace moves the MAC to another VTEP rather than adding a second remote.
    nl.fdb().replace(vx, &MAC_B, ip("192.0.2.3"))?;
    assert_eq!(
        ours(&mut nl)?,
        vec![FdbEntry {
            dst: Some(ip("192.0.2.3")),
            ..want
        }]
    );

    nl.fdb().del(vx, &MAC_B, Some(ip("192.0.2.3")))?;
    assert_eq!(ours(&mut nl)?, vec![]);
    let shown = ns.sh(&["bridge", "fdb", "show", "dev", "knode.1"])?;
    assert!(!shown.contains("0e:6b:6e:00:02:00"), "{shown}");

    // Without a dst, every remote of the MAC goes.
    nl.fdb().replace(vx, &MAC_B, ip("192.0.2.2"))?;
    nl.fdb().del(vx, &MAC_B, None)?;
    assert_eq!(ours(&mut nl)?, vec![]);
    let again = nl.fdb().del(vx, &MAC_B, None).expect_err("second delete");
    assert!(again.is_not_found(), "{again}");
    Ok(())
}

#[test]
fn onlink_routes_via_the_vxlan_device_are_added_listed_and_deleted() -> Result<()> {
    if !require_root("onlink_routes_via_the_vxlan_device_are_added_listed_and_deleted") {
        return Ok(());
    }
    let (ns, mut nl, ul) = with_underlay("route")?;
    let vx = vxlan_up(&mut nl, ul, &MAC_A)?;
    nl.addr().add(vx, "10.244.1.0/32".parse()?)?;

    let mut req = RouteRequest::new("10.244.2.0/24".parse()?, Some(ip("10.244.2.0")), Some(vx));
    // No address on knode.1 covers 10.244.2.0: without onlink the kernel refuses.
    let refused = nl.route().add(&req).expect_err("gateway not on link");
    assert_eq!(refused.errno(), Some(libc::ENETUNREACH), "{refused}");

    req.onlink = true;
    nl.route().add(&req)?;
    let want = RouteEntry {
        dst: req.dst,
        gateway: req.gateway,
        oif: Some(vx),
        table: 254,
        onlink: true,
    };
    let routes = nl.route().list(true)?;
    assert!(routes.contains(&want), "{routes:?}");
    // Others stay onlink: false.
    assert!(
        routes
            .iter()
            .filter(|r| r.dst != req.dst)
            .all(|r| !r.onlink),
        "{routes:?}"
    );
    let shown = ns.sh(&["ip", "route", "show", "10.244.2.0/24"])?;
    assert!(
        shown.contains("10.244.2.0/24 via 10.244.2.0 dev knode.1 onlink"),
        "{shown}"
    );

    nl.route().del(&req)?;
    assert!(!nl.route().list(true)?.contains(&want));
    assert_eq!(ns.sh(&["ip", "route", "show", "10.244.2.0/24"])?.trim(), "");
    Ok(())
}

/// Reads changes until `pred` matches one, failing after a few seconds.
fn wait_for(mon: &mut Monitor, what: &str, pred: impl Fn(&Change) -> bool) -> Result<Change> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        for c in mon.recv_timeout(Duration::from_millis(200))? {
            if pred(&c) {
                return Ok(c);
            }
            seen.push(c);
        }
    }
    Err(anyhow!("no {what} within 5 s; saw {seen:?}"))
}

#[test]
fn monitor_reports_what_someone_else_removes() -> Result<()> {
    if !require_root("monitor_reports_what_someone_else_removes") {
        return Ok(());
    }
    let ns = TestNs::new("mon")?;
    let mut mon = Monitor::new_in(&NetNs::open(ns.path())?)?;
    // Nothing has happened yet: a timeout is an empty list, not an error.
    let quiet = Instant::now();
    assert_eq!(mon.recv_timeout(Duration::from_millis(100))?, vec![]);
    assert!(quiet.elapsed() >= Duration::from_millis(90));

    local_link(&ns, "d0")?;
    let d0 = netlink(&ns)?.link().get_by_name("d0")?.context("d0")?.index;
    wait_for(
        &mut mon,
        "d0 up",
        |c| matches!(c, Change::LinkChanged { index, up: true, .. } if *index == d0),
    )?;

    ns.sh(&["ip", "route", "add", "10.250.0.0/24", "dev", "d0"])?;
    ns.sh(&["ip", "route", "del", "10.250.0.0/24", "dev", "d0"])?;
    let removed = wait_for(&mut mon, "route removal", |c| {
        matches!(c, Change::RouteRemoved(_))
    })?;
    assert_eq!(
        removed,
        Change::RouteRemoved(RouteEntry {
            dst: "10.250.0.0/24".parse()?,
            gateway: None,
            oif: Some(d0),
            table: 254,
            onlink: false,
        })
    );

    ns.sh(&[
        "ip",
        "neigh",
        "replace",
        "10.250.1.1",
        "lladdr",
        "0e:00:00:00:00:09",
        "dev",
        "d0",
        "nud",
        "permanent",
    ])?;
    ns.sh(&["ip", "neigh", "del", "10.250.1.1", "dev", "d0"])?;
    wait_for(&mut mon, "neighbour removal", |c| {
        *c == Change::NeighRemoved {
            ifindex: d0,
            ip: Some(ip("10.250.1.1")),
        }
    })?;

    ns.sh(&["ip", "link", "del", "d0"])?;
    wait_for(&mut mon, "d0 removal", |c| {
        *c == Change::LinkRemoved {
            index: d0,
            name: "d0".into(),
        }
    })?;
    Ok(())
}

#[test]
fn monitor_in_one_namespace_does_not_hear_another() -> Result<()> {
    if !require_root("monitor_in_one_namespace_does_not_hear_another") {
        return Ok(());
    }
    let watched = TestNs::new("monw")?;
    let other = TestNs::new("mono")?;
    let mut mon = Monitor::new_in(&NetNs::open(watched.path())?)?;
    local_link(&other, "d0")?;
    other.sh(&["ip", "link", "del", "d0"])?;
    assert_eq!(mon.recv_timeout(Duration::from_millis(300))?, vec![]);
    Ok(())
}

#[test]
fn monitor_overrun_is_a_resync_not_an_error() -> Result<()> {
    if !require_root("monitor_overrun_is_a_resync_not_an_error") {
        return Ok(());
    }
    let ns = TestNs::new("monx")?;
    local_link(&ns, "d0")?;
    let mut mon = Monitor::new_in(&NetNs::open(ns.path())?)?;
    mon.set_recv_buffer(4096)?;
    // 500 routes announced while nobody reads: far more than 8 KiB holds.
    let adds = 500;
    let batch = std::env::temp_dir().join(netns_tests::unique("kn-batch-"));
    let lines: String = (0..adds)
        .map(|i| format!("route add 10.251.{}.{}/32 dev d0\n", i / 250, i % 250))
        .collect();
    std::fs::write(&batch, lines)?;
    let added = ns.sh(&["ip", "-batch", &batch.display().to_string()]);
    let _ = std::fs::remove_file(&batch);
    added?;

    let mut seen = Vec::new();
    loop {
        let got = mon.recv_timeout(Duration::from_millis(200))?;
        if got.is_empty() {
            break;
        }
        seen.extend(got);
    }
    assert!(
        seen.len() < adds,
        "expected an overrun, got all {} changes",
        seen.len()
    );
    assert!(seen.contains(&Change::Other));

    // The monitor keeps working after the overrun (with room for the
    // burst a link deletion makes).
    mon.set_recv_buffer(1 << 20)?;
    ns.sh(&["ip", "link", "del", "d0"])?;
    wait_for(
        &mut mon,
        "d0 removal",
        |c| matches!(c, Change::LinkRemoved { name, .. } if name == "d0"),
    )?;
    Ok(())
}

/// One "node": a namespace whose underlay end is `ul0` at `underlay_ip`/24,
/// with `knode.1` (MAC `mac`) at `pod_ip`/32, programmed by hostnet.
fn node(ns: &TestNs, underlay_ip: &str, pod_ip: &str, mac: &[u8]) -> Result<(Netlink, u32)> {
    ns.sh(&[
        "ip",
        "addr",
        "add",
        &format!("{underlay_ip}/24"),
        "dev",
        "ul0",
    ])?;
    ns.sh(&["ip", "link", "set", "ul0", "up"])?;
    let mut nl = netlink(ns)?;
    let ul = nl.link().get_by_name("ul0")?.context("ul0")?.index;
    nl.link()
        .add_vxlan(&vxlan("knode.1", underlay_ip, ul, mac))?;
    let vx = nl.link().get_by_name("knode.1")?.context("knode.1")?.index;
    nl.addr().add(vx, format!("{pod_ip}/32").parse()?)?;
    nl.link().set_up(vx, true)?;
    Ok((nl, vx))
}

/// What flannel programs for a remote node: route to its subnet via its
/// VTEP address onlink, the VTEP's MAC as a permanent neighbour, and that
/// MAC's FDB entry pointing at its underlay IP.
fn program_peer(
    nl: &mut Netlink,
    vx: u32,
    subnet: &str,
    vtep: &str,
    mac: &[u8],
    underlay: &str,
) -> Result<()> {
    let mut route = RouteRequest::new(subnet.parse()?, Some(ip(vtep)), Some(vx));
    route.onlink = true;
    nl.route().add(&route)?;
    nl.neigh().replace(vx, ip(vtep), mac)?;
    nl.fdb().replace(vx, mac, ip(underlay))?;
    Ok(())
}

fn ping_soon(ns: &TestNs, target: &str) -> bool {
    (0..3).any(|_| ns.ping(target))
}

#[test]
fn two_nodes_ping_each_other_across_the_vxlan_overlay() -> Result<()> {
    if !require_root("two_nodes_ping_each_other_across_the_vxlan_overlay") {
        return Ok(());
    }
    let a = TestNs::new("nodea")?;
    let b = TestNs::new("nodeb")?;
    a.sh(&[
        "ip",
        "link",
        "add",
        "ul0",
        "type",
        "veth",
        "peer",
        "name",
        "ul0",
        "netns",
        b.name(),
    ])?;
    let (mut nla, vxa) = node(&a, "192.0.2.1", "10.244.1.0", &MAC_A)?;
    let (mut nlb, vxb) = node(&b, "192.0.2.2", "10.244.2.0", &MAC_B)?;

    // The underlay works, the overlay does not yet.
    assert!(ping_soon(&a, "192.0.2.2"), "underlay ping");
    assert!(
        !a.ping("10.244.2.0"),
        "overlay answered before it was programmed"
    );

    program_peer(
        &mut nla,
        vxa,
        "10.244.2.0/24",
        "10.244.2.0",
        &MAC_B,
        "192.0.2.2",
    )?;
    program_peer(
        &mut nlb,
        vxb,
        "10.244.1.0/24",
        "10.244.1.0",
        &MAC_A,
        "192.0.2.1",
    )?;
    assert!(ping_soon(&a, "10.244.2.0"), "a -> b across the overlay");
    assert!(ping_soon(&b, "10.244.1.0"), "b -> a across the overlay");

    // The packets really went through VXLAN: b's device received them.
    let stats: serde_json::Value =
        serde_json::from_str(&b.sh(&["ip", "-j", "-s", "link", "show", "knode.1"])?)?;
    let rx = stats[0]["stats64"]["rx"]["packets"].as_u64();
    assert!(rx.is_some_and(|n| n > 0), "knode.1 rx packets: {stats}");

    // Without its FDB entry, a no longer knows where b's VTEP is (learning is off).
    nla.fdb().del(vxa, &MAC_B, None)?;
    assert!(!a.ping("10.244.2.0"), "ping without an fdb entry");
    nla.fdb().replace(vxa, &MAC_B, ip("192.0.2.2"))?;
    assert!(
        ping_soon(&a, "10.244.2.0"),
        "ping after the fdb entry is back"
    );
    Ok(())
}
