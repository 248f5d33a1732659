//! The client half of SPDY/3.1 that containerd's CRI streaming server
//! needs for exec and attach (`X-Stream-Protocol-Version:
//! v4.channel.k8s.io`): one stream per `streamType` (error, stdin, stdout,
//! stderr, resize), data frames both ways, FIN to close stdin. WebSocket
//! (v4) would also reach that server, but it cannot close stdin alone, so
//! `echo x | kubectl exec -i … -- cat` would never end.
//!
//! Only what a client of that server uses is here: it never pushes
//! streams, and its Go implementation (spdystream) does no flow control,
//! so WINDOW_UPDATE and SETTINGS are read and ignored. Header blocks are
//! compressed in the zlib format SPDY requires, as *stored* deflate blocks
//! (no compression, so no dictionary and no zlib crate): a zlib header
//! without FDICT on the first block, then per frame one stored block with
//! the pairs and an empty stored block (the sync-flush marker, which also
//! makes Go's flate reader hand the pairs out before looking for another
//! block). The server's reply headers are skipped unread.

use tokio::io::{AsyncRead, AsyncReadExt as _};

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
pub const FLAG_FIN: u8 = 0x01;
/// Data frame lengths are 24 bits; larger writes are split.
const MAX_DATA: usize = 0xFF_FFFF;

/// A frame received from the server, as far as this client cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        fin: bool,
        data: Vec<u8>,
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
    GoAway,
    /// SETTINGS, WINDOW_UPDATE, HEADERS, a pushed SYN_STREAM: nothing to do.
    Ignored,
}

/// The sending side's header compression context (one zlib stream per connection and direction).
#[derive(Debug, Default)]
pub struct HeaderEncoder {
    started: bool,
}

impl HeaderEncoder {
    /// One header block: SPDY/3 name/value pairs (32-bit counts and lengths), as zlib stored blocks.
    pub fn encode(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend((headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            for s in [name.to_ascii_lowercase().as_str(), value] {
                raw.extend((s.len() as u32).to_be_bytes());
                raw.extend(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 16);
        if !self.started {
            // CMF: deflate, 32 KiB window; FLG: no dictionary, check bits (0x7801 % 31 == 0).
            out.extend([0x78, 0x01]);
            self.started = true;
        }
        for chunk in raw.chunks(0xFFFF) {
            stored_block(&mut out, chunk);
        }
        stored_block(&mut out, &[]);
        out
    }
}

/// A non-final stored deflate block (BFINAL 0, BTYPE 00, padded to a byte; LEN, NLEN little-endian).
fn stored_block(out: &mut Vec<u8>, data: &[u8]) {
    let len = data.len() as u16;
    out.push(0);
    out.extend(len.to_le_bytes());
    out.extend((!len).to_le_bytes());
    out.extend(data);
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend((0x8000 | VERSION).to_be_bytes());
    f.extend(kind.to_be_bytes());
    f.push(flags);
    f.extend(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend(payload);
    f
}

/// SYN_STREAM opening `stream` (odd: client-initiated) with `headers`.
pub fn syn_stream(enc: &mut HeaderEncoder, stream: u32, headers: &[(&str, &str)], fin: bool) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend((stream & 0x7FFF_FFFF).to_be_bytes());
    p.extend(0u32.to_be_bytes()); // associated-to stream
    p.extend([0, 0]); // priority, slot
    p.extend(enc.encode(headers));
    control(SYN_STREAM, if fin { FLAG_FIN } else { 0 }, &p)
}

/// Data frames carrying `data` on `stream`; `fin` closes the sending side (an empty frame if `data` is).
pub fn data(stream: u32, data: &[u8], fin: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    let chunks: Vec<&[u8]> = if data.is_empty() { vec![&[]] } else { data.chunks(MAX_DATA).collect() };
    let last = chunks.len() - 1;
    for (i, c) in chunks.into_iter().enumerate() {
        out.extend((stream & 0x7FFF_FFFF).to_be_bytes());
        out.push(if fin && i == last { FLAG_FIN } else { 0 });
        out.extend(&(c.len() as u32).to_be_bytes()[1..]);
        out.extend(c);
    }
    out
}

/// The answer to a server's PING (the same id).
pub fn ping(id: u32) -> Vec<u8> {
    control(PING, 0, &id.to_be_bytes())
}

/// RST_STREAM with status CANCEL (5).
pub fn rst_stream(stream: u32) -> Vec<u8> {
    let mut p = (stream & 0x7FFF_FFFF).to_be_bytes().to_vec();
    p.extend(5u32.to_be_bytes());
    control(RST_STREAM, 0, &p)
}

fn word(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7FFF_FFFF
}

/// Reads one frame; `None` at a clean end of the connection (between frames).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut head[1..]).await?;
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    let fin = flags & FLAG_FIN != 0;
    if head[0] & 0x80 == 0 {
        return Ok(Some(Frame::Data { stream: word(&head), fin, data: payload }));
    }
    let kind = u16::from_be_bytes([head[2], head[3]]);
    let short = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("short SPDY control frame {kind}"));
    Ok(Some(match kind {
        SYN_REPLY if len >= 4 => Frame::SynReply { stream: word(&payload), fin },
        RST_STREAM if len >= 8 => Frame::RstStream { stream: word(&payload), status: word(&payload[4..]) },
        PING if len >= 4 => Frame::Ping(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])),
        GOAWAY => Frame::GoAway,
        SYN_REPLY | RST_STREAM | PING => return Err(short()),
        _ => Frame::Ignored,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_blocks_are_zlib_stored_blocks() {
        let mut enc = HeaderEncoder::default();
        let first = enc.encode(&[("streamType", "error")]);
        let pairs =
            [&1u32.to_be_bytes()[..], &10u32.to_be_bytes(), b"streamtype", &5u32.to_be_bytes(), b"error"].concat();
        let n = pairs.len() as u16;
        let block = [&[0u8][..], &n.to_le_bytes(), &(!n).to_le_bytes(), &pairs].concat();
        let expect = [&[0x78u8, 0x01][..], &block, &[0, 0, 0, 0xFF, 0xFF]].concat();
        assert_eq!(first, expect);
        assert_eq!((u16::from(first[0]) << 8 | u16::from(first[1])) % 31, 0, "a valid zlib header");
        // Later blocks continue the same stream: no second zlib header.
        assert_eq!(enc.encode(&[("streamType", "error")]), [&block[..], &[0, 0, 0, 0xFF, 0xFF]].concat());
    }

    #[test]
    fn frames_round_trip() {
        let mut enc = HeaderEncoder::default();
        let syn = syn_stream(&mut enc, 3, &[("streamtype", "stdin")], false);
        assert_eq!(&syn[..4], &[0x80, 0x03, 0x00, 0x01]);
        assert_eq!(u32::from_be_bytes([0, syn[5], syn[6], syn[7]]) as usize, syn.len() - 8);
        assert_eq!(&syn[8..12], &3u32.to_be_bytes());
        assert_eq!(data(5, b"hi", true), [0, 0, 0, 5, FLAG_FIN, 0, 0, 2, b'h', b'i']);
        assert_eq!(data(5, b"", true), [0, 0, 0, 5, FLAG_FIN, 0, 0, 0]);

        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut wire: Vec<u8> = Vec::new();
        wire.extend(data(7, b"out", false));
        wire.extend(control(SYN_REPLY, FLAG_FIN, &[0, 0, 0, 9, 0x78, 0x01]));
        wire.extend(ping(42));
        wire.extend(rst_stream(1));
        wire.extend(control(9, 0, &[0, 0, 0, 0, 0, 0, 1, 0]));
        wire.extend(control(GOAWAY, 0, &[0, 0, 0, 0, 0, 0, 0, 0]));
        let frames = rt.block_on(async {
            let mut r = &wire[..];
            let mut out = Vec::new();
            while let Some(f) = read_frame(&mut r).await.unwrap() {
                out.push(f);
            }
            out
        });
        assert_eq!(
            frames,
            [
                Frame::Data { stream: 7, fin: false, data: b"out".to_vec() },
                Frame::SynReply { stream: 9, fin: true },
                Frame::Ping(42),
                Frame::RstStream { stream: 1, status: 5 },
                Frame::Ignored,
                Frame::GoAway,
            ]
        );
    }
}
