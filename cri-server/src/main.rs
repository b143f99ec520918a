//! berthd: the berth CRI daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use berth_core::Config;
use berth_core::config::Overrides;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berthd", version, about = "berth: a Kubernetes CRI container runtime")]
struct Cli {
    /// Config file (default /etc/berth/config.toml; berthd runs without one).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// CRI socket path (default <state>/berth.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Persistent directory (default /var/lib/berth).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Runtime directory (default /run/berth).
    #[arg(long, global = true)]
    state: Option<PathBuf>,
    /// Log level or tracing filter (RUST_LOG wins when set).
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Reports what this host offers berth; exits 1 when something required is missing.
    Check,
    /// Config helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Image helpers.
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
}

#[derive(Subcommand)]
enum ImagesCommand {
    /// Imports an OCI image-layout tar or a `docker save` tar (air-gapped nodes), into the store of a stopped
    /// berthd (the metadata store has one writer).
    Import {
        /// The tar file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Prints the full default config.
    Default,
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = Config::load(cli.config.as_deref())?;
    config.apply(&Overrides {
        socket: cli.socket.clone(),
        root: cli.root.clone(),
        state: cli.state.clone(),
        log_level: cli.log_level.clone(),
    });
    config.validate()?;
    Ok(config)
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Config {
        command: ConfigCommand::Default,
    }) = &cli.command
    {
        print!("{}", Config::default_toml());
        return ExitCode::SUCCESS;
    }
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berthd: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Check) = &cli.command {
        let ok = berth_cri::check::print_report(&berth_cri::check::run_checks(&config));
        return if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    init_logging(&config);
    if let Some(Command::Images {
        command: ImagesCommand::Import { file },
    }) = &cli.command
    {
        return match tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(berth_cri::daemon::import_images(config, file)))
        {
            Ok(images) => {
                for i in images {
                    println!("{} {}", i.id, i.repo_tags.join(" "));
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("berthd: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berthd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(berth_cri::daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logging goes to stderr already.
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
