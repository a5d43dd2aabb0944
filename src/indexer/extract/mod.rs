//! Text extraction, one module per format. [`Format::detect`] picks the format from the
//! file name and, for names it does not know, from the content; [`extract`] turns the
//! file's bytes into the text that gets indexed.
//!
//! Every outcome is one of three: text to index, a skip with its reason (binary or
//! unsupported files: nothing is wrong with them), or a failure with its error (a file
//! that claims a format and does not hold up, such as a corrupt or encrypted PDF).
//! Nothing here may take the job down: the parsers of complex formats run under
//! `catch_unwind`, so a parser bug on one hostile file becomes that file's failure.

mod docx;
mod html;
mod markdown;
mod pdf;
mod text;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Once;

use tokio_util::sync::CancellationToken;

use super::in_flight::FileProgress;

/// The formats the indexer reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    PlainText,
    Markdown,
    Html,
    SourceCode,
    Pdf,
    Docx,
}

impl Format {
    pub const ALL: [Format; 6] = [
        Format::PlainText,
        Format::Markdown,
        Format::Html,
        Format::SourceCode,
        Format::Pdf,
        Format::Docx,
    ];

    /// The name used in results.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::PlainText => "text",
            Format::Markdown => "markdown",
            Format::Html => "html",
            Format::SourceCode => "source",
            Format::Pdf => "pdf",
            Format::Docx => "docx",
        }
    }

    /// The format of a file, from its extension, else from its first bytes.
    pub fn detect(path: &Path, head: &[u8]) -> Result<Format, Skip> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let by_name = match extension.as_str() {
            "pdf" => Some(Format::Pdf),
            "docx" => Some(Format::Docx),
            "html" | "htm" | "xhtml" => Some(Format::Html),
            "md" | "markdown" | "mdown" | "mkd" | "mdx" => Some(Format::Markdown),
            "txt" | "text" | "log" | "csv" | "tsv" | "rst" | "adoc" | "asciidoc" | "org" => {
                Some(Format::PlainText)
            }
            e if SOURCE_EXTENSIONS.contains(&e) => Some(Format::SourceCode),
            e if UNSUPPORTED_EXTENSIONS.contains(&e) => return Err(Skip::Unsupported(extension)),
            _ => None,
        };
        match by_name {
            Some(format @ (Format::Pdf | Format::Docx)) => Ok(format),
            _ if text::looks_binary(head) => Err(Skip::Binary),
            Some(format) => Ok(format),
            None => Ok(Format::PlainText),
        }
    }
}

/// Source files are indexed as their text; the list only decides what is not "unknown".
const SOURCE_EXTENSIONS: &[&str] = &[
    "rs",
    "py",
    "js",
    "mjs",
    "cjs",
    "ts",
    "tsx",
    "jsx",
    "go",
    "c",
    "h",
    "cc",
    "cpp",
    "cxx",
    "hpp",
    "hh",
    "java",
    "kt",
    "kts",
    "scala",
    "swift",
    "m",
    "mm",
    "cs",
    "fs",
    "vb",
    "rb",
    "php",
    "pl",
    "pm",
    "lua",
    "r",
    "jl",
    "hs",
    "ml",
    "mli",
    "ex",
    "exs",
    "erl",
    "clj",
    "dart",
    "zig",
    "nim",
    "sh",
    "bash",
    "zsh",
    "fish",
    "ps1",
    "bat",
    "sql",
    "css",
    "scss",
    "sass",
    "less",
    "vue",
    "svelte",
    "json",
    "toml",
    "yaml",
    "yml",
    "xml",
    "ini",
    "cfg",
    "conf",
    "gradle",
    "cmake",
    "make",
    "mk",
    "dockerfile",
    "proto",
    "graphql",
    "tex",
    "el",
    "vim",
];

/// Formats that hold no text this indexer can read; named so the skip reason says so.
const UNSUPPORTED_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "gif", "bmp", "webp", "ico", "tif", "tiff", "svgz", "heic", "psd", "mp3",
    "wav", "flac", "ogg", "m4a", "aac", "mp4", "mkv", "avi", "mov", "webm", "zip", "gz", "tgz",
    "bz2", "xz", "zst", "7z", "rar", "tar", "jar", "war", "exe", "dll", "so", "dylib", "o", "a",
    "lib", "class", "pyc", "wasm", "bin", "iso", "img", "dmg", "db", "sqlite", "doc", "xls",
    "xlsx", "ppt", "pptx", "odt", "ods", "odp", "rtf", "epub", "woff", "woff2", "ttf", "otf",
    "eot",
];

/// Why a file is not indexed although nothing is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    Binary,
    Unsupported(String),
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::Binary => f.write_str("binary file"),
            Skip::Unsupported(ext) => write!(f, "unsupported format (.{ext})"),
        }
    }
}

/// Why a file of a supported format could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("{0}")]
    Invalid(String),
    #[error("cancelled")]
    Cancelled,
}

/// Limits that keep one hostile file from exhausting memory.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest decompressed part a container format (DOCX) may expand to.
    pub max_expanded_bytes: u64,
}

/// The text of a file, and what could not be read of it (a PDF's unreadable page or
/// font: the rest of the file is indexed all the same).
#[derive(Debug, Default)]
pub struct Extracted {
    pub text: String,
    pub problems: Vec<String>,
}

impl From<String> for Extracted {
    fn from(text: String) -> Extracted {
        Extracted {
            text,
            problems: Vec::new(),
        }
    }
}

/// Extracts the text of a file whose format is known. `cancel` is checked inside long
/// extractions (page by page for PDF), which report their pages to `progress`.
pub fn extract(
    format: Format,
    bytes: &[u8],
    limits: Limits,
    cancel: &CancellationToken,
    progress: &FileProgress,
) -> Result<Extracted, ExtractError> {
    guarded(format, || match format {
        Format::PlainText | Format::SourceCode => Ok(text::decode(bytes).into_owned().into()),
        Format::Markdown => Ok(markdown::to_text(&text::decode(bytes)).into()),
        Format::Html => Ok(html::to_text(&text::decode(bytes)).into()),
        Format::Pdf => pdf::to_text(bytes, cancel, progress),
        Format::Docx => docx::to_text(bytes, limits).map(Extracted::from),
    })
}

/// Changes whenever the same bytes would be indexed differently (an extractor or the
/// tokenizer changed). It seeds the content hash of each file's stamp, so that after an
/// upgrade the next job reads every file again instead of keeping documents made the old
/// way as "unchanged".
pub const EXTRACTION_VERSION: u64 = 1;

/// Threads whose names start with this run extractions (see [`quiet_parser_panics`]).
pub const EXTRACTION_THREAD_PREFIX: &str = "index-extract";

/// Parser panics on hostile files are expected here and become failures of their file,
/// with the panic message as the reason. The default panic hook would also print each one,
/// with a backtrace, to stderr; this hook stays silent for the extraction threads and
/// leaves every other thread to the hook that was there before. Installed once.
pub fn quiet_parser_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let extracting = std::thread::current()
                .name()
                .is_some_and(|name| name.starts_with(EXTRACTION_THREAD_PREFIX));
            if !extracting {
                previous(info);
            }
        }));
    });
}

/// Runs a parser so that its panic becomes an error of this file alone.
fn guarded(
    format: Format,
    parse: impl FnOnce() -> Result<Extracted, ExtractError>,
) -> Result<Extracted, ExtractError> {
    match catch_unwind(AssertUnwindSafe(parse)) {
        Ok(result) => result,
        Err(panic) => Err(ExtractError::Invalid(format!(
            "{} parser gave up: {}",
            format.as_str(),
            panic_message(&*panic)
        ))),
    }
}

/// The message a panic was raised with.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_by_name_and_content() {
        let p = Path::new;
        assert_eq!(Format::detect(p("a.PDF"), b"\0"), Ok(Format::Pdf));
        assert_eq!(
            Format::detect(p("a.rs"), b"fn main"),
            Ok(Format::SourceCode)
        );
        assert_eq!(Format::detect(p("README"), b"hello"), Ok(Format::PlainText));
        assert_eq!(Format::detect(p("blob.dat"), b"ab\0cd"), Err(Skip::Binary));
        assert_eq!(Format::detect(p("notes.txt"), b"ab\0cd"), Err(Skip::Binary));
        assert_eq!(
            Format::detect(p("x.png"), b"hello"),
            Err(Skip::Unsupported("png".to_string()))
        );
    }
}
