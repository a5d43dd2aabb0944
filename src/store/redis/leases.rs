//! Leases on built-in jobs. A job runs on the node that received it; that node keeps a
//! key with a short expiry for it in Redis, renewed every [`RENEW_EVERY`]. Every node
//! checks the leases of unfinished job tasks: one that expired means the node running
//! the job is gone (killed, cut off), and the task is failed as interrupted instead of
//! staying `processing` forever. The shared log lets exactly one node make that change.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{lock, timed, Keys, RedisStore};
use crate::hub::{Hub, TaskId};

/// How long a lease lasts unless renewed: how long a dead node's job task may stay
/// `processing`, give or take [`RENEW_EVERY`].
pub const LEASE_TTL: Duration = Duration::from_secs(5);

/// How often a node renews its leases and checks everyone's.
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// The error a job task ends with when its node is gone.
pub const INTERRUPTED_NODE_LOST: &str = "interrupted: the node running it stopped";

pub async fn run(store: Arc<RedisStore>, hub: Hub, stop: CancellationToken) {
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !store.is_ready() {
            continue;
        }
        if let Err(error) = renew(&store, &hub).await {
            tracing::debug!(%error, "cannot renew job leases");
            continue;
        }
        if let Err(error) = fail_orphans(&store, &hub).await {
            tracing::debug!(%error, "cannot check job leases");
        }
    }
}

/// Renews the leases of the jobs running here (and forgets those that ended).
async fn renew(store: &RedisStore, hub: &Hub) -> Result<(), crate::store::StoreError> {
    let held: Vec<TaskId> = {
        let mut held = lock(&store.held);
        held.retain(|id| hub.get(id).is_some_and(|e| !e.is_terminal()));
        held.iter().cloned().collect()
    };
    if held.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for id in &held {
        pipe.cmd("SET")
            .arg(Keys::lease(id.as_str()))
            .arg(&store.node)
            .arg("PX")
            .arg(LEASE_TTL.as_millis() as u64)
            .ignore();
    }
    let mut conn = store.conn.clone();
    timed(pipe.query_async::<()>(&mut conn)).await
}

/// Fails the unfinished job tasks whose lease has expired. Not in the first
/// [`LEASE_TTL`] after this node (re)connected: owners renew within [`RENEW_EVERY`] of
/// Redis coming back, also when it came back without the leases.
async fn fail_orphans(store: &RedisStore, hub: &Hub) -> Result<(), crate::store::StoreError> {
    let settled =
        lock(&store.ready_since).is_some_and(|since| since.elapsed() > LEASE_TTL + RENEW_EVERY);
    if !settled {
        return Ok(());
    }
    let jobs: Vec<TaskId> = {
        let held = lock(&store.held);
        hub.unfinished_jobs()
            .into_iter()
            .filter(|id| !held.contains(id))
            .collect()
    };
    if jobs.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for id in &jobs {
        pipe.exists(Keys::lease(id.as_str()));
    }
    let mut conn = store.conn.clone();
    let exists: Vec<bool> = timed(pipe.query_async(&mut conn)).await?;
    for (id, exists) in jobs.iter().zip(exists) {
        if exists {
            continue;
        }
        tracing::warn!(task_id = %id, "the node running this job is gone; failing the task");
        if let Err(error) = hub.fail_orphaned(id, INTERRUPTED_NODE_LOST).await {
            tracing::warn!(task_id = %id, %error, "cannot fail the orphaned job task");
        }
    }
    Ok(())
}
