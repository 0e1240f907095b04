//! The `exesdb` command: `exesdb serve` runs a node (single mode) with HTTP health on the
//! listen address; client commands arrive with the gRPC gateway (issue 3).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use clap::{Parser, Subcommand, ValueEnum};
use exesdb::{NodeStores, System, SystemConfig};

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

struct Node {
    systems: Vec<System>,
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    if matches!(args.mode, Mode::Cluster) {
        return Err("cluster mode is not available yet; run with --mode single".into());
    }
    let node_stores = NodeStores::default();
    let mut systems = Vec::new();
    for store_id in &args.stores {
        let mut config = SystemConfig::new(&args.data_dir, store_id.clone());
        config.node_stores = node_stores.clone();
        match System::start(config).await {
            Ok(system) => systems.push(system),
            Err(error) => {
                for system in systems {
                    system.stop().await;
                }
                return Err(format!("store {store_id}: {error}"));
            }
        }
    }
    let node = Arc::new(Node { systems });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
    let local = listener
        .local_addr()
        .map_err(|error| format!("cannot read the listen address: {error}"))?;
    tracing::info!(listen = %local, data_dir = %args.data_dir.display(), stores = ?args.stores, "exesdb serving");
    let app = Router::new()
        .route("/health", get(health))
        .with_state(node.clone());
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    let node = Arc::into_inner(node).ok_or("a request still holds the node after shutdown")?;
    for system in node.systems {
        system.stop().await;
    }
    tracing::info!("exesdb stopped");
    served.map_err(|error| format!("the HTTP server failed: {error}"))
}

async fn health(State(node): State<Arc<Node>>) -> (StatusCode, axum::Json<serde_json::Value>) {
    let stores: Vec<serde_json::Value> = node
        .systems
        .iter()
        .map(|system| {
            serde_json::json!({
                "store": system.store_id(),
                "accepts_writes": system.accepts_writes(),
                "leader": system.is_leader(),
            })
        })
        .collect();
    let healthy = node.systems.iter().all(System::accepts_writes);
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "mode": "single",
        "version": env!("CARGO_PKG_VERSION"),
        "stores": stores,
    });
    (status, axum::Json(body))
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
