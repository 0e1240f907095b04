//! The `exesdb` command: `exesdb serve` runs a node (single mode) with HTTP health on the
//! listen address; client commands arrive with the gRPC gateway (issue 3).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use exesdb::{MetricsRenderer, Node, SystemConfig};

#[derive(Parser)]
#[command(name = "exesdb", version, about = "ExESDB in Rust: an event store")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: open its stores and serve them.
    Serve(ServeArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Single,
    Cluster,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Where the stores keep their data (one directory per store).
    #[arg(long, env = "EXESDB_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// A store to host; repeat for several.
    #[arg(
        long = "store",
        env = "EXESDB_STORE",
        default_value = "default",
        value_delimiter = ','
    )]
    stores: Vec<String>,
    /// Address for HTTP (and, from issue 3, gRPC).
    #[arg(long, env = "EXESDB_LISTEN", default_value = "127.0.0.1:2113")]
    listen: SocketAddr,
    /// `single` (one node) or `cluster` (not available yet).
    #[arg(long, env = "EXESDB_MODE", value_enum, default_value = "single")]
    mode: Mode,
    /// Log line format on stderr (filter with RUST_LOG).
    #[arg(long, env = "EXESDB_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_logging(args.log_format);
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
            match runtime.block_on(serve(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("exesdb: {message}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    if matches!(args.mode, Mode::Cluster) {
        return Err("cluster mode is not available yet; run with --mode single".into());
    }
    let metrics = install_metrics()?;
    let template = SystemConfig::new(&args.data_dir, "default");
    let node = Node::start(template, &args.stores)
        .await
        .map_err(|error| error.to_string())?;
    let node = Arc::new(node);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
    let local = listener
        .local_addr()
        .map_err(|error| format!("cannot read the listen address: {error}"))?;
    let app = node.router(Some(metrics))?;
    tracing::info!(listen = %local, data_dir = %args.data_dir.display(), stores = ?args.stores, "exesdb serving");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    tracing::info!("connections closed; stopping the stores");
    node.stop().await;
    tracing::info!("exesdb stopped");
    served.map_err(|error| format!("the HTTP server failed: {error}"))
}

fn install_metrics() -> Result<MetricsRenderer, String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let latency = [
        0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0,
    ];
    let batch = [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
    ];
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("exesdb_append_latency_seconds".into()),
            &latency,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("exesdb_commit_batch_events".into()), &batch)
        })
        .map_err(|error| format!("cannot configure metrics: {error}"))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|error| format!("cannot install the metrics recorder: {error}"))?;
    Ok(Arc::new(move || handle.render()))
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::error!(%error, "cannot watch SIGTERM; only SIGINT stops the server");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("stopping: finishing in-flight work, then stopping the tree in reverse order");
}
