//! `mofang instance ...`: create (and restore) with `--wait`, show, list, label, policies,
//! credentials, failover controls, and the day-2 operations (restart, stop, start, rebuild,
//! scale, resize, upgrade, expand, reconfigure, switchover), each with `--wait`; and `mofang
//! engines`.

use super::operation;
use super::render::{compact, parse_word, print_json, render_table, table, word};
use super::{backup, haproxy};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use mofang_scheduler::backup::schedule::{BackupPolicy, Retention};
use mofang_scheduler::client::{Client, InstancePatch, NewOperation};
use mofang_scheduler::cluster::{InstanceView, MemberView};
use mofang_scheduler::model::{now_ms, InstanceSpec, PlacementSpec, Resources, RestoreRequest};
use mofang_scheduler::ops::drift::{ParamState, ParametersView};
use mofang_scheduler::ops::OpKind;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// An instance's backup policy on the command line.
#[derive(clap::Args, Debug)]
pub(crate) struct BackupPolicyArgs {
    /// Repository of the scheduled backups.
    #[arg(long, requires = "backup_schedule")]
    backup_repo: Option<String>,
    /// When to back up: cron in UTC, five fields (`0 3 * * *`) or six with seconds first.
    #[arg(long, requires = "backup_repo")]
    backup_schedule: Option<String>,
    /// Keep backups this many days (the newest is always kept).
    #[arg(long, requires = "backup_schedule")]
    retention_days: Option<u32>,
    /// Keep only the newest this many succeeded backups.
    #[arg(long, requires = "backup_schedule")]
    retention_count: Option<u32>,
    /// When to verify the latest backup (cron, as --backup-schedule).
    #[arg(long, requires = "backup_schedule")]
    verify_schedule: Option<String>,
}

// Parsed once per run: the size of its largest variant (create's many flags) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub(crate) enum InstanceCmd {
    /// Create an instance.
    Create {
        /// Name (DNS label).
        name: String,
        /// mariadb or redis.
        #[arg(long, default_value = "mariadb")]
        engine: String,
        /// Engine version (default: 10.11 for MariaDB, 7.0 for Redis).
        #[arg(long)]
        version: Option<String>,
        /// Replicas besides the primary.
        #[arg(long, default_value_t = 1)]
        replicas: u32,
        /// CPU cores per member.
        #[arg(long, default_value_t = 0.5)]
        cpu: f64,
        /// Memory per member, MiB.
        #[arg(long, default_value_t = 512)]
        memory: u64,
        /// Disk per member, MiB.
        #[arg(long, default_value_t = 1024)]
        disk: u64,
        /// Disk class.
        #[arg(long)]
        disk_class: Option<String>,
        /// Allowed zones (comma separated).
        #[arg(long, value_delimiter = ',')]
        zones: Vec<String>,
        /// spread or binpack.
        #[arg(long)]
        strategy: Option<String>,
        /// A label `k=v` (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Restore a backup of this instance (which may have been deleted) into the new one.
        #[arg(long)]
        restore_from: Option<String>,
        /// The backup to restore (default: the latest succeeded one).
        #[arg(long, requires = "restore_from")]
        backup: Option<String>,
        /// Restore to this time (MariaDB, RFC 3339 in whole seconds, e.g.
        /// 2026-12-01T14:45:10Z): within the source's pitr_window.
        #[arg(long, requires = "restore_from")]
        restore_time: Option<String>,
        /// Database traffic TLS: off (default), optional (MariaDB only) or required.
        #[arg(long)]
        tls: Option<String>,
        /// Scheduled backups, retention and verification (docs/backup.md).
        #[command(flatten)]
        policy: BackupPolicyArgs,
        /// Wait until every member is healthy, showing progress.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Set an instance's backup schedule, retention and verification schedule (the policy
    /// is replaced whole), or remove it with --none.
    BackupPolicy {
        /// Name.
        name: String,
        /// The policy.
        #[command(flatten)]
        policy: BackupPolicyArgs,
        /// Remove the policy: no more scheduled backups, verifications or retention.
        #[arg(long, conflicts_with_all = ["backup_repo", "backup_schedule"])]
        none: bool,
    },
    /// Change an instance's database traffic TLS (MariaDB): off <-> optional/required
    /// restarts the members one at a time, replicas first (a rolling restart operation,
    /// shown by `mofang operation list NAME`); optional <-> required is set live.
    Tls {
        /// Name.
        name: String,
        /// off, optional or required.
        mode: String,
    },
    /// List instances.
    List {
        /// Only instances whose labels match: `k=v,k2=v2`, `k`, `k!=v`.
        #[arg(long, short = 'l')]
        selector: Option<String>,
    },
    /// Set (`k=v`) or remove (`k-`) labels of an instance.
    Label {
        /// Name.
        name: String,
        /// `k=v` to set, `k-` to remove.
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// Show one instance with its members.
    Show {
        /// Name.
        name: String,
    },
    /// Engine parameters: the desired value (set by `reconfigure`) and the value each
    /// member's server runs, with any drift.
    Parameters {
        /// Name.
        name: String,
    },
    /// Delete an instance (containers, then volumes).
    Delete {
        /// Name.
        name: String,
    },
    /// Show an instance's credentials (admin), and with TLS on the CA to verify its members
    /// against.
    Credentials {
        /// Name.
        name: String,
        /// With TLS on: write the CA certificate (PEM) to this file instead of printing it.
        #[arg(long)]
        ca_out: Option<std::path::PathBuf>,
    },
    /// Rolling restart as an operation: replicas one at a time, then a switchover, then
    /// the old primary; each member back, healthy and replicating before the next.
    Restart {
        /// Name.
        name: String,
        /// Wait until the operation ends, showing its steps.
        #[arg(long)]
        wait: bool,
        /// The operation fails after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Stop every member's container as an operation: volumes and reservations kept, no
    /// failover, no alert.
    Stop {
        /// Name.
        name: String,
        /// Wait until the operation ends.
        #[arg(long)]
        wait: bool,
        /// The operation fails after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Rebuild one member as an operation: a replica's container and volume are removed and
    /// seeded again (from a healthy replica, else the primary), in place or on another node;
    /// a primary is switched over first.
    Rebuild {
        /// Name.
        name: String,
        /// The member.
        member: String,
        /// Move it to this node (its container and volume made anew there).
        #[arg(long)]
        node: Option<String>,
        /// Wait until the operation ends.
        #[arg(long)]
        wait: bool,
        /// The operation fails after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Scale to N replicas as an operation: new replicas placed and seeded one at a time
    /// (MariaDB: copied from a healthy replica), or the most-lagging replicas removed one at
    /// a time; never the primary.
    Scale {
        /// Name.
        name: String,
        /// The replica count wanted (1 ..= 8).
        #[arg(long)]
        replicas: u32,
        /// Wait until the operation ends, showing its steps.
        #[arg(long)]
        wait: bool,
        /// The operation fails after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Change every member's CPU and/or memory as an operation: reservations re-booked,
    /// CPU applied live, memory by a rolling restart.
    Resize {
        /// Name.
        name: String,
        /// CPU cores of each member.
        #[arg(long)]
        cpu: Option<f64>,
        /// Memory of each member, MiB.
        #[arg(long)]
        memory: Option<u64>,
        /// Wait until the operation ends, showing its steps.
        #[arg(long)]
        wait: bool,
        /// The operation fails after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Upgrade the engine to the next version of its ladder as an operation (`mofang
    /// engines` lists them): replicas first, a switchover, the old primary last, each
    /// recreated on the new version's image with its data upgraded.
    Upgrade {
        /// Name.
        name: String,
        /// The version (e.g. 11.8).
        version: String,
        /// Wait until the operation ends, showing its steps.
        #[arg(long)]
        wait: bool,
        /// The operation fails after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Grow every member's volume as an operation: reservations and quotas grown in place,
    /// no restart.
    Expand {
        /// Name.
        name: String,
        /// Disk of each member, MiB (more than now).
        #[arg(long)]
        disk: u64,
        /// Wait until the operation ends, showing its steps.
        #[arg(long)]
        wait: bool,
        /// The operation fails after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Set engine parameters as an operation (`mofang engines` lists them): dynamic ones
    /// live on every member, the others by a rolling restart.
    Reconfigure {
        /// Name.
        name: String,
        /// `name=value`, repeated.
        #[arg(long = "set", value_parser = parse_setting, required = true)]
        settings: Vec<(String, String)>,
        /// Wait until the operation ends, showing its steps.
        #[arg(long)]
        wait: bool,
        /// The operation fails after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Start a stopped instance again as an operation: the same members, the same primary.
    Start {
        /// Name.
        name: String,
        /// Wait until the operation ends.
        #[arg(long)]
        wait: bool,
        /// The operation fails after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Rotate an account's password (admin): every member accepts the new one beside the old,
    /// then everything switches to the new one, then the old one is dropped after the grace.
    /// Waits until the new password is in use.
    RotateCredentials {
        /// Name.
        name: String,
        /// The account: app, admin, repl or monitor.
        #[arg(long, default_value = "app", value_parser = ["app", "admin", "repl", "monitor"])]
        account: String,
        /// How long the old password stays accepted once the new one is in use: 90s, 10m,
        /// 2h, 1d (at most 7d). Default 0.
        #[arg(long, value_parser = parse_grace)]
        grace: Option<u64>,
        /// Give up waiting after this many seconds (the rotation goes on).
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Planned switchover without loss: fence the primary, let the target catch up,
    /// promote it. Waits until done; with --operation it runs as an operation instead
    /// (`mofang operation show`), followed with --wait.
    Switchover {
        /// Name.
        name: String,
        /// Member to promote (default: the most advanced replica).
        #[arg(long)]
        target: Option<String>,
        /// Run it as an operation (one at a time with the instance's other operations).
        #[arg(long)]
        operation: bool,
        /// With --operation: wait until the operation ends, showing its steps.
        #[arg(long, requires = "operation")]
        wait: bool,
        /// With --operation: the operation fails after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Forced failover of an instance whose primary is not healthy (ignores the block
    /// period and the auto-failover switches).
    Failover {
        /// Name.
        name: String,
        /// Member to promote (default: the most advanced eligible replica).
        #[arg(long)]
        target: Option<String>,
    },
    /// Acknowledge the last failover: the next one may happen within the block period.
    Ack {
        /// Name.
        name: String,
    },
    /// Print an HAProxy config: a read-write port to the primary, a read-only port over the
    /// replicas, with health checks answered by the members' agents.
    HaproxyConfig {
        /// Name.
        name: String,
        /// Address to bind.
        #[arg(long, default_value = "0.0.0.0")]
        bind: String,
        /// Read-write port.
        #[arg(long, default_value_t = 3306)]
        rw_port: u16,
        /// Read-only port.
        #[arg(long, default_value_t = 3307)]
        ro_port: u16,
        /// Replicas lagging more than this many seconds get no reads.
        #[arg(long, default_value_t = 10)]
        max_lag: u32,
        /// The cluster CA (`mofang instance credentials NAME --ca-out FILE`): HAProxy speaks
        /// TLS to the members and verifies each one's certificate and name (Redis with TLS).
        #[arg(long)]
        ca_file: Option<String>,
        /// HAProxy's own certificate and key in one PEM file: clients speak TLS to HAProxy.
        #[arg(long)]
        frontend_cert: Option<String>,
    },
    /// Switch automatic failover of an instance on or off.
    AutoFailover {
        /// Name.
        name: String,
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

impl BackupPolicyArgs {
    /// The API's `backup` policy, if a schedule was given.
    fn policy(&self) -> Option<BackupPolicy> {
        let (repo, schedule) = (self.backup_repo.as_ref()?, self.backup_schedule.as_ref()?);
        Some(BackupPolicy {
            repo: repo.clone(),
            schedule: schedule.clone(),
            retention: Retention {
                days: self.retention_days,
                count: self.retention_count,
            },
            verify: self.verify_schedule.clone(),
        })
    }
}

/// A grace period in seconds from `90`, `90s`, `10m`, `2h` or `1d`.
fn parse_grace(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let (num, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{v}' is not a duration like 90s, 10m, 2h or 1d"))?;
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("'{v}': unit must be s, m, h or d")),
    };
    n.checked_mul(per)
        .ok_or_else(|| format!("'{v}' is too long"))
}

/// `name=value` of `--set`.
fn parse_setting(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("{s:?}: use name=value")),
    }
}

/// Shows an instance: its JSON, or its lines and members' table.
fn show(v: &InstanceView, json: bool) {
    if json {
        print_json(v)
    } else {
        print!("{}", render_instance(v))
    }
}

/// Runs `mofang instance ...`.
pub(crate) async fn run(c: &Client, cmd: InstanceCmd, json: bool) -> Result<()> {
    match cmd {
        InstanceCmd::Create {
            name,
            engine,
            version,
            replicas,
            cpu,
            memory,
            disk,
            disk_class,
            zones,
            strategy,
            labels,
            restore_from,
            backup,
            restore_time,
            tls,
            policy,
            wait,
            timeout,
        } => {
            let version = version.unwrap_or_else(|| {
                if engine == "redis" {
                    "7.0".into()
                } else {
                    "10.11".into()
                }
            });
            let mut label_map = BTreeMap::new();
            for l in &labels {
                let (k, v) = l
                    .split_once('=')
                    .with_context(|| format!("--label {l:?}: use k=v"))?;
                label_map.insert(k.to_owned(), v.to_owned());
            }
            let placement = if !zones.is_empty() || strategy.is_some() {
                Some(PlacementSpec {
                    zones: (!zones.is_empty()).then_some(zones),
                    spread: strategy.map(|s| parse_word("--strategy", &s)).transpose()?,
                })
            } else {
                None
            };
            let spec = InstanceSpec {
                name: name.clone(),
                engine: parse_word("--engine", &engine)?,
                version,
                replicas,
                resources: Resources { cpu, memory, disk },
                disk_class,
                placement,
                labels: label_map,
                restore: restore_from.map(|from| RestoreRequest {
                    from_instance: from,
                    backup,
                    time: restore_time,
                }),
                tls: tls
                    .map(|t| parse_word("--tls", &t))
                    .transpose()?
                    .unwrap_or_default(),
                backup: policy.policy(),
            };
            let v = c.create_instance(&spec).await?;
            if !wait {
                show(&v, json);
                return Ok(());
            }
            let v = wait_ready(c, &name, timeout, json).await?;
            show(&v, json);
        }
        InstanceCmd::BackupPolicy { name, policy, none } => {
            let p = match (none, policy.policy()) {
                (true, _) => None,
                (false, Some(p)) => Some(p),
                (false, None) => bail!("give --backup-repo and --backup-schedule, or --none"),
            };
            let patch = InstancePatch {
                backup: Some(p),
                ..InstancePatch::default()
            };
            let v = c.patch_instance(&name, &patch).await?;
            if json {
                print_json(&v)
            } else {
                println!("{name}: backup policy {}", compact(&v.spec.backup));
            }
        }
        InstanceCmd::Tls { name, mode } => {
            let patch = InstancePatch {
                tls: Some(parse_word("tls mode", &mode)?),
                ..InstancePatch::default()
            };
            let v = c.patch_instance(&name, &patch).await?;
            if json {
                print_json(&v)
            } else {
                println!(
                    "{name}: tls {} (members take it as they restart: see the instance's operations and events)",
                    v.spec.tls
                );
            }
        }
        InstanceCmd::Label { name, labels } => {
            let mut patch = InstancePatch::default();
            for l in &labels {
                if let Some((k, v)) = l.split_once('=') {
                    patch.labels.insert(k.to_owned(), Some(v.to_owned()));
                } else if let Some(k) = l.strip_suffix('-') {
                    patch.labels.insert(k.to_owned(), None);
                } else {
                    bail!("{l:?}: use k=v to set a label, k- to remove it");
                }
            }
            let v = c.patch_instance(&name, &patch).await?;
            if json {
                print_json(&v)
            } else if v.spec.labels.is_empty() {
                // The API leaves empty labels out of the spec.
                println!("{name}: labels null");
            } else {
                println!("{name}: labels {}", compact(&v.spec.labels));
            }
        }
        InstanceCmd::List { selector } => {
            let list = c.instances(selector.as_deref()).await?;
            if json {
                print_json(&list);
                return Ok(());
            }
            print!("{}", render_instance_list(&list));
        }
        InstanceCmd::Show { name } => show(&c.instance(&name).await?, json),
        InstanceCmd::Parameters { name } => {
            let view = c.parameters(&name).await?;
            if json {
                print_json(&view)
            } else {
                print!("{}", render_parameters(&view));
            }
        }
        InstanceCmd::Delete { name } => {
            let d = c.delete_instance(&name).await?;
            if json {
                print_json(&d)
            } else {
                println!("{name}: {}", d.status)
            }
        }
        InstanceCmd::Restart {
            name,
            wait,
            timeout,
        } => {
            let op = NewOperation::new(OpKind::Restart);
            operation::start(c, &name, op, wait, timeout, json).await?
        }
        InstanceCmd::Rebuild {
            name,
            member,
            node,
            wait,
            timeout,
        } => {
            let mut op = NewOperation::new(OpKind::Rebuild);
            op.member = Some(member);
            op.node = node;
            operation::start(c, &name, op, wait, timeout, json).await?
        }
        InstanceCmd::Stop {
            name,
            wait,
            timeout,
        } => {
            let op = NewOperation::new(OpKind::Stop);
            operation::start(c, &name, op, wait, timeout, json).await?
        }
        InstanceCmd::Start {
            name,
            wait,
            timeout,
        } => {
            let op = NewOperation::new(OpKind::Start);
            operation::start(c, &name, op, wait, timeout, json).await?
        }
        InstanceCmd::Scale {
            name,
            replicas,
            wait,
            timeout,
        } => {
            let mut op = NewOperation::new(OpKind::Scale);
            op.replicas = Some(replicas);
            operation::start(c, &name, op, wait, timeout, json).await?
        }
        InstanceCmd::Resize {
            name,
            cpu,
            memory,
            wait,
            timeout,
        } => {
            let mut op = NewOperation::new(OpKind::Resize);
            op.cpu = cpu;
            op.memory = memory;
            operation::start(c, &name, op, wait, timeout, json).await?
        }
        InstanceCmd::Upgrade {
            name,
            version,
            wait,
            timeout,
        } => {
            let mut op = NewOperation::new(OpKind::Upgrade);
            op.version = Some(version);
            operation::start(c, &name, op, wait, timeout, json).await?
        }
        InstanceCmd::Expand {
            name,
            disk,
            wait,
            timeout,
        } => {
            let mut op = NewOperation::new(OpKind::Expand);
            op.disk = Some(disk);
            operation::start(c, &name, op, wait, timeout, json).await?
        }
        InstanceCmd::Reconfigure {
            name,
            settings,
            wait,
            timeout,
        } => {
            let mut op = NewOperation::new(OpKind::Reconfigure);
            op.settings = Some(
                settings
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect(),
            );
            operation::start(c, &name, op, wait, timeout, json).await?
        }
        InstanceCmd::RotateCredentials {
            name,
            account,
            grace,
            timeout,
        } => rotate_credentials(c, &name, &account, grace, timeout, json).await?,
        InstanceCmd::Switchover {
            name,
            target,
            operation: false,
            ..
        } => {
            if !json {
                eprintln!("switching over {name} ...");
            }
            show(&c.switchover(&name, target.as_deref()).await?, json);
        }
        InstanceCmd::Switchover {
            name,
            target,
            operation: true,
            wait,
            timeout,
        } => {
            let mut op = NewOperation::new(OpKind::Switchover);
            op.member = target;
            operation::start(c, &name, op, wait, timeout, json).await?
        }
        InstanceCmd::Failover { name, target } => {
            let v = c.failover(&name, target.as_deref()).await?;
            if json {
                print_json(&v)
            } else {
                println!("failover of {name} decided at epoch {}; follow it with `mofang events --instance {name}`", v.epoch);
            }
        }
        InstanceCmd::HaproxyConfig {
            name,
            bind,
            rw_port,
            ro_port,
            max_lag,
            ca_file,
            frontend_cert,
        } => {
            let v = c.instance(&name).await?;
            let cfg = haproxy::render(
                &v,
                &haproxy::Ports {
                    bind,
                    rw: rw_port,
                    ro: ro_port,
                    max_lag,
                    ca_file,
                    frontend_cert,
                },
            )
            .map_err(anyhow::Error::msg)?;
            print!("{cfg}");
        }
        InstanceCmd::Ack { name } => {
            let v = c.failover_ack(&name).await?;
            if json {
                print_json(&v)
            } else {
                println!("{name}: last failover acknowledged");
            }
        }
        InstanceCmd::AutoFailover { name, state } => {
            let v = c.set_auto_failover(&name, state == "on").await?;
            if json {
                print_json(&v)
            } else {
                println!("{name}: automatic failover {state}");
            }
        }
        InstanceCmd::Credentials { name, ca_out } => {
            let v = c.credentials(&name).await?;
            if let (Some(path), Some(ca)) = (&ca_out, &v.ca_pem) {
                std::fs::write(path, ca)
                    .with_context(|| format!("--ca-out {}: cannot write", path.display()))?;
            }
            if json {
                print_json(&v);
                return Ok(());
            }
            let p = &v.credentials;
            table(
                &["ACCOUNT", "USER", "PASSWORD"],
                vec![
                    vec!["application".into(), "app".into(), p.app.clone()],
                    vec!["admin".into(), "mofang_admin".into(), p.admin.clone()],
                    vec!["replication".into(), "mofang_repl".into(), p.repl.clone()],
                    vec![
                        "monitoring".into(),
                        "mofang_monitor".into(),
                        p.monitor.clone(),
                    ],
                ],
            );
            match (&v.ca_pem, ca_out) {
                (Some(_), Some(path)) => println!(
                    "\ntls: {}; the members' CA is in {} (verify a member with its address as the name)",
                    v.tls,
                    path.display()
                ),
                (Some(ca), None) => println!(
                    "\ntls: {}; verify a member against this CA with its address as the name:\n{}",
                    v.tls,
                    ca.trim_end()
                ),
                (None, _) => println!("\ntls: {}", v.tls),
            }
        }
    }
    Ok(())
}

/// Polls a new instance until every member is healthy, showing on stderr the members'
/// states as they change and, for a restore, its phases and a bar of bytes restored.
async fn wait_ready(c: &Client, name: &str, timeout: u64, json: bool) -> Result<InstanceView> {
    let start = Instant::now();
    let mut last = String::new();
    let mut last_phases = String::new();
    let (mut prev_bytes, mut prev_at) = (0u64, Instant::now());
    loop {
        let v = c.instance(name).await?;
        // A restore's progress (the primary filling its volume): a bar per update.
        let p = v.restore_progress.as_ref();
        if let Some(progress) = p {
            // Past the data (binlogs before it, prepare and replay after): a line per
            // change of phase or counter.
            let line = backup::restore_phases_line(progress);
            if progress.phase != "data" && line != last_phases && !json {
                eprintln!("[{:>5.1}s] {line}", start.elapsed().as_secs_f64());
                last_phases = line;
            }
            let (bytes, total) = (progress.bytes, progress.total);
            if bytes != prev_bytes && !json {
                let dt = prev_at.elapsed().as_secs_f64().max(0.001);
                let rate = bytes.saturating_sub(prev_bytes) as f64 / dt / (1 << 20) as f64;
                eprintln!(
                    "[{:>5.1}s] {}",
                    start.elapsed().as_secs_f64(),
                    backup::restore_bar(&progress.backup, bytes, total, rate)
                );
                (prev_bytes, prev_at) = (bytes, Instant::now());
            }
        }
        let progress = members_line(&v);
        if progress != last && !json {
            eprintln!("[{:>5.1}s] {progress}", start.elapsed().as_secs_f64());
            last = progress;
        }
        let ready = v.members.iter().filter(|m| m.healthy).count();
        if ready == v.members.len() && !v.members.is_empty() {
            return Ok(v);
        }
        if start.elapsed() > Duration::from_secs(timeout) {
            bail!("{name} not ready after {timeout}s: {last}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How many members of a new instance are ready, and each one's state:
/// `shop: 1/3 members ready (shop-1=running, shop-2=starting, shop-3=pending)`.
fn members_line(v: &InstanceView) -> String {
    let ready = v.members.iter().filter(|m| m.healthy).count();
    format!(
        "{}: {ready}/{} members ready ({})",
        v.name,
        v.members.len(),
        v.members
            .iter()
            .map(|m| {
                // Shown by the bar when the view has the restore's progress.
                if m.reason.starts_with("restoring") && v.restore_progress.is_none() {
                    format!("{}={}: {}", m.id, m.state, m.reason)
                } else {
                    format!("{}={}", m.id, m.state)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// `instance rotate-credentials`: starts the rotation and waits until the new password is
/// in use (step `switch` or later), showing which members it waits for.
async fn rotate_credentials(
    c: &Client,
    name: &str,
    account: &str,
    grace: Option<u64>,
    timeout: u64,
    json: bool,
) -> Result<()> {
    let mut v = c
        .rotate_credentials(name, parse_word("--account", account)?, grace)
        .await?;
    let start = Instant::now();
    let mut last = String::new();
    // Until the new password is in use (step switch or later, or the rotation over).
    while let Some(r) = v.rotation.as_ref().filter(|r| r.step == "add") {
        let progress = format!(
            "{name}: {account} step {}, waiting for {}",
            r.step,
            word(&r.waiting_for)
        );
        if progress != last && !json {
            eprintln!("[{:>5.1}s] {progress}", start.elapsed().as_secs_f64());
            last = progress;
        }
        if start.elapsed() > Duration::from_secs(timeout) {
            bail!("{name}: the new {account} password is not in use after {timeout}s ({last}); the rotation goes on: `mofang instance show {name}`");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        v = c.instance(name).await?;
    }
    if json {
        print_json(&v);
        return Ok(());
    }
    let until = v
        .rotation
        .as_ref()
        .filter(|r| r.step == "switch")
        .and_then(|r| r.old_accepted_until_ms);
    match until {
        Some(until) => println!(
            "{name}: the new {account} password is in use (`mofang instance credentials {name}`); the old one is accepted for {} s more",
            ((until - now_ms()) / 1000).max(0)
        ),
        None => println!(
            "{name}: the new {account} password is in use (`mofang instance credentials {name}`); the old one is being dropped"
        ),
    }
    Ok(())
}

/// `mofang engines`: each engine's versions and the parameters `reconfigure` may set.
pub(crate) async fn engines(c: &Client, json: bool) -> Result<()> {
    let engines = c.engines().await?;
    if json {
        print_json(&engines);
        return Ok(());
    }
    for e in &engines {
        println!("{} (versions {})", e.engine, e.versions.join(", "));
        for p in &e.parameters {
            let range = match p.kind.as_str() {
                "integer" => format!("{} ..= {}", word(&p.min), word(&p.max)),
                _ => p.values.join("|"),
            };
            println!(
                "  {:<24} {:<8} {:<32} {:<8} {}",
                p.name,
                p.kind,
                range,
                if p.dynamic { "live" } else { "restart" },
                p.description
            );
        }
    }
    Ok(())
}

/// A member's version as its agent reports it; `-` before it has reported one (a MariaDB
/// member reports none until `mariadb-upgrade` has run on a new version).
fn member_version(m: &MemberView) -> String {
    if m.version.is_empty() {
        "-".into()
    } else {
        m.version.clone()
    }
}

/// The distinct versions an instance's members report, in the order first seen: one value
/// normally, two in the middle of an upgrade.
fn member_versions(i: &InstanceView) -> String {
    let mut seen: Vec<String> = Vec::new();
    for m in &i.members {
        let v = member_version(m);
        if !seen.contains(&v) {
            seen.push(v);
        }
    }
    if seen.is_empty() {
        "-".into()
    } else {
        seen.join(",")
    }
}

/// `instance show`: the instance's lines, then a row per member.
pub(crate) fn render_instance(v: &InstanceView) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    // Writing into a String cannot fail.
    macro_rules! line {
        ($($arg:tt)*) => { let _ = writeln!(o, $($arg)*); };
    }
    line!("name:     {}", v.name);
    line!("engine:   {} {}", v.engine, v.version);
    line!("status:   {}", v.status);
    line!("epoch:    {}", v.epoch);
    line!("primary:  {}", v.primary);
    if let Some(ready) = v.pitr_ready {
        let window = match &v.pitr_window {
            Some(w) => format!("{} to {}", w.from, w.to),
            None => "none yet".into(),
        };
        let why = v
            .pitr_reason
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        line!(
            "pitr:     {}, window {window}{why}",
            if ready { "ready" } else { "NOT ready" }
        );
    }
    line!("tls:      {}", v.spec.tls);
    if let Some(r) = &v.rotation {
        line!(
            "rotation: {} password, step {}{}",
            r.account,
            r.step,
            if r.waiting_for.is_empty() {
                String::new()
            } else {
                format!(", waiting for {}", word(&r.waiting_for))
            }
        );
    }
    line!();
    let rows = v
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                m.node.clone(),
                m.role.clone(),
                m.state.clone(),
                m.address.clone(),
                if m.lag_seconds < 0 {
                    "-".into()
                } else {
                    format!("{}s", m.lag_seconds)
                },
                m.epoch.to_string(),
                member_version(m),
                if m.healthy { "yes" } else { "no" }.into(),
                m.reason.clone(),
            ]
        })
        .collect();
    o.push_str(&render_table(
        &[
            "MEMBER", "NODE", "ROLE", "STATE", "ADDRESS", "LAG", "EPOCH", "VERSION", "HEALTHY",
            "REASON",
        ],
        rows,
    ));
    o
}

/// `instance list`: one line per instance; ENGINE is the version asked, VERSIONS what its
/// members report (two during an upgrade).
pub(crate) fn render_instance_list(list: &[InstanceView]) -> String {
    let rows = list
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                format!("{} {}", i.engine, i.version),
                i.members.len().to_string(),
                i.status.clone(),
                i.primary.clone(),
                i.epoch.to_string(),
                member_versions(i),
            ]
        })
        .collect();
    render_table(
        &[
            "NAME", "ENGINE", "MEMBERS", "STATUS", "PRIMARY", "EPOCH", "VERSIONS",
        ],
        rows,
    )
}

/// `instance parameters`: a row per parameter, its desired value and each member's
/// effective one (marked when pending or drifting), then the drift.
fn render_parameters(v: &ParametersView) -> String {
    let mut headers = vec!["PARAMETER".to_owned(), "DESIRED".to_owned()];
    headers.extend(
        v.members
            .iter()
            .map(|m| format!("{} ({})", m.member, m.role)),
    );
    let names: Vec<&str> = v
        .members
        .first()
        .map(|m| m.parameters.iter().map(|p| p.name.as_str()).collect())
        .unwrap_or_default();
    let rows = names
        .iter()
        .map(|name| {
            let mut row = vec![
                (*name).to_owned(),
                v.desired
                    .get(*name)
                    .cloned()
                    .unwrap_or_else(|| "(default)".into()),
            ];
            for m in &v.members {
                let cell = match m.parameters.iter().find(|p| p.name == *name) {
                    Some(p) => {
                        let value = p.effective.clone().unwrap_or_else(|| "?".into());
                        match p.state {
                            ParamState::Drift => format!("{value} DRIFT"),
                            ParamState::Pending => format!("{value} (pending)"),
                            _ => value,
                        }
                    }
                    None => "?".into(),
                };
                row.push(cell);
            }
            row
        })
        .collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut text = format!(
        "instance: {} ({}), parameters generation {}\n",
        v.instance, v.engine, v.generation
    );
    text.push_str(&render_table(&headers, rows));
    if v.drift.is_empty() {
        text.push_str("no drift\n");
    } else {
        for d in &v.drift {
            text.push_str(&format!(
                "drift: {} runs {}={}, desired {}\n",
                d.member, d.parameter, d.effective, d.desired
            ));
        }
    }
    text
}

/// Test views: an instance and its members as `GET /v1/instances/{name}` answers.
#[cfg(test)]
pub(crate) mod fixture {
    use mofang_scheduler::cluster::{InstanceView, MemberView};
    use serde_json::json;

    /// A running member.
    pub(crate) fn member(id: &str, role: &str, address: &str, check: &str) -> MemberView {
        serde_json::from_value(json!({
            "id": id, "node": format!("node-{id}"), "role": role, "state": "running",
            "address": address, "healthy": true, "observed_role": role, "lag_seconds": 0,
            "epoch": 3, "position": "", "reason": "", "check_address": check, "cpu": 0.5,
            "memory_bytes": 0, "volume_bytes": 0, "version": ""
        }))
        .unwrap()
    }

    /// An instance of `engine` with `tls` and `members`.
    pub(crate) fn instance(
        name: &str,
        engine: &str,
        tls: &str,
        members: Vec<MemberView>,
    ) -> InstanceView {
        let version = if engine == "redis" { "7.0" } else { "10.11" };
        let mut v: InstanceView = serde_json::from_value(json!({
            "name": name, "engine": engine, "version": version, "replicas": 2, "epoch": 3,
            "status": "ready", "primary": "", "members": [],
            "spec": {"name": name, "engine": engine, "version": version, "replicas": 2,
                     "resources": {"cpu": 0.5, "memory": 384, "disk": 512}, "tls": tls},
            "created_at_ms": 1, "auto_failover": true, "last_failover_ms": 0, "rotation": null
        }))
        .unwrap();
        v.members = members;
        v
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{instance, member};
    use super::*;
    use serde_json::json;

    #[test]
    fn instance_parameters_mark_the_drifting_member() {
        let v = serde_json::from_value(json!({
            "instance": "shop", "engine": "mariadb", "generation": 1,
            "desired": {"max_connections": "321"},
            "members": [
                {"member": "shop-0", "role": "primary", "applied_generation": 1, "parameters": [
                    {"name": "max_connections", "desired": "321", "effective": "321", "state": "in_sync"},
                    {"name": "wait_timeout", "effective": "28800", "state": "default"}]},
                {"member": "shop-1", "role": "replica", "applied_generation": 1, "parameters": [
                    {"name": "max_connections", "desired": "321", "effective": "77", "state": "drift"},
                    {"name": "wait_timeout", "state": "unknown"}]}],
            "drift": [{"member": "shop-1", "parameter": "max_connections", "desired": "321", "effective": "77"}]
        }))
        .expect("view");
        let text = render_parameters(&v);
        let row = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            row("max_connections"),
            ["max_connections", "321", "321", "77", "DRIFT"]
        );
        assert_eq!(
            row("wait_timeout"),
            ["wait_timeout", "(default)", "28800", "?"]
        );
        assert!(text.contains("shop-1 (replica)"), "{text}");
        assert!(
            text.contains("drift: shop-1 runs max_connections=77, desired 321"),
            "{text}"
        );
    }

    /// An instance half-way through an upgrade from 10.5 to 10.11, as `GET /v1/instances/{name}`
    /// answers: one replica done, one member not reporting a version yet.
    fn upgrading() -> InstanceView {
        let m = |id: &str, role: &str, version: &str| {
            let mut m = member(id, role, "10.0.0.1:3306", "");
            m.version = version.to_owned();
            m
        };
        let mut v = instance(
            "shop",
            "mariadb",
            "off",
            vec![
                m("shop-1", "primary", "10.5"),
                m("shop-2", "replica", "10.11"),
                m("shop-3", "replica", ""),
            ],
        );
        v.primary = "shop-1".into();
        v
    }

    #[test]
    fn instance_show_has_each_members_version() {
        let text = render_instance(&upgrading());
        let lines: Vec<&str> = text.lines().collect();
        let header = lines.iter().find(|l| l.starts_with("MEMBER")).unwrap();
        let col = header.find("VERSION").unwrap();
        let cell = |id: &str| {
            let l = lines.iter().find(|l| l.starts_with(id)).unwrap();
            l[col..].split_whitespace().next().unwrap().to_owned()
        };
        assert_eq!(cell("shop-1"), "10.5");
        assert_eq!(cell("shop-2"), "10.11");
        assert_eq!(cell("shop-3"), "-", "no version reported yet");
        assert!(text.contains("engine:   mariadb 10.11"));
        assert!(text.contains("tls:      off\n"), "{text}");
        assert!(!text.contains("pitr:"), "no archive, no line: {text}");
    }

    #[test]
    fn instance_show_says_where_a_rotation_waits() {
        let mut v = upgrading();
        v.rotation = serde_json::from_value(json!({
            "account": "app", "step": "add", "started_at_ms": 1, "grace_s": 0,
            "old_accepted_until_ms": null, "waiting_for": ["shop-2", "shop-3"]
        }))
        .unwrap();
        v.pitr_ready = Some(false);
        v.pitr_reason = Some("gap after the latest backup".into());
        let text = render_instance(&v);
        assert!(
            text.contains(r#"rotation: app password, step add, waiting for ["shop-2","shop-3"]"#),
            "{text}"
        );
        assert!(
            text.contains("pitr:     NOT ready, window none yet (gap after the latest backup)"),
            "{text}"
        );
    }

    #[test]
    fn instance_list_shows_the_versions_members_run() {
        let text = render_instance_list(&[upgrading()]);
        let mut lines = text.lines();
        assert!(lines.next().unwrap().ends_with("VERSIONS"));
        let row = lines.next().unwrap();
        assert!(row.starts_with("shop"));
        assert!(row.contains("mariadb 10.11"));
        assert!(row.ends_with("10.5,10.11,-"), "{row}");
    }

    #[test]
    fn a_new_instances_progress_names_each_members_state() {
        let mut v = upgrading();
        v.members[1].healthy = false;
        v.members[1].state = "starting".into();
        v.members[2].reason = "restoring 10%".into();
        assert_eq!(
            members_line(&v),
            "shop: 2/3 members ready (shop-1=running, shop-2=starting, shop-3=running: restoring 10%)"
        );
    }

    #[test]
    fn an_instance_view_reads_back_what_the_api_wrote() {
        let v = upgrading();
        let text = serde_json::to_string(&v).unwrap();
        let back: InstanceView = serde_json::from_str(&text).unwrap();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&v).unwrap()
        );
    }

    #[test]
    fn grace_periods_read_with_their_unit() {
        assert_eq!(parse_grace("90"), Ok(90));
        assert_eq!(parse_grace("90s"), Ok(90));
        assert_eq!(parse_grace("10m"), Ok(600));
        assert_eq!(parse_grace("2h"), Ok(7200));
        assert_eq!(parse_grace("1d"), Ok(86_400));
        assert!(parse_grace("10 minutes").is_err());
        assert!(parse_grace("m").is_err());
        assert!(parse_grace("99999999999999999999d").is_err());
    }

    #[test]
    fn a_backup_policy_needs_a_repo_and_a_schedule() {
        let args = BackupPolicyArgs {
            backup_repo: Some("main".into()),
            backup_schedule: Some("0 3 * * *".into()),
            retention_days: None,
            retention_count: Some(7),
            verify_schedule: None,
        };
        assert_eq!(
            serde_json::to_value(args.policy()).unwrap(),
            json!({"repo": "main", "schedule": "0 3 * * *", "retention": {"count": 7}})
        );
        let none = BackupPolicyArgs {
            backup_schedule: None,
            ..args
        };
        assert!(none.policy().is_none());
    }
}
