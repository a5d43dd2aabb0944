//! Indexing benchmark: generates a corpus, reads it raw, then indexes it with the job
//! the server runs, and prints files/s and MB/s of both and their ratio, so that one
//! run shows how close indexing comes to the speed of reading the files. Then it indexes
//! each format's part of the corpus on its own (text, Markdown, HTML, source, PDF, and
//! Chinese/Japanese text) and prints files/s and MB/s per format.
//!
//! ```text
//! cargo run --release --example index_bench -- --files 10000 --mb 200
//! ```
//!
//! Both passes read a warm page cache (the corpus was just written), so "raw read" is
//! the ceiling of what the machine can deliver to the indexer, not the speed of a cold
//! disk. A third pass re-indexes the unchanged corpus (read and hash only). Beside the
//! wall-clock rates it prints the CPU time each pass used (Linux), which other load on a
//! shared machine disturbs less.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use progress_hub::indexer::index::SearchIndex;
use progress_hub::indexer::job::{Job, JobEnd, JobSettings};
use progress_hub::indexer::report::Silent;
use progress_hub::indexer::roots::IndexRoots;
use tokio_util::sync::CancellationToken;

#[path = "../tests/fixtures/pdf.rs"]
mod pdf_fixture;

/// The corpus's formats, one folder each: (folder, what it holds).
const FORMATS: [(&str, &str); 6] = [
    ("text", "plain text"),
    ("markdown", "Markdown"),
    ("html", "HTML"),
    ("source", "Rust source"),
    ("pdf", "PDF"),
    ("cjk", "Chinese/Japanese text"),
];

#[derive(Parser)]
struct Args {
    /// Files in the corpus.
    #[arg(long, default_value_t = 10_000)]
    files: usize,
    /// Total size of the corpus in megabytes (10^6 bytes).
    #[arg(long, default_value_t = 200)]
    mb: u64,
    /// Extraction threads (and raw-read threads); 0 = one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Where to generate the corpus and the index (default: a temporary folder, removed
    /// afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let threads = match args.threads {
        0 => std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(8),
        n => n,
    };
    let temp = tempfile::tempdir().expect("temporary folder");
    let base = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let corpus = base.join("corpus");
    let index_dir = base.join("index");
    let _ = std::fs::remove_dir_all(&corpus);
    let _ = std::fs::remove_dir_all(&index_dir);

    let started = Instant::now();
    let (files, bytes) = generate(&corpus, args.files, args.mb * 1_000_000);
    println!(
        "corpus: {files} files, {:.1} MB, generated in {:.1} s; {threads} threads",
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    let paths = list(&corpus);
    let cpu = cpu_seconds();
    let (read_bytes, read_time) = raw_read(&paths, threads);
    let raw = Rate::new(paths.len(), read_bytes, read_time, cpu_seconds() - cpu);
    raw.print("raw read");

    let index = SearchIndex::open_or_create(&index_dir).expect("index");
    let roots = IndexRoots::new(std::slice::from_ref(&corpus)).expect("roots");
    let folder = roots.as_slice()[0].clone();
    let settings = JobSettings {
        max_file_bytes: 64 << 20,
        threads,
        exclude: None,
        // One commit at the end, as a small job would do; the figures then measure
        // indexing, not checkpoint spacing.
        checkpoint_every: None,
    };
    let job = |index: &SearchIndex, folder: &Path| {
        let roots = IndexRoots::new(&[folder.to_path_buf()]).expect("roots");
        let folder = roots.as_slice()[0].clone();
        let cancel = CancellationToken::new();
        let job = Job {
            index,
            roots: &roots,
            folder: &folder,
            settings: &settings,
            cancel: &cancel,
        };
        let (started, cpu) = (Instant::now(), cpu_seconds());
        let results = match job.run(&mut Silent) {
            JobEnd::Completed(results) => results,
            other => panic!("indexing did not complete: {other:?}"),
        };
        (results, started.elapsed(), cpu_seconds() - cpu)
    };
    let (results, took, cpu) = job(&index, &folder);
    assert_eq!(results["files_indexed"].as_u64(), Some(paths.len() as u64));
    let indexed = Rate::new(paths.len(), read_bytes, took, cpu);
    indexed.print("index (new)");
    let (results, took, cpu) = job(&index, &folder);
    assert_eq!(
        results["files_unchanged"].as_u64(),
        Some(paths.len() as u64)
    );
    let reindexed = Rate::new(paths.len(), read_bytes, took, cpu);
    reindexed.print("re-index (unchanged)");
    println!(
        "ratio index/raw read: {:.3} (new), {:.3} (unchanged)",
        indexed.mb_per_s() / raw.mb_per_s(),
        reindexed.mb_per_s() / raw.mb_per_s()
    );
    println!("index on disk: {:.1} MB", dir_size(&index_dir) as f64 / 1e6);

    println!("per format (each on its own, into a fresh index):");
    for (name, what) in FORMATS {
        let part = folder.join(name);
        let files = list(&part);
        if files.is_empty() {
            continue;
        }
        let bytes: u64 = files
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let part_index_dir = base.join(format!("index-{name}"));
        let _ = std::fs::remove_dir_all(&part_index_dir);
        let part_index = SearchIndex::open_or_create(&part_index_dir).expect("index");
        let (results, took, cpu) = job(&part_index, &part);
        assert_eq!(
            results["files_indexed"].as_u64(),
            Some(files.len() as u64),
            "{results}"
        );
        Rate::new(files.len(), bytes, took, cpu).print(what);
    }
}

struct Rate {
    files: usize,
    bytes: u64,
    took: Duration,
    /// CPU seconds of this process during the pass (all threads).
    cpu: f64,
}

impl Rate {
    fn new(files: usize, bytes: u64, took: Duration, cpu: f64) -> Rate {
        Rate {
            files,
            bytes,
            took,
            cpu,
        }
    }
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.took.as_secs_f64()
    }
    fn print(&self, what: &str) {
        println!(
            "{what:>22}: {:>8.3} s  {:>10.0} files/s  {:>8.1} MB/s  (cpu {:.2} s)",
            self.took.as_secs_f64(),
            self.files as f64 / self.took.as_secs_f64(),
            self.mb_per_s(),
            self.cpu
        );
    }
}

/// Reads every file whole, on `threads` threads, as the extraction threads do.
fn raw_read(paths: &[PathBuf], threads: usize) -> (u64, Duration) {
    let next = AtomicUsize::new(0);
    let total = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(path) = paths.get(i) else { break };
                let bytes = std::fs::read(path).expect("read");
                total.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            });
        }
    });
    (total.into_inner(), started.elapsed())
}

/// User plus system CPU time of this process so far, from `/proc/self/stat` (in clock
/// ticks of 1/100 s on Linux); 0 where that file does not exist.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the file, 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn list(folder: &Path) -> Vec<PathBuf> {
    ignore::WalkBuilder::new(folder)
        .build()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_some_and(|t| t.is_file()))
        .map(|e| e.into_path())
        .collect()
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Files of every format, of varied sizes around the mean, made of words drawn from a
/// vocabulary large enough to give the index real work: plain text, Markdown, HTML and
/// source files, PDFs (one page per 3 KB of text), and unspaced Chinese/Japanese text.
fn generate(folder: &Path, files: usize, total_bytes: u64) -> (usize, u64) {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let vocabulary: Vec<String> = (0..50_000).map(|_| word(&mut rng)).collect();
    let cjk_vocabulary: Vec<String> = (0..20_000)
        .map(|_| {
            let len = 1 + (rng.next() % 4) as usize;
            (0..len).map(|_| cjk_char(&mut rng)).collect()
        })
        .collect();
    let mean = (total_bytes / files.max(1) as u64).max(64);
    let mut written = 0;
    for i in 0..files {
        let (format, _) = FORMATS[match i % 10 {
            0..=2 => 0,
            3 | 4 => 1,
            5 | 6 => 2,
            7 => 3,
            8 => 4,
            _ => 5,
        }];
        let dir = folder.join(format).join(format!("{:03}", (i / 10) % 100));
        std::fs::create_dir_all(&dir).expect("corpus folder");
        let size = (mean / 2 + rng.next() % mean) as usize;
        let mut text = String::with_capacity(size + 64);
        while text.len() < size {
            if format == "cjk" {
                // Words of one to four characters, as skewed as the Latin ones, with no
                // spaces between them.
                let r = rng.next() % cjk_vocabulary.len() as u64;
                text.push_str(&cjk_vocabulary[(r * r / cjk_vocabulary.len() as u64) as usize]);
                if rng.next().is_multiple_of(12) {
                    text.push_str(if rng.next().is_multiple_of(2) {
                        "、"
                    } else {
                        "。\n"
                    });
                }
                continue;
            }
            // Zipf-like: common words often, rare words now and then.
            let r = rng.next() % vocabulary.len() as u64;
            let rank = (r * r / vocabulary.len() as u64) as usize;
            text.push_str(&vocabulary[rank]);
            let line_end = rng.next().is_multiple_of(12);
            text.push(if line_end { '\n' } else { ' ' });
        }
        let (name, contents) = match format {
            "text" => (format!("doc{i}.txt"), text.into_bytes()),
            "markdown" => (format!("doc{i}.md"), format!("# Title {i}\n\n{text}\n\n- item *one*\n").into_bytes()),
            "html" => (
                format!("doc{i}.html"),
                format!("<html><head><title>Doc {i}</title><style>p{{margin:0}}</style></head><body><p>{text}</p></body></html>").into_bytes(),
            ),
            "source" => (format!("mod{i}.rs"), format!("// Module {i}\nfn f{i}() {{\n    /* {text} */\n}}\n").into_bytes()),
            "pdf" => (format!("doc{i}.pdf"), text_pdf(&text)),
            _ => (format!("doc{i}.txt"), text.into_bytes()),
        };
        written += contents.len() as u64;
        std::fs::write(dir.join(name), contents).expect("corpus file");
    }
    (files, written)
}

/// One of the 2,000 most used Han characters (by code point here: the real list is not
/// needed, only its size) or a Kana, the common ones more often.
fn cjk_char(rng: &mut XorShift) -> char {
    let r = rng.next();
    let code = if r.is_multiple_of(4) {
        0x3041 + (r >> 8) % 0x56
    } else {
        let k = (r >> 8) % 2_000;
        0x4E00 + k * k / 2_000 * 8 + (r >> 40) % 8
    };
    char::from_u32(code as u32).unwrap_or('字')
}

/// A PDF setting `text` in Helvetica, 40 lines of up to 75 characters per page.
fn text_pdf(text: &str) -> Vec<u8> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if line.len() + word.len() > 75 {
            lines.push(std::mem::take(&mut line));
        }
        line.push_str(word);
        line.push(' ');
    }
    lines.push(line);
    let pages: Vec<&[String]> = lines.chunks(40).collect();
    let kids: Vec<String> = (0..pages.len())
        .map(|p| format!("{} 0 R", 4 + 2 * p))
        .collect();
    let mut objects = vec![
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        format!(
            "<< /Type /Pages /Kids [{}] /Count {} >>",
            kids.join(" "),
            pages.len()
        ),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string(),
    ];
    for (p, page) in pages.iter().enumerate() {
        let shown: String = page.iter().map(|l| format!("({l}) Tj 0 -16 Td ")).collect();
        let stream = format!("BT /F1 11 Tf 60 760 Td {shown}ET");
        objects.push(format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {} 0 R \
             /Resources << /Font << /F1 3 0 R >> >> >>",
            5 + 2 * p
        ));
        objects.push(format!(
            "<< /Length {} >>\nstream\n{stream}\nendstream",
            stream.len()
        ));
    }
    pdf_fixture::pdf_from_objects(&objects)
}

fn word(rng: &mut XorShift) -> String {
    let len = 3 + (rng.next() % 8) as usize;
    (0..len)
        .map(|_| (b'a' + (rng.next() % 26) as u8) as char)
        .collect()
}

/// A deterministic generator: the same corpus every run, without a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
