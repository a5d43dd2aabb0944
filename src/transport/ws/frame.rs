//! The WebSocket wire format (RFC 6455), as much as a push-only server needs: the
//! handshake's accept key, the heads of the frames it sends (never masked, never
//! fragmented, no extensions), close frames, and a reader of what clients send that keeps
//! only control frames: data messages are skipped as they arrive, never buffered, and one
//! over the size limit ends the socket.

use base64::Engine;
use bytes::Bytes;
use sha1::{Digest, Sha1};

pub const TEXT: u8 = 0x1;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;
const CONTINUATION: u8 = 0x0;
const BINARY: u8 = 0x2;

/// Close codes (RFC 6455 §7.4.1).
pub const NORMAL: u16 = 1000;
pub const GOING_AWAY: u16 = 1001;
pub const PROTOCOL_ERROR: u16 = 1002;
pub const INVALID_DATA: u16 = 1007;
pub const TOO_BIG: u16 = 1009;

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// Whether `key` is a valid `Sec-WebSocket-Key`: 16 bytes in base64.
pub fn valid_key(key: &[u8]) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|nonce| nonce.len() == 16)
}

/// Writes the head of a final, unmasked frame with `opcode` and `len` payload bytes into
/// `out`; returns its length (2, 4 or 10).
pub fn head(opcode: u8, len: usize, out: &mut [u8; 20]) -> usize {
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// A whole close frame with `code` and `reason` (cut to the 123 bytes a control frame
/// leaves for it, at a character boundary).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut frame = Vec::with_capacity(4 + reason.len());
    frame.push(0x80 | CLOSE);
    frame.push(2 + reason.len() as u8);
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason);
    Bytes::from(frame)
}

/// What a client said that needs an answer.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// A ping, with its payload for the pong.
    Ping(Bytes),
    /// A close frame; the code to answer it with (its own, or 1000 if it had none).
    Close(u16),
}

/// What ends the socket.
#[derive(Debug, PartialEq)]
pub enum Fail {
    /// A data message over the size limit: close 1009.
    TooBig,
    /// Not WebSocket as RFC 6455 has it: close 1002.
    Protocol,
    /// A text message or a close reason that is not UTF-8: close 1007 (RFC 6455 §8.1).
    InvalidData,
}

impl Fail {
    pub fn close_frame(&self) -> Bytes {
        match self {
            Fail::TooBig => close(TOO_BIG, "message too big"),
            Fail::Protocol => close(PROTOCOL_ERROR, "protocol error"),
            Fail::InvalidData => close(INVALID_DATA, "invalid UTF-8"),
        }
    }
}

/// Where the reader stands with the client.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Every rule is checked.
    Open,
    /// A failure was reported (message too big, bad UTF-8) but the frames still have
    /// known bounds: the rest of the failing frame is skipped and the reader goes on, so
    /// that the client's answering close is seen and no payload is taken for a head.
    /// Data frames are skipped unchecked; a later failure only switches to `Discard`.
    Closing,
    /// The frame boundaries are lost (a protocol error): everything is dropped unread.
    Discard,
}

/// Reads a client's frames as they arrive, in pieces of any size.
pub struct Reader {
    max_message: u64,
    mode: Mode,
    /// The head being read: 2 bytes, then up to 8 of length and 4 of mask.
    head: [u8; 14],
    have: usize,
    /// The frame whose payload is being read, once its head is complete.
    frame: Option<Payload>,
    /// The data message being read; `None` when no message is open.
    message: Option<Message>,
}

struct Message {
    /// Bytes so far, all frames counted.
    size: u64,
    /// A text message, whose bytes are checked as UTF-8 as they arrive (never kept).
    text: Option<Utf8>,
}

struct Payload {
    opcode: u8,
    fin: bool,
    mask: [u8; 4],
    len: u64,
    remaining: u64,
    /// A control frame's payload (at most 125 bytes), unmasked.
    control: Vec<u8>,
}

impl Reader {
    pub fn new(max_message: u64) -> Reader {
        Reader {
            max_message,
            mode: Mode::Open,
            head: [0; 14],
            have: 0,
            frame: None,
            message: None,
        }
    }

    /// Consumes `input` until a frame that needs an answer is complete (returned) or the
    /// input is used up (`None`). After the first `Err` the socket is closing: the reader
    /// goes on so that the client's close is still seen, and reports no further failure.
    pub fn next(&mut self, input: &mut &[u8]) -> Option<Result<Incoming, Fail>> {
        if self.mode == Mode::Discard {
            *input = &[];
            return None;
        }
        match self.read(input) {
            Some(Err(fail)) => {
                let reported = self.mode == Mode::Open;
                self.mode = match fail {
                    Fail::Protocol => Mode::Discard,
                    _ if reported => Mode::Closing,
                    _ => Mode::Discard,
                };
                // Closing: data is skipped unchecked from here on.
                self.message = None;
                if self.mode == Mode::Discard {
                    *input = &[];
                }
                reported.then_some(Err(fail))
            }
            other => other,
        }
    }

    fn read(&mut self, input: &mut &[u8]) -> Option<Result<Incoming, Fail>> {
        loop {
            let Some(frame) = self.frame.as_mut() else {
                let need = if self.have < 2 {
                    2
                } else {
                    head_len(self.head[1])
                };
                if self.have < need {
                    let (&byte, rest) = input.split_first()?;
                    self.head[self.have] = byte;
                    self.have += 1;
                    *input = rest;
                    if self.have == 2 {
                        if let Err(fail) = self.check_start() {
                            return Some(Err(fail));
                        }
                    }
                    continue;
                }
                if let Err(fail) = self.start_frame() {
                    return Some(Err(fail));
                }
                continue;
            };
            let take = usize::try_from(frame.remaining)
                .unwrap_or(usize::MAX)
                .min(input.len());
            let offset = frame.len - frame.remaining;
            let (bytes, rest) = input.split_at(take);
            frame.remaining -= take as u64;
            *input = rest;
            if frame.opcode >= CLOSE {
                let bytes = bytes.iter().enumerate();
                frame
                    .control
                    .extend(bytes.map(|(i, b)| b ^ frame.mask[(offset as usize + i) % 4]));
            } else if let Some(utf8) = self.message.as_mut().and_then(|m| m.text.as_mut()) {
                if !utf8.feed_masked(bytes, frame.mask, offset) {
                    return Some(Err(Fail::InvalidData));
                }
            }
            if frame.remaining > 0 {
                return None;
            }
            let frame = self.frame.take()?;
            if let Some(done) = self.finish(frame) {
                return Some(done);
            }
        }
    }

    /// Checks the first two bytes of a head.
    fn check_start(&self) -> Result<(), Fail> {
        let (b0, b1) = (self.head[0], self.head[1]);
        let opcode = b0 & 0x0F;
        let fin = b0 & 0x80 != 0;
        // No extension was agreed, so no reserved bit may be set (§5.2); clients always
        // mask (§5.1).
        if b0 & 0x70 != 0 || b1 & 0x80 == 0 {
            return Err(Fail::Protocol);
        }
        match opcode {
            CONTINUATION | TEXT | BINARY => Ok(()),
            // Control frames are whole and at most 125 bytes (§5.5).
            CLOSE | PING | PONG if fin && b1 & 0x7F <= 125 => Ok(()),
            // Reserved opcodes (§5.2).
            _ => Err(Fail::Protocol),
        }
    }

    /// The head is complete: checks the message's size and starts reading the payload.
    fn start_frame(&mut self) -> Result<(), Fail> {
        let head = &self.head[..self.have];
        self.have = 0;
        let opcode = head[0] & 0x0F;
        let fin = head[0] & 0x80 != 0;
        let (len, rest) = match head[1] & 0x7F {
            126 => (
                u64::from(u16::from_be_bytes([head[2], head[3]])),
                &head[4..],
            ),
            127 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&head[2..10]);
                (u64::from_be_bytes(be), &head[10..])
            }
            len => (u64::from(len), &head[2..]),
        };
        let mask = [rest[0], rest[1], rest[2], rest[3]];
        // The most significant bit of a 64-bit length MUST be 0 (§5.2).
        if len >> 63 != 0 {
            return Err(Fail::Protocol);
        }
        let frame = Payload {
            opcode,
            fin,
            mask,
            len,
            remaining: len,
            control: Vec::new(),
        };
        if opcode < CLOSE && self.mode == Mode::Open {
            let message = match (opcode, self.message.take()) {
                (CONTINUATION, Some(message)) => message,
                (TEXT, None) => Message {
                    size: 0,
                    text: Some(Utf8::default()),
                },
                (BINARY, None) => Message {
                    size: 0,
                    text: None,
                },
                // A continuation with no message open, or a new message before the last
                // one ended (§5.4).
                _ => return Err(Fail::Protocol),
            };
            let size = message.size.saturating_add(len);
            if size > self.max_message {
                // The frame's bounds are known: its payload is skipped while closing.
                self.frame = Some(frame);
                return Err(Fail::TooBig);
            }
            self.message = Some(Message { size, ..message });
        }
        self.frame = Some(frame);
        Ok(())
    }

    /// A frame's payload is complete.
    fn finish(&mut self, frame: Payload) -> Option<Result<Incoming, Fail>> {
        match frame.opcode {
            PING => Some(Ok(Incoming::Ping(Bytes::from(frame.control)))),
            PONG => None,
            CLOSE => Some(match frame.control[..] {
                [] => Ok(Incoming::Close(NORMAL)),
                // The reason is UTF-8 (§5.5.1), or the close is a failure (§8.1); checked
                // before the code, as tungstenite does.
                [_, _, ref reason @ ..] if std::str::from_utf8(reason).is_err() => {
                    Err(Fail::InvalidData)
                }
                [hi, lo, ..] if valid_close_code(u16::from_be_bytes([hi, lo])) => {
                    Ok(Incoming::Close(u16::from_be_bytes([hi, lo])))
                }
                _ => Err(Fail::Protocol),
            }),
            _ => {
                if !frame.fin {
                    return None;
                }
                let message = self.message.take()?;
                // A text message ends with a whole character.
                match message.text {
                    Some(utf8) if !utf8.is_complete() => Some(Err(Fail::InvalidData)),
                    _ => None,
                }
            }
        }
    }
}

/// Checks a text message's bytes as UTF-8 as they arrive, keeping only the start of a
/// character cut between pieces (at most 3 bytes).
#[derive(Default)]
struct Utf8 {
    pending: [u8; 4],
    len: usize,
}

impl Utf8 {
    /// Feeds payload bytes still masked with `mask`, the first at `offset` in its frame;
    /// false once they are not UTF-8.
    fn feed_masked(&mut self, masked: &[u8], mask: [u8; 4], offset: u64) -> bool {
        let mut scratch = [0u8; 256];
        let mut at = offset as usize;
        for piece in masked.chunks(scratch.len()) {
            let plain = &mut scratch[..piece.len()];
            for (i, (out, byte)) in plain.iter_mut().zip(piece).enumerate() {
                *out = byte ^ mask[(at + i) % 4];
            }
            at = at.wrapping_add(piece.len());
            if !self.feed(plain) {
                return false;
            }
        }
        true
    }

    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        // First complete a character cut at the end of the last piece.
        while self.len > 0 {
            let Some((&byte, rest)) = bytes.split_first() else {
                return true;
            };
            bytes = rest;
            self.pending[self.len] = byte;
            self.len += 1;
            match std::str::from_utf8(&self.pending[..self.len]) {
                Ok(_) => self.len = 0,
                Err(e) if e.error_len().is_some() => return false,
                Err(_) => {}
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => true,
            Err(e) if e.error_len().is_some() => false,
            Err(e) => {
                let cut = &bytes[e.valid_up_to()..];
                self.pending[..cut.len()].copy_from_slice(cut);
                self.len = cut.len();
                true
            }
        }
    }

    fn is_complete(&self) -> bool {
        self.len == 0
    }
}

/// The length of a head whose second byte is `b1` (mask included).
fn head_len(b1: u8) -> usize {
    2 + 4
        + match b1 & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        }
}

/// Codes a client may send in a close frame (RFC 6455 §7.4).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as clients send them.
    fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut frame = vec![b0];
        match payload.len() {
            len if len < 126 => frame.push(0x80 | len as u8),
            len if len <= 0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    /// Feeds `bytes` in pieces of `piece` bytes, collecting what the reader returns.
    fn read_all(reader: &mut Reader, bytes: &[u8], piece: usize) -> Vec<Result<Incoming, Fail>> {
        let mut out = Vec::new();
        for chunk in bytes.chunks(piece) {
            let mut input = chunk;
            while let Some(item) = reader.next(&mut input) {
                let failed = item.is_err();
                out.push(item);
                if failed {
                    return out;
                }
            }
        }
        out
    }

    #[test]
    fn accept_key_is_the_rfc_example() {
        let key = b"dGhlIHNhbXBsZSBub25jZQ==";
        assert!(valid_key(key));
        assert_eq!(accept_key(key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(!valid_key(b"c2hvcnQ="));
        assert!(!valid_key(b"not base64!"));
    }

    #[test]
    fn heads_use_the_shortest_length() {
        let mut out = [0; 20];
        assert_eq!(head(TEXT, 125, &mut out), 2);
        assert_eq!(out[..2], [0x81, 125]);
        assert_eq!(head(TEXT, 126, &mut out), 4);
        assert_eq!(out[..4], [0x81, 126, 0, 126]);
        assert_eq!(head(PING, 0, &mut out), 2);
        assert_eq!(out[..2], [0x89, 0]);
        assert_eq!(head(TEXT, 70_000, &mut out), 10);
        assert_eq!(out[..10], [0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn close_frames_carry_code_and_a_reason_cut_at_a_character() {
        assert_eq!(
            &close(1000, "task finished")[..],
            b"\x88\x0f\x03\xe8task finished"
        );
        let long = "é".repeat(100);
        let frame = close(1001, &long);
        assert_eq!(frame[1] as usize, frame.len() - 2);
        assert!(frame.len() - 2 <= 125);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
    }

    #[test]
    fn pings_and_closes_come_out_whatever_the_pieces() {
        let mut bytes = client_frame(0x81, b"hello");
        bytes.extend(client_frame(0x89, b"hi"));
        bytes.extend(client_frame(0x8A, b"pong"));
        bytes.extend(client_frame(0x02, &[7; 300]));
        bytes.extend(client_frame(0x89, b""));
        bytes.extend(client_frame(0x80, &[8; 70]));
        bytes.extend(client_frame(0x88, &[0x0f, 0xa0, b'b', b'y', b'e']));
        for piece in [1, 2, 3, 7, 64, bytes.len()] {
            let mut reader = Reader::new(1024);
            let got = read_all(&mut reader, &bytes, piece);
            assert_eq!(
                got,
                [
                    Ok(Incoming::Ping(Bytes::from_static(b"hi"))),
                    Ok(Incoming::Ping(Bytes::new())),
                    Ok(Incoming::Close(4000)),
                ],
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn a_message_over_the_limit_fails_even_in_fragments() {
        let mut reader = Reader::new(256);
        assert_eq!(read_all(&mut reader, &client_frame(0x81, &[1; 256]), 5), []);
        let mut reader = Reader::new(256);
        let got = read_all(&mut reader, &client_frame(0x81, &[1; 257]), 5);
        assert_eq!(got, [Err(Fail::TooBig)]);
        let mut fragments = client_frame(0x01, &[1; 200]);
        fragments.extend(client_frame(0x89, b"mid"));
        fragments.extend(client_frame(0x80, &[1; 100]));
        let mut reader = Reader::new(256);
        let got = read_all(&mut reader, &fragments, 9);
        assert_eq!(
            got,
            [
                Ok(Incoming::Ping(Bytes::from_static(b"mid"))),
                Err(Fail::TooBig)
            ]
        );
    }

    #[test]
    fn protocol_errors_are_caught() {
        let cases: [(&str, Vec<u8>); 7] = [
            ("unmasked", vec![0x81, 0x00]),
            ("reserved bit", client_frame(0xC1, b"x")),
            ("unknown opcode", client_frame(0x83, b"x")),
            ("fragmented ping", client_frame(0x09, b"x")),
            ("long ping", client_frame(0x89, &[0; 126])),
            ("continuation first", client_frame(0x80, b"x")),
            ("bad close code", client_frame(0x88, &[0x03, 0xed])),
        ];
        for (name, bytes) in cases {
            let mut reader = Reader::new(1024);
            let got = read_all(&mut reader, &bytes, 3);
            assert_eq!(got, [Err(Fail::Protocol)], "{name}");
        }
        let mut reader = Reader::new(1024);
        let mut two_starts = client_frame(0x01, b"a");
        two_starts.extend(client_frame(0x01, b"b"));
        assert_eq!(read_all(&mut reader, &two_starts, 4), [Err(Fail::Protocol)]);
        // A close without a code is answered with 1000.
        let mut reader = Reader::new(1024);
        let got = read_all(&mut reader, &client_frame(0x88, b""), 1);
        assert_eq!(got, [Ok(Incoming::Close(NORMAL))]);
    }

    /// Feeds every piece, carrying on after a failure as the socket does while closing.
    fn read_through(
        reader: &mut Reader,
        bytes: &[u8],
        piece: usize,
    ) -> Vec<Result<Incoming, Fail>> {
        let mut out = Vec::new();
        for chunk in bytes.chunks(piece) {
            let mut input = chunk;
            while let Some(item) = reader.next(&mut input) {
                out.push(item);
            }
        }
        out
    }

    #[test]
    fn text_must_be_utf8_even_cut_between_frames_and_pieces() {
        let text = "añ€😀".as_bytes();
        // A character cut between two fragments is fine.
        let mut good = client_frame(0x01, &text[..2]);
        good.extend(client_frame(0x00, &text[2..8]));
        good.extend(client_frame(0x80, &text[8..]));
        good.extend(client_frame(0x89, b"p"));
        let bad_cases: [(&str, Vec<u8>); 4] = [
            ("invalid byte", client_frame(0x81, b"ok\xffok")),
            ("overlong", client_frame(0x81, b"\xc0\xaf")),
            ("surrogate", client_frame(0x81, b"\xed\xa0\x80")),
            (
                "cut at the end",
                client_frame(0x81, &text[..text.len() - 1]),
            ),
        ];
        for piece in [1, 2, 3, 5, 64] {
            let mut reader = Reader::new(1024);
            let got = read_all(&mut reader, &good, piece);
            assert_eq!(got, [Ok(Incoming::Ping(Bytes::from_static(b"p")))]);
            for (name, bytes) in &bad_cases {
                let mut reader = Reader::new(1024);
                let got = read_all(&mut reader, bytes, piece);
                assert_eq!(got, [Err(Fail::InvalidData)], "{name}, pieces of {piece}");
            }
        }
        // Binary messages are not text.
        let mut reader = Reader::new(1024);
        assert_eq!(read_all(&mut reader, &client_frame(0x82, b"\xff"), 1), []);
    }

    #[test]
    fn a_close_reason_must_be_utf8() {
        let mut reader = Reader::new(1024);
        let got = read_all(&mut reader, &client_frame(0x88, b"\x03\xe8bad\xff"), 2);
        assert_eq!(got, [Err(Fail::InvalidData)]);
        assert_eq!(&Fail::InvalidData.close_frame()[..4], b"\x88\x0f\x03\xef");
        let mut reader = Reader::new(1024);
        let got = read_all(&mut reader, &client_frame(0x88, b"\x03\xe8\xc3\xa9"), 2);
        assert_eq!(got, [Ok(Incoming::Close(1000))]);
    }

    #[test]
    fn a_64_bit_length_with_the_top_bit_set_is_a_protocol_error() {
        let mut bytes = vec![0x82, 0x80 | 127];
        bytes.extend_from_slice(&(1u64 << 63).to_be_bytes());
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        let mut reader = Reader::new(1024);
        assert_eq!(read_all(&mut reader, &bytes, 3), [Err(Fail::Protocol)]);
    }

    #[test]
    fn after_too_big_the_payload_is_skipped_and_the_close_still_seen() {
        // A payload of zeros would read as an unmasked frame if taken for heads.
        let mut bytes = client_frame(0x82, &[0; 5000]);
        bytes.extend(client_frame(0x81, b"\xff unchecked now"));
        bytes.extend(client_frame(0x89, b"late"));
        bytes.extend(client_frame(0x88, &[0x03, 0xe8]));
        for piece in [1, 7, 2048, bytes.len()] {
            let mut reader = Reader::new(1024);
            let got = read_through(&mut reader, &bytes, piece);
            assert_eq!(
                got,
                [
                    Err(Fail::TooBig),
                    Ok(Incoming::Ping(Bytes::from_static(b"late"))),
                    Ok(Incoming::Close(1000)),
                ],
                "pieces of {piece}"
            );
        }
        // After bad UTF-8 the rest of the frame is skipped too.
        let mut bytes = client_frame(0x81, b"\xff and the rest");
        bytes.extend(client_frame(0x88, b""));
        let mut reader = Reader::new(1024);
        let got = read_through(&mut reader, &bytes, 1);
        assert_eq!(got, [Err(Fail::InvalidData), Ok(Incoming::Close(1000))]);
        // After a protocol error nothing has known bounds: all is dropped.
        let mut bytes = vec![0x81, 0x01, b'x'];
        bytes.extend(client_frame(0x88, b""));
        let mut reader = Reader::new(1024);
        assert_eq!(read_through(&mut reader, &bytes, 2), [Err(Fail::Protocol)]);
    }
}
