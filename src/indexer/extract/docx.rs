//! DOCX: a zip archive whose `word/document.xml` holds the body. The text is the
//! content of the `w:t` runs, with paragraphs, breaks and tabs turned into whitespace.
//! The expanded XML is capped, so a zip bomb fails instead of filling memory.

use std::io::{Cursor, Read};

use quick_xml::events::Event;
use quick_xml::Reader;

use super::{ExtractError, Limits};

pub fn to_text(bytes: &[u8], limits: Limits) -> Result<String, ExtractError> {
    let invalid =
        |e: &dyn std::fmt::Display| ExtractError::Invalid(format!("unreadable DOCX: {e}"));
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| invalid(&e))?;
    let entry = archive
        .by_name("word/document.xml")
        .map_err(|_| ExtractError::Invalid("unreadable DOCX: no word/document.xml".to_string()))?;
    let mut xml = Vec::new();
    entry
        .take(limits.max_expanded_bytes + 1)
        .read_to_end(&mut xml)
        .map_err(|e| invalid(&e))?;
    if xml.len() as u64 > limits.max_expanded_bytes {
        return Err(ExtractError::Invalid(format!(
            "unreadable DOCX: document.xml expands beyond {} bytes",
            limits.max_expanded_bytes
        )));
    }
    document_text(&xml).map_err(|e| invalid(&e))
}

fn document_text(xml: &[u8]) -> Result<String, quick_xml::Error> {
    let mut reader = Reader::from_reader(xml);
    let mut out = String::new();
    let mut in_text = false;
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf)? {
            Event::Start(e) if e.local_name().as_ref() == "t" => in_text = true,
            Event::End(e) => match e.local_name().as_ref() {
                "t" => in_text = false,
                "p" => out.push('\n'),
                _ => {}
            },
            Event::Empty(e) => match e.local_name().as_ref() {
                "tab" => out.push('\t'),
                "br" | "cr" => out.push('\n'),
                _ => {}
            },
            Event::Text(t) if in_text => out.push_str(&t.xml10_content()),
            Event::CData(t) if in_text => out.push_str(&t.xml10_content()),
            Event::GeneralRef(r) if in_text => {
                if let Ok(Some(c)) = r.resolve_char_ref() {
                    out.push(c);
                } else if let Ok(s) = quick_xml::escape::unescape(&format!("&{};", &*r)) {
                    out.push_str(&s);
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn docx(document_xml: &str) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("word/document.xml", options).unwrap();
        zip.write_all(document_xml.as_bytes()).unwrap();
        zip.finish().unwrap().into_inner()
    }

    const LIMITS: Limits = Limits {
        max_expanded_bytes: 1 << 20,
    };

    #[test]
    fn paragraphs_runs_and_entities() {
        let xml = r#"<?xml version="1.0"?><w:document xmlns:w="x"><w:body>
            <w:p><w:r><w:t>Fish &amp; chips</w:t></w:r><w:r><w:tab/><w:t xml:space="preserve"> tonight</w:t></w:r></w:p>
            <w:p><w:r><w:t>Second&#33;</w:t></w:r></w:p></w:body></w:document>"#;
        let text = to_text(&docx(xml), LIMITS).unwrap();
        assert_eq!(text, "Fish & chips\t tonight\nSecond!\n");
    }

    #[test]
    fn not_a_zip_or_too_big() {
        assert!(to_text(b"PK\x03\x04 nonsense", LIMITS).is_err());
        let big = format!(
            "<w:document><w:t>{}</w:t></w:document>",
            "a".repeat(2 << 20)
        );
        let error = to_text(&docx(&big), LIMITS).unwrap_err();
        assert!(error.to_string().contains("expands beyond"), "{error}");
    }
}
