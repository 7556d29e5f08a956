//! mofang-agent: parse flags, load config (exit 64 naming the field when invalid), start
//! tracing, run until SIGTERM/SIGINT, drain.

use clap::Parser;
use mofang_agent::config::AgentConfig;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The Mofang agent: runs database containers on this host.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Config file (TOML).
    #[arg(
        long,
        short,
        env = "MOFANG_AGENT_CONFIG",
        default_value = "/etc/mofang/agent.toml"
    )]
    config: PathBuf,
    /// Check the config file and exit.
    #[arg(long)]
    check: bool,
    /// Rotate the state directory's key (`key_file`) and exit: every sealed file is sealed
    /// again with a new key and the old one is removed. The agent must be stopped.
    #[arg(long)]
    rotate_key: bool,
}

/// sysexits.h EX_CONFIG... EX_USAGE (64) is what operators' tooling expects for bad input.
const EX_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match AgentConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mofang-agent: invalid config: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    // The files the config names (CA, certificate, key) are part of the config: a missing
    // one is refused here, naming its field, before anything starts.
    if let Err(e) = mofang_agent::tls::check_files(&cfg) {
        eprintln!("mofang-agent: invalid config: {e}");
        return ExitCode::from(EX_CONFIG);
    }
    if args.check {
        println!("config {} is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    if args.rotate_key {
        // A running agent keeps the old key in memory and would seal with it after the
        // rotation: refused while something listens on its HTTP address.
        if std::net::TcpListener::bind(&cfg.http_listen).is_err() {
            eprintln!(
                "mofang-agent: {} is in use: is the agent running? Stop it (systemctl stop \
                 mofang-agent), then rotate the key",
                cfg.http_listen
            );
            return ExitCode::FAILURE;
        }
        return match mofang_agent::state::LocalState::rotate_key(&cfg.state_dir, &cfg.key_file()) {
            Ok(r) => {
                println!(
                    "key_file {}: key {} now seals {} files; retired keys: {:?}",
                    cfg.key_file().display(),
                    r.key,
                    r.files,
                    r.retired
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mofang-agent: key not rotated: {e}");
                if e.is_config() {
                    ExitCode::from(EX_CONFIG)
                } else {
                    ExitCode::FAILURE
                }
            }
        };
    }
    init_tracing(cfg.log_json);
    // The key file and the sealed state are checked before anything runs: a missing or
    // wrong key is the operator's to fix (exit 64 naming `key_file`), never a crash later.
    let state =
        mofang_agent::state::LocalState::open(&cfg.state_dir, &cfg.key_file(), &cfg.run_dir);
    if let Err(e) = state.and_then(|s| s.load_desired().map(drop)) {
        let mut why = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            why.push_str(&format!(": {c}"));
            cause = c.source();
        }
        tracing::error!(error = %why, "agent cannot open its state");
        if e.is_config() {
            eprintln!("mofang-agent: invalid config: {why}");
            return ExitCode::from(EX_CONFIG);
        }
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mofang-agent: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let agent = tokio::spawn(mofang_agent::agent::run(cfg, shutdown.clone()));
        mofang_common::signal::shutdown_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(10), agent).await {
            Ok(Ok(Ok(()))) => ExitCode::SUCCESS,
            Ok(Ok(Err(e))) => {
                tracing::error!(error = %e, "agent failed");
                ExitCode::FAILURE
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "agent task panicked");
                ExitCode::FAILURE
            }
            Err(_) => {
                tracing::warn!("agent did not stop within 10s; exiting anyway");
                ExitCode::SUCCESS
            }
        }
    })
}

fn init_tracing(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
