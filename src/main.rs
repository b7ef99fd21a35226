//! The `portcullis` command: run the proxy, or check a config file.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;
use clap::{Parser, Subcommand};

use portcullis::admin;
use portcullis::config;
use portcullis::control::{self, Control};
use portcullis::etcd::Etcd;
use portcullis::idp::Idp;
use portcullis::metrics::Registry;
use portcullis::plugins::PluginEnv;
use portcullis::router::RouteTable;
use portcullis::server::{self, listener, Shared};
use portcullis::status;
use portcullis::tls::{self, Certs};

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
    // Before any thread starts, so that only the control thread ever takes these signals.
    control::block_signals();
    // One crypto provider for every TLS client in the process (upstreams and IdPs).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let driver = server::choose_driver(config.runtime.driver)?;
    let listeners = listener::bind_all(&config.listen, config.workers)?;
    let tls_listeners = listener::bind_all(&config.tls.listen, config.workers)?;
    let certs = Arc::new(Certs::new(config.tls.cert_store()));
    let tls = if config.tls.listen.is_empty() {
        None
    } else {
        if config.tls.ssls.is_empty() {
            tracing::warn!("tls.listen is set but ssls is empty: every handshake is refused until a certificate is added");
        }
        Some(tls::server_config(config.tls.protocols, certs.clone())?)
    };
    let mut plugins = PluginEnv::new(Idp::start()?, config.data_dir.clone());
    plugins.https_port = config.tls.listen.first().map(|a| a.port());
    let etcd = match config.config_provider {
        config::ConfigProvider::Etcd => {
            tracing::info!(hosts = ?config.etcd.hosts, prefix = %config.etcd.prefix, "config from etcd");
            Some(Etcd::start(&config.etcd)?)
        }
        config::ConfigProvider::Yaml => None,
    };
    plugins.etcd = etcd.clone();
    let shared = Arc::new(Shared {
        routes: Arc::new(ArcSwap::from_pointee(RouteTable::default())),
        stopping: AtomicBool::new(false),
        certs,
        tls,
        metrics: Arc::new(Registry::new(config.metrics)),
    });
    let config = Arc::new(config);
    let idp = plugins.idp.clone();
    // The first table: the file's routes with the Admin API's stored objects over them.
    let control = Control::new(path, config.clone(), shared.clone(), plugins, etcd.clone());
    let admin_addr = if config.admin_enabled {
        Some(start_admin(&config, &control)?)
    } else {
        tracing::info!("Admin API off (admin.enabled: false)");
        None
    };
    // After the first table is built: its routes register the identity providers /readyz waits
    // for, so it cannot answer "ready" before they exist.
    let status_addr = status::start(
        config.status_listen,
        status::Status {
            shared: shared.clone(),
            idp,
            hostname: status::hostname(),
            etcd: etcd.clone(),
        },
    )?;
    let workers = server::start_workers(
        config.clone(),
        shared.clone(),
        listeners,
        tls_listeners,
        driver,
    )?;
    tracing::info!(
        listen = ?config.listen,
        tls_listen = ?config.tls.listen,
        status = %status_addr,
        workers = config.workers,
        driver = ?driver,
        routes = shared.routes.load().routes.len(),
        admin = ?admin_addr,
        version = env!("CARGO_PKG_VERSION"),
        "portcullis ready"
    );
    control.start_etcd_sync()?;
    control.spawn_dns_refresher();
    control.wait_for_stop();
    workers.stop();
    tracing::info!("stopped");
    Ok(())
}

/// Start the Admin API with its key: from the config, or generated once into `data_dir`.
fn start_admin(
    config: &config::Config,
    control: &Arc<Control>,
) -> Result<std::net::SocketAddr, Box<dyn std::error::Error>> {
    let (key, source) = admin::key::admin_key(config.admin_key.as_deref(), &config.data_dir)
        .map_err(|e| format!("admin key: {e}"))?;
    let addr = admin::start(
        config.admin_listen,
        key.clone(),
        config.admin_max_body_bytes,
        control.clone(),
    )?;
    match source {
        admin::key::KeySource::Config => {}
        // Printed once, on the start that made it: later starts only say where it is.
        admin::key::KeySource::Generated(file) => eprintln!(
            "portcullis: generated an Admin API key (X-API-KEY), saved in {}: {key}",
            file.display()
        ),
        admin::key::KeySource::File(file) => {
            tracing::info!("Admin API key (X-API-KEY) is in {}", file.display())
        }
    }
    Ok(addr)
}
