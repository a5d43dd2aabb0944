//! The node's one subscription: every change of every task arrives here once, is decoded
//! once, and goes into the hub in `seq` order, from where the relay fans it out.
//!
//! Pub/sub delivers at most once, so a node that was cut off (or that finds a `seq`
//! further ahead than it expected) reads what it missed from the task's stream in Redis
//! before going on: subscribe first, then catch up, then apply what the subscription
//! brought meanwhile (the hub drops what it already has). Until it has caught up the
//! node is not ready and refuses writes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::Value;
use tokio_util::sync::CancellationToken;

use super::{as_bytes, lock, timed, Keys, RedisStore};
use crate::hub::{Event, Hub, TaskId, RESTART_SEQ_GAP};
use crate::store::StoreError;

/// How often the subscription's connection is checked with a `PING`: a Redis that
/// stopped answering without closing the connection is noticed within this and
/// [`super::COMMAND_TIMEOUT`].
const PING_EVERY: Duration = Duration::from_secs(1);

/// The pause before reconnecting, doubled up to [`RETRY_MAX`] while Redis stays away.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Tasks whose newest `seq` is read in one round trip while catching up.
const CATCH_UP_BATCH: usize = 500;

pub async fn run(
    store: Arc<RedisStore>,
    hub: Hub,
    on_end: Arc<dyn Fn(&TaskId) + Send + Sync>,
    stop: CancellationToken,
) {
    let mut pause = RETRY_FIRST;
    loop {
        let session = Session {
            store: &store,
            hub: &hub,
            on_end: &on_end,
        };
        let ended = tokio::select! {
            _ = stop.cancelled() => return,
            ended = session.run() => ended,
        };
        if store.ready.swap(false, std::sync::atomic::Ordering::SeqCst) {
            // It was working: try again soon.
            pause = RETRY_FIRST;
        }
        store.set_ready(false);
        if let Err(error) = ended {
            tracing::warn!(%error, "Redis subscription lost; reconnecting");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
}

struct Session<'a> {
    store: &'a RedisStore,
    hub: &'a Hub,
    on_end: &'a Arc<dyn Fn(&TaskId) + Send + Sync>,
}

impl Session<'_> {
    /// Subscribes, catches up, then applies changes until the connection fails.
    async fn run(&self) -> Result<(), StoreError> {
        let mut pubsub = timed(self.store.client.get_async_pubsub()).await?;
        timed(pubsub.subscribe(Keys::channel())).await?;
        let (mut sink, mut messages) = pubsub.split();
        self.reconcile_epoch().await?;
        self.agree_on_key().await?;
        self.catch_up().await?;
        self.store.set_ready(true);
        tracing::info!("Redis subscription ready");
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lost: Result<(), StoreError> = async {
            loop {
                tokio::select! {
                    message = messages.next() => {
                        let Some(message) = message else {
                            return Err(StoreError::Unavailable("subscription closed".to_string()));
                        };
                        self.receive(message.get_payload_bytes()).await?;
                    }
                    _ = ping.tick() => {
                        timed(sink.ping::<Value>()).await?;
                    }
                    _ = self.store.resync.notified() => {
                        return Err(StoreError::Unavailable("Redis lost its data".to_string()));
                    }
                }
            }
        }
        .await;
        self.store.count(|m| &m.subscription_losses, 1);
        lost
    }

    /// One published change: fill any gap before it, then apply it.
    async fn receive(&self, json: &[u8]) -> Result<(), StoreError> {
        let (event, snapshot) = match Event::decode(json) {
            Ok(decoded) => decoded,
            Err(error) => {
                tracing::warn!(%error, "skipping an unreadable change from Redis");
                return Ok(());
            }
        };
        let have = self.hub.get(event.task_id()).map(|e| e.seq());
        if have.is_some_and(|have| event.seq() <= have) {
            return Ok(());
        }
        let from = have.map_or(1, |have| have + 1);
        if event.seq() > from {
            self.read_stream(event.task_id(), from, Some(event.seq() - 1))
                .await?;
        }
        self.apply(event, snapshot);
        Ok(())
    }

    fn apply(&self, event: Event, snapshot: crate::hub::Snapshot) {
        let id = event.task_id().clone();
        let terminal = event.is_terminal();
        if self.hub.apply(event, snapshot) && terminal {
            lock(&self.store.held).remove(&id);
            (self.on_end)(&id);
        }
    }

    /// Applies the task's events from `from` to `to` (inclusive, `None`: the newest) that
    /// Redis still has.
    async fn read_stream(&self, id: &TaskId, from: u64, to: Option<u64>) -> Result<(), StoreError> {
        let events = self.store.read_stream(id, from, to).await?;
        self.store.count(|m| &m.stream_reads, events.len() as u64);
        for json in events {
            if let Ok((event, snapshot)) = Event::decode(&json) {
                self.apply(event, snapshot);
            }
        }
        Ok(())
    }

    /// Reads every task's newest `seq` and applies whatever this node has not seen.
    async fn catch_up(&self) -> Result<(), StoreError> {
        let ids: Vec<String> = self
            .store
            .query(redis::cmd("ZRANGE").arg(Keys::index()).arg(0).arg(-1))
            .await?;
        let have: HashMap<TaskId, u64> = self
            .hub
            .newest_seqs()
            .into_iter()
            .map(|(id, seq, _)| (id, seq))
            .collect();
        for batch in ids.chunks(CATCH_UP_BATCH) {
            let mut pipe = redis::pipe();
            for id in batch {
                pipe.hget(Keys::task(id), "seq");
            }
            let mut conn = self.store.conn.clone();
            let seqs: Vec<Option<u64>> = timed(pipe.query_async(&mut conn)).await?;
            let mut gone = Vec::new();
            for (id, seq) in batch.iter().zip(seqs) {
                let Ok(id) = TaskId::parse(id) else { continue };
                let Some(seq) = seq else {
                    gone.push(id);
                    continue;
                };
                let from = have.get(&id).map_or(1, |have| have + 1);
                if seq >= from {
                    self.read_stream(&id, from, None).await?;
                }
            }
            if !gone.is_empty() {
                // Expired: only the index still named them.
                let mut pipe = redis::pipe();
                for id in &gone {
                    pipe.zrem(Keys::index(), id.as_str()).ignore();
                }
                timed(pipe.query_async::<()>(&mut conn)).await?;
            }
        }
        Ok(())
    }

    /// Takes the shared key from Redis, or puts this node's there if it has none.
    async fn agree_on_key(&self) -> Result<(), StoreError> {
        let Some(key) = self.store.shared_key.get() else {
            return Ok(());
        };
        let mine = key.hex();
        let _: Value = self
            .store
            .query(
                redis::cmd("SET")
                    .arg(Keys::read_token_key())
                    .arg(&mine)
                    .arg("NX"),
            )
            .await?;
        let shared: Option<String> = self
            .store
            .query(redis::cmd("GET").arg(Keys::read_token_key()))
            .await?;
        let Some(shared) = shared.filter(|shared| *shared != mine) else {
            return Ok(());
        };
        let key = Arc::clone(key);
        let adopted = tokio::task::spawn_blocking(move || key.adopt(&shared)).await;
        match adopted {
            Ok(Ok(())) => tracing::info!("adopted the read-token key the other nodes use"),
            Ok(Err(error)) => {
                tracing::warn!(%error, "adopted the read-token key the other nodes use, but could not keep it")
            }
            Err(error) => tracing::warn!(%error, "could not adopt the shared read-token key"),
        }
        Ok(())
    }

    /// Finds out whether Redis still has the data this node last reconciled with, and
    /// gives it back the tasks this node holds if not.
    async fn reconcile_epoch(&self) -> Result<(), StoreError> {
        let known = self.store.epoch();
        let mut current: Option<String> = self
            .store
            .query(redis::cmd("GET").arg(Keys::epoch()))
            .await?;
        if current.is_none() {
            let fresh = uuid::Uuid::new_v4().to_string();
            let _: Value = self
                .store
                .query(redis::cmd("SET").arg(Keys::epoch()).arg(&fresh).arg("NX"))
                .await?;
            current = self
                .store
                .query(redis::cmd("GET").arg(Keys::epoch()))
                .await?;
        }
        let Some(current) = current else {
            return Err(StoreError::Unavailable(
                "Redis lost the epoch again".to_string(),
            ));
        };
        *lock(&self.store.epoch) = Some(current.clone());
        if known.is_some_and(|known| known != current) {
            tracing::warn!("Redis lost its data: restoring this node's tasks");
            self.store.count(|m| &m.restores, 1);
            self.restore(&current).await?;
        }
        Ok(())
    }

    /// Gives Redis back every task this node holds, unless another node did first. An
    /// unfinished task comes back under a `seq` moved on by [`RESTART_SEQ_GAP`]: Redis may
    /// have taken changes that this node never saw, and their seqs must not name other
    /// changes now.
    async fn restore(&self, epoch: &str) -> Result<(), StoreError> {
        for mut snapshot in self.hub.snapshots() {
            let terminal = snapshot.status.is_terminal();
            if !terminal {
                snapshot.seq += RESTART_SEQ_GAP;
            }
            let event = Event::encode(&snapshot);
            let id = event.task_id().as_str();
            let mut invocation = self.store.scripts.restore.prepare_invoke();
            invocation
                .key(Keys::task(id))
                .key(Keys::events(id))
                .key(Keys::index())
                .key(Keys::epoch())
                .arg(epoch)
                .arg(event.seq())
                .arg(event.json().as_ref())
                .arg(if terminal { "1" } else { "0" })
                .arg(self.store.retention_ms)
                .arg(event.created_at_ms())
                .arg(id)
                .arg(Keys::channel());
            let mut conn = self.store.conn.clone();
            let answer: Value = timed(invocation.invoke_async(&mut conn)).await?;
            if as_bytes(&answer) == Some(b"epoch") {
                return Err(StoreError::Unavailable(
                    "Redis lost its data again".to_string(),
                ));
            }
        }
        Ok(())
    }
}
