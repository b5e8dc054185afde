//! The `tern` binary: parse flags, load the config, start logging, run until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tern::auth::passwd::{update_file, Change};
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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Create or update a user in a Mosquitto-compatible password file (like mosquitto_passwd).
    Passwd(PasswdArgs),
    /// Read a stopped broker's store (`[persistence]`): `stats` or `dump`.
    Store {
        #[command(subcommand)]
        what: StoreCommand,
    },
    /// The cluster (`[cluster]`) as NATS holds it: `status`.
    Cluster {
        #[command(subcommand)]
        what: ClusterCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
enum ClusterCommand {
    /// Every node, its lease's age, its sessions and the client ids it owns.
    Status {
        /// A node's configuration file (its `[cluster]` is read).
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// `tern passwd`'s arguments.
#[derive(Debug, clap::Args)]
struct PasswdArgs {
    /// Batch mode: take the password from the command line instead of prompting.
    #[arg(short = 'b')]
    batch: bool,
    /// Delete the user instead of setting its password.
    #[arg(short = 'D', conflicts_with = "batch")]
    delete: bool,
    /// Create a new file, overwriting an existing one.
    #[arg(short = 'c')]
    create: bool,
    /// The password file.
    file: PathBuf,
    /// The user name.
    user: String,
    /// The password (with -b only).
    password: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum StoreCommand {
    /// Counts: sessions, subscriptions, queued and inflight messages, retained, bytes.
    Stats {
        /// The broker's configuration file (its `persistence_location` is read).
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Every stored session, subscription, queued message and retained message, a line each.
    Dump {
        /// The broker's configuration file (its `persistence_location` is read).
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// `tern store`: one line on error, exit 2 (the broker's exit for a store it cannot open).
fn store(what: StoreCommand, top_config: Option<PathBuf>) -> ExitCode {
    let (config, dump) = match what {
        StoreCommand::Stats { config } => (config, false),
        StoreCommand::Dump { config } => (config, true),
    };
    let config = match config.or(top_config) {
        Some(path) => match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("tern store: config error: {e}");
                return ExitCode::from(CONFIG_ERROR);
            }
        },
        None => Config::default(),
    };
    let dir = &config.persistence.persistence_location;
    let contents = match tern::store::inspect(dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tern store: {e}");
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    let mut out = std::io::stdout().lock();
    let written = if dump {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        contents.dump(&mut out, now_ms)
    } else {
        use std::io::Write;
        writeln!(out, "store:         {}", dir.display())
            .and_then(|()| write!(out, "{}", contents.stats()))
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is not an error worth a message.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern store: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tern cluster status`: one line on error, exit 2.
fn cluster(what: ClusterCommand, top_config: Option<PathBuf>) -> ExitCode {
    let ClusterCommand::Status { config } = what;
    let Some(path) = config.or(top_config) else {
        eprintln!("tern cluster: give a node's configuration file with -c");
        return ExitCode::from(CONFIG_ERROR);
    };
    let cfg = match Config::load(&path) {
        Ok(c) => c.cluster,
        Err(e) => {
            eprintln!("tern cluster: config error: {e}");
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    let Some(cfg) = cfg else {
        eprintln!("tern cluster: {}: no [cluster] section", path.display());
        return ExitCode::from(CONFIG_ERROR);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tern cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    let nodes = match runtime.block_on(tern::cluster::status::read(&cfg)) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("tern cluster: {e}");
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    println!(
        "{:<24} {:>10} {:>9} {:>10}",
        "node", "lease age", "sessions", "client ids"
    );
    for n in nodes {
        let age = if n.lease_age == std::time::Duration::MAX {
            "none".to_string()
        } else {
            format!("{:.1}s", n.lease_age.as_secs_f64())
        };
        println!(
            "{:<24} {:>10} {:>9} {:>10}",
            n.name, age, n.sessions, n.client_ids
        );
    }
    ExitCode::SUCCESS
}

/// `tern passwd`: one line on error, exit 1.
fn passwd(args: PasswdArgs) -> ExitCode {
    let PasswdArgs {
        batch,
        delete,
        create,
        file,
        user,
        password,
    } = args;
    let password = match (delete, batch, password) {
        (true, _, _) => None,
        (false, true, Some(p)) => Some(p),
        (false, true, None) => {
            eprintln!("tern passwd: -b needs the password after the user name");
            return ExitCode::FAILURE;
        }
        (false, false, Some(_)) => {
            eprintln!("tern passwd: a password on the command line needs -b");
            return ExitCode::FAILURE;
        }
        (false, false, None) => {
            let first = rpassword::prompt_password("Password: ");
            let second = rpassword::prompt_password("Reenter password: ");
            match (first, second) {
                (Ok(a), Ok(b)) if a == b => Some(a),
                (Ok(_), Ok(_)) => {
                    eprintln!("tern passwd: passwords do not match");
                    return ExitCode::FAILURE;
                }
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("tern passwd: cannot read the password: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let change = match &password {
        Some(p) => Change::Set(p.as_bytes()),
        None => Change::Delete,
    };
    match update_file(&file, &user, change, create) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern passwd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Counts the heap for `[mqtt] memory_limit`.
#[global_allocator]
static ALLOCATOR: tern::observability::memory::Counting = tern::observability::memory::Counting;

/// Exit status for a configuration problem (and a store that cannot be opened).
const CONFIG_ERROR: u8 = 2;
/// Exit status after the store failed while running.
const STORE_FAILED: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Store { what }) => return store(what, cli.config),
        Some(Command::Cluster { what }) => return cluster(what, cli.config),
        Some(Command::Passwd(args)) => return passwd(args),
        None => {}
    }
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
        // The password, ACL and TLS files are part of the configuration.
        if let Err(e) = tern::auth::Policy::load(&config.auth) {
            eprintln!("tern: config error: {e}");
            return ExitCode::from(CONFIG_ERROR);
        }
        for listener in &config.listener {
            if let Err(e) = tern::door::tls::acceptor(listener) {
                eprintln!("tern: config error: {e}");
                return ExitCode::from(CONFIG_ERROR);
            }
        }
        if let Err(e) = tern::http::load_users(&config.http) {
            eprintln!("tern: config error: http.password_file: {e}");
            return ExitCode::from(CONFIG_ERROR);
        }
        let name = cli
            .config
            .as_ref()
            .map_or("<defaults>".into(), |p| p.display().to_string());
        println!("tern: {name}: configuration OK");
        return ExitCode::SUCCESS;
    }
    if let Some(port) = cli.port {
        config.override_port(port);
    }
    let level = if cli.verbose {
        "debug"
    } else {
        config.log.level.as_str()
    };
    // RUST_LOG and -v win over the file, on start and on reload.
    let fixed_level = cli.verbose || std::env::var_os("RUST_LOG").is_some();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| log_filter_for(level));
    // Colours only on a terminal: a log file or journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let logger = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_filter_reloading();
    let log_filter = logger.reload_handle();
    logger.init();
    let set_log_level = move |level: &str| {
        if fixed_level {
            tracing::info!(level, "log level not changed: RUST_LOG or -v is in force");
        } else if let Err(e) = log_filter.reload(log_filter_for(level)) {
            tracing::warn!(error = %e, "cannot change the log level");
        }
    };

    reserve_descriptors(&config);
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
            Err(
                e @ (tern::StartError::Auth(_)
                | tern::StartError::Tls(_)
                | tern::StartError::Memory(_)
                | tern::StartError::Store(_)),
            ) => {
                eprintln!("tern: config error: {e}");
                return ExitCode::from(CONFIG_ERROR);
            }
            Err(e) => {
                eprintln!("tern: {e}");
                return ExitCode::FAILURE;
            }
        };
        spawn_reload_on_sighup(broker.reloader(), set_log_level);
        let failure = broker.store_failure();
        tokio::spawn(async move {
            let reason = failure.await;
            // Nothing is acknowledged any more; what was is on disk. Stop at once.
            tracing::error!(%reason, "the store failed; stopping");
            std::process::exit(STORE_FAILED.into());
        });
        broker.run(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// The filter for `[log] level`: the store engine's routine progress lines (flushes,
/// compactions) only at debug, where the operator asked for detail.
fn log_filter_for(level: &str) -> EnvFilter {
    let quiet = !matches!(level, "debug" | "trace");
    let filter = EnvFilter::new(level);
    if !quiet {
        return filter;
    }
    ["fjall=warn", "lsm_tree=warn"]
        .iter()
        .filter_map(|d| d.parse().ok())
        .fold(filter, EnvFilter::add_directive)
}

/// Grows the descriptor table for every connection the listeners may hold (all of
/// `tern::door::fds::MAX_RESERVED` if any listener is unlimited), while this is the only thread.
fn reserve_descriptors(config: &Config) {
    // Listening sockets, the runtime's own descriptors, log files.
    const HEADROOM: usize = 64;
    let wanted = config
        .listener
        .iter()
        .map(|l| match l.max_connections {
            0 => tern::door::fds::MAX_RESERVED,
            n => n,
        })
        .fold(HEADROOM, usize::saturating_add);
    match tern::door::fds::reserve(wanted) {
        Ok(n) => tracing::debug!(slots = n, "descriptor table reserved"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot reserve the descriptor table; it grows as needed")
        }
    }
}

/// Reloads the configuration on every SIGHUP; a bad file keeps the old configuration.
fn spawn_reload_on_sighup(
    reloader: tern::broker::Reloader,
    set_log_level: impl Fn(&str) + Send + 'static,
) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reloading is off");
            return;
        };
        while hup.recv().await.is_some() {
            match reloader.reload() {
                Ok(done) => {
                    if let Some(level) = &done.log_level {
                        set_log_level(level);
                    }
                    for key in &done.need_restart {
                        tracing::warn!(
                            key,
                            "SIGHUP: changed setting needs a restart; old value kept"
                        );
                    }
                    tracing::info!("SIGHUP: configuration and files reloaded");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "SIGHUP: reload failed; keeping the previous configuration")
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (reloader, set_log_level);
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
