//! CMaps: the tables a PDF font uses to turn character codes into Unicode (`ToUnicode`)
//! and to tell how many bytes a code has (`codespacerange`).
//!
//! The parser reads only what text extraction needs and reads it leniently: codes of any
//! length from 1 to 4 bytes (a 1-byte range is as valid as a 2-byte one), destinations
//! of any length, and anything it does not understand is skipped rather than fatal, so
//! that one odd entry costs that entry only.

use std::collections::HashMap;

/// A parsed CMap.
#[derive(Debug, Default, Clone)]
pub struct CMap {
    /// `(bytes, low, high)` of each code space range.
    pub codespace: Vec<(usize, u32, u32)>,
    /// Code (with its byte length) to text.
    pub unicode: HashMap<(u8, u32), String>,
}

enum Tok<'a> {
    Hex(Vec<u8>),
    Open,
    Close,
    Word(&'a [u8]),
}

fn tokens(data: &[u8]) -> Vec<Tok<'_>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'%' => {
                while i < data.len() && data[i] != b'\n' && data[i] != b'\r' {
                    i += 1;
                }
            }
            b'<' if data.get(i + 1) == Some(&b'<') => i += 2,
            b'>' if data.get(i + 1) == Some(&b'>') => i += 2,
            b'<' => {
                let start = i + 1;
                let end = data[start..]
                    .iter()
                    .position(|&b| b == b'>')
                    .map_or(data.len(), |p| start + p);
                out.push(Tok::Hex(hex_bytes(&data[start..end])));
                i = end + 1;
            }
            b'[' => {
                out.push(Tok::Open);
                i += 1;
            }
            b']' => {
                out.push(Tok::Close);
                i += 1;
            }
            b'(' => {
                // Literal strings (CMap names, registry) are not needed: skip them.
                let mut depth = 0;
                while i < data.len() {
                    match data[i] {
                        b'\\' => i += 1,
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                i += 1;
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                let start = i;
                while i < data.len()
                    && !data[i].is_ascii_whitespace()
                    && !b"<>[]()%".contains(&data[i])
                {
                    i += 1;
                }
                out.push(Tok::Word(&data[start..i]));
            }
        }
    }
    out
}

/// The bytes of a hex string; whitespace is ignored and an odd last digit counts as
/// followed by 0 (PDF's rule).
fn hex_bytes(hex: &[u8]) -> Vec<u8> {
    let digits: Vec<u8> = hex
        .iter()
        .filter_map(|&c| (c as char).to_digit(16).map(|d| d as u8))
        .collect();
    digits
        .chunks(2)
        .map(|pair| (pair[0] << 4) | pair.get(1).copied().unwrap_or(0))
        .collect()
}

fn code_of(bytes: &[u8]) -> Option<(u8, u32)> {
    if bytes.is_empty() || bytes.len() > 4 {
        return None;
    }
    let value = bytes.iter().fold(0u32, |v, &b| (v << 8) | b as u32);
    Some((bytes.len() as u8, value))
}

/// A destination's text: UTF-16BE, except that a single byte stands for itself (some
/// producers write 1-byte destinations).
fn destination(bytes: &[u8]) -> String {
    match bytes {
        [b] => char::from(*b).to_string(),
        _ => utf16be(bytes),
    }
}

/// UTF-16BE bytes to text; an odd byte out is dropped, unpaired surrogates replaced.
pub fn utf16be(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]))
        .collect();
    char::decode_utf16(units)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect()
}

/// The text of `dst` plus `offset` on its last code unit (how a `bfrange` counts up).
fn shifted(dst: &[u8], offset: u32) -> String {
    if offset == 0 {
        return destination(dst);
    }
    let mut bytes = dst.to_vec();
    if bytes.len() >= 2 {
        let n = bytes.len();
        let last = u16::from_be_bytes([bytes[n - 2], bytes[n - 1]]).wrapping_add(offset as u16);
        bytes[n - 2..].copy_from_slice(&last.to_be_bytes());
    } else if let Some(b) = bytes.last_mut() {
        // A 1-byte destination: read as a code unit of its own.
        return char::from_u32(*b as u32 + offset)
            .map(String::from)
            .unwrap_or_default();
    }
    utf16be(&bytes)
}

/// Largest range a `bfrange` may span: a hostile CMap must not make us fill memory.
const MAX_RANGE: u32 = 0x1_0000;

pub fn parse(data: &[u8]) -> CMap {
    let toks = tokens(data);
    let mut cmap = CMap::default();
    let mut i = 0;
    // Operands seen since the last keyword.
    let mut section: Option<&[u8]> = None;
    while i < toks.len() {
        match (&toks[i], section) {
            (Tok::Word(w), _) if w.starts_with(b"begin") => {
                section = Some(&w[5..]);
                i += 1;
            }
            (Tok::Word(w), _) if w.starts_with(b"end") => {
                section = None;
                i += 1;
            }
            (Tok::Hex(lo), Some(b"codespacerange")) => {
                if let (Some(Tok::Hex(hi)), Some((n, lo))) = (toks.get(i + 1), code_of(lo)) {
                    if let Some((_, hi)) = code_of(hi) {
                        cmap.codespace.push((n as usize, lo, hi));
                    }
                }
                i += 2;
            }
            (Tok::Hex(src), Some(b"bfchar")) => {
                if let (Some(Tok::Hex(dst)), Some(code)) = (toks.get(i + 1), code_of(src)) {
                    cmap.unicode.insert(code, destination(dst));
                }
                i += 2;
            }
            (Tok::Hex(lo), Some(b"bfrange")) => {
                let (Some(Tok::Hex(hi)), Some((n, lo))) = (toks.get(i + 1), code_of(lo)) else {
                    i += 1;
                    continue;
                };
                let hi = code_of(hi).map_or(lo, |(_, hi)| hi);
                let span = hi.saturating_sub(lo).min(MAX_RANGE);
                match toks.get(i + 2) {
                    Some(Tok::Hex(dst)) => {
                        for k in 0..=span {
                            cmap.unicode.insert((n, lo + k), shifted(dst, k));
                        }
                        i += 3;
                    }
                    Some(Tok::Open) => {
                        let mut k = 0;
                        i += 3;
                        while let Some(Tok::Hex(dst)) = toks.get(i) {
                            if k <= span {
                                cmap.unicode.insert((n, lo + k), destination(dst));
                            }
                            k += 1;
                            i += 1;
                        }
                        i += 1; // the closing bracket
                    }
                    _ => i += 2,
                }
            }
            _ => i += 1,
        }
    }
    cmap
}

impl CMap {
    /// How many bytes the code starting with `bytes` has, by the code space ranges.
    pub fn code_length(&self, bytes: &[u8]) -> Option<usize> {
        (1..=4.min(bytes.len())).find(|&n| {
            let value = bytes[..n].iter().fold(0u32, |v, &b| (v << 8) | b as u32);
            self.codespace
                .iter()
                .any(|&(len, lo, hi)| len == n && (lo..=hi).contains(&value))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_and_two_byte_ranges_chars_and_arrays() {
        let cmap = parse(
            b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n\
              1 begincodespacerange <00> <FF> endcodespacerange\n\
              2 beginbfrange <41> <43> <0061> <20> <20> [<0020>] endbfrange\n\
              1 beginbfchar <01> <00660069> endbfchar\n\
              1 beginbfchar <0102> <4E2D> endbfchar\n\
              endcmap CMapName currentdict /CMap defineresource pop end end",
        );
        let text = |n, code| cmap.unicode.get(&(n, code)).cloned();
        assert_eq!(text(1, 0x42).as_deref(), Some("b"));
        assert_eq!(text(1, 0x43).as_deref(), Some("c"));
        assert_eq!(text(1, 0x20).as_deref(), Some(" "));
        assert_eq!(text(1, 0x01).as_deref(), Some("fi"));
        assert_eq!(text(2, 0x0102).as_deref(), Some("中"));
        assert_eq!(cmap.code_length(b"\x41\x42"), Some(1));
        // Garbage costs nothing but itself.
        let odd = parse(b"beginbfchar <4> <00> <zz> endbfchar beginbfrange <00> endbfrange");
        assert_eq!(odd.unicode.get(&(1, 0x40)).map(String::as_str), Some("\0"));
    }
}
