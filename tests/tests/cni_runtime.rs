//! The kubelet's CNI caller (`kubelet::cni`) with
//! real plugins on the real kernel: ours and the reference ones, a "host"
//! and a pod namespace created by the test, never the machine's own. And
//! `knode-pause` as the process a pod's sandbox runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use knode_tests::{our_bin, require_root, unique, TempDir};
use netns_tests::{TestNs, REFERENCE_CNI_DIR};
use serde_json::{json, Value};

use kubelet::cni::{Attachment, Cni};

// ---- knode-pause ----

fn pause() -> PathBuf {
    our_bin("knode-pause")
}

/// Waits for `child` to exit, at most `limit`.
fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("signal");
}

/// Waits until the process catches SIGINT, SIGTERM and SIGCHLD (its
/// handlers are installed; `SigCgt` in /proc/PID/status).
fn wait_handlers(pid: u32) {
    let want: u64 =
        (1 << (libc::SIGINT - 1)) | (1 << (libc::SIGTERM - 1)) | (1 << (libc::SIGCHLD - 1));
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .unwrap_or(0);
        if caught & want == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("knode-pause (pid {pid}) never installed its signal handlers");
}

/// The state letter of a process (`S`, `Z`, ...), `None` once it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(") ").next()?.chars().next()
}

/// Every process whose parent is `ppid`, with its state.
fn children(ppid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let mut rest = stat.rsplit(") ").next().unwrap_or("").split(' ');
        let state = rest.next().and_then(|s| s.chars().next()).unwrap_or('?');
        if rest.next().and_then(|p| p.parse::<u32>().ok()) == Some(ppid) {
            out.push((pid, state));
        }
    }
    out
}

#[test]
fn pause_exits_0_on_sigterm_and_sigint() {
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        let mut child = Command::new(pause())
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_handlers(child.id());
        // Still there: it waits for a signal, it does not exit by itself.
        assert_eq!(child.try_wait().unwrap(), None);
        let t = Instant::now();
        signal(child.id(), sig);
        let status = wait_exit(&mut child, Duration::from_secs(5)).expect("exits after the signal");
        assert_eq!(status.code(), Some(0), "{sig}: {status}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{sig}: {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn pause_reaps_the_zombies_it_inherits() {
    // The shell starts two children and then becomes knode-pause (same pid),
    // so they are knode-pause's children: `true` has exited before
    // knode-pause ran (a zombie from the start), `sleep` exits later (a
    // SIGCHLD while it pauses). Without reaping, both stay as zombies.
    let mut child = Command::new("sh")
        .args(["-c", "true & sleep 0.5 & exec \"$0\""])
        .arg(pause())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen_sleep = false;
    loop {
        let kids = children(pid);
        if kids.iter().any(|&(_, s)| s != 'Z') {
            seen_sleep = true;
        }
        if seen_sleep && kids.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("knode-pause left children {kids:?} (Z = unreaped zombie)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Reaping did not end it: it still holds the namespaces.
    assert_eq!(proc_state(pid).map(|s| s != 'Z'), Some(true));
    signal(pid, nix::sys::signal::Signal::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(5)).expect("exits");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn pause_prints_its_version_and_refuses_other_arguments() {
    let out = Command::new(pause()).arg("-v").output().unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("knode-pause "),
        "{out:?}"
    );
    let out = Command::new(pause()).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
}

/// True when an ELF file asks for a program interpreter (is dynamic).
fn has_interp(path: &Path) -> Result<bool> {
    let b = std::fs::read(path)?;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        bail!("{} is not a 64-bit little-endian ELF file", path.display());
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[32..40].try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let p_type = u32::from_le_bytes(b.get(o..o + 4).context("program header")?.try_into()?);
        if p_type == 3 {
            return Ok(true);
        }
    }
    Ok(false)
}

#[test]
fn pause_is_a_static_binary() {
    let p = pause();
    assert!(
        !has_interp(&p).unwrap(),
        "{} is dynamically linked; the pause image has no loader: build it with scripts/build-pause.sh",
        p.display()
    );
    // The check itself tells the two apart.
    assert!(has_interp(Path::new("/bin/sh")).unwrap());
}

// ---- the CNI caller with real plugins ----

/// The plugins one test runs: a bin dir of symlinks and the conflist.
struct Plugins {
    bin: Vec<(String, PathBuf)>,
    conflist: Value,
    /// The IPAM reservation dir of the network (`dataDir/<name>`).
    reservations: PathBuf,
}

/// Runs ADD, CHECK and DEL for one pod through `Cni` inside `host` and
/// checks what the kernel, the IPAM store and the cache show.
fn exercise(p: &Plugins, dir: &Path) -> Result<()> {
    let host = TestNs::new("host")?;
    let pod = TestNs::new("pod")?;
    // ADD must bring lo up itself.
    pod.sh(&["ip", "link", "set", "lo", "down"])?;
    let bin = dir.join("bin");
    let conf = dir.join("conf");
    let cache = dir.join("cache");
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(&conf)?;
    for (name, target) in &p.bin {
        std::os::unix::fs::symlink(target, bin.join(name))?;
    }
    std::fs::write(conf.join("10-net.conflist"), p.conflist.to_string())?;
    let cni = Cni::new(bin, conf, cache.clone());
    let att = Attachment {
        container_id: unique("ctr-"),
        netns: pod.path().to_path_buf(),
        ifname: "eth0".into(),
        pod_namespace: "default".into(),
        pod_name: "web".into(),
        pod_uid: unique("uid-"),
    };
    let in_host = |what: &'static str| {
        let cni = cni.clone();
        let att = att.clone();
        host.run(move || -> Result<Option<kubelet::cni::AddResult>> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                match what {
                    "add" => cni.add(&att).await.map(Some),
                    "check" => cni.check(&att).await.map(|()| None),
                    _ => cni.del(&att).await.map(|()| None),
                }
            })
        })?
    };

    let r = in_host("add")?.context("ADD result")?;
    let ip = r
        .ips
        .iter()
        .find(|n| n.addr().is_ipv4())
        .with_context(|| format!("no IPv4 in {}", r.raw))?
        .addr()
        .to_string();
    assert!(ip.starts_with("10.77.0."), "{ip} from the subnet");
    let eth0 = pod.sh(&["ip", "-o", "addr", "show", "dev", "eth0"])?;
    assert!(eth0.contains(&format!("inet {ip}/24")), "{eth0}");
    let lo = pod.sh(&["ip", "-o", "link", "show", "lo"])?;
    assert!(lo.contains(",UP"), "lo is up: {lo}");
    assert!(
        host.ping(&ip),
        "the host reaches the pod at {ip} over the bridge"
    );
    assert!(p.reservations.join(&ip).is_file(), "{ip} reserved");
    let net = p.conflist["name"].as_str().unwrap_or_default();
    let cache_file = cache
        .join("results")
        .join(format!("{net}-{}-eth0", att.container_id));
    assert!(cache_file.is_file(), "{} cached", cache_file.display());
    assert_eq!(cni.cached(&att.container_id, "eth0")?.as_ref(), Some(&r));
    assert_eq!(cni.cached_ids()?, std::slice::from_ref(&att.container_id));
    assert_eq!(
        host.sh(&["ip", "-o", "link", "show", "type", "veth"])?
            .lines()
            .count(),
        1
    );

    in_host("check")?;

    in_host("del")?;
    assert_eq!(
        host.sh(&["ip", "-o", "link", "show", "type", "veth"])?,
        "",
        "veth removed"
    );
    assert!(
        pod.sh(&["ip", "-o", "link", "show", "eth0"]).is_err(),
        "eth0 gone"
    );
    assert!(!p.reservations.join(&ip).exists(), "{ip} released");
    assert!(!cache_file.exists(), "cache entry removed");
    assert_eq!(cni.cached_ids()?, Vec::<String>::new());
    // Again, with everything gone: still fine.
    in_host("del")?;

    // A pod whose namespace vanished first (a crash, a reboot): DEL still
    // releases its address and its cache entry.
    let r = in_host("add")?.context("second ADD result")?;
    let ip = r.ips[0].addr().to_string();
    assert!(p.reservations.join(&ip).is_file(), "{ip} reserved again");
    drop(pod);
    assert!(!att.netns.exists());
    in_host("del")?;
    assert!(
        !p.reservations.join(&ip).exists(),
        "{ip} released without a netns"
    );
    assert_eq!(cni.cached_ids()?, Vec::<String>::new());
    Ok(())
}

#[test]
fn our_plugins_add_check_del() -> Result<()> {
    if !require_root("our_plugins_add_check_del") {
        return Ok(());
    }
    let dir = TempDir::new("cni-rt")?;
    // The conflist the agent writes, with the IPAM store in the temp dir.
    let conf = dir.path().join("default");
    let written = kubelet::cni::ensure_default_conflist(
        &conf,
        &kubelet::cni::PodNetwork {
            subnet: "10.77.0.0/24",
            subnet6: None,
            mtu: None,
            ip_masq: true,
        },
    )?
    .context("written")?;
    let mut conflist: Value = serde_json::from_slice(&std::fs::read(written)?)?;
    let data = dir.path().join("ipam");
    conflist["plugins"][0]["ipam"]["dataDir"] = json!(data);
    let plugins = Plugins {
        bin: ["knode-bridge", "knode-host-local", "knode-loopback"]
            .iter()
            .map(|n| (n.to_string(), our_bin(n)))
            .collect(),
        reservations: data.join("knode"),
        conflist,
    };
    exercise(&plugins, dir.path())
}

#[test]
fn reference_plugins_add_check_del() -> Result<()> {
    if !require_root("reference_plugins_add_check_del") {
        return Ok(());
    }
    let reference = Path::new(REFERENCE_CNI_DIR);
    if !reference.join("bridge").is_file() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{REFERENCE_CNI_DIR}/bridge missing: install containernetworking-plugins"
        );
        eprintln!(
            "SKIP reference_plugins_add_check_del: no reference plugins in {REFERENCE_CNI_DIR}"
        );
        return Ok(());
    }
    let dir = TempDir::new("cni-ref")?;
    let data = dir.path().join("ipam");
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "refnet",
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": "10.77.0.0/24" }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": data,
            }
        }]
    });
    let plugins = Plugins {
        // No knode-loopback here: the reference loopback is used.
        bin: ["bridge", "host-local", "loopback"]
            .iter()
            .map(|n| (n.to_string(), reference.join(n)))
            .collect(),
        reservations: data.join("refnet"),
        conflist,
    };
    exercise(&plugins, dir.path())
}
