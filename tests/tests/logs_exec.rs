//! Container logs and exec end to end: `knode log-writer` run by a real
//! containerd shim through a task's binary log URI (the CRI format, complete
//! also after the container exits), `knode logs` reading a pod's files
//! (runs, `--previous`, `--tail`, `--timestamps`, `-f` across a restart
//! until the pod is deleted), and `knode exec` into a container started
//! with `ctr` under the labels the agent gives its containers (exit codes,
//! stdout, stderr, stdin, the clear error for a stopped container).
//!
//! The agent in these tests points at a containerd socket that does not
//! exist, so it never runs the pods the tests create (they also name
//! another node): the CLI talks to the test's own containerd.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use knode_tests::agent::Agent;
use knode_tests::containerd::Containerd;
use knode_tests::{image, our_bin, unique, TempDir};
use serde_json::Value;

const IMAGE: &str = image::BUSYBOX;

// ---------------------------------------------------------------- helpers

/// A private containerd with the busybox image in namespace `ns`.
fn containerd_with_image(test: &str, ns: &str) -> Option<(Containerd, TempDir)> {
    knode_tests::containerd::with_busybox(test, ns)
}

/// The task's status as `ctr tasks ls` shows it (RUNNING, STOPPED...).
fn task_status(c: &Containerd, ns: &str, id: &str) -> Result<String> {
    let out = c.ctr_out(ns, &["tasks", "ls"])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f.last().unwrap_or(&"").to_string())
        })
        .next()
        .unwrap_or_default())
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what}: not after {timeout:?}")
}

/// One parsed CRI entry: (time, stream, tag, content).
type Entry = (String, String, String, String);

fn cri_entries(path: &Path) -> Vec<Entry> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "a partial line in {}",
        path.display()
    );
    text.lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let mut next = || f.next().unwrap_or_default().to_string();
            (next(), next(), next(), next())
        })
        .collect()
}

/// Go's url.QueryEscape-safe form of a path (what the agent puts in the
/// binary log URI): every byte but unreserved characters and `/` encoded.
fn encode(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str()
        .as_bytes()
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A `knode agent` that never runs pods (its containerd socket does not
/// exist) with every path in its temp dir; pods' logs go to `log_dir`.
fn idle_agent(dir: &Path) -> Agent {
    let p = |n: &str| dir.join(n).display().to_string();
    let extra = [
        "--containerd-socket".to_string(),
        p("no-containerd.sock"),
        "--log-dir".to_string(),
        p("logs"),
        "--netns-dir".to_string(),
        p("netns"),
        "--cni-conf-dir".to_string(),
        p("cni-conf"),
        "--cni-bin-dir".to_string(),
        p("cni-bin"),
        "--cni-cache-dir".to_string(),
        p("cni-cache"),
        "--pod-manifest-path".to_string(),
        p("manifests"),
    ];
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    Agent::start_with(&extra).expect("start the agent")
}

/// Runs `knode` with `flags` then `args`, feeding `stdin`; kills it after
/// `timeout` (a hang fails the test instead of stalling it).
fn knode(flags: &[String], args: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> Output {
    let mut child = Command::new(our_bin("knode"))
        .args(flags)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run knode");
    if let Some(data) = stdin {
        let mut si = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = si.write_all(&data);
        });
    }
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("knode {args:?} did not finish in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn apply(agent: &Agent, yaml: &str) {
    let out = agent
        .knode_stdin(&["apply", "-f", "-"], Some(yaml))
        .unwrap();
    assert!(out.status.success(), "apply: {}", text(&out.stderr));
}

fn pod_uid(agent: &Agent, name: &str) -> String {
    let out = agent.knode(&["get", "pod", name, "-o", "json"]).unwrap();
    assert!(out.status.success(), "get pod: {}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["metadata"]["uid"].as_str().unwrap().to_string()
}

/// A pod this node does not run (bound to another node).
fn pod_yaml(name: &str, containers: &[&str]) -> String {
    let cs: String = containers
        .iter()
        .map(|c| format!("  - name: {c}\n    image: {IMAGE}\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: another-node\n  containers:\n{cs}"
    )
}

// ------------------------------------------------------------------ tests

/// The shim runs `knode log-writer` for a task created with our binary log
/// URI: stdout and stderr land in the file in the CRI format, long lines
/// are cut at 16 KiB, and output without a final newline is written as a
/// partial entry when the task is deleted. The path has characters a URL
/// query would change.
#[test]
fn the_shim_runs_our_log_writer_and_the_file_is_cri_format() -> Result<()> {
    let ns = unique("knode-logs-");
    let Some((c, _img)) = containerd_with_image("the_shim_runs_our_log_writer", &ns) else {
        return Ok(());
    };
    let dir = TempDir::new("logwriter")?;
    let log = dir.path().join("a b+c%d;e/default_web_uid/app/0.log");
    let uri = format!(
        "binary://{}?log-writer={}",
        encode(&our_bin("knode")),
        encode(&log)
    );
    let id = unique("logs");
    let script = "echo out1; echo err1 >&2; head -c 40000 /dev/zero | tr '\\0' a; echo; \
                  echo out2; echo err2 >&2; printf tail-without-newline";
    c.ctr_out(
        &ns,
        &[
            "run",
            "-d",
            "--log-uri",
            &uri,
            IMAGE,
            &id,
            "sh",
            "-c",
            script,
        ],
    )?;
    wait_for("the task to exit", Duration::from_secs(30), || {
        Ok(task_status(&c, &ns, &id)? == "STOPPED")
    })?;
    // Complete lines are in the file while the task is kept.
    wait_for("err2 in the log", Duration::from_secs(10), || {
        Ok(cri_entries(&log).iter().any(|e| e.3 == "err2"))
    })?;
    c.ctr_out(&ns, &["tasks", "rm", &id])?;
    // Deleting the task ends the streams: the unfinished line follows.
    wait_for("the partial last line", Duration::from_secs(15), || {
        Ok(cri_entries(&log)
            .iter()
            .any(|e| e.3 == "tail-without-newline"))
    })?;
    let entries = cri_entries(&log);
    let of = |stream: &str| -> Vec<(String, String)> {
        entries
            .iter()
            .filter(|e| e.1 == stream)
            .map(|e| (e.2.clone(), e.3.clone()))
            .collect()
    };
    let s = |t: &str, c: &str| (t.to_string(), c.to_string());
    assert_eq!(
        of("stdout"),
        [
            s("F", "out1"),
            s("P", &"a".repeat(16384)),
            s("P", &"a".repeat(16384)),
            s("F", &"a".repeat(40000 - 2 * 16384)),
            s("F", "out2"),
            s("P", "tail-without-newline"),
        ]
    );
    assert_eq!(of("stderr"), [s("F", "err1"), s("F", "err2")]);
    assert_eq!(entries.len(), 8, "nothing else: {entries:?}");
    // RFC 3339 UTC times, never going backwards through the file.
    for e in &entries {
        assert!(e.0.ends_with('Z') && e.0.contains('T'), "{e:?}");
    }
    let times: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    let parsed: Vec<(String, u32)> = times
        .iter()
        .map(|t| {
            let (secs, frac) = t.trim_end_matches('Z').split_once('.').unwrap_or((t, "0"));
            let nanos = format!("{frac:0<9}").parse().unwrap();
            (secs.to_string(), nanos)
        })
        .collect();
    let sorted = {
        let mut s = parsed.clone();
        s.sort();
        s
    };
    assert_eq!(parsed, sorted, "{times:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&log)?.permissions().mode() & 0o777, 0o640);
    c.ctr_out(&ns, &["containers", "rm", &id])?;
    Ok(())
}

/// `knode exec` finds the pod's running container through containerd's
/// labels (the latest running attempt), passes the exit code through,
/// forwards stdout, stderr and, with -i, stdin, and says clearly when the
/// container is not running.
#[test]
fn exec_runs_commands_in_the_pods_running_container() -> Result<()> {
    let ns = unique("knode-exec-");
    let Some((c, _img)) = containerd_with_image("exec_runs_commands", &ns) else {
        return Ok(());
    };
    let dir = TempDir::new("exec")?;
    let agent = idle_agent(dir.path());
    apply(&agent, &pod_yaml("web", &["app", "done"]));
    let uid = pod_uid(&agent, "web");
    let run = |id: &str, container: &str, attempt: u32, cmd: &[&str]| -> Result<()> {
        let labels = [
            format!("io.knode.pod.uid={uid}"),
            format!("io.knode.container.name={container}"),
            format!("io.knode.container.attempt={attempt}"),
        ];
        let mut args = vec!["run", "-d", "--null-io"];
        for l in &labels {
            args.extend(["--label", l.as_str()]);
        }
        args.extend([IMAGE, id]);
        args.extend_from_slice(cmd);
        c.ctr_out(&ns, &args).map(|_| ())
    };
    // `app`: attempt 0 exited, attempt 1 runs. `done`: exited.
    let (app0, app1, done0) = (unique("app0-"), unique("app1-"), unique("done0-"));
    run(&app0, "app", 0, &["true"])?;
    run(&app1, "app", 1, &["sleep", "600"])?;
    run(&done0, "done", 0, &["true"])?;
    for id in [&app0, &done0] {
        wait_for("the task to exit", Duration::from_secs(30), || {
            Ok(task_status(&c, &ns, id)? == "STOPPED")
        })?;
    }
    let flags = vec![
        "--config".to_string(),
        "/dev/null".into(),
        "--data-dir".into(),
        agent.data_dir().display().to_string(),
        "--run-dir".into(),
        agent.run_dir().display().to_string(),
        "--containerd-socket".into(),
        c.socket().display().to_string(),
        "--containerd-namespace".into(),
        ns.clone(),
    ];
    let t = Duration::from_secs(30);
    let exec = |args: &[&str], stdin: Option<&[u8]>| {
        let mut a = vec!["exec", "web"];
        a.extend_from_slice(args);
        knode(&flags, &a, stdin, t)
    };

    // The exit code, stdout and stderr pass through.
    let out = exec(
        &[
            "-c",
            "app",
            "--",
            "sh",
            "-c",
            "echo hi; echo oops >&2; exit 3",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    assert!(text(&out.stderr).contains("oops"), "{}", text(&out.stderr));

    // It ran in the running attempt (whose pid 1 is `sleep 600`).
    let out = exec(&["-c", "app", "--", "cat", "/proc/1/cmdline"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"sleep\x00600\x00");

    // stdin with -i, to its end.
    let input = b"hello\nworld\n".repeat(5000);
    let out = exec(&["-c", "app", "-i", "--", "cat"], Some(&input));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input);
    // Without -i the command gets no stdin (and does not wait for one).
    let out = exec(&["-c", "app", "--", "cat"], Some(b"ignored\n"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");

    // Large output arrives whole.
    let out = exec(
        &[
            "-c",
            "app",
            "--",
            "sh",
            "-c",
            "head -c 300000 /dev/zero | tr '\\0' x",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), 300_000);
    assert!(out.stdout.iter().all(|&b| b == b'x'));

    // No -c with two containers: the first, with a notice (as kubectl).
    let out = exec(&["--", "true"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("Defaulted container \"app\""));

    // The clear errors.
    let out = exec(&["-c", "done", "--", "true"], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("container \"done\" in pod \"web\" is not running"),
        "{}",
        text(&out.stderr)
    );
    let out = exec(&["-c", "nope", "--", "true"], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("container \"nope\" not found in pod \"web\""),
        "{}",
        text(&out.stderr)
    );
    let out = knode(&flags, &["exec", "nope", "--", "true"], None, t);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("pods \"nope\" not found"),
        "{}",
        text(&out.stderr)
    );

    // Nothing left behind: no FIFO dirs, no exec processes.
    let left: Vec<_> = std::fs::read_dir(agent.run_dir().join("exec"))?
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let ps = c.ctr_out(&ns, &["tasks", "ps", &app1])?;
    assert_eq!(
        ps.lines().skip(1).filter(|l| !l.trim().is_empty()).count(),
        1,
        "{ps}"
    );
    Ok(())
}

/// `knode logs` reads the pod's CRI files: the latest run, the one before
/// with --previous, the last lines with --tail, times with --timestamps,
/// and with -f new output and the next run until the pod is deleted.
#[test]
fn logs_reads_and_follows_the_pods_log_files() -> Result<()> {
    let dir = TempDir::new("logs")?;
    let agent = idle_agent(dir.path());
    apply(&agent, &pod_yaml("web", &["app", "side"]));
    apply(&agent, &pod_yaml("solo", &["only"]));
    let uid = pod_uid(&agent, "web");
    let app_dir = dir.path().join(format!("logs/default_web_{uid}/app"));
    std::fs::create_dir_all(&app_dir)?;
    let t0 = "2024-05-01T10:00:00.000000001Z";
    std::fs::write(app_dir.join("0.log"), format!("{t0} stdout F first run\n"))?;
    std::fs::write(
        app_dir.join("1.log"),
        [
            "2024-05-01T10:01:00.5Z stdout P hel",
            "2024-05-01T10:01:00.6Z stderr F warn",
            "2024-05-01T10:01:00.7Z stdout F lo",
            "2024-05-01T10:01:01Z stdout F last",
            "",
        ]
        .join("\n"),
    )?;
    let logs = |args: &[&str]| {
        let mut a = vec!["logs"];
        a.extend_from_slice(args);
        let out = agent.knode(&a).unwrap();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };

    assert_eq!(
        logs(&["web", "-c", "app"]),
        // A line split in partial entries counts where it ends.
        (true, "warn\nhello\nlast\n".into(), String::new())
    );
    assert_eq!(logs(&["web", "-c", "app", "--previous"]).1, "first run\n");
    assert_eq!(logs(&["web", "-c", "app", "--tail", "1"]).1, "last\n");
    assert_eq!(logs(&["web", "-c", "app", "--tail=0"]).1, "");
    assert_eq!(
        logs(&["web", "-c", "app", "--timestamps", "--tail", "2"]).1,
        "2024-05-01T10:01:00.5Z hello\n2024-05-01T10:01:01Z last\n"
    );

    let (ok, _, err) = logs(&["web"]);
    assert!(!ok);
    assert!(
        err.contains("a container name must be specified for pod web, choose one of: [app side]"),
        "{err}"
    );
    let (ok, _, err) = logs(&["web", "-c", "side", "--previous"]);
    assert!(!ok);
    assert!(
        err.contains("previous terminated container \"side\" in pod \"web\" not found"),
        "{err}"
    );
    let (ok, _, err) = logs(&["web", "-c", "side"]);
    assert!(!ok && err.contains("has not started yet"), "{err}");
    let (ok, _, err) = logs(&["web", "-c", "nope"]);
    assert!(
        !ok && err.contains("container \"nope\" not found in pod \"web\""),
        "{err}"
    );
    let (ok, _, err) = logs(&["ghost"]);
    assert!(!ok && err.contains("pods \"ghost\" not found"), "{err}");
    // The only container needs no -c.
    let solo = dir.path().join(format!(
        "logs/default_solo_{}/only",
        pod_uid(&agent, "solo")
    ));
    std::fs::create_dir_all(&solo)?;
    std::fs::write(solo.join("0.log"), format!("{t0} stdout F alone\n"))?;
    assert_eq!(logs(&["solo"]).1, "alone\n");

    // Follow: the backlog (tail), growth, the next run, then the pod's
    // deletion ends it.
    let mut child = Command::new(our_bin("knode"))
        .args(agent.flags())
        .args(["logs", "web", "-c", "app", "-f", "--tail", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| "<nothing in 10s>".into())
    };
    assert_eq!(next(), "last");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(app_dir.join("1.log"))?;
    f.write_all(b"2024-05-01T10:02:00Z stdout F more\n")?;
    assert_eq!(next(), "more");
    std::fs::write(
        app_dir.join("2.log"),
        "2024-05-01T10:03:00Z stderr F restarted\n",
    )?;
    assert_eq!(next(), "restarted");
    // No kubelet runs here (no containerd) to finish a graceful delete:
    // force it, as one would with kubectl.
    let out = agent.knode(&["delete", "pod", "web", "--force"])?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("knode logs -f still runs 10s after the pod was deleted");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err)?;
    assert!(status.success(), "{err}");
    Ok(())
}
