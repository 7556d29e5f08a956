//! Runs the scheduler: store, cluster, REST and gRPC servers, the node-liveness loop, and a
//! graceful shutdown that drains within a grace period.

use crate::agents::AgentService;
use crate::api::{self, Api};
use crate::auth::{ensure_admin_token, Tokens};
use crate::cluster::{Cluster, Registered};
use crate::config::StoreKind;
use crate::config::{SchedulerConfig, TokenRole};
use crate::registry::{ConsulRegistry, Registry, SchedulerService};
use crate::secrets::SealedStore;
use crate::store::Store;
use crate::tls::serve;
use mofang_common::proto::agent_control_server::AgentControlServer;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

/// Least time between two failover passes a heartbeat asked for.
const FAILOVER_WAKE_SPACING: Duration = Duration::from_millis(50);
/// How often the leader looks for due backup and verification slots (a slot runs within
/// this of its time).
const SCHEDULE_TICK: Duration = Duration::from_millis(500);

/// How often the leader deletes history older than `[history]` keeps it.
const HISTORY_EVERY: Duration = Duration::from_secs(3600);

/// How often the leader refreshes each binlog archive's window and gaps.
const PITR_REFRESH: Duration = Duration::from_secs(2);

/// Errors that stop the scheduler from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory or token file could not be prepared.
    #[error("data directory {path}")]
    DataDir {
        /// The path.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// The keyring file is missing, unreadable or wrong (a config error: exit 64).
    #[error(transparent)]
    Keyring(#[from] crate::secrets::Error),
    /// Loading the cluster state failed.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::Error),
    /// The election backend could not be set up.
    #[error(transparent)]
    Election(#[from] crate::election::Error),
    /// The Consul client could not be built.
    #[error(transparent)]
    Consul(#[from] crate::consul::Error),
    /// The config cannot be used (a TLS file is missing or unusable): exit 64, the message
    /// names the field.
    #[error(transparent)]
    Config(#[from] mofang_common::config::Error),
    /// A listener could not bind.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// True when the operator's config or files are at fault: the daemon exits 64.
    pub fn is_config(&self) -> bool {
        matches!(self, Error::Config(_)) || matches!(self, Error::Keyring(e) if e.is_config())
    }
}

/// Result of running the daemon.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Addresses the servers actually listen on (port 0 in config picks free ones).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// REST.
    pub rest: SocketAddr,
    /// gRPC.
    pub grpc: SocketAddr,
}

/// Starts everything; returns the bound addresses and a future that runs until shutdown.
pub async fn start(
    cfg: SchedulerConfig,
    shutdown: CancellationToken,
) -> Result<(Bound, impl std::future::Future<Output = ()>)> {
    let dir = &cfg.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| Error::DataDir {
        path: dir.clone(),
        source,
    })?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|source| {
        Error::DataDir {
            path: dir.clone(),
            source,
        }
    })?;
    // TLS first: a missing certificate file is a config error, found before anything starts.
    let tls = crate::tls::Tls::start(&cfg)?;
    crate::tls::reload_on_sighup(tls.clone(), shutdown.clone());
    match cfg.store {
        StoreKind::Consul => cfg.consul.tls().check_files("consul")?,
        StoreKind::Etcd => cfg.etcd.tls().check_files("etcd")?,
        StoreKind::Sqlite => {}
    }
    let backend: Arc<dyn Store> = crate::store::open(&cfg).await?;
    // Every secret is sealed before the backend sees it (docs/secrets.md).
    let sealed = Arc::new(SealedStore::open(backend, &cfg.keyring_file()).await?);
    let store: Arc<dyn Store> = sealed.clone();

    let mut tokens = Tokens::from_config(&cfg.tokens);
    if tokens.is_empty() {
        let (token, path) = ensure_admin_token(dir).map_err(|source| Error::DataDir {
            path: dir.clone(),
            source,
        })?;
        tokens.insert(&token, "admin", TokenRole::Admin);
        info!(path = %path.display(), "no tokens configured: admin token is in this file (mode 0600)");
    }

    // A loaded cluster follows. The only scheduler (SQLite) is in charge from the start, before
    // it serves anything; with a shared store it leads only once it wins the election below.
    let cluster = Cluster::load_with(store, cfg.node_ttl(), cfg.failover.clone()).await?;
    cluster.set_archive_interval(cfg.backup.archive_interval_s);
    // Whether this scheduler can sign member certificates (decision 112), said when it leads.
    let signer = tls.clone();
    let can_sign = move || {
        (
            signer.is_some(),
            signer.as_ref().is_some_and(|t| t.current().ca.is_some()),
        )
    };
    if cfg.store == StoreKind::Sqlite {
        cluster.activate().await?;
        let (on, signs) = can_sign();
        cluster.note_signing(on, signs).await;
        spawn_reencrypt(&cluster, &sealed, &shutdown);
    }
    let rest = tokio::net::TcpListener::bind(cfg.rest_listen)
        .await
        .map_err(|source| Error::Bind {
            addr: cfg.rest_listen,
            source,
        })?;
    let grpc = tokio::net::TcpListener::bind(cfg.grpc_listen)
        .await
        .map_err(|source| Error::Bind {
            addr: cfg.grpc_listen,
            source,
        })?;
    let bound = Bound {
        rest: rest.local_addr().map_err(|source| Error::Bind {
            addr: cfg.rest_listen,
            source,
        })?,
        grpc: grpc.local_addr().map_err(|source| Error::Bind {
            addr: cfg.grpc_listen,
            source,
        })?,
    };

    let app = api::router(Api {
        cluster: cluster.clone(),
        tokens: Arc::new(tokens),
        sealed: Some(sealed.clone()),
        tls: tls.clone(),
    });
    let sd = shutdown.clone();
    let rest_tls = tls.clone();
    let rest_task = tokio::spawn(
        async move {
            let make = app.into_make_service_with_connect_info::<SocketAddr>();
            let served = match rest_tls {
                None => {
                    axum::serve(rest, make)
                        .with_graceful_shutdown(async move { sd.cancelled().await })
                        .await
                }
                Some(t) => {
                    let local = bound.rest;
                    let rx = serve::accept(rest, t, serve::Port::Rest, sd.clone());
                    // `tap_io` only to get axum's `ConnectInfo<SocketAddr>` for any listener
                    // (the audit log records the peer address).
                    use axum::serve::ListenerExt;
                    let listener = serve::RestListener::new(rx, local).tap_io(|_| {});
                    axum::serve(listener, make)
                        .with_graceful_shutdown(async move { sd.cancelled().await })
                        .await
                }
            };
            if let Err(e) = served {
                warn!(error = %e, "REST server stopped with an error");
            }
        }
        .instrument(tracing::info_span!("rest")),
    );

    // Agents are told the failover lease; each announces its own at registration and the
    // scheduler waits for the longer of the two before promoting after a node loss.
    let svc = AgentService::new(
        cluster.clone(),
        cfg.heartbeat_interval_ms,
        cfg.failover.lease_ttl_ms,
    )
    .with_tls(tls.clone(), cfg.tls.join_cert_days);
    let sd = shutdown.clone();
    let grpc_tls = tls.clone();
    let grpc_task = tokio::spawn(
        async move {
            let server = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(AgentControlServer::new(svc));
            let served = match grpc_tls {
                None => {
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
                    server
                        .serve_with_incoming_shutdown(incoming, async move { sd.cancelled().await })
                        .await
                }
                Some(t) => {
                    let rx = serve::accept(grpc, t, serve::Port::Grpc, sd.clone());
                    server
                        .serve_with_incoming_shutdown(serve::grpc_incoming(rx), async move {
                            sd.cancelled().await
                        })
                        .await
                }
            };
            if let Err(e) = served {
                warn!(error = %e, "gRPC server stopped with an error");
            }
        }
        .instrument(tracing::info_span!("grpc")),
    );

    // High availability: with a shared store (Consul, etcd) schedulers elect a leader; only
    // the leader acts and serves the API and agents. With SQLite this one always leads.
    let scheme = if tls.is_some() { "https" } else { "http" };
    let advertise_rest = format!("{scheme}://{}:{}", cfg.advertise_address, bound.rest.port());
    let registry: Option<Arc<dyn Registry>> = match cfg.store {
        StoreKind::Consul => Some(Arc::new(ConsulRegistry::new(cfg.consul.client()?))),
        _ => None,
    };
    let me = SchedulerService {
        id: format!(
            "mofang-scheduler-{}-{}",
            cfg.advertise_address.replace(['.', ':'], "-"),
            bound.rest.port()
        ),
        address: cfg.advertise_address.clone(),
        rest_port: bound.rest.port(),
        grpc_port: bound.grpc.port(),
        health_url: format!("{advertise_rest}/v1/health"),
        check_interval: Duration::from_secs(1),
    };
    let mut checks = Vec::new();
    if let Some(r) = &registry {
        match r.register_scheduler(&me).await {
            Ok(()) => {
                info!(service = %me.id, "registered in Consul as mofang-scheduler");
                checks.push(me.check_id());
            }
            Err(e) => warn!(error = %e, "could not register in Consul; continuing"),
        }
    }
    let election = crate::election::open(&cfg, &advertise_rest, checks).await?;
    let mut tasks = Vec::new();
    if let Some(election) = election {
        let (c, sd, e) = (cluster.clone(), shutdown.clone(), election.clone());
        tasks.push(tokio::spawn(
            async move {
                let mut leader = e.watch_leader(sd.clone());
                loop {
                    let hint = leader
                        .borrow_and_update()
                        .as_ref()
                        .map(|l| l.address.clone());
                    c.set_leader_hint(hint);
                    tokio::select! {
                        _ = sd.cancelled() => break,
                        r = leader.changed() => if r.is_err() { break },
                    }
                }
            }
            .instrument(tracing::info_span!("leader_watch")),
        ));
        let (c, sd, sealed) = (cluster.clone(), shutdown.clone(), sealed.clone());
        tasks.push(tokio::spawn(
            async move {
                loop {
                    let lead = match election.campaign(&sd).await {
                        Ok(l) => l,
                        Err(crate::election::Error::Cancelled) => break,
                        Err(e) => {
                            warn!(error = %e, "campaign failed; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    };
                    // Another leader may have rotated the data keyring: seal with its
                    // active key, never with one it may since have retired.
                    if let Err(e) = sealed.vault().reload(sealed.inner().as_ref()).await {
                        tracing::error!(error = %e, "won the election but cannot open the store's keyring; resigning");
                        let _ = lead.resign().await;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    if let Err(e) = c.activate().await {
                        warn!(error = %e, "won the election but cannot load the state; resigning");
                        let _ = lead.resign().await;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    info!(term = lead.term(), "leading: state reloaded from the store");
                    let (on, signs) = can_sign();
                    c.note_signing(on, signs).await;
                    spawn_reencrypt(&c, &sealed, &sd);
                    let lost = lead.lost();
                    tokio::select! {
                        _ = lost.cancelled() => {
                            c.deactivate();
                            warn!(term = lead.term(), "leadership lost: stopped acting");
                        }
                        _ = sd.cancelled() => {
                            c.deactivate();
                            let _ = lead.resign().await;
                            break;
                        }
                    }
                }
            }
            .instrument(tracing::info_span!("election")),
        ));
    }

    let sd = shutdown.clone();
    let c = cluster.clone();
    let liveness = tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = sd.cancelled() => break,
                    _ = tick.tick() => {
                        if c.is_active() {
                            c.check_nodes().await;
                            c.check_failovers().await;
                            c.check_rotations().await;
                        }
                    }
                    // A heartbeat changed what a pass decides on: no wait for the tick,
                    // but at most one extra pass per FAILOVER_WAKE_SPACING (a mass failure
                    // must not turn every heartbeat into a pass).
                    _ = c.failover_wanted() => {
                        if c.is_active() {
                            c.check_failovers().await;
                        }
                        tokio::time::sleep(FAILOVER_WAKE_SPACING).await;
                    }
                }
            }
        }
        .instrument(tracing::info_span!("liveness")),
    );
    // Point-in-time restore: where each primary archives, and each archive's window and
    // gaps, refreshed from the backup records and the repositories (issue 16).
    let (sd, c) = (shutdown.clone(), cluster.clone());
    tasks.push(tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(PITR_REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = sd.cancelled() => break,
                    _ = tick.tick() => {
                        if c.is_active() {
                            c.refresh_pitr().await;
                        }
                    }
                }
            }
        }
        .instrument(tracing::info_span!("pitr")),
    ));
    // Backup schedules, verification schedules and retention (issue 16): the leader only;
    // each slot is recorded on the instance (compare-and-set) before it runs.
    let (sd, c) = (shutdown.clone(), cluster.clone());
    tasks.push(tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(SCHEDULE_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = sd.cancelled() => break,
                    _ = tick.tick() => {
                        if c.is_active() {
                            c.run_schedules().await;
                        }
                    }
                }
            }
        }
        .instrument(tracing::info_span!("schedules")),
    ));
    // History retention (decision 174): the leader deletes events and finished operations
    // older than `[history]` keeps them, every HISTORY_EVERY.
    let (sd, c, history) = (shutdown.clone(), cluster.clone(), cfg.history.clone());
    tasks.push(tokio::spawn(
        async move {
            // A pass on taking the lead, then every HISTORY_EVERY while leading.
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last: Option<std::time::Instant> = None;
            loop {
                tokio::select! {
                    _ = sd.cancelled() => break,
                    _ = tick.tick() => {
                        if !c.is_active() {
                            last = None;
                        } else if last.is_none_or(|t| t.elapsed() >= HISTORY_EVERY) {
                            c.prune_history_now(&history).await;
                            last = Some(std::time::Instant::now());
                        }
                    }
                }
            }
        }
        .instrument(tracing::info_span!("history")),
    ));
    // Day-2 operations: the leader takes each unfinished one a step further (issue 17).
    let (sd, c) = (shutdown.clone(), cluster.clone());
    tasks.push(tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = sd.cancelled() => break,
                    _ = tick.tick() => {
                        if c.is_active() {
                            c.drive_operations();
                        }
                    }
                }
            }
        }
        .instrument(tracing::info_span!("operations")),
    ));
    if let Some(reg) = registry.clone() {
        let (sd, c) = (shutdown.clone(), cluster.clone());
        tasks.push(tokio::spawn(
            async move {
                let mut done = Registered::default();
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = sd.cancelled() => break,
                        _ = tick.tick() => {
                            if c.is_active() {
                                c.sync_endpoints(reg.as_ref(), &mut done).await;
                            } else {
                                done.clear();
                            }
                        }
                    }
                }
            }
            .instrument(tracing::info_span!("endpoints")),
        ));
    }
    info!(rest = %bound.rest, grpc = %bound.grpc, "scheduler listening");

    let run = async move {
        shutdown.cancelled().await;
        // Open watch streams keep the gRPC server from finishing: give it a grace period.
        let drained = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = tokio::join!(rest_task, liveness);
        })
        .await;
        if drained.is_err() {
            warn!("REST server did not drain within 5s");
        }
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
        }
        if let Some(r) = &registry {
            if let Err(e) = r.deregister_scheduler(&me.id).await {
                warn!(error = %e, "could not deregister from Consul");
            }
        }
        if tokio::time::timeout(Duration::from_secs(2), grpc_task)
            .await
            .is_err()
        {
            warn!("agent streams still open after 2s; closing them");
        }
    };
    Ok((bound, run))
}

/// Seals, in the background, what the store still holds in clear or under an older key (the
/// first start after an upgrade, or a rotation a previous leader did not finish).
fn spawn_reencrypt(
    cluster: &Arc<Cluster>,
    sealed: &Arc<SealedStore>,
    shutdown: &CancellationToken,
) {
    let (c, s, sd) = (cluster.clone(), sealed.clone(), shutdown.clone());
    tokio::spawn(
        async move {
            let done = tokio::select! {
                _ = sd.cancelled() => return,
                done = crate::secrets::reencrypt(&c, &s) => done,
            };
            match done {
                Ok(done) if done.resealed > 0 || !done.retired.is_empty() => {
                    info!(resealed = done.resealed, retired = ?done.retired, left = done.left,
                        "secrets sealed with the active key");
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "re-encrypting secrets failed; the next leader term or rotation retries"),
            }
        }
        .instrument(tracing::info_span!("reencrypt")),
    );
}
