//! Compares ways of getting the text out of PDFs, on the small PDFs the tests build (each
//! with words it must yield) and on any real PDFs found under `--dir`:
//!
//! - `pdf-extract`: the crate, whole document at once (what the indexer used before);
//! - `pdf-extract/page`: the same crate page by page, each page under `catch_unwind`;
//! - `lopdf`: lopdf's own `extract_text`, page by page;
//! - `progress-hub`: the indexer's extractor (lopdf parsing, its own fonts and layout);
//! - `pdftotext`: poppler's command-line tool (C++), when it is installed, as the reference
//!   for speed and text (its time includes starting the process).
//!
//! For each it prints whether the file was read, the pages that failed, the words it
//! yielded, how many of those are implausibly long (words glued together), whether the
//! expected words were found, and the time taken.
//!
//! ```text
//! cargo run --release --example pdf_compare -- --dir /usr/share/doc
//! ```

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use progress_hub::indexer::extract::{self, Format, Limits};
use progress_hub::indexer::in_flight::FileProgress;
use tokio_util::sync::CancellationToken;

#[path = "../tests/fixtures/pdf.rs"]
mod pdf_fixture;

#[derive(Parser)]
struct Args {
    /// A folder searched (recursively) for real PDFs to compare on.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// At most this many real PDFs.
    #[arg(long, default_value_t = 20)]
    max_files: usize,
}

struct Sample {
    name: String,
    bytes: Vec<u8>,
    /// Words the text must contain (empty for real files: no reference text).
    expected: Vec<&'static str>,
}

/// What one candidate made of one file.
struct Outcome {
    text: String,
    /// `None` when the file was read (maybe partly); the error otherwise.
    error: Option<String>,
    failed_pages: usize,
    took: Duration,
}

type Candidate = fn(&[u8]) -> (String, Option<String>, usize);

fn main() {
    let args = Args::parse();
    let mut samples = fixtures();
    if let Some(dir) = &args.dir {
        samples.extend(real_pdfs(dir, args.max_files));
    }
    let mut candidates: Vec<(&str, Candidate)> = vec![
        ("pdf-extract", pdf_extract_whole),
        ("pdf-extract/page", pdf_extract_by_page),
        ("lopdf", lopdf_by_page),
        ("progress-hub", progress_hub),
    ];
    if std::process::Command::new("pdftotext")
        .arg("-v")
        .output()
        .is_ok()
    {
        candidates.push(("pdftotext", pdftotext));
    } else {
        println!("(pdftotext not installed: `apt-get install poppler-utils` to compare with it)");
    }
    println!(
        "{:<34} {:<17} {:>6} {:>6} {:>8} {:>6} {:>9}  expected / error",
        "file", "candidate", "read", "badpg", "words", "glued", "ms"
    );
    let mut totals = vec![(0usize, 0usize, 0usize, Duration::ZERO); candidates.len()];
    for sample in &samples {
        for (k, (name, candidate)) in candidates.iter().enumerate() {
            let outcome = run(*candidate, &sample.bytes);
            let words: Vec<&str> = outcome.text.split_whitespace().collect();
            let glued = words.iter().filter(|w| w.chars().count() > 25).count();
            let found = sample
                .expected
                .iter()
                .filter(|w| outcome.text.contains(**w))
                .count();
            let note = match &outcome.error {
                Some(error) => error.chars().take(60).collect(),
                None if sample.expected.is_empty() => String::new(),
                None => format!("{found}/{}", sample.expected.len()),
            };
            println!(
                "{:<34} {:<17} {:>6} {:>6} {:>8} {:>6} {:>9.1}  {note}",
                sample.name.chars().take(34).collect::<String>(),
                name,
                if outcome.error.is_none() { "yes" } else { "NO" },
                outcome.failed_pages,
                words.len(),
                glued,
                outcome.took.as_secs_f64() * 1e3
            );
            let total = &mut totals[k];
            total.0 += usize::from(outcome.error.is_none());
            total.1 += found;
            total.2 += words.len();
            total.3 += outcome.took;
        }
    }
    let expected: usize = samples.iter().map(|s| s.expected.len()).sum();
    println!(
        "\ntotals over {} files ({expected} expected words):",
        samples.len()
    );
    for ((name, _), (read, found, words, took)) in candidates.iter().zip(totals) {
        println!(
            "  {name:<17} read {read:>3}  expected words found {found:>3}  words {words:>9}  time {:>8.1} ms",
            took.as_secs_f64() * 1e3
        );
    }
}

fn run(candidate: Candidate, bytes: &[u8]) -> Outcome {
    extract::quiet_parser_panics();
    let started = Instant::now();
    let result = std::thread::Builder::new()
        .name(format!("{}-compare", extract::EXTRACTION_THREAD_PREFIX))
        .spawn({
            let bytes = bytes.to_vec();
            move || catch_unwind(AssertUnwindSafe(|| candidate(&bytes)))
        })
        .expect("thread")
        .join()
        .expect("joined");
    let took = started.elapsed();
    match result {
        Ok((text, error, failed_pages)) => Outcome {
            text,
            error,
            failed_pages,
            took,
        },
        Err(panic) => Outcome {
            text: String::new(),
            error: Some(format!("panic: {}", message(&*panic))),
            failed_pages: 0,
            took,
        },
    }
}

fn message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

fn pdf_extract_whole(bytes: &[u8]) -> (String, Option<String>, usize) {
    match pdf_extract::extract_text_from_mem(bytes) {
        Ok(text) => (text, None, 0),
        Err(error) => (String::new(), Some(error.to_string()), 0),
    }
}

fn pdf_extract_by_page(bytes: &[u8]) -> (String, Option<String>, usize) {
    let document = match pdf_extract::Document::load_mem(bytes) {
        Ok(document) => document,
        Err(error) => return (String::new(), Some(error.to_string()), 0),
    };
    let (mut text, mut failed) = (String::new(), 0);
    for number in document.get_pages().keys() {
        let page = catch_unwind(AssertUnwindSafe(|| {
            let mut page_text = String::new();
            let mut output = pdf_extract::PlainTextOutput::new(&mut page_text);
            pdf_extract::output_doc_page(&document, &mut output, *number).map(|_| page_text)
        }));
        match page {
            Ok(Ok(page_text)) => {
                text.push_str(&page_text);
                text.push('\n');
            }
            _ => failed += 1,
        }
    }
    (text, None, failed)
}

/// poppler's `pdftotext`, the PDF read from stdin and the text written to stdout.
fn pdftotext(bytes: &[u8]) -> (String, Option<String>, usize) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("pdftotext")
        .args(["-q", "-enc", "UTF-8", "-", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => return (String::new(), Some(error.to_string()), 0),
    };
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output();
    let _ = writer.join();
    match output {
        Ok(out) if out.status.success() => {
            (String::from_utf8_lossy(&out.stdout).into_owned(), None, 0)
        }
        Ok(out) => (String::new(), Some(format!("pdftotext: {}", out.status)), 0),
        Err(error) => (String::new(), Some(error.to_string()), 0),
    }
}

fn lopdf_by_page(bytes: &[u8]) -> (String, Option<String>, usize) {
    let document = match lopdf::Document::load_mem(bytes) {
        Ok(document) => document,
        Err(error) => return (String::new(), Some(error.to_string()), 0),
    };
    let (mut text, mut failed) = (String::new(), 0);
    for number in document.get_pages().keys() {
        match catch_unwind(AssertUnwindSafe(|| document.extract_text(&[*number]))) {
            Ok(Ok(page_text)) => text.push_str(&page_text),
            _ => failed += 1,
        }
    }
    (text, None, failed)
}

fn progress_hub(bytes: &[u8]) -> (String, Option<String>, usize) {
    let limits = Limits {
        max_expanded_bytes: 256 << 20,
    };
    let cancel = CancellationToken::new();
    match extract::extract(
        Format::Pdf,
        bytes,
        limits,
        &cancel,
        &FileProgress::default(),
    ) {
        Ok(extracted) => {
            let failed = extracted
                .problems
                .iter()
                .filter(|p| p.starts_with("page "))
                .count();
            (extracted.text, None, failed)
        }
        Err(error) => (String::new(), Some(error.to_string()), 0),
    }
}

fn fixtures() -> Vec<Sample> {
    use pdf_fixture::*;
    vec![
        Sample {
            name: "fixture: Helvetica line".into(),
            bytes: minimal_pdf("Plain Helvetica words"),
            expected: vec!["Plain", "Helvetica", "words"],
        },
        Sample {
            name: "fixture: 1-byte ToUnicode (TeX)".into(),
            bytes: one_byte_to_unicode_pdf(),
            expected: vec![
                "verification",
                "conditions",
                "defined",
                "efficient",
                "self-test",
                "stay",
            ],
        },
        Sample {
            name: "fixture: UniJIS-UCS2-H + ASCII".into(),
            bytes: cjk_cmap_pdf("自動採点のマークシート"),
            expected: vec!["自動採点", "マークシート", "ASCII", "survive"],
        },
        Sample {
            name: "reportlab: HeiseiMin-W3 + Helvetica".into(),
            bytes: include_bytes!("../tests/fixtures/pdf/reportlab-cjk.pdf").to_vec(),
            expected: vec![
                "自動採点",
                "マークシート",
                "選択式",
                "評定",
                "grading",
                "English",
            ],
        },
        Sample {
            name: "fixture: missing middle page".into(),
            bytes: bad_middle_page_pdf(),
            expected: vec!["gnu", "yak"],
        },
        Sample {
            name: "fixture: 300 pages".into(),
            bytes: many_pages_pdf(300),
            expected: vec!["Page 299 line 19"],
        },
    ]
}

fn real_pdfs(dir: &Path, max: usize) -> Vec<Sample> {
    let mut paths: Vec<PathBuf> = ignore::WalkBuilder::new(dir)
        .standard_filters(false)
        .build()
        .filter_map(Result::ok)
        .map(|e| e.into_path())
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("pdf")))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .take(max)
        .filter_map(|path| {
            let bytes = std::fs::read(&path).ok()?;
            Some(Sample {
                name: path.file_name()?.to_string_lossy().into_owned(),
                bytes,
                expected: Vec::new(),
            })
        })
        .collect()
}
