//! WebSocket frames (RFC 6455 §5) as a link carries them: one binary message per datagram.
//!
//! ```text
//! 0        1        2                      (2|4|10)    (+4 if masked)
//! +-+---+----+-+-------+------------------+-----------+----------------+
//! |F|RSV|op  |M| len7  | extended length  | mask key  | payload        |
//! +-+---+----+-+-------+------------------+-----------+----------------+
//! len7 126: a 2-byte length follows; 127: an 8-byte one (top bit 0).
//! ```
//!
//! Only what a link needs: no extensions (RSV bits must be 0), binary data, ping/pong, close.
//! Clients mask every frame and servers none (§5.1); the side that receives checks this. A
//! message longer than [`MAX_LINK_DATAGRAM`] is refused, so a peer cannot make the reader
//! buffer more than one datagram.

use super::MAX_LINK_DATAGRAM;

/// The GUID appended to the client's key before hashing (RFC 6455 §1.3).
pub const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Control frames carry at most this many payload bytes (§5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Frame types (§5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// More of a fragmented message.
    Continuation,
    /// UTF-8 text (never used by links; refused).
    Text,
    /// Binary data: a datagram.
    Binary,
    /// The peer is closing.
    Close,
    /// Asks for a pong.
    Ping,
    /// Answers a ping.
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// Why bytes are not an acceptable frame. Every error ends the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// An RSV bit is set (no extension was negotiated).
    #[error("reserved bits set")]
    Reserved,
    /// An opcode RFC 6455 does not define.
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    /// A client frame without a mask, or a server frame with one.
    #[error("frame masking is wrong for its direction")]
    Masking,
    /// A control frame that is fragmented or over 125 bytes.
    #[error("malformed control frame")]
    BadControl,
    /// A payload or message over [`MAX_LINK_DATAGRAM`].
    #[error("message of {0} bytes or more, over the link limit")]
    TooLong(u64),
    /// A text message, a continuation with no message started, or a new message before the
    /// last one ended.
    #[error("unexpected {0:?} frame")]
    Unexpected(Opcode),
}

/// One decoded frame; its payload is `buf[payload]` of the buffer given to [`decode`],
/// already unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The last frame of its message.
    pub fin: bool,
    /// Its type.
    pub opcode: Opcode,
    /// Where its payload is in the buffer.
    pub payload: std::ops::Range<usize>,
    /// Bytes the frame took.
    pub consumed: usize,
}

/// Reads one frame from the front of `buf`, unmasking its payload in place; `None` if `buf`
/// holds only part of it. `from_client`: the frame must be masked (else it must not be).
/// Never panics.
pub fn decode(buf: &mut [u8], from_client: bool) -> Result<Option<Frame>, WsError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WsError::Reserved);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(WsError::UnknownOpcode(b0 & 0x0F))?;
    let masked = b1 & 0x80 != 0;
    if masked != from_client {
        return Err(WsError::Masking);
    }
    let (len, mut at) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                (u64::from_be_bytes(be), 10)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if opcode.is_control() && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
        return Err(WsError::BadControl);
    }
    if len > MAX_LINK_DATAGRAM as u64 {
        return Err(WsError::TooLong(len));
    }
    let len = len as usize;
    let mut key = [0u8; 4];
    if masked {
        let Some(k) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        key.copy_from_slice(k);
        at += 4;
    }
    let Some(payload) = buf.get_mut(at..at + len) else {
        return Ok(None);
    };
    if masked {
        apply_mask(payload, key);
    }
    Ok(Some(Frame {
        fin,
        opcode,
        payload: at..at + len,
        consumed: at + len,
    }))
}

/// Appends one unfragmented frame; `mask` is the client's masking key (`None` from a server).
/// A payload over [`MAX_LINK_DATAGRAM`] (or over 125 bytes for a control frame) is refused.
pub fn encode(
    opcode: Opcode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
    out: &mut Vec<u8>,
) -> Result<(), WsError> {
    let limit = if opcode.is_control() {
        MAX_CONTROL_PAYLOAD
    } else {
        MAX_LINK_DATAGRAM
    };
    if payload.len() > limit {
        return Err(WsError::TooLong(payload.len() as u64));
    }
    out.push(0x80 | opcode.bits());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    let start = out.len();
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend_from_slice(payload);
            apply_mask(&mut out[start + 4..], key);
        }
        None => out.extend_from_slice(payload),
    }
    Ok(())
}

fn apply_mask(payload: &mut [u8], key: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// What a frame means to the link, from [`Reassembly::handle_frame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    /// A whole binary message: one datagram.
    Datagram(Vec<u8>),
    /// A ping: answer with a pong carrying this payload.
    Ping(Vec<u8>),
    /// The peer closes: answer with a close frame and end the link.
    Close,
    /// Nothing yet (a fragment, or a pong).
    Nothing,
}

/// Joins fragmented binary messages (a proxy may split them) up to [`MAX_LINK_DATAGRAM`].
#[derive(Debug, Default)]
pub struct Reassembly {
    partial: Option<Vec<u8>>,
}

impl Reassembly {
    /// Takes one decoded frame (`payload` is its unmasked payload).
    pub fn handle_frame(&mut self, frame: &Frame, payload: &[u8]) -> Result<WsEvent, WsError> {
        match (frame.opcode, self.partial.as_mut()) {
            (Opcode::Ping, _) => Ok(WsEvent::Ping(payload.to_vec())),
            (Opcode::Pong, _) => Ok(WsEvent::Nothing),
            (Opcode::Close, _) => Ok(WsEvent::Close),
            (Opcode::Binary, None) if frame.fin => Ok(WsEvent::Datagram(payload.to_vec())),
            (Opcode::Binary, None) => {
                self.partial = Some(payload.to_vec());
                Ok(WsEvent::Nothing)
            }
            (Opcode::Continuation, Some(partial)) => {
                let total = partial.len() + payload.len();
                if total > MAX_LINK_DATAGRAM {
                    return Err(WsError::TooLong(total as u64));
                }
                partial.extend_from_slice(payload);
                if frame.fin {
                    Ok(WsEvent::Datagram(self.partial.take().unwrap_or_default()))
                } else {
                    Ok(WsEvent::Nothing)
                }
            }
            (opcode, _) => Err(WsError::Unexpected(opcode)),
        }
    }
}

/// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key ‖ [`ACCEPT_GUID`])) (RFC 6455 §4.2.2).
/// SHA-1 here is the RFC's fixed handshake check, not a security measure.
pub fn accept_value(key: &str) -> String {
    use sha1::{Digest, Sha1};
    let mut hasher = Sha1::new();
    hasher.update(key.as_bytes());
    hasher.update(ACCEPT_GUID.as_bytes());
    base64(&hasher.finalize())
}

/// Standard base64 with padding (RFC 4648 §4), for `Sec-WebSocket-Key` and `-Accept`.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accept_value_of_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_value("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn base64_vectors() {
        // RFC 4648 §10.
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    #[test]
    fn rfc_6455_examples() {
        // §5.7: a single-frame unmasked text message "Hello" (a server frame).
        let mut unmasked = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let frame = decode(&mut unmasked, false).unwrap().unwrap();
        assert_eq!((frame.fin, frame.opcode), (true, Opcode::Text));
        assert_eq!(&unmasked[frame.payload], b"Hello");
        // The same message masked (a client frame).
        let mut masked = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let frame = decode(&mut masked, true).unwrap().unwrap();
        assert_eq!(frame.consumed, 11);
        assert_eq!(&masked[frame.payload], b"Hello");
        // Masking is checked against the direction.
        let mut again = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(decode(&mut again, true), Err(WsError::Masking));
    }

    #[test]
    fn encoded_binary_frames() {
        let mut out = Vec::new();
        encode(Opcode::Binary, &[1, 2, 3], None, &mut out).unwrap();
        assert_eq!(out, [0x82, 3, 1, 2, 3]);
        out.clear();
        encode(Opcode::Binary, &[0; 300], Some([1, 2, 3, 4]), &mut out).unwrap();
        assert_eq!(&out[..8], &[0x82, 0xFE, 0x01, 0x2C, 1, 2, 3, 4]);
        assert_eq!(&out[8..12], &[1, 2, 3, 4], "zeros masked show the key");
    }

    #[test]
    fn refusals() {
        assert_eq!(decode(&mut [0xC2, 0], false), Err(WsError::Reserved));
        assert_eq!(
            decode(&mut [0x83, 0], false),
            Err(WsError::UnknownOpcode(3))
        );
        assert_eq!(decode(&mut [0x09, 0], false), Err(WsError::BadControl));
        assert_eq!(
            decode(&mut [0x89, 126, 0, 126], false),
            Err(WsError::BadControl)
        );
        let mut huge = [0x82, 127, 0xFF, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(decode(&mut huge, false), Err(WsError::TooLong(0xFF << 56)));
        assert_eq!(
            decode(&mut [0x82, 126, 0x08, 0x01], false),
            Err(WsError::TooLong(2049))
        );
        assert_eq!(decode(&mut [0x82], false), Ok(None));
        assert_eq!(decode(&mut [0x82, 126, 0], false), Ok(None));
        assert_eq!(decode(&mut [0x82, 0x83, 1, 2], true), Ok(None));
        let mut out = Vec::new();
        assert!(encode(Opcode::Ping, &[0; 126], None, &mut out).is_err());
    }

    #[test]
    fn fragments_join_and_control_frames_pass_between() {
        let mut r = Reassembly::default();
        let frame = |fin, opcode| Frame {
            fin,
            opcode,
            payload: 0..0,
            consumed: 0,
        };
        assert_eq!(
            r.handle_frame(&frame(false, Opcode::Binary), b"ab"),
            Ok(WsEvent::Nothing)
        );
        assert_eq!(
            r.handle_frame(&frame(true, Opcode::Ping), b"p"),
            Ok(WsEvent::Ping(b"p".to_vec()))
        );
        assert_eq!(
            r.handle_frame(&frame(true, Opcode::Continuation), b"cd"),
            Ok(WsEvent::Datagram(b"abcd".to_vec()))
        );
        assert_eq!(
            r.handle_frame(&frame(true, Opcode::Continuation), b"x"),
            Err(WsError::Unexpected(Opcode::Continuation))
        );
        assert_eq!(
            r.handle_frame(&frame(true, Opcode::Text), b"x"),
            Err(WsError::Unexpected(Opcode::Text))
        );
        r.handle_frame(&frame(false, Opcode::Binary), &[0; MAX_LINK_DATAGRAM])
            .unwrap();
        assert!(r
            .handle_frame(&frame(true, Opcode::Continuation), b"x")
            .is_err());
    }

    proptest! {
        #[test]
        fn round_trip(payload in prop::collection::vec(any::<u8>(), 0..=MAX_LINK_DATAGRAM),
                      mask in any::<Option<[u8; 4]>>()) {
            let mut out = Vec::new();
            encode(Opcode::Binary, &payload, mask, &mut out).unwrap();
            let frame = decode(&mut out, mask.is_some()).unwrap().unwrap();
            prop_assert_eq!(frame.consumed, out.len());
            prop_assert_eq!(&out[frame.payload], &payload[..]);
        }
    }
}
