//! `exesdb-compare`: the same durable write loads and catch-up read against exesdb (over gRPC
//! and embedded) and its peers (PostgreSQL, SQLite, NATS JetStream), each started on loopback
//! in a temporary directory, plus this machine's limits measured in the same run (fdatasync
//! rate, sequential write bandwidth, no-op gRPC calls). Prints one markdown report; `--json`
//! writes every figure too. `bench/compare.sh` installs the peers and runs it.

mod limits;
mod load;
mod noop;
mod peers;
mod process;
mod report;
mod resp;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::load::LoadSettings;
use crate::report::{Outcome, Report, SystemReport};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "exesdb-compare",
    about = "Compare exesdb with PostgreSQL, SQLite and NATS JetStream on the same loads, and measure the machine's limits",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Internal>,
    #[command(flatten)]
    options: Options,
}

#[derive(Subcommand, Debug)]
enum Internal {
    /// Serves the no-op gRPC service (started by the run itself).
    #[command(hide = true)]
    NoopServer,
}

#[derive(Parser, Debug, Clone)]
struct Options {
    /// Systems to run, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = report::ALL_SYSTEMS)]
    systems: Vec<report::System>,
    /// Seconds each write load runs.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Concurrent clients of the concurrent loads.
    #[arg(long, default_value_t = 64)]
    clients: u64,
    /// Streams each load writes to (each client owns its share).
    #[arg(long, default_value_t = 1_000)]
    streams: u64,
    /// Bytes of data per event.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Events per append in the batch load.
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// Appends of the many-streams load, each to a new stream (it runs until they are all
    /// done, not for `--seconds`); 0 runs it for `--seconds` like the others.
    #[arg(long, default_value_t = 1_000_000)]
    new_streams: u64,
    /// Connections the clients share, for gRPC and NATS (PostgreSQL gets one per client).
    #[arg(long, default_value_t = 4)]
    connections: u64,
    /// Seconds each limit measurement runs.
    #[arg(long, default_value_t = 2.0)]
    limits_seconds: f64,
    /// Skip the limit measurements.
    #[arg(long)]
    no_limits: bool,
    /// Where the run's temporary directory goes (its disk is the disk measured).
    #[arg(long, env = "EXESDB_COMPARE_DIR")]
    dir: Option<PathBuf>,
    /// Keep the run's directory (data and server logs) instead of removing it.
    #[arg(long)]
    keep: bool,
    /// Also write every figure as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The `exesdb` binary to serve with (default: beside this program).
    #[arg(long)]
    exesdb_bin: Option<PathBuf>,
    /// The directory of PostgreSQL's binaries (default: the newest in /usr/lib/postgresql).
    #[arg(long)]
    pg_bin: Option<PathBuf>,
    /// The `nats-server` binary (default: on PATH, or /usr/sbin/nats-server).
    #[arg(long)]
    nats_bin: Option<PathBuf>,
    /// The `umadb` binary (default: on PATH, or where `bench/compare.sh` installs it).
    #[arg(long)]
    #[cfg_attr(not(feature = "umadb"), allow(dead_code))]
    umadb_bin: Option<PathBuf>,
    /// The `sierradb` binary (default: on PATH, or where `bench/compare.sh` installs it).
    #[arg(long)]
    sierradb_bin: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("exesdb-compare: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let outcome = match cli.command {
        Some(Internal::NoopServer) => runtime.block_on(noop::serve()).map(|()| true),
        None => runtime.block_on(compare(cli.options)),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("exesdb-compare: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs everything and prints the report; `Ok(false)` when a system's self-check failed.
async fn compare(options: Options) -> Result<bool> {
    let settings = LoadSettings {
        duration: Duration::from_secs_f64(options.seconds),
        clients: options.clients.max(1),
        streams: options.streams.max(1),
        event_bytes: options.size,
        batch_events: options.batch.max(1),
        connections: options.connections.max(1),
        new_streams_total: options.new_streams,
    };
    let base = options.dir.clone().unwrap_or_else(std::env::temp_dir);
    let run_dir = base.join(format!(
        "exesdb-compare-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    eprintln!("run directory {}", run_dir.display());
    let outcome = compare_in(&options, &settings, &run_dir).await;
    if options.keep {
        eprintln!("kept {}", run_dir.display());
    } else if let Err(error) = std::fs::remove_dir_all(&run_dir) {
        eprintln!("cannot remove {}: {error}", run_dir.display());
    }
    let report = outcome?;
    print!("{}", report.markdown());
    if let Some(path) = &options.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(report.self_check_ok())
}

async fn compare_in(options: &Options, settings: &LoadSettings, run_dir: &Path) -> Result<Report> {
    let limits = if options.no_limits {
        None
    } else {
        eprintln!("limits: fdatasync, sequential writes, no-op gRPC");
        Some(limits::measure(run_dir, options.limits_seconds, settings.clients).await?)
    };
    let mut systems = Vec::new();
    for &system in &options.systems {
        eprintln!("{}", system.name());
        let dir = run_dir.join(system.key());
        std::fs::create_dir_all(&dir)?;
        let outcome = run_system(system, options, settings, &dir).await;
        if let Outcome::Skipped(reason) | Outcome::Failed(reason) = &outcome {
            eprintln!("  {reason}");
        }
        systems.push(SystemReport {
            system,
            version: system.version(options),
            outcome,
        });
    }
    Ok(Report {
        settings: settings.clone(),
        limits,
        systems,
    })
}

async fn run_system(
    system: report::System,
    options: &Options,
    settings: &LoadSettings,
    dir: &Path,
) -> Outcome {
    use report::System;
    let ran = match system {
        System::Exesdb => {
            let Some(binary) = exesdb_binary(options) else {
                return Outcome::Skipped(
                    "skipped (exesdb binary not found; build it first)".into(),
                );
            };
            peers::exesdb_server::run(&binary, dir, settings).await
        }
        System::ExesdbEmbedded => peers::exesdb_embedded::run(dir, settings).await,
        System::Postgres => {
            let Some(bin) = peers::postgres::find_binaries(options.pg_bin.as_deref()) else {
                return Outcome::Skipped("skipped (not installed)".into());
            };
            peers::postgres::run(&bin, dir, settings).await
        }
        System::Sqlite => peers::sqlite::run(dir, settings).await,
        System::Nats => {
            let Some(binary) = peers::nats::find_binary(options.nats_bin.as_deref()) else {
                return Outcome::Skipped("skipped (not installed)".into());
            };
            peers::nats::run(&binary, dir, settings).await
        }
        #[cfg(feature = "umadb")]
        System::Umadb => {
            let Some(binary) = peers::umadb::find_binary(options.umadb_bin.as_deref()) else {
                return Outcome::Skipped(
                    "skipped (not installed; bench/compare.sh installs it)".into(),
                );
            };
            peers::umadb::run(&binary, dir, settings).await
        }
        System::Sierradb => {
            let Some(binary) = peers::sierradb::find_binary(options.sierradb_bin.as_deref()) else {
                return Outcome::Skipped(
                    "skipped (not installed; bench/compare.sh installs it)".into(),
                );
            };
            peers::sierradb::run(&binary, dir, settings).await
        }
        #[cfg(not(feature = "umadb"))]
        System::Umadb => {
            return Outcome::Skipped(
                "skipped (built without the feature `umadb`; bench/compare.sh turns it on)".into(),
            );
        }
    };
    match ran {
        Ok(run) => Outcome::Ran(run),
        Err(error) => Outcome::Failed(format!("failed: {error:#}")),
    }
}

/// `--exesdb-bin`, or `exesdb` beside this program (both are built into the same target
/// directory), or beside its parent directory (where test binaries run from).
fn exesdb_binary(options: &Options) -> Option<PathBuf> {
    if let Some(given) = &options.exesdb_bin {
        return given.is_file().then(|| given.clone());
    }
    let this = std::env::current_exe().ok()?;
    let dir = this.parent()?;
    process::first_existing([dir.join("exesdb"), dir.parent()?.join("exesdb")])
}
