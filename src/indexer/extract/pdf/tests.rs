use lopdf::encryption::{EncryptionState, EncryptionVersion, Permissions};

use super::pdf_fixture::{
    bad_middle_page_pdf, cjk_cmap_pdf, minimal_pdf, one_byte_to_unicode_pdf, pdf_from_objects,
    pdf_objects,
};
use super::*;

fn read(bytes: &[u8]) -> Extracted {
    to_text(bytes, &CancellationToken::new(), &FileProgress::default()).unwrap()
}

fn words(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

#[test]
fn reads_text_and_refuses_garbage() {
    let token = CancellationToken::new();
    let pages = FileProgress::default();
    let read = to_text(&minimal_pdf("Hello quokka"), &token, &pages).unwrap();
    assert_eq!(words(&read.text), ["Hello", "quokka"]);
    assert!(read.problems.is_empty(), "{:?}", read.problems);
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
fn a_one_byte_to_unicode_map_is_read() {
    let read = read(&one_byte_to_unicode_pdf());
    assert_eq!(
        words(&read.text),
        [
            "verification",
            "conditions",
            "defined",
            "efficient",
            "self-test.",
            "kerning",
            "Helvetica",
            "lines",
            "stay"
        ]
    );
    assert!(read.problems.is_empty(), "{:?}", read.problems);
}

#[test]
fn a_standard_cjk_cmap_is_read_and_an_unreadable_font_costs_only_itself() {
    let read = read(&cjk_cmap_pdf("自動採点のマークシート"));
    assert_eq!(
        words(&read.text),
        ["自動採点のマークシート", "ASCII", "words", "survive"]
    );
    assert_eq!(read.problems.len(), 1, "{:?}", read.problems);
    assert!(read.problems[0].contains("F3"), "{:?}", read.problems);
}

#[test]
fn a_bad_page_costs_only_that_page() {
    let read = read(&bad_middle_page_pdf());
    assert_eq!(
        words(&read.text),
        ["first", "page", "gnu", "third", "page", "yak"]
    );
    assert_eq!(read.problems.len(), 1, "{:?}", read.problems);
    assert!(
        read.problems[0].starts_with("page 2: "),
        "{:?}",
        read.problems
    );
}

#[test]
fn a_missing_font_is_a_problem_of_the_file_not_a_failure() {
    let mut objects = pdf_objects("no font");
    objects.pop();
    let read = read(&pdf_from_objects(&objects));
    assert!(read.text.trim().is_empty(), "{:?}", read.text);
    assert_eq!(read.problems.len(), 1, "{:?}", read.problems);
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
    let error = to_text(&bytes, &CancellationToken::new(), &FileProgress::default()).unwrap_err();
    assert!(error.to_string().contains("encrypted"), "{error}");
}

#[test]
fn a_reportlab_file_with_a_standard_cjk_font_is_read() {
    // Made by tests/fixtures/pdf/make_reportlab_cjk.py.
    let read = read(include_bytes!(
        "../../../../tests/fixtures/pdf/reportlab-cjk.pdf"
    ));
    assert!(read.problems.is_empty(), "{:?}", read.problems);
    assert_eq!(
        words(&read.text),
        [
            "自動採点システムは、マークシート形式の選択式問題を評定します。",
            "Automatic",
            "grading",
            "of",
            "multiple",
            "choice",
            "sheets.",
            "A",
            "second",
            "page",
            "in",
            "English",
            "only."
        ]
    );
}
