//! Feeds arbitrary bytes to the frame decoder as one connection's receive
//! buffer: decodes frames from the front until it needs more bytes or the
//! input breaks the protocol, as the server's read loop does.
//!
//! Beyond "never panics", every decoded frame must encode back to exactly the
//! bytes it was decoded from (decoding is strict, so the encoding is
//! canonical), and those bytes must decode to the same frame again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use twinmq::protocol::{Limits, decode};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut rest = data;
    while let Ok(Some((frame, consumed))) = decode(rest, &limits) {
        assert!(
            consumed > 4 && consumed <= rest.len(),
            "consumed {consumed} of {}",
            rest.len()
        );
        let mut encoded = Vec::new();
        frame
            .encode(&mut encoded)
            .unwrap_or_else(|e| panic!("decoded {} does not encode: {e}", frame.name()));
        assert_eq!(
            encoded,
            rest[..consumed],
            "{} re-encodes differently",
            frame.name()
        );
        let again = decode(&encoded, &limits)
            .unwrap_or_else(|e| panic!("re-encoded {} does not decode: {e}", frame.name()));
        assert_eq!(again, Some((frame, consumed)));
        rest = &rest[consumed..];
    }
});
