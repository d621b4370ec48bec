//! `pods/<name>/portforward`: the connections a client forwards, each to a
//! port inside the pod, over the transports clients speak:
//! - `portforward.k8s.io` on SPDY/3.1 ([`crate::spdy`]), tunnelled in
//!   WebSocket binary messages (`SPDY/3.1+portforward.k8s.io`, kubectl
//!   ≥ 1.31) or on a plain `Upgrade: SPDY/3.1` (older kubectl, client-go
//!   tools): per connection the client opens an error and a data stream
//!   (headers `streamtype`, `port`, `requestid`); data flows both ways on
//!   the data stream, a failure is written on the error stream;
//! - WebSocket channels (`v4.channel.k8s.io`, the Python client): per
//!   requested port i, data on channel 2i and errors on 2i+1, each opened
//!   by the port as two little-endian bytes.
//!
//! The node reaches the port through [`PodPortForward`]; this module
//! parses the request and moves the bytes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use controlplane::Error;
use k8s_openapi::api::core::v1::Pod;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::spdy::{self, Frame};
use crate::websocket::{self, Message, OP_BINARY, OP_CLOSE, OP_PONG};

/// The SPDY stream protocol (client-go's `PortForwardProtocolV1Name`).
pub const PROTOCOL_V1: &str = "portforward.k8s.io";
/// The WebSocket subprotocol that tunnels SPDY (KEP-4006).
pub const TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
/// WebSocket channels, binary (the Python client).
pub const V4: &str = "v4.channel.k8s.io";

/// How long a forward waits for the client's side once the pod's side
/// ended (containerd's grace), before it closes.
const HALF_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The most data in one frame or message to the client.
const CHUNK: usize = 32 * 1024;
/// Frames queued for the client before the pumps wait.
const OUT_QUEUE: usize = 64;
/// Streams waiting for their pair, per connection; beyond, new ones are
/// refused (a client that opens halves only cannot grow the map).
const MAX_PENDING: usize = 1024;

/// Reaches ports inside a pod.
#[async_trait]
pub trait PodPortForward: Send + Sync {
    /// Checks the pod can be reached here (it runs on this node, its
    /// sandbox is up): errors come back before the upgrade, as a Status.
    async fn prepare(&self, pod: &Pod) -> Result<Arc<dyn Dial>, Error>;
}

/// Connects to one pod's ports.
#[async_trait]
pub trait Dial: Send + Sync {
    /// A TCP connection to `port` on the pod's own loopback, or the reason
    /// there is none (written on the error stream).
    async fn dial(&self, port: u16) -> Result<TcpStream, String>;
}

/// No port-forward on this server (the API runs without a node).
pub struct NoPortForward;

#[async_trait]
impl PodPortForward for NoPortForward {
    async fn prepare(&self, _: &Pod) -> Result<Arc<dyn Dial>, Error> {
        Err(Error::BadRequest(
            "this server runs no pods: pods/portforward is not served".into(),
        ))
    }
}

/// The default [`PodPortForward`].
pub fn none() -> Arc<dyn PodPortForward> {
    Arc::new(NoPortForward)
}

/// The ports of the query (`ports`, repeated or comma-separated, as
/// kube-apiserver's PodPortForwardOptions); errors name `ports`.
/// `required` for the WebSocket channel protocol, where the ports are
/// fixed at connection time; SPDY clients name them per stream.
pub fn parse_ports(pairs: &[(String, String)], required: bool) -> Result<Vec<u16>, Error> {
    let mut ports = Vec::new();
    for (k, v) in pairs {
        if k != "ports" {
            continue;
        }
        for p in v.split(',') {
            ports.push(
                parse_port(p.trim()).map_err(|why| Error::BadRequest(format!("ports: {why}")))?,
            );
        }
    }
    if required && ports.is_empty() {
        return Err(Error::BadRequest(
            "ports: at least one port is required (query parameter ports=<port>)".into(),
        ));
    }
    Ok(ports)
}

/// One port number, 1 to 65535.
fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u32>() {
        Ok(0) => Err(format!("port {p:?} must be between 1 and 65535")),
        Ok(n) if n <= 65535 => Ok(n as u16),
        Ok(_) => Err(format!("port {p:?} must be between 1 and 65535")),
        Err(_) => Err(format!("{p:?} is not a port number")),
    }
}

/// The transport the client asked for, from its upgrade headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// SPDY frames in WebSocket binary messages.
    Tunnel,
    /// `Upgrade: SPDY/3.1`.
    Spdy,
    /// WebSocket channels, 2i data and 2i+1 errors.
    Channels,
}

/// The first WebSocket subprotocol offered that is served (the client's
/// order).
pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    offered
        .into_iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .find_map(|p| [TUNNEL, V4].into_iter().find(|s| *s == p))
}

/// Who the forwards are for, as error messages name them.
#[derive(Debug, Clone)]
pub struct Target {
    /// `namespace/name`.
    pub pod: String,
    pub uid: String,
}

impl Target {
    fn failed(&self, port: u16, why: &str) -> String {
        format!(
            "error forwarding port {port} to pod {}, uid {}: {why}",
            self.pod, self.uid
        )
    }
}

/// Writes what the session queues, in order: frames are built (and
/// WebSocket-wrapped where needed) by the sender.
/// On WebSocket it stops after the close frame.
pub(crate) fn writer<W: AsyncWrite + Send + Unpin + 'static>(
    mut wr: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
    ws: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let is_close = |f: &[u8]| ws && f.first() == Some(&(0x80 | OP_CLOSE));
        while let Some(first) = rx.recv().await {
            let mut last = is_close(&first);
            // Coalesce what is queued into one write.
            let mut buf = first;
            while buf.len() < 256 * 1024 && !last {
                match rx.try_recv() {
                    Ok(more) => {
                        last = is_close(&more);
                        buf.extend_from_slice(&more);
                    }
                    Err(_) => break,
                }
            }
            if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() || last {
                break;
            }
        }
        let _ = wr.shutdown().await;
    })
}

/// Where the SPDY session's frames go: raw, or each in a WebSocket
/// binary message.
#[derive(Clone)]
struct Out {
    tx: mpsc::Sender<Vec<u8>>,
    tunnel: bool,
}

impl Out {
    async fn send(&self, frame: Vec<u8>) -> bool {
        let f = match self.tunnel {
            true => websocket::frame(OP_BINARY, &[&frame]),
            false => frame,
        };
        self.tx.send(f).await.is_ok()
    }
}

/// Serves port-forward on an upgraded connection until the client goes.
pub async fn serve<IO>(
    io: IO,
    transport: Transport,
    ports: Vec<u16>,
    target: Target,
    dial: Arc<dyn Dial>,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let (tx, rx) = mpsc::channel::<Vec<u8>>(OUT_QUEUE);
    let writer = writer(wr, rx, transport != Transport::Spdy);
    match transport {
        Transport::Spdy => {
            let out = Out { tx, tunnel: false };
            spdy_session(spdy::Reader::new(rd), out, target, dial).await;
        }
        Transport::Tunnel => {
            // The tunnel's messages, as the byte stream SPDY reads.
            let (bytes_w, bytes_r) = tokio::io::duplex(256 * 1024);
            let pump = tokio::spawn(unwrap_messages(
                websocket::Reader::new(rd),
                bytes_w,
                tx.clone(),
            ));
            let out = Out {
                tx: tx.clone(),
                tunnel: true,
            };
            spdy_session(spdy::Reader::new(bytes_r), out, target, dial).await;
            pump.abort();
            let _ = tx
                .send(websocket::frame(OP_CLOSE, &[&1000u16.to_be_bytes()]))
                .await;
            drop(tx);
        }
        Transport::Channels => channels(websocket::Reader::new(rd), tx, ports, target, dial).await,
    }
    let _ = writer.await;
}

/// Copies the tunnel's binary messages into `bytes`, answers pings; ends
/// (closing `bytes`) when the client closes.
async fn unwrap_messages<R: AsyncRead + Unpin>(
    mut r: websocket::Reader<R>,
    mut bytes: tokio::io::DuplexStream,
    out: mpsc::Sender<Vec<u8>>,
) {
    loop {
        match r.next().await {
            Ok(Some(Message::Data(d))) => {
                if bytes.write_all(&d).await.is_err() {
                    break;
                }
            }
            Ok(Some(Message::Ping(p))) => {
                let _ = out.send(websocket::frame(OP_PONG, &[&p])).await;
            }
            Ok(Some(Message::Pong)) => {}
            Ok(Some(Message::Close(_))) | Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "port-forward tunnel from the client");
                break;
            }
        }
    }
    let _ = bytes.shutdown().await;
}

/// What the client sent on a forward's data stream.
enum Up {
    Data(Bytes),
    /// The client will send no more (its FIN).
    Fin,
}

/// One side of a pair of streams, waiting for the other.
#[derive(Default)]
struct Half {
    data: Option<u32>,
    error: Option<u32>,
    port: u16,
}

/// Reads the client's SPDY frames: replies to new streams, pairs them
/// by request ID and starts a forward per pair, hands each data stream's
/// bytes to its forward. Returns when the client has gone.
async fn spdy_session<R: AsyncRead + Unpin>(
    mut r: spdy::Reader<R>,
    out: Out,
    target: Target,
    dial: Arc<dyn Dial>,
) {
    let mut replies = spdy::Writer::new();
    let mut pending: HashMap<String, Half> = HashMap::new();
    // Data stream id -> its forward's input.
    let mut forwards: HashMap<u32, mpsc::Sender<Up>> = HashMap::new();
    let mut last_stream = 0u32;
    loop {
        let frame = match r.next().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(pod = %target.pod, error = %e, "port-forward SPDY from the client");
                break;
            }
        };
        match frame {
            Frame::SynStream {
                stream,
                fin: _,
                headers,
            } => {
                last_stream = last_stream.max(stream);
                let kind = spdy::header(&headers, "streamtype")
                    .unwrap_or_default()
                    .to_string();
                let port = spdy::header(&headers, "port").map(parse_port);
                let (port, kind) = match (port, kind.as_str()) {
                    (Some(Ok(p)), "data" | "error")
                        if stream % 2 == 1 && pending.len() < MAX_PENDING =>
                    {
                        (p, kind)
                    }
                    (p, k) => {
                        tracing::debug!(pod = %target.pod, stream, streamtype = k, port = ?p, "port-forward stream refused");
                        if !out.send(spdy::rst_stream(stream, spdy::CANCEL)).await {
                            break;
                        }
                        continue;
                    }
                };
                if !out.send(replies.syn_reply(stream, false, &[])).await {
                    break;
                }
                // Clients before request IDs: kubelet's guess from the
                // stream ids (error n, data n+2).
                let id = match spdy::header(&headers, "requestid") {
                    Some(id) => id.to_string(),
                    None if kind == "error" => stream.to_string(),
                    None => stream.saturating_sub(2).to_string(),
                };
                let half = pending.entry(id.clone()).or_default();
                half.port = port;
                match kind.as_str() {
                    "data" => half.data = Some(stream),
                    _ => half.error = Some(stream),
                }
                if let (Some(data), Some(error)) = (half.data, half.error) {
                    pending.remove(&id);
                    let (tx, rx) = mpsc::channel(16);
                    forwards.insert(data, tx);
                    tokio::spawn(forward(
                        out.clone(),
                        dial.clone(),
                        target.clone(),
                        port,
                        data,
                        error,
                        rx,
                    ));
                }
            }
            Frame::Data { stream, fin, data } => {
                let Some(tx) = forwards.get(&stream) else {
                    continue; // an error stream's FIN, or a forward that ended
                };
                let mut gone = !data.is_empty() && tx.send(Up::Data(data)).await.is_err();
                if fin {
                    gone |= tx.send(Up::Fin).await.is_err();
                    forwards.remove(&stream);
                } else if gone {
                    forwards.remove(&stream);
                }
            }
            // A reset stream: its forward stops (the sender dropped).
            Frame::RstStream { stream, .. } => {
                forwards.remove(&stream);
            }
            Frame::Ping(id) => {
                if !out.send(spdy::ping(id)).await {
                    break;
                }
            }
            Frame::GoAway { .. } => {
                let _ = out.send(spdy::goaway(last_stream)).await;
            }
            Frame::SynReply { .. } | Frame::Ignored(_) => {}
        }
    }
}

/// One forwarded connection: dial the pod's port, then copy both ways
/// until the pod's side ended and the client's has (or stopped), then
/// close both streams; a dial failure is written on the error stream.
async fn forward(
    out: Out,
    dial: Arc<dyn Dial>,
    target: Target,
    port: u16,
    data: u32,
    error: u32,
    mut up: mpsc::Receiver<Up>,
) {
    let tcp = match dial.dial(port).await {
        Ok(t) => t,
        Err(why) => {
            let msg = target.failed(port, &why);
            tracing::debug!(pod = %target.pod, port, error = %why, "port-forward dial");
            out.send(spdy::data(error, false, msg.as_bytes())).await;
            out.send(spdy::data(error, true, b"")).await;
            out.send(spdy::data(data, true, b"")).await;
            return;
        }
    };
    let (mut rd, mut wr) = tcp.into_split();
    // Client -> pod: true when the client finished cleanly (FIN), false
    // when it reset the stream or went away.
    let to_pod = async {
        while let Some(m) = up.recv().await {
            match m {
                Up::Data(b) => {
                    if wr.write_all(&b).await.is_err() {
                        return false;
                    }
                }
                Up::Fin => {
                    let _ = wr.shutdown().await;
                    return true;
                }
            }
        }
        false
    };
    // Pod -> client, then the data stream's FIN.
    let to_client = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !out.send(spdy::data(data, false, &buf[..n])).await {
                        return;
                    }
                }
            }
        }
        out.send(spdy::data(data, true, b"")).await;
    };
    tokio::pin!(to_pod, to_client);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            clean = &mut to_pod, if !up_done => {
                up_done = true;
                if !clean {
                    break;
                }
            }
            _ = &mut to_client, if !down_done => down_done = true,
            _ = tokio::time::sleep(HALF_CLOSE_GRACE), if down_done => break,
        }
    }
    out.send(spdy::data(error, true, b"")).await;
}

/// The WebSocket channel protocol: every port is dialled at once; each
/// forward copies its data channel both ways; the connection closes
/// when every forward has ended or the client went.
async fn channels<R: AsyncRead + Unpin + Send + 'static>(
    mut r: websocket::Reader<R>,
    tx: mpsc::Sender<Vec<u8>>,
    ports: Vec<u16>,
    target: Target,
    dial: Arc<dyn Dial>,
) {
    let mut inputs = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, port) in ports.iter().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        let p = port.to_le_bytes();
        let _ = tx
            .send(websocket::frame(OP_BINARY, &[&[data_ch], &p]))
            .await;
        let _ = tx.send(websocket::frame(OP_BINARY, &[&[err_ch], &p])).await;
        let (in_tx, in_rx) = mpsc::channel::<Bytes>(16);
        inputs.push(Some(in_tx));
        tasks.spawn(channel_forward(
            tx.clone(),
            dial.clone(),
            target.clone(),
            *port,
            (data_ch, err_ch),
            in_rx,
        ));
    }
    loop {
        tokio::select! {
            m = r.next() => match m {
                Ok(Some(Message::Data(d))) => {
                    let Some((&ch, payload)) = d.split_first() else { continue };
                    let slot = (ch % 2 == 0).then(|| inputs.get_mut(usize::from(ch / 2))).flatten();
                    if let Some(input @ Some(_)) = slot {
                        if !payload.is_empty()
                            && input.as_ref().expect("matched").send(Bytes::copy_from_slice(payload)).await.is_err()
                        {
                            *input = None;
                        }
                    }
                }
                Ok(Some(Message::Ping(p))) => {
                    let _ = tx.send(websocket::frame(OP_PONG, &[&p])).await;
                }
                Ok(Some(Message::Pong)) => {}
                Ok(Some(Message::Close(_))) | Ok(None) | Err(_) => break,
            },
            done = tasks.join_next() => {
                if done.is_none() {
                    break;
                }
            }
        }
    }
    // The client went, or every forward ended.
    tasks.abort_all();
    let _ = tx
        .send(websocket::frame(OP_CLOSE, &[&1000u16.to_be_bytes()]))
        .await;
}

/// One port of the channel protocol.
async fn channel_forward(
    tx: mpsc::Sender<Vec<u8>>,
    dial: Arc<dyn Dial>,
    target: Target,
    port: u16,
    (data_ch, err_ch): (u8, u8),
    mut input: mpsc::Receiver<Bytes>,
) {
    let tcp = match dial.dial(port).await {
        Ok(t) => t,
        Err(why) => {
            let msg = target.failed(port, &why);
            let _ = tx
                .send(websocket::frame(OP_BINARY, &[&[err_ch], msg.as_bytes()]))
                .await;
            return;
        }
    };
    let (mut rd, mut wr) = tcp.into_split();
    let to_pod = async {
        while let Some(b) = input.recv().await {
            if wr.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
        std::future::pending::<()>().await
    };
    let to_client = async {
        let mut buf = vec![0u8; CHUNK];
        while let Ok(n @ 1..) = rd.read(&mut buf).await {
            if tx
                .send(websocket::frame(OP_BINARY, &[&[data_ch], &buf[..n]]))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    // The pod's side ending ends the forward (the channel protocol has no
    // half-close to pass on).
    tokio::select! {
        _ = to_pod => {}
        _ = to_client => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ports_are_read_and_bad_ones_named() {
        assert_eq!(
            parse_ports(&pairs(&[("ports", "80"), ("ports", "8080,9090")]), true).unwrap(),
            [80, 8080, 9090]
        );
        assert_eq!(parse_ports(&pairs(&[]), false).unwrap(), Vec::<u16>::new());
        for (q, want) in [
            (vec![], "at least one port"),
            (vec![("ports", "0")], "between 1 and 65535"),
            (vec![("ports", "65536")], "between 1 and 65535"),
            (vec![("ports", "http")], "not a port number"),
            (vec![("ports", "80,")], "not a port number"),
            (vec![("ports", "-1")], "not a port number"),
        ] {
            let e = parse_ports(&pairs(&q), true).unwrap_err().to_string();
            assert!(e.contains("ports: ") && e.contains(want), "{q:?}: {e}");
        }
    }

    #[test]
    fn the_clients_first_served_protocol_is_chosen() {
        assert_eq!(negotiate(["SPDY/3.1+portforward.k8s.io"]), Some(TUNNEL));
        assert_eq!(
            negotiate(["v4.channel.k8s.io, SPDY/3.1+portforward.k8s.io"]),
            Some(V4)
        );
        assert_eq!(negotiate(["v5.channel.k8s.io"]), None);
    }

    /// Dials a local listener whatever the port; port 1 is refused.
    struct Local(std::net::SocketAddr);

    #[async_trait]
    impl Dial for Local {
        async fn dial(&self, port: u16) -> Result<TcpStream, String> {
            if port == 1 {
                return Err("connection refused".into());
            }
            TcpStream::connect(self.0).await.map_err(|e| e.to_string())
        }
    }

    /// An echo server that upper-cases, closing its side after the
    /// client's end of input.
    async fn upper_echo() -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut all = Vec::new();
                    s.read_to_end(&mut all).await.unwrap();
                    s.write_all(&all.to_ascii_uppercase()).await.unwrap();
                });
            }
        });
        addr
    }

    /// A session on `transport` for pod default/web (uid u1) whose
    /// ports all reach an upper-casing echo: the client's end and the
    /// session's task.
    async fn session(
        transport: Transport,
        ports: Vec<u16>,
    ) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<()>) {
        let addr = upper_echo().await;
        let (client, server) = tokio::io::duplex(1 << 20);
        let target = Target {
            pod: "default/web".into(),
            uid: "u1".into(),
        };
        let dial = Arc::new(Local(addr));
        let task = tokio::spawn(serve(server, transport, ports, target, dial));
        (client, task)
    }

    #[tokio::test]
    async fn spdy_streams_forward_both_ways_and_report_errors() {
        let (client, task) = session(Transport::Spdy, vec![]).await;
        let (rd, mut wr) = tokio::io::split(client);
        let mut c = spdy::testing::Client::new();
        // Request 0 to a listening port, with a payload over many frames;
        // request 1 to a refused one.
        let big: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        for (id, kind, port, req) in [
            (1, "error", "80", "0"),
            (3, "data", "80", "0"),
            (5, "error", "1", "1"),
            (7, "data", "1", "1"),
        ] {
            let h = [("streamtype", kind), ("port", port), ("requestid", req)];
            wr.write_all(&c.syn_stream(id, false, &h)).await.unwrap();
        }
        // The client closes its error streams at once.
        wr.write_all(&spdy::data(1, true, b"")).await.unwrap();
        for chunk in big.chunks(CHUNK) {
            wr.write_all(&spdy::data(3, false, chunk)).await.unwrap();
        }
        wr.write_all(&spdy::data(3, true, b"")).await.unwrap();
        wr.write_all(&spdy::ping(1)).await.unwrap();
        // Read until both error streams are closed.
        let mut r = spdy::Reader::new(rd);
        let (mut got, mut errors, mut closed, mut replies, mut pong) = (
            Vec::new(),
            HashMap::<u32, Vec<u8>>::new(),
            Vec::new(),
            0,
            false,
        );
        while closed.len() < 2 {
            match r.next().await.unwrap().expect("the server closed early") {
                Frame::SynReply { .. } => replies += 1,
                Frame::Data {
                    stream: 3, data, ..
                } => got.extend_from_slice(&data),
                Frame::Data { stream, data, fin } if stream == 1 || stream == 5 => {
                    errors.entry(stream).or_default().extend_from_slice(&data);
                    if fin {
                        closed.push(stream);
                    }
                }
                Frame::Ping(1) => pong = true,
                _ => {}
            }
        }
        assert_eq!(replies, 4);
        assert!(pong);
        assert_eq!(got, big.to_ascii_uppercase());
        assert_eq!(errors.get(&1).map(Vec::len).unwrap_or(0), 0);
        let e = String::from_utf8_lossy(&errors[&5]).into_owned();
        assert_eq!(
            e,
            "error forwarding port 1 to pod default/web, uid u1: connection refused"
        );
        // A stream without a valid port is reset.
        let h = [("streamtype", "data"), ("port", "0"), ("requestid", "2")];
        wr.write_all(&c.syn_stream(9, false, &h)).await.unwrap();
        loop {
            if let Frame::RstStream { stream: 9, .. } = r.next().await.unwrap().unwrap() {
                break;
            }
        }
        drop(wr);
        drop(r);
        task.await.unwrap();
    }

    fn masked(payload: &[u8]) -> Vec<u8> {
        let mut f = websocket::frame(OP_BINARY, &[payload]);
        let start = f.len() - payload.len();
        f[1] |= 0x80;
        let mut out = f[..start].to_vec();
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(payload);
        out
    }

    #[tokio::test]
    async fn websocket_channels_open_with_the_port_and_carry_data() {
        let (client, task) = session(Transport::Channels, vec![8080, 1]).await;
        let (mut rd, mut wr) = tokio::io::split(client);
        wr.write_all(&masked(b"\x00hello")).await.unwrap();
        let mut all = Vec::new();
        let mut buf = vec![0u8; 4096];
        // The upper-case echo answers after end of input: close the
        // client's side by closing the whole connection's write half is
        // not possible in the channel protocol, so read the openings and
        // the error first.
        while !String::from_utf8_lossy(&all).contains("connection refused") {
            let n = rd.read(&mut buf).await.unwrap();
            assert!(n > 0);
            all.extend_from_slice(&buf[..n]);
        }
        let p8080 = 8080u16.to_le_bytes();
        let opening: Vec<u8> = [
            websocket::frame(OP_BINARY, &[&[0], &p8080]),
            websocket::frame(OP_BINARY, &[&[1], &p8080]),
            websocket::frame(OP_BINARY, &[&[2], &1u16.to_le_bytes()]),
            websocket::frame(OP_BINARY, &[&[3], &1u16.to_le_bytes()]),
        ]
        .concat();
        assert_eq!(&all[..opening.len()], &opening[..]);
        assert!(String::from_utf8_lossy(&all)
            .contains("error forwarding port 1 to pod default/web, uid u1: connection refused"));
        // The client closes: everything ends.
        let mut close = websocket::frame(OP_CLOSE, &[]);
        close[1] |= 0x80;
        close.extend_from_slice(&[0, 0, 0, 0]);
        wr.write_all(&close).await.unwrap();
        task.await.unwrap();
    }
}
