//! Task identifiers: `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`, checked before any lookup.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(Arc<str>);

#[derive(Debug, thiserror::Error)]
#[error("Invalid task id")]
pub struct InvalidTaskId;

impl TaskId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<TaskId, InvalidTaskId> {
        if Self::is_valid(s) {
            Ok(TaskId(Arc::from(s)))
        } else {
            Err(InvalidTaskId)
        }
    }

    /// Whether `s` is a valid task id, without making one.
    pub fn is_valid(s: &str) -> bool {
        let bytes = s.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= Self::MAX_LEN
            && bytes[0].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
    }

    /// A fresh UUID v4.
    pub fn generate() -> TaskId {
        TaskId(Arc::from(uuid::Uuid::new_v4().to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for TaskId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for TaskId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_pattern_only() {
        for ok in ["a", "task-123", "A_b-9", &"x".repeat(64)] {
            assert!(TaskId::parse(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(65);
        for bad in [
            "",
            "-a",
            "_a",
            "a b",
            "a/b",
            "..",
            "a.b",
            "é",
            long.as_str(),
            "a\n",
        ] {
            assert!(TaskId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(TaskId::parse(&TaskId::generate()).is_ok());
    }
}
