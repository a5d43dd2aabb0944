//! A task's [`Snapshot`]: its whole cumulative state, and the changes that producers apply
//! to it. The newest snapshot alone tells a client everything.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::event::EventKind;
use super::rate::RateEstimator;
use super::TaskId;

/// Where a task is in its life. The last three are terminal: the task never changes again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Processing,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::Processing,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Processing => "processing",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

/// The full state of one task, as every read route shows it.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub task_id: TaskId,
    /// The sequence number of the change that produced this snapshot.
    pub seq: u64,
    pub status: Status,
    /// Integer percent, 0 to 100.
    pub progress: u8,
    /// `""` when unknown.
    pub current_file: String,
    /// `0` when unknown.
    pub processed: u64,
    /// `0` when unknown.
    pub total: u64,
    pub name: Option<String>,
    pub message: Option<String>,
    /// A producer-defined JSON object, carried as-is.
    pub detail: Option<Value>,
    pub results: Option<Value>,
    pub error: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub rate_per_second: Option<f64>,
    pub eta_seconds: Option<u64>,
    /// True while a running task has not reported for longer than the stall timeout.
    pub stalled: bool,
    /// The built-in job running this task (`"index-folder"`), or `None` for tasks fed by
    /// outside producers. A restart uses it to tell which running tasks lost their worker.
    pub job: Option<String>,
}

/// One progress report, already validated for types and ranges on its own.
#[derive(Clone, Debug, Default)]
pub struct ProgressUpdate {
    pub processed: Option<u64>,
    pub total: Option<u64>,
    pub current_file: Option<String>,
    pub progress: Option<u8>,
    pub message: Option<String>,
    pub detail: Option<Value>,
}

/// How a task ends.
#[derive(Clone, Debug)]
pub enum Outcome {
    Completed { results: Option<Value> },
    Failed { error: String },
    Cancelled,
}

impl Outcome {
    pub fn status(&self) -> Status {
        match self {
            Outcome::Completed { .. } => Status::Completed,
            Outcome::Failed { .. } => Status::Failed,
            Outcome::Cancelled => Status::Cancelled,
        }
    }
}

/// A progress report that is well-formed but does not fit the task's state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpdateRejected {
    #[error("processed ({processed}) must not exceed total ({total})")]
    ProcessedOverTotal { processed: u64, total: u64 },
}

impl Snapshot {
    pub fn new(task_id: TaskId, name: Option<String>, total: u64, now_ms: u64) -> Self {
        Snapshot {
            task_id,
            seq: 0,
            status: Status::Pending,
            progress: 0,
            current_file: String::new(),
            processed: 0,
            total,
            name,
            message: None,
            detail: None,
            results: None,
            error: None,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            rate_per_second: None,
            eta_seconds: None,
            stalled: false,
            job: None,
        }
    }

    /// Applies a progress report. On error nothing has changed.
    pub fn apply_progress(
        &mut self,
        update: ProgressUpdate,
        rate: &mut RateEstimator,
        now_ms: u64,
    ) -> Result<(), UpdateRejected> {
        let total = update.total.unwrap_or(self.total);
        let processed = update.processed.unwrap_or(self.processed);
        if total > 0 && processed > total {
            return Err(UpdateRejected::ProcessedOverTotal { processed, total });
        }
        self.total = total;
        self.processed = processed;
        if let Some(file) = update.current_file {
            self.current_file = file;
        }
        if let Some(message) = update.message {
            self.message = Some(message);
        }
        if let Some(detail) = update.detail {
            self.detail = Some(detail);
        }
        self.progress = match update.progress {
            Some(progress) => progress,
            None if total > 0 => percent(processed, total),
            None => self.progress,
        };
        if self.status == Status::Pending {
            self.status = Status::Processing;
        }
        self.stalled = false;
        self.updated_at_ms = now_ms;
        rate.record(now_ms, processed);
        self.rate_per_second = rate.per_second();
        self.eta_seconds = match self.rate_per_second {
            Some(r) if r > 0.0 && total > 0 => Some(((total - processed) as f64 / r).ceil() as u64),
            _ => None,
        };
        Ok(())
    }

    /// Moves the task to its terminal state.
    pub fn finish(&mut self, outcome: Outcome, now_ms: u64) {
        self.status = outcome.status();
        match outcome {
            Outcome::Completed { results } => {
                self.progress = 100;
                self.results = results;
            }
            Outcome::Failed { error } => self.error = Some(error),
            Outcome::Cancelled => {}
        }
        self.stalled = false;
        self.eta_seconds = None;
        self.updated_at_ms = now_ms;
    }

    /// The one JSON encoding of a snapshot. The five keys of the original polling contract
    /// come first, `results` only when the task completed with non-empty results.
    pub fn to_json(&self, kind: EventKind) -> Vec<u8> {
        #[derive(Serialize)]
        struct Wire<'a> {
            status: Status,
            progress: u8,
            current_file: &'a str,
            processed: u64,
            total: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            results: Option<&'a Value>,
            task_id: &'a str,
            seq: u64,
            event: &'static str,
            name: Option<&'a str>,
            message: Option<&'a str>,
            detail: Option<&'a Value>,
            error: Option<&'a str>,
            created_at: String,
            updated_at: String,
            rate_per_second: Option<f64>,
            eta_seconds: Option<u64>,
            stalled: bool,
            job: Option<&'a str>,
        }
        let results = match (&self.results, self.status) {
            (Some(results), Status::Completed) if is_truthy(results) => Some(results),
            _ => None,
        };
        let wire = Wire {
            status: self.status,
            progress: self.progress,
            current_file: &self.current_file,
            processed: self.processed,
            total: self.total,
            results,
            task_id: &self.task_id,
            seq: self.seq,
            event: kind.as_str(),
            name: self.name.as_deref(),
            message: self.message.as_deref(),
            detail: self.detail.as_ref(),
            error: self.error.as_deref(),
            created_at: super::time::rfc3339_ms(self.created_at_ms),
            updated_at: super::time::rfc3339_ms(self.updated_at_ms),
            rate_per_second: self.rate_per_second,
            eta_seconds: self.eta_seconds,
            stalled: self.stalled,
            job: self.job.as_deref(),
        };
        // Serializing plain structs, strings and `Value`s into a Vec cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Reads a snapshot back from its JSON (an event a store kept).
    pub fn from_json(json: &[u8]) -> Result<Snapshot, String> {
        #[derive(Deserialize)]
        struct Wire {
            status: Status,
            progress: u8,
            current_file: String,
            processed: u64,
            total: u64,
            #[serde(default)]
            results: Option<Value>,
            task_id: String,
            seq: u64,
            name: Option<String>,
            message: Option<String>,
            detail: Option<Value>,
            error: Option<String>,
            created_at: String,
            updated_at: String,
            rate_per_second: Option<f64>,
            eta_seconds: Option<u64>,
            #[serde(default)]
            stalled: bool,
            #[serde(default)]
            job: Option<String>,
        }
        let w: Wire = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        let time = |s: &str| {
            super::time::parse_rfc3339_ms(s).ok_or_else(|| format!("bad timestamp {s:?}"))
        };
        Ok(Snapshot {
            task_id: TaskId::parse(&w.task_id).map_err(|_| "bad task id".to_string())?,
            seq: w.seq,
            status: w.status,
            progress: w.progress.min(100),
            current_file: w.current_file,
            processed: w.processed,
            total: w.total,
            name: w.name,
            message: w.message,
            detail: w.detail,
            results: w.results,
            error: w.error,
            created_at_ms: time(&w.created_at)?,
            updated_at_ms: time(&w.updated_at)?,
            rate_per_second: w.rate_per_second,
            eta_seconds: w.eta_seconds,
            stalled: w.stalled,
            job: w.job,
        })
    }
}

/// `floor(processed * 100 / total)`, computed without overflow.
fn percent(processed: u64, total: u64) -> u8 {
    ((u128::from(processed) * 100 / u128::from(total)).min(100)) as u8
}

/// The original endpoint sent `results` only when they were truthy in Python's sense.
fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snapshot() -> Snapshot {
        Snapshot::new(TaskId::parse("t1").unwrap(), None, 0, 1_000)
    }

    #[test]
    fn progress_is_derived_from_processed_and_total() {
        let mut s = snapshot();
        let mut rate = RateEstimator::default();
        let update = ProgressUpdate {
            processed: Some(9),
            total: Some(20),
            ..Default::default()
        };
        s.apply_progress(update, &mut rate, 2_000).unwrap();
        assert_eq!((s.progress, s.status), (45, Status::Processing));
    }

    #[test]
    fn processed_over_total_is_rejected_and_changes_nothing() {
        let mut s = snapshot();
        let mut rate = RateEstimator::default();
        let update = ProgressUpdate {
            processed: Some(21),
            total: Some(20),
            ..Default::default()
        };
        assert!(s.apply_progress(update, &mut rate, 2_000).is_err());
        assert_eq!((s.processed, s.total, s.status), (0, 0, Status::Pending));
    }

    #[test]
    fn results_appear_only_when_completed_and_truthy() {
        let mut s = snapshot();
        s.results = Some(json!({"files": 3}));
        let body: Value = serde_json::from_slice(&s.to_json(EventKind::Progress)).unwrap();
        assert!(body.get("results").is_none());
        s.finish(
            Outcome::Completed {
                results: Some(json!({})),
            },
            2_000,
        );
        let body: Value = serde_json::from_slice(&s.to_json(EventKind::Completed)).unwrap();
        assert!(body.get("results").is_none());
        s.results = Some(json!({"files": 3}));
        let body: Value = serde_json::from_slice(&s.to_json(EventKind::Completed)).unwrap();
        assert_eq!(body["results"], json!({"files": 3}));
        assert_eq!(body["progress"], 100);
    }

    #[test]
    fn json_round_trips() {
        let mut s = snapshot();
        s.name = Some("docs".into());
        s.detail = Some(json!({"stage": "scan"}));
        s.job = Some("index-folder".into());
        s.finish(
            Outcome::Failed {
                error: "boom".into(),
            },
            5_000,
        );
        let back = Snapshot::from_json(&s.to_json(EventKind::Failed)).unwrap();
        assert_eq!(
            back.to_json(EventKind::Failed),
            s.to_json(EventKind::Failed)
        );
        assert_eq!(back.updated_at_ms, 5_000);
    }

    #[test]
    fn percent_never_overflows() {
        assert_eq!(percent(u64::MAX, u64::MAX), 100);
        assert_eq!(percent(1, 3), 33);
    }
}
