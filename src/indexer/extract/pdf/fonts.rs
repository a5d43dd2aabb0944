//! PDF fonts as text extraction sees them: how the bytes of a shown string split into
//! character codes, what text each code stands for, and how wide each glyph is (for
//! telling word gaps from letter gaps).
//!
//! Text comes from the font's `ToUnicode` map when it has one; otherwise from its encoding:
//! the simple encodings and `Differences` (through lopdf's tables), the predefined
//! Unicode CMaps of CJK fonts (`UniJIS-UCS2-H`, `UniGB-UTF16-H`, ...: the codes are
//! UTF-16), and the legacy CJK CMaps (`90ms-RKSJ-H`, `GBK-EUC-H`, ...: decoded with the
//! matching character set). A font none of these cover yields no text, and says why.

use std::collections::HashMap;

use encoding_rs::{Encoding, BIG5, EUC_JP, EUC_KR, GBK, SHIFT_JIS};
use lopdf::{Dictionary, Document, Object};

use super::cmap::{self, CMap};

pub struct Font {
    kind: Kind,
    /// Glyph widths in thousandths of an em, by code (simple fonts) or CID.
    widths: HashMap<u32, f64>,
    default_width: f64,
    /// Why text in this font cannot be read, if it cannot.
    pub problem: Option<String>,
}

enum Kind {
    /// One byte per code; the text of each.
    Simple(Vec<String>),
    Composite {
        to_unicode: Option<CMap>,
        /// Code lengths from the font's own encoding CMap, when embedded.
        encoding: Option<CMap>,
        fallback: Fallback,
    },
}

/// How codes of a composite font without a `ToUnicode` entry become text.
enum Fallback {
    /// `Identity-H` and unknown CMaps: codes are glyph numbers, with no text.
    Nothing,
    /// The predefined Unicode CMaps: codes are UTF-16BE.
    Utf16,
    /// The legacy CJK CMaps: the string is text in this character set.
    Legacy(&'static Encoding),
}

fn deref<'a>(doc: &'a Document, object: &'a Object) -> &'a Object {
    doc.dereference(object).map_or(object, |(_, o)| o)
}

fn dict_get<'a>(doc: &'a Document, dict: &'a Dictionary, key: &[u8]) -> Option<&'a Object> {
    dict.get(key).ok().map(|o| deref(doc, o))
}

fn number(object: &Object) -> Option<f64> {
    match *object {
        Object::Integer(i) => Some(i as f64),
        Object::Real(r) => Some(r as f64),
        _ => None,
    }
}

fn stream_bytes(doc: &Document, object: Option<&Object>) -> Option<Vec<u8>> {
    let stream = object?.as_stream().ok()?;
    let _ = doc;
    Some(
        stream
            .decompressed_content()
            .unwrap_or_else(|_| stream.content.clone()),
    )
}

/// The character set of a legacy CJK CMap, from its name.
fn legacy_charset(name: &str) -> Option<&'static Encoding> {
    if name.contains("RKSJ") {
        Some(SHIFT_JIS)
    } else if name.contains("GBK") || name.contains("GB-EUC") || name.starts_with("GBpc") {
        Some(GBK)
    } else if name.contains("B5") || name.contains("HKscs") || name.contains("ETen") {
        Some(BIG5)
    } else if name.contains("KSC") || name.contains("UHC") {
        Some(EUC_KR)
    } else if name.starts_with("EUC") || name.starts_with("Ext-") || name == "H" {
        Some(EUC_JP)
    } else {
        None
    }
}

impl Font {
    /// Reads a font dictionary. Never fails: a font it cannot read carries a `problem`.
    pub fn load(doc: &Document, font: &Dictionary) -> Font {
        let subtype = font
            .get(b"Subtype")
            .and_then(Object::as_name)
            .unwrap_or(b"");
        let to_unicode =
            stream_bytes(doc, dict_get(doc, font, b"ToUnicode")).map(|b| cmap::parse(&b));
        if subtype == b"Type0" {
            Self::composite(doc, font, to_unicode)
        } else {
            Self::simple(doc, font, to_unicode)
        }
    }

    fn simple(doc: &Document, font: &Dictionary, to_unicode: Option<CMap>) -> Font {
        let encoding = font.get_font_encoding(doc).ok();
        let table = (0..=255u8)
            .map(|b| {
                if let Some(text) = to_unicode
                    .as_ref()
                    .and_then(|m| m.unicode.get(&(1, b as u32)))
                {
                    return text.clone();
                }
                encoding
                    .as_ref()
                    .and_then(|e| e.bytes_to_string(&[b]).ok())
                    .unwrap_or_default()
            })
            .collect();
        let mut widths = HashMap::new();
        let first = dict_get(doc, font, b"FirstChar")
            .and_then(number)
            .unwrap_or(0.0) as u32;
        if let Some(Object::Array(list)) = dict_get(doc, font, b"Widths") {
            for (k, w) in list.iter().enumerate() {
                if let Some(w) = number(deref(doc, w)) {
                    widths.insert(first + k as u32, w);
                }
            }
        }
        let missing = dict_get(doc, font, b"FontDescriptor")
            .and_then(|d| d.as_dict().ok())
            .and_then(|d| dict_get(doc, d, b"MissingWidth"))
            .and_then(number);
        let base = font
            .get(b"BaseFont")
            .and_then(Object::as_name)
            .unwrap_or(b"");
        let default_width = match missing {
            Some(w) if w > 0.0 => w,
            // The standard fonts come without widths; an average glyph is half an em
            // (Courier's are all 0.6).
            _ if base.starts_with(b"Courier") => 600.0,
            _ => 500.0,
        };
        Font {
            kind: Kind::Simple(table),
            widths,
            default_width,
            problem: None,
        }
    }

    fn composite(doc: &Document, font: &Dictionary, to_unicode: Option<CMap>) -> Font {
        let (mut encoding, mut fallback, mut problem) = (None, Fallback::Nothing, None);
        match dict_get(doc, font, b"Encoding") {
            Some(Object::Name(name)) => {
                let name = String::from_utf8_lossy(name);
                if name.contains("UCS2") || name.contains("UTF16") {
                    fallback = Fallback::Utf16;
                } else if let Some(charset) = legacy_charset(&name) {
                    fallback = Fallback::Legacy(charset);
                } else if to_unicode.is_none() {
                    problem = Some(format!("font with encoding {name} and no ToUnicode map"));
                }
            }
            Some(stream @ Object::Stream(_)) => {
                encoding = stream_bytes(doc, Some(stream)).map(|b| cmap::parse(&b));
                if to_unicode.is_none() {
                    problem = Some("font with an embedded CMap and no ToUnicode map".to_string());
                }
            }
            _ if to_unicode.is_none() => {
                problem = Some("composite font without encoding".to_string())
            }
            _ => {}
        }
        let mut widths = HashMap::new();
        let mut default_width = 1000.0;
        let descendant = match dict_get(doc, font, b"DescendantFonts") {
            Some(Object::Array(list)) => list.first().and_then(|d| deref(doc, d).as_dict().ok()),
            _ => None,
        };
        if let Some(cid_font) = descendant {
            if let Some(dw) = dict_get(doc, cid_font, b"DW").and_then(number) {
                default_width = dw;
            }
            if let Some(Object::Array(w)) = dict_get(doc, cid_font, b"W") {
                read_cid_widths(doc, w, &mut widths);
            }
        }
        Font {
            kind: Kind::Composite {
                to_unicode,
                encoding,
                fallback,
            },
            widths,
            default_width,
            problem,
        }
    }

    /// Calls `glyph(text, width in em, is a single-byte space)` for each code of a shown
    /// string.
    pub fn show(&self, bytes: &[u8], mut glyph: impl FnMut(&str, f64, bool)) {
        match &self.kind {
            Kind::Simple(table) => {
                for &b in bytes {
                    glyph(&table[b as usize], self.width(b as u32), b == b' ');
                }
            }
            Kind::Composite {
                fallback: Fallback::Legacy(charset),
                to_unicode: None,
                ..
            } => {
                let (text, _, _) = charset.decode(bytes);
                let mut buf = [0u8; 4];
                for c in text.chars() {
                    glyph(c.encode_utf8(&mut buf), self.default_width / 1000.0, false);
                }
            }
            Kind::Composite {
                to_unicode,
                encoding,
                fallback,
            } => {
                let mut i = 0;
                let mut buf = [0u8; 4];
                while i < bytes.len() {
                    let rest = &bytes[i..];
                    let n = encoding
                        .as_ref()
                        .and_then(|m| m.code_length(rest))
                        .or_else(|| to_unicode.as_ref().and_then(|m| m.code_length(rest)))
                        .unwrap_or(2)
                        .min(rest.len());
                    let code = rest[..n].iter().fold(0u32, |v, &b| (v << 8) | b as u32);
                    i += n;
                    let width = self.width(code);
                    if let Some(text) = to_unicode
                        .as_ref()
                        .and_then(|m| m.unicode.get(&(n as u8, code)))
                    {
                        glyph(text, width, false);
                        continue;
                    }
                    match fallback {
                        Fallback::Utf16 if n == 2 => {
                            let c = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
                            glyph(c.encode_utf8(&mut buf), width, false);
                        }
                        _ => glyph("", width, false),
                    }
                }
            }
        }
    }

    fn width(&self, code: u32) -> f64 {
        self.widths
            .get(&code)
            .copied()
            .unwrap_or(self.default_width)
            / 1000.0
    }
}

/// `/W`: `c [w1 w2 ...]` or `c_first c_last w`.
fn read_cid_widths(doc: &Document, w: &[Object], widths: &mut HashMap<u32, f64>) {
    let mut i = 0;
    while i < w.len() {
        let Some(first) = number(deref(doc, &w[i])) else {
            return;
        };
        match w.get(i + 1).map(|o| deref(doc, o)) {
            Some(Object::Array(list)) => {
                for (k, width) in list.iter().enumerate() {
                    if let Some(width) = number(deref(doc, width)) {
                        widths.insert(first as u32 + k as u32, width);
                    }
                }
                i += 2;
            }
            Some(last) => {
                let (Some(last), Some(width)) = (
                    number(last),
                    w.get(i + 2).and_then(|o| number(deref(doc, o))),
                ) else {
                    return;
                };
                let (first, last) = (first as u32, (last as u32).min(first as u32 + 0x1_0000));
                for cid in first..=last {
                    widths.insert(cid, width);
                }
                i += 3;
            }
            None => return,
        }
    }
}
