//! PDF through `pdf-extract` (text layout) over `lopdf` (parsing). An encrypted file is
//! opened only if it needs no password; otherwise it fails with a message that says so.
//! The output device checks the job's cancellation at every page, so a long document
//! does not hold up a cancel.

use pdf_extract::{Document, MediaBox, OutputDev, OutputError, PlainTextOutput, Transform};
use tokio_util::sync::CancellationToken;

use super::ExtractError;
use crate::indexer::in_flight::FileProgress;

pub fn to_text(
    bytes: &[u8],
    cancel: &CancellationToken,
    progress: &FileProgress,
) -> Result<String, ExtractError> {
    let mut document = Document::load_mem(bytes)
        .map_err(|e| ExtractError::Invalid(format!("unreadable PDF: {e}")))?;
    if document.is_encrypted() && document.decrypt("").is_err() {
        return Err(ExtractError::Invalid(
            "encrypted PDF: a password is needed to read it".to_string(),
        ));
    }
    progress.set_pages(document.get_pages().len() as u32);
    let mut text = String::new();
    let result = {
        let mut output = Cancellable {
            inner: PlainTextOutput::new(&mut text),
            cancel,
            progress,
        };
        pdf_extract::output_doc(&document, &mut output)
    };
    match result {
        Ok(()) => Ok(text),
        Err(_) if cancel.is_cancelled() => Err(ExtractError::Cancelled),
        Err(e) => Err(ExtractError::Invalid(format!("unreadable PDF: {e}"))),
    }
}

/// Plain-text output that stops at the next page once the job is cancelled.
struct Cancellable<'a, W: pdf_extract::ConvertToFmt> {
    inner: PlainTextOutput<W>,
    cancel: &'a CancellationToken,
    progress: &'a FileProgress,
}

impl<W: pdf_extract::ConvertToFmt> OutputDev for Cancellable<'_, W> {
    fn begin_page(
        &mut self,
        page_num: u32,
        media_box: &MediaBox,
        art_box: Option<(f64, f64, f64, f64)>,
    ) -> Result<(), OutputError> {
        if self.cancel.is_cancelled() {
            return Err(OutputError::IoError(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "cancelled",
            )));
        }
        self.inner.begin_page(page_num, media_box, art_box)
    }
    fn end_page(&mut self) -> Result<(), OutputError> {
        self.inner.end_page()?;
        self.progress.page_done();
        // Pages run together otherwise, gluing the last word of one to the first of the next.
        self.inner.end_line()
    }
    fn output_character(
        &mut self,
        trm: &Transform,
        width: f64,
        spacing: f64,
        font_size: f64,
        char: &str,
    ) -> Result<(), OutputError> {
        self.inner
            .output_character(trm, width, spacing, font_size, char)
    }
    fn begin_word(&mut self) -> Result<(), OutputError> {
        self.inner.begin_word()
    }
    fn end_word(&mut self) -> Result<(), OutputError> {
        self.inner.end_word()
    }
    fn end_line(&mut self) -> Result<(), OutputError> {
        self.inner.end_line()
    }
}

#[cfg(test)]
#[path = "../../../tests/fixtures/pdf.rs"]
mod pdf_fixture;

#[cfg(test)]
mod tests {
    use super::pdf_fixture::minimal_pdf;
    use super::*;
    use pdf_extract::encryption::{EncryptionState, EncryptionVersion, Permissions};

    #[test]
    fn reads_text_and_refuses_garbage() {
        let token = CancellationToken::new();
        let pages = FileProgress::default();
        let text = to_text(&minimal_pdf("Hello quokka"), &token, &pages).unwrap();
        assert!(text.contains("Hello quokka"), "{text:?}");
        assert_eq!(pages.pages(), Some((1, 1)));
        let corrupt = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 9 0 R";
        assert!(matches!(
            to_text(corrupt, &token, &pages),
            Err(ExtractError::Invalid(_))
        ));
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        assert!(matches!(
            to_text(&minimal_pdf("x"), &cancelled, &pages),
            Err(ExtractError::Cancelled)
        ));
    }

    #[test]
    fn a_password_protected_pdf_fails_cleanly() {
        let mut document = Document::load_mem(&minimal_pdf("secret words")).unwrap();
        let version = EncryptionVersion::V2 {
            document: &document,
            owner_password: "owner",
            user_password: "user",
            key_length: 128,
            permissions: Permissions::all(),
        };
        let state = EncryptionState::try_from(version).unwrap();
        document.encrypt(&state).unwrap();
        let mut bytes = Vec::new();
        document.save_to(&mut bytes).unwrap();
        let error =
            to_text(&bytes, &CancellationToken::new(), &FileProgress::default()).unwrap_err();
        assert!(error.to_string().contains("encrypted"), "{error}");
    }
}
