//! Child processes of a run (servers under test), stopped when the run is done with them, and
//! killed if the run ends early.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A server process. Dropping it kills the process.
pub(crate) struct ServerProcess {
    name: String,
    child: Child,
}

impl ServerProcess {
    /// Starts `command` and waits for a line of its standard error that contains `marker`;
    /// returns the rest of that line after the marker. The remaining output goes on being read
    /// (so the child never blocks on a full pipe) into `log`.
    pub(crate) fn start_and_wait_for(
        name: &str,
        mut command: Command,
        marker: &str,
        log: &Path,
    ) -> Result<(ServerProcess, String)> {
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let stderr = child.stderr.take().context("no standard error")?;
        let process = ServerProcess {
            name: name.to_string(),
            child,
        };
        process.wait_for(stderr, marker, log)
    }

    /// As [`ServerProcess::start_and_wait_for`], for a server that logs to standard output; its
    /// standard error goes to `log` with `.stderr` added.
    pub(crate) fn start_and_wait_for_stdout(
        name: &str,
        mut command: Command,
        marker: &str,
        log: &Path,
    ) -> Result<(ServerProcess, String)> {
        let errors = std::fs::File::create(log.with_extension("stderr"))
            .with_context(|| format!("cannot create {name}'s error log"))?;
        command.stdout(Stdio::piped()).stderr(errors);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let stdout = child.stdout.take().context("no standard output")?;
        let process = ServerProcess {
            name: name.to_string(),
            child,
        };
        process.wait_for(stdout, marker, log)
    }

    fn wait_for(
        mut self,
        output: impl std::io::Read + Send + 'static,
        marker: &str,
        log: &Path,
    ) -> Result<(ServerProcess, String)> {
        let name = self.name.clone();
        let mut lines = BufReader::new(output).lines();
        let mut seen = Vec::new();
        let found = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.split(marker).nth(1) {
                        break rest.to_string();
                    }
                    seen.push(line);
                }
                Some(Err(error)) => return Err(error).context("cannot read the server's log"),
                None => {
                    let status = self.child.wait()?;
                    bail!(
                        "{name} exited ({status}) before it was ready:\n{}",
                        seen.join("\n")
                    );
                }
            }
        };
        let log = log.to_path_buf();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&log).ok();
            for line in seen.into_iter().map(Ok).chain(lines) {
                let Ok(line) = line else { break };
                if let Some(file) = file.as_mut() {
                    let _ = std::io::Write::write_all(file, format!("{line}\n").as_bytes());
                }
            }
        });
        Ok((self, found))
    }

    /// SIGTERM, then wait up to `patience` before killing it.
    pub(crate) fn stop(mut self, patience: Duration) -> Result<()> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !sent.success() {
            bail!("cannot signal {}", self.name);
        }
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{} did not stop within {patience:?}; killed", self.name)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A loopback port that was free a moment ago (for servers that cannot report the port they
/// bound).
pub(crate) fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The first of `candidates` that is an existing file.
pub(crate) fn first_existing(candidates: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    candidates.into_iter().find(|path| path.is_file())
}

/// `name` looked up on `PATH`.
pub(crate) fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    first_existing(std::env::split_paths(&path).map(|dir| dir.join(name)))
}

/// Whether this process runs as root (servers such as PostgreSQL refuse to run as root).
pub(crate) fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// Runs a short command to completion; its output is in the error if it fails.
pub(crate) fn run_quietly(name: &str, command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {name}"))?;
    if !output.status.success() {
        bail!(
            "{name} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Where `bench/compare.sh` installs the peers it builds from crates.io, kept between runs:
/// `EXESDB_PEERS_DIR`, or `~/.cache/exesdb-compare`.
pub(crate) fn peer_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("EXESDB_PEERS_DIR") {
        return Some(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".cache/exesdb-compare"))
}

/// A peer's binary: `given`, or `name` on `PATH`, or where `bench/compare.sh` installs
/// `<name>-<version>` in the cache.
pub(crate) fn find_peer_binary(given: Option<&Path>, name: &str, version: &str) -> Option<PathBuf> {
    if let Some(given) = given {
        return given.is_file().then(|| given.to_path_buf());
    }
    on_path(name).or_else(|| {
        let cache = peer_cache_dir()?;
        first_existing([cache.join(format!("{name}-{version}/bin/{name}"))])
    })
}
