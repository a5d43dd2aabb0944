//! The WebSocket frame reader on arbitrary client bytes, cut at arbitrary points: it must
//! never panic, never report a second failure, and say nothing after a client's close.
#![no_main]

use libfuzzer_sys::fuzz_target;
use progress_hub::transport::ws::frame::{Incoming, Reader};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let piece = usize::from(cut).max(1);
    let mut reader = Reader::new(4096);
    let mut failures = 0;
    for chunk in bytes.chunks(piece) {
        let mut input = chunk;
        while let Some(item) = reader.next(&mut input) {
            match item {
                Err(_) => failures += 1,
                Ok(Incoming::Close(code)) => assert!(code >= 1000),
                Ok(Incoming::Ping(payload)) => assert!(payload.len() <= 125),
            }
        }
        assert!(input.is_empty(), "the reader consumes every piece");
    }
    assert!(failures <= 1, "one failure at most");
});
