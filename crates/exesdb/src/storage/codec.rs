//! Binary encoding of stored records. Each record starts with a format byte and a CRC-32 of
//! everything after it, checked on every decode, so a flipped bit is an error, never an event.
//!
//! The log keeps the records of consecutive positions together in a [chunk](ChunkWriter),
//! under the first one's position: a scan of the log then pays the storage engine's cost per
//! key once per chunk, not once per event (a key costs about 0.5 µs to iterate here, more
//! than the rest of an event's read). A value holding a lone event record, as format 2 and
//! earlier wrote, reads as a chunk of one.

use uuid::Uuid;

use exesdb_types::{EventRef, RecordedEvent};

/// Format byte of event records written by this build.
const EVENT_RECORD_FORMAT: u8 = 1;
/// Format byte of snapshot records written by this build.
const SNAPSHOT_RECORD_FORMAT: u8 = 1;
const HEADER_BYTES: usize = 5;

/// Why a stored record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CorruptRecord(pub String);

/// An event as stored in the log: everything but the position, which is its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord<'a> {
    /// The event's stream.
    pub stream_id: &'a str,
    /// Its number in the stream.
    pub event_number: u64,
    /// Its id.
    pub event_id: Uuid,
    /// When it was recorded, µs since the Unix epoch.
    pub created_micros: i64,
    /// Its type.
    pub event_type: &'a str,
    /// How its data is encoded.
    pub data_content_type: &'a str,
    /// How its metadata is encoded.
    pub metadata_content_type: &'a str,
    /// The payload.
    pub data: &'a [u8],
    /// The writer's metadata.
    pub metadata: &'a [u8],
}

impl EventRecord<'_> {
    /// The stored bytes: format byte, checksum, fields.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    fn encoded_len(&self) -> usize {
        HEADER_BYTES
            + 2 * 4
            + 4 * 2
            + 8
            + 16
            + 8
            + self.stream_id.len()
            + self.event_type.len()
            + self.data_content_type.len()
            + self.metadata_content_type.len()
            + self.data.len()
            + self.metadata.len()
    }

    /// Appends the stored bytes to `out`.
    fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.reserve(self.encoded_len());
        out.push(EVENT_RECORD_FORMAT);
        out.extend_from_slice(&[0; 4]);
        put_short(out, self.stream_id.as_bytes());
        out.extend_from_slice(&self.event_number.to_be_bytes());
        out.extend_from_slice(self.event_id.as_bytes());
        out.extend_from_slice(&self.created_micros.to_be_bytes());
        put_short(out, self.event_type.as_bytes());
        put_short(out, self.data_content_type.as_bytes());
        put_short(out, self.metadata_content_type.as_bytes());
        put_long(out, self.data);
        put_long(out, self.metadata);
        seal(&mut out[start..]);
    }
}

/// Format byte of a log chunk.
const CHUNK_FORMAT: u8 = 2;
/// A chunk closes at this many events...
const CHUNK_EVENTS_MAX: usize = 64;
/// ...or once its records hold this many bytes (one larger event makes a chunk of its own).
/// Small enough that a read of one event through an index copies little besides it.
const CHUNK_BYTES_MAX: usize = 32 * 1024;

/// Builds a log chunk: a header (format byte, CRC-32 of the rest of the header, the record
/// count and each record's end offset, u32 BE) and the event records, each with its own
/// checksum. The header's checksum guards the framing, so a damaged offset is an error, not
/// a record cut in the wrong place.
#[derive(Debug, Default)]
pub struct ChunkWriter {
    ends: Vec<u32>,
    body: Vec<u8>,
}

impl ChunkWriter {
    /// Adds the record of the next position.
    pub fn push(&mut self, record: &EventRecord<'_>) {
        record.encode_into(&mut self.body);
        // Bodies stay far below 4 GiB: a chunk closes at CHUNK_BYTES_MAX, and one event is
        // bounded by the append limits.
        self.ends
            .push(u32::try_from(self.body.len()).unwrap_or(u32::MAX));
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Whether it takes no more records.
    pub fn is_full(&self) -> bool {
        self.ends.len() >= CHUNK_EVENTS_MAX || self.body.len() >= CHUNK_BYTES_MAX
    }

    /// The stored bytes; the writer is empty again after.
    pub fn finish(&mut self) -> Vec<u8> {
        let header = HEADER_BYTES + 4 + 4 * self.ends.len();
        let mut out = Vec::with_capacity(header + self.body.len());
        out.push(CHUNK_FORMAT);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(self.ends.len() as u32).to_be_bytes());
        for end in &self.ends {
            out.extend_from_slice(&end.to_be_bytes());
        }
        let crc = crc32fast::hash(&out[HEADER_BYTES..header]);
        out[1..HEADER_BYTES].copy_from_slice(&crc.to_be_bytes());
        out.extend_from_slice(&self.body);
        self.ends.clear();
        self.body.clear();
        out
    }
}

/// A log value opened for reading: the records of consecutive positions, the first at the
/// value's key. Each record is checked when it is decoded.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    /// Each record's end offset in `body` (u32 BE); empty for a lone record.
    ends: &'a [u8],
    body: &'a [u8],
}

impl<'a> Chunk<'a> {
    /// Opens a log value: a chunk, whose header is checked, or a lone event record.
    pub fn open(bytes: &'a [u8]) -> Result<Chunk<'a>, CorruptRecord> {
        Self::frame(bytes, true)
    }

    /// Opens a value `open` has already accepted, without computing the header's checksum
    /// again (its framing is still bounds-checked): a reader keeping a chunk for the next
    /// event reads it once per event.
    pub fn reopen(bytes: &'a [u8]) -> Result<Chunk<'a>, CorruptRecord> {
        Self::frame(bytes, false)
    }

    fn frame(bytes: &'a [u8], check_header: bool) -> Result<Chunk<'a>, CorruptRecord> {
        match bytes.first() {
            Some(&EVENT_RECORD_FORMAT) => Ok(Chunk {
                ends: &[],
                body: bytes,
            }),
            Some(&CHUNK_FORMAT) => {
                let truncated = || CorruptRecord("log chunk truncated".into());
                let count_bytes = bytes
                    .get(HEADER_BYTES..HEADER_BYTES + 4)
                    .ok_or_else(truncated)?;
                let count = u32::from_be_bytes([
                    count_bytes[0],
                    count_bytes[1],
                    count_bytes[2],
                    count_bytes[3],
                ]) as usize;
                let header = count
                    .checked_mul(4)
                    .and_then(|n| n.checked_add(HEADER_BYTES + 4))
                    .filter(|&n| n <= bytes.len())
                    .ok_or_else(truncated)?;
                let stored = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
                if check_header && crc32fast::hash(&bytes[HEADER_BYTES..header]) != stored {
                    return Err(CorruptRecord("log chunk header checksum mismatch".into()));
                }
                let chunk = Chunk {
                    ends: &bytes[HEADER_BYTES + 4..header],
                    body: &bytes[header..],
                };
                if count == 0 || chunk.end(count - 1) != chunk.body.len() {
                    return Err(CorruptRecord(
                        "log chunk records do not fill its body".into(),
                    ));
                }
                Ok(chunk)
            }
            Some(other) => Err(CorruptRecord(format!(
                "log value has format {other} (this build reads {EVENT_RECORD_FORMAT} and \
                 {CHUNK_FORMAT})"
            ))),
            None => Err(CorruptRecord("log value is empty".into())),
        }
    }

    /// How many records it holds (at least one).
    pub fn len(&self) -> usize {
        if self.ends.is_empty() {
            1
        } else {
            self.ends.len() / 4
        }
    }

    /// Never: a chunk holds at least one record.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn end(&self, index: usize) -> usize {
        let at = index * 4;
        u32::from_be_bytes([
            self.ends[at],
            self.ends[at + 1],
            self.ends[at + 2],
            self.ends[at + 3],
        ]) as usize
    }

    /// The bytes of record `index` (0 is the key's position); `None` past the last.
    pub fn record(&self, index: usize) -> Result<Option<&'a [u8]>, CorruptRecord> {
        if self.ends.is_empty() {
            return Ok((index == 0).then_some(self.body));
        }
        if index >= self.len() {
            return Ok(None);
        }
        let start = if index == 0 { 0 } else { self.end(index - 1) };
        let end = self.end(index);
        self.body
            .get(start..end)
            .map(Some)
            .ok_or_else(|| CorruptRecord("log chunk offsets out of order".into()))
    }
}

/// Decodes a log record into the event at `position`.
pub fn decode_event(position: u64, bytes: &[u8]) -> Result<RecordedEvent, CorruptRecord> {
    read_event(position, bytes).map(|event| event.to_event())
}

/// Checks a log record and reads it as the event at `position`, borrowing its fields.
pub(crate) fn read_event(position: u64, bytes: &[u8]) -> Result<EventRef<'_>, CorruptRecord> {
    let mut reader = Reader::open(bytes, EVENT_RECORD_FORMAT, "event")?;
    let stream_id = reader.short_str()?;
    let event_number = reader.u64()?;
    let event_id = Uuid::from_bytes(reader.array::<16>()?);
    let created_micros = reader.u64()? as i64;
    let event_type = reader.short_str()?;
    let data_content_type = reader.short_str()?;
    let metadata_content_type = reader.short_str()?;
    let data = reader.long_bytes()?;
    let metadata = reader.long_bytes()?;
    reader.finish()?;
    Ok(EventRef {
        stream_id,
        event_number,
        position,
        event_id,
        event_type,
        data,
        metadata,
        data_content_type,
        metadata_content_type,
        created_micros,
    })
}

/// Reads only the stream id, event type and event id of a record: enough to filter `$all`
/// and to check idempotency without copying payloads.
pub fn decode_event_header(bytes: &[u8]) -> Result<(&str, Uuid, &str), CorruptRecord> {
    let mut reader = Reader::open(bytes, EVENT_RECORD_FORMAT, "event")?;
    let stream_id = reader.short_str()?;
    let _event_number = reader.u64()?;
    let event_id = Uuid::from_bytes(reader.array::<16>()?);
    let _created = reader.u64()?;
    let event_type = reader.short_str()?;
    Ok((stream_id, event_id, event_type))
}

/// A snapshot as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The snapshot.
    pub data: Vec<u8>,
    /// Kept beside it.
    pub metadata: Vec<u8>,
    /// When it was recorded, µs since the Unix epoch.
    pub created_micros: i64,
}

impl SnapshotRecord {
    /// The stored bytes: format byte, checksum, fields.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + 16 + self.data.len() + self.metadata.len());
        out.push(SNAPSHOT_RECORD_FORMAT);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.created_micros.to_be_bytes());
        put_long(&mut out, &self.data);
        put_long(&mut out, &self.metadata);
        seal(&mut out);
        out
    }

    /// Reads stored bytes back, checking format and checksum.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotRecord, CorruptRecord> {
        let mut reader = Reader::open(bytes, SNAPSHOT_RECORD_FORMAT, "snapshot")?;
        let created_micros = reader.u64()? as i64;
        let data = reader.long_bytes()?.to_vec();
        let metadata = reader.long_bytes()?.to_vec();
        reader.finish()?;
        Ok(SnapshotRecord {
            data,
            metadata,
            created_micros,
        })
    }
}

/// Format byte of checked blobs (subscription definitions).
const BLOB_FORMAT: u8 = 1;

/// Wraps bytes with a format byte and a checksum.
pub fn seal_blob(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + bytes.len());
    out.push(BLOB_FORMAT);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(bytes);
    seal(&mut out);
    out
}

/// The bytes of a checked blob.
pub fn open_blob(bytes: &[u8]) -> Result<&[u8], CorruptRecord> {
    let reader = Reader::open(bytes, BLOB_FORMAT, "blob")?;
    Ok(reader.rest)
}

fn put_short(out: &mut Vec<u8>, bytes: &[u8]) {
    // Callers validate lengths (stream ids, types, content types are at most 512 bytes).
    assert!(bytes.len() <= u16::MAX as usize, "short field too long");
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_long(out: &mut Vec<u8>, bytes: &[u8]) {
    assert!(bytes.len() <= u32::MAX as usize, "long field too long");
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Writes the CRC of everything after the header into the header.
fn seal(out: &mut [u8]) {
    let crc = crc32fast::hash(&out[HEADER_BYTES..]);
    out[1..HEADER_BYTES].copy_from_slice(&crc.to_be_bytes());
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn open(bytes: &'a [u8], format: u8, what: &str) -> Result<Self, CorruptRecord> {
        if bytes.len() < HEADER_BYTES {
            return Err(CorruptRecord(format!(
                "{what} record shorter than its header"
            )));
        }
        if bytes[0] != format {
            return Err(CorruptRecord(format!(
                "{what} record has format {} (this build reads {format})",
                bytes[0]
            )));
        }
        let stored = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        let body = &bytes[HEADER_BYTES..];
        if crc32fast::hash(body) != stored {
            return Err(CorruptRecord(format!("{what} record checksum mismatch")));
        }
        Ok(Reader { rest: body })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CorruptRecord> {
        if self.rest.len() < n {
            return Err(CorruptRecord("record truncated".into()));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CorruptRecord> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u64(&mut self) -> Result<u64, CorruptRecord> {
        Ok(u64::from_be_bytes(self.array::<8>()?))
    }

    fn short_str(&mut self) -> Result<&'a str, CorruptRecord> {
        let len = u16::from_be_bytes(self.array::<2>()?) as usize;
        let bytes = self.take(len)?;
        if bytes.is_ascii() {
            // SAFETY: ASCII is valid UTF-8. Stream ids, types and content types are almost
            // always ASCII, and the general check costs several times this one on such
            // short texts: it was an eighth of an `$all` read.
            return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        std::str::from_utf8(bytes).map_err(|_| CorruptRecord("text is not UTF-8".into()))
    }

    fn long_bytes(&mut self) -> Result<&'a [u8], CorruptRecord> {
        let len = u32::from_be_bytes(self.array::<4>()?) as usize;
        self.take(len)
    }

    fn finish(self) -> Result<(), CorruptRecord> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(CorruptRecord("trailing bytes after record".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample<'a>(data: &'a [u8], metadata: &'a [u8]) -> EventRecord<'a> {
        EventRecord {
            stream_id: "order-1",
            event_number: 7,
            event_id: Uuid::from_u128(42),
            created_micros: 1_700_000_000_000_000,
            event_type: "OrderPlaced",
            data_content_type: "application/json",
            metadata_content_type: "application/octet-stream",
            data,
            metadata,
        }
    }

    #[test]
    fn event_round_trips() {
        let record = sample(b"{\"a\":1}", b"meta");
        let event = decode_event(9, &record.encode()).expect("decodes");
        assert_eq!(event.position, 9);
        assert_eq!(event.stream_id, "order-1");
        assert_eq!(event.event_number, 7);
        assert_eq!(event.event_id, Uuid::from_u128(42));
        assert_eq!(event.data, b"{\"a\":1}");
        assert_eq!(event.metadata, b"meta");
        assert_eq!(event.data_content_type, "application/json");
    }

    proptest! {
        // Any single flipped bit is caught: the checksum covers the whole body and the header
        // holds the format byte and the checksum itself.
        #[test]
        fn a_flipped_bit_is_never_decoded(data in proptest::collection::vec(any::<u8>(), 0..200), bit in 0usize..10_000) {
            let mut bytes = sample(&data, b"m").encode();
            let bit = bit % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode_event(0, &bytes).is_err());
        }

        #[test]
        fn truncated_records_are_errors(cut in 0usize..100) {
            let bytes = sample(b"payload", b"").encode();
            let cut = cut % bytes.len();
            prop_assert!(decode_event(0, &bytes[..cut]).is_err());
        }
    }
}
