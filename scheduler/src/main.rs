//! mofang-scheduler: parse flags, load config (exit 64 naming the field when invalid), start
//! tracing, serve until SIGTERM/SIGINT, drain.

use clap::Parser;
use mofang_scheduler::config::SchedulerConfig;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// The Mofang scheduler: places database members and serves the API.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Config file (TOML). Without it, defaults are used.
    #[arg(long, short, env = "MOFANG_SCHEDULER_CONFIG")]
    config: Option<PathBuf>,
    /// Check the config file and exit.
    #[arg(long)]
    check: bool,
}

const EX_CONFIG: u8 = 64;

// mimalloc instead of glibc malloc: the scheduler allocates many small, short-lived objects
// per request and per desired state (measured in docs/benchmarks.md, issue 4).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // No transparent huge pages for this process (decision 175): mimalloc asks for them on
    // its arenas, and every page it gives back and takes again was then a 2 MiB page zeroed
    // by the kernel (clear_page was 7.6 % of the scheduler's CPU while creating; without them
    // 0.32-0.34 ms instead of 0.39-0.40 ms CPU per placement and 64 instead of 100 MiB idle,
    // docs/benchmarks.md). The first thing done, so nearly every page the process touches
    // is a small one; a kernel that refuses leaves things as they were (logged below).
    let thp = rustix::thread::disable_transparent_huge_pages(true);
    let args = Args::parse();
    let cfg = match &args.config {
        Some(p) => match SchedulerConfig::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("mofang-scheduler: invalid config: {e}");
                return ExitCode::from(EX_CONFIG);
            }
        },
        None => SchedulerConfig::default(),
    };
    if args.check {
        println!("config is valid");
        return ExitCode::SUCCESS;
    }
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if cfg.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    if let Err(e) = thp {
        tracing::warn!(error = %e, "transparent huge pages stay on for this process (prctl PR_SET_THP_DISABLE refused)");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mofang-scheduler: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let (_, run) = match mofang_scheduler::daemon::start(cfg, shutdown.clone()).await {
            Ok(s) => s,
            Err(e) if e.is_config() => {
                let mut why = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    why.push_str(&format!(": {c}"));
                    cause = c.source();
                }
                tracing::error!(error = %why, "scheduler failed to start");
                eprintln!("mofang-scheduler: invalid config: {why}");
                return ExitCode::from(EX_CONFIG);
            }
            Err(e) => {
                tracing::error!(error = %e, "scheduler failed to start");
                return ExitCode::FAILURE;
            }
        };
        let waiter = tokio::spawn(run);
        mofang_common::signal::shutdown_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
        let _ = waiter.await;
        ExitCode::SUCCESS
    })
}
