//! The frame reader against tungstenite's: random client frames (valid or not), fed to
//! both in the same random pieces, must come out the same: the same pings, and the same
//! end (the close code the server answers with, whether the client closed or broke a
//! rule). Only whole frames are generated: a reader may reject a bad head before its
//! payload has arrived, and tungstenite reads a whole frame before judging it.

use std::collections::VecDeque;
use std::io::{self, Read, Write};

use proptest::prelude::*;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error, Message};

use super::frame::{Incoming, Reader};

const LIMIT: usize = 256;

/// What a reader made of the input, in order.
#[derive(Debug, PartialEq)]
enum Seen {
    Ping(Vec<u8>),
    /// The socket ends: the close code the server answers with.
    End(u16),
}

#[derive(Debug, Clone)]
struct RawFrame {
    b0: u8,
    masked: bool,
    mask: [u8; 4],
    payload: Vec<u8>,
}

impl RawFrame {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.b0);
        let mask_bit = if self.masked { 0x80 } else { 0 };
        match self.payload.len() {
            len if len < 126 => out.push(mask_bit | len as u8),
            len if len <= 0xFFFF => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if self.masked {
            out.extend_from_slice(&self.mask);
            let mask = self.mask;
            out.extend(
                self.payload
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[i % 4]),
            );
        } else {
            out.extend_from_slice(&self.payload);
        }
    }
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => "[a-z é€😀]{0,40}".prop_map(String::into_bytes),
        2 => proptest::collection::vec(any::<u8>(), 0..40),
        1 => proptest::collection::vec(any::<u8>(), 100..300),
    ]
}

fn close_payload() -> impl Strategy<Value = Vec<u8>> {
    let code = prop_oneof![
        Just(1000u16),
        Just(1001),
        Just(1002),
        Just(1003),
        Just(1004),
        Just(1005),
        Just(1006),
        Just(1007),
        Just(1011),
        Just(1013),
        Just(1015),
        Just(999),
        Just(0),
        Just(3000),
        Just(4999),
        Just(5000),
    ];
    let reason = prop_oneof![
        Just(Vec::new()),
        "[a-zé]{0,20}".prop_map(String::into_bytes),
        Just(b"bad \xff".to_vec()),
        Just(b"cut \xe2\x82".to_vec()),
    ];
    prop_oneof![
        1 => Just(Vec::new()),
        1 => Just(vec![3]),
        6 => (code, reason).prop_map(|(code, reason)| {
            let mut p = code.to_be_bytes().to_vec();
            p.extend(reason);
            p
        }),
    ]
}

fn frame() -> impl Strategy<Value = RawFrame> {
    // fin, reserved bits, opcode
    let fin = prop_oneof![4 => Just(0x80u8), 1 => Just(0)];
    let rsv = prop_oneof![12 => Just(0u8), 1 => Just(0x40), 1 => Just(0x10)];
    let data = prop_oneof![Just(0x0u8), Just(0x1), Just(0x2), Just(0x3)];
    let control = prop_oneof![Just(0x9u8), Just(0xA), Just(0xB)];
    let masked = prop_oneof![15 => Just(true), 1 => Just(false)];
    let data_frame = (fin.clone(), rsv.clone(), data, payload());
    let control_frame = (fin.clone(), rsv.clone(), control, payload());
    let close_frame = (fin, rsv, Just(0x8u8), close_payload());
    (
        prop_oneof![5 => data_frame, 3 => control_frame, 1 => close_frame],
        masked,
        any::<[u8; 4]>(),
    )
        .prop_map(|((fin, rsv, opcode, payload), masked, mask)| RawFrame {
            b0: fin | rsv | opcode,
            masked,
            mask,
            payload,
        })
}

/// A socket that hands out `pieces` one by one, then would block.
struct Pieces(VecDeque<Vec<u8>>);

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(piece) = self.0.front_mut() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let n = piece.len().min(buf.len());
        buf[..n].copy_from_slice(&piece[..n]);
        piece.drain(..n);
        if piece.is_empty() {
            self.0.pop_front();
        }
        Ok(n)
    }
}

impl Write for Pieces {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn cut(bytes: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut pieces = Vec::new();
    let mut rest = bytes;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at((*size).min(rest.len()));
        pieces.push(piece.to_vec());
        rest = tail;
    }
    pieces
}

fn ours(pieces: &[Vec<u8>]) -> Vec<Seen> {
    let mut reader = Reader::new(LIMIT as u64);
    let mut seen = Vec::new();
    for piece in pieces {
        let mut input = &piece[..];
        while let Some(incoming) = reader.next(&mut input) {
            match incoming {
                Ok(Incoming::Ping(payload)) => seen.push(Seen::Ping(payload.to_vec())),
                Ok(Incoming::Close(code)) => {
                    seen.push(Seen::End(code));
                    return seen;
                }
                Err(fail) => {
                    let close = fail.close_frame();
                    seen.push(Seen::End(u16::from_be_bytes([close[2], close[3]])));
                    return seen;
                }
            }
        }
    }
    seen
}

fn tungstenite(pieces: Vec<Vec<u8>>) -> Vec<Seen> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(LIMIT))
        .max_frame_size(None);
    let mut socket = WebSocket::from_raw_socket(Pieces(pieces.into()), Role::Server, Some(config));
    let mut seen = Vec::new();
    loop {
        let end = match socket.read() {
            Ok(Message::Ping(payload)) => {
                seen.push(Seen::Ping(payload.to_vec()));
                continue;
            }
            Ok(Message::Close(frame)) => frame.map_or(1000, |f| u16::from(f.code)),
            Ok(_) => continue,
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return seen,
            Err(Error::Capacity(_)) => 1009,
            Err(Error::Utf8(_)) => 1007,
            Err(Error::Protocol(_)) => 1002,
            Err(other) => panic!("unexpected tungstenite error {other}"),
        };
        seen.push(Seen::End(end));
        return seen;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_reader_agrees_with_tungstenite(
        frames in proptest::collection::vec(frame(), 1..8),
        sizes in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let mut bytes = Vec::new();
        for frame in &frames {
            frame.encode(&mut bytes);
        }
        let pieces = cut(&bytes, &sizes);
        prop_assert_eq!(ours(&pieces), tungstenite(pieces.clone()), "{:?}", frames);
    }
}
