//! How `watch` shows a task while it runs, on stderr: a progress bar when stderr is a
//! terminal, otherwise one plain line per event (no escape codes), fit for CI logs.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

pub enum Display {
    Bar(ProgressBar),
    Lines,
}

impl Display {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn for_stderr() -> Display {
        if !std::io::stderr().is_terminal() {
            return Display::Lines;
        }
        let bar = ProgressBar::new(100);
        let style =
            ProgressStyle::with_template("{spinner} {prefix:<10} [{bar:30}] {pos:>3}% {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix("connecting");
        bar.enable_steady_tick(Duration::from_millis(120));
        Display::Bar(bar)
    }

    /// Shows one snapshot (the `data` of an event).
    pub fn show(&self, snapshot: &Value) {
        match self {
            Display::Bar(bar) => {
                bar.set_prefix(text(snapshot, "status").to_string());
                bar.set_position(number(snapshot, "progress"));
                bar.set_message(details(snapshot));
            }
            Display::Lines => {
                let details = details(snapshot);
                let separator = if details.is_empty() { "" } else { " " };
                eprintln!(
                    "seq {}: {} {}%{separator}{details}",
                    number(snapshot, "seq"),
                    text(snapshot, "status"),
                    number(snapshot, "progress"),
                );
            }
        }
    }

    /// A remark (reconnecting, and why) that does not disturb the bar.
    pub fn note(&self, note: &str) {
        match self {
            Display::Bar(bar) => bar.println(note),
            Display::Lines => eprintln!("{note}"),
        }
    }

    /// Stops the bar, leaving its last state on the screen.
    pub fn finish(&self) {
        if let Display::Bar(bar) = self {
            bar.abandon();
        }
    }
}

/// `9/20 document.pdf (message) [stalled]`, leaving out what the task does not report.
fn details(snapshot: &Value) -> String {
    let mut parts = Vec::new();
    let total = number(snapshot, "total");
    if total > 0 {
        parts.push(format!("{}/{total}", number(snapshot, "processed")));
    }
    let file = text(snapshot, "current_file");
    if !file.is_empty() {
        parts.push(file.to_string());
    }
    let message = text(snapshot, "message");
    if !message.is_empty() {
        parts.push(format!("({message})"));
    }
    if snapshot["stalled"] == Value::Bool(true) {
        parts.push("[stalled]".to_string());
    }
    // A file name may hold control characters; they must not reach the terminal.
    parts
        .join(" ")
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn text<'a>(snapshot: &'a Value, key: &str) -> &'a str {
    snapshot[key].as_str().unwrap_or("")
}

fn number(snapshot: &Value, key: &str) -> u64 {
    snapshot[key].as_u64().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn details_leave_out_what_is_unknown_and_control_characters() {
        let snapshot = json!({"processed": 9, "total": 20, "current_file": "a\x1b[31m.pdf",
                              "message": "reading", "stalled": true});
        assert_eq!(details(&snapshot), "9/20 a?[31m.pdf (reading) [stalled]");
        assert_eq!(
            details(&json!({"processed": 0, "total": 0, "current_file": ""})),
            ""
        );
    }
}
