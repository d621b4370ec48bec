//! SPDY/3.1 framing, the server's side, as `portforward.k8s.io` (kubectl
//! over a WebSocket tunnel or a plain `Upgrade: SPDY/3.1`) and client-go's
//! SPDY executor for exec and attach use it: frames
//! read from a byte stream and built for writing, with header blocks
//! compressed by zlib with SPDY's preset dictionary (one stream per
//! direction for the whole connection, sync-flushed per block). No flow
//! control: neither kubectl's spdystream nor kubelet's sends or honours
//! WINDOW_UPDATE. What the streams mean is [`crate::portforward`]'s and
//! [`crate::exec_spdy`]'s business.

use std::sync::OnceLock;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The protocol version in every control frame.
pub const VERSION: u16 = 3;

pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const SETTINGS: u16 = 4;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const HEADERS: u16 = 8;
pub const WINDOW_UPDATE: u16 = 9;

/// FLAG_FIN, on data and control frames alike.
pub const FLAG_FIN: u8 = 0x01;

/// RST_STREAM status codes used here.
pub const PROTOCOL_ERROR: u32 = 1;
pub const CANCEL: u32 = 5;

/// The largest frame accepted from a client (kubectl writes at most
/// 32 KiB of data at a time); a frame's length field allows 16 MiB.
pub const MAX_FRAME: usize = 1 << 20;
/// The largest header block, once inflated.
const MAX_HEADERS: usize = 64 * 1024;

/// Header name/value pairs (names lowercase; several values of one name
/// are joined with NUL, as SPDY carries them).
pub type Headers = Vec<(String, String)>;

/// One frame from the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    SynStream {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    SynReply {
        stream: u32,
        fin: bool,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Ping(u32),
    GoAway {
        last_good: u32,
    },
    Data {
        stream: u32,
        fin: bool,
        data: Bytes,
    },
    /// SETTINGS, HEADERS, WINDOW_UPDATE and unknown control frames: read
    /// and ignored (SPDY says to ignore unknown types).
    Ignored(u16),
}

/// Why the client's frames could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("read: {0}")]
    Io(#[from] std::io::Error),
    #[error("SPDY protocol: {0}")]
    Protocol(String),
}

type Result<T> = std::result::Result<T, SpdyError>;

fn protocol(m: impl Into<String>) -> SpdyError {
    SpdyError::Protocol(m.into())
}

/// SPDY/3's zlib dictionary (draft 3, section 2.6.10.1): length-prefixed
/// header names and common values, then a run of common strings.
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414",
            "415416417502504505203 Non-Authoritative Information204 No Content",
            "301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden",
            "404 Not Found500 Internal Server Error501 Not Implemented",
            "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec",
            " 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,",
            "image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
            "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch",
            "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
        );
        let mut d = Vec::with_capacity(1500);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

/// Reads the client's frames from a byte stream.
pub struct Reader<R> {
    r: R,
    inflate: Decompress,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(r: R) -> Self {
        Reader {
            r,
            inflate: Decompress::new(true),
        }
    }

    /// The next frame; `None` when the stream ended between frames.
    pub async fn next(&mut self) -> Result<Option<Frame>> {
        let mut head = [0u8; 8];
        match self.r.read(&mut head[..1]).await? {
            0 => return Ok(None),
            _ => self.r.read_exact(&mut head[1..]).await?,
        };
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > MAX_FRAME {
            return Err(protocol(format!("a frame of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        self.r.read_exact(&mut body).await?;
        let fin = flags & FLAG_FIN != 0;
        if head[0] & 0x80 == 0 {
            let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            return Ok(Some(Frame::Data {
                stream,
                fin,
                data: Bytes::from(body),
            }));
        }
        let version = u16::from_be_bytes([head[0] & 0x7F, head[1]]);
        if version != VERSION {
            return Err(protocol(format!("version {version}, want {VERSION}")));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let word = |at: usize| -> Result<u32> {
            body.get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| protocol(format!("control frame {kind}: {len} bytes is too short")))
        };
        let id = |at: usize| word(at).map(|w| w & 0x7FFF_FFFF);
        Ok(Some(match kind {
            SYN_STREAM => {
                // stream id, associated stream id, priority and slot.
                let stream = id(0)?;
                if body.len() < 10 {
                    return Err(protocol("SYN_STREAM too short"));
                }
                let headers = self.headers(&body[10..])?;
                Frame::SynStream {
                    stream,
                    fin,
                    headers,
                }
            }
            SYN_REPLY | HEADERS => {
                let stream = id(0)?;
                // The block must be inflated even if unused: the zlib
                // stream continues into the next one.
                self.headers(&body[4..])?;
                match kind {
                    SYN_REPLY => Frame::SynReply { stream, fin },
                    _ => Frame::Ignored(kind),
                }
            }
            RST_STREAM => Frame::RstStream {
                stream: id(0)?,
                status: word(4)?,
            },
            PING => Frame::Ping(word(0)?),
            GOAWAY => Frame::GoAway { last_good: id(0)? },
            other => Frame::Ignored(other),
        }))
    }

    /// Inflates and parses one header block.
    fn headers(&mut self, block: &[u8]) -> Result<Headers> {
        let mut out = Vec::with_capacity(256);
        let mut input = block;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADERS {
                    return Err(protocol(format!("a header block over {MAX_HEADERS} bytes")));
                }
                out.reserve(out.len());
            }
            let before = self.inflate.total_in();
            let res = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            input = &input[(self.inflate.total_in() - before) as usize..];
            match res {
                Ok(Status::StreamEnd) => return Err(protocol("the header zlib stream ended")),
                Ok(_) if input.is_empty() && out.len() < out.capacity() => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(|e| protocol(format!("header dictionary: {e}")))?;
                }
                Err(e) => return Err(protocol(format!("header block: {e}"))),
            }
        }
        parse_block(&out)
    }
}

/// The pairs of an inflated header block.
pub fn parse_block(b: &[u8]) -> Result<Headers> {
    let mut c = Cursor(b);
    let n = c.len()?;
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let name = c.string()?;
        let value = c.string()?;
        if name.is_empty() || name.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(protocol(format!(
                "header name {name:?} is empty or not lowercase"
            )));
        }
        out.push((name, value));
    }
    Ok(out)
}

/// Reads a header block's fields in order.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(protocol("a header block cut short"));
        }
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(s)
    }

    fn len(&mut self) -> Result<usize> {
        let w = self.take(4)?;
        Ok(u32::from_be_bytes([w[0], w[1], w[2], w[3]]) as usize)
    }

    fn string(&mut self) -> Result<String> {
        let n = self.len()?;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
}

/// The value of `name` in `headers`.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Builds the server's frames. Header blocks share one zlib stream, so
/// frames with headers go out in the order they were built.
pub struct Writer {
    deflate: Compress,
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

impl Writer {
    pub fn new() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(dictionary())
            .expect("a fresh deflate stream takes a dictionary");
        Writer { deflate }
    }

    /// SYN_REPLY for `stream` with `headers`.
    pub fn syn_reply(&mut self, stream: u32, fin: bool, headers: &[(&str, &str)]) -> Vec<u8> {
        let raw = encode_block(headers);
        let mut block = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            block.reserve(64);
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut block, FlushCompress::Sync)
                .expect("deflate into memory");
            input = &input[(self.deflate.total_in() - before) as usize..];
            // Done when all input went in and the flush fit.
            if input.is_empty() && block.len() < block.capacity() {
                break;
            }
        }
        let mut body = stream.to_be_bytes().to_vec();
        body.extend_from_slice(&block);
        control(SYN_REPLY, if fin { FLAG_FIN } else { 0 }, &body)
    }
}

/// A header block before compression: the count, then each name and
/// value with its length.
pub fn encode_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
    for (k, v) in headers {
        for s in [k, v] {
            raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
            raw.extend_from_slice(s.as_bytes());
        }
    }
    raw
}

/// A control frame of `kind` with `body`.
pub fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

/// A DATA frame (`data` at most 16 MiB).
pub fn data(stream: u32, fin: bool, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend_from_slice(&(stream & 0x7FFF_FFFF).to_be_bytes());
    f.push(if fin { FLAG_FIN } else { 0 });
    f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(data);
    f
}

/// RST_STREAM of `stream` with `status`.
pub fn rst_stream(stream: u32, status: u32) -> Vec<u8> {
    let mut body = stream.to_be_bytes().to_vec();
    body.extend_from_slice(&status.to_be_bytes());
    control(RST_STREAM, 0, &body)
}

/// PING with `id` (the answer to a client's ping is its own frame back).
pub fn ping(id: u32) -> Vec<u8> {
    control(PING, 0, &id.to_be_bytes())
}

/// GOAWAY: the last stream the server accepted, status OK.
pub fn goaway(last_good: u32) -> Vec<u8> {
    let mut body = last_good.to_be_bytes().to_vec();
    body.extend_from_slice(&0u32.to_be_bytes());
    control(GOAWAY, 0, &body)
}

/// A client's side of header compression, for tests here and in
/// [`crate::portforward`].
#[cfg(test)]
pub mod testing {
    use super::*;

    /// A header block as a client compresses it: its own zlib stream with
    /// the dictionary, sync-flushed per block.
    pub struct Client {
        deflate: Compress,
    }

    impl Default for Client {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Client {
        pub fn new() -> Self {
            let mut deflate = Compress::new(Compression::best(), true);
            deflate.set_dictionary(dictionary()).unwrap();
            Client { deflate }
        }

        pub fn block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
            let raw = encode_block(headers);
            let mut out = Vec::with_capacity(raw.len() + 1024);
            self.deflate
                .compress_vec(&raw, &mut out, FlushCompress::Sync)
                .unwrap();
            out
        }

        pub fn syn_stream(&mut self, stream: u32, fin: bool, headers: &[(&str, &str)]) -> Vec<u8> {
            let mut body = stream.to_be_bytes().to_vec();
            body.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // associated, priority, slot
            body.extend_from_slice(&self.block(headers));
            control(SYN_STREAM, if fin { FLAG_FIN } else { 0 }, &body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Client;
    use super::*;

    #[test]
    fn the_dictionary_is_the_drafts() {
        let d = dictionary();
        // Draft 3's dictionary: 1423 bytes, opening with "options" and
        // closing with "enq=0.".
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b",*,enq=0."));
    }

    #[test]
    fn frames_are_laid_out_as_the_spec_draws_them() {
        // DATA: C=0, stream id, flags, 24-bit length.
        assert_eq!(data(3, true, b"hi"), b"\x00\x00\x00\x03\x01\x00\x00\x02hi");
        // Control: C=1, version 3, type, flags, length.
        assert_eq!(
            rst_stream(5, CANCEL),
            b"\x80\x03\x00\x03\x00\x00\x00\x08\x00\x00\x00\x05\x00\x00\x00\x05"
        );
        assert_eq!(ping(7), b"\x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x07");
        assert_eq!(
            goaway(9),
            b"\x80\x03\x00\x07\x00\x00\x00\x08\x00\x00\x00\x09\x00\x00\x00\x00"
        );
    }

    #[tokio::test]
    async fn a_clients_frames_are_read_headers_inflated_across_blocks() {
        let mut c = Client::new();
        let mut wire = Vec::new();
        let h1 = [
            ("streamtype", "error"),
            ("port", "8080"),
            ("requestid", "0"),
        ];
        wire.extend(c.syn_stream(1, false, &h1));
        // A later block relies on the earlier ones' history.
        let h2 = [("streamtype", "data"), ("port", "8080"), ("requestid", "0")];
        wire.extend(c.syn_stream(3, false, &h2));
        wire.extend(data(1, true, b""));
        wire.extend(data(3, false, b"payload"));
        wire.extend(ping(1));
        wire.extend(control(SETTINGS, 0, &[0, 0, 0, 0]));
        wire.extend(control(WINDOW_UPDATE, 0, &[0, 0, 0, 3, 0, 0, 1, 0]));
        wire.extend(rst_stream(3, CANCEL));
        wire.extend(goaway(3));
        let mut r = Reader::new(&wire[..]);
        let own = |h: &[(&str, &str)]| -> Headers {
            h.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            r.next().await.unwrap(),
            Some(Frame::SynStream {
                stream: 1,
                fin: false,
                headers: own(&h1)
            })
        );
        assert_eq!(
            r.next().await.unwrap(),
            Some(Frame::SynStream {
                stream: 3,
                fin: false,
                headers: own(&h2)
            })
        );
        assert_eq!(
            r.next().await.unwrap(),
            Some(Frame::Data {
                stream: 1,
                fin: true,
                data: Bytes::new()
            })
        );
        assert_eq!(
            r.next().await.unwrap(),
            Some(Frame::Data {
                stream: 3,
                fin: false,
                data: Bytes::from_static(b"payload")
            })
        );
        assert_eq!(r.next().await.unwrap(), Some(Frame::Ping(1)));
        assert_eq!(r.next().await.unwrap(), Some(Frame::Ignored(SETTINGS)));
        assert_eq!(r.next().await.unwrap(), Some(Frame::Ignored(WINDOW_UPDATE)));
        assert_eq!(
            r.next().await.unwrap(),
            Some(Frame::RstStream {
                stream: 3,
                status: CANCEL
            })
        );
        assert_eq!(
            r.next().await.unwrap(),
            Some(Frame::GoAway { last_good: 3 })
        );
        assert_eq!(r.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_servers_replies_inflate_with_the_dictionary() {
        let mut w = Writer::new();
        let mut wire = w.syn_reply(1, false, &[]);
        wire.extend(w.syn_reply(3, true, &[("x-note", "ok")]));
        // The zlib stream opens with FDICT and the dictionary's adler32, as
        // a client checks it.
        let body = &wire[12..];
        assert_eq!(body[1] & 0x20, 0x20, "FDICT");
        let mut inflate = Decompress::new(true);
        let mut out = Vec::with_capacity(64);
        let e = inflate
            .decompress_vec(body, &mut out, FlushDecompress::Sync)
            .unwrap_err();
        let mut adler = (1u32, 0u32);
        for b in dictionary() {
            adler.0 = (adler.0 + u32::from(*b)) % 65521;
            adler.1 = (adler.1 + adler.0) % 65521;
        }
        assert_eq!(e.needs_dictionary(), Some((adler.1 << 16) | adler.0));
        // Our own reader reads them back.
        let mut r = Reader::new(&wire[..]);
        assert_eq!(
            r.next().await.unwrap(),
            Some(Frame::SynReply {
                stream: 1,
                fin: false
            })
        );
        assert_eq!(
            r.next().await.unwrap(),
            Some(Frame::SynReply {
                stream: 3,
                fin: true
            })
        );
        // And the pairs are there.
        let mut w = Writer::new();
        let f = w.syn_reply(1, false, &[("x-note", "ok")]);
        let mut inflate = Decompress::new(true);
        let mut out = Vec::with_capacity(256);
        let e = inflate
            .decompress_vec(&f[12..], &mut out, FlushDecompress::Sync)
            .unwrap_err();
        assert!(e.needs_dictionary().is_some());
        inflate.set_dictionary(dictionary()).unwrap();
        let done = inflate.total_in() as usize;
        inflate
            .decompress_vec(&f[12 + done..], &mut out, FlushDecompress::Sync)
            .unwrap();
        assert_eq!(
            parse_block(&out).unwrap(),
            vec![("x-note".to_string(), "ok".to_string())]
        );
    }

    #[tokio::test]
    async fn bad_frames_are_refused_with_a_reason() {
        let mut huge = data(1, false, b"");
        huge[5..8].copy_from_slice(&[0x20, 0, 0]);
        let e = Reader::new(&huge[..]).next().await.unwrap_err();
        assert!(e.to_string().contains("bytes"), "{e}");
        let mut v2 = ping(1);
        v2[1] = 2;
        let e = Reader::new(&v2[..]).next().await.unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
        let short = control(RST_STREAM, 0, &[0, 0, 0, 1]);
        let e = Reader::new(&short[..]).next().await.unwrap_err();
        assert!(e.to_string().contains("too short"), "{e}");
        // A header block that is not zlib.
        let garbage = control(SYN_STREAM, 0, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3]);
        let e = Reader::new(&garbage[..]).next().await.unwrap_err();
        assert!(e.to_string().contains("header block"), "{e}");
        // Upper-case names are refused, as SPDY/3 requires lowercase.
        let mut c = Client::new();
        let f = c.syn_stream(1, false, &[("Port", "80")]);
        let e = Reader::new(&f[..]).next().await.unwrap_err();
        assert!(e.to_string().contains("lowercase"), "{e}");
    }
}
