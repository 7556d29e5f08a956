//! `mofang backup ...` and `mofang backup-repo ...`: backups and their repositories
//! (docs/backup.md), read through the API's own types.

use super::render::{print_json, table};
use anyhow::{bail, Result};
use clap::Subcommand;
use mofang_common::repo::Secret;
use mofang_scheduler::backup::{Backup, BackupState};
use mofang_scheduler::client::{Client, NewBackup, NewBackupRepo};
use mofang_scheduler::cluster::RestoreProgress;
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(Subcommand, Debug)]
pub(crate) enum BackupCmd {
    /// Take a full backup of an instance (on a healthy replica unless told otherwise).
    Create {
        /// Instance.
        instance: String,
        /// Repository to keep it in.
        #[arg(long)]
        repo: String,
        /// Take it on this member.
        #[arg(long, conflicts_with = "primary")]
        member: Option<String>,
        /// Take it on the primary.
        #[arg(long)]
        primary: bool,
        /// Wait until it ends, showing bytes read and the rate; fails if the backup fails.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// An instance's backups (also after the instance was deleted).
    List {
        /// Instance.
        instance: String,
    },
    /// One backup: state, reason, position, objects.
    Show {
        /// Backup id.
        id: String,
    },
    /// Delete a backup and its objects.
    Delete {
        /// Backup id.
        id: String,
    },
    /// Verify a backup: restore it in a throwaway container on an agent, check that it
    /// recovers and that its row counts (Redis: key count) match those recorded at backup
    /// time; the outcome is recorded on the backup.
    Verify {
        /// Backup id.
        id: String,
        /// Wait for the outcome; fails (exit 1) if the verification fails.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
}

// Parsed once per run: the size of `Add` costs nothing (as `Cmd` in main.rs).
#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum BackupRepoCmd {
    /// Add a repository; it is checked from the scheduler and every live agent first (admin).
    Add {
        /// Name (DNS label).
        name: String,
        /// `s3` or `fs`.
        #[arg(long, value_parser = ["s3", "fs"])]
        kind: String,
        /// s3: endpoint URL (empty: AWS for the region).
        #[arg(long)]
        endpoint: Option<String>,
        /// s3: bucket.
        #[arg(long)]
        bucket: Option<String>,
        /// s3: key prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// s3: region.
        #[arg(long)]
        region: Option<String>,
        /// s3: access key id.
        #[arg(long)]
        access_key_id: Option<String>,
        /// s3: secret access key (better from the environment than on a command line).
        #[arg(long, env = "MOFANG_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
        secret_access_key: Option<String>,
        /// s3: virtual-hosted style (`bucket.endpoint`) instead of path style.
        #[arg(long)]
        virtual_hosted: bool,
        /// fs: the directory, mounted at the same path on every host.
        #[arg(long)]
        path: Option<String>,
        /// Encrypt every backup and archived binlog stored in it, on the agents (client-side).
        #[arg(long)]
        encrypt: bool,
        /// With --encrypt: the repository key (32 bytes, base64url without padding) rather
        /// than a new one; better from the environment than on a command line.
        #[arg(
            long,
            env = "MOFANG_BACKUP_ENCRYPTION_KEY",
            hide_env_values = true,
            requires = "encrypt"
        )]
        encryption_key: Option<String>,
    },
    /// List repositories (never their secret).
    List,
    /// Forget a repository (what it holds stays in it) (admin).
    Delete {
        /// Name.
        name: String,
    },
    /// Replace an encrypting repository's key: what is stored from now on is encrypted with
    /// the new key; the old one is retired and still opens what it encrypted (admin).
    RotateKey {
        /// Name.
        name: String,
        /// The new key (32 bytes, base64url without padding) rather than a random one;
        /// better from the environment than on a command line.
        #[arg(long, env = "MOFANG_BACKUP_ENCRYPTION_KEY", hide_env_values = true)]
        encryption_key: Option<String>,
    },
    /// Forget a retired key once no backup or archived binlog needs it (admin).
    RetireKey {
        /// Name.
        name: String,
        /// The retired key's id (`backup-repo list` shows them).
        key_id: String,
    },
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// A restore's progress as one line: a 30-cell bar, the percentage, bytes of the total and
/// the rate since the previous line (`restore_progress` of an instance's view).
pub(crate) fn restore_bar(backup: &str, bytes: u64, total: u64, rate_mib_s: f64) -> String {
    const CELLS: u64 = 30;
    let done = bytes.min(total);
    let filled = done.saturating_mul(CELLS).checked_div(total).unwrap_or(0);
    let pct = if total == 0 {
        0.0
    } else {
        done as f64 * 100.0 / total as f64
    };
    format!(
        "restoring {backup} [{}{}] {pct:>5.1}% {} of {} ({rate_mib_s:.1} MiB/s)",
        "#".repeat(filled as usize),
        ".".repeat((CELLS - filled) as usize),
        mib(done),
        mib(total)
    )
}

/// A restore's phases as one line (`restore_progress.phases`), printed when the phase or
/// its counters change: `restoring db-1: replay (binlogs 3/3 files done, data 117.2 MiB
/// done, prepare done, replay 1/3 files running)`.
pub(crate) fn restore_phases_line(p: &RestoreProgress) -> String {
    let each: Vec<String> = p
        .phases
        .iter()
        .map(|ph| {
            let count = match ph.unit.as_str() {
                "bytes" if ph.state == "done" => format!(" {}", mib(ph.total)),
                "bytes" => format!(" {} of {}", mib(ph.done), mib(ph.total)),
                "" => String::new(),
                unit => format!(" {}/{} {unit}", ph.done, ph.total),
            };
            format!("{}{count} {}", ph.name, ph.state)
        })
        .collect();
    format!("restoring {}: {} ({})", p.backup, p.phase, each.join(", "))
}

fn ms_ago(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let secs = (now - ms).max(0) / 1000;
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

fn position(b: &Backup) -> String {
    match (b.consistent_at.offset, b.consistent_at.gtid.as_str()) {
        (Some(o), _) => format!("offset {o}"),
        (None, "") => "-".into(),
        (None, g) => format!("gtid {g}"),
    }
}

/// A verification under way, as one line: `db-1: verifying` until its outcome.
fn verify_line(b: &Backup) -> String {
    match (b.verifying, b.verify_ok) {
        (true, _) => format!("{}: verifying", b.id),
        (false, Some(true)) => format!("{}: verified", b.id),
        (false, Some(false)) => format!("{}: verification failed", b.id),
        (false, None) => format!("{}: not verified", b.id),
    }
}

fn print_backup(b: &Backup) {
    println!("id:        {}", b.id);
    println!("instance:  {} ({} {})", b.instance, b.engine, b.version);
    println!("state:     {}", b.state);
    if !b.reason.is_empty() {
        println!("reason:    {}", b.reason);
    }
    println!("member:    {} on {}", b.member, b.node);
    println!("repo:      {}", b.repo);
    println!("position:  {}", position(b));
    println!("read:      {}", mib(b.bytes));
    println!("stored:    {}", mib(b.size));
    if b.ended_at_ms > 0 && b.started_at_ms > 0 {
        println!(
            "took:      {:.1}s",
            (b.ended_at_ms - b.started_at_ms) as f64 / 1000.0
        );
    }
    for o in &b.objects {
        println!("object:    {} {} sha256 {}", o.path, o.size, o.sha256);
    }
    for (tool, version) in &b.tools {
        println!("tool:      {tool}: {version}");
    }
    if let Some(counts) = &b.row_counts {
        println!(
            "counted:   {} tables, {} rows at backup time",
            counts.len(),
            counts.values().sum::<u64>()
        );
    }
    if let Some(k) = b.keys {
        println!("counted:   {k} keys at backup time");
    }
    if b.verifying {
        println!("verify:    running");
    } else if let Some(ok) = b.verify_ok {
        println!(
            "verify:    {} {} ({})",
            if ok { "passed" } else { "FAILED" },
            ms_ago(b.verified_at_ms),
            b.verify_reason
        );
    }
}

pub(crate) async fn run_backup(c: &Client, cmd: BackupCmd, json_out: bool) -> Result<()> {
    match cmd {
        BackupCmd::Create {
            instance,
            repo,
            member,
            primary,
            wait,
            timeout,
        } => {
            let req = NewBackup {
                repo,
                member,
                primary,
            };
            let b = c.create_backup(&instance, &req).await?;
            if !wait {
                if json_out {
                    print_json(&b)
                } else {
                    println!("backup {} of {instance} on {}: {}", b.id, b.member, b.state);
                }
                return Ok(());
            }
            let start = Instant::now();
            let mut last = String::new();
            let (mut prev_bytes, mut prev_at) = (0u64, Instant::now());
            loop {
                let now = c.backup(&b.id).await?;
                let dt = prev_at.elapsed().as_secs_f64().max(0.001);
                let rate = now.bytes.saturating_sub(prev_bytes) as f64 / dt / (1 << 20) as f64;
                let line = format!("{} {}: {} read", now.id, now.state, mib(now.bytes));
                if line != last && !json_out {
                    eprintln!(
                        "[{:>6.1}s] {line} ({rate:.1} MiB/s)",
                        start.elapsed().as_secs_f64()
                    );
                    last = line;
                    (prev_bytes, prev_at) = (now.bytes, Instant::now());
                }
                if now.state.is_final() {
                    if json_out {
                        print_json(&now)
                    } else {
                        print_backup(&now)
                    }
                    if now.state == BackupState::Failed {
                        bail!("backup {} failed: {}", now.id, now.reason);
                    }
                    return Ok(());
                }
                if start.elapsed() > Duration::from_secs(timeout) {
                    bail!("backup {} not done after {timeout}s: {last}", now.id);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        BackupCmd::List { instance } => {
            let list = c.backups(&instance).await?;
            if json_out {
                print_json(&list);
                return Ok(());
            }
            let rows = list
                .iter()
                .map(|b| {
                    vec![
                        b.id.clone(),
                        b.state.to_string(),
                        ms_ago(b.requested_at_ms),
                        b.member.clone(),
                        b.repo.clone(),
                        mib(b.size),
                        position(b),
                        b.reason.clone(),
                    ]
                })
                .collect();
            table(
                &[
                    "ID", "STATE", "ASKED", "MEMBER", "REPO", "STORED", "POSITION", "REASON",
                ],
                rows,
            );
        }
        BackupCmd::Show { id } => {
            let b = c.backup(&id).await?;
            if json_out {
                print_json(&b)
            } else {
                print_backup(&b)
            }
        }
        BackupCmd::Verify { id, wait, timeout } => {
            let v = c.verify_backup(&id).await?;
            if !wait {
                if json_out {
                    print_json(&v)
                } else {
                    println!("{id}: verification started");
                }
                return Ok(());
            }
            let start = Instant::now();
            let mut last = String::new();
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let b = c.backup(&id).await?;
                let line = verify_line(&b);
                if line != last && !json_out {
                    eprintln!("[{:>6.1}s] {line}", start.elapsed().as_secs_f64());
                    last = line;
                }
                if !b.verifying {
                    if json_out {
                        print_json(&b)
                    } else {
                        print_backup(&b)
                    }
                    if b.verify_ok != Some(true) {
                        bail!("verification of backup {id} failed: {}", b.verify_reason);
                    }
                    return Ok(());
                }
                if start.elapsed() > Duration::from_secs(timeout) {
                    bail!("verification of backup {id} not done after {timeout}s");
                }
            }
        }
        BackupCmd::Delete { id } => {
            c.delete_backup(&id).await?;
            if json_out {
                print_json(&json!({ "id": id, "deleted": true }))
            } else {
                println!("{id}: deleted with its objects");
            }
        }
    }
    Ok(())
}

pub(crate) async fn run_repo(c: &Client, cmd: BackupRepoCmd, json_out: bool) -> Result<()> {
    match cmd {
        BackupRepoCmd::Add {
            name,
            kind,
            endpoint,
            bucket,
            prefix,
            region,
            access_key_id,
            secret_access_key,
            virtual_hosted,
            path,
            encrypt,
            encryption_key,
        } => {
            // Only the kind's own fields: the scheduler refuses another kind's.
            let s3 = kind == "s3";
            let repo = NewBackupRepo {
                name: name.clone(),
                kind,
                endpoint: endpoint.filter(|_| s3),
                bucket: bucket.filter(|_| s3),
                prefix: prefix.filter(|_| s3),
                region: region.filter(|_| s3),
                access_key_id: access_key_id.filter(|_| s3),
                secret_access_key: secret_access_key.filter(|_| s3).map(Secret),
                path_style: s3.then_some(!virtual_hosted),
                path: path.filter(|_| !s3),
                encrypt,
                encryption_key: encryption_key.map(Secret),
            };
            if !json_out {
                eprintln!("checking {name} from the scheduler and every live agent ...");
            }
            let r = c.add_backup_repo(&repo).await?;
            if json_out {
                print_json(&r)
            } else {
                match &r.key_id {
                    Some(k) => println!(
                        "{}: {} repository added, encrypted (key {k})",
                        r.name, r.kind
                    ),
                    None => println!("{}: {} repository added", r.name, r.kind),
                }
            }
        }
        BackupRepoCmd::List => {
            let list = c.backup_repos().await?;
            if json_out {
                print_json(&list);
                return Ok(());
            }
            let rows = list
                .iter()
                .map(|r| {
                    let place = match r.kind.as_str() {
                        "s3" => format!(
                            "{}/{}/{}",
                            r.endpoint.clone().unwrap_or_default(),
                            r.bucket.clone().unwrap_or_default(),
                            r.prefix.clone().unwrap_or_default()
                        ),
                        _ => r.path.clone().unwrap_or_default(),
                    };
                    let enc = r.key_id.clone().unwrap_or_else(|| "-".into());
                    let retired = if r.retired_key_ids.is_empty() {
                        "-".to_owned()
                    } else {
                        r.retired_key_ids.join(",")
                    };
                    vec![r.name.clone(), r.kind.clone(), place, enc, retired]
                })
                .collect();
            table(
                &[
                    "NAME",
                    "KIND",
                    "WHERE",
                    "ENCRYPTION KEY ID",
                    "RETIRED KEY IDS",
                ],
                rows,
            );
        }
        BackupRepoCmd::RotateKey {
            name,
            encryption_key,
        } => {
            if !json_out {
                eprintln!(
                    "checking {name} with the new key from the scheduler and every live agent ..."
                );
            }
            let r = c.rotate_repo_key(&name, encryption_key.map(Secret)).await?;
            if json_out {
                print_json(&r)
            } else {
                println!(
                    "{}: new key {}; retired keys {} still open what they encrypted",
                    r.name,
                    r.key_id.clone().unwrap_or_default(),
                    r.retired_key_ids.join(", ")
                );
            }
        }
        BackupRepoCmd::RetireKey { name, key_id } => {
            let r = c.retire_repo_key(&name, &key_id).await?;
            if json_out {
                print_json(&r)
            } else {
                println!("{}: key {key_id} forgotten", r.name);
            }
        }
        BackupRepoCmd::Delete { name } => {
            c.delete_backup_repo(&name).await?;
            if json_out {
                print_json(&json!({ "name": name, "deleted": true }))
            } else {
                println!("{name}: forgotten (its objects stay in the store)");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The bar fills with the bytes, never past the total; an unknown total shows 0 %.
    #[test]
    fn the_restore_bar_shows_bytes_of_the_total() {
        let mib = 1 << 20;
        assert_eq!(
            super::restore_bar("db-1", 50 * mib, 100 * mib, 12.34),
            format!(
                "restoring db-1 [{}{}]  50.0% 50.0 MiB of 100.0 MiB (12.3 MiB/s)",
                "#".repeat(15),
                ".".repeat(15)
            )
        );
        assert!(super::restore_bar("db-1", 200, 100, 0.0)
            .contains(&format!("[{}] 100.0%", "#".repeat(30))));
        assert!(super::restore_bar("db-1", 0, 0, 0.0).contains("  0.0% 0.0 MiB of 0.0 MiB"));
    }

    /// Each phase with its counters in its unit and its state, the current one first.
    #[test]
    fn the_restore_phases_read_as_one_line() {
        use mofang_scheduler::cluster::{RestorePhaseView, RestoreProgress};
        let ph = |name: &str, state: &str, done, total, unit: &str| RestorePhaseView {
            name: name.into(),
            state: state.into(),
            done,
            total,
            unit: unit.into(),
        };
        let p = RestoreProgress {
            backup: "db-1".into(),
            bytes: 3 << 20,
            total: 3 << 20,
            phase: "replay".into(),
            phases: vec![
                ph("binlogs", "done", 3, 3, "files"),
                ph("data", "done", 3 << 20, 3 << 20, "bytes"),
                ph("prepare", "done", 0, 0, ""),
                ph("replay", "running", 1, 3, "files"),
            ],
        };
        assert_eq!(
            super::restore_phases_line(&p),
            "restoring db-1: replay (binlogs 3/3 files done, data 3.0 MiB done, prepare done, replay 1/3 files running)"
        );
        let mut d = p.clone();
        d.phase = "data".into();
        d.phases = vec![ph("data", "running", 1 << 20, 4 << 20, "bytes")];
        assert_eq!(
            super::restore_phases_line(&d),
            "restoring db-1: data (data 1.0 MiB of 4.0 MiB running)"
        );
    }
}
