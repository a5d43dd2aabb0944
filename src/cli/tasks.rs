//! `progress-hub tasks`: lists a server's tasks, newest first, as a table or as the
//! server's JSON (`--json`).

use std::process::ExitCode;

use axum::http::StatusCode;
use serde_json::Value;

use super::client;
use super::{exit, TasksArgs};

pub async fn run(args: TasksArgs) -> ExitCode {
    let server = match args.remote.server() {
        Ok(server) => server,
        Err(code) => return code,
    };
    let mut query = vec![format!("limit={}", args.limit)];
    if let Some(status) = &args.status {
        query.push(format!("status={}", client::encode_query_value(status)));
    }
    let path = format!("/api/tasks?{}", query.join("&"));
    let (status, body) = match server.get_json(&path).await {
        Ok(answer) => answer,
        Err(error) => {
            eprintln!("progress-hub: {error}");
            return ExitCode::from(exit::UNREACHABLE);
        }
    };
    if status != StatusCode::OK {
        eprintln!(
            "progress-hub: {} answered {}",
            server.url(),
            client::error_message(status, &body)
        );
        return ExitCode::from(exit::UNREACHABLE);
    }
    if args.json {
        println!("{body}");
    } else {
        let tasks = body["tasks"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        print!("{}", table(tasks));
    }
    ExitCode::SUCCESS
}

/// One line per task under a header: id, status, percent, processed/total, updated, name.
fn table(tasks: &[Value]) -> String {
    let rows: Vec<[String; 6]> = tasks
        .iter()
        .map(|task| {
            let number = |key: &str| task[key].as_u64().unwrap_or(0);
            let text = |key: &str| clean(task[key].as_str().unwrap_or(""));
            let mut status = text("status");
            if task["stalled"] == Value::Bool(true) {
                status.push_str(" (stalled)");
            }
            [
                text("task_id"),
                status,
                format!("{}%", number("progress")),
                format!("{}/{}", number("processed"), number("total")),
                text("updated_at"),
                text("name"),
            ]
        })
        .collect();
    let header = ["ID", "STATUS", "PROGRESS", "DONE", "UPDATED", "NAME"].map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Control characters of a name must not reach the terminal.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lays_out_a_table() {
        let tasks = [
            json!({"task_id": "a", "status": "processing", "progress": 45, "processed": 9,
                   "total": 20, "updated_at": "2026-01-01T00:00:00.000Z", "name": "docs\x1b",
                   "stalled": true}),
            json!({"task_id": "longer-id", "status": "completed", "progress": 100,
                   "processed": 0, "total": 0, "updated_at": "2026-01-01T00:00:01.000Z",
                   "name": null}),
        ];
        let expected = "\
ID         STATUS                PROGRESS  DONE  UPDATED                   NAME
a          processing (stalled)  45%       9/20  2026-01-01T00:00:00.000Z  docs?
longer-id  completed             100%      0/0   2026-01-01T00:00:01.000Z
";
        assert_eq!(table(&tasks), expected);
    }
}
