//! The server side of WebSocket (RFC 6455) as the `channel.k8s.io`
//! streaming protocols use it: the handshake's accept key, frames read
//! from a client (masked, possibly fragmented, pings between fragments)
//! and written to it (unmasked). No extensions: permessage-deflate is not
//! offered back, so clients do not compress. What the frames carry is
//! [`crate::exec`]'s business.

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// RFC 6455's key suffix for `Sec-WebSocket-Accept`.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The largest message accepted from a client (a stdin chunk or a resize;
/// kubectl sends at most 32 KiB at a time).
pub const MAX_MESSAGE: usize = 1 << 20;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The `Sec-WebSocket-Accept` answer to a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{}{GUID}", key.trim()).as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// One message from the client.
#[derive(Debug, PartialEq)]
pub enum Message {
    /// A whole data message (binary or text), fragments joined.
    Data(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    /// The client closes (its close code, if it gave one).
    Close(Option<u16>),
}

/// Why a client's frames could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("read: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(&'static str),
    #[error("a message of more than {MAX_MESSAGE} bytes")]
    TooBig,
}

/// Reads the client's messages.
pub struct Reader<R> {
    r: R,
    /// The fragments so far of a data message (control frames may come
    /// between them).
    partial: Option<Vec<u8>>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(r: R) -> Self {
        Reader { r, partial: None }
    }

    /// The next message; `None` when the connection ended without a close.
    pub async fn next(&mut self) -> Result<Option<Message>, FrameError> {
        loop {
            let Some((fin, op, payload)) = self.frame().await? else {
                return Ok(None);
            };
            match op {
                OP_PING => return Ok(Some(Message::Ping(payload))),
                OP_PONG => return Ok(Some(Message::Pong)),
                OP_CLOSE => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return Ok(Some(Message::Close(code)));
                }
                OP_TEXT | OP_BINARY if self.partial.is_none() => self.partial = Some(payload),
                OP_CONTINUATION if self.partial.is_some() => {
                    let d = self.partial.as_mut().expect("checked");
                    if d.len() + payload.len() > MAX_MESSAGE {
                        return Err(FrameError::TooBig);
                    }
                    d.extend_from_slice(&payload);
                }
                OP_TEXT | OP_BINARY | OP_CONTINUATION => {
                    return Err(FrameError::Protocol("a data frame out of sequence"))
                }
                _ => return Err(FrameError::Protocol("an unknown opcode")),
            }
            if fin {
                return Ok(self.partial.take().map(Message::Data));
            }
        }
    }

    /// One frame: (fin, opcode, unmasked payload); `None` at a clean end
    /// of the connection between frames.
    async fn frame(&mut self) -> Result<Option<(bool, u8, Vec<u8>)>, FrameError> {
        let mut head = [0u8; 2];
        match self.r.read(&mut head[..1]).await? {
            0 => return Ok(None),
            _ => self.r.read_exact(&mut head[1..]).await?,
        };
        let fin = head[0] & 0x80 != 0;
        if head[0] & 0x70 != 0 {
            return Err(FrameError::Protocol(
                "reserved bits set (no extension was agreed)",
            ));
        }
        let op = head[0] & 0x0F;
        if head[1] & 0x80 == 0 {
            return Err(FrameError::Protocol("an unmasked frame from a client"));
        }
        let len = match head[1] & 0x7F {
            126 => u64::from(self.r.read_u16().await?),
            127 => self.r.read_u64().await?,
            n => u64::from(n),
        };
        if op >= OP_CLOSE && (len > 125 || !fin) {
            return Err(FrameError::Protocol(
                "a control frame too long or fragmented",
            ));
        }
        if len > MAX_MESSAGE as u64 {
            return Err(FrameError::TooBig);
        }
        let mut mask = [0u8; 4];
        self.r.read_exact(&mut mask).await?;
        let mut payload = vec![0u8; len as usize];
        self.r.read_exact(&mut payload).await?;
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        Ok(Some((fin, op, payload)))
    }
}

/// A frame as the server sends it: final, unmasked.
pub fn frame(op: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(len + 10);
    out.push(0x80 | op);
    match len {
        0..=125 => out.push(len as u8),
        126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// Writes one frame and flushes it.
pub async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    op: u8,
    parts: &[&[u8]],
) -> std::io::Result<()> {
    w.write_all(&frame(op, parts)).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a client sends it (masked), possibly not final.
    fn client_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut f = frame(op, &[payload]);
        if !fin {
            f[0] &= 0x7F;
        }
        let start = f.len() - payload.len();
        f[1] |= 0x80;
        let mut out = f[..start].to_vec();
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn the_accept_key_is_rfc_6455s_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[tokio::test]
    async fn fragments_join_and_control_frames_come_between() {
        let big = vec![7u8; 70_000];
        let mut wire = client_frame(false, OP_BINARY, b"\x00hel");
        wire.extend(client_frame(true, OP_PING, b"p"));
        wire.extend(client_frame(true, OP_CONTINUATION, b"lo"));
        wire.extend(client_frame(true, OP_BINARY, &big));
        wire.extend(client_frame(true, OP_CLOSE, &1000u16.to_be_bytes()));
        let mut r = Reader::new(&wire[..]);
        assert_eq!(r.next().await.unwrap(), Some(Message::Ping(b"p".to_vec())));
        assert_eq!(
            r.next().await.unwrap(),
            Some(Message::Data(b"\x00hello".to_vec()))
        );
        assert_eq!(r.next().await.unwrap(), Some(Message::Data(big)));
        assert_eq!(r.next().await.unwrap(), Some(Message::Close(Some(1000))));
        assert_eq!(r.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn bad_frames_are_refused_with_a_reason() {
        let unmasked = frame(OP_BINARY, &[b"x"]);
        let e = Reader::new(&unmasked[..]).next().await.unwrap_err();
        assert!(e.to_string().contains("unmasked"), "{e}");
        let mut huge = client_frame(true, OP_BINARY, b"");
        huge[1] = 0x80 | 127;
        huge.splice(2..2, ((MAX_MESSAGE as u64) + 1).to_be_bytes());
        let e = Reader::new(&huge[..]).next().await.unwrap_err();
        assert!(matches!(e, FrameError::TooBig), "{e}");
        let cont = client_frame(true, OP_CONTINUATION, b"x");
        let e = Reader::new(&cont[..]).next().await.unwrap_err();
        assert!(e.to_string().contains("out of sequence"), "{e}");
    }

    #[test]
    fn server_frames_use_the_shortest_length() {
        assert_eq!(frame(OP_BINARY, &[b"\x01", b"hi"]), b"\x82\x03\x01hi");
        let f = frame(OP_BINARY, &[&[0u8; 200]]);
        assert_eq!(&f[..4], &[0x82, 126, 0, 200]);
        let f = frame(OP_BINARY, &[&vec![0u8; 70_000]]);
        assert_eq!(f[1], 127);
        assert_eq!(f.len(), 70_000 + 10);
    }
}
