//! The counting walk: lists every file of a folder before any is read, so that the job
//! knows its `total` early.
//!
//! It filters like ripgrep (`.gitignore`, `.ignore`, hidden files), except that
//! `.gitignore` counts also outside a git repository: people point the indexer at plain
//! folders too. Symlinks are not followed blindly: a link to a file inside the roots is
//! indexed, anything else that is a link is listed as skipped with its reason.

use std::path::{Path, PathBuf};

use ignore::WalkBuilder;
use tokio_util::sync::CancellationToken;

use super::roots::IndexRoots;

/// One file the job will account for.
#[derive(Debug, Clone)]
pub struct FileEntry {
    /// Where the file was found; what the index stores and search shows.
    pub path: PathBuf,
    /// The path relative to the indexed folder, as `current_file` shows it.
    pub relative: String,
    pub kind: EntryKind,
}

#[derive(Debug, Clone)]
pub enum EntryKind {
    /// A regular file, or a symlink to one inside the roots (read through `target`).
    File { target: PathBuf },
    /// Listed so that the results account for it, but never read.
    Skip(&'static str),
}

pub const SKIP_LINK_OUTSIDE: &str = "symlink points outside the index roots";
pub const SKIP_LINK_BROKEN: &str = "broken symlink";
pub const SKIP_LINK_FOLDER: &str = "symlinked folder not followed";
pub const SKIP_SPECIAL: &str = "not a regular file";

/// Lists the files under `folder`. `exclude` (the data directory) is never entered, so
/// that indexing a folder that holds the index does not read the index as it is written.
/// `on_found` sees the running count (for a "counting" progress report). Returns `None`
/// when cancelled.
pub fn list_files(
    folder: &Path,
    roots: &IndexRoots,
    exclude: Option<&Path>,
    cancel: &CancellationToken,
    mut on_found: impl FnMut(usize),
) -> Option<Vec<FileEntry>> {
    let exclude = exclude.map(Path::to_path_buf);
    let mut builder = WalkBuilder::new(folder);
    builder
        .standard_filters(true)
        .require_git(false)
        .follow_links(false)
        .sort_by_file_name(|a, b| a.cmp(b));
    if let Some(exclude) = exclude {
        builder.filter_entry(move |entry| entry.path() != exclude);
    }
    let mut files = Vec::new();
    for (i, result) in builder.build().enumerate() {
        if i % 256 == 0 && cancel.is_cancelled() {
            return None;
        }
        let entry = match result {
            Ok(entry) => entry,
            Err(error) => {
                // An unreadable folder or a bad ignore file: the walk goes on without it.
                tracing::debug!(%error, "walk error");
                continue;
            }
        };
        let Some(file_type) = entry.file_type() else {
            continue;
        };
        if file_type.is_dir() {
            continue;
        }
        let path = entry.path().to_path_buf();
        let relative = relative_name(folder, &path);
        let kind = if file_type.is_symlink() {
            classify_link(&path, roots)
        } else if file_type.is_file() {
            EntryKind::File {
                target: path.clone(),
            }
        } else {
            EntryKind::Skip(SKIP_SPECIAL)
        };
        files.push(FileEntry {
            path,
            relative,
            kind,
        });
        on_found(files.len());
    }
    Some(files)
}

fn classify_link(path: &Path, roots: &IndexRoots) -> EntryKind {
    let Ok(target) = std::fs::canonicalize(path) else {
        return EntryKind::Skip(SKIP_LINK_BROKEN);
    };
    if !roots.contains(&target) {
        return EntryKind::Skip(SKIP_LINK_OUTSIDE);
    }
    match std::fs::metadata(&target) {
        Ok(meta) if meta.is_file() => EntryKind::File { target },
        Ok(meta) if meta.is_dir() => EntryKind::Skip(SKIP_LINK_FOLDER),
        Ok(_) => EntryKind::Skip(SKIP_SPECIAL),
        Err(_) => EntryKind::Skip(SKIP_LINK_BROKEN),
    }
}

/// `path` relative to `folder`, with `/` separators whatever the platform.
pub fn relative_name(folder: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(folder).unwrap_or(path);
    let parts: Vec<_> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect();
    parts.join("/")
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn nested_gitignore_hidden_files_and_links() {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::write(root.join("a.txt"), "a").unwrap();
        std::fs::write(root.join(".hidden"), "h").unwrap();
        std::fs::write(root.join("sub/.gitignore"), "*.log\n").unwrap();
        std::fs::write(root.join("sub/keep.md"), "k").unwrap();
        std::fs::write(root.join("sub/deeper/drop.log"), "d").unwrap();
        std::fs::write(base.join("secret.txt"), "s").unwrap();
        std::os::unix::fs::symlink(base.join("secret.txt"), root.join("escape.txt")).unwrap();
        std::os::unix::fs::symlink(root.join("a.txt"), root.join("alias.txt")).unwrap();
        let roots = IndexRoots::new(std::slice::from_ref(&root)).unwrap();
        let files = list_files(&root, &roots, None, &CancellationToken::new(), |_| {}).unwrap();
        let names: Vec<(&str, bool)> = files
            .iter()
            .map(|f| {
                (
                    f.relative.as_str(),
                    matches!(f.kind, EntryKind::File { .. }),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("a.txt", true),
                ("alias.txt", true),
                ("escape.txt", false),
                ("sub/keep.md", true)
            ]
        );
    }
}
