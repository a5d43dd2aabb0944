//! Where the indexer may read: the configured index roots, and the resolution of a
//! requested folder against them.
//!
//! A folder is judged by where it really is, after `..` and symlinks are resolved the way
//! the kernel resolves them, and the answer for a path outside the roots is the same
//! whether or not it exists: a client must not be able to probe the filesystem beyond the
//! roots by telling "outside" from "missing".

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed while resolving one path before it counts as a loop (Linux's limit).
const MAX_SYMLINK_HOPS: u32 = 40;

/// The canonical folders the indexer may read.
#[derive(Clone, Debug)]
pub struct IndexRoots {
    roots: Vec<PathBuf>,
}

/// Why a requested folder cannot be indexed.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("Folder is outside the index roots")]
    Outside,
    #[error("Folder not found")]
    Missing,
    #[error("Not a folder")]
    NotAFolder,
    #[error("folder must not be empty")]
    Empty,
}

impl IndexRoots {
    /// Canonicalizes the configured roots; an empty list means the current directory.
    /// A root that cannot be resolved is an error: silently dropping it would make a
    /// typo in the configuration look like a permission problem later.
    pub fn new(configured: &[PathBuf]) -> io::Result<IndexRoots> {
        let configured = if configured.is_empty() {
            vec![std::env::current_dir()?]
        } else {
            configured.to_vec()
        };
        let mut roots = Vec::with_capacity(configured.len());
        for root in &configured {
            let canonical = std::fs::canonicalize(root).map_err(|e| {
                io::Error::new(e.kind(), format!("index root {}: {e}", root.display()))
            })?;
            if !canonical.is_dir() {
                return Err(io::Error::other(format!(
                    "index root {} is not a folder",
                    root.display()
                )));
            }
            roots.push(canonical);
        }
        Ok(IndexRoots { roots })
    }

    pub fn as_slice(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Whether a canonical path lies inside (or is) one of the roots.
    pub fn contains(&self, canonical: &Path) -> bool {
        self.roots.iter().any(|root| canonical.starts_with(root))
    }

    /// Resolves a requested folder: relative paths against the first root, then `..` and
    /// symlinks. Blocking (it touches the filesystem).
    pub fn resolve_folder(&self, requested: &str) -> Result<PathBuf, FolderError> {
        if requested.trim().is_empty() {
            return Err(FolderError::Empty);
        }
        let joined = self.roots[0].join(requested);
        let resolved = resolve_path(&joined);
        if !self.contains(&resolved.path) {
            return Err(FolderError::Outside);
        }
        if !resolved.exists {
            return Err(FolderError::Missing);
        }
        match std::fs::metadata(&resolved.path) {
            Ok(meta) if meta.is_dir() => Ok(resolved.path),
            Ok(_) => Err(FolderError::NotAFolder),
            Err(_) => Err(FolderError::Missing),
        }
    }
}

/// A path resolved like `realpath`, also when its end does not exist.
#[derive(Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Free of symlinks and `..` as far as the path exists; past the first missing
    /// component the rest is applied lexically (a missing folder holds no symlinks).
    pub path: PathBuf,
    pub exists: bool,
}

/// Resolves an absolute path one component at a time, following symlinks where they
/// are met, so that `..` after a symlink climbs out of the link's target as the kernel
/// does. A symlink loop, or a component that cannot be inspected, makes the rest of the
/// path count as missing: the caller still judges the prefix against the roots.
pub fn resolve_path(path: &Path) -> Resolved {
    let mut pending: VecDeque<OsString> = VecDeque::new();
    let mut current = PathBuf::from("/");
    push_components(&mut pending, &mut current, path);
    let mut exists = true;
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            current.pop();
            continue;
        }
        current.push(&part);
        if !exists {
            continue;
        }
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                let target = match std::fs::read_link(&current) {
                    Ok(target) if hops <= MAX_SYMLINK_HOPS => target,
                    _ => {
                        exists = false;
                        continue;
                    }
                };
                current.pop();
                // The target's components come before what was left of the path.
                let rest: Vec<OsString> = pending.drain(..).collect();
                push_components(&mut pending, &mut current, &target);
                pending.extend(rest);
            }
            Ok(_) => {}
            Err(_) => exists = false,
        }
    }
    Resolved {
        path: current,
        exists,
    }
}

/// Queues `path`'s components; an absolute path restarts `current` at `/`.
fn push_components(pending: &mut VecDeque<OsString>, current: &mut PathBuf, path: &Path) {
    for component in path.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => {
                pending.clear();
                *current = PathBuf::from("/");
            }
            Component::CurDir => {}
            Component::ParentDir => pending.push_back(OsString::from("..")),
            Component::Normal(name) => pending.push_back(name.to_os_string()),
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn roots(dir: &Path) -> IndexRoots {
        IndexRoots::new(&[dir.to_path_buf()]).unwrap()
    }

    #[test]
    fn dot_dot_after_a_symlink_climbs_out_of_its_target() {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::create_dir_all(base.join("root/inner")).unwrap();
        std::fs::create_dir_all(base.join("outside/deep")).unwrap();
        symlink(base.join("outside/deep"), base.join("root/link")).unwrap();
        let r = resolve_path(&base.join("root/link/../x"));
        assert_eq!(r.path, base.join("outside/x"));
        assert!(!r.exists);
        let roots = roots(&base.join("root"));
        // Outside whether it exists or not: no probing through the link.
        assert!(matches!(
            roots.resolve_folder("link/../x"),
            Err(FolderError::Outside)
        ));
        std::fs::create_dir(base.join("outside/x")).unwrap();
        assert!(matches!(
            roots.resolve_folder("link/../x"),
            Err(FolderError::Outside)
        ));
    }

    #[test]
    fn inside_missing_and_file_are_told_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::create_dir_all(base.join("a/b")).unwrap();
        std::fs::write(base.join("a/file.txt"), "x").unwrap();
        let roots = roots(&base);
        assert_eq!(
            roots.resolve_folder("a/./b/../b").unwrap(),
            base.join("a/b")
        );
        assert!(matches!(
            roots.resolve_folder("a/nope"),
            Err(FolderError::Missing)
        ));
        assert!(matches!(
            roots.resolve_folder("a/nope/../../.."),
            Err(FolderError::Outside)
        ));
        assert!(matches!(
            roots.resolve_folder("a/file.txt"),
            Err(FolderError::NotAFolder)
        ));
        assert!(matches!(roots.resolve_folder(""), Err(FolderError::Empty)));
    }

    #[test]
    fn symlink_loops_do_not_hang() {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        symlink(base.join("loop"), base.join("loop")).unwrap();
        let r = resolve_path(&base.join("loop/x"));
        assert!(!r.exists);
    }
}
