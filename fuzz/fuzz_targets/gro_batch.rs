//! GRO batch sorting: never panics, keeps only QUIC segments, never grows the buffer's content.
#![no_main]

use keywire_proto::datagram::{classify, DatagramClass};
use keywire_proto::gro::{keep_quic, SegmentSink};
use libfuzzer_sys::fuzz_target;

struct Count(usize);

impl SegmentSink for Count {
    fn control(&mut self, packet: &[u8]) {
        assert_eq!(classify(packet), DatagramClass::Control);
        self.0 += 1;
    }
    fn dropped(&mut self, _: DatagramClass) {
        self.0 += 1;
    }
}

fuzz_target!(|input: (u16, u16, Vec<u8>)| {
    let (stride, len, mut buf) = input;
    let mut sink = Count(0);
    let kept = keep_quic(&mut buf, len as usize, stride as usize, &mut sink);
    assert!(kept <= buf.len().min(len as usize));
});
