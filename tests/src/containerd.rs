//! A private containerd per test: Debian's containerd (1.6) with its own
//! root, state and socket under a temp dir, the CRI plugin disabled, and its
//! log kept for failure messages. On drop every task it runs is killed, its
//! shims are stopped, leftover mounts under its dirs are detached and the
//! dirs removed (also when the test fails).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::TempDir;

/// containerd's binary (Debian package `containerd`).
pub const CONTAINERD: &str = "/usr/bin/containerd";
/// containerd's own CLI, used by tests and the raw-containerd benchmark.
pub const CTR: &str = "/usr/bin/ctr";

/// True when the test may run. Without containerd it skips with a reason,
/// except under `CI=true`, where a skip is a failure.
pub fn require_containerd(test: &str) -> bool {
    if Path::new(CONTAINERD).is_file() && Path::new(CTR).is_file() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs {CONTAINERD} (Debian containerd), and CI=true forbids skipping");
    }
    eprintln!("SKIP {test}: needs {CONTAINERD} (apt-get install containerd runc)");
    false
}

/// Starts containerd with the config in `dir`, appending to its log.
fn spawn(dir: &Path) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))?;
    Command::new(CONTAINERD)
        .arg("--config")
        .arg(dir.join("config.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start containerd")
}

/// One running private containerd.
pub struct Containerd {
    child: Option<Child>,
    // Dropped last: containerd is stopped before its dirs go.
    dir: TempDir,
}

impl Containerd {
    /// Starts containerd and waits until it answers on its socket.
    pub fn start() -> Result<Containerd> {
        let dir = TempDir::new("containerd")?;
        let d = dir.path();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("containerd.sock").display(),
            opt = d.join("opt").display(),
        );
        std::fs::write(d.join("config.toml"), config)?;
        std::fs::File::create(d.join("containerd.log"))?;
        let child = spawn(d)?;
        let mut c = Containerd {
            child: Some(child),
            dir,
        };
        c.wait_ready()?;
        Ok(c)
    }

    /// Stops this containerd (SIGKILL, as a crash) and starts it again on
    /// the same root, state and socket. Shims and the containers they run
    /// are separate processes and keep running.
    pub fn restart(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().context("kill containerd")?;
            c.wait().context("reap containerd")?;
        }
        self.child = Some(spawn(self.dir.path())?);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("containerd exited with {status}:\n{}", self.log());
                }
            }
            if self.socket().exists() {
                let ok = Command::new(CTR)
                    .args(["--address"])
                    .arg(self.socket())
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if ok {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("containerd did not answer in 20s:\n{}", self.log())
    }

    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// containerd's root dir (content store, snapshots, metadata).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// A `ctr` command against this containerd in namespace `ns`.
    pub fn ctr(&self, ns: &str) -> Command {
        let mut c = Command::new(CTR);
        c.arg("--address").arg(self.socket()).args(["-n", ns]);
        c
    }

    /// Running task PIDs by container id in namespace `ns` (`ctr tasks ls`).
    pub fn task_pids(&self, ns: &str) -> Result<std::collections::BTreeMap<String, String>> {
        let out = self.ctr_out(ns, &["tasks", "ls"])?;
        Ok(out
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3 && f[2] == "RUNNING").then(|| (f[0].to_string(), f[1].to_string()))
            })
            .collect())
    }

    /// Runs `ctr -n NS ARGS` and returns its stdout; fails with stderr.
    pub fn ctr_out(&self, ns: &str, args: &[&str]) -> Result<String> {
        let out = self.ctr(ns).args(args).output().context("run ctr")?;
        if !out.status.success() {
            bail!(
                "ctr {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Lines of `ctr -n NS ARGS -q` (ids only).
    pub fn ids(&self, ns: &str, args: &[&str]) -> Result<Vec<String>> {
        Ok(self
            .ctr_out(ns, args)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Kills every task in every namespace and deletes tasks and containers.
    fn kill_everything(&self) {
        let Ok(namespaces) = self.ids("default", &["namespaces", "ls", "-q"]) else {
            return;
        };
        for ns in &namespaces {
            let tasks = self.ids(ns, &["tasks", "ls", "-q"]).unwrap_or_default();
            for t in &tasks {
                let _ = self.ctr_out(ns, &["tasks", "kill", "-a", "-s", "SIGKILL", t]);
            }
            for t in &tasks {
                let _ = self.ctr_out(ns, &["tasks", "rm", "-f", t]);
            }
            for c in self
                .ids(ns, &["containers", "ls", "-q"])
                .unwrap_or_default()
            {
                let _ = self.ctr_out(ns, &["containers", "rm", &c]);
            }
        }
    }
}

/// Processes whose command line mentions `needle` (shims name the
/// containerd socket they serve with `-address`).
fn pids_mentioning(needle: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Detaches every mount below `dir` (deepest first).
pub fn unmount_below(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.kill_everything();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let sock = self.socket().display().to_string();
        for pid in pids_mentioning(&sock) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        unmount_below(self.dir.path());
    }
}

/// A private containerd with the busybox test image in namespace `ns`,
/// and the directory the image was built in; `None` (the test skips) when
/// the machine lacks root, containerd or busybox.
pub fn with_busybox(test: &str, ns: &str) -> Option<(Containerd, TempDir)> {
    use crate::image;
    if !crate::require_root(test) || !require_containerd(test) || !image::require_busybox(test) {
        return None;
    }
    let c = Containerd::start().expect("start containerd");
    let dir = TempDir::new("busybox-img").unwrap();
    let tar = image::busybox_oci_tar(dir.path()).expect("build the busybox image");
    // The layout names the image by its full reference, which ctr keeps
    // only under a matching base name.
    let base = image::BUSYBOX
        .rsplit_once(':')
        .map_or(image::BUSYBOX, |(b, _)| b);
    c.ctr_out(
        ns,
        &[
            "images",
            "import",
            "--base-name",
            base,
            &tar.display().to_string(),
        ],
    )
    .expect("import the busybox image");
    Some((c, dir))
}
