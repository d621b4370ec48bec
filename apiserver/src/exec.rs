//! `pods/<name>/exec` and `pods/<name>/attach` over WebSocket with the
//! `channel.k8s.io` subprotocols kubectl (v5, ≥ 1.30) and the Python
//! client (v4) speak: each binary message is a channel byte then data —
//! 0 stdin, 1 stdout, 2 stderr, 3 the error channel (a `Status` at the end,
//! with the exit code), 4 terminal resizes; v5 adds 255, the close of a
//! channel (kubectl's end of stdin). The command runs where the pod runs,
//! through [`PodExec`]; this module parses the request and moves the bytes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use controlplane::Error;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::websocket::{self, Message, Reader, OP_BINARY, OP_CLOSE, OP_PONG};

/// kubectl ≥ 1.30: v4 plus the close signal (channel 255).
pub const V5: &str = "v5.channel.k8s.io";
/// The Python client, older client-go: the exit code on the error channel.
pub const V4: &str = "v4.channel.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// How long the client has to answer our close before the connection is
/// dropped (dropping at once could reset what it has not read yet).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Which streaming subresource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Exec,
    Attach,
}

impl Verb {
    /// The subresource's name.
    pub fn name(self) -> &'static str {
        match self {
            Verb::Exec => "exec",
            Verb::Attach => "attach",
        }
    }
}

/// What the client asked for (kube's PodExecOptions / PodAttachOptions).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamQuery {
    pub container: Option<String>,
    /// The command (exec only).
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A terminal size, as the resize channel carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct Size {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The streams of one session, as the node sees them.
pub struct Streams {
    /// The client's input (when it asked for stdin); its end is the
    /// command's end of input.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    /// Output (a sink when the client did not ask for it). With a TTY,
    /// stdout carries both.
    pub stdout: Box<dyn AsyncWrite + Send + Unpin>,
    pub stderr: Box<dyn AsyncWrite + Send + Unpin>,
    /// Terminal sizes (width, height), with a TTY.
    pub resize: mpsc::Receiver<(u16, u16)>,
    /// Completes when the client went away: stop the command.
    pub gone: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// Runs commands in (or attaches to) the containers of pods.
#[async_trait]
pub trait PodExec: Send + Sync {
    /// Checks that the session can start (the pod runs here, the container
    /// runs): errors come back before the upgrade, as a Status.
    async fn prepare(
        &self,
        pod: &Pod,
        verb: Verb,
        q: &StreamQuery,
    ) -> Result<Box<dyn Session>, Error>;
}

/// One prepared exec or attach.
#[async_trait]
pub trait Session: Send {
    /// Runs it with the client's streams: the exit code, or why it failed.
    async fn run(self: Box<Self>, io: Streams) -> Result<i32, String>;
}

/// No exec on this server (the API runs without a node).
pub struct NoExec;

#[async_trait]
impl PodExec for NoExec {
    async fn prepare(
        &self,
        _: &Pod,
        verb: Verb,
        _: &StreamQuery,
    ) -> Result<Box<dyn Session>, Error> {
        Err(Error::BadRequest(format!(
            "this server runs no pods: pods/{} is not served",
            verb.name()
        )))
    }
}

/// The default [`PodExec`].
pub fn none() -> Arc<dyn PodExec> {
    Arc::new(NoExec)
}

/// The namespace, pod and verb of `/api/v1/namespaces/<ns>/pods/<name>/exec`
/// (or `/attach`), or `None` for any other path.
pub fn stream_path(path: &str) -> Option<(String, String, Verb)> {
    let (ns, name, sub) = pod_subresource(path)?;
    let verb = match sub {
        "exec" => Verb::Exec,
        "attach" => Verb::Attach,
        _ => return None,
    };
    Some((ns, name, verb))
}

/// The namespace, pod and subresource of
/// `/api/v1/namespaces/<ns>/pods/<name>/<sub>`, or `None` for any other
/// path (or a name that could not be a pod's).
pub fn pod_subresource(path: &str) -> Option<(String, String, &str)> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let ok = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains('%');
    match parts.as_slice() {
        [ns, "pods", name, sub] if ok(ns) && ok(name) => {
            Some((ns.to_string(), name.to_string(), *sub))
        }
        _ => None,
    }
}

/// The query of an exec or attach; errors name the parameter.
pub fn parse_query(pairs: &[(String, String)], verb: Verb) -> Result<StreamQuery, Error> {
    let mut q = StreamQuery::default();
    for (k, v) in pairs {
        let flag = || match v.as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" | "" => Ok(false),
            _ => Err(Error::BadRequest(format!(
                "{k}: want true or false, got {v:?}"
            ))),
        };
        match k.as_str() {
            "command" if verb == Verb::Exec => q.command.push(v.clone()),
            "container" if !v.is_empty() => q.container = Some(v.clone()),
            "stdin" => q.stdin = flag()?,
            "stdout" => q.stdout = flag()?,
            "stderr" => q.stderr = flag()?,
            "tty" => q.tty = flag()?,
            _ => {}
        }
    }
    if verb == Verb::Exec && q.command.is_empty() {
        return Err(Error::BadRequest(
            "command: you must specify at least 1 command".into(),
        ));
    }
    if !(q.stdin || q.stdout || q.stderr) {
        return Err(Error::BadRequest(
            "stdin, stdout, stderr: you must specify at least 1 of them".into(),
        ));
    }
    // With a terminal there is one output stream (kubectl asks so).
    if q.tty {
        q.stderr = false;
    }
    Ok(q)
}

/// The first subprotocol offered that is served (the client's order, as
/// kube-apiserver picks).
pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    offered
        .into_iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .find_map(|p| [V5, V4].into_iter().find(|s| *s == p))
}

/// The error channel's Status for how the command ended.
pub fn exit_status(result: &Result<i32, String>, command: &[String]) -> Value {
    match result {
        Ok(0) => json!({"metadata": {}, "status": "Success"}),
        Ok(code) => json!({
            "metadata": {}, "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                command.join(" ")
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(why) => json!({
            "metadata": {}, "status": "Failure", "message": why,
            "reason": "InternalError", "code": 500,
        }),
    }
}

/// Serves a prepared session on an upgraded connection speaking
/// `protocol`, until the command ends and the client has been told.
pub async fn serve<IO>(io: IO, protocol: &'static str, q: StreamQuery, session: Box<dyn Session>)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, mut wr) = tokio::io::split(io);
    // One writer: frames from the output pumps and pongs, in order; it
    // stops after the close frame.
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(32);
    let writer = tokio::spawn(async move {
        while let Some(f) = out_rx.recv().await {
            let last = f.first() == Some(&(0x80 | OP_CLOSE));
            if wr.write_all(&f).await.is_err() || wr.flush().await.is_err() || last {
                break;
            }
        }
    });
    let (stdin_tx, stdin_rx) = match q.stdin {
        true => {
            let (tx, rx) = mpsc::channel(16);
            (Some(tx), Some(rx))
        }
        false => (None, None),
    };
    let (resize_tx, resize_rx) = mpsc::channel(8);
    let (gone_tx, gone_rx) = oneshot::channel::<()>();
    let reader = tokio::spawn(read_client(
        Reader::new(rd),
        protocol == V5,
        stdin_tx,
        resize_tx,
        out_tx.clone(),
        gone_tx,
    ));
    let mut outputs = Outputs::new(out_tx.clone());
    let on = |wanted: bool, channel: u8| {
        wanted.then_some(move |b: &[u8]| websocket::frame(OP_BINARY, &[&[channel], b]))
    };
    let streams = Streams {
        stdin: stdin_rx,
        stdout: outputs.stream(on(q.stdout, STDOUT)),
        stderr: outputs.stream(on(q.stderr, STDERR)),
        resize: resize_rx,
        gone: gone_when(gone_rx),
    };
    let result = session.run(streams).await;
    // All output goes out before the status.
    outputs.drain(CLOSE_GRACE).await;
    let status = serde_json::to_vec(&exit_status(&result, &q.command)).unwrap_or_default();
    let _ = out_tx
        .send(websocket::frame(OP_BINARY, &[&[ERROR], &status]))
        .await;
    let _ = out_tx
        .send(websocket::frame(OP_CLOSE, &[&1000u16.to_be_bytes()]))
        .await;
    drop(out_tx);
    let _ = writer.await;
    // The client answers the close; then the connection may go.
    let abort = reader.abort_handle();
    if tokio::time::timeout(CLOSE_GRACE, reader).await.is_err() {
        abort.abort();
    }
}

/// A session's output streams as a transport's frames: each stream the
/// client asked for is a pipe whose reads a task turns into frames (built
/// by the transport) queued to its writer. Shared by WebSocket and SPDY.
pub(crate) struct Outputs {
    out: mpsc::Sender<Vec<u8>>,
    pumps: Vec<tokio::task::JoinHandle<()>>,
}

impl Outputs {
    pub(crate) fn new(out: mpsc::Sender<Vec<u8>>) -> Outputs {
        Outputs {
            out,
            pumps: Vec::new(),
        }
    }

    /// A stream whose bytes become `frame(bytes)`; a sink when `frame` is
    /// `None` (the client did not ask for it).
    pub(crate) fn stream<F>(&mut self, frame: Option<F>) -> Box<dyn AsyncWrite + Send + Unpin>
    where
        F: Fn(&[u8]) -> Vec<u8> + Send + 'static,
    {
        let Some(frame) = frame else {
            return Box::new(tokio::io::sink());
        };
        let (w, mut r) = tokio::io::duplex(64 * 1024);
        let out = self.out.clone();
        self.pumps.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if out.send(frame(&buf[..n])).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }));
        Box::new(w)
    }

    /// Waits (at most `grace` each) until what the streams held is queued.
    pub(crate) async fn drain(self, grace: Duration) {
        for p in self.pumps {
            let _ = tokio::time::timeout(grace, p).await;
        }
    }
}

/// Completes when `gone` fires (or its sender is dropped): the client left.
pub(crate) fn gone_when(gone: oneshot::Receiver<()>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let _ = gone.await;
    })
}

/// Reads the client's messages into stdin and resizes, answers pings,
/// and says when the client has gone (closed, or the connection ended).
async fn read_client<R: AsyncRead + Unpin>(
    mut r: Reader<R>,
    v5: bool,
    mut stdin: Option<mpsc::Sender<Bytes>>,
    resize: mpsc::Sender<(u16, u16)>,
    out: mpsc::Sender<Vec<u8>>,
    gone: oneshot::Sender<()>,
) {
    loop {
        match r.next().await {
            Ok(Some(Message::Data(d))) => match d.split_first() {
                Some((&STDIN, data)) => {
                    if let Some(tx) = &stdin {
                        if !data.is_empty() && tx.send(Bytes::copy_from_slice(data)).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                }
                Some((&RESIZE, data)) => match serde_json::from_slice::<Size>(data) {
                    Ok(size) => {
                        let _ = resize.try_send((size.width, size.height));
                    }
                    Err(e) => tracing::debug!(error = %e, "a resize that is not {{Width, Height}}"),
                },
                // v5: the client closes a channel; only stdin means anything.
                Some((&CLOSE, &[STDIN])) if v5 => stdin = None,
                _ => {}
            },
            Ok(Some(Message::Ping(p))) => {
                let _ = out.send(websocket::frame(OP_PONG, &[&p])).await;
            }
            Ok(Some(Message::Pong)) => {}
            Ok(Some(Message::Close(_))) | Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "exec stream from the client");
                break;
            }
        }
    }
    let _ = gone.send(());
}

/// A session for the transports' tests (here and in
/// [`crate::exec_spdy`]).
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Echoes stdin to stdout, writes `err` to stderr, and exits with the
    /// last resize's width.
    pub struct Echo;

    #[async_trait]
    impl Session for Echo {
        async fn run(self: Box<Self>, mut io: Streams) -> Result<i32, String> {
            let mut input = io.stdin.take().unwrap();
            while let Some(b) = input.recv().await {
                io.stdout.write_all(&b).await.unwrap();
            }
            io.stderr.write_all(b"err").await.unwrap();
            let (width, _) = io.resize.recv().await.unwrap();
            Ok(i32::from(width))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Echo;
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn paths_and_queries_are_read_as_kubectl_sends_them() {
        assert_eq!(
            stream_path("/api/v1/namespaces/default/pods/web/exec"),
            Some(("default".into(), "web".into(), Verb::Exec))
        );
        assert_eq!(
            stream_path("/api/v1/namespaces/default/pods/web/attach").map(|p| p.2),
            Some(Verb::Attach)
        );
        assert_eq!(stream_path("/api/v1/namespaces/default/pods/web/log"), None);
        assert_eq!(stream_path("/api/v1/namespaces/../pods/web/exec"), None);
        let q = parse_query(
            &pairs(&[
                ("command", "sh"),
                ("command", "-c"),
                ("command", "echo hi"),
                ("container", "app"),
                ("stdin", "true"),
                ("stdout", "true"),
                ("stderr", "true"),
                ("tty", "false"),
            ]),
            Verb::Exec,
        )
        .unwrap();
        assert_eq!(q.command, ["sh", "-c", "echo hi"]);
        assert_eq!(q.container.as_deref(), Some("app"));
        assert!(q.stdin && q.stdout && q.stderr && !q.tty);
        // A terminal has one output stream.
        let q = parse_query(
            &pairs(&[
                ("command", "sh"),
                ("stdout", "1"),
                ("stderr", "1"),
                ("tty", "1"),
            ]),
            Verb::Exec,
        )
        .unwrap();
        assert!(q.tty && !q.stderr);
        // Attach has no command.
        assert!(parse_query(&pairs(&[("stdout", "true")]), Verb::Attach).is_ok());
        for (p, want) in [
            (vec![("stdout", "true")], "command"),
            (vec![("command", "ls")], "at least 1 of"),
            (vec![("command", "ls"), ("stdout", "yes")], "stdout"),
        ] {
            let e = parse_query(&pairs(&p), Verb::Exec).unwrap_err().to_string();
            assert!(e.contains(want), "{p:?}: {e}");
        }
    }

    #[test]
    fn the_clients_first_served_protocol_is_chosen() {
        assert_eq!(negotiate(["v5.channel.k8s.io"]), Some(V5));
        assert_eq!(
            negotiate(["channel.k8s.io, v4.channel.k8s.io", "v5.channel.k8s.io"]),
            Some(V4)
        );
        assert_eq!(negotiate(["base64.channel.k8s.io"]), None);
        assert_eq!(negotiate([]), None);
    }

    #[test]
    fn the_exit_code_travels_as_kubectl_reads_it() {
        let cmd = ["sh".to_string(), "-c".into(), "exit 3".into()];
        assert_eq!(exit_status(&Ok(0), &cmd)["status"], "Success");
        let s = exit_status(&Ok(3), &cmd);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        let s = exit_status(&Err("containerd went away".into()), &cmd);
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["message"], "containerd went away");
    }

    fn client_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = websocket::frame(OP_BINARY, &[payload]);
        let start = f.len() - payload.len();
        f[1] |= 0x80;
        let mut out = f[..start].to_vec();
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(payload);
        out
    }

    /// The server's frames as (opcode, payload).
    fn frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while b.len() >= 2 {
            let (len, at) = match b[1] {
                126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            out.push((b[0] & 0x0F, b[at..at + len].to_vec()));
            b = &b[at + len..];
        }
        out
    }

    #[tokio::test]
    async fn a_session_moves_stdin_output_resizes_and_the_status() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let q = StreamQuery {
            command: vec!["x".into()],
            stdin: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let task = tokio::spawn(serve(server, V5, q, Box::new(Echo)));
        let (mut rd, mut wr) = tokio::io::split(client);
        wr.write_all(&client_frame(b"\x00hello ")).await.unwrap();
        wr.write_all(&client_frame(b"\x00world")).await.unwrap();
        wr.write_all(&client_frame(b"\x04{\"Width\":7,\"Height\":3}"))
            .await
            .unwrap();
        wr.write_all(&client_frame(&[CLOSE, STDIN])).await.unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        while !frames(&got).iter().any(|f| f.0 == OP_CLOSE) {
            let n = rd.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection ended early");
            got.extend_from_slice(&buf[..n]);
        }
        // The client answers the close.
        let mut close = websocket::frame(OP_CLOSE, &[]);
        close[1] |= 0x80;
        close.extend_from_slice(&[0, 0, 0, 0]);
        wr.write_all(&close).await.unwrap();
        task.await.unwrap();
        let fs = frames(&got);
        let on = |ch: u8| -> Vec<u8> {
            fs.iter()
                .filter(|f| f.0 == OP_BINARY && f.1[0] == ch)
                .flat_map(|f| f.1[1..].to_vec())
                .collect()
        };
        assert_eq!(on(STDOUT), b"hello world");
        assert_eq!(on(STDERR), b"err");
        let status: Value = serde_json::from_slice(&on(ERROR)).unwrap();
        assert_eq!(status["details"]["causes"][0]["message"], "7");
        // The status is the last data message, then the close.
        assert_eq!(fs[fs.len() - 2].1[0], ERROR);
        assert_eq!(fs.last().unwrap().0, OP_CLOSE);
    }
}
