//! Reading an event stream cheaply: an HTTP/1.1 response body (chunked or not) split into
//! SSE lines, and the one thing this tool wants from each event, the publish time `"t":`
//! the publisher put in it.
//!
//! A load tool that parses JSON and builds strings per event would cost more CPU than the
//! server it measures, so this only scans bytes: no allocation per event, a partial line is
//! the only thing kept between reads.

use std::sync::LazyLock;

use memchr::memmem::Finder;

/// What one event told us.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// A published event carrying its publish time in nanoseconds since the Unix epoch.
    Timed(u64),
    /// The terminal event: nothing more will come.
    Final,
    /// Anything else (the current snapshot on connect, a keep-alive, another field).
    Other,
}

/// Looks at one event's payload (an SSE `data` line or a WebSocket text frame): finds
/// `"t":` with a vectorised search, and calls the event final if what comes before it (or
/// the whole payload, when it has no time) marks it so. progress-hub's
/// `"event":"completed"` comes before `detail`, and the final Nchan body starts with
/// `"final":true`, so the padding after `"t":` is never scanned. Quotes inside JSON
/// strings are escaped, so neither key can match inside a value.
pub fn classify(data: &[u8]) -> Seen {
    static TIME: LazyLock<Finder> = LazyLock::new(|| Finder::new(br#""t":"#));
    static COMPLETED: LazyLock<Finder> = LazyLock::new(|| Finder::new(br#""event":"completed""#));
    static FINAL: LazyLock<Finder> = LazyLock::new(|| Finder::new(br#""final":true"#));
    let finals = |bytes: &[u8]| COMPLETED.find(bytes).is_some() || FINAL.find(bytes).is_some();
    let Some(at) = TIME.find(data) else {
        return if finals(data) {
            Seen::Final
        } else {
            Seen::Other
        };
    };
    if finals(&data[..at]) {
        return Seen::Final;
    }
    let mut value: u64 = 0;
    let mut any = false;
    for &b in data[at + 4..].iter().take_while(|b| b.is_ascii_digit()) {
        value = value.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
        any = true;
    }
    if any {
        Seen::Timed(value)
    } else {
        Seen::Other
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// Where the chunked-encoding decoder is.
#[derive(Clone, Copy, Debug)]
enum Chunk {
    /// Reading a chunk-size line; `ext` once a `;` extension started.
    Size { acc: usize, ext: bool },
    /// Inside a chunk, with this many bytes left.
    Data(usize),
    /// After a chunk's data, skipping its CRLF.
    DataEnd,
    /// The zero-size chunk came: the body is over.
    Done,
}

/// Turns raw body bytes into SSE lines. Holds only a partial line between reads.
pub struct SseBody {
    chunk: Option<Chunk>,
    partial: Vec<u8>,
}

impl SseBody {
    /// `chunked`: the response said `Transfer-Encoding: chunked`.
    pub fn new(chunked: bool) -> Self {
        SseBody {
            chunk: chunked.then_some(Chunk::Size { acc: 0, ext: false }),
            partial: Vec::new(),
        }
    }

    /// True once a chunked body has ended.
    pub fn ended(&self) -> bool {
        matches!(self.chunk, Some(Chunk::Done))
    }

    /// Feeds raw bytes; calls `on_data` with the payload of every complete `data:` line.
    pub fn feed(&mut self, mut raw: &[u8], on_data: &mut impl FnMut(&[u8])) {
        let Some(mut state) = self.chunk else {
            self.lines(raw, on_data);
            return;
        };
        while !raw.is_empty() {
            match state {
                Chunk::Size { acc, ext } => {
                    let b = raw[0];
                    raw = &raw[1..];
                    state = match b {
                        b'\n' if acc == 0 => Chunk::Done,
                        b'\n' => Chunk::Data(acc),
                        b';' => Chunk::Size { acc, ext: true },
                        _ if ext => Chunk::Size { acc, ext },
                        _ => match (b as char).to_digit(16) {
                            Some(d) => Chunk::Size {
                                acc: acc * 16 + d as usize,
                                ext,
                            },
                            None => Chunk::Size { acc, ext },
                        },
                    };
                }
                Chunk::Data(left) => {
                    let take = left.min(raw.len());
                    self.lines(&raw[..take], on_data);
                    raw = &raw[take..];
                    state = if take == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - take)
                    };
                }
                Chunk::DataEnd => {
                    if raw[0] == b'\n' {
                        state = Chunk::Size { acc: 0, ext: false };
                    }
                    raw = &raw[1..];
                }
                Chunk::Done => break,
            }
        }
        self.chunk = Some(state);
    }

    fn lines(&mut self, mut bytes: &[u8], on_data: &mut impl FnMut(&[u8])) {
        while let Some(end) = memchr::memchr(b'\n', bytes) {
            if self.partial.is_empty() {
                data_line(&bytes[..end], on_data);
            } else {
                self.partial.extend_from_slice(&bytes[..end]);
                let line = std::mem::take(&mut self.partial);
                data_line(&line, on_data);
                // Keep the allocation for the next partial line.
                self.partial = line;
                self.partial.clear();
            }
            bytes = &bytes[end + 1..];
        }
        self.partial.extend_from_slice(bytes);
    }
}

fn data_line(line: &[u8], on_data: &mut impl FnMut(&[u8])) {
    if let Some(data) = line.strip_prefix(b"data:") {
        on_data(data);
    }
}

/// One WebSocket frame from the server, as [`WsFrames`] hands it on.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole text or binary message (fragments joined).
    Data(&'a [u8]),
    Ping(&'a [u8]),
    Close,
}

/// Turns raw bytes from a WebSocket server into frames, split anywhere across reads.
/// Server frames are never masked (RFC 6455, 5.1), so a payload is handed on as it lies
/// in the read buffer; only a frame cut by a read, or a fragmented message, is copied.
#[derive(Default)]
pub struct WsFrames {
    /// The start of a frame whose rest has not arrived yet.
    partial: Vec<u8>,
    /// The fragments so far of a message sent in several frames.
    message: Vec<u8>,
}

impl WsFrames {
    /// Feeds raw bytes; calls `on_frame` with every complete frame.
    pub fn feed(&mut self, raw: &[u8], on_frame: &mut impl FnMut(Frame<'_>)) {
        if self.partial.is_empty() {
            let used = frames(raw, &mut self.message, on_frame);
            self.partial.extend_from_slice(&raw[used..]);
        } else {
            self.partial.extend_from_slice(raw);
            let buffered = std::mem::take(&mut self.partial);
            let used = frames(&buffered, &mut self.message, on_frame);
            self.partial = buffered;
            self.partial.drain(..used);
        }
    }
}

/// Hands on every complete frame at the start of `bytes`; returns the bytes used.
fn frames(bytes: &[u8], message: &mut Vec<u8>, on_frame: &mut impl FnMut(Frame<'_>)) -> usize {
    let mut at = 0;
    while let Some((head, len)) = frame_head(&bytes[at..]) {
        let Some(payload) = bytes.get(at + head..at + head + len) else {
            break;
        };
        let (fin, opcode) = (bytes[at] & 0x80 != 0, bytes[at] & 0x0f);
        match opcode {
            0x1 | 0x2 if fin && message.is_empty() => on_frame(Frame::Data(payload)),
            0x0..=0x2 => {
                message.extend_from_slice(payload);
                if fin {
                    on_frame(Frame::Data(message));
                    message.clear();
                }
            }
            0x8 => on_frame(Frame::Close),
            0x9 => on_frame(Frame::Ping(payload)),
            _ => {} // pongs and reserved opcodes
        }
        at += head + len;
    }
    at
}

/// The length of a frame's head and of its payload, once the head has arrived.
fn frame_head(bytes: &[u8]) -> Option<(usize, usize)> {
    let second = *bytes.get(1)?;
    let (len, head) = match second & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?)).ok()?,
            10,
        ),
        n => (usize::from(n), 2),
    };
    // A masked frame (which a server must not send) keeps its key after the length.
    let head = head + if second & 0x80 != 0 { 4 } else { 0 };
    (bytes.len() >= head).then_some((head, len))
}

/// The client's answer to a ping: a pong with the same payload, masked as client frames
/// must be (with a zero key, which leaves the payload as it is).
pub fn pong(payload: &[u8], out: &mut Vec<u8>) {
    let len = payload.len().min(125);
    out.extend_from_slice(&[0x8a, 0x80 | len as u8, 0, 0, 0, 0]);
    out.extend_from_slice(&payload[..len]);
}

/// The parts of an HTTP/1.1 response head this tool needs.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub chunked: bool,
    pub content_length: Option<usize>,
    /// `Connection: close`: the server ends the connection after this response.
    pub close: bool,
    /// Bytes of the head, including the blank line.
    pub len: usize,
}

/// Parses a response head if `buf` holds all of it.
pub fn parse_head(buf: &[u8]) -> Option<Head> {
    let end = find(buf, b"\r\n\r\n")? + 4;
    let text = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut chunked = false;
    let mut content_length = None;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    Some(Head {
        status,
        chunked,
        content_length,
        close,
        len: end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(body: &mut SseBody, parts: &[&[u8]]) -> Vec<Seen> {
        let mut seen = Vec::new();
        for part in parts {
            body.feed(part, &mut |d| seen.push(classify(d)));
        }
        seen
    }

    #[test]
    fn chunked_frames_split_anywhere_are_decoded() {
        let frame = b"id: 2\nevent: progress\ndata: {\"detail\":{\"t\":123}}\n\n";
        let mut wire = format!("{:x}\r\n", frame.len()).into_bytes();
        wire.extend_from_slice(frame);
        wire.extend_from_slice(b"\r\n");
        let done = b"data: {\"event\":\"completed\",\"detail\":{\"t\":9}}\n\n";
        wire.extend_from_slice(format!("{:x}\r\n", done.len()).as_bytes());
        wire.extend_from_slice(done);
        wire.extend_from_slice(b"\r\n0\r\n\r\n");
        for split in 1..wire.len() {
            let mut body = SseBody::new(true);
            let seen = collect(&mut body, &[&wire[..split], &wire[split..]]);
            assert_eq!(
                seen,
                vec![Seen::Timed(123), Seen::Final],
                "split at {split}"
            );
            assert!(body.ended());
        }
    }

    #[test]
    fn plain_body_and_other_lines() {
        let mut body = SseBody::new(false);
        let seen = collect(
            &mut body,
            &[
                b"retry: 2000\n\n: keep-alive\n\ndata: {\"fin",
                b"al\":true,\"t\":7}\ndata: {\"t\":8,\"pad\":\"\\\"final\\\":true\"}\ndata: x\n",
            ],
        );
        assert_eq!(seen, vec![Seen::Final, Seen::Timed(8), Seen::Other]);
    }

    fn ws_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![first];
        match payload.len() {
            n if n < 126 => frame.push(n as u8),
            n if n <= 0xffff => {
                frame.push(126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn websocket_frames_split_anywhere_are_decoded() {
        let long = vec![b'y'; 300];
        let huge = vec![b'z'; 70_000];
        let mut wire = ws_frame(0x81, br#"{"detail":{"t":5}}"#);
        wire.extend(ws_frame(0x89, b"hi"));
        wire.extend(ws_frame(0x01, br#"{"detail":"#)); // a message in three fragments
        wire.extend(ws_frame(0x00, br#"{"t":6}"#));
        wire.extend(ws_frame(0x80, b"}"));
        wire.extend(ws_frame(0x81, &long));
        wire.extend(ws_frame(0x82, &huge));
        wire.extend(ws_frame(0x88, &[0x03, 0xe8]));
        let want = |seen: &[String]| {
            assert_eq!(
                seen,
                [
                    r#"data {"detail":{"t":5}}"#.to_string(),
                    "ping hi".to_string(),
                    r#"data {"detail":{"t":6}}"#.to_string(),
                    format!("data {}", "y".repeat(300)),
                    "data 70000 bytes".to_string(),
                    "close".to_string(),
                ]
            )
        };
        // Every cut among the small frames, and some inside the large ones.
        for split in (1..400).chain((400..wire.len()).step_by(997)) {
            let mut frames = WsFrames::default();
            let mut seen = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                frames.feed(part, &mut |frame| {
                    seen.push(match frame {
                        Frame::Data(d) if d.len() > 1000 => format!("data {} bytes", d.len()),
                        Frame::Data(d) => format!("data {}", String::from_utf8_lossy(d)),
                        Frame::Ping(p) => format!("ping {}", String::from_utf8_lossy(p)),
                        Frame::Close => "close".to_string(),
                    })
                });
            }
            want(&seen);
            assert!(frames.partial.is_empty() && frames.message.is_empty());
        }
    }

    #[test]
    fn pong_is_a_masked_copy_of_the_ping() {
        let mut out = Vec::new();
        pong(b"abc", &mut out);
        assert_eq!(out, [0x8a, 0x83, 0, 0, 0, 0, b'a', b'b', b'c']);
    }

    #[test]
    fn head_is_parsed_once_complete() {
        let raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n";
        assert!(parse_head(&raw[..20]).is_none());
        let head = parse_head(raw).unwrap();
        assert_eq!(
            (head.status, head.chunked, head.len),
            (200, true, raw.len() - 3)
        );
    }
}
