//! Plain text and source code: the bytes decoded as text. UTF-8 is assumed unless a byte
//! order mark says UTF-16; invalid sequences become U+FFFD rather than failing the file,
//! since a stray Latin-1 byte should not hide the rest of a document from search.

use std::borrow::Cow;

/// How much of the start of a file the binary check looks at (what git and ripgrep do).
const SNIFF_BYTES: usize = 8 * 1024;

/// A NUL byte near the start means binary, unless a UTF-16 byte order mark explains it.
pub fn looks_binary(head: &[u8]) -> bool {
    if encoding_rs::Encoding::for_bom(head).is_some() {
        return false;
    }
    head[..head.len().min(SNIFF_BYTES)].contains(&0)
}

pub fn decode(bytes: &[u8]) -> Cow<'_, str> {
    match encoding_rs::Encoding::for_bom(bytes) {
        Some((encoding, _)) => encoding.decode_with_bom_removal(bytes).0,
        None => String::from_utf8_lossy(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf16_with_bom_is_text() {
        let utf16: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain("héllo".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert!(!looks_binary(&utf16));
        assert_eq!(decode(&utf16), "héllo");
        assert!(looks_binary(b"PK\x03\x04\0\0"));
        assert_eq!(decode(b"caf\xe9"), "caf\u{FFFD}");
    }
}
