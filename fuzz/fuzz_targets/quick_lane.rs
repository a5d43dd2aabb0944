//! The quick lane's head parser on arbitrary bytes: it must never panic, never claim more
//! bytes than it was given, and write a whole HTTP/1.1 answer whenever it answers.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use progress_hub::transport::quick::{answer_one, Answer, Parsed, Quick};

/// Answers `GET /yes` with a body and `GET /empty` without one.
struct Routes;

impl Quick for Routes {
    fn answer(&self, path: &str, _: &[httparse::Header<'_>], out: &mut Vec<u8>) -> Answer {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        match path {
            "/yes" => Answer::Body(Bytes::from_static(b"body")),
            "/empty" => Answer::Empty,
            _ => Answer::Pass,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    match answer_one(data, &Routes, &mut out) {
        Parsed::Answered { used, .. } => {
            assert!(used <= data.len());
            assert!(out.starts_with(b"HTTP/1.1 "));
            assert!(out.windows(4).any(|w| w == b"\r\n\r\n"));
        }
        Parsed::Partial | Parsed::Pass => assert!(out.is_empty()),
    }
});
