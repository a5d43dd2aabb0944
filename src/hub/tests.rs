//! The hub on its own: sequence numbers, coalescing, replay, lag, restore, and the
//! subscribe/publish race.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::store::MemoryStore;

fn hub_with(coalesce_ms: u64, channel_capacity: usize) -> Hub {
    let config = HubConfig {
        coalesce: Duration::from_millis(coalesce_ms),
        channel_capacity,
        ..HubConfig::default()
    };
    Hub::new(config, Arc::new(MemoryStore::new(128))).unwrap()
}

fn id(s: &str) -> TaskId {
    TaskId::parse(s).unwrap()
}

fn task(hub: &Hub, name: &str) -> TaskId {
    hub.create(NewTask {
        id: Some(id(name)),
        total: 1_000_000,
        ..Default::default()
    })
    .unwrap()
    .task_id()
    .clone()
}

fn processed(n: u64) -> ProgressUpdate {
    ProgressUpdate {
        processed: Some(n),
        ..Default::default()
    }
}

fn json(event: &Event) -> serde_json::Value {
    serde_json::from_slice(event.json()).unwrap()
}

#[tokio::test]
async fn seq_starts_at_one_and_status_changes_publish_at_once() {
    let hub = hub_with(50, 16);
    let t = task(&hub, "t");
    assert_eq!(hub.get(&t).unwrap().seq(), 1);
    assert_eq!(hub.get(&t).unwrap().status(), Status::Pending);
    hub.progress(&t, processed(1)).unwrap();
    let event = hub.get(&t).unwrap();
    assert_eq!((event.seq(), event.status()), (2, Status::Processing));
    assert!(matches!(
        hub.create(NewTask {
            id: Some(t.clone()),
            ..Default::default()
        }),
        Err(HubError::AlreadyExists)
    ));
}

#[tokio::test(start_paused = true)]
async fn fast_updates_coalesce_into_one_change_per_window() {
    let hub = hub_with(50, 1024);
    let t = task(&hub, "t");
    let mut sub = hub.subscribe(&t, None).unwrap().unwrap();
    assert_eq!(sub.next().await.unwrap().seq(), 1);
    hub.progress(&t, processed(1)).unwrap(); // status change: published now
    for n in 2..=100 {
        // Inside one window: the answer already includes the update...
        let answer: serde_json::Value =
            serde_json::from_slice(&hub.progress(&t, processed(n)).unwrap()).unwrap();
        assert_eq!(answer["processed"], n);
        assert_eq!(answer["seq"], 3);
    }
    // ...but readers still see the last published change until the window closes.
    assert_eq!(hub.get(&t).unwrap().seq(), 2);
    assert_eq!(sub.next().await.unwrap().seq(), 2);
    let merged = sub.next().await.unwrap();
    assert_eq!(
        (merged.seq(), json(&merged)["processed"].as_u64()),
        (3, Some(100))
    );
    assert_eq!(hub.stats().updates_coalesced.load(Ordering::Relaxed), 98);
    // A terminal change goes out at once and carries any pending progress.
    hub.progress(&t, processed(150)).unwrap();
    hub.finish(&t, Outcome::Cancelled).await.unwrap();
    let last = sub.next().await.unwrap();
    assert_eq!((last.seq(), last.status()), (4, Status::Cancelled));
    assert_eq!(json(&last)["processed"], 150);
    assert!(sub.next().await.is_none());
}

#[tokio::test]
async fn finished_tasks_refuse_writes_and_close_their_channel() {
    let hub = hub_with(0, 16);
    let t = task(&hub, "t");
    let mut sub = hub.subscribe(&t, None).unwrap().unwrap();
    hub.finish(&t, Outcome::Completed { results: None })
        .await
        .unwrap();
    assert!(matches!(
        hub.progress(&t, processed(1)),
        Err(HubError::Finished(Status::Completed))
    ));
    assert!(matches!(
        hub.finish(&t, Outcome::Cancelled).await,
        Err(HubError::Finished(Status::Completed))
    ));
    assert_eq!(sub.next().await.unwrap().seq(), 1);
    assert!(sub.next().await.unwrap().is_terminal());
    assert!(sub.next().await.is_none());
}

#[tokio::test]
async fn last_event_id_replays_history_or_falls_back_to_the_snapshot() {
    let hub = hub_with(0, 16);
    let t = task(&hub, "t");
    for n in 1..=9 {
        hub.progress(&t, processed(n)).unwrap();
    }
    // seq is now 10. Resume after 7: events 8, 9, 10.
    let mut sub = hub.subscribe(&t, Some(7)).unwrap().unwrap();
    for expected in 8..=10 {
        assert_eq!(sub.next().await.unwrap().seq(), expected);
    }
    // Beyond the newest seq counts as absent: the snapshot.
    let mut sub = hub.subscribe(&t, Some(99)).unwrap().unwrap();
    assert_eq!(sub.next().await.unwrap().seq(), 10);
    // Already current: nothing until the next change.
    let mut sub = hub.subscribe(&t, Some(10)).unwrap().unwrap();
    hub.progress(&t, processed(10)).unwrap();
    assert_eq!(sub.next().await.unwrap().seq(), 11);
    // Finished: a client holding the final seq gets nothing at all.
    let end = hub.finish(&t, Outcome::Cancelled).await.unwrap();
    assert!(hub.subscribe(&t, Some(end.seq())).unwrap().is_none());
    // One behind the end: the terminal event.
    let mut sub = hub.subscribe(&t, Some(end.seq() - 1)).unwrap().unwrap();
    assert_eq!(sub.next().await.unwrap().seq(), end.seq());
    assert!(sub.next().await.is_none());
}

#[tokio::test]
async fn history_beyond_its_bound_falls_back_to_the_snapshot() {
    let config = HubConfig {
        coalesce: Duration::ZERO,
        history_len: 4,
        ..HubConfig::default()
    };
    let hub = Hub::new(config, Arc::new(MemoryStore::new(4))).unwrap();
    let t = task(&hub, "t");
    for n in 1..=20 {
        hub.progress(&t, processed(n)).unwrap();
    }
    let mut sub = hub.subscribe(&t, Some(3)).unwrap().unwrap();
    let first = sub.next().await.unwrap();
    assert_eq!(first.seq(), 21);
    assert_eq!(json(&first)["processed"], 20);
}

/// Publishes 1,000 changes and the end to a subscriber that reads nothing meanwhile, and
/// returns the seqs it then reads. `relay_between`: let the relay run after each publish.
async fn read_after_a_burst(hub: &Hub, relay_between: bool) -> Vec<u64> {
    let t = task(hub, "t");
    let mut slow = hub.subscribe(&t, None).unwrap().unwrap();
    for n in 1..=1000 {
        hub.progress(&t, processed(n)).unwrap();
        if relay_between {
            // The test runs on one thread: this is where the spawned relay runs.
            tokio::task::yield_now().await;
        }
    }
    hub.finish(&t, Outcome::Completed { results: None })
        .await
        .unwrap();
    let mut seqs = Vec::new();
    while let Some(event) = slow.next().await {
        seqs.push(event.seq());
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(seqs.last(), Some(&1002));
    assert!(
        seqs.len() < 20,
        "a lagging reader must skip, got {}",
        seqs.len()
    );
    seqs
}

#[tokio::test]
async fn a_lagging_subscriber_skips_to_the_newest_snapshot_and_still_sees_the_end() {
    let hub = hub_with(0, 4);
    read_after_a_burst(&hub, true).await;
    assert!(hub.stats().lag_resyncs.load(Ordering::Relaxed) >= 1);
    assert_eq!(hub.stats().relay_skipped.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_relay_that_falls_behind_skips_to_newer_snapshots_and_still_sends_the_end() {
    let hub = hub_with(0, 64);
    // No relay runs during the burst: once its outbox of 64 overflowed, only the newest
    // 16 events (one write's worth) wait in it, so the reader gets its snapshot on
    // joining, then those, the end last.
    let seqs = read_after_a_burst(&hub, false).await;
    assert_eq!(seqs[0], 1);
    assert_eq!(seqs[1..], (987..=1002).collect::<Vec<u64>>());
    assert_eq!(hub.stats().relay_skipped.load(Ordering::Relaxed), 1001 - 16);
}

/// Publishing does not wait for subscribers: the event is queued for the relay, which
/// runs later (here: only when the test thread yields).
#[tokio::test]
async fn publishing_returns_before_subscribers_are_woken() {
    let hub = hub_with(0, 16);
    let t = task(&hub, "t");
    let mut sub = hub.subscribe(&t, None).unwrap().unwrap();
    assert_eq!(sub.next().await.unwrap().seq(), 1);
    hub.progress(&t, processed(1)).unwrap();
    let not_yet = futures_util::FutureExt::now_or_never(sub.next());
    assert!(not_yet.is_none(), "delivered inside the publish call");
    let event = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.seq(), 2);
}

/// Subscribers join at random moments while producers on other threads publish: each one
/// sees a contiguous run of seq numbers (no gap, no duplicate) ending with the terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribing_while_publishing_never_loses_or_repeats_an_event() {
    // History as long as the run: between reading the newest seq and subscribing, the
    // producer thread may publish many events, and the resume point must still be held.
    let config = HubConfig {
        coalesce: Duration::ZERO,
        channel_capacity: 100_000,
        history_len: 100_000,
        ..HubConfig::default()
    };
    let hub = Hub::new(config, Arc::new(MemoryStore::new(16))).unwrap();
    let t = task(&hub, "race");
    let mut subscribers = Vec::new();
    let producer = {
        let (hub, t) = (hub.clone(), t.clone());
        tokio::task::spawn_blocking(move || {
            for n in 1..=20_000 {
                hub.progress(&t, processed(n)).unwrap();
            }
        })
    };
    for i in 0..64 {
        let (hub, t) = (hub.clone(), t.clone());
        subscribers.push(tokio::spawn(async move {
            let resume = (i % 2 == 1).then(|| hub.get(&t).unwrap().seq().saturating_sub(3));
            let mut sub = hub.subscribe(&t, resume).unwrap().unwrap();
            let mut seqs = Vec::new();
            while let Some(event) = sub.next().await {
                seqs.push(event.seq());
            }
            (resume, seqs)
        }));
        tokio::task::yield_now().await;
    }
    producer.await.unwrap();
    let end = hub
        .finish(&t, Outcome::Completed { results: None })
        .await
        .unwrap();
    for subscriber in subscribers {
        let (resume, seqs) = subscriber.await.unwrap();
        if let Some(n) = resume {
            assert_eq!(seqs[0], n + 1, "replay starts right after Last-Event-ID");
        }
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "gap or duplicate"
        );
        assert_eq!(*seqs.last().unwrap(), end.seq());
    }
}

#[tokio::test]
async fn the_all_tasks_stream_resumes_and_resyncs() {
    let hub = hub_with(0, 16);
    let a = task(&hub, "a");
    let b = task(&hub, "b");
    hub.finish(&b, Outcome::Cancelled).await.unwrap();
    // A fresh dashboard sees the unfinished task only.
    let mut all = hub.subscribe_all(None);
    let first = all.next().await;
    assert_eq!(first.event().task_id(), &a);
    hub.progress(&a, processed(5)).unwrap();
    let next = all.next().await;
    assert_eq!((next.event().task_id(), next.event().seq()), (&a, 2));
    assert!(next.id() > first.id());
    // Resuming after `first` replays everything that came since, in order, including
    // the other task's whole life.
    let mut resumed = hub.subscribe_all(Some(first.id()));
    let mut replayed = Vec::new();
    for _ in 0..3 {
        let e = resumed.next().await;
        replayed.push((e.event().task_id().to_string(), e.event().seq()));
    }
    let expected = [("b", 1), ("b", 2), ("a", 2)].map(|(t, s)| (t.to_string(), s));
    assert_eq!(replayed, expected);
}

#[tokio::test]
async fn an_all_tasks_id_this_server_never_gave_resyncs_every_task_finished_ones_too() {
    let hub = hub_with(0, 16);
    let a = task(&hub, "a");
    let b = task(&hub, "b");
    let newest = hub.subscribe_all(None).next().await.id();
    let end = hub.finish(&b, Outcome::Cancelled).await.unwrap();
    // A dashboard that followed another node (whose ids ran ahead of this server's) and
    // last saw `b` running must learn that it ended, and where `a` stands.
    let mut moved = hub.subscribe_all(Some(newest + 1_000_000));
    let mut got = Vec::new();
    while let Some(e) = moved.try_next() {
        got.push((e.event().task_id().clone(), e.event().seq()));
    }
    got.sort();
    assert_eq!(got, [(a.clone(), 1), (b.clone(), end.seq())]);
    // Then it follows live changes.
    hub.progress(&a, processed(1)).unwrap();
    let live = moved.next().await;
    assert_eq!((live.event().task_id(), live.event().seq()), (&a, 2));
}

#[tokio::test]
async fn a_rebuilt_hub_continues_seq_and_fails_interrupted_jobs() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(128));
    let config = HubConfig {
        coalesce: Duration::ZERO,
        ..HubConfig::default()
    };
    {
        let hub = Hub::new(config.clone(), store.clone()).unwrap();
        task(&hub, "external");
        hub.progress(&id("external"), processed(3)).unwrap();
        hub.create(NewTask {
            id: Some(id("job")),
            job: Some("index-folder".into()),
            ..Default::default()
        })
        .unwrap();
        hub.progress(&id("job"), processed(3)).unwrap();
    }
    let hub = Hub::new(config, store).unwrap();
    let external = hub.get(&id("external")).unwrap();
    assert_eq!((external.seq(), external.status()), (2, Status::Processing));
    hub.progress(&id("external"), processed(4)).unwrap();
    assert_eq!(hub.get(&id("external")).unwrap().seq(), 3);
    let job = hub.get(&id("job")).unwrap();
    assert_eq!((job.seq(), job.status()), (3, Status::Failed));
    assert_eq!(json(&job)["error"], INTERRUPTED_BY_RESTART);
    // Replay across the restart still works from the stored history.
    let mut sub = hub.subscribe(&id("external"), Some(1)).unwrap().unwrap();
    assert_eq!(sub.next().await.unwrap().seq(), 2);
}

#[tokio::test]
async fn stalled_tasks_are_marked_and_cleared_by_the_next_report() {
    let hub = hub_with(0, 16);
    let t = task(&hub, "slow");
    let mut sub = hub.subscribe(&t, None).unwrap().unwrap();
    assert_eq!(
        hub.mark_stalled(Duration::ZERO),
        0,
        "pending tasks are not running yet"
    );
    hub.progress(&t, processed(1)).unwrap();
    assert_eq!(
        hub.mark_stalled(Duration::from_secs(3600)),
        0,
        "reported just now"
    );
    assert_eq!(hub.mark_stalled(Duration::ZERO), 1);
    assert_eq!(hub.mark_stalled(Duration::ZERO), 0, "marked once");
    sub.next().await.unwrap();
    sub.next().await.unwrap();
    let stalled = sub.next().await.unwrap();
    assert_eq!(
        (stalled.seq(), json(&stalled)["stalled"].as_bool()),
        (3, Some(true))
    );
    hub.progress(&t, processed(2)).unwrap();
    let resumed = sub.next().await.unwrap();
    assert_eq!(
        (resumed.seq(), json(&resumed)["stalled"].as_bool()),
        (4, Some(false))
    );
}

#[tokio::test]
async fn the_sweeper_removes_only_finished_tasks_past_retention() {
    let store = Arc::new(MemoryStore::new(16));
    let hub = Hub::new(HubConfig::default(), store.clone()).unwrap();
    let done = task(&hub, "done");
    let running = task(&hub, "running");
    hub.finish(&done, Outcome::Cancelled).await.unwrap();
    assert_eq!(hub.sweep_finished(Duration::from_secs(3600)), 0);
    assert_eq!(hub.sweep_finished(Duration::ZERO), 1);
    assert!(hub.get(&done).is_none());
    assert!(hub.get(&running).is_some());
    let stored = store.load().unwrap();
    assert_eq!(stored.len(), 1, "removed from the store too");
}

#[tokio::test]
async fn all_stream_ids_keep_rising_across_a_restart() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(16));
    let before = {
        let hub = Hub::new(HubConfig::default(), store.clone()).unwrap();
        task(&hub, "a");
        hub.subscribe_all(None).next().await.id()
    };
    tokio::time::sleep(Duration::from_millis(2)).await;
    let hub = Hub::new(HubConfig::default(), store).unwrap();
    let after = hub.subscribe_all(None).next().await.id();
    assert!(after > before, "{after} must be above {before}");
    assert!(after < (1 << 53), "ids stay exact in JavaScript");
}

/// A sink that keeps what it is given, dropping what it already has, as sinks must.
#[derive(Default)]
struct Recorder {
    seqs: std::sync::Mutex<Vec<u64>>,
    ended_at_begin: std::sync::atomic::AtomicBool,
}

impl Recorder {
    fn take(&self, events: impl IntoIterator<Item = u64>) {
        let mut seqs = self.seqs.lock().unwrap();
        for seq in events {
            if seqs.last().is_none_or(|&last| seq > last) {
                seqs.push(seq);
            }
        }
    }

    fn seqs(&self) -> Vec<u64> {
        self.seqs.lock().unwrap().clone()
    }
}

impl Sink for Recorder {
    fn begin(&self, backlog: VecDeque<Event>, live: bool) {
        self.ended_at_begin.store(!live, Ordering::Relaxed);
        self.take(backlog.iter().map(Event::seq));
    }

    fn deliver(&self, events: &[Event]) {
        // As long as a write to a socket takes: rounds over many sinks then last long
        // enough for newer events to be added mid-round.
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_micros(2) {
            std::hint::spin_loop();
        }
        self.take(events.iter().map(Event::seq));
    }
}

/// Sinks join at random moments while a producer on another thread publishes, enough of
/// them that relays split the work over the fan-out threads and add newer events
/// mid-round: each sink sees a contiguous run of seq numbers ending with the terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_joining_while_publishing_never_lose_or_reorder_an_event() {
    let config = HubConfig {
        coalesce: Duration::ZERO,
        channel_capacity: 100_000,
        history_len: 100_000,
        fan_out_threads: 2,
        ..HubConfig::default()
    };
    let hub = Hub::new(config, Arc::new(MemoryStore::new(16))).unwrap();
    let t = task(&hub, "sink-race");
    let producer = {
        let (hub, t) = (hub.clone(), t.clone());
        tokio::task::spawn_blocking(move || {
            // About one event per 200 µs: a few arrive during each round.
            for n in 1..=1_500 {
                hub.progress(&t, processed(n)).unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let mut sinks = Vec::new();
    for i in 0..1_500 {
        let resume = (i % 3 == 1).then(|| hub.get(&t).unwrap().seq().saturating_sub(2));
        let recorder = Arc::new(Recorder::default());
        let attached = hub
            .subscribe_sink(&t, resume, recorder.clone())
            .unwrap()
            .unwrap();
        sinks.push((resume, recorder, attached));
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Some leave early: they are no longer counted, and the rest are unaffected.
    let left: Vec<_> = sinks.drain(..100).collect();
    drop(left);
    producer.await.unwrap();
    let end = hub
        .finish(&t, Outcome::Completed { results: None })
        .await
        .unwrap();
    let mut waited = 0;
    while sinks
        .iter()
        .any(|(_, r, _)| r.seqs().last() != Some(&end.seq()))
        && waited < 500
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    for (resume, recorder, _) in &sinks {
        let seqs = recorder.seqs();
        if let Some(n) = resume {
            assert_eq!(seqs[0], n + 1, "replay starts right after Last-Event-ID");
        }
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "gap: {seqs:?}");
        assert_eq!(seqs.last(), Some(&end.seq()), "every sink gets the end");
    }
    // The relay let go of every sink with the terminal event.
    assert_eq!(hub.listeners(&t), 0);
}

#[tokio::test]
async fn a_sink_leaves_when_dropped_and_a_late_one_gets_only_the_end() {
    let hub = hub_with(0, 16);
    let t = task(&hub, "sink-leave");
    let recorder = Arc::new(Recorder::default());
    let attached = hub
        .subscribe_sink(&t, None, recorder.clone())
        .unwrap()
        .unwrap();
    assert_eq!(hub.listeners(&t), 1);
    hub.progress(&t, processed(1)).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(recorder.seqs(), [1, 2]);
    drop(attached);
    assert_eq!(hub.listeners(&t), 0);
    hub.progress(&t, processed(2)).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(recorder.seqs(), [1, 2], "nothing after leaving");

    let end = hub.finish(&t, Outcome::Cancelled).await.unwrap();
    let late = Arc::new(Recorder::default());
    let _attached = hub
        .subscribe_sink(&t, Some(2), late.clone())
        .unwrap()
        .unwrap();
    assert_eq!(late.seqs(), [end.seq()]);
    assert!(
        late.ended_at_begin.load(Ordering::Relaxed),
        "nothing follows"
    );
    assert_eq!(hub.listeners(&t), 0, "a finished task adds no sink");
    // One that already has the end gets nothing at all.
    let done = Arc::new(Recorder::default());
    assert!(hub
        .subscribe_sink(&t, Some(end.seq()), done)
        .unwrap()
        .is_none());
}

/// Records the seqs of every batch it is handed.
#[derive(Default)]
struct Batches(std::sync::Mutex<Vec<Vec<u64>>>);

impl Batches {
    fn first(&self) -> Option<Vec<u64>> {
        self.0.lock().unwrap().first().cloned()
    }
}

impl Sink for Batches {
    fn begin(&self, _: VecDeque<Event>, _: bool) {}

    fn deliver(&self, events: &[Event]) {
        self.0
            .lock()
            .unwrap()
            .push(events.iter().map(Event::seq).collect());
    }
}

/// The first sink of a round: when handed its first batch, it has the producer publish
/// `burst` more changes, as a producer flat out does while the round is under way.
struct Burst {
    hub: Hub,
    task: TaskId,
    burst: u64,
    done: std::sync::atomic::AtomicBool,
}

impl Sink for Burst {
    fn begin(&self, _: VecDeque<Event>, _: bool) {}

    fn deliver(&self, _: &[Event]) {
        if !self.done.swap(true, Ordering::Relaxed) {
            for n in 0..self.burst {
                self.hub.progress(&self.task, processed(100 + n)).unwrap();
            }
        }
    }
}

/// Publishes one change (seq 2) to a burst sink and 1,100 recording sinks (one relay job,
/// which looks for newer events every `CATCH_UP_EVERY` sinks), the burst arriving
/// mid-round, and checks the first batch each recording sink got: the round's change
/// alone for sinks 1..=15 (0 is the burst), which come before the relay looks, and
/// `late` for the others.
async fn assert_first_batches_after_a_burst_mid_round(
    burst: u64,
    late: std::ops::RangeInclusive<u64>,
) {
    let hub = hub_with(0, 64);
    let t = task(&hub, "t");
    let burster = Arc::new(Burst {
        hub: hub.clone(),
        task: t.clone(),
        burst,
        done: Default::default(),
    });
    let _burster = hub.subscribe_sink(&t, None, burster).unwrap().unwrap();
    let sinks: Vec<Arc<Batches>> = (0..1100).map(|_| Arc::default()).collect();
    let _attached: Vec<_> = sinks
        .iter()
        .map(|s| hub.subscribe_sink(&t, None, s.clone()).unwrap().unwrap())
        .collect();
    hub.progress(&t, processed(1)).unwrap();
    for _ in 0..1000 {
        if sinks.iter().all(|s| s.first().is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let late: Vec<u64> = late.collect();
    for (n, sink) in sinks.iter().enumerate() {
        let expected = if n < CATCH_UP_EVERY - 1 {
            &[2][..]
        } else {
            &late[..]
        };
        assert_eq!(sink.first().expect("a batch"), expected, "sink {}", n + 1);
    }
}

#[tokio::test]
async fn sinks_late_in_a_round_skip_to_the_newest_once_the_relay_falls_behind() {
    // The task's creation is seq 1, the change seq 2, the burst 3..=202: it overflows
    // the outbox of 64, which then keeps the newest 16.
    assert_first_batches_after_a_burst_mid_round(200, 187..=202).await;
}

#[tokio::test]
async fn sinks_late_in_a_round_get_newer_events_that_follow_in_the_same_write() {
    // 5 newer events fit beside the round's one: no skip, no gap.
    assert_first_batches_after_a_burst_mid_round(5, 2..=7).await;
}
