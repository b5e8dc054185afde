//! The `tern` binary: parse flags, load the config, start logging, run until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tern::config::DEFAULT_CONFIG_TOML;
use tern::{Broker, Config};
use tracing_subscriber::EnvFilter;

/// Tern, an MQTT 3.1.1 broker.
#[derive(Debug, Parser)]
#[command(name = "tern", version, about)]
struct Cli {
    /// Configuration file (TOML). Without one, the built-in defaults apply.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen on this port instead of the first listener's (like mosquitto -p).
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    port: Option<u16>,
    /// Debug logging (RUST_LOG still wins when set).
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// Validate the configuration file and exit.
    #[arg(long = "check-config")]
    check_config: bool,
    /// Print the default configuration file and exit.
    #[arg(long = "print-default-config")]
    print_default_config: bool,
}

/// Exit status for a configuration problem.
const CONFIG_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{DEFAULT_CONFIG_TOML}");
        return ExitCode::SUCCESS;
    }
    let mut config = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("tern: config error: {e}");
                return ExitCode::from(CONFIG_ERROR);
            }
        },
        None => Config::default(),
    };
    if cli.check_config {
        let name = cli
            .config
            .as_ref()
            .map_or("<defaults>".into(), |p| p.display().to_string());
        println!("tern: {name}: configuration OK");
        return ExitCode::SUCCESS;
    }
    if let Some(port) = cli.port {
        if let Some(first) = config.listener.first_mut() {
            first.bind.set_port(port);
        }
    }
    let level = if cli.verbose {
        "debug"
    } else {
        config.log.level.as_str()
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let broker = match Broker::bind(config).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("tern: {e}");
                return ExitCode::FAILURE;
            }
        };
        broker.run(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
