//! `pods/<name>/exec` and `attach` over SPDY/3.1 (`Upgrade: SPDY/3.1`,
//! `X-Stream-Protocol-Version: v4.channel.k8s.io`): client-go's SPDY
//! executor, which kubectl before 1.30 uses, which kubectl falls back to
//! (or uses with `KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`), and which most
//! client-go tools still call. The client opens one stream per channel,
//! named by its `streamtype` header (`error`, `stdin`, `stdout`, `stderr`,
//! `resize`); the server replies to each, and once every stream the query
//! asked for is there the session runs: stdin's data (its FIN is the end
//! of input), resize's JSON sizes, our output on stdout and stderr, and at
//! the end the `Status` on the error stream (the same one the WebSocket
//! error channel carries), each closed with a FIN. Only v4 is served: the
//! earlier versions carry the exit code differently, and every client
//! that offers them offers v4 first.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use crate::exec::{exit_status, gone_when, Outputs, Session, Size, StreamQuery, Streams, V4};
use crate::spdy::{self, Frame};

/// How long the client has to open the streams it asked for (kubelet's
/// stream creation timeout).
const STREAM_CREATION: Duration = Duration::from_secs(30);

/// How long output has to drain once the command ended.
const DRAIN: Duration = Duration::from_secs(5);

/// Frames queued to the writer.
const OUT_QUEUE: usize = 64;

/// The protocol served, when the client offers it (`X-Stream-Protocol-Version`
/// values, each possibly a comma-separated list).
pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    offered
        .into_iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .find(|p| *p == V4)
        .map(|_| V4)
}

/// A channel's stream, as the client named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Error,
    Stdin,
    Stdout,
    Stderr,
    Resize,
}

impl Kind {
    fn of(name: &str) -> Option<Kind> {
        Some(match name {
            "error" => Kind::Error,
            "stdin" => Kind::Stdin,
            "stdout" => Kind::Stdout,
            "stderr" => Kind::Stderr,
            "resize" => Kind::Resize,
            _ => return None,
        })
    }

    /// Whether `q` asks for this stream.
    fn wanted(self, q: &StreamQuery) -> bool {
        match self {
            Kind::Error => true,
            Kind::Stdin => q.stdin,
            Kind::Stdout => q.stdout,
            Kind::Stderr => q.stderr,
            Kind::Resize => q.tty,
        }
    }
}

const KINDS: [Kind; 5] = [
    Kind::Error,
    Kind::Stdin,
    Kind::Stdout,
    Kind::Stderr,
    Kind::Resize,
];

/// Serves a prepared session on an upgraded SPDY connection, until the
/// command ends and the client has its output and status.
pub async fn serve<IO>(io: IO, q: StreamQuery, session: Box<dyn Session>)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let (out, rx) = mpsc::channel::<Vec<u8>>(OUT_QUEUE);
    let writer = crate::portforward::writer(wr, rx, false);
    let mut frames = spdy::Reader::new(rd);
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
    let Some(opened) = open_streams(&mut frames, &out, &q).await else {
        let _ = out.send(spdy::goaway(0)).await;
        drop(out);
        let _ = writer.await;
        return;
    };
    let streams = opened.streams;
    let last = streams.values().copied().max().unwrap_or(0);
    let (resize_tx, resize_rx) = mpsc::channel(8);
    let (gone_tx, gone_rx) = oneshot::channel::<()>();
    let reader = tokio::spawn(read_client(
        frames,
        streams.clone(),
        opened.early_stdin,
        (q.stdin && !opened.stdin_ended).then_some(stdin_tx),
        resize_tx,
        out.clone(),
        gone_tx,
    ));
    let mut outputs = Outputs::new(out.clone());
    let on = |kind: Kind| {
        let id = streams.get(&kind).copied();
        id.map(|id| move |b: &[u8]| spdy::data(id, false, b))
    };
    let io = Streams {
        stdin: q.stdin.then_some(stdin_rx),
        stdout: outputs.stream(on(Kind::Stdout)),
        stderr: outputs.stream(on(Kind::Stderr)),
        resize: resize_rx,
        gone: gone_when(gone_rx),
    };
    let result = session.run(io).await;
    // Output first, each stream closed; then the status, then goodbye.
    outputs.drain(DRAIN).await;
    for kind in [Kind::Stdout, Kind::Stderr] {
        if let Some(&id) = streams.get(&kind) {
            let _ = out.send(spdy::data(id, true, b"")).await;
        }
    }
    if let Some(&id) = streams.get(&Kind::Error) {
        let status = serde_json::to_vec(&exit_status(&result, &q.command)).unwrap_or_default();
        let _ = out.send(spdy::data(id, false, &status)).await;
        let _ = out.send(spdy::data(id, true, b"")).await;
    }
    let _ = out.send(spdy::goaway(last)).await;
    // The reader holds a sender too: the writer ends (and closes the
    // connection, as kubelet does) once both are gone.
    reader.abort();
    let _ = reader.await;
    drop(out);
    let _ = writer.await;
}

/// The streams the client opened, and the input it sent meanwhile.
struct Opened {
    streams: HashMap<Kind, u32>,
    early_stdin: Vec<Bytes>,
    /// Stdin's FIN came too.
    stdin_ended: bool,
}

/// Accepts the client's streams until every one `q` asks for is open;
/// `None` when the client went away, sent something else, or took too
/// long. Stdin that arrives meanwhile is kept for the command.
async fn open_streams<R: AsyncRead + Unpin>(
    frames: &mut spdy::Reader<R>,
    out: &mpsc::Sender<Vec<u8>>,
    q: &StreamQuery,
) -> Option<Opened> {
    let mut replies = spdy::Writer::new();
    let mut streams: HashMap<Kind, u32> = HashMap::new();
    let (mut early_stdin, mut stdin_ended) = (Vec::new(), false);
    let deadline = tokio::time::Instant::now() + STREAM_CREATION;
    while !KINDS
        .iter()
        .all(|k| !k.wanted(q) || streams.contains_key(k))
    {
        let frame = match tokio::time::timeout_at(deadline, frames.next()).await {
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "exec SPDY from the client");
                return None;
            }
            Err(_) => {
                tracing::debug!(opened = ?streams.keys().collect::<Vec<_>>(), "exec: the client did not open its streams in time");
                return None;
            }
        };
        match frame {
            Frame::SynStream {
                stream, headers, ..
            } => {
                let kind = spdy::header(&headers, "streamtype").and_then(Kind::of);
                let fresh = kind.filter(|k| k.wanted(q) && !streams.contains_key(k));
                let Some(kind) = fresh.filter(|_| stream % 2 == 1) else {
                    tracing::debug!(stream, ?kind, "exec stream refused");
                    if out
                        .send(spdy::rst_stream(stream, spdy::PROTOCOL_ERROR))
                        .await
                        .is_err()
                    {
                        return None;
                    }
                    continue;
                };
                if out
                    .send(replies.syn_reply(stream, false, &[]))
                    .await
                    .is_err()
                {
                    return None;
                }
                streams.insert(kind, stream);
            }
            Frame::Data { stream, fin, data } => {
                if streams.get(&Kind::Stdin) == Some(&stream) && !stdin_ended {
                    if !data.is_empty() {
                        early_stdin.push(data);
                    }
                    stdin_ended = fin;
                }
            }
            Frame::Ping(id) => {
                if out.send(spdy::ping(id)).await.is_err() {
                    return None;
                }
            }
            Frame::RstStream { .. } | Frame::GoAway { .. } => return None,
            Frame::SynReply { .. } | Frame::Ignored(_) => {}
        }
    }
    Some(Opened {
        streams,
        early_stdin,
        stdin_ended,
    })
}

/// Reads the client's frames into stdin and resizes, answers pings, and
/// says when the client has gone (GOAWAY, or the connection ended).
async fn read_client<R: AsyncRead + Unpin>(
    mut frames: spdy::Reader<R>,
    streams: HashMap<Kind, u32>,
    early_stdin: Vec<Bytes>,
    mut stdin: Option<mpsc::Sender<Bytes>>,
    resize: mpsc::Sender<(u16, u16)>,
    out: mpsc::Sender<Vec<u8>>,
    gone: oneshot::Sender<()>,
) {
    if let Some(tx) = &stdin {
        for data in early_stdin {
            if tx.send(data).await.is_err() {
                break;
            }
        }
    }
    let stdin_id = streams.get(&Kind::Stdin).copied();
    let resize_id = streams.get(&Kind::Resize).copied();
    let mut sizes = Vec::new();
    loop {
        match frames.next().await {
            Ok(Some(Frame::Data { stream, fin, data })) => {
                if Some(stream) == stdin_id {
                    if let Some(tx) = &stdin {
                        if !data.is_empty() && tx.send(data).await.is_err() {
                            stdin = None;
                        }
                    }
                    if fin {
                        stdin = None;
                    }
                } else if Some(stream) == resize_id {
                    sizes.extend_from_slice(&data);
                    for (width, height) in take_sizes(&mut sizes) {
                        let _ = resize.try_send((width, height));
                    }
                }
            }
            Ok(Some(Frame::RstStream { stream, .. })) if Some(stream) == stdin_id => stdin = None,
            // Every stream the session uses is open: no more.
            Ok(Some(Frame::SynStream { stream, .. })) => {
                let _ = out
                    .send(spdy::rst_stream(stream, spdy::PROTOCOL_ERROR))
                    .await;
            }
            Ok(Some(Frame::Ping(id))) => {
                let _ = out.send(spdy::ping(id)).await;
            }
            Ok(Some(Frame::GoAway { .. })) | Ok(None) => break,
            Ok(Some(_)) => {}
            Err(e) => {
                tracing::debug!(error = %e, "exec SPDY from the client");
                break;
            }
        }
    }
    let _ = gone.send(());
}

/// The whole sizes at the front of `buf` (client-go writes one JSON
/// object per resize, each ended by a newline); what is left is a size
/// still arriving. A size that is not `{Width, Height}` is skipped.
fn take_sizes(buf: &mut Vec<u8>) -> Vec<(u16, u16)> {
    let mut got = Vec::new();
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Size>();
    let mut used = 0;
    loop {
        match it.next() {
            Some(Ok(s)) => {
                got.push((s.width, s.height));
                used = it.byte_offset();
            }
            Some(Err(e)) if e.is_eof() => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "a resize that is not {{Width, Height}}");
                // Skip to the next line.
                used = buf[used..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(buf.len(), |p| used + p + 1);
                break;
            }
            None => {
                used = buf.len();
                break;
            }
        }
    }
    buf.drain(..used);
    let blank = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
    buf.drain(..blank);
    got
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::testing::Echo;
    use crate::spdy::testing::Client;
    use serde_json::Value;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn v4_is_chosen_when_offered() {
        assert_eq!(
            negotiate([
                "v4.channel.k8s.io",
                "v3.channel.k8s.io",
                "v2.channel.k8s.io"
            ]),
            Some(V4)
        );
        assert_eq!(negotiate(["channel.k8s.io, v4.channel.k8s.io"]), Some(V4));
        assert_eq!(negotiate(["v3.channel.k8s.io"]), None);
        assert_eq!(negotiate([]), None);
    }

    #[test]
    fn sizes_are_read_whole_across_frames() {
        let mut buf = b"{\"Width\":80,\"Height\":24}\n{\"Width\":1".to_vec();
        assert_eq!(take_sizes(&mut buf), vec![(80, 24)]);
        assert_eq!(buf, b"{\"Width\":1");
        buf.extend_from_slice(b"00,\"Height\":30}\n");
        assert_eq!(take_sizes(&mut buf), vec![(100, 30)]);
        assert!(buf.is_empty());
        // Garbage is skipped to the next line.
        buf.extend_from_slice(b"{\"Wide\":true}\n{\"Width\":7,\"Height\":3}\n");
        let mut all = take_sizes(&mut buf);
        all.extend(take_sizes(&mut buf));
        assert_eq!(all, vec![(7, 3)]);
    }

    #[tokio::test]
    async fn streams_carry_stdin_output_resizes_and_the_status() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let q = StreamQuery {
            command: vec!["x".into()],
            stdin: true,
            stdout: true,
            stderr: true,
            tty: true,
            ..Default::default()
        };
        let task = tokio::spawn(serve(server, q, Box::new(Echo)));
        let (rd, mut wr) = tokio::io::split(client);
        let mut c = Client::new();
        let mut hello = Vec::new();
        for (id, kind) in [
            (1, "error"),
            (3, "stdin"),
            (5, "stdout"),
            (7, "stderr"),
            (9, "resize"),
        ] {
            hello.extend(c.syn_stream(id, false, &[("streamtype", kind)]));
        }
        // An unknown stream is refused, the session goes on.
        hello.extend(c.syn_stream(11, false, &[("streamtype", "video")]));
        hello.extend(spdy::data(3, false, b"hello "));
        hello.extend(spdy::data(3, false, b"world"));
        hello.extend(spdy::data(3, true, b""));
        hello.extend(spdy::data(9, false, b"{\"Width\":7,\"Height\":3}\n"));
        wr.write_all(&hello).await.unwrap();

        let mut r = spdy::Reader::new(rd);
        let mut on: HashMap<u32, Vec<u8>> = HashMap::new();
        let mut fins = Vec::new();
        let (mut replies, mut resets) = (0, Vec::new());
        loop {
            match r.next().await.unwrap() {
                Some(Frame::SynReply { .. }) => replies += 1,
                Some(Frame::RstStream { stream, .. }) => resets.push(stream),
                Some(Frame::Data { stream, fin, data }) => {
                    on.entry(stream).or_default().extend_from_slice(&data);
                    if fin {
                        fins.push(stream);
                    }
                }
                Some(Frame::GoAway { .. }) | None => break,
                Some(_) => {}
            }
        }
        task.await.unwrap();
        assert_eq!(replies, 5);
        assert_eq!(resets, vec![11]);
        assert_eq!(on[&5], b"hello world");
        assert_eq!(on[&7], b"err");
        let status: Value = serde_json::from_slice(&on[&1]).unwrap();
        assert_eq!(status["details"]["causes"][0]["message"], "7");
        // Output closed before the status, the status closed last.
        assert_eq!(fins, vec![5, 7, 1]);
    }

    #[tokio::test]
    async fn a_client_that_never_opens_its_streams_is_let_go() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let q = StreamQuery {
            command: vec!["x".into()],
            stdout: true,
            ..Default::default()
        };
        let task = tokio::spawn(serve(server, q, Box::new(Echo)));
        // Only the error stream, then the client hangs up.
        let mut c = Client::new();
        let (_rd, mut wr) = tokio::io::split(client);
        wr.write_all(&c.syn_stream(1, false, &[("streamtype", "error")]))
            .await
            .unwrap();
        wr.shutdown().await.unwrap();
        drop(wr);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the session ends when the client goes")
            .unwrap();
    }
}
