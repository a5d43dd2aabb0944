//! An incremental Server-Sent Events parser, as the WHATWG "event stream interpretation"
//! describes it: bytes in, complete events out, whatever way the bytes were split.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name; `message` when the event named none.
    pub name: String,
    /// The `data:` lines joined by `\n`.
    pub data: String,
    /// The last event id after this event (ids persist across events, as in EventSource).
    pub id: Option<String>,
}

#[derive(Default)]
pub struct SseParser {
    /// Bytes of a line not yet ended.
    pending: Vec<u8>,
    /// A `\r` ended the last line: a `\n` right after it belongs to the same line end.
    after_cr: bool,
    name: String,
    data: String,
    has_data: bool,
    last_id: Option<String>,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Feeds bytes; returns the events they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &byte in bytes {
            match byte {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\r' | b'\n' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.pending);
                    if let Some(event) = self.line(&line) {
                        events.push(event);
                    }
                }
                _ => {
                    self.after_cr = false;
                    self.pending.push(byte);
                }
            }
        }
        events
    }

    fn line(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line[0] == b':' {
            return None; // a comment (the server's keep-alive)
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        match field {
            "event" => self.name = value.to_string(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            // An id with a NUL is ignored, as EventSource does.
            "id" if !value.contains('\0') => self.last_id = Some(value.to_string()),
            // `retry:` and unknown fields: `watch` keeps its own reconnection delays.
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let name = std::mem::take(&mut self.name);
        if !std::mem::take(&mut self.has_data) {
            return None;
        }
        Some(SseEvent {
            name: if name.is_empty() {
                "message".to_string()
            } else {
                name
            },
            data: std::mem::take(&mut self.data),
            id: self.last_id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"retry: 1000\n\n: keep-alive\n\nid: 7\nevent: progress\ndata: {\"seq\":7}\n\nid: 8\r\nevent: completed\r\ndata: a\r\ndata:b\r\n\r\n";

    fn expected() -> Vec<SseEvent> {
        vec![
            SseEvent {
                name: "progress".into(),
                data: "{\"seq\":7}".into(),
                id: Some("7".into()),
            },
            SseEvent {
                name: "completed".into(),
                data: "a\nb".into(),
                id: Some("8".into()),
            },
        ]
    }

    #[test]
    fn parses_a_stream_in_one_piece() {
        let mut parser = SseParser::new();
        assert_eq!(parser.feed(STREAM), expected());
    }

    #[test]
    fn parses_a_stream_split_at_every_byte() {
        let mut parser = SseParser::new();
        let events: Vec<SseEvent> = STREAM.iter().flat_map(|b| parser.feed(&[*b])).collect();
        assert_eq!(events, expected());
    }

    #[test]
    fn an_event_without_data_only_moves_the_id() {
        let mut parser = SseParser::new();
        assert!(parser.feed(b"id: 3\nevent: x\n\n").is_empty());
        let events = parser.feed(b"data: d\n\n");
        assert_eq!(
            events[0].name, "message",
            "the name went with the empty event"
        );
        assert_eq!(events[0].id.as_deref(), Some("3"));
    }

    #[test]
    fn an_unfinished_event_is_not_dispatched() {
        let mut parser = SseParser::new();
        assert!(parser.feed(b"id: 1\ndata: half").is_empty());
        assert_eq!(parser.feed(b"\n\n").len(), 1);
    }
}
