//! What a reader of a container's logs asks for, as kubelet's
//! `PodLogOptions` puts it: which container (kubectl's rules for choosing
//! one), which run (`previous`), and how much (`tailLines`, `sinceTime`,
//! `limitBytes`, `timestamps`). Shared by `knode logs` and the API's
//! `pods/<name>/log`, which differ only in where the bytes go.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

use super::reader::{self, Message};

/// The annotation that names the container kubectl picks by default.
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// How much of the output, and how it is shown.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only the last N lines of what is there (new lines all follow).
    pub tail: Option<usize>,
    /// Only lines written at or after this time.
    pub since: Option<Timestamp>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<usize>,
    /// Each line starts with its RFC 3339 timestamp.
    pub timestamps: bool,
}

/// Applies [`Options`] to messages as they are read: holds the backlog's
/// last lines for `tail`, drops older ones for `since`, cuts at
/// `limit_bytes`.
#[derive(Debug)]
pub struct Shaper {
    opts: Options,
    held: Option<VecDeque<Message>>,
    written: usize,
}

impl Shaper {
    pub fn new(opts: Options) -> Shaper {
        Shaper {
            held: opts.tail.map(|_| VecDeque::new()),
            opts,
            written: 0,
        }
    }

    /// Whether `limit_bytes` has been reached: nothing more will be shown.
    pub fn full(&self) -> bool {
        self.opts.limit_bytes.is_some_and(|l| self.written >= l)
    }

    /// One message: shown (appended to `out`), held for `tail`, or dropped.
    pub fn push(&mut self, m: Message, out: &mut Vec<u8>) {
        if self.opts.since.is_some_and(|s| m.time < s) {
            return;
        }
        if let (Some(held), Some(n)) = (&mut self.held, self.opts.tail) {
            if n > 0 {
                if held.len() == n {
                    held.pop_front();
                }
                held.push_back(m);
            }
            return;
        }
        self.write(&m, out);
    }

    /// The backlog is read: what `tail` held is shown, and from now on
    /// everything is.
    pub fn end_of_backlog(&mut self, out: &mut Vec<u8>) {
        if let Some(held) = self.held.take() {
            for m in held {
                self.write(&m, out);
            }
        }
    }

    fn write(&mut self, m: &Message, out: &mut Vec<u8>) {
        if self.full() {
            return;
        }
        let start = out.len();
        m.render(self.opts.timestamps, out);
        let mut n = out.len() - start;
        if let Some(limit) = self.opts.limit_bytes {
            let room = limit.saturating_sub(self.written);
            if n > room {
                out.truncate(start + room);
                n = room;
            }
        }
        self.written += n;
    }
}

/// Reads one run's whole log (its rotated files, then the live one)
/// through `shaper`, handing each piece of output to `sink`; returns the
/// lines skipped as malformed.
pub fn read_run(
    dir: &Path,
    run: u32,
    shaper: &mut Shaper,
    sink: &mut impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let files = reader::run_files(dir, run)?;
    let mut d = reader::Decoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    for (i, path) in files.iter().enumerate() {
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            // A rotated file pruned while we listed: its lines are gone.
            Err(e) if e.kind() == io::ErrorKind::NotFound && i + 1 < files.len() => continue,
            Err(e) => return Err(e),
        };
        loop {
            let n = io::Read::read(&mut f, &mut buf)?;
            if n == 0 || shaper.full() {
                break;
            }
            d.feed(&buf[..n], &mut |m| shaper.push(m, &mut out));
            sink(&out)?;
            out.clear();
        }
    }
    d.finish(&mut |m| shaper.push(m, &mut out));
    shaper.end_of_backlog(&mut out);
    sink(&out)?;
    Ok(d.malformed)
}

/// How often a followed file is checked for growth.
pub const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(200);
/// How often following asks whether the pod still exists.
const ALIVE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// A boxed I/O future, for [`Follower`]'s methods.
pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'a>>;

/// Whoever follows a log: where the output goes, and whether the pod is
/// still there.
pub trait Follower: Send {
    /// Takes a piece of output; an error (the reader went away) ends it.
    fn write<'a>(&'a mut self, bytes: &'a [u8]) -> IoFuture<'a, ()>;
    /// Whether the pod still exists (checked about once a second).
    fn alive(&mut self) -> IoFuture<'_, bool>;
}

/// Follows a container's logs from run `start` (or the first that
/// appears): what is there, then what comes, into `to`, until the pod is
/// gone, `to` fails (the reader went away) or `limit_bytes` is reached.
/// Returns the lines skipped as malformed.
pub async fn follow(
    dir: &Path,
    start: Option<u32>,
    shaper: &mut Shaper,
    to: &mut dyn Follower,
) -> io::Result<u64> {
    let mut f = reader::Follower::new(dir, start);
    let mut out = Vec::new();
    f.poll(&mut |m| shaper.push(m, &mut out))?;
    shaper.end_of_backlog(&mut out);
    to.write(&out).await?;
    let mut checked = std::time::Instant::now();
    while !shaper.full() {
        out.clear();
        tokio::time::sleep(FOLLOW_POLL).await;
        if !f.poll(&mut |m| shaper.push(m, &mut out))? {
            // Quiet: a line still waiting for its end is shown as it is.
            f.flush_partial(&mut |m| shaper.push(m, &mut out));
        }
        if !out.is_empty() {
            to.write(&out).await?;
        }
        if checked.elapsed() >= ALIVE_CHECK {
            checked = std::time::Instant::now();
            if !to.alive().await? {
                break;
            }
        }
    }
    out.clear();
    f.finish(&mut |m| shaper.push(m, &mut out))?;
    to.write(&out).await?;
    Ok(f.malformed())
}

/// The pod's app container names, then its init container names.
pub fn names(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let spec = pod.spec.as_ref();
    let app = spec
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    let init = spec
        .and_then(|s| s.init_containers.as_ref())
        .map(|cs| cs.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    (app, init)
}

/// The container `wanted` names, checked to exist in the pod.
pub fn named(pod: &Pod, pod_name: &str, wanted: &str) -> Result<String, String> {
    let (app, init) = names(pod);
    if app.iter().chain(&init).any(|n| n == wanted) {
        return Ok(wanted.to_string());
    }
    Err(format!(
        "container \"{wanted}\" not found in pod \"{pod_name}\" (choose one of: [{}])",
        app.iter()
            .chain(&init)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    ))
}

/// The annotated default container, if it exists in the pod.
pub fn annotated_default(pod: &Pod) -> Option<String> {
    let want = pod.metadata.annotations.as_ref()?.get(DEFAULT_CONTAINER)?;
    names(pod).0.into_iter().find(|n| n == want)
}

/// Container `name`'s `restartCount` in the pod's status (app or init).
pub fn restart_count(pod: &Pod, name: &str) -> Option<u32> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .chain(status.init_container_statuses.iter())
        .flatten()
        .find(|c| c.name == name)
        .and_then(|c| u32::try_from(c.restart_count).ok())
}

/// The container logs are read from: `wanted`, else the annotated
/// default, else the only one; with several, the reader must choose (as
/// kubectl and kube-apiserver say).
pub fn log_container(pod: &Pod, pod_name: &str, wanted: Option<&str>) -> Result<String, String> {
    if let Some(w) = wanted.filter(|w| !w.is_empty()) {
        return named(pod, pod_name, w);
    }
    if let Some(d) = annotated_default(pod) {
        return Ok(d);
    }
    let (app, init) = names(pod);
    match app.as_slice() {
        [] => Err(format!("pod \"{pod_name}\" has no containers")),
        [only] => Ok(only.clone()),
        _ => {
            let mut msg = format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                app.join(" ")
            );
            if !init.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            Err(msg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::cri::Stream;

    fn msg(i: i64) -> Message {
        Message {
            time: Timestamp::from_second(i).unwrap(),
            stream: Stream::Stdout,
            content: format!("{i}\n").into_bytes(),
        }
    }

    fn shape(opts: Options, n: i64) -> String {
        let mut s = Shaper::new(opts);
        let mut out = Vec::new();
        for i in 0..n {
            s.push(msg(i), &mut out);
        }
        s.end_of_backlog(&mut out);
        // After the backlog, every line is shown (still since/limit).
        s.push(msg(100), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn tail_since_and_limit_shape_the_output() {
        assert_eq!(shape(Options::default(), 3), "0\n1\n2\n100\n");
        let tail = |n| Options {
            tail: Some(n),
            ..Default::default()
        };
        assert_eq!(shape(tail(2), 5), "3\n4\n100\n");
        assert_eq!(shape(tail(0), 5), "100\n");
        let since = Options {
            since: Some(Timestamp::from_second(3).unwrap()),
            ..Default::default()
        };
        assert_eq!(shape(since, 5), "3\n4\n100\n");
        let limit = Options {
            limit_bytes: Some(5),
            ..Default::default()
        };
        assert_eq!(shape(limit, 5), "0\n1\n2");
        let ts = Options {
            timestamps: true,
            tail: Some(1),
            ..Default::default()
        };
        assert!(shape(ts, 2).starts_with("1970-01-01T00:00:01"));
    }
}
