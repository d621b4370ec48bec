//! `knode-host-local`: an IPAM plugin compatible with the reference
//! host-local plugin (same config, same on-disk reservations), used as a
//! binary or in-process by the bridge. This module wires config, store and
//! allocator to the CNI commands; it must not print or read the process env.

pub mod allocator;
pub mod config;
pub mod store;

use std::net::IpAddr;

use crate::skel::{CmdArgs, CniError, CniResult, Code, Dns, Plugin, Result};
use config::IpamConfig;
use store::DiskStore;

/// The host-local plugin, for [`crate::skel::plugin_main`].
#[derive(Debug, Clone, Copy, Default)]
pub struct HostLocal;

impl Plugin for HostLocal {
    fn add(&self, args: &CmdArgs) -> Result<CniResult> {
        add(args)
    }
    fn del(&self, args: &CmdArgs) -> Result<()> {
        del(args)
    }
    fn check(&self, args: &CmdArgs) -> Result<()> {
        check(args)
    }
    fn status(&self, args: &CmdArgs) -> Result<()> {
        status(args)
    }
    fn gc(&self, args: &CmdArgs) -> Result<()> {
        gc(args)
    }
}

/// ADD: reserves one address per range set (or returns the ones this
/// attachment already holds) and returns them with `ipam.routes` and the
/// DNS from `ipam.resolvConf`. `ips[].interface` is left unset.
pub fn add(args: &CmdArgs) -> Result<CniResult> {
    let conf = IpamConfig::parse(&args.stdin)?;
    let requested = config::requested_ips(&args.stdin, &args.args)?;
    let requested = conf.assign_requested(&requested)?;
    let dns = match &conf.resolv_conf {
        Some(path) => config::read_resolv_conf(path)?,
        None => Dns::default(),
    };
    let mut store = DiskStore::open(&conf.data_dir, &conf.name)?;
    let ips = allocator::allocate_all(
        &mut store,
        &conf.range_sets,
        &requested,
        &args.container_id,
        &args.ifname,
    )?;
    Ok(CniResult {
        cni_version: args.conf.cni_version.clone(),
        interfaces: Vec::new(),
        ips,
        routes: conf.routes,
        dns,
    })
}

/// DEL: releases the attachment's reservations; unknown attachments and a
/// missing data dir are success. Uses `prevResult` to avoid a full scan.
pub fn del(args: &CmdArgs) -> Result<()> {
    let conf = IpamConfig::parse(&args.stdin)?;
    let Some(mut store) = DiskStore::open_existing(&conf.data_dir, &conf.name)? else {
        return Ok(());
    };
    // A prevResult we cannot read is only a lost hint: DEL must still release.
    let hint = args
        .conf
        .prev()
        .ok()
        .flatten()
        .map(|r| prev_ips(&r))
        .unwrap_or_default();
    allocator::release(
        &mut store,
        &conf.range_sets,
        &args.container_id,
        &args.ifname,
        &hint,
    )
    .map(|_| ())
}

/// CHECK: the attachment still holds every address of ours in `prevResult`.
pub fn check(args: &CmdArgs) -> Result<()> {
    let conf = IpamConfig::parse(&args.stdin)?;
    let prev = args.conf.prev()?.map(|r| prev_ips(&r)).unwrap_or_default();
    let Some(mut store) = DiskStore::open_existing(&conf.data_dir, &conf.name)? else {
        return Err(CniError::new(
            Code::CheckFailed,
            format!(
                "no address is reserved for container {} interface {}: {} does not exist",
                args.container_id,
                args.ifname,
                conf.data_dir.join(&conf.name).display()
            ),
        ));
    };
    allocator::check(
        &mut store,
        &conf.range_sets,
        &args.container_id,
        &args.ifname,
        &prev,
    )
}

/// GC: releases every reservation of this network whose attachment is not
/// in `cni.dev/valid-attachments`, which is required (an absent list must
/// not be read as "nothing is valid").
pub fn gc(args: &CmdArgs) -> Result<()> {
    let conf = IpamConfig::parse(&args.stdin)?;
    let Some(valid) = &args.conf.valid_attachments else {
        return Err(CniError::new(
            Code::InvalidConfig,
            "cni.dev/valid-attachments: required for GC",
        ));
    };
    let Some(mut store) = DiskStore::open_existing(&conf.data_dir, &conf.name)? else {
        return Ok(());
    };
    allocator::gc(&mut store, valid).map(|_| ())
}

/// STATUS: `NotAvailable` when the data dir cannot be created or written, or
/// when a range set has no address left (ADD needs one from every set).
pub fn status(args: &CmdArgs) -> Result<()> {
    let conf = IpamConfig::parse(&args.stdin)?;
    let not_available =
        |e: CniError| CniError::new(Code::NotAvailable, e.msg).with_details(e.details);
    let mut store = DiskStore::open(&conf.data_dir, &conf.name).map_err(not_available)?;
    nix::unistd::access(store.dir(), nix::unistd::AccessFlags::W_OK).map_err(|e| {
        CniError::new(
            Code::NotAvailable,
            format!("IPAM data dir {} is not writable", store.dir().display()),
        )
        .with_details(e)
    })?;
    let full = allocator::full_sets(&mut store, &conf.range_sets)?;
    if full.is_empty() {
        return Ok(());
    }
    let what: Vec<String> = full
        .iter()
        .filter_map(|&(i, used, cap)| {
            conf.range_sets
                .get(i)
                .map(|s| format!("range set {s} is full ({used} of {cap} addresses reserved)"))
        })
        .collect();
    Err(CniError::new(Code::NotAvailable, what.join("; ")))
}

fn prev_ips(r: &CniResult) -> Vec<IpAddr> {
    r.ips
        .iter()
        .map(|c| c.address.addr().to_canonical())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::net::IpAddr;
    use std::path::Path;

    use super::store::tests::TempDir;
    use super::*;
    use crate::skel::Command;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    fn conf(dir: &Path, ipam: &str, extra: &str) -> Vec<u8> {
        let dir = dir.display();
        let head = r#""cniVersion":"1.1.0","name":"net","type":"knode-bridge""#;
        let ipam = format!(r#"{{"type":"knode-host-local","dataDir":"{dir}",{ipam}}}"#);
        format!(r#"{{{head}{extra},"ipam":{ipam}}}"#).into_bytes()
    }

    fn args(cmd: Command, id: &str, stdin: Vec<u8>) -> CmdArgs {
        let cmd_s = cmd.as_str().to_string();
        let id = id.to_string();
        let env = move |k: &str| match k {
            "CNI_COMMAND" => Some(cmd_s.clone()),
            "CNI_CONTAINERID" => Some(id.clone()),
            "CNI_IFNAME" => Some("eth0".to_string()),
            "CNI_NETNS" => Some("/run/netns/x".to_string()),
            "CNI_PATH" => Some("/opt/cni/bin".to_string()),
            _ => None,
        };
        CmdArgs::from_env(env, stdin).expect("valid test args")
    }

    fn addrs(r: &CniResult) -> Vec<String> {
        r.ips.iter().map(|c| c.address.to_string()).collect()
    }

    const V4: &str = r#""ranges":[[{"subnet":"10.1.0.0/24"}]]"#;

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir.join("net"))
            .expect("net dir")
            .filter_map(|e| {
                e.ok()
                    .and_then(|e| e.file_name().to_str().map(str::to_string))
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn add_returns_ips_routes_and_dns() {
        let tmp = TempDir::new("add");
        let resolv = tmp.0.join("resolv.conf");
        fs::write(&resolv, "nameserver 10.96.0.10\nsearch svc.cluster.local\n").expect("write");
        let ipam = format!(
            r#""ranges":[[{{"subnet":"10.1.0.0/24"}}],[{{"subnet":"fd00:10::/64"}}]],"routes":[{{"dst":"0.0.0.0/0"}}],"resolvConf":"{}""#,
            resolv.display()
        );
        let r = add(&args(Command::Add, "c1", conf(&tmp.0, &ipam, ""))).expect("add");
        assert_eq!(addrs(&r), ["10.1.0.2/24", "fd00:10::2/64"]);
        assert_eq!(r.ips[0].gateway, Some(ip("10.1.0.1")));
        assert_eq!(r.ips[1].gateway, Some(ip("fd00:10::1")));
        assert!(r.ips.iter().all(|c| c.interface.is_none()));
        assert_eq!(r.routes.len(), 1);
        assert_eq!(r.dns.nameservers, ["10.96.0.10"]);
        assert_eq!(r.cni_version, "1.1.0");
        assert_eq!(
            files(&tmp.0),
            [
                "10.1.0.2",
                "fd00:10::2",
                "last_reserved_ip.0",
                "last_reserved_ip.1",
                "lock"
            ]
        );
        let json = r.to_json("1.1.0");
        assert_eq!(json["ips"][1]["address"], "fd00:10::2/64");
    }

    #[test]
    fn round_robin_over_disk_and_retry() {
        let tmp = TempDir::new("rr");
        let c = conf(&tmp.0, V4, "");
        let a = add(&args(Command::Add, "a", c.clone())).expect("a");
        let b = add(&args(Command::Add, "b", c.clone())).expect("b");
        assert_eq!(
            (addrs(&a), addrs(&b)),
            (
                vec!["10.1.0.2/24".to_string()],
                vec!["10.1.0.3/24".to_string()]
            )
        );
        assert_eq!(
            addrs(&add(&args(Command::Add, "a", c.clone())).expect("retry")),
            addrs(&a)
        );
        del(&args(Command::Del, "b", c.clone())).expect("del b");
        let d = add(&args(Command::Add, "d", c.clone())).expect("d");
        assert_eq!(
            addrs(&d),
            ["10.1.0.4/24"],
            "continues after last_reserved_ip, not the freed .3"
        );
        assert_eq!(
            fs::read_to_string(tmp.0.join("net/last_reserved_ip.0")).expect("last"),
            "10.1.0.4"
        );
    }

    #[test]
    fn reference_written_reservations_are_honoured_and_released() {
        let tmp = TempDir::new("reference");
        let dir = tmp.0.join("net");
        fs::create_dir_all(&dir).expect("mkdir");
        // As the reference writes them: new format, an old id-only file, and last_reserved_ip.
        fs::write(dir.join("10.1.0.2"), "ref1\r\neth0").expect("write");
        fs::write(dir.join("10.1.0.3"), "ref-old").expect("write");
        fs::write(dir.join("last_reserved_ip.0"), "10.1.0.1").expect("write");
        let c = conf(&tmp.0, V4, "");
        let r = add(&args(Command::Add, "ours", c.clone())).expect("add");
        assert_eq!(
            addrs(&r),
            ["10.1.0.4/24"],
            "neither reference reservation is handed out"
        );
        // The old-format file belongs to its container whatever the ifname.
        check(&args(Command::Check, "ref-old", c.clone())).expect("old format held");
        del(&args(Command::Del, "ref-old", c.clone())).expect("del old");
        del(&args(Command::Del, "ref1", c.clone())).expect("del ref1");
        assert_eq!(files(&tmp.0), ["10.1.0.4", "last_reserved_ip.0", "lock"]);
    }

    #[test]
    fn del_uses_prev_result_and_is_idempotent() {
        let tmp = TempDir::new("del");
        let c = conf(&tmp.0, V4, "");
        let a = add(&args(Command::Add, "a", c.clone())).expect("a");
        add(&args(Command::Add, "b", c.clone())).expect("b");
        let prev = format!(r#","prevResult":{}"#, a.to_json("1.1.0"));
        del(&args(Command::Del, "a", conf(&tmp.0, V4, &prev))).expect("del with hint");
        assert!(!tmp.0.join("net/10.1.0.2").exists() && tmp.0.join("net/10.1.0.3").exists());
        del(&args(Command::Del, "a", conf(&tmp.0, V4, &prev))).expect("del again");
        del(&args(Command::Del, "b", c.clone())).expect("del b by scan");
        assert!(!tmp.0.join("net/10.1.0.3").exists());
        // A hint pointing at someone else's reservation never releases it.
        let c2 = add(&args(Command::Add, "c", c.clone())).expect("c");
        let prev = format!(r#","prevResult":{}"#, c2.to_json("1.1.0"));
        del(&args(Command::Del, "x", conf(&tmp.0, V4, &prev))).expect("del x");
        assert!(tmp
            .0
            .join("net")
            .join(c2.ips[0].address.addr().to_string())
            .exists());
        // Nothing ever reserved in this data dir.
        let empty = TempDir::new("del-empty");
        del(&args(Command::Del, "a", conf(&empty.0, V4, ""))).expect("missing dir");
        assert!(!empty.0.join("net").exists());
    }

    #[test]
    fn check_against_prev_result() {
        let tmp = TempDir::new("check");
        let c = conf(&tmp.0, V4, "");
        let e = check(&args(Command::Check, "a", c.clone())).expect_err("no dir");
        assert_eq!(e.code, Code::CheckFailed);
        let a = add(&args(Command::Add, "a", c.clone())).expect("a");
        let prev = format!(r#","prevResult":{}"#, a.to_json("1.1.0"));
        check(&args(Command::Check, "a", conf(&tmp.0, V4, &prev))).expect("holds it");
        fs::remove_file(tmp.0.join("net/10.1.0.2")).expect("rm");
        let e = check(&args(Command::Check, "a", conf(&tmp.0, V4, &prev))).expect_err("lost it");
        assert_eq!(e.code, Code::CheckFailed);
        assert!(
            e.msg
                .starts_with("10.1.0.2 from prevResult is not reserved"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn gc_releases_exactly_the_stale_ones() {
        let tmp = TempDir::new("gc");
        let c = conf(&tmp.0, V4, "");
        for id in ["a", "b", "c"] {
            add(&args(Command::Add, id, c.clone())).expect("add");
        }
        fs::write(tmp.0.join("net/10.1.0.9"), "old-valid").expect("write");
        fs::write(tmp.0.join("net/10.1.0.10"), "old-stale").expect("write");
        let e = gc(&args(Command::Gc, "", c.clone())).expect_err("list required");
        assert_eq!(
            (e.code, e.msg.as_str()),
            (
                Code::InvalidConfig,
                "cni.dev/valid-attachments: required for GC"
            )
        );
        let valid = r#","cni.dev/valid-attachments":[{"containerID":"b","ifname":"eth0"},{"containerID":"old-valid","ifname":"eth0"},{"containerID":"c","ifname":"net1"}]"#;
        gc(&args(Command::Gc, "", conf(&tmp.0, V4, valid))).expect("gc");
        assert_eq!(
            files(&tmp.0),
            ["10.1.0.3", "10.1.0.9", "last_reserved_ip.0", "lock"]
        );
    }

    #[test]
    fn exhausted_second_set_rolls_back_on_disk() {
        let tmp = TempDir::new("exhaust");
        let ipam = r#""ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"10.2.0.0/30"}]]"#;
        let c = conf(&tmp.0, ipam, "");
        add(&args(Command::Add, "a", c.clone())).expect("a");
        let e = add(&args(Command::Add, "b", c.clone())).expect_err("b");
        assert_eq!(e.code, Code::RangeExhausted);
        assert_eq!(
            files(&tmp.0),
            [
                "10.1.0.2",
                "10.2.0.2",
                "last_reserved_ip.0",
                "last_reserved_ip.1",
                "lock"
            ]
        );
        let e = status(&args(Command::Status, "", c.clone())).expect_err("full");
        assert_eq!(e.code, Code::NotAvailable);
        assert!(
            e.msg.contains("range set 10.2.0.1-10.2.0.2 is full"),
            "{}",
            e.msg
        );
        del(&args(Command::Del, "a", c.clone())).expect("del");
        status(&args(Command::Status, "", c)).expect("room again");
    }

    #[test]
    fn requested_ip_from_cni_args() {
        let tmp = TempDir::new("static");
        let c = conf(&tmp.0, V4, "");
        let mut a = args(Command::Add, "a", c.clone());
        a.args = vec![("IP".into(), "10.1.0.77".into())];
        assert_eq!(addrs(&add(&a).expect("static")), ["10.1.0.77/24"]);
        let mut b = args(Command::Add, "b", c.clone());
        b.args = vec![("IP".into(), "10.1.0.77".into())];
        assert_eq!(add(&b).expect_err("taken").code, Code::TryAgainLater);
        b.args = vec![("IP".into(), "10.9.0.1".into())];
        assert_eq!(add(&b).expect_err("outside").code, Code::InvalidConfig);
        // Requested IPs never block DEL.
        del(&b).expect("del");
    }

    #[test]
    fn concurrent_adds_get_distinct_addresses() {
        let tmp = TempDir::new("concurrent");
        let c = conf(&tmp.0, r#""ranges":[[{"subnet":"10.1.0.0/23"}]]"#, "");
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    (0..25)
                        .map(|i| {
                            let r = add(&args(Command::Add, &format!("c{t}-{i}"), c.clone()))
                                .expect("add");
                            r.ips[0].address.addr()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<IpAddr> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 200);
        assert_eq!(files(&tmp.0).len(), 200 + 2);
    }

    #[test]
    fn invalid_config_is_reported_for_every_command() {
        let tmp = TempDir::new("invalid");
        let c = conf(
            &tmp.0,
            r#""ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.2.0.5"}]]"#,
            "",
        );
        for cmd in [Command::Add, Command::Del, Command::Check, Command::Status] {
            let e = match cmd {
                Command::Add => add(&args(cmd, "a", c.clone())).map(|_| ()),
                Command::Del => del(&args(cmd, "a", c.clone())),
                Command::Check => check(&args(cmd, "a", c.clone())),
                _ => status(&args(cmd, "", c.clone())),
            }
            .expect_err("invalid");
            assert_eq!(e.code, Code::InvalidConfig);
            assert_eq!(
                e.msg,
                "ipam.ranges[0][0].rangeStart: 10.2.0.5 is outside subnet 10.1.0.0/24"
            );
        }
    }

    #[test]
    fn plugin_runs_through_the_skel() {
        let tmp = TempDir::new("skel");
        let stdin = conf(&tmp.0, V4, "");
        let env = |k: &str| match k {
            "CNI_COMMAND" => Some("ADD".to_string()),
            "CNI_CONTAINERID" => Some("a".to_string()),
            "CNI_IFNAME" => Some("eth0".to_string()),
            "CNI_NETNS" => Some("/run/netns/x".to_string()),
            "CNI_PATH" => Some("/opt/cni/bin".to_string()),
            _ => None,
        };
        let (out, code) = crate::skel::run(&HostLocal, env, stdin);
        assert_eq!(code, 0, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["ips"][0]["address"], "10.1.0.2/24");
        assert_eq!(v["ips"][0]["gateway"], "10.1.0.1");
    }
}
