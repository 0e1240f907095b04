//! SQLite through rusqlite, as an embedding Rust program would keep its events: WAL journal,
//! `synchronous = FULL` (the WAL is fsynced at every commit), one writer connection shared
//! behind a mutex (SQLite has a single writer; a busy-waiting connection per client is slower),
//! the expected-version check and the inserts in one `BEGIN IMMEDIATE` transaction.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::load::{self, Appender, LoadSettings, NoFsyncCount, ReadCheck, SystemRun, Target};

const SCHEMA: &str = "
    CREATE TABLE events (
        position   INTEGER PRIMARY KEY,
        stream_id  TEXT    NOT NULL,
        version    INTEGER NOT NULL,
        event_id   BLOB    NOT NULL,
        event_type TEXT    NOT NULL,
        data       BLOB    NOT NULL,
        created    INTEGER NOT NULL,
        UNIQUE (stream_id, version)
    );";

pub(crate) async fn run(dir: &Path, settings: &LoadSettings) -> Result<SystemRun> {
    let path = dir.join("events.db");
    let connection = Connection::open(&path)?;
    let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!("SQLite refused WAL mode (got {mode})");
    }
    connection.execute_batch("PRAGMA synchronous = FULL;")?;
    let synchronous: i64 = connection.query_row("PRAGMA synchronous", [], |row| row.get(0))?;
    if synchronous != 2 {
        bail!("SQLite synchronous is {synchronous}, not FULL (2)");
    }
    connection.execute_batch(SCHEMA)?;
    let target = Sqlite {
        connection: Arc::new(Mutex::new(connection)),
    };
    let connection = target.connection.clone();
    let read = async move {
        tokio::task::spawn_blocking(move || read_all(&connection))
            .await
            .context("the SQLite reader panicked")?
    };
    load::run_all(&target, settings, NoFsyncCount, read).await
}

struct Sqlite {
    connection: Arc<Mutex<Connection>>,
}

impl Target for Sqlite {
    type Appender = SqliteAppender;

    async fn appender(&self, _client: u64) -> Result<SqliteAppender> {
        Ok(SqliteAppender {
            connection: self.connection.clone(),
        })
    }
}

struct SqliteAppender {
    connection: Arc<Mutex<Connection>>,
}

impl Appender for SqliteAppender {
    async fn append(
        &mut self,
        stream: &str,
        stream_length: u64,
        events: Vec<Vec<u8>>,
    ) -> Result<()> {
        let connection = self.connection.clone();
        let stream = stream.to_string();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection
                .lock()
                .map_err(|_| anyhow!("the SQLite connection's lock is poisoned"))?;
            append(&mut connection, &stream, stream_length, events)
        })
        .await
        .context("an SQLite append panicked")?
    }
}

fn append(
    connection: &mut Connection,
    stream: &str,
    stream_length: u64,
    events: Vec<Vec<u8>>,
) -> Result<()> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let last: Option<i64> = transaction
        .prepare_cached("SELECT max(version) FROM events WHERE stream_id = ?1")?
        .query_row([stream], |row| row.get(0))
        .optional()?
        .flatten();
    let expected_last = (stream_length as i64) - 1;
    if last.unwrap_or(-1) != expected_last {
        bail!(
            "wrong expected version: expected {expected_last}, stream is at {}",
            last.unwrap_or(-1)
        );
    }
    {
        let mut insert = transaction.prepare_cached(
            "INSERT INTO events (stream_id, version, event_id, event_type, data, created)
             VALUES (?1, ?2, ?3, 'Bench', ?4, ?5)",
        )?;
        let created = now_micros();
        for (offset, data) in events.iter().enumerate() {
            let id = uuid::Uuid::now_v7();
            insert.execute(params![
                stream,
                stream_length as i64 + offset as i64,
                id.as_bytes().as_slice(),
                data,
                created
            ])?;
        }
    }
    transaction.commit()?;
    Ok(())
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as i64)
}

/// One query over the whole table in position order, every column fetched.
fn read_all(connection: &Mutex<Connection>) -> Result<load::ReadResult> {
    let connection = connection
        .lock()
        .map_err(|_| anyhow!("the SQLite connection's lock is poisoned"))?;
    let mut check = ReadCheck::start();
    let mut statement = connection.prepare(
        "SELECT position, stream_id, version, event_id, event_type, data, created
         FROM events ORDER BY position",
    )?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let position: i64 = row.get(0)?;
        let stream = row.get_ref(1)?.as_str()?;
        let version: i64 = row.get(2)?;
        let _id = row.get_ref(3)?.as_blob()?;
        let _event_type = row.get_ref(4)?.as_str()?;
        let _data = row.get_ref(5)?.as_blob()?;
        let _created: i64 = row.get(6)?;
        check.event(position as u64, stream, Some(version as u64));
    }
    Ok(check.finish())
}
