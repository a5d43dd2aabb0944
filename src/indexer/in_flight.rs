//! The files the extraction threads are working on right now, so that a job busy with one
//! slow file (a long PDF) reports that file, how long it has taken and how far it has
//! come, instead of the last file it finished and then nothing at all.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far the extraction of one file has come, in pages (for formats that have pages).
/// Written by the extracting thread, read by the reporting one.
#[derive(Debug, Default)]
pub struct FileProgress {
    pages_done: AtomicU32,
    pages: AtomicU32,
}

impl FileProgress {
    pub fn set_pages(&self, pages: u32) {
        self.pages.store(pages, Ordering::Relaxed);
    }

    pub fn page_done(&self) {
        self.pages_done.fetch_add(1, Ordering::Relaxed);
    }

    /// `(done, total)`, once the total is known.
    pub fn pages(&self) -> Option<(u32, u32)> {
        let total = self.pages.load(Ordering::Relaxed);
        (total > 0).then(|| (self.pages_done.load(Ordering::Relaxed).min(total), total))
    }

    fn reset(&self) {
        self.pages_done.store(0, Ordering::Relaxed);
        self.pages.store(0, Ordering::Relaxed);
    }
}

/// One slot per extraction thread.
pub struct InFlight {
    slots: Vec<Slot>,
}

struct Slot {
    /// The index of the file in work, and since when.
    work: Mutex<Option<(usize, Instant)>>,
    progress: FileProgress,
}

/// The file that has been in work the longest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowFile {
    pub file: usize,
    pub took: Duration,
    pub pages: Option<(u32, u32)>,
}

impl InFlight {
    pub fn new(threads: usize) -> InFlight {
        InFlight {
            slots: (0..threads.max(1))
                .map(|_| Slot {
                    work: Mutex::new(None),
                    progress: FileProgress::default(),
                })
                .collect(),
        }
    }

    /// Thread `slot` starts on file `file`; its page progress goes to the returned handle.
    pub fn begin(&self, slot: usize, file: usize) -> &FileProgress {
        let slot = &self.slots[slot % self.slots.len()];
        slot.progress.reset();
        *slot.work.lock().unwrap_or_else(|e| e.into_inner()) = Some((file, Instant::now()));
        &slot.progress
    }

    pub fn end(&self, slot: usize) {
        let slot = &self.slots[slot % self.slots.len()];
        *slot.work.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn slowest(&self) -> Option<SlowFile> {
        self.slots
            .iter()
            .filter_map(|slot| {
                let (file, since) = (*slot.work.lock().unwrap_or_else(|e| e.into_inner()))?;
                Some(SlowFile {
                    file,
                    took: since.elapsed(),
                    pages: slot.progress.pages(),
                })
            })
            .max_by_key(|slow| slow.took)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_running_file_with_its_pages() {
        let in_flight = InFlight::new(2);
        assert_eq!(in_flight.slowest(), None);
        let pages = in_flight.begin(0, 7);
        pages.set_pages(10);
        pages.page_done();
        std::thread::sleep(Duration::from_millis(5));
        in_flight.begin(1, 8);
        let slow = in_flight.slowest().unwrap();
        assert_eq!((slow.file, slow.pages), (7, Some((1, 10))));
        in_flight.end(0);
        let slow = in_flight.slowest().unwrap();
        assert_eq!((slow.file, slow.pages), (8, None));
        in_flight.end(1);
        assert_eq!(in_flight.slowest(), None);
    }
}
