//! Indexing benchmark: generates a corpus, reads it raw, then indexes it with the job
//! the server runs, and prints files/s and MB/s of both and their ratio, so that one
//! run shows how close indexing comes to the speed of reading the files.
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
    let run = || {
        let cancel = CancellationToken::new();
        let job = Job {
            index: &index,
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
    let (results, took, cpu) = run();
    assert_eq!(results["files_indexed"].as_u64(), Some(paths.len() as u64));
    let indexed = Rate::new(paths.len(), read_bytes, took, cpu);
    indexed.print("index (new)");
    let (results, took, cpu) = run();
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

/// Text, Markdown, HTML and source files of varied sizes around the mean, made of
/// words drawn from a vocabulary large enough to give the index real work.
fn generate(folder: &Path, files: usize, total_bytes: u64) -> (usize, u64) {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let vocabulary: Vec<String> = (0..50_000).map(|_| word(&mut rng)).collect();
    let mean = (total_bytes / files.max(1) as u64).max(64);
    let mut written = 0;
    for i in 0..files {
        let dir = folder.join(format!("{:03}", i % 200));
        if i < 200 {
            std::fs::create_dir_all(&dir).expect("corpus folder");
        }
        let size = (mean / 2 + rng.next() % mean) as usize;
        let mut text = String::with_capacity(size + 64);
        while text.len() < size {
            // Zipf-like: common words often, rare words now and then.
            let r = rng.next() % vocabulary.len() as u64;
            let rank = (r * r / vocabulary.len() as u64) as usize;
            text.push_str(&vocabulary[rank]);
            let line_end = rng.next().is_multiple_of(12);
            text.push(if line_end { '\n' } else { ' ' });
        }
        let (name, contents) = match i % 5 {
            0 | 1 => (format!("doc{i}.txt"), text),
            2 => (format!("doc{i}.md"), format!("# Title {i}\n\n{text}\n\n- item *one*\n")),
            3 => (
                format!("doc{i}.html"),
                format!("<html><head><title>Doc {i}</title><style>p{{margin:0}}</style></head><body><p>{text}</p></body></html>"),
            ),
            _ => (format!("mod{i}.rs"), format!("// Module {i}\nfn f{i}() {{\n    /* {text} */\n}}\n")),
        };
        written += contents.len() as u64;
        std::fs::write(dir.join(name), contents).expect("corpus file");
    }
    (files, written)
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
