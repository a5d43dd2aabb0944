//! The hub as a node of several, against an in-memory shared log: the order in which a
//! node applies changes, and the compare-and-set write when another node wrote first.
//! The same against a real Redis and real processes: tests/api/redis.rs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::*;
use crate::store::MemoryStore;

/// A shared log in memory. It delivers an appended event to the nodes listed in
/// `deliver_to` at once; the others never hear of it (a node cut off from the log).
#[derive(Default)]
struct FakeLog {
    tasks: Mutex<HashMap<TaskId, Event>>,
    deliver_to: Mutex<Vec<Hub>>,
    /// Takes appends but answers with an error, as a Redis whose answer was lost.
    lose_answers: std::sync::atomic::AtomicBool,
}

impl SharedLog for FakeLog {
    fn append<'a>(&'a self, append: Append<'a>) -> LogFuture<'a> {
        let answer = {
            let mut tasks = self.tasks.lock().unwrap();
            let id = append.event.task_id().clone();
            match (tasks.get(&id), append.base_seq) {
                (Some(_), None) => Appended::Exists,
                (None, Some(_)) => Appended::Missing,
                (Some(current), Some(base)) if current.seq() != base || current.is_terminal() => {
                    Appended::Conflict(current.json().clone())
                }
                _ => {
                    tasks.insert(id, append.event.clone());
                    Appended::Done
                }
            }
        };
        if matches!(answer, Appended::Done) {
            for hub in self.deliver_to.lock().unwrap().iter() {
                let (event, snapshot) = Event::decode(append.event.json()).unwrap();
                hub.apply(event, snapshot);
            }
        }
        if self.lose_answers.load(std::sync::atomic::Ordering::SeqCst) {
            let lost = StoreError::Unavailable("the answer was lost".to_string());
            return Box::pin(async move { Err(lost) });
        }
        Box::pin(async move { Ok(answer) })
    }

    fn fetch<'a>(&'a self, id: &'a TaskId) -> FetchFuture<'a> {
        let events: Vec<Bytes> = self
            .tasks
            .lock()
            .unwrap()
            .get(id)
            .map(|e| e.json().clone())
            .into_iter()
            .collect();
        Box::pin(async move { Ok(events) })
    }
}

fn node(log: &Arc<FakeLog>) -> Hub {
    let hub = Hub::new(HubConfig::default(), Arc::new(MemoryStore::new(128))).unwrap();
    hub.attach_log(log.clone());
    hub
}

fn id(s: &str) -> TaskId {
    TaskId::parse(s).unwrap()
}

/// The change `seq` of task `task` as `hub` replays it.
async fn replayed(hub: &Hub, task: &str, seq: u64) -> (Event, Snapshot) {
    let mut replay = hub.subscribe(&id(task), Some(seq - 1)).unwrap().unwrap();
    let event = replay.next().await.unwrap();
    Event::decode(event.json()).unwrap()
}

fn processed(n: u64) -> ProgressUpdate {
    ProgressUpdate {
        processed: Some(n),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_node_applies_changes_once_in_seq_order() {
    let log = Arc::new(FakeLog::default());
    let writer = node(&log);
    log.deliver_to.lock().unwrap().push(writer.clone());
    let follower = node(&log);
    writer
        .create_clustered(NewTask {
            id: Some(id("t")),
            total: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    for n in 1..=3 {
        writer.report(&id("t"), processed(n)).await.unwrap();
    }
    let mut events = Vec::new();
    for seq in 1..=4 {
        events.push(replayed(&writer, "t", seq).await);
    }
    // In order, then duplicates: each applies once.
    for (event, snapshot) in events.iter().cloned() {
        assert!(follower.apply(event, snapshot));
    }
    for (event, snapshot) in events.iter().cloned() {
        assert!(!follower.apply(event, snapshot), "a duplicate is dropped");
    }
    assert_eq!(follower.get(&id("t")).unwrap().seq(), 4);
    // Replay on the follower crosses no hole.
    let mut replay = follower.subscribe(&id("t"), Some(1)).unwrap().unwrap();
    assert_eq!(replay.next().await.unwrap().seq(), 2);
}

#[tokio::test]
async fn a_gap_restarts_the_history_so_a_replay_never_crosses_it() {
    let log = Arc::new(FakeLog::default());
    let writer = node(&log);
    log.deliver_to.lock().unwrap().push(writer.clone());
    let follower = node(&log);
    writer
        .create_clustered(NewTask {
            id: Some(id("g")),
            ..Default::default()
        })
        .await
        .unwrap();
    for n in 1..=3 {
        writer.report(&id("g"), processed(n)).await.unwrap();
    }
    let (first, snapshot) = replayed(&writer, "g", 1).await;
    assert!(follower.apply(first, snapshot));
    let (fourth, snapshot) = replayed(&writer, "g", 4).await;
    assert!(follower.apply(fourth, snapshot));
    // Seqs 2 and 3 never reached this node: resuming after 1 gets the snapshot, not a
    // replay that silently skips them.
    let mut resumed = follower.subscribe(&id("g"), Some(1)).unwrap().unwrap();
    assert_eq!(resumed.next().await.unwrap().seq(), 4);
}

#[tokio::test]
async fn a_write_from_a_stale_node_is_computed_again_on_the_newest_snapshot() {
    let log = Arc::new(FakeLog::default());
    let a = node(&log);
    let b = node(&log);
    // Both hear of the task; then B is cut off from the log's deliveries.
    log.deliver_to
        .lock()
        .unwrap()
        .extend([a.clone(), b.clone()]);
    a.create_clustered(NewTask {
        id: Some(id("c")),
        total: 10,
        ..Default::default()
    })
    .await
    .unwrap();
    log.deliver_to
        .lock()
        .unwrap()
        .retain(|h| Arc::ptr_eq(&h.shared, &a.shared));
    a.report(&id("c"), processed(7)).await.unwrap();
    // B still has seq 1: its write conflicts, and is made again on seq 2.
    let update = ProgressUpdate {
        current_file: Some("b.txt".to_string()),
        ..Default::default()
    };
    let answer = b.report(&id("c"), update).await.unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["seq"], 3);
    assert_eq!(answer["processed"], 7, "A's change is kept");
    assert_eq!(answer["current_file"], "b.txt");
    // Ending it from the stale node works the same way, and ending twice is refused.
    b.finish(&id("c"), Outcome::Cancelled).await.unwrap();
    assert!(matches!(
        b.finish(&id("c"), Outcome::Cancelled).await,
        Err(HubError::Finished(Status::Cancelled))
    ));
    assert_eq!(a.get(&id("c")).unwrap().seq(), 4);
}

#[tokio::test]
async fn a_creation_whose_answer_was_lost_is_answered_again_on_retry_on_any_node() {
    let log = Arc::new(FakeLog::default());
    let (a, b) = (node(&log), node(&log));
    log.deliver_to
        .lock()
        .unwrap()
        .extend([a.clone(), b.clone()]);
    let new = |name: &str, total: u64| NewTask {
        id: Some(id(name)),
        name: Some(format!("job {name}")),
        total,
        ..Default::default()
    };

    log.lose_answers.store(true, Ordering::SeqCst);
    let lost = a.create_clustered(new("lost", 4)).await;
    assert!(matches!(lost, Err(HubError::Store(_))), "{lost:?}");
    log.lose_answers.store(false, Ordering::SeqCst);
    // The log took it: the producer's retry is answered as created on the node that sent
    // it and on any other, since it asks for the same task...
    let retried = a.create_clustered(new("lost", 4)).await.unwrap();
    assert_eq!((retried.task_id(), retried.seq()), (&id("lost"), 1));
    let elsewhere = b.create_clustered(new("lost", 4)).await.unwrap();
    assert_eq!((elsewhere.task_id(), elsewhere.seq()), (&id("lost"), 1));
    // ...but a different creation under the same id is a conflict on every node.
    for hub in [&a, &b] {
        assert!(matches!(
            hub.create_clustered(new("lost", 5)).await,
            Err(HubError::AlreadyExists)
        ));
        assert!(matches!(
            hub.create_clustered(NewTask {
                name: None,
                ..new("lost", 4)
            })
            .await,
            Err(HubError::AlreadyExists)
        ));
    }

    // A task that moved on since is not created again, by any node.
    log.lose_answers.store(true, Ordering::SeqCst);
    assert!(a.create_clustered(new("moved", 4)).await.is_err());
    log.lose_answers.store(false, Ordering::SeqCst);
    a.report(&id("moved"), processed(1)).await.unwrap();
    for hub in [&a, &b] {
        assert!(matches!(
            hub.create_clustered(new("moved", 4)).await,
            Err(HubError::AlreadyExists)
        ));
    }

    // A creation the node knows it sent without learning the outcome is answered even
    // if the retry differs (the node remembers it), once.
    log.lose_answers.store(true, Ordering::SeqCst);
    assert!(a.create_clustered(new("known", 4)).await.is_err());
    log.lose_answers.store(false, Ordering::SeqCst);
    assert_eq!(a.create_clustered(new("known", 9)).await.unwrap().seq(), 1);
    assert!(matches!(
        a.create_clustered(new("known", 9)).await,
        Err(HubError::AlreadyExists)
    ));
}
