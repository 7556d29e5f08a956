//! `mofang`: the CLI, a thin client of the REST API (MOFANG_ADDR, MOFANG_TOKEN, and over
//! TLS MOFANG_CACERT, MOFANG_CLIENT_CERT, MOFANG_CLIENT_KEY) through the typed client
//! `mofang_scheduler::client`. Tables by default, `--json` for scripts. `mofang tls ...`
//! makes the cluster's CA and certificates, offline. One module per resource; this file holds
//! the flags, the dispatch and `main`.

use anyhow::Result;
use clap::{Parser, Subcommand};
use mofang_scheduler::client::{self, Client};

mod backup;
mod batch;
mod events;
mod haproxy;
mod instance;
mod keyring;
mod node;
mod operation;
mod render;
mod tls;

/// Mofang: MariaDB and Redis on your own hosts.
#[derive(Parser, Debug)]
#[command(name = "mofang", version, about)]
struct Cli {
    /// Scheduler REST address.
    #[arg(
        long,
        env = "MOFANG_ADDR",
        default_value = "https://127.0.0.1:8080",
        global = true
    )]
    addr: String,
    /// The cluster CA the scheduler's certificate must chain to.
    #[arg(long, env = "MOFANG_CACERT", global = true)]
    ca_cert: Option<std::path::PathBuf>,
    /// A client certificate to present (scheduler `tls.rest_verify_clients`).
    #[arg(long, env = "MOFANG_CLIENT_CERT", global = true)]
    client_cert: Option<std::path::PathBuf>,
    /// Its key.
    #[arg(long, env = "MOFANG_CLIENT_KEY", global = true)]
    client_key: Option<std::path::PathBuf>,
    /// API token.
    #[arg(long, env = "MOFANG_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Database instances.
    #[command(subcommand)]
    Instance(instance::InstanceCmd),
    /// Nodes (hosts running an agent).
    #[command(subcommand)]
    Node(node::NodeCmd),
    /// What happened (placements, state changes, failovers).
    Events {
        /// Only this instance.
        #[arg(long)]
        instance: Option<String>,
        /// Only events after this id.
        #[arg(long, default_value_t = 0)]
        since: u64,
        #[command(flatten)]
        back: events::Backward,
    },
    /// Resume automatic failover after the mass-failure guard stopped it.
    FailoverResume,
    /// The data keyring that seals secrets in the store (admin; docs/secrets.md).
    #[command(subcommand)]
    Keyring(keyring::KeyringCmd),
    /// The audit log (admin).
    Audit {
        /// Only entries after this id.
        #[arg(long, default_value_t = 0)]
        since: u64,
        #[command(flatten)]
        back: events::Backward,
    },
    /// The cluster PKI: CA and certificates (works offline, on files).
    #[command(subcommand)]
    Tls(tls::TlsCmd),
    /// Day-2 operations (rolling restart, ...): show, list, cancel.
    #[command(subcommand)]
    Operation(operation::OperationCmd),
    /// Full backups of instances (docs/backup.md).
    #[command(subcommand)]
    Backup(backup::BackupCmd),
    /// Where backups are kept.
    #[command(subcommand)]
    BackupRepo(backup::BackupRepoCmd),
    /// One operation on every instance a label selector chooses.
    #[command(subcommand)]
    Batch(batch::BatchCmd),
    /// The engines, their versions and the parameters `instance reconfigure` may set.
    Engines,
}

async fn run(cli: Cli) -> Result<()> {
    if let Cmd::Tls(cmd) = cli.cmd {
        return tls::run(cmd);
    }
    let http = tls::http_client(
        cli.ca_cert.as_deref(),
        cli.client_cert.as_deref(),
        cli.client_key.as_deref(),
    )?;
    let c = Client::new(cli.addr.clone(), http)
        .with_token(cli.token.clone())
        .on_warm_up(|wait| {
            eprintln!(
                "the scheduler has just begun to lead and waits to hear from its nodes; retrying in {}s",
                wait.as_secs()
            )
        });
    let json = cli.json;
    match cli.cmd {
        Cmd::Tls(_) => {}
        Cmd::Instance(cmd) => instance::run(&c, cmd, json).await?,
        Cmd::Engines => instance::engines(&c, json).await?,
        Cmd::Node(cmd) => node::run(&c, cmd, json).await?,
        Cmd::Operation(cmd) => operation::run(&c, cmd, json).await?,
        Cmd::Batch(cmd) => batch::run(&c, cmd, json).await?,
        Cmd::Backup(cmd) => backup::run_backup(&c, cmd, json).await?,
        Cmd::BackupRepo(cmd) => backup::run_repo(&c, cmd, json).await?,
        Cmd::Keyring(cmd) => keyring::run(&c, cmd, json).await?,
        Cmd::Events {
            instance,
            since,
            back,
        } => events::events(&c, instance.as_deref(), since, &back, json).await?,
        Cmd::Audit { since, back } => events::audit(&c, since, &back, json).await?,
        Cmd::FailoverResume => {
            let r = c.failover_resume().await?;
            if json {
                render::print_json(&r)
            } else {
                println!("automatic failover resumed");
            }
        }
    }
    Ok(())
}

/// What the CLI says of a failure: a request that could not be sent is explained for an
/// operator (an untrusted certificate, HTTP to an HTTPS port); anything else with its causes.
fn explain(e: &anyhow::Error, addr: &str, has_ca: bool) -> String {
    match e.downcast_ref::<client::Error>() {
        Some(client::Error::Send { source, .. }) => tls::explain_send_error(source, addr, has_ca),
        _ => format!("{e:#}"),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let (addr, has_ca) = (cli.addr.clone(), cli.ca_cert.is_some());
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mofang: {}", explain(&e, &addr, has_ca));
            std::process::ExitCode::FAILURE
        }
    }
}
