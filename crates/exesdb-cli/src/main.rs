//! The `exesdb` command: `exesdb serve` runs a node; the other commands talk to one
//! (`spec/cli.md`).

/// `print!` that ends the program quietly once stdout's reader has gone
/// (`output::write_stdout`).
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!($($arg)*)) };
}

/// `println!` that ends the program quietly once stdout's reader has gone.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod bench;
mod commands;
mod output;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// glibc's allocator spent a fifth of the server's time in malloc/free when streaming reads
// (docs/DECISIONS.md has the measurement).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "exesdb", version, about = "ExESDB in Rust: an event store")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: open its stores and serve them over gRPC and HTTP on one port.
    Serve(Box<serve::ServeArgs>),
    /// Load a running server and measure it (throughput, latency percentiles, self-check).
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
        #[command(flatten)]
        target: bench::BenchTarget,
    },
    #[command(flatten)]
    Client(commands::ClientCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("exesdb: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Serve(args) => {
            let settings = match args.settings() {
                Ok(settings) => settings,
                Err(message) => {
                    eprintln!("exesdb: {message}");
                    return ExitCode::from(2);
                }
            };
            init_logging(settings.log_format);
            match runtime.block_on(serve::serve(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("exesdb: {message}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Client(command) => runtime.block_on(commands::run(command)),
        Command::Bench { command, target } => match runtime.block_on(bench::run(command, target)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("exesdb bench: {message}");
                ExitCode::from(1)
            }
        },
    }
}

fn init_logging(format: serve::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // openraft logs every vote and append at info: its warnings are what an operator needs.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        serve::LogFormat::Text => builder.init(),
        serve::LogFormat::Json => builder.json().init(),
    }
}
