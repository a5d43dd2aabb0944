//! The indexing job's live figures, black-box: rate and ETA from the first second, a job
//! busy with one large file shows that file and is not taken for stalled, and the
//! completed task says it is done.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{within, SseClient};
use crate::indexer::{base_dir, many_files, spawn_with, write, Server};
use crate::pdf_fixture::many_pages_pdf;

/// Every event of task `id` on `/api/events` up to its terminal one, each with the time
/// it arrived.
async fn timed_events(
    server: &Server,
    start: impl std::future::Future<Output = String>,
) -> Vec<(Instant, Value)> {
    let response = server.app.sse("/api/events", None).await;
    assert_eq!(response.status(), 200);
    let mut events = SseClient::new(response);
    let id = start.await;
    within(async {
        let mut seen = Vec::new();
        loop {
            let frame = events.next_event().await.expect("the stream stays open");
            let data = frame.json();
            if data["task_id"] != id.as_str() {
                continue;
            }
            let terminal = frame.event.as_deref() != Some("progress");
            seen.push((Instant::now(), data));
            if terminal {
                return seen;
            }
        }
    })
    .await
}

#[tokio::test]
async fn rate_and_eta_are_there_from_the_first_second_of_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let base = base_dir(&tmp);
    many_files(&base.join("many"), 8_000, "wallaby");
    let server = spawn_with(vec![base.clone()], |_| {}).await;
    let seen = timed_events(&server, server.start("many")).await;
    let (_, last) = seen.last().unwrap();
    assert_eq!(last["status"], "completed", "{last}");

    let moving = |d: &Value| {
        d["status"] == "processing"
            && d["detail"]["stage"] == "indexing"
            && d["processed"].as_u64() > Some(0)
            && d["processed"].as_u64() < d["total"].as_u64()
    };
    let first = seen
        .iter()
        .find(|(_, d)| moving(d))
        .map(|(at, _)| *at)
        .expect("progress events");
    let later: Vec<&Value> = seen
        .iter()
        .filter(|(at, d)| moving(d) && at.duration_since(first) >= Duration::from_secs(1))
        .map(|(_, d)| d)
        .collect();
    assert!(
        !later.is_empty(),
        "the job took less than a second of progress; make the corpus larger"
    );
    for event in later {
        let rate = event["rate_per_second"].as_f64();
        assert!(rate.is_some_and(|r| r > 0.0), "{event}");
        assert!(event["eta_seconds"].as_u64().is_some(), "{event}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_job_busy_with_one_large_file_shows_it_and_is_not_stalled() {
    let tmp = tempfile::tempdir().unwrap();
    let base = base_dir(&tmp);
    write(&base.join("docs/a-first.txt"), "a small file first");
    write(&base.join("docs/manual.pdf"), many_pages_pdf(1_000));
    let server = spawn_with(vec![base.clone()], |config| {
        config.max_file_bytes = 8 << 20;
        config.index_threads = 1;
        config.stall_secs = 2;
    })
    .await;
    let started = Instant::now();
    let seen = timed_events(&server, server.start("docs")).await;
    let took = started.elapsed();
    let (_, last) = seen.last().unwrap();
    assert_eq!(last["status"], "completed", "{last}");
    assert_eq!(last["results"]["files_indexed"], 2, "{last}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .starts_with("Done: 2 files"),
        "{last}"
    );
    for (_, event) in &seen {
        assert_eq!(event["stalled"], false, "{event}");
    }
    if took < Duration::from_secs(3) {
        eprintln!("the PDF took {took:?} only: too fast to watch it being read (release build?)");
        server.stop().await;
        return;
    }
    let busy: Vec<&Value> = seen
        .iter()
        .map(|(_, d)| d)
        .filter(|d| d["status"] == "processing" && d["current_file"] == "manual.pdf")
        .filter(|d| d["detail"]["current_file_seconds"].as_u64() >= Some(1))
        .collect();
    assert!(!busy.is_empty(), "{seen:?}");
    // The page count is known once the file's structure is parsed.
    let paged: Vec<&&Value> = busy
        .iter()
        .filter(|d| d["detail"]["current_file_pages"].is_object())
        .collect();
    assert!(paged.len() >= 2, "{busy:?}");
    let pages = |d: &Value| d["detail"]["current_file_pages"]["done"].as_u64();
    let (first, last) = (paged[0], paged[paged.len() - 1]);
    assert_eq!(
        first["detail"]["current_file_pages"]["total"], 1_000,
        "{first}"
    );
    assert!(pages(first) < pages(last), "{first} {last}");
    server.stop().await;
}
