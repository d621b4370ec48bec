//! Container logs on the node, laid out as kubelet lays them out:
//! `<log-dir>/<ns>_<pod>_<uid>/<container>/<attempt>.log`, one file per run,
//! in the CRI log format. containerd's shim hands each container's stdout
//! and stderr to `knode log-writer` (a binary logging URI), so output keeps
//! flowing to the file while the agent is down; the agent never holds a
//! container's pipes itself. `knode logs` reads the files back.

pub mod cri;
pub mod reader;
pub mod view;
pub mod writer;

use std::path::{Path, PathBuf};

/// The directory of all of one pod's logs.
pub fn pod_log_dir(log_dir: &Path, namespace: &str, pod: &str, uid: &str) -> PathBuf {
    log_dir.join(format!("{namespace}_{pod}_{uid}"))
}

/// The directory of one container's logs: a file per run (attempt).
pub fn container_log_dir(
    log_dir: &Path,
    namespace: &str,
    pod: &str,
    uid: &str,
    container: &str,
) -> PathBuf {
    pod_log_dir(log_dir, namespace, pod, uid).join(container)
}

/// The log file of run `attempt` (0 for the first start) of a container.
pub fn path(
    log_dir: &Path,
    namespace: &str,
    pod: &str,
    uid: &str,
    container: &str,
    attempt: u32,
) -> PathBuf {
    container_log_dir(log_dir, namespace, pod, uid, container).join(format!("{attempt}.log"))
}

/// The stdout/stderr URI for a task whose output `knode log-writer` writes
/// to `log_path`: `binary:///path/to/knode?log-writer=/path/to/N.log`, with
/// `&max-size=BYTES&max-files=N` when the file is rotated. The
/// shim passes the query as argv (`knode log-writer PATH`), after decoding
/// it as a URL, so both paths are percent-encoded: a `+`, space, `%`, `&`
/// or `;` in a directory name must reach the writer unchanged. The same URI
/// serves stdout and stderr (the shim reads the scheme from stdout's).
pub fn stdio_uri(knode_exe: &Path, log_path: &Path, rotation: Option<writer::Rotation>) -> String {
    let mut uri = format!(
        "binary://{}?{}={}",
        percent_encode(knode_exe),
        writer::ARG_PATH,
        percent_encode(log_path)
    );
    if let Some(r) = rotation {
        uri.push_str(&format!(
            "&{}={}&{}={}",
            writer::ARG_MAX_SIZE,
            r.max_size,
            writer::ARG_MAX_FILES,
            r.max_files
        ));
    }
    uri
}

/// Removes all logs of a pod (at teardown). Logs that are already gone are
/// fine.
pub fn remove_pod_logs(
    log_dir: &Path,
    namespace: &str,
    pod: &str,
    uid: &str,
) -> std::io::Result<()> {
    match std::fs::remove_dir_all(pod_log_dir(log_dir, namespace, pod, uid)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Percent-encodes every byte of a path but RFC 3986's unreserved
/// characters and `/`, which Go's URL parser keeps as they are both in a
/// path and in a query value.
fn percent_encode(p: &Path) -> String {
    use std::fmt::Write;
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in p.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths_follow_kubelets_layout() {
        let p = path(
            Path::new("/var/log/pods"),
            "default",
            "web",
            "u-1",
            "httpd",
            3,
        );
        assert_eq!(p, Path::new("/var/log/pods/default_web_u-1/httpd/3.log"));
        assert_eq!(
            pod_log_dir(Path::new("/l"), "ns", "p", "u"),
            Path::new("/l/ns_p_u")
        );
    }

    #[test]
    fn uri_encodes_what_a_url_query_would_change() {
        let u = stdio_uri(
            Path::new("/usr/bin/knode"),
            Path::new("/var/log/pods/a b+c%d&e;f=g/0.log"),
            None,
        );
        assert_eq!(
            u,
            "binary:///usr/bin/knode?log-writer=/var/log/pods/a%20b%2Bc%25d%26e%3Bf%3Dg/0.log"
        );
        let u = stdio_uri(
            Path::new("/opt/my knode/knode"),
            Path::new("/l/0.log"),
            None,
        );
        assert_eq!(u, "binary:///opt/my%20knode/knode?log-writer=/l/0.log");
        let r = writer::Rotation {
            max_size: 10 << 20,
            max_files: 5,
        };
        let u = stdio_uri(Path::new("/k"), Path::new("/l/0.log"), Some(r));
        assert_eq!(
            u,
            "binary:///k?log-writer=/l/0.log&max-size=10485760&max-files=5"
        );
    }

    #[test]
    fn removing_logs_twice_is_fine() {
        let dir = std::env::temp_dir().join(format!("knode-logs-rm-{}", std::process::id()));
        let f = path(&dir, "ns", "p", "u", "c", 0);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, "x").unwrap();
        remove_pod_logs(&dir, "ns", "p", "u").unwrap();
        assert!(!pod_log_dir(&dir, "ns", "p", "u").exists());
        remove_pod_logs(&dir, "ns", "p", "u").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
