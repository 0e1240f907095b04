//! Why a store's System could not start (request errors are [`exesdb_types::StoreError`]).

use std::path::PathBuf;

/// Why a store's System could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is not usable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The data directory was written by a format this build does not know.
    #[error(
        "data directory {path} has format version {found}; this build reads version {supported}. \
         Refusing to open it rather than reinterpret it"
    )]
    UnsupportedFormat {
        /// The directory.
        path: PathBuf,
        /// The format found there.
        found: String,
        /// The format this build writes and reads.
        supported: u32,
    },
    /// The directory holds files but no format marker: it is not ours, or it is damaged.
    #[error("{path} is not empty and has no FORMAT file: not an exesdb data directory")]
    NotADataDirectory {
        /// The directory.
        path: PathBuf,
    },
    /// Reading or creating the data directory failed.
    #[error("cannot use data directory {path}: {source}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The storage engine refused to open the data.
    #[error("cannot open storage in {path}: {message}")]
    Storage {
        /// The directory.
        path: PathBuf,
        /// The storage engine's error.
        message: String,
    },
    /// The stored data contradicts itself (a checksum or an invariant failed).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A file of the data directory is damaged in a way that would lose acknowledged data.
    #[error("{path} is corrupt: {detail}")]
    CorruptFile {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong and what to do.
        detail: String,
    },
    /// One of a node's stores failed to start.
    #[error("store {store_id}: {source}")]
    Store {
        /// The store.
        store_id: String,
        /// Why it failed.
        source: Box<StartError>,
    },
    /// A process of the supervision tree failed to start.
    #[error("the supervision tree failed to start: {0}")]
    Tree(String),
    /// The store's data belongs to the other mode (single-mode data in cluster mode, or a
    /// cluster's data in single mode), or to another cluster.
    #[error("{path}: {detail}")]
    WrongMode {
        /// The store's directory.
        path: PathBuf,
        /// What the data is, and what to do.
        detail: String,
    },
}
