//! The report: one markdown table of every system and load with its ratio to exesdb over
//! gRPC, what each system guarantees where it differs, the machine's limits, and exesdb's
//! figures as a share of each limit. The same figures as JSON.

use std::process::Command;

use clap::ValueEnum;
use serde_json::{Value, json};

use crate::Options;
use crate::limits::Limits;
use crate::load::{LoadSettings, SystemRun, WriteResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum System {
    /// `exesdb serve`, over gRPC.
    Exesdb,
    /// The exesdb library in this process.
    ExesdbEmbedded,
    Postgres,
    Sqlite,
    Nats,
    Umadb,
    Sierradb,
}

pub(crate) const ALL_SYSTEMS: [System; 7] = [
    System::Exesdb,
    System::ExesdbEmbedded,
    System::Postgres,
    System::Sqlite,
    System::Nats,
    System::Umadb,
    System::Sierradb,
];

impl System {
    pub(crate) fn key(self) -> &'static str {
        match self {
            System::Exesdb => "exesdb",
            System::ExesdbEmbedded => "exesdb-embedded",
            System::Postgres => "postgres",
            System::Sqlite => "sqlite",
            System::Nats => "nats",
            System::Umadb => "umadb",
            System::Sierradb => "sierradb",
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            System::Exesdb => "exesdb (gRPC)",
            System::ExesdbEmbedded => "exesdb embedded",
            System::Postgres => "PostgreSQL",
            System::Sqlite => "SQLite (rusqlite)",
            System::Nats => "NATS JetStream",
            System::Umadb => "UmaDB",
            System::Sierradb => "SierraDB",
        }
    }

    /// What an acknowledged append means on this system, where it differs from exesdb.
    pub(crate) fn guarantees(self) -> &'static str {
        match self {
            System::Exesdb | System::ExesdbEmbedded => {
                "acknowledged after fdatasync (group commit: one per committed batch); appends \
                 atomic; exact expected version; gapless global position"
            }
            System::Postgres => {
                "synchronous_commit=on, fsync=on: the WAL is flushed before COMMIT returns \
                 (concurrent commits share flushes); atomic; exact expected version through \
                 the unique (stream, version); the global position is an identity column: it \
                 can have gaps, and a reader can see position N+1 before N is committed"
            }
            System::Sqlite => {
                "WAL with synchronous=FULL: the WAL is fsynced at every commit; one writer, so \
                 no group commit; atomic; exact expected version"
            }
            System::Nats => {
                "NOT equal: the PubAck comes before any fsync; the 2.9 file store fsyncs on a \
                 2-minute timer and has no option to sync every write (sync_interval and \
                 `always` came in 2.10), so a power loss or OS crash can lose acknowledged \
                 messages. Expected version through Nats-Expected-Last-Subject-Sequence; an \
                 append of 100 events is 100 messages published back to back, only the first \
                 checked, not atomic (JetStream has no batch publish before 2.12)"
            }
            System::Umadb => {
                "acknowledged after fdatasync: a commit writes its pages, syncs, writes its header \
                 and syncs again, and concurrent appends share commits (0.19 sync calls per \
                 acknowledged append over these loads, bench/peer_fsyncs.sh); an append of \
                 several events is one commit, atomic; the condition \"no event with the \
                 stream's tag after the position of its last event\" is DCB's exact expected \
                 version; gapless global position"
            }
            System::Sierradb => {
                "acknowledged after fdatasync: each bucket's writer thread syncs every 5 ms or \
                 50 events and the answer waits for it (7 sync calls per acknowledged append \
                 here, bench/peer_fsyncs.sh); EMAPPEND is atomic within one partition; exact \
                 expected version per event; versions gapless per stream and sequences per \
                 partition (32), but no global order: the read goes partition by partition. \
                 An acknowledged event can be missing from a read begun at once (a few dozen \
                 per run here), so the read first waits for the partitions' heads to hold \
                 still"
            }
        }
    }

    pub(crate) fn version(self, options: &Options) -> String {
        let found = match self {
            System::Exesdb | System::ExesdbEmbedded => Some(env!("CARGO_PKG_VERSION").into()),
            System::Sqlite => Some(rusqlite::version().to_string()),
            System::Postgres => crate::peers::postgres::find_binaries(options.pg_bin.as_deref())
                .and_then(|bin| {
                    let output = Command::new(bin.join("postgres"))
                        .arg("--version")
                        .output()
                        .ok()?;
                    let text = String::from_utf8_lossy(&output.stdout).into_owned();
                    text.split_whitespace().nth(2).map(str::to_string)
                }),
            System::Nats => crate::peers::nats::find_binary(options.nats_bin.as_deref())
                .and_then(|binary| crate::peers::nats::version(&binary)),
            #[cfg(feature = "umadb")]
            System::Umadb => crate::peers::umadb::find_binary(options.umadb_bin.as_deref())
                .and_then(|binary| crate::peers::umadb::version(&binary)),
            #[cfg(not(feature = "umadb"))]
            System::Umadb => None,
            System::Sierradb => {
                crate::peers::sierradb::find_binary(options.sierradb_bin.as_deref())
                    .and_then(|binary| crate::peers::sierradb::version(&binary))
            }
        };
        found.unwrap_or_default()
    }
}

pub(crate) enum Outcome {
    Ran(SystemRun),
    Skipped(String),
    Failed(String),
}

pub(crate) struct SystemReport {
    pub system: System,
    pub version: String,
    pub outcome: Outcome,
}

impl SystemReport {
    fn title(&self) -> String {
        if self.version.is_empty() {
            self.system.name().to_string()
        } else {
            format!("{} {}", self.system.name(), self.version)
        }
    }

    fn self_check(&self) -> Result<(), String> {
        match &self.outcome {
            Outcome::Ran(run) => run.self_check(),
            Outcome::Skipped(_) => Ok(()),
            Outcome::Failed(error) => Err(error.clone()),
        }
    }
}

pub(crate) struct Report {
    pub settings: LoadSettings,
    pub limits: Option<Limits>,
    pub systems: Vec<SystemReport>,
}

impl Report {
    pub(crate) fn self_check_ok(&self) -> bool {
        self.systems
            .iter()
            .all(|system| system.self_check().is_ok())
    }

    fn run_of(&self, system: System) -> Option<&SystemRun> {
        self.systems
            .iter()
            .find_map(|report| match &report.outcome {
                Outcome::Ran(run) if report.system == system => Some(run),
                _ => None,
            })
    }

    pub(crate) fn markdown(&self) -> String {
        let settings = &self.settings;
        let mut out = String::new();
        out += &format!(
            "Loads: durable appends of {} B events with the exact expected version, {} streams \
             (each client owns its share), {:.0} s each; {} connections shared by the clients \
             over gRPC and NATS, one connection per client for PostgreSQL. Ratios are events/s \
             against exesdb over gRPC on the same load.\n\n",
            settings.event_bytes,
            settings.streams,
            settings.duration.as_secs_f64(),
            settings.connections
        );
        out += "| system | load | events/s | appends/s | p50 | p99 | vs exesdb (gRPC) | events per fsync |\n";
        out += "|---|---|---:|---:|---:|---:|---:|---:|\n";
        let reference = self.run_of(System::Exesdb);
        for report in &self.systems {
            let title = report.title();
            let run = match &report.outcome {
                Outcome::Ran(run) => run,
                Outcome::Skipped(reason) | Outcome::Failed(reason) => {
                    let reason = reason.lines().next().unwrap_or_default();
                    out += &format!("| {title} | {reason} | | | | | | |\n");
                    continue;
                }
            };
            for (index, write) in run.writes.iter().enumerate() {
                let ratio = reference
                    .and_then(|reference| reference.writes.get(index))
                    .map(|reference| {
                        ratio(write.events_per_second(), reference.events_per_second())
                    })
                    .unwrap_or_default();
                out += &format!(
                    "| {title} | {} | {} | {} | {} | {} | {ratio} | {} |\n",
                    write.workload.label(),
                    thousands(write.events_per_second()),
                    thousands(write.appends_per_second()),
                    latency(write.p50_us),
                    latency(write.p99_us),
                    write
                        .events_per_fsync
                        .map(|events| format!("{events:.1}"))
                        .unwrap_or_else(|| "n/a".into())
                );
            }
            let read_ratio = reference
                .map(|reference| {
                    ratio(
                        run.read.events_per_second(),
                        reference.read.events_per_second(),
                    )
                })
                .unwrap_or_default();
            out += &format!(
                "| {title} | read all in global order, 1 client ({} events) | {} | | | | {read_ratio} | |\n",
                thousands(run.read.events as f64),
                thousands(run.read.events_per_second()),
            );
        }
        out += "\nWhat an acknowledgement means:\n\n";
        for report in &self.systems {
            out += &format!(
                "- **{}**: {}.\n",
                report.system.name(),
                report.system.guarantees()
            );
        }
        out += "\nSelf-check (no append failed; the read returned every acknowledged event once, in \
                global order, with gapless stream versions):\n\n";
        for report in &self.systems {
            let verdict = match (&report.outcome, report.self_check()) {
                (Outcome::Skipped(reason), _) => reason.clone(),
                (_, Ok(())) => "ok".into(),
                (_, Err(error)) => format!("FAILED: {}", error.lines().next().unwrap_or_default()),
            };
            out += &format!("- {}: {verdict}\n", report.system.name());
        }
        if let Some(limits) = &self.limits {
            out += &self.limits_markdown(limits);
        }
        out += &self.hops_markdown();
        out += &format!(
            "\nself-check: {}\n",
            if self.self_check_ok() { "ok" } else { "FAILED" }
        );
        out
    }

    fn limits_markdown(&self, limits: &Limits) -> String {
        let mut out = String::from("\nLimits, measured in the same run on the same disk:\n\n");
        out += "| limit | measured |\n|---|---:|\n";
        out += &format!(
            "| 256 B append + fdatasync, one writer | {} /s ({:.0} µs each) |\n",
            thousands(limits.fdatasyncs_per_second),
            1e6 / limits.fdatasyncs_per_second.max(1e-9)
        );
        out += &format!(
            "| sequential 1 MiB writes, fdatasync every 64 MiB | {:.0} MB/s |\n",
            limits.sequential_mb_per_second
        );
        for (callers, connections, rate) in [
            (1, 1, limits.noop_one_caller),
            (self.settings.clients, 1, limits.noop_one_connection),
            (self.settings.clients, 4, limits.noop_four_connections),
        ] {
            out += &format!(
                "| no-op unary gRPC, {callers} caller{}, {connections} connection{} | {} /s (p50 {}, p99 {}) |\n",
                if callers == 1 { "" } else { "s" },
                if connections == 1 { "" } else { "s" },
                thousands(rate.calls_per_second),
                latency(rate.p50_us),
                latency(rate.p99_us)
            );
        }
        let event_ceiling =
            limits.sequential_mb_per_second * 1e6 / self.settings.event_bytes.max(1) as f64;
        out += "\nexesdb against each limit. Events per fsync is measured (the committer's \
                batches); events/s ÷ fdatasync/s is the fewest events each fsync must carry for \
                that rate; disk bandwidth counts payload bytes only; the RPC ceiling is the no-op \
                rate with the same callers over the same connections:\n\n";
        out += "| exesdb | load | events/s | events per fsync | events/s ÷ fdatasync/s | share of disk bandwidth | appends/s ÷ no-op gRPC/s |\n";
        out += "|---|---|---:|---:|---:|---:|---:|\n";
        for system in [System::Exesdb, System::ExesdbEmbedded] {
            let Some(run) = self.run_of(system) else {
                continue;
            };
            for write in &run.writes {
                let rpc = if system == System::Exesdb {
                    let ceiling = if write.workload.clients == 1 {
                        limits.noop_one_caller
                    } else if self.settings.connections >= 4 {
                        limits.noop_four_connections
                    } else {
                        limits.noop_one_connection
                    };
                    percent(write.appends_per_second() / ceiling.calls_per_second.max(1e-9))
                } else {
                    "no RPC".into()
                };
                out += &format!(
                    "| {} | {} | {} | {} | {:.1} | {} | {rpc} |\n",
                    system.name(),
                    write.workload.label(),
                    thousands(write.events_per_second()),
                    write
                        .events_per_fsync
                        .map(|events| format!("{events:.1}"))
                        .unwrap_or_else(|| "n/a".into()),
                    write.events_per_second() / limits.fdatasyncs_per_second.max(1e-9),
                    percent(write.events_per_second() / event_ceiling.max(1e-9)),
                );
            }
        }
        out
    }

    /// Where an exesdb append's time goes, hop by hop: the server's own sums over each load,
    /// and what is left of the client's mean latency (the RPC: HTTP/2, protobuf, loopback).
    fn hops_markdown(&self) -> String {
        let mut columns = Vec::new();
        for system in [System::Exesdb, System::ExesdbEmbedded] {
            let Some(run) = self.run_of(system) else {
                continue;
            };
            for write in &run.writes {
                if write.workload.events_per_append == 1 && !write.hops.is_empty() {
                    columns.push((system, write));
                }
            }
        }
        if columns.is_empty() {
            return String::new();
        }
        let mut out = String::from(
            "\nWhere an append of one event spends its time, mean µs per append (each hop as \
             the server sums it; `commit` overlaps the batch's apply, write and fsync; the \
             rest of the client's mean is the RPC itself):\n\n| hop |",
        );
        for (system, write) in &columns {
            out += &format!(" {}: {} |", system.name(), write.workload.label());
        }
        out += "\n|---|";
        out += &"---:|".repeat(columns.len());
        out += "\n";
        // In the order an append passes them; a hop this build does not know goes last.
        let mut names: Vec<&str> = exesdb::Hop::ALL.iter().map(|hop| hop.name()).collect();
        for hop in &columns[0].1.hops {
            if !names.contains(&hop.name.as_str()) {
                names.push(&hop.name);
            }
        }
        for name in names {
            out += &format!("| {name} |");
            for (_, write) in &columns {
                let mean = write.hops.iter().find(|hop| hop.name == name);
                out += &match mean {
                    Some(hop) => format!(" {:.1} |", hop.mean_us),
                    None => " |".into(),
                };
            }
            out += "\n";
        }
        out += "| the rest (client mean − hops) |";
        for (_, write) in &columns {
            let hops: f64 = write.hops.iter().map(|hop| hop.mean_us).sum();
            out += &format!(" {:.1} |", write.mean_us - hops);
        }
        out += "\n| client mean |";
        for (_, write) in &columns {
            out += &format!(" {:.1} |", write.mean_us);
        }
        out += "\n";
        out
    }

    pub(crate) fn json(&self) -> Value {
        let settings = &self.settings;
        let systems: Vec<Value> = self
            .systems
            .iter()
            .map(|report| {
                let (status, writes, read) = match &report.outcome {
                    Outcome::Ran(run) => (
                        "ran".to_string(),
                        run.writes.iter().map(write_json).collect::<Vec<_>>(),
                        json!({
                            "events": run.read.events,
                            "seconds": run.read.seconds,
                            "events_per_second": run.read.events_per_second(),
                        }),
                    ),
                    Outcome::Skipped(reason) | Outcome::Failed(reason) => {
                        (reason.clone(), Vec::new(), Value::Null)
                    }
                };
                json!({
                    "system": report.system.key(),
                    "version": report.version,
                    "status": status,
                    "guarantees": report.system.guarantees(),
                    "writes": writes,
                    "read_all": read,
                    "self_check": match report.self_check() {
                        Ok(()) => json!({"ok": true}),
                        Err(error) => json!({"ok": false, "error": error}),
                    },
                })
            })
            .collect();
        let limits = self.limits.as_ref().map(|limits| {
            json!({
                "fdatasyncs_per_second": limits.fdatasyncs_per_second,
                "sequential_mb_per_second": limits.sequential_mb_per_second,
                "noop_grpc_one_caller": rate_json(limits.noop_one_caller),
                "noop_grpc_one_connection": rate_json(limits.noop_one_connection),
                "noop_grpc_four_connections": rate_json(limits.noop_four_connections),
            })
        });
        json!({
            "parameters": {
                "seconds": settings.duration.as_secs_f64(),
                "clients": settings.clients,
                "streams": settings.streams,
                "event_bytes": settings.event_bytes,
                "batch_events": settings.batch_events,
                "connections": settings.connections,
            },
            "limits": limits,
            "systems": systems,
            "self_check": { "ok": self.self_check_ok() },
        })
    }
}

fn write_json(write: &WriteResult) -> Value {
    json!({
        "load": write.workload.label(),
        "clients": write.workload.clients,
        "events_per_append": write.workload.events_per_append,
        "appends": write.appends,
        "events": write.events,
        "seconds": write.seconds,
        "events_per_second": write.events_per_second(),
        "appends_per_second": write.appends_per_second(),
        "p50_us": write.p50_us,
        "p99_us": write.p99_us,
        "p999_us": write.p999_us,
        "errors": write.errors,
        "events_per_fsync": write.events_per_fsync,
        "mean_us": write.mean_us,
        "hops_mean_us": write
            .hops
            .iter()
            .map(|hop| (hop.name.clone(), json!(hop.mean_us)))
            .collect::<serde_json::Map<String, Value>>(),
    })
}

fn rate_json(rate: crate::limits::NoopRate) -> Value {
    json!({
        "calls_per_second": rate.calls_per_second,
        "p50_us": rate.p50_us,
        "p99_us": rate.p99_us,
    })
}

fn ratio(value: f64, reference: f64) -> String {
    if reference <= 0.0 {
        return String::new();
    }
    format!("{:.2}×", value / reference)
}

fn percent(fraction: f64) -> String {
    format!("{:.0} %", fraction * 100.0)
}

fn latency(micros: u64) -> String {
    if micros < 1_000 {
        format!("{micros} µs")
    } else {
        format!("{:.1} ms", micros as f64 / 1_000.0)
    }
}

/// A rate with thousands separators: 25405 → "25,405".
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}
