//! The commit tail: the most recently committed events, decoded once by the committer and
//! shared by every emitter whose subscriber is near the end of the log. Without it, N live
//! subscribers would read and decode each new event from storage N times.
//!
//! It holds a contiguous run of positions ending at the committed mark, at most
//! `commit_tail_events_max` events and `commit_tail_bytes_max` bytes; older events fall out
//! of the front. An emitter whose position is before the front reads storage instead, so the
//! tail bounds memory and never what a subscriber can be given.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

use exesdb_types::RecordedEvent;

/// Recent committed events, in position order.
pub(crate) struct CommitTail {
    events_max: usize,
    bytes_max: u64,
    inner: RwLock<TailEvents>,
}

#[derive(Default)]
struct TailEvents {
    /// The position of `events[0]`.
    first: u64,
    events: VecDeque<Arc<RecordedEvent>>,
    bytes: u64,
}

impl TailEvents {
    fn next(&self) -> u64 {
        self.first + self.events.len() as u64
    }
}

/// What a read of the tail found.
pub(crate) struct TailRead {
    /// The events the reader wanted.
    pub events: Vec<Arc<RecordedEvent>>,
    /// Where the reader's next read starts.
    pub next: u64,
}

impl CommitTail {
    /// An empty tail; with a bound of 0 it keeps nothing, and every read goes to storage.
    pub(crate) fn new(events_max: usize, bytes_max: u64) -> Self {
        CommitTail {
            events_max,
            bytes_max,
            inner: RwLock::new(TailEvents::default()),
        }
    }

    /// Whether it keeps anything (the committer builds no events for a tail that is off).
    pub(crate) fn enabled(&self) -> bool {
        self.events_max > 0 && self.bytes_max > 0
    }

    /// Adds the events of one commit, which start at `first_position`. Called by the committer
    /// before it announces the commit, so a woken emitter finds them here. Events that do not
    /// follow the tail's last (after a storage reopen, say) replace it, so it never has a gap.
    pub(crate) fn push(&self, first_position: u64, events: Vec<RecordedEvent>) {
        if !self.enabled() || events.is_empty() {
            return;
        }
        let mut tail = self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if tail.next() != first_position {
            *tail = TailEvents {
                first: first_position,
                ..TailEvents::default()
            };
        }
        for event in events {
            tail.bytes += event.size_bytes();
            tail.events.push_back(Arc::new(event));
        }
        while tail.events.len() > self.events_max
            || (tail.bytes > self.bytes_max && tail.events.len() > 1)
        {
            if let Some(old) = tail.events.pop_front() {
                tail.bytes -= old.size_bytes();
                tail.first += 1;
            }
        }
    }

    /// The events from `from` up to `until` (exclusive) that `wants` accepts: at most
    /// `count_max` of them, stopping once they hold `bytes_max` bytes. Looking at an event
    /// costs a pointer and a comparison, so a sparse selection looks through the whole tail in
    /// one read. `None` when `from` is no longer (or not yet) in the tail: read storage then.
    pub(crate) fn read(
        &self,
        from: u64,
        until: u64,
        count_max: u64,
        bytes_max: u64,
        wants: impl Fn(&RecordedEvent) -> bool,
    ) -> Option<TailRead> {
        if !self.enabled() {
            return None;
        }
        let tail = self
            .inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if from < tail.first || from >= tail.next() || until <= from {
            return None;
        }
        let start = usize::try_from(from - tail.first).ok()?;
        let span = until.min(tail.next()) - from;
        let mut events = Vec::new();
        let mut bytes = 0u64;
        let mut next = from;
        for event in tail.events.range(start..).take(usize::try_from(span).ok()?) {
            next = event.position + 1;
            if wants(event) {
                bytes += event.size_bytes();
                events.push(event.clone());
                if bytes >= bytes_max || events.len() as u64 >= count_max {
                    break;
                }
            }
        }
        Some(TailRead { events, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: u64, bytes: usize) -> RecordedEvent {
        RecordedEvent {
            stream_id: format!("s-{}", position % 3),
            event_number: position,
            position,
            event_id: uuid::Uuid::now_v7(),
            event_type: "T".into(),
            data: vec![0; bytes],
            metadata: Vec::new(),
            data_content_type: String::new(),
            metadata_content_type: String::new(),
            created_micros: 0,
        }
    }

    fn positions(read: &TailRead) -> Vec<u64> {
        read.events.iter().map(|event| event.position).collect()
    }

    #[test]
    fn keeps_the_newest_events_within_both_bounds() {
        let tail = CommitTail::new(4, u64::MAX);
        tail.push(0, (0..6).map(|p| event(p, 1)).collect());
        assert!(tail.read(1, 6, 100, u64::MAX, |_| true).is_none());
        let read = tail
            .read(2, 6, 100, u64::MAX, |_| true)
            .expect("in the tail");
        assert_eq!(positions(&read), vec![2, 3, 4, 5]);
        assert_eq!(read.next, 6);

        let by_bytes = CommitTail::new(100, 250);
        by_bytes.push(10, (10..15).map(|p| event(p, 100)).collect());
        assert!(by_bytes.read(12, 15, 100, u64::MAX, |_| true).is_none());
        let read = by_bytes
            .read(13, 15, 100, u64::MAX, |_| true)
            .expect("kept");
        assert_eq!(positions(&read), vec![13, 14]);
    }

    #[test]
    fn reads_respect_until_count_and_byte_bounds_and_filters() {
        let tail = CommitTail::new(100, u64::MAX);
        tail.push(0, (0..10).map(|p| event(p, 10)).collect());
        let read = tail.read(0, 5, 100, u64::MAX, |_| true).expect("in");
        assert_eq!((positions(&read), read.next), ((0..5).collect(), 5));
        let read = tail.read(3, 10, 2, u64::MAX, |_| true).expect("in");
        assert_eq!((positions(&read), read.next), (vec![3, 4], 5));
        let read = tail
            .read(0, 10, 2, u64::MAX, |e| e.stream_id == "s-2")
            .expect("in");
        assert_eq!((positions(&read), read.next), (vec![2, 5], 6));
        // 14 bytes an event (data, stream id, type): the third reaches 40.
        let read = tail.read(0, 10, 100, 40, |_| true).expect("in");
        assert_eq!((positions(&read), read.next), (vec![0, 1, 2], 3));
        let read = tail
            .read(0, 10, 100, u64::MAX, |e| e.stream_id == "s-1")
            .expect("in");
        assert_eq!((positions(&read), read.next), (vec![1, 4, 7], 10));
        assert!(tail.read(10, 11, 100, u64::MAX, |_| true).is_none());
    }

    #[test]
    fn a_gap_restarts_the_tail_and_a_zero_bound_keeps_nothing() {
        let tail = CommitTail::new(100, u64::MAX);
        tail.push(0, (0..3).map(|p| event(p, 1)).collect());
        tail.push(5, (5..7).map(|p| event(p, 1)).collect());
        assert!(tail.read(2, 7, 100, u64::MAX, |_| true).is_none());
        let read = tail.read(5, 7, 100, u64::MAX, |_| true).expect("in");
        assert_eq!(positions(&read), vec![5, 6]);

        let off = CommitTail::new(0, u64::MAX);
        off.push(0, vec![event(0, 1)]);
        assert!(off.read(0, 1, 100, u64::MAX, |_| true).is_none());
    }
}
