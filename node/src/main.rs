//! `berth`: a distributed OCI container registry.

use std::path::PathBuf;

use berth_node::config::{Config, LogFormat, LogLevel};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth", version, about = "A distributed, replicated OCI container registry")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a registry node. With no configuration: a single voter on 0.0.0.0:5000 keeping
    /// its data under ./berth-data.
    Serve {
        /// Docker Distribution style config.yml (also accepted as the positional argument).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Config file, as `registry serve config.yml` takes it.
        #[arg(conflicts_with = "config")]
        config_file: Option<PathBuf>,
        /// Where Raft data and (by default) blobs are kept.
        #[arg(long, env = "BERTH_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

fn init_logging(cfg: &Config) {
    let level = match cfg.log.level.unwrap_or(LogLevel::Info) {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},openraft=warn")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cfg.log.formatter {
        Some(LogFormat::Json | LogFormat::Logstash) => builder.json().init(),
        _ => builder.init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let Command::Serve { config, config_file, data_dir } = cli.command;
    let file = config.or(config_file);
    let (cfg, unknown) = match Config::load(file.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth: configuration error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(&cfg);
    for key in unknown {
        tracing::warn!(key, "unknown configuration key ignored");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(berth_node::serve(berth_node::ServeOptions { config: cfg, data_dir })) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
