//! Ticket decoders (binary and text): never panic; what decodes re-encodes to the same ticket.
#![no_main]

use keywire_proto::Ticket;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ticket) = Ticket::from_bytes(data) {
        assert_eq!(Ticket::from_bytes(&ticket.to_bytes()).as_ref(), Ok(&ticket));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(ticket) = text.parse::<Ticket>() {
            assert_eq!(ticket.to_string().parse::<Ticket>().as_ref(), Ok(&ticket));
        }
    }
});
