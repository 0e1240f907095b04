//! What client commands print: the `--json` shapes of `spec/cli.md`, and readable text.

use base64::Engine;
use exesdb_client::{ClientError, RecordedEvent, Snapshot, StoreError};
use serde_json::{Value, json};

/// Bytes as JSON: the JSON itself when the content type says JSON and the bytes parse,
/// otherwise `{"base64": "..."}`; nothing at all is `null`.
pub(crate) fn payload(bytes: &[u8], content_type: &str) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    if content_type == "application/json"
        && let Ok(value) = serde_json::from_slice(bytes)
    {
        return value;
    }
    json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) })
}

pub(crate) fn event(event: &RecordedEvent) -> Value {
    json!({
        "stream_id": event.stream_id,
        "event_number": event.event_number,
        "position": event.position,
        "event_id": event.event_id.to_string(),
        "event_type": event.event_type,
        "data": payload(&event.data, &event.data_content_type),
        "metadata": payload(&event.metadata, &event.metadata_content_type),
        "data_content_type": event.data_content_type,
        "metadata_content_type": event.metadata_content_type,
        "created": timestamp(event.created_micros),
    })
}

pub(crate) fn event_line(event: &RecordedEvent) -> String {
    let data = payload(&event.data, &event.data_content_type);
    format!(
        "{:>8}  {:>10}  {:<24}  {}  {}",
        event.event_number,
        event.position,
        event.event_type,
        timestamp(event.created_micros),
        data
    )
}

pub(crate) const EVENT_HEADER: &str =
    "  NUMBER    POSITION  TYPE                      CREATED                      DATA";

pub(crate) fn snapshot(snapshot: &Snapshot) -> Value {
    // Snapshots carry no content type: JSON when it parses, base64 otherwise.
    json!({
        "source_uuid": snapshot.source_uuid,
        "stream_uuid": snapshot.stream_uuid,
        "version": snapshot.version,
        "data": payload(&snapshot.data, "application/json"),
        "metadata": payload(&snapshot.metadata, "application/json"),
        "created": timestamp(snapshot.created_micros),
    })
}

/// Writes to stdout. When the reader has gone (`exesdb read ... | head`), the command has no
/// one left to answer: it ends at once with status 0, as a Unix tool ends on SIGPIPE, instead
/// of panicking or, following a subscription, writing into the void forever. Any other write
/// failure (a full disk behind a redirect) ends it with status 2 and says why.
pub(crate) fn write_stdout(text: std::fmt::Arguments) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(text).and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => {
            eprintln!("exesdb: cannot write the output: {error}");
            std::process::exit(2);
        }
    }
}

/// The error object printed with `--json`.
pub(crate) fn error(error: &ClientError) -> Value {
    let mut object = json!({ "code": error.code(), "message": error.to_string() });
    if let ClientError::Store(store_error) = error {
        match store_error {
            StoreError::WrongExpectedVersion { expected, current } => {
                object["expected"] = json!(expected);
                object["current"] = json!(current);
            }
            StoreError::LimitExceeded { limit, max, actual } => {
                object["limit"] = json!(limit);
                object["max"] = json!(max);
                object["actual"] = json!(actual);
            }
            StoreError::StreamNotFound { stream_id } => {
                object["stream_id"] = json!(stream_id);
            }
            StoreError::NotLeader {
                leader_node_id,
                leader_addr,
            } => {
                object["leader_node_id"] = json!(leader_node_id);
                object["leader_addr"] = json!(leader_addr);
            }
            _ => {}
        }
    }
    json!({ "error": object })
}

/// Microseconds since the Unix epoch as RFC 3339 UTC with microseconds.
pub(crate) fn timestamp(micros: i64) -> String {
    let seconds = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000);
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction:06}Z",
        second_of_day / 3_600,
        second_of_day % 3_600 / 60,
        second_of_day % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `cluster status --json`: one object, the members as the first store's group has them (the
/// stores of a node share its members), and each store's leader, term and indexes. A node has
/// no name but its peer address, which `name` repeats.
pub(crate) fn cluster_status(stores: &[exesdb_client::ClusterStatus]) -> Value {
    let first = stores.first();
    let members: Vec<Value> = first
        .map(|status| {
            status
                .members
                .iter()
                .map(|member| {
                    json!({
                        "node_id": member.node_id,
                        "name": member.peer_addr,
                        "peer_addr": member.peer_addr,
                        "client_addr": member.client_addr,
                        "state": member.state,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "cluster_id": first.and_then(|status| status.cluster_id.clone()),
        "node_id": first.map(|status| status.node_id),
        "members": members,
        "stores": stores
            .iter()
            .map(|status| {
                json!({
                    "store": status.store_id,
                    "leader": status.leader,
                    "term": status.term,
                    "commit_index": status.commit_index,
                    "applied_index": status.applied_index,
                })
            })
            .collect::<Vec<_>>(),
    })
}

/// `cluster status` for a person: the members, then a line per store.
/// What a membership change did, per store: `{"stores":[{"store":..,"outcome":..}]}`.
pub(crate) fn membership_outcomes(outcomes: &[(String, String)]) -> Value {
    json!({
        "stores": outcomes
            .iter()
            .map(|(store, outcome)| json!({"store": store, "outcome": outcome}))
            .collect::<Vec<_>>()
    })
}

pub(crate) fn cluster_status_text(stores: &[exesdb_client::ClusterStatus]) -> String {
    let mut out = String::new();
    let Some(first) = stores.first() else {
        return out;
    };
    out += &format!(
        "cluster {}  (asked node {})\n",
        first.cluster_id.as_deref().unwrap_or("not formed yet"),
        first.node_id
    );
    out += &format!(
        "  {:<20}  {:<9}  {:<22}  {}\n",
        "NODE", "STATE", "PEER", "CLIENT"
    );
    for member in &first.members {
        out += &format!(
            "  {:<20}  {:<9}  {:<22}  {}\n",
            member.node_id, member.state, member.peer_addr, member.client_addr
        );
    }
    for status in stores {
        let shown = |value: Option<u64>| value.map_or_else(|| "-".to_string(), |v| v.to_string());
        out += &format!(
            "store {}: leader {}  term {}  commit {}  applied {}\n",
            status.store_id,
            shown(status.leader),
            status.term,
            shown(status.commit_index),
            shown(status.applied_index)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000000Z");
        // 2026-11-27T10:00:00.123456Z
        assert_eq!(
            timestamp(1_795_773_600_123_456),
            "2026-11-27T10:00:00.123456Z"
        );
        assert_eq!(
            timestamp(951_782_400_000_001),
            "2000-02-29T00:00:00.000001Z"
        );
        assert_eq!(timestamp(-1), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn payloads_are_json_or_base64() {
        assert_eq!(payload(b"{\"a\":1}", "application/json"), json!({"a": 1}));
        assert_eq!(
            payload(b"{\"a\":1}", "application/octet-stream"),
            json!({"base64": "eyJhIjoxfQ=="})
        );
        assert_eq!(
            payload(b"not json", "application/json"),
            json!({"base64": "bm90IGpzb24="})
        );
        assert_eq!(payload(b"", "application/json"), Value::Null);
    }
}
