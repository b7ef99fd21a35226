//! The `portcullis` command: run the proxy, or check a config file.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;
use clap::{Parser, Subcommand};

use portcullis::config;
use portcullis::control::{self, Control};
use portcullis::idp::Idp;
use portcullis::metrics::Registry;
use portcullis::plugins::PluginEnv;
use portcullis::router::RouteTable;
use portcullis::server::{self, listener, Shared};
use portcullis::status;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "An edge reverse proxy that authenticates traffic with OpenID Connect"
)]
struct Cli {
    /// Config file.
    #[arg(
        short = 'c',
        long = "config",
        default_value = "conf/config.yaml",
        global = true
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config file and exit: 0 if valid, else every problem is printed.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = match config::load_file(&cli.config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{}: invalid config:\n{errors}", cli.config.display());
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Check) = cli.command {
        println!(
            "{}: ok ({} routes)",
            cli.config.display(),
            config.routes.len()
        );
        return ExitCode::SUCCESS;
    }
    match run(cli.config, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("portcullis: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(path: PathBuf, config: config::Config) -> Result<(), Box<dyn std::error::Error>> {
    // One crypto provider for every TLS client in the process (upstreams and IdPs).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let driver = server::choose_driver(config.runtime.driver)?;
    let listeners = listener::bind_all(&config.listen, config.workers)?;
    let plugins = PluginEnv::new(Idp::start()?, config.data_dir.clone());
    let table = RouteTable::compile(&config.routes, &config.per_core, &plugins);
    let shared = Arc::new(Shared {
        routes: Arc::new(ArcSwap::from_pointee(table)),
        stopping: AtomicBool::new(false),
        metrics: Arc::new(Registry::new(config.metrics)),
    });
    let status_addr = status::start(
        config.status_listen,
        status::Status {
            shared: shared.clone(),
            idp: plugins.idp.clone(),
            hostname: status::hostname(),
        },
    )?;
    let config = Arc::new(config);
    // Before any thread starts, so that only the control thread ever takes these signals.
    control::block_signals();
    let workers = server::start_workers(config.clone(), shared.clone(), listeners, driver)?;
    tracing::info!(
        listen = ?config.listen,
        status = %status_addr,
        workers = config.workers,
        driver = ?driver,
        routes = shared.routes.load().routes.len(),
        version = env!("CARGO_PKG_VERSION"),
        "portcullis ready"
    );
    let control = Control::new(path, config, shared, plugins);
    control.spawn_dns_refresher();
    control.wait_for_stop();
    workers.stop();
    tracing::info!("stopped");
    Ok(())
}
