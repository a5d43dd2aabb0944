//! Property tests for the request parsing and event encoding paths: task ids, the typed
//! JSON field readers, `Last-Event-ID` parsing, the snapshot's JSON round trip and the
//! SSE frame (always exactly one `data:` line). Arbitrary input must never panic and must
//! get the documented answer.

use axum::http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use serde_json::{Map, Value};

use super::extract::{Fields, MAX_SAFE_INTEGER};
use super::sse::last_event_id;
use crate::hub::{Event, EventKind, Outcome, Snapshot, Status, TaskId};

/// The documented pattern, `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`, written independently.
fn matches_id_pattern(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    s.chars().count() <= 64
        && first.is_ascii_alphanumeric()
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Any JSON value, nested a few levels, with hostile strings and extreme numbers.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn fields(name: &str, value: Value) -> Fields {
    let mut map = Map::new();
    map.insert(name.to_string(), value);
    Fields::from_map(map)
}

fn status() -> impl Strategy<Value = Status> {
    prop::sample::select(Status::ALL.to_vec())
}

prop_compose! {
    fn snapshot()(
        id in "[A-Za-z0-9][A-Za-z0-9_-]{0,63}",
        seq in 1u64..u64::MAX,
        status in status(),
        progress in 0u8..=100,
        current_file in any::<String>(),
        processed in any::<u64>(),
        total in any::<u64>(),
        name in proptest::option::of(any::<String>()),
        message in proptest::option::of(any::<String>()),
        detail in proptest::option::of(json_value()),
        error in proptest::option::of(any::<String>()),
        created in 0u64..4_102_444_800_000,
        updated in 0u64..4_102_444_800_000,
        rate in proptest::option::of(0.0f64..1e12),
        eta in proptest::option::of(any::<u64>()),
        stalled in any::<bool>(),
        job in proptest::option::of("[a-z-]{1,20}"),
    ) -> Snapshot {
        let mut s = Snapshot::new(TaskId::parse(&id).unwrap(), name, total, created);
        s.seq = seq;
        s.status = status;
        s.progress = progress;
        s.current_file = current_file;
        s.processed = processed;
        s.message = message;
        s.detail = detail.filter(Value::is_object);
        s.error = error;
        s.updated_at_ms = updated;
        s.rate_per_second = rate;
        s.eta_seconds = eta;
        s.stalled = stalled;
        s.job = job;
        if status == Status::Completed {
            s.finish(Outcome::Completed { results: Some(Value::from(processed)) }, updated);
        }
        s
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn task_ids_follow_the_documented_pattern(s in any::<String>()) {
        prop_assert_eq!(TaskId::parse(&s).is_ok(), matches_id_pattern(&s));
    }

    #[test]
    fn id_like_strings_follow_the_pattern(s in "[A-Za-z0-9_./%-]{0,70}") {
        prop_assert_eq!(TaskId::parse(&s).is_ok(), matches_id_pattern(&s));
    }

    #[test]
    fn uint_accepts_exactly_the_safe_non_negative_integers(value in json_value()) {
        let expected = value.as_u64().filter(|n| *n <= MAX_SAFE_INTEGER);
        match fields("n", value.clone()).uint("n") {
            Ok(got) => prop_assert_eq!(got, if value.is_null() { None } else { expected }),
            Err(error) => {
                prop_assert!(expected.is_none());
                prop_assert!(error.to_string().contains('n'));
            }
        }
    }

    #[test]
    fn percent_accepts_exactly_0_to_100(value in json_value()) {
        let expected = value.as_u64().filter(|n| *n <= 100);
        match fields("p", value.clone()).percent("p") {
            Ok(got) => prop_assert_eq!(got.map(u64::from), if value.is_null() { None } else { expected }),
            Err(_) => prop_assert!(expected.is_none()),
        }
    }

    #[test]
    fn string_and_object_readers_check_type_and_size(value in json_value(), max in 0usize..64) {
        let mut f = fields("s", value.clone());
        match f.string("s", max) {
            Ok(Some(s)) => prop_assert!(value.as_str() == Some(s.as_str()) && s.len() <= max),
            Ok(None) => prop_assert!(value.is_null()),
            Err(_) => prop_assert!(value.as_str().is_none_or(|s| s.len() > max)),
        }
        prop_assert!(f.finish().is_ok());
        let mut f = fields("o", value.clone());
        match f.object("o", max * 16) {
            Ok(Some(o)) => prop_assert!(o.is_object() && o.to_string().len() <= max * 16),
            Ok(None) => prop_assert!(value.is_null()),
            Err(_) => prop_assert!(!value.is_object() || value.to_string().len() > max * 16),
        }
    }

    #[test]
    fn unknown_fields_are_always_reported(name in "[a-z_]{1,12}", value in json_value()) {
        prop_assume!(!value.is_null());
        let error = fields(&name, value).finish().unwrap_err();
        prop_assert!(error.to_string().contains(&name));
    }

    #[test]
    fn last_event_id_is_a_number_or_absent(bytes in prop::collection::vec(any::<u8>(), 0..30)) {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            headers.insert("last-event-id", value);
            let text = std::str::from_utf8(&bytes).ok().map(str::trim).filter(|t| !t.is_empty());
            let expected = text.and_then(|t| t.parse::<u64>().ok());
            prop_assert_eq!(last_event_id(&headers, None), expected);
        }
    }

    #[test]
    fn snapshots_round_trip_through_their_json(s in snapshot()) {
        let kind = EventKind::for_status(s.status);
        let json = s.to_json(kind);
        let back = Snapshot::from_json(&json).map_err(TestCaseError::fail)?;
        prop_assert_eq!(back.to_json(kind), json);
        prop_assert_eq!(back.seq, s.seq);
        prop_assert_eq!(back.status, s.status);
    }

    #[test]
    fn an_sse_frame_is_always_id_event_and_one_data_line(s in snapshot()) {
        let event = Event::encode(&s);
        let frame = std::str::from_utf8(event.sse_frame()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(frame.ends_with("\n\n"));
        let lines: Vec<&str> = frame.trim_end_matches('\n').split('\n').collect();
        prop_assert_eq!(lines.len(), 3, "{:?}", frame);
        prop_assert_eq!(lines[0], format!("id: {}", s.seq));
        prop_assert_eq!(lines[1], format!("event: {}", event.kind().as_str()));
        let data = lines[2].strip_prefix("data: ").ok_or_else(|| TestCaseError::fail("data line"))?;
        prop_assert_eq!(data.as_bytes(), &event.json()[..]);
        prop_assert!(!data.contains('\r'));
        let parsed: Value = serde_json::from_str(data).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parsed["seq"].as_u64(), Some(s.seq));
    }
}
