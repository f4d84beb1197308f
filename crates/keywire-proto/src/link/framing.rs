//! Raw TCP framing, version 1.
//!
//! The client opens with an 8-byte preamble; after it, both directions carry frames:
//!
//! ```text
//! preamble (client to gate, once):
//! 0                      6      7      8
//! +----------------------+------+------+
//! | "KWLINK" (ASCII)     | 0x00 | 0x01 |   magic, reserved, version
//! +----------------------+------+------+
//!
//! frame (both directions):
//! 0            2
//! +------------+-----------------------------+
//! | length (2) | datagram (length bytes)     |   length big-endian, 1..=MAX_LINK_DATAGRAM
//! +------------+-----------------------------+
//! ```
//!
//! The preamble lets a gate tell a raw link from an HTTP request on the same port by its first
//! bytes (an HTTP request starts with a method such as `GET `), and names the version.

use super::MAX_LINK_DATAGRAM;

/// What a raw link's client sends first.
pub const PREAMBLE: [u8; 8] = *b"KWLINK\x00\x01";
/// Bytes before each datagram.
pub const LENGTH_PREFIX_LEN: usize = 2;

/// Why bytes on a link are not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkFrameError {
    /// A zero length: a frame must carry a datagram.
    #[error("empty link frame")]
    Empty,
    /// A length over [`MAX_LINK_DATAGRAM`].
    #[error("link frame of {0} bytes, over the {MAX_LINK_DATAGRAM}-byte limit")]
    TooLong(usize),
}

/// What the first bytes of a stream say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStart {
    /// The raw link preamble (of a version this code speaks).
    RawLink,
    /// An HTTP GET request (maybe a WebSocket upgrade).
    HttpGet,
    /// Neither: close the stream.
    Unknown,
    /// Too few bytes to tell.
    NeedMore,
}

/// Tells a raw link from an HTTP request by the first bytes of a stream.
pub fn sniff(start: &[u8]) -> StreamStart {
    const GET: &[u8] = b"GET ";
    for (prefix, kind) in [
        (&PREAMBLE[..], StreamStart::RawLink),
        (GET, StreamStart::HttpGet),
    ] {
        let n = start.len().min(prefix.len());
        if start[..n] == prefix[..n] {
            return if n == prefix.len() {
                kind
            } else {
                StreamStart::NeedMore
            };
        }
    }
    StreamStart::Unknown
}

/// Appends `datagram` as one frame to `out`.
pub fn encode(datagram: &[u8], out: &mut Vec<u8>) -> Result<(), LinkFrameError> {
    check_len(datagram.len())?;
    out.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
    out.extend_from_slice(datagram);
    Ok(())
}

/// Reads one frame from the front of `buf`: the datagram and the bytes the frame took, or
/// `None` if `buf` holds only part of a frame. Never panics; an error means the stream is
/// broken (the link must close: there is no way to find the next frame).
pub fn decode(buf: &[u8]) -> Result<Option<(&[u8], usize)>, LinkFrameError> {
    let Some(prefix) = buf.get(..LENGTH_PREFIX_LEN) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
    check_len(len)?;
    let end = LENGTH_PREFIX_LEN + len;
    Ok(buf.get(LENGTH_PREFIX_LEN..end).map(|d| (d, end)))
}

fn check_len(len: usize) -> Result<(), LinkFrameError> {
    match len {
        0 => Err(LinkFrameError::Empty),
        n if n > MAX_LINK_DATAGRAM => Err(LinkFrameError::TooLong(n)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn literal_frames() {
        let mut out = Vec::new();
        encode(&[0xC0, 1, 2], &mut out).unwrap();
        encode(&[0x11], &mut out).unwrap();
        assert_eq!(out, [0, 3, 0xC0, 1, 2, 0, 1, 0x11]);
        assert_eq!(decode(&out), Ok(Some((&[0xC0, 1, 2][..], 5))));
        assert_eq!(decode(&out[5..]), Ok(Some((&[0x11][..], 3))));
    }

    #[test]
    fn partial_frames_wait_for_more() {
        assert_eq!(decode(&[]), Ok(None));
        assert_eq!(decode(&[0]), Ok(None));
        assert_eq!(decode(&[0, 3, 0xC0, 1]), Ok(None));
    }

    #[test]
    fn bad_lengths_break_the_stream() {
        assert_eq!(decode(&[0, 0, 1]), Err(LinkFrameError::Empty));
        assert_eq!(decode(&[0x08, 0x01]), Err(LinkFrameError::TooLong(2049)));
        assert_eq!(decode(&[0xFF, 0xFF]), Err(LinkFrameError::TooLong(65535)));
        let mut out = Vec::new();
        assert_eq!(encode(&[], &mut out), Err(LinkFrameError::Empty));
        assert_eq!(
            encode(&[0; MAX_LINK_DATAGRAM + 1], &mut out),
            Err(LinkFrameError::TooLong(MAX_LINK_DATAGRAM + 1))
        );
        assert!(out.is_empty(), "a refused datagram writes nothing");
        encode(&[7; MAX_LINK_DATAGRAM], &mut out).unwrap();
        assert_eq!(decode(&out).unwrap().unwrap().1, MAX_LINK_DATAGRAM + 2);
    }

    #[test]
    fn sniffing_the_first_bytes() {
        assert_eq!(sniff(b"KWLINK\x00\x01\x00\x05"), StreamStart::RawLink);
        assert_eq!(sniff(b"KWL"), StreamStart::NeedMore);
        assert_eq!(sniff(b""), StreamStart::NeedMore);
        assert_eq!(sniff(b"GET /keywire HTTP/1.1\r\n"), StreamStart::HttpGet);
        assert_eq!(sniff(b"GE"), StreamStart::NeedMore);
        assert_eq!(
            sniff(b"KWLINK\x00\x02"),
            StreamStart::Unknown,
            "unknown version"
        );
        assert_eq!(sniff(b"POST / HTTP/1.1"), StreamStart::Unknown);
        assert_eq!(sniff(b"\x16\x03\x01"), StreamStart::Unknown, "TLS");
    }

    proptest! {
        #[test]
        fn round_trip(datagrams in prop::collection::vec(
            prop::collection::vec(any::<u8>(), 1..=MAX_LINK_DATAGRAM), 0..6)
        ) {
            let mut stream = Vec::new();
            for d in &datagrams {
                encode(d, &mut stream).unwrap();
            }
            let mut rest = &stream[..];
            let mut decoded = Vec::new();
            while let Some((d, used)) = decode(rest).unwrap() {
                decoded.push(d.to_vec());
                rest = &rest[used..];
            }
            prop_assert!(rest.is_empty());
            prop_assert_eq!(decoded, datagrams);
        }
    }
}
