//! The limits that keep one server standing under a flood: subscribers per task and in
//! total (`503` + `Retry-After`), tasks in total and unfinished tasks per producer token
//! (`429` + `Retry-After`).
//!
//! A subscriber's place is a [`SubscriberGuard`] that lives in its stream's state and
//! frees the place (and its connections gauge) when dropped, which happens whichever way
//! the stream ends: the client goes, the task ends, the server stops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use metrics::Gauge;

use super::error::ApiError;
use crate::config::Config;
use crate::hub::{Event, Hub, HubError, TaskId};
use crate::telemetry::{LimitKind, Metrics, Transport};

/// What a client turned away for too many subscribers is told to wait. Streams end in
/// seconds to minutes, so a short wait is likely to find a free place.
const SUBSCRIBERS_RETRY_AFTER_SECS: u32 = 5;
/// What a producer turned away for too many tasks is told to wait: tasks finish (and
/// retention frees finished ones) on the scale of minutes.
const TASKS_RETRY_AFTER_SECS: u32 = 30;

pub struct Limits {
    per_task_max: usize,
    total_max: usize,
    tasks_max: usize,
    unfinished_per_token_max: usize,
    subscribers: Mutex<Subscribers>,
    /// Per producer token, the tasks it created that may still be unfinished. Pruned only
    /// when a token reaches its limit, so the common create costs a push.
    owners: Mutex<HashMap<Arc<str>, Vec<TaskId>>>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Subscribers {
    total: usize,
    per_task: HashMap<TaskId, usize>,
}

impl Limits {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Limits {
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Limits {
            per_task_max: size(config.max_subscribers_per_task),
            total_max: size(config.max_subscribers),
            tasks_max: size(config.max_tasks),
            unfinished_per_token_max: size(config.max_unfinished_tasks_per_token),
            subscribers: Mutex::new(Subscribers::default()),
            owners: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Takes a subscriber's place: on one task (`Some`) or on the all-tasks stream.
    pub fn subscribe(
        self: &Arc<Self>,
        transport: Transport,
        task: Option<&TaskId>,
    ) -> Result<SubscriberGuard, ApiError> {
        let mut subs = lock(&self.subscribers);
        if subs.total >= self.total_max {
            return Err(self.unavailable(LimitKind::SubscribersTotal));
        }
        if let Some(id) = task {
            let on_task = subs.per_task.entry(id.clone()).or_insert(0);
            if *on_task >= self.per_task_max {
                return Err(self.unavailable(LimitKind::SubscribersPerTask));
            }
            *on_task += 1;
        }
        subs.total += 1;
        drop(subs);
        Ok(SubscriberGuard {
            limits: Arc::clone(self),
            task: task.cloned(),
            gauge: self.metrics.connection_opened(transport).clone(),
        })
    }

    fn unavailable(&self, limit: LimitKind) -> ApiError {
        self.metrics.rejected(limit);
        let message = match limit {
            LimitKind::SubscribersPerTask => "Too many subscribers for this task",
            _ => "Too many subscribers",
        };
        ApiError::Unavailable {
            message: message.to_string(),
            retry_after_secs: SUBSCRIBERS_RETRY_AFTER_SECS,
        }
    }

    /// Runs `create` if the task limits allow one more task for `producer`, and counts
    /// the new task against it. Creates are serialized here so that the limits are exact.
    pub fn create_task(
        &self,
        hub: &Hub,
        producer: &Arc<str>,
        create: impl FnOnce() -> Result<Event, HubError>,
    ) -> Result<Event, ApiError> {
        let mut owners = lock(&self.owners);
        self.admit_create(hub, producer, &mut owners)?;
        let event = create()?;
        owners
            .entry(producer.clone())
            .or_default()
            .push(event.task_id().clone());
        Ok(event)
    }

    /// [`Limits::create_task`] for a node sharing its tasks through Redis, where creating
    /// awaits Redis: the check and the count are not one step, so concurrent creates on
    /// one node may pass a limit by a few. The limits count this node's view: every task
    /// of the cluster, and the unfinished tasks created through this node.
    pub async fn create_task_clustered(
        &self,
        hub: &Hub,
        producer: &Arc<str>,
        create: impl std::future::Future<Output = Result<Event, HubError>>,
    ) -> Result<Event, ApiError> {
        self.admit_create(hub, producer, &mut lock(&self.owners))?;
        let event = create.await?;
        lock(&self.owners)
            .entry(producer.clone())
            .or_default()
            .push(event.task_id().clone());
        Ok(event)
    }

    /// Whether the task limits allow one more task for `producer`.
    fn admit_create(
        &self,
        hub: &Hub,
        producer: &Arc<str>,
        owners: &mut HashMap<Arc<str>, Vec<TaskId>>,
    ) -> Result<(), ApiError> {
        if hub.task_count() >= self.tasks_max {
            return Err(self.too_many(LimitKind::TasksTotal, "Too many tasks"));
        }
        let owned = owners.entry(producer.clone()).or_default();
        if owned.len() >= self.unfinished_per_token_max {
            owned.retain(|id| hub.get(id).is_some_and(|e| !e.is_terminal()));
        }
        if owned.len() >= self.unfinished_per_token_max {
            tracing::info!(producer = %producer, "unfinished task limit reached");
            return Err(self.too_many(
                LimitKind::UnfinishedTasksPerToken,
                "Too many unfinished tasks for this API token",
            ));
        }
        Ok(())
    }

    fn too_many(&self, limit: LimitKind, message: &str) -> ApiError {
        self.metrics.rejected(limit);
        ApiError::TooManyRequests {
            message: message.to_string(),
            retry_after_secs: TASKS_RETRY_AFTER_SECS,
        }
    }
}

/// A subscriber's place in the limits and in the connections gauge, freed on drop.
pub struct SubscriberGuard {
    limits: Arc<Limits>,
    task: Option<TaskId>,
    gauge: Gauge,
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        // The place is free before the gauge says so: whoever watches the gauge (a test,
        // an operator) may count on it.
        let mut subs = lock(&self.limits.subscribers);
        subs.total = subs.total.saturating_sub(1);
        if let Some(id) = &self.task {
            if let Some(n) = subs.per_task.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    subs.per_task.remove(id);
                }
            }
        }
        drop(subs);
        self.gauge.decrement(1.0);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The counts stay consistent across a panic elsewhere: recover rather than poison.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
