//! The store's secondary indexes as the contract sees them: every event is indexed by its type
//! and by its stream's category, and each index reads as a read-only stream, `$et-<type>` or
//! `$ce-<category>`. Their events are the original events (no link events), in global
//! position order, and a read or a subscription of one starts from a position, not from an
//! event number of its own.

use crate::error::StoreError;
use crate::event::{ALL_STREAM, validate_stream_id};

/// The prefix of the stream that reads the event-type index: `$et-OrderPlaced`.
pub const EVENT_TYPE_STREAM_PREFIX: &str = "$et-";
/// The prefix of the stream that reads the category index: `$ce-order`.
pub const CATEGORY_STREAM_PREFIX: &str = "$ce-";
/// What ends a stream id's category: `order-42` is in category `order`.
pub const CATEGORY_SEPARATOR: char = '-';

/// The category of a stream: its id up to the first `-`. A stream whose id has no `-`, or
/// starts with one, has no category.
pub fn category_of(stream_id: &str) -> Option<&str> {
    match stream_id.split_once(CATEGORY_SEPARATOR) {
        Some((category, _)) if !category.is_empty() => Some(category),
        _ => None,
    }
}

/// One of the indexes, named by what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexedStream<'a> {
    /// The events of one type, read as `$et-<type>`.
    EventType(&'a str),
    /// The events of the streams of one category, read as `$ce-<category>`.
    Category(&'a str),
}

impl<'a> IndexedStream<'a> {
    /// The index a stream id names, when it is `$et-<type>` or `$ce-<category>`. The name is
    /// not checked here: [`validate_readable_stream_id`] does that.
    pub fn parse(stream_id: &'a str) -> Option<Self> {
        if let Some(event_type) = stream_id.strip_prefix(EVENT_TYPE_STREAM_PREFIX) {
            Some(IndexedStream::EventType(event_type))
        } else {
            stream_id
                .strip_prefix(CATEGORY_STREAM_PREFIX)
                .map(IndexedStream::Category)
        }
    }

    /// Whether the index holds an event of `stream_id` and `event_type`.
    pub fn matches(&self, stream_id: &str, event_type: &str) -> bool {
        match self {
            IndexedStream::EventType(indexed_type) => event_type == *indexed_type,
            IndexedStream::Category(category) => category_of(stream_id) == Some(category),
        }
    }

    fn validate(&self) -> Result<(), StoreError> {
        match self {
            IndexedStream::EventType("") => Err(StoreError::invalid(format!(
                "{EVENT_TYPE_STREAM_PREFIX} needs an event type after it"
            ))),
            IndexedStream::Category("") => Err(StoreError::invalid(format!(
                "{CATEGORY_STREAM_PREFIX} needs a category after it"
            ))),
            IndexedStream::Category(category) if category.contains(CATEGORY_SEPARATOR) => {
                Err(StoreError::invalid(format!(
                    "category {category:?} contains '{CATEGORY_SEPARATOR}': a category is a \
                     stream id up to its first '{CATEGORY_SEPARATOR}'"
                )))
            }
            IndexedStream::EventType(_) | IndexedStream::Category(_) => Ok(()),
        }
    }
}

/// Whether a stream is read from a position rather than an event number: `$all` and the index
/// streams, whose events keep the numbers of their own streams.
pub fn reads_by_position(stream_id: &str) -> bool {
    stream_id == ALL_STREAM || IndexedStream::parse(stream_id).is_some()
}

/// Checks a stream id that is read or subscribed to: an ordinary stream id, or an index
/// stream (`$et-<type>`, `$ce-<category>`) with a well-formed name.
pub fn validate_readable_stream_id(stream_id: &str) -> Result<(), StoreError> {
    validate_stream_id(stream_id, true)?;
    match IndexedStream::parse(stream_id) {
        Some(index) => index.validate(),
        None => validate_stream_id(stream_id, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_category_is_the_stream_id_up_to_its_first_dash() {
        assert_eq!(category_of("order-42"), Some("order"));
        assert_eq!(category_of("order-42-line-3"), Some("order"));
        assert_eq!(category_of("order"), None);
        assert_eq!(category_of("-42"), None);
        assert_eq!(category_of("order-"), Some("order"));
    }

    #[test]
    fn index_streams_parse_and_validate() {
        assert_eq!(
            IndexedStream::parse("$et-OrderPlaced"),
            Some(IndexedStream::EventType("OrderPlaced"))
        );
        assert_eq!(
            IndexedStream::parse("$ce-order"),
            Some(IndexedStream::Category("order"))
        );
        assert_eq!(IndexedStream::parse("order-1"), None);
        assert_eq!(IndexedStream::parse("$all"), None);
        assert!(validate_readable_stream_id("$et-OrderPlaced").is_ok());
        assert!(validate_readable_stream_id("$ce-order").is_ok());
        assert!(validate_readable_stream_id("order-1").is_ok());
        for refused in ["$et-", "$ce-", "$ce-a-b", "$other", "$et-a\u{1}"] {
            assert!(
                validate_readable_stream_id(refused).is_err(),
                "{refused:?} must be refused"
            );
        }
    }
}
