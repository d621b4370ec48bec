//! Container log rotation end to end: an agent with a small
//! `container-log-max-size` runs containers that write past it many times;
//! each run keeps at most `container-log-max-files` files, and `knode logs`
//! (with `--tail` and `--previous`) still shows the newest lines in order.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use knode_tests::node::Node;

const BUSYBOX: &str = knode_tests::image::BUSYBOX;
const MAX_FILES: usize = 3;

/// The files in the directory of the pod's container `c` whose name starts
/// with `prefix`.
fn log_files(n: &Node, pod_uid: &str, pod: &str, c: &str, prefix: &str) -> Vec<String> {
    let dir = n
        .path("logs")
        .join(format!("default_{pod}_{pod_uid}"))
        .join(c);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| f.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn wait(what: &str, limit: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !done()? {
        if Instant::now() > deadline {
            bail!("{what}: not after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// `line 0000` .. `line 2999`: about 30 KiB of CRI entries, ten times the
/// 4Ki limit.
const WRITE: &str = "i=0; while [ $i -lt 3000 ]; do printf 'line %04d\\n' $i; i=$((i+1)); done";

/// The numbers of `line NNNN` lines, which must follow each other.
fn numbers(text: &str) -> Vec<u32> {
    let n: Vec<u32> = text
        .lines()
        .filter_map(|l| l.strip_prefix("line ")?.parse().ok())
        .collect();
    assert!(
        n.windows(2).all(|w| w[1] == w[0] + 1),
        "lines out of order: {n:?}"
    );
    n
}

#[test]
fn rotated_logs_keep_at_most_n_files_and_logs_shows_the_tail() -> Result<()> {
    let Some(n) = Node::for_test_with(
        "rotated_logs_keep_at_most_n_files_and_logs_shows_the_tail",
        &[
            "--container-log-max-size",
            "4Ki",
            "--container-log-max-files",
            &MAX_FILES.to_string(),
        ],
    ) else {
        return Ok(());
    };
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: chatty}}
spec:
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "{WRITE}; echo done; sleep 3600"]
---
apiVersion: v1
kind: Pod
metadata: {{name: restarts}}
spec:
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "{WRITE}; exit 1"]
"#
    ))?;
    let p = n.wait_running("chatty")?;
    let uid = p["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    wait("the last line logged", Duration::from_secs(60), || {
        Ok(n.knode(&["logs", "chatty", "--tail", "1"])? == "done\n")
    })?;
    let files = log_files(&n, &uid, "chatty", "app", "0.log");
    assert!(
        files.len() == MAX_FILES && files.contains(&"0.log".to_string()),
        "{files:?}"
    );
    assert_eq!(
        n.knode(&["logs", "chatty", "--tail", "3"])?,
        "line 2998\nline 2999\ndone\n"
    );
    // Everything that is kept, in order, up to the last line.
    let all = n.knode(&["logs", "chatty"])?;
    let kept = numbers(&all);
    assert_eq!(kept.last(), Some(&2999));
    assert!(kept.len() < 3000, "older lines were rotated away");

    // A run that ended: --previous reads its rotated files too.
    let p = n.wait_pod("restarts", Duration::from_secs(90), |p| {
        p["status"]["containerStatuses"][0]["restartCount"].as_i64() >= Some(1)
    })?;
    assert!(p["status"]["containerStatuses"][0]["lastState"]["terminated"].is_object());
    let previous = n.knode(&["logs", "restarts", "--previous"])?;
    assert_eq!(numbers(&previous).last(), Some(&2999));
    assert_eq!(
        n.knode(&["logs", "restarts", "--previous", "--tail", "1"])?,
        "line 2999\n"
    );
    Ok(())
}
