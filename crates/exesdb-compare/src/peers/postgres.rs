//! PostgreSQL as teams build an event store on it: one table, a global sequence (identity
//! column), a unique (stream, version), and the expected-version check and the insert in one
//! statement (one transaction, one round trip), `synchronous_commit = on`, `fsync = on`, one
//! connection per client. Debian's server, started with `initdb` and `pg_ctl` in the run's
//! directory on a free loopback port.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use tokio_postgres::{Client, NoTls};

use crate::load::{self, Appender, AsyncFsyncCounter, LoadSettings, ReadCheck, SystemRun, Target};
use crate::process::{first_existing, run_quietly, running_as_root};

const SCHEMA: &str = "
    CREATE TABLE events (
        position   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        stream_id  text        NOT NULL,
        version    bigint      NOT NULL,
        event_id   uuid        NOT NULL DEFAULT gen_random_uuid(),
        event_type text        NOT NULL,
        data       bytea       NOT NULL,
        created    timestamptz NOT NULL DEFAULT now(),
        UNIQUE (stream_id, version)
    );";

/// Inserts the events only if the stream's last version is `$2` (NULL: no stream); a race
/// between two writers of one stream ends in a unique violation instead.
const APPEND: &str = "
    INSERT INTO events (stream_id, version, event_type, data)
    SELECT $1, $3 + batch.n - 1, 'Bench', batch.data
    FROM unnest($4::bytea[]) WITH ORDINALITY AS batch(data, n)
    WHERE (SELECT max(version) FROM events WHERE stream_id = $1) IS NOT DISTINCT FROM $2";

const READ_PAGE: &str = "
    SELECT position, stream_id, version, event_id, event_type, data, created
    FROM events WHERE position > $1 ORDER BY position LIMIT 10000";

/// The directory of Debian's PostgreSQL binaries (the newest installed), or `given`.
pub(crate) fn find_binaries(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(given) = given {
        return given.join("pg_ctl").is_file().then(|| given.to_path_buf());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort();
    let (_, bin) = versions.pop()?;
    first_existing([bin.join("pg_ctl")]).map(|_| bin)
}

/// The server's settings, beyond the defaults: durability at full strength, room for the
/// connections, and WAL room so that checkpoints do not dominate a short run.
pub(crate) const SETTINGS: &[(&str, &str)] = &[
    ("fsync", "on"),
    ("synchronous_commit", "on"),
    ("full_page_writes", "on"),
    ("max_connections", "200"),
    ("shared_buffers", "1GB"),
    ("max_wal_size", "8GB"),
];

/// A running server; dropping it stops the server.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    as_postgres_user: bool,
    running: bool,
}

impl Cluster {
    fn command(&self, program: &str) -> Command {
        if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join(program));
            command
        } else {
            Command::new(self.bin.join(program))
        }
    }

    fn stop(&mut self) -> Result<()> {
        if !std::mem::replace(&mut self.running, false) {
            return Ok(());
        }
        run_quietly(
            "pg_ctl stop",
            self.command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "fast", "-w", "stop"]),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

pub(crate) async fn run(bin: &Path, dir: &Path, settings: &LoadSettings) -> Result<SystemRun> {
    let port = crate::process::free_port()?;
    let mut cluster = start(bin, dir, port)?;
    let url = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let admin = connect(&url).await?;
    admin.batch_execute(SCHEMA).await?;
    let target = Postgres { url: url.clone() };
    let fsyncs = WalSyncs { client: admin };
    let outcome = load::run_all(&target, settings, fsyncs, read_all(&url)).await;
    let stopped = cluster.stop();
    let outcome = outcome?;
    stopped?;
    Ok(outcome)
}

fn start(bin: &Path, dir: &Path, port: u16) -> Result<Cluster> {
    // PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user.
    let as_postgres_user = running_as_root();
    let mut cluster = Cluster {
        bin: bin.to_path_buf(),
        data: dir.join("data"),
        as_postgres_user,
        running: false,
    };
    if as_postgres_user {
        run_quietly(
            "chown",
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir),
        )?;
    }
    run_quietly(
        "initdb",
        cluster
            .command("initdb")
            .arg("-D")
            .arg(&cluster.data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]),
    )?;
    let mut options = format!(
        "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
        dir.display()
    );
    for (name, value) in SETTINGS {
        options += &format!(" -c {name}={value}");
    }
    let started = run_quietly(
        "pg_ctl start",
        cluster
            .command("pg_ctl")
            .arg("-D")
            .arg(&cluster.data)
            .arg("-l")
            .arg(dir.join("log"))
            .args(["-w", "-t", "60", "-o", &options, "start"]),
    );
    if let Err(error) = started {
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        bail!("{error:#}\n{log}");
    }
    cluster.running = true;
    Ok(cluster)
}

async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .context("cannot connect to PostgreSQL")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

struct Postgres {
    url: String,
}

impl Target for Postgres {
    type Appender = PostgresAppender;

    async fn appender(&self, _client: u64) -> Result<PostgresAppender> {
        let client = connect(&self.url).await?;
        let append = client.prepare(APPEND).await?;
        Ok(PostgresAppender { client, append })
    }
}

struct PostgresAppender {
    client: Client,
    append: tokio_postgres::Statement,
}

impl Appender for PostgresAppender {
    async fn append(
        &mut self,
        stream: &str,
        stream_length: u64,
        events: Vec<Vec<u8>>,
    ) -> Result<()> {
        let expected_last: Option<i64> = stream_length.checked_sub(1).map(|last| last as i64);
        let first_version = stream_length as i64;
        let count = events.len() as u64;
        let inserted = self
            .client
            .execute(
                &self.append,
                &[&stream, &expected_last, &first_version, &events],
            )
            .await?;
        if inserted != count {
            bail!("wrong expected version: {inserted} of {count} events inserted");
        }
        Ok(())
    }
}

/// Pages through the table in position order, as a catching-up reader does.
async fn read_all(url: &str) -> Result<load::ReadResult> {
    let client = connect(url).await?;
    let page = client.prepare(READ_PAGE).await?;
    let mut check = ReadCheck::start();
    let mut after = 0i64;
    loop {
        let rows = client.query(&page, &[&after]).await?;
        let Some(last) = rows.last() else { break };
        after = last.try_get(0)?;
        for row in &rows {
            let position: i64 = row.try_get(0)?;
            let stream: &str = row.try_get(1)?;
            let version: i64 = row.try_get(2)?;
            let _id: uuid::Uuid = row.try_get(3)?;
            let _event_type: &str = row.try_get(4)?;
            let _data: &[u8] = row.try_get(5)?;
            check.event(position as u64, stream, Some(version as u64));
        }
    }
    Ok(check.finish())
}

/// `pg_stat_wal.wal_sync`: the WAL fsyncs so far (backends report theirs when they finish a
/// transaction and go idle, and at most once a second; the count may lag a little).
struct WalSyncs {
    client: Client,
}

impl AsyncFsyncCounter for WalSyncs {
    async fn count(&mut self) -> Option<u64> {
        // Let the clients' backends, closed a moment ago, report their counts.
        tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
        let row = self
            .client
            .query_one("SELECT wal_sync FROM pg_stat_wal", &[])
            .await
            .ok()?;
        let syncs: i64 = row.try_get(0).ok()?;
        Some(syncs as u64)
    }
}
