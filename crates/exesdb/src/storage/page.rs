//! [`EventPage`]: the events of one read, left in the log values they were read from. A read
//! checks every record (checksum, framing, text) and notes where each field lies; the reader
//! then borrows the fields ([`EventRef`]) instead of receiving an owned copy of each, which
//! cost six allocations and as many frees an event.

use std::fmt;

use uuid::Uuid;

use exesdb_types::{EventRef, RecordedEvent};

/// The events of a read, in the read's order. Cheap to move between threads: it holds the log
/// values (shared, reference-counted bytes) and where each event's fields are in them.
pub struct EventPage {
    values: Vec<fjall::Slice>,
    entries: Vec<Entry>,
    /// The first entry of the last value, and the bytes its entries' records use of it.
    last_value_entries: usize,
    last_value_used: usize,
}

/// One event: which value holds it, its fixed-size fields, and its other fields' places.
struct Entry {
    value: u32,
    position: u64,
    event_number: u64,
    event_id: Uuid,
    created_micros: i64,
    stream_id: Span,
    event_type: Span,
    data: Span,
    metadata: Span,
    data_content_type: Span,
    metadata_content_type: Span,
}

/// A field's bytes in its value.
#[derive(Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// Where `field` lies in `value`; an empty span if it does not lie inside it.
    fn of(value: &[u8], field: &[u8]) -> Span {
        let base = value.as_ptr() as usize;
        let start = (field.as_ptr() as usize).wrapping_sub(base);
        match start.checked_add(field.len()) {
            Some(end) if start <= value.len() && end <= value.len() => Span {
                // Log values are far below 4 GiB (a chunk closes at 32 KiB, an event is
                // bounded by the append limits).
                start: start as u32,
                end: end as u32,
            },
            _ => Span { start: 0, end: 0 },
        }
    }

    fn bytes(self, value: &[u8]) -> &[u8] {
        value
            .get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    /// The field as text, without checking it again: checking costs more than the rest of
    /// lending an event (a quarter of a reader's time, measured).
    ///
    /// Only for a span [`Span::of`] made from a `&str` lying inside this same `value`.
    fn text(self, value: &[u8]) -> &str {
        let bytes = self.bytes(value);
        // SAFETY: the span was made by `Span::of` from a `&str` (valid UTF-8) that lies
        // inside `value`, and `value` is a `fjall::Slice`, whose bytes never change (or the
        // compact copy of it that `seal_last_value` made, the span moved with its bytes): so
        // these are exactly that string's bytes. An empty span is the empty string.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }
}

impl EventPage {
    /// An empty page with room for `events` (a hint, bounded here).
    pub(crate) fn with_capacity(events: u64) -> Self {
        const PREALLOCATED_EVENTS_MAX: u64 = 16_384;
        EventPage {
            values: Vec::new(),
            entries: Vec::with_capacity(events.min(PREALLOCATED_EVENTS_MAX) as usize),
            last_value_entries: 0,
            last_value_used: 0,
        }
    }

    /// How many events it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The event at `index` in the read's order.
    pub fn get(&self, index: usize) -> Option<EventRef<'_>> {
        self.entries.get(index).map(|entry| self.event(entry))
    }

    /// The first event.
    pub fn first(&self) -> Option<EventRef<'_>> {
        self.get(0)
    }

    /// The last event.
    pub fn last(&self) -> Option<EventRef<'_>> {
        self.entries.last().map(|entry| self.event(entry))
    }

    /// The events, in the read's order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = EventRef<'_>> + ExactSizeIterator {
        self.entries.iter().map(|entry| self.event(entry))
    }

    /// Owned copies of the events.
    pub fn to_events(&self) -> Vec<RecordedEvent> {
        self.iter().map(|event| event.to_event()).collect()
    }

    fn event(&self, entry: &Entry) -> EventRef<'_> {
        let value: &[u8] = self
            .values
            .get(entry.value as usize)
            .map(|value| &value[..])
            .unwrap_or_default();
        EventRef {
            stream_id: entry.stream_id.text(value),
            event_number: entry.event_number,
            position: entry.position,
            event_id: entry.event_id,
            event_type: entry.event_type.text(value),
            data: entry.data.bytes(value),
            metadata: entry.metadata.bytes(value),
            data_content_type: entry.data_content_type.text(value),
            metadata_content_type: entry.metadata_content_type.text(value),
            created_micros: entry.created_micros,
        }
    }

    /// Adds `event`, read from `value` (a log value). A field that does not lie inside
    /// `value` is lent back empty: [`EventPage::event`] relies on it. Events of one value
    /// added one after another share it.
    pub(crate) fn push(&mut self, value: &fjall::Slice, event: &EventRef<'_>) {
        let same_value = self
            .values
            .last()
            .is_some_and(|last| last.as_ptr() == value.as_ptr() && last.len() == value.len());
        if !same_value {
            self.seal_last_value();
            self.values.push(value.clone());
            self.last_value_entries = self.entries.len();
            self.last_value_used = 0;
        }
        let bytes: &[u8] = value;
        let entry = Entry {
            value: (self.values.len() - 1) as u32,
            position: event.position,
            event_number: event.event_number,
            event_id: event.event_id,
            created_micros: event.created_micros,
            stream_id: Span::of(bytes, event.stream_id.as_bytes()),
            event_type: Span::of(bytes, event.event_type.as_bytes()),
            data: Span::of(bytes, event.data),
            metadata: Span::of(bytes, event.metadata),
            data_content_type: Span::of(bytes, event.data_content_type.as_bytes()),
            metadata_content_type: Span::of(bytes, event.metadata_content_type.as_bytes()),
        };
        self.last_value_used += entry.covered().len();
        self.entries.push(entry);
    }

    /// Ends the page: see [`Self::seal_last_value`].
    pub(crate) fn finish(mut self) -> Self {
        self.seal_last_value();
        self
    }

    /// Keeps the last value only if its events use a good part of it; otherwise puts a copy
    /// of just their fields in its place. A read that takes one event in many chunks (a
    /// filter, an index) so holds about its events' bytes, not a chunk for each.
    fn seal_last_value(&mut self) {
        const PINNED_PER_USED_MAX: usize = 4;
        let Some(last) = self.values.last() else {
            return;
        };
        if last.len() <= self.last_value_used.saturating_mul(PINNED_PER_USED_MAX) {
            return;
        }
        let mut compact = Vec::with_capacity(self.last_value_used);
        for entry in &mut self.entries[self.last_value_entries..] {
            let covered = entry.covered();
            let moved_to = compact.len();
            compact.extend_from_slice(
                Span {
                    start: covered.start as u32,
                    end: covered.end as u32,
                }
                .bytes(last),
            );
            entry.move_fields(covered.start, moved_to);
        }
        if let Some(slot) = self.values.last_mut() {
            *slot = fjall::Slice::from(compact);
        }
    }
}

impl Entry {
    fn spans(&self) -> [Span; 6] {
        [
            self.stream_id,
            self.event_type,
            self.data,
            self.metadata,
            self.data_content_type,
            self.metadata_content_type,
        ]
    }

    /// The bytes of its value from its first field to its last: inside its record.
    fn covered(&self) -> std::ops::Range<usize> {
        let spans = self.spans();
        let start = spans.iter().map(|span| span.start).min().unwrap_or(0);
        let end = spans.iter().map(|span| span.end).max().unwrap_or(0);
        start as usize..end.max(start) as usize
    }

    /// Moves every field by the same distance: the bytes at `from` are now at `to`.
    fn move_fields(&mut self, from: usize, to: usize) {
        let shift = |span: &mut Span| {
            span.start = (span.start as usize - from + to) as u32;
            span.end = (span.end as usize - from + to) as u32;
        };
        shift(&mut self.stream_id);
        shift(&mut self.event_type);
        shift(&mut self.data);
        shift(&mut self.metadata);
        shift(&mut self.data_content_type);
        shift(&mut self.metadata_content_type);
    }
}

impl fmt::Debug for EventPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::codec::{Chunk, ChunkWriter, EventRecord, decode_event, read_event};

    fn record<'a>(stream_id: &'a str, number: u64, data: &'a [u8]) -> EventRecord<'a> {
        EventRecord {
            stream_id,
            event_number: number,
            event_id: Uuid::from_u128(u128::from(number) * 7 + 1),
            created_micros: 1_700_000_000_000_000 + number as i64,
            event_type: if number.is_multiple_of(2) {
                "Placed"
            } else {
                "Geändert"
            },
            data_content_type: "application/json",
            metadata_content_type: if number.is_multiple_of(3) {
                ""
            } else {
                "text/plain"
            },
            data,
            metadata: if number.is_multiple_of(2) {
                b""
            } else {
                b"meta"
            },
        }
    }

    #[test]
    fn a_page_lends_every_field_as_the_owned_decode_has_it() {
        let payloads: [&[u8]; 3] = [b"", b"{\"a\":1}", &[0xFF; 300]];
        let mut values = Vec::new();
        for (first, stream) in [(10u64, "order-1"), (14, "ünïcode-2")] {
            let mut writer = ChunkWriter::default();
            for number in 0..4 {
                writer.push(&record(stream, number, payloads[number as usize % 3]));
            }
            values.push((first, fjall::Slice::from(writer.finish())));
        }
        let mut page = EventPage::with_capacity(8);
        let mut owned = Vec::new();
        for (first, value) in &values {
            let chunk = Chunk::open(value).expect("opens");
            for index in 0..chunk.len() {
                let bytes = chunk.record(index).expect("frames").expect("there");
                let position = first + index as u64;
                page.push(value, &read_event(position, bytes).expect("reads"));
                owned.push(decode_event(position, bytes).expect("decodes"));
            }
        }
        assert_eq!(page.values.len(), 2, "one entry per value, not per event");
        assert_eq!(page.len(), 8);
        assert_eq!(page.to_events(), owned);
        assert_eq!(page.last().map(|event| event.position), Some(17));
        assert_eq!(
            page.iter()
                .rev()
                .map(|event| event.position)
                .collect::<Vec<_>>(),
            [17, 16, 15, 14, 13, 12, 11, 10]
        );
        assert_eq!(page.get(8), None);
    }

    #[test]
    fn a_page_of_one_event_in_each_of_many_chunks_keeps_copies_not_the_chunks() {
        let payload = [0x5Au8; 200];
        let mut page = EventPage::with_capacity(100);
        let mut owned = Vec::new();
        let mut chunk_bytes = 0;
        for first in (0..100u64).map(|n| n * 64) {
            let mut writer = ChunkWriter::default();
            for number in 0..64 {
                writer.push(&record("ünïcode-7", first + number, &payload));
            }
            let value = fjall::Slice::from(writer.finish());
            chunk_bytes += value.len();
            // One event of each chunk, as a filter or an index would take it.
            let chunk = Chunk::open(&value).expect("opens");
            let index = (first / 64 % 64) as usize;
            let bytes = chunk.record(index).expect("frames").expect("there");
            let position = first + index as u64;
            page.push(&value, &read_event(position, bytes).expect("reads"));
            owned.push(decode_event(position, bytes).expect("decodes"));
        }
        let page = page.finish();
        let held: usize = page.values.iter().map(|value| value.len()).sum();
        assert!(
            held * 20 < chunk_bytes,
            "the page holds {held} bytes of {chunk_bytes} read"
        );
        assert_eq!(page.to_events(), owned);
    }
}
