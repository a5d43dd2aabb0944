//! PDF: lopdf parses the file; [`text`] reads each page's content stream, with fonts
//! decoded by [`fonts`] and [`cmap`].
//!
//! One bad page or font costs only itself: each page is read on its own (under
//! `catch_unwind`, so that a parser bug on one page is that page's failure), a font
//! whose text cannot be decoded yields nothing while the other fonts on its page still
//! do, and the file is indexed with what was read, its problems listed in the job's
//! results. Only a file of which no page could be read fails. An encrypted file is
//! opened only if it needs no password. Cancellation is checked at every page, and pages
//! done are reported for the live progress.
//!
//! Why this and not a PDF text crate: docs/design/pdf-extraction.md.

mod cmap;
mod fonts;
mod text;

use std::panic::{catch_unwind, AssertUnwindSafe};

use lopdf::Document;
use tokio_util::sync::CancellationToken;

use super::{panic_message, ExtractError, Extracted};
use crate::indexer::in_flight::FileProgress;

/// Pages named in a file's problems; the rest are counted.
const MAX_PAGES_LISTED: usize = 5;

pub fn to_text(
    bytes: &[u8],
    cancel: &CancellationToken,
    progress: &FileProgress,
) -> Result<Extracted, ExtractError> {
    let mut document = Document::load_mem(bytes)
        .map_err(|e| ExtractError::Invalid(format!("unreadable PDF: {e}")))?;
    if document.is_encrypted() && document.decrypt("").is_err() {
        return Err(ExtractError::Invalid(
            "encrypted PDF: a password is needed to read it".to_string(),
        ));
    }
    let pages = document.get_pages();
    progress.set_pages(pages.len() as u32);
    let mut extractor = text::Extractor::new(&document);
    let mut out = String::new();
    let mut problems = Vec::new();
    let mut failed_pages: Vec<(u32, String)> = Vec::new();
    for (&number, &page_id) in &pages {
        if cancel.is_cancelled() {
            return Err(ExtractError::Cancelled);
        }
        let mark = out.len();
        let read = catch_unwind(AssertUnwindSafe(|| {
            extractor.page(page_id, &mut out, &mut problems)
        }));
        let error = match read {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error),
            Err(panic) => Some(format!("parser gave up: {}", panic_message(&*panic))),
        };
        if let Some(error) = error {
            out.truncate(mark);
            failed_pages.push((number, error));
        }
        progress.page_done();
    }
    if !pages.is_empty() && failed_pages.len() == pages.len() {
        let (number, error) = &failed_pages[0];
        return Err(ExtractError::Invalid(format!(
            "no page could be read (page {number}: {error})"
        )));
    }
    for (number, error) in failed_pages.iter().take(MAX_PAGES_LISTED) {
        problems.push(format!("page {number}: {error}"));
    }
    if failed_pages.len() > MAX_PAGES_LISTED {
        problems.push(format!(
            "{} more pages unreadable",
            failed_pages.len() - MAX_PAGES_LISTED
        ));
    }
    Ok(Extracted {
        text: out,
        problems,
    })
}

#[cfg(test)]
#[path = "../../../../tests/fixtures/pdf.rs"]
mod pdf_fixture;

#[cfg(test)]
mod tests;
