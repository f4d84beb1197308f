//! Sorting a batch of received datagrams: QUIC stays for quinn, everything else is cut out.
//!
//! With GRO the kernel hands over several datagrams from one source in one buffer, each `stride`
//! bytes long except possibly the last. A control packet of another size ends such a batch; a
//! control packet of the same size may sit anywhere in it. Removing a segment and moving the
//! later ones forward keeps the batch valid: every segment but the last is still `stride` long.

use crate::datagram::{classify, DatagramClass};

/// What happened to the non-QUIC segments of a buffer.
pub trait SegmentSink {
    /// A control packet (first byte `0x04..=0x3F`), for the control dispatcher.
    fn control(&mut self, packet: &[u8]);
    /// A STUN packet or an empty datagram: dropped.
    fn dropped(&mut self, class: DatagramClass);
}

/// Keeps the QUIC segments of `buf[..len]` at its front, in order, hands every other segment to
/// `sink`, and returns the new length. `stride` 0 means one datagram.
pub fn keep_quic(buf: &mut [u8], len: usize, stride: usize, sink: &mut impl SegmentSink) -> usize {
    let len = len.min(buf.len());
    let stride = if stride == 0 { len } else { stride };
    if len == 0 {
        sink.dropped(DatagramClass::Empty);
        return 0;
    }
    let mut read = 0;
    let mut write = 0;
    while read < len {
        let end = (read + stride).min(len);
        match classify(&buf[read..end]) {
            DatagramClass::Quic => {
                if write != read {
                    buf.copy_within(read..end, write);
                }
                write += end - read;
            }
            DatagramClass::Control => sink.control(&buf[read..end]),
            class @ (DatagramClass::Stun | DatagramClass::Empty) => sink.dropped(class),
        }
        read = end;
    }
    write
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Default)]
    struct Collect {
        control: Vec<Vec<u8>>,
        dropped: usize,
    }

    impl SegmentSink for Collect {
        fn control(&mut self, packet: &[u8]) {
            self.control.push(packet.to_vec());
        }
        fn dropped(&mut self, _: DatagramClass) {
            self.dropped += 1;
        }
    }

    #[test]
    fn single_datagrams() {
        let mut sink = Collect::default();
        let mut quic = [0xC0, 1, 2];
        assert_eq!(keep_quic(&mut quic, 3, 0, &mut sink), 3);
        let mut control = [0x10, 1, 2];
        assert_eq!(keep_quic(&mut control, 3, 3, &mut sink), 0);
        assert_eq!(sink.control, vec![vec![0x10, 1, 2]]);
        let mut stun = [0x00, 1];
        assert_eq!(keep_quic(&mut stun, 2, 0, &mut sink), 0);
        assert_eq!(keep_quic(&mut [], 0, 0, &mut sink), 0);
        assert_eq!(sink.dropped, 2);
    }

    #[test]
    fn control_in_the_middle_and_at_the_end_of_a_gro_batch() {
        // Segments of stride 3: Q1 C Q2 Q3(short, 2 bytes) then a control packet ending the batch.
        let mut buf = vec![0x41, 1, 1, 0x10, 1, 9, 0x42, 2, 2, 0x43, 3];
        let mut sink = Collect::default();
        let n = keep_quic(&mut buf, 11, 3, &mut sink);
        assert_eq!(&buf[..n], &[0x41, 1, 1, 0x42, 2, 2, 0x43, 3]);
        assert_eq!(sink.control, vec![vec![0x10, 1, 9]]);

        let mut buf = vec![0x41, 1, 1, 0x42, 2, 2, 0x11, 1];
        let n = keep_quic(&mut buf, 8, 3, &mut sink);
        assert_eq!(&buf[..n], &[0x41, 1, 1, 0x42, 2, 2]);
        assert_eq!(sink.control.last().unwrap(), &vec![0x11, 1]);
    }

    proptest! {
        /// Whatever the mix, the QUIC segments come out whole and in order, and every other
        /// segment reaches the sink.
        #[test]
        fn keeps_exactly_the_quic_segments(stride in 1usize..40, segments in proptest::collection::vec((any::<u8>(), 0usize..40), 1..12)) {
            let mut buf = Vec::new();
            let mut expected_quic = Vec::new();
            let mut expected_other = 0;
            let count = segments.len();
            for (i, (first, extra)) in segments.into_iter().enumerate() {
                let seg_len = if i + 1 == count { 1 + extra % stride } else { stride };
                let mut seg = vec![first];
                seg.extend(std::iter::repeat_n(i as u8, seg_len - 1));
                if first & 0xC0 != 0 { expected_quic.extend_from_slice(&seg) } else { expected_other += 1 }
                buf.extend_from_slice(&seg);
            }
            let len = buf.len();
            let mut sink = Collect::default();
            let n = keep_quic(&mut buf, len, stride, &mut sink);
            prop_assert_eq!(&buf[..n], &expected_quic[..]);
            prop_assert_eq!(sink.control.len() + sink.dropped, expected_other);
        }
    }
}
