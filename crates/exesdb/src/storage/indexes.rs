//! The secondary indexes: every event by its type and by its stream's category, in global
//! position order. The entries are written in the events' own batch
//! ([`super::WriteBatch::append_event`] collects them, its commit writes them); reads go
//! through the index to the log, and check that each record is one the index should hold.
//!
//! One entry holds the positions of one index in one batch (a posting list), so a batch of
//! `k` events of one type and category writes two entries, not `2k`: the inserts, not the
//! bytes, are what an append pays for.
//!
//! Key: the index kind (`t` for type, `c` for category), the name's length (u16 BE), the name,
//! the first position of the entry (u64 BE). The length keeps one name from being a prefix of
//! another's keys (an event type may hold any character). Value: a CRC-32 (u32 BE) of the
//! rest, then each further position as its distance from the one before (LEB128). Entries of
//! one index never overlap: a batch's positions follow every earlier batch's.

use std::collections::HashMap;
use std::ops::ControlFlow;

use fjall::{Keyspace, Readable, Snapshot};

use exesdb_types::{
    Direction, EventRef, IndexedStream, ReadAllRequest, RecordedEvent, category_of,
};

use super::codec::{EventRecord, decode_event_header};
use super::{
    Accepted, Engine, EventPage, LogReader, Scan, StorageError, corrupt, decode_u64, walk_log,
};

const EVENT_TYPE_KIND: u8 = b't';
const CATEGORY_KIND: u8 = b'c';

/// Events read from the log per backfill batch.
const BACKFILL_BATCH_EVENTS: usize = 16_384;

/// The keys of an index, up to (not including) the position.
fn index_prefix(index: IndexedStream<'_>) -> Vec<u8> {
    let mut prefix = Vec::new();
    write_prefix(&mut prefix, index);
    prefix
}

fn write_prefix(out: &mut Vec<u8>, index: IndexedStream<'_>) {
    let (kind, name) = match index {
        IndexedStream::EventType(name) => (EVENT_TYPE_KIND, name),
        IndexedStream::Category(name) => (CATEGORY_KIND, name),
    };
    // Event types are at most 256 bytes and stream ids 512: the length fits.
    let length = u16::try_from(name.len()).unwrap_or(u16::MAX);
    out.clear();
    out.push(kind);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
}

fn index_key(prefix: &[u8], position: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 8);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&position.to_be_bytes());
    key
}

/// The index entries of one batch: for each index its events' positions, in order.
#[derive(Default)]
pub(super) struct Postings {
    lists: HashMap<Vec<u8>, Vec<u64>>,
    /// Where an index's prefix is built for the look-up (no allocation per event).
    scratch: Vec<u8>,
}

impl Postings {
    /// Adds the event at `position` of `stream_id`, of type `event_type`, to its indexes.
    pub(super) fn add(&mut self, stream_id: &str, event_type: &str, position: u64) {
        let by_category = category_of(stream_id).map(IndexedStream::Category);
        for index in std::iter::once(IndexedStream::EventType(event_type)).chain(by_category) {
            write_prefix(&mut self.scratch, index);
            match self.lists.get_mut(self.scratch.as_slice()) {
                Some(list) => list.push(position),
                None => {
                    self.lists.insert(self.scratch.clone(), vec![position]);
                }
            }
        }
    }

    /// Adds a record about to be written.
    pub(super) fn add_record(&mut self, record: &EventRecord<'_>, position: u64) {
        self.add(record.stream_id, record.event_type, position);
    }

    /// The entries to write: (key, value) per index.
    pub(super) fn into_entries(self) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> {
        self.lists
            .into_iter()
            .filter_map(|(prefix, mut positions)| {
                positions.sort_unstable();
                positions.dedup();
                let first = *positions.first()?;
                Some((index_key(&prefix, first), encode_posting(&positions)))
            })
    }
}

fn encode_posting(positions: &[u64]) -> Vec<u8> {
    let mut value = Vec::with_capacity(4 + positions.len());
    value.extend_from_slice(&[0; 4]);
    for pair in positions.windows(2) {
        let mut distance = pair[1] - pair[0];
        loop {
            let low = (distance & 0x7f) as u8;
            distance >>= 7;
            if distance == 0 {
                value.push(low);
                break;
            }
            value.push(low | 0x80);
        }
    }
    let crc = crc32fast::hash(&value[4..]);
    value[..4].copy_from_slice(&crc.to_be_bytes());
    value
}

/// The positions of an entry whose first position is `first`.
fn decode_posting(first: u64, value: &[u8]) -> Result<Vec<u64>, StorageError> {
    let bad = |detail: &str| StorageError::Corrupt {
        keyspace: "indexes",
        detail: format!("the entry at position {first}: {detail}"),
    };
    let (crc, distances) = value
        .split_first_chunk::<4>()
        .ok_or_else(|| bad("shorter than its checksum"))?;
    if crc32fast::hash(distances) != u32::from_be_bytes(*crc) {
        return Err(bad("fails its checksum"));
    }
    let mut positions = vec![first];
    let (mut distance, mut shift, mut at) = (0u64, 0u32, first);
    for byte in distances {
        if shift > 63 {
            return Err(bad("a distance is too long"));
        }
        distance |= u64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            at = at
                .checked_add(distance)
                .ok_or_else(|| bad("a position is out of range"))?;
            positions.push(at);
            (distance, shift) = (0, 0);
        }
    }
    if shift != 0 {
        return Err(bad("it ends inside a distance"));
    }
    Ok(positions)
}

/// The indexes that answer a filtered `$all` read, if any does: one per event type asked
/// for, or the category a stream prefix `<category>-` names. `None`: read the log.
fn indexes_for(request: &ReadAllRequest) -> Option<Vec<IndexedStream<'_>>> {
    if !request.event_types.is_empty() {
        let mut types: Vec<&str> = request.event_types.iter().map(String::as_str).collect();
        types.sort_unstable();
        types.dedup();
        return Some(types.into_iter().map(IndexedStream::EventType).collect());
    }
    // `order-` selects exactly the streams of category `order`.
    let prefix = request.stream_prefix.as_deref()?;
    let category = prefix.strip_suffix(exesdb_types::CATEGORY_SEPARATOR)?;
    (category_of(prefix) == Some(category)).then(|| vec![IndexedStream::Category(category)])
}

/// Positions read from an index, in the order of the read.
type Positions<'v> = Box<dyn Iterator<Item = Result<u64, StorageError>> + 'v>;

/// The positions an index holds, in `direction` from `from` (inclusive).
fn positions<'v>(
    view: &'v Snapshot,
    keyspace: &'v Keyspace,
    index: IndexedStream<'_>,
    from: Option<u64>,
    direction: Direction,
) -> Positions<'v> {
    let prefix = index_prefix(index);
    let start = index_key(&prefix, 0);
    let end = index_key(&prefix, u64::MAX);
    let name_end = prefix.len();
    let entry = move |guard: fjall::Guard| -> Result<Vec<u64>, StorageError> {
        let (key, value) = guard.into_inner()?;
        let first = decode_u64(key.get(name_end..).unwrap_or_default(), "indexes")?;
        decode_posting(first, &value)
    };
    let expand = |entry: Result<Vec<u64>, StorageError>| match entry {
        Ok(positions) => positions.into_iter().map(Ok).collect::<Vec<_>>(),
        Err(error) => vec![Err(error)],
    };
    match direction {
        Direction::Forward => {
            let from = from.unwrap_or(0);
            // The entry that holds `from` starts at or before it.
            let holding = view
                .range(keyspace, start..=index_key(&prefix, from))
                .next_back()
                .map(|guard| guard.key().map(|key| key.to_vec()));
            let first_key = match holding {
                Some(Ok(key)) => key,
                Some(Err(error)) => return Box::new(std::iter::once(Err(error.into()))),
                None => index_key(&prefix, from),
            };
            Box::new(
                view.range(keyspace, first_key..=end)
                    .map(entry)
                    .flat_map(expand)
                    .filter(move |position| position.as_ref().map_or(true, |p| *p >= from)),
            )
        }
        Direction::Backward => {
            let from = from.unwrap_or(u64::MAX);
            Box::new(
                view.range(keyspace, start..=index_key(&prefix, from))
                    .rev()
                    .map(entry)
                    .flat_map(move |entry| {
                        let mut positions = expand(entry);
                        positions.reverse();
                        positions
                    })
                    .filter(move |position| position.as_ref().map_or(true, |p| *p <= from)),
            )
        }
    }
}

/// Where a read through the indexes goes: from a position (inclusive; `None`: the first, or
/// the last backward), in a direction, stopping at `count` events or `bytes_max` bytes.
#[derive(Clone, Copy)]
struct Read {
    from: Option<u64>,
    count: u64,
    direction: Direction,
    bytes_max: Option<u64>,
}

/// Merges several indexes' positions into one order (indexes of distinct types never share a
/// position, so nothing is repeated).
struct Merged<'v> {
    sources: Vec<std::iter::Peekable<Positions<'v>>>,
    direction: Direction,
}

impl Iterator for Merged<'_> {
    type Item = Result<u64, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut chosen: Option<(usize, u64)> = None;
        for (at, source) in self.sources.iter_mut().enumerate() {
            match source.peek() {
                None => {}
                Some(Err(_)) => return source.next(),
                Some(Ok(position)) => {
                    let better = chosen.is_none_or(|(_, best)| match self.direction {
                        Direction::Forward => *position < best,
                        Direction::Backward => *position > best,
                    });
                    if better {
                        chosen = Some((at, *position));
                    }
                }
            }
        }
        let (at, _) = chosen?;
        self.sources[at].next()
    }
}

impl Engine {
    /// The event at an index entry's position, checked to be one of `indexes` holds.
    /// Returns it borrowed from its log value, with the value.
    fn indexed_record<'r>(
        log: &'r mut LogReader<'_>,
        indexes: &[IndexedStream<'_>],
        position: u64,
    ) -> Result<(&'r fjall::Slice, EventRef<'r>), StorageError> {
        let missing = || StorageError::Corrupt {
            keyspace: "indexes",
            detail: format!("{indexes:?} point at missing position {position}"),
        };
        let (value, event) = log.event_ref(position)?.ok_or_else(missing)?;
        if !indexes
            .iter()
            .any(|index| index.matches(event.stream_id, event.event_type))
        {
            return Err(StorageError::Corrupt {
                keyspace: "indexes",
                detail: format!(
                    "{indexes:?} point at position {position}, which holds event {} of \
                     stream {} (type {})",
                    event.event_number, event.stream_id, event.event_type
                ),
            });
        }
        Ok((value, event))
    }

    /// Up to `count` events of an index from position `from` (inclusive; `None` starts at the
    /// first event, or the last backward). `Ok(None)` when the index holds no event at all,
    /// as a stream read answers for a stream with none.
    pub(crate) fn read_index(
        &self,
        index: IndexedStream<'_>,
        from: Option<u64>,
        count: u64,
        direction: Direction,
        bytes_max: Option<u64>,
    ) -> Result<Option<Vec<RecordedEvent>>, StorageError> {
        let view = self.view();
        if view
            .prefix(&self.indexes, index_prefix(index))
            .next()
            .is_none()
        {
            return Ok(None);
        }
        let read = Read {
            from,
            count,
            direction,
            bytes_max,
        };
        self.read_through(&view, &[index], read, |_| true)
            .map(|page| Some(page.to_events()))
    }

    /// A filtered `$all` read through the indexes when one answers it (see [`indexes_for`]);
    /// `None` when the log must be read.
    pub(super) fn read_all_indexed(
        &self,
        request: &ReadAllRequest,
    ) -> Option<Result<EventPage, StorageError>> {
        let indexes = indexes_for(request)?;
        let read = Read {
            from: request.from_position,
            count: request.count,
            direction: request.direction,
            bytes_max: request.bytes_max,
        };
        let in_prefix = |event: &EventRef<'_>| {
            request
                .stream_prefix
                .as_ref()
                .is_none_or(|prefix| event.stream_id.starts_with(prefix.as_str()))
        };
        Some(self.read_through(&self.view(), &indexes, read, in_prefix))
    }

    /// The events `keep` accepts among those of `indexes`, merged into one order.
    fn read_through(
        &self,
        view: &Snapshot,
        indexes: &[IndexedStream<'_>],
        read: Read,
        keep: impl Fn(&EventRef<'_>) -> bool,
    ) -> Result<EventPage, StorageError> {
        let merged = Merged {
            sources: indexes
                .iter()
                .map(|index| {
                    positions(view, &self.indexes, *index, read.from, read.direction).peekable()
                })
                .collect(),
            direction: read.direction,
        };
        let mut log = LogReader::new(view, &self.log);
        let mut page = EventPage::with_capacity(read.count);
        let mut bytes = 0u64;
        for position in merged {
            if page.len() as u64 >= read.count || read.bytes_max.is_some_and(|max| bytes >= max) {
                break;
            }
            let (value, event) = Self::indexed_record(&mut log, indexes, position?)?;
            if keep(&event) {
                bytes += event.size_bytes();
                page.push(value, &event);
            }
        }
        Ok(page.finish())
    }

    /// The events of an index over `scan` (`count_max` bounds the events accepted): a
    /// subscription by event type or category catches up in the index's size, not the
    /// log's. Returns the events `matches` accepts with the position the next scan starts at.
    pub(super) fn scan_index(
        &self,
        index: IndexedStream<'_>,
        scan: Scan,
        matches: impl Fn(&RecordedEvent) -> bool,
    ) -> Result<(Vec<RecordedEvent>, u64), StorageError> {
        let view = self.view();
        let mut accepted = Accepted::new(scan.bytes_max);
        if scan.from >= scan.until {
            return Ok((accepted.events, scan.from));
        }
        let entries = positions(
            &view,
            &self.indexes,
            index,
            Some(scan.from),
            Direction::Forward,
        );
        let mut log = LogReader::new(&view, &self.log);
        for position in entries {
            let position = position?;
            if position >= scan.until {
                break;
            }
            let event = Self::indexed_record(&mut log, &[index], position)?
                .1
                .to_event();
            if matches(&event)
                && (accepted.push(event) || accepted.events.len() as u64 >= scan.count_max)
            {
                return Ok((accepted.events, position + 1));
            }
        }
        // The index holds nothing more before `until`.
        Ok((accepted.events, scan.until))
    }

    /// Builds the indexes of every event in the log: the upgrade of a directory written
    /// before they existed. Entries are keyed by position, so a backfill cut short by a crash
    /// is simply run again. Durable when this returns.
    pub(super) fn backfill_indexes(&self) -> Result<u64, StorageError> {
        let mut from = 0u64;
        let mut indexed = 0u64;
        loop {
            let view = self.view();
            let mut postings = Postings::default();
            let mut read = 0usize;
            walk_log(&view, &self.log, Some(from), Direction::Forward, |record| {
                if read >= BACKFILL_BATCH_EVENTS {
                    return Ok(ControlFlow::Break(()));
                }
                let (stream_id, _, event_type) =
                    decode_event_header(record.bytes).map_err(corrupt("log"))?;
                postings.add(stream_id, event_type, record.position);
                from = record.position + 1;
                read += 1;
                Ok(ControlFlow::Continue(()))
            })?;
            if read == 0 {
                break;
            }
            let mut batch = self.db.batch();
            for (key, value) in postings.into_entries() {
                batch.insert(&self.indexes, key, value);
            }
            batch.commit()?;
            indexed += read as u64;
        }
        self.db.persist(fjall::PersistMode::SyncAll)?;
        Ok(indexed)
    }

    /// Test-only: removes every index entry, leaving the data as a build of format 1 wrote
    /// it.
    #[cfg(test)]
    pub(super) fn clear_indexes_for_test(&self) {
        let view = self.view();
        let mut batch = self.db.batch();
        for guard in view.iter(&self.indexes) {
            if let Ok(key) = guard.key() {
                batch.remove(&self.indexes, key);
            }
        }
        batch.commit().expect("clears the indexes");
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::sync::Arc;

    use uuid::Uuid;

    use super::super::commit_guard::CommitMarker;
    use super::super::{FORMAT_FILE, Storage};
    use super::*;
    use crate::config::StorageSettings;

    /// (stream, type) of each event, in position order.
    const EVENTS: [(&str, &str); 7] = [
        ("order-1", "Placed"),
        ("customer-1", "Registered"),
        ("order-2", "Placed"),
        ("order-1", "Shipped"),
        ("nocategory", "Placed"),
        ("customer-1", "Moved"),
        ("order-2", "Shipped"),
    ];

    /// Writes `EVENTS` in batches of three, so an index has several entries, and a read from
    /// a position inside one must find it.
    fn write_events(engine: &Arc<Engine>) {
        let mut numbers = std::collections::HashMap::new();
        let mut batch = engine.write_batch();
        for (position, (stream_id, event_type)) in EVENTS.iter().enumerate() {
            if position > 0 && position % 3 == 0 {
                let full = std::mem::replace(&mut batch, engine.write_batch());
                full.commit(CommitMarker {
                    sequence: position as u64,
                    next_position: position as u64,
                })
                .expect("commits");
            }
            let number = numbers.entry(*stream_id).or_insert(0u64);
            let record = EventRecord {
                stream_id,
                event_number: *number,
                event_id: Uuid::from_u128(position as u128 + 1),
                created_micros: 0,
                event_type,
                data_content_type: "",
                metadata_content_type: "",
                data: b"{}",
                metadata: b"",
            };
            batch.append_event(position as u64, &record, false);
            batch.set_stream_head(stream_id, *number);
            *number += 1;
        }
        batch
            .commit(CommitMarker {
                sequence: EVENTS.len() as u64,
                next_position: EVENTS.len() as u64,
            })
            .expect("commits");
    }

    /// The positions `index` should hold, from the events themselves.
    fn expected(index: IndexedStream<'_>) -> Vec<u64> {
        EVENTS
            .iter()
            .enumerate()
            .filter(|(_, (stream_id, event_type))| match index {
                IndexedStream::EventType(name) => *event_type == name,
                IndexedStream::Category(name) => category_of(stream_id) == Some(name),
            })
            .map(|(position, _)| position as u64)
            .collect()
    }

    fn read(
        engine: &Engine,
        index: IndexedStream<'_>,
        from: Option<u64>,
        direction: Direction,
    ) -> Vec<u64> {
        engine
            .read_index(index, from, 100, direction, None)
            .expect("reads")
            .expect("the index holds events")
            .iter()
            .map(|event| event.position)
            .collect()
    }

    const INDEXES: [IndexedStream<'static>; 6] = [
        IndexedStream::EventType("Placed"),
        IndexedStream::EventType("Shipped"),
        IndexedStream::EventType("Registered"),
        IndexedStream::EventType("Moved"),
        IndexedStream::Category("order"),
        IndexedStream::Category("customer"),
    ];

    #[test]
    fn an_index_reads_its_events_in_position_order_both_ways() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path(), &StorageSettings::default()).expect("opens");
        let engine = storage.engine().expect("engine");
        write_events(&engine);
        for index in INDEXES {
            let forward = expected(index);
            assert_eq!(read(&engine, index, None, Direction::Forward), forward);
            let backward: Vec<u64> = forward.iter().rev().copied().collect();
            assert_eq!(read(&engine, index, None, Direction::Backward), backward);
            // From every position, inside an entry or between two, both ways.
            for from in 0..=EVENTS.len() as u64 {
                let after: Vec<u64> = forward.iter().copied().filter(|p| *p >= from).collect();
                assert_eq!(read(&engine, index, Some(from), Direction::Forward), after);
                let before: Vec<u64> = backward.iter().copied().filter(|p| *p <= from).collect();
                assert_eq!(
                    read(&engine, index, Some(from), Direction::Backward),
                    before
                );
            }
        }
        let holds_nothing = |index| {
            engine
                .read_index(index, None, 10, Direction::Forward, None)
                .expect("reads")
                .is_none()
        };
        assert!(
            holds_nothing(IndexedStream::Category("nocategory")),
            "a stream with no '-' has no category"
        );
        assert!(
            holds_nothing(IndexedStream::EventType("Place")),
            "an event type is not matched by its prefix"
        );
    }

    #[test]
    fn a_filtered_read_of_all_merges_the_indexes_it_asks_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path(), &StorageSettings::default()).expect("opens");
        let engine = storage.engine().expect("engine");
        write_events(&engine);
        let positions = |request: ReadAllRequest| -> Vec<u64> {
            engine
                .read_all(&request)
                .expect("reads")
                .iter()
                .map(|event| event.position)
                .collect()
        };
        let types = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let request = ReadAllRequest {
            count: 100,
            event_types: types(&["Shipped", "Registered", "Shipped"]),
            ..ReadAllRequest::default()
        };
        assert_eq!(positions(request.clone()), vec![1, 3, 6]);
        let backward = ReadAllRequest {
            direction: Direction::Backward,
            from_position: Some(5),
            ..request.clone()
        };
        assert_eq!(positions(backward), vec![3, 1]);
        let limited = ReadAllRequest {
            count: 2,
            ..request.clone()
        };
        assert_eq!(positions(limited), vec![1, 3]);
        let with_prefix = ReadAllRequest {
            stream_prefix: Some("order-".into()),
            event_types: types(&["Placed"]),
            ..request.clone()
        };
        assert_eq!(positions(with_prefix), vec![0, 2]);
        // A category's prefix reads its index; any other prefix reads the log. Both answer the
        // same as the filter itself.
        for prefix in ["order-", "customer-", "order", "no"] {
            let read = ReadAllRequest {
                count: 100,
                stream_prefix: Some(prefix.into()),
                ..ReadAllRequest::default()
            };
            let wanted: Vec<u64> = EVENTS
                .iter()
                .enumerate()
                .filter(|(_, (stream_id, _))| stream_id.starts_with(prefix))
                .map(|(position, _)| position as u64)
                .collect();
            assert_eq!(positions(read), wanted, "prefix {prefix}");
        }
    }

    #[test]
    fn an_index_scan_stops_at_its_bounds_and_says_where_to_go_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path(), &StorageSettings::default()).expect("opens");
        let engine = storage.engine().expect("engine");
        write_events(&engine);
        let index = IndexedStream::Category("order");
        let scan = |from, until, count_max| Scan {
            from,
            until,
            count_max,
            bytes_max: None,
        };
        let positions = |events: Vec<RecordedEvent>| -> Vec<u64> {
            events.iter().map(|event| event.position).collect()
        };
        let (events, next) = engine
            .scan_index(index, scan(0, 7, 2), |_| true)
            .expect("scans");
        assert_eq!((positions(events), next), (vec![0, 2], 3));
        let (events, next) = engine
            .scan_index(index, scan(3, 6, 10), |_| true)
            .expect("scans");
        assert_eq!(
            (positions(events), next),
            (vec![3], 6),
            "until is exclusive"
        );
        let (events, next) = engine
            .scan_index(index, scan(0, 7, 10), |event| event.event_type == "Shipped")
            .expect("scans");
        assert_eq!((positions(events), next), (vec![3, 6], 7));
    }

    #[test]
    fn a_posting_list_decodes_to_its_positions_and_refuses_damage() {
        let positions = [7, 8, 9, 200, 70_000, u64::from(u32::MAX) * 3, u64::MAX - 1];
        let value = encode_posting(&positions);
        assert_eq!(decode_posting(7, &value).expect("decodes"), positions);
        assert_eq!(decode_posting(5, &encode_posting(&[5])).expect("one"), [5]);
        for at in 0..value.len() {
            let mut damaged = value.clone();
            damaged[at] ^= 0x10;
            assert!(decode_posting(7, &damaged).is_err(), "a flip at byte {at}");
        }
        assert!(decode_posting(7, &value[..3]).is_err(), "cut short");
    }

    #[test]
    fn a_directory_of_the_format_before_the_indexes_is_upgraded_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let storage = Storage::open(dir.path(), &StorageSettings::default()).expect("opens");
            let engine = storage.engine().expect("engine");
            write_events(&engine);
            // What a build of format 1 left: the same data with no index entries.
            engine.clear_indexes_for_test();
            assert!(
                engine
                    .read_index(INDEXES[0], None, 10, Direction::Forward, None)
                    .expect("reads")
                    .is_none()
            );
        }
        let format = dir.path().join(FORMAT_FILE);
        // Twice: a backfill that runs again (as after a crash before the new marker) leaves
        // each entry once.
        for _ in 0..2 {
            fs::write(&format, "exesdb-format 1\n").expect("write the old marker");
            let storage = Storage::open(dir.path(), &StorageSettings::default()).expect("upgrades");
            let engine = storage.engine().expect("engine");
            for index in INDEXES {
                assert_eq!(
                    read(&engine, index, None, Direction::Forward),
                    expected(index)
                );
            }
            let marker = fs::read_to_string(&format).expect("marker");
            assert_eq!(
                marker.trim(),
                format!("exesdb-format {}", super::super::FORMAT_VERSION)
            );
        }
    }
}
