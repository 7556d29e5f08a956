//! The `backup` job: a full backup of one member of this node, taken in the member's own
//! container and streamed to the repository ([`super::stream`]), then its manifest.
//!
//! MariaDB: `mariadb-backup --backup --stream=mbstream` (the member's own tool for its own
//! server); the position comes from what it prints (the values of `mariadb_backup_binlog_info`).
//! Redis: `BGSAVE`, waited for and checked (`engine::redis::snapshot`), then the RDB file read
//! with `cat` in the container. Either way the command's exit code is checked before the
//! upload is completed, so a command that dies (its container killed) leaves no object.

use super::counts;
use super::stream::{self, Zstd};
use crate::engine::{self, Secrets, Target};
use crate::runtime::{exec_piped, ContainerRuntime, ExecOutput, ExecStream, PipeDir};
use crate::statuses::Statuses;
use futures::StreamExt;
use mofang_common::backup::{self as common, params, ConsistentAt, Manifest, ManifestObject};
use mofang_common::proto::{Assignment, Job};
use mofang_common::repo::{Repo, RepoSpec};
use object_store::PutPayload;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tracing::{info, warn};

/// The MariaDB backup command, run in the member's container.
pub const MARIADB_BACKUP: [&str; 7] = [
    "mariadb-backup",
    "--defaults-extra-file=/etc/mofang/client.cnf",
    "--backup",
    "--stream=mbstream",
    "--target-dir=/tmp",
    "--datadir=/var/lib/mysql",
    "--socket=/run/mysqld/mysqld.sock",
];
/// How long a Redis BGSAVE may take.
const BGSAVE_LIMIT: Duration = Duration::from_secs(3600);

/// The image of an engine version: `(engine, version) -> image`.
pub type ImageOf = Arc<dyn Fn(&str, &str) -> String + Send + Sync>;

/// What a backup job needs from the agent.
#[derive(Clone)]
pub struct BackupContext {
    /// The container runtime.
    pub runtime: Arc<dyn ContainerRuntime>,
    /// Member statuses (a Redis member's address).
    pub statuses: Statuses,
    /// The agent's state (a member's TLS material, to reach a Redis member with TLS on).
    pub state: crate::state::LocalState,
    /// The image of an engine version (`engine`, `version`), for a verification's throwaway.
    pub image: ImageOf,
    /// Where a verification unpacks a backup (a directory on a data disk).
    pub scratch: std::path::PathBuf,
    /// Nice value (0 ..= 19) of a backup's work: mariadb-backup in the member's container and
    /// the agent's compression (`backup_nice` in the agent's config; decision 116).
    pub nice: i32,
    /// How hard a full backup may press on the host's disk and cores (the agent's
    /// `backup_throttle_mib_s`, `backup_ionice_idle`, `backup_zstd_threads`).
    pub tuning: Tuning,
}

/// A full backup's pressure on its host, besides its CPU priority (`nice`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tuning {
    /// mariadb-backup's `--throttle` (1 MiB reads of InnoDB data files per second); 0: none.
    pub throttle_mib_s: u32,
    /// mariadb-backup in the idle I/O class (`ionice -c 3`).
    pub ionice_idle: bool,
    /// zstd worker threads; 0: the host's cores, at most 4.
    pub zstd_threads: u32,
}

impl Tuning {
    /// zstd worker threads for a host of `cores`.
    pub fn zstd_threads(&self, cores: usize) -> u32 {
        match self.zstd_threads {
            0 => cores.clamp(1, 4) as u32,
            n => n,
        }
    }

    /// The MariaDB backup command: [`MARIADB_BACKUP`] with `--throttle`, under `ionice` and
    /// `nice` as asked. An error still names mariadb-backup ([`program_of`]).
    pub fn mariadb_backup(&self, nice: i32) -> Vec<String> {
        let mut cmd: Vec<String> = MARIADB_BACKUP.iter().map(|a| (*a).to_owned()).collect();
        if self.throttle_mib_s > 0 {
            cmd.push(format!("--throttle={}", self.throttle_mib_s));
        }
        if self.ionice_idle {
            let mut v = vec!["ionice".to_owned(), "-c".to_owned(), "3".to_owned()];
            v.append(&mut cmd);
            cmd = v;
        }
        let argv: Vec<&str> = cmd.iter().map(String::as_str).collect();
        niced(nice, &argv)
    }
}

/// The program a backup command runs, past `nice -n N` and `ionice -c N`.
fn program_of(cmd: &[&str]) -> String {
    let mut rest = cmd;
    loop {
        match rest {
            ["nice", "-n", _, tail @ ..] | ["ionice", "-c", _, tail @ ..] => rest = tail,
            _ => return rest.first().copied().unwrap_or_default().to_owned(),
        }
    }
}

/// A failed backup: the step (`open`, `snapshot`, `stream`, `manifest`) and why.
pub type Failure = (String, String);

fn fail(step: &str, e: impl std::fmt::Display) -> Failure {
    (step.to_owned(), e.to_string())
}

/// Runs one backup job; `progress` is told the source bytes read so far.
pub async fn run(
    ctx: &BackupContext,
    node: &str,
    job: &Job,
    assignment: Option<Assignment>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Manifest, Failure> {
    let param = |k: &str| job.params.get(k).cloned().unwrap_or_default();
    let (id, instance, engine_name) = (
        param(params::ID),
        param(params::INSTANCE),
        param(params::ENGINE),
    );
    let spec: RepoSpec =
        serde_json::from_str(&job.repo).map_err(|e| fail("open", format!("repository: {e}")))?;
    let repo = spec.open().map_err(|e| fail("open", e))?;
    let a = assignment.ok_or_else(|| {
        fail(
            "open",
            format!("member {} is not on this node's desired state", job.member),
        )
    })?;
    let container = format!("mofang-{}", job.member);
    let dir = common::dir(&instance, &id);
    let started_at_ms = now_ms();
    let threads = ctx
        .tuning
        .zstd_threads(std::thread::available_parallelism().map_or(1, |n| n.get()));
    let zstd = Some(Zstd {
        level: 3,
        threads,
        nice: ctx.nice,
    });
    let mut tools = BTreeMap::from([(
        "mofang-agent".to_owned(),
        env!("CARGO_PKG_VERSION").to_owned(),
    )]);
    let mut row_counts = None;
    let mut keys = None;
    let (object, consistent_at, stored) = match engine_name.as_str() {
        "mariadb" => {
            tools.insert(
                "mariadb-backup".into(),
                tool_version(ctx, &container, &["mariadb-backup", "--version"]).await,
            );
            // Replication runs on: the counts are taken after the backup, in a consistent
            // snapshot, and moved back to the backup's binlog position (decision 87).
            let backup_cmd = ctx.tuning.mariadb_backup(ctx.nice);
            let argv: Vec<&str> = backup_cmd.iter().map(String::as_str).collect();
            let (stored, out) = stream_command(
                ctx,
                &repo,
                &job.member,
                &argv,
                &format!("{dir}/{}", common::MARIADB_DATA),
                zstd,
                progress,
            )
            .await?;
            if !out.stderr.contains("completed OK") {
                return Err(fail(
                    "stream",
                    format!(
                        "mariadb-backup did not say completed OK: {}",
                        tail(&out.stderr)
                    ),
                ));
            }
            let (gtid, binlog) = common::mariadb_position_from_log(&out.stderr);
            row_counts = match count_rows_at(ctx, &container, &binlog).await {
                Ok(counts) => Some(counts),
                Err(e) => {
                    warn!(error = %e, backup_at = %binlog, "row counts at the backup's position not recorded");
                    None
                }
            };
            (
                common::MARIADB_DATA,
                ConsistentAt {
                    gtid,
                    binlog,
                    offset: None,
                },
                stored,
            )
        }
        "redis" => {
            tools.insert(
                "redis-server".into(),
                tool_version(ctx, &container, &["redis-server", "--version"]).await,
            );
            let secrets = Secrets::from_map(&a.secrets)
                .ok_or_else(|| fail("snapshot", "the member's credentials are incomplete"))?;
            let address = ctx
                .statuses
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&job.member)
                .map(|s| s.address.clone())
                .unwrap_or_default();
            let mut at = Target::parse(&address).map_err(|e| {
                fail(
                    "snapshot",
                    format!("member {} has no address yet: {e}", job.member),
                )
            })?;
            if mofang_common::DbTls::parse(&a.tls).is_some_and(|t| t.is_on()) {
                let kept = ctx
                    .state
                    .member_tls(&job.member)
                    .ok()
                    .flatten()
                    .ok_or_else(|| {
                        fail(
                            "snapshot",
                            format!("member {} has no certificate yet", job.member),
                        )
                    })?;
                at.tls = Some(engine::ClientTls {
                    ca_pem: kept.ca_pem,
                    server_name: job.member.clone(),
                });
            }
            let snap = engine::redis_snapshot(&at, &secrets, BGSAVE_LIMIT)
                .await
                .map_err(|e| fail("snapshot", e))?;
            info!(path = %snap.path, offset = snap.offset, "BGSAVE done");
            // The keys of the very file uploaded next (redis-check-rdb reads it whole).
            keys = match ctx
                .runtime
                .exec(&container, &["redis-check-rdb", &snap.path], None)
                .await
            {
                Ok(o) => rdb_keys(&o.stdout).or_else(|| rdb_keys(&o.stderr)),
                Err(e) => {
                    warn!(error = %e, "redis-check-rdb failed: key count not recorded");
                    None
                }
            };
            let (stored, _) = stream_command(
                ctx,
                &repo,
                &job.member,
                &["cat", &snap.path],
                &format!("{dir}/{}", common::REDIS_DATA),
                zstd,
                progress,
            )
            .await?;
            (
                common::REDIS_DATA,
                ConsistentAt {
                    offset: Some(snap.offset),
                    ..ConsistentAt::default()
                },
                stored,
            )
        }
        other => return Err(fail("open", format!("no backup for engine {other:?}"))),
    };
    let manifest = Manifest {
        id: id.clone(),
        instance,
        engine: engine_name,
        version: param(params::VERSION),
        member: job.member.clone(),
        node: node.to_owned(),
        started_at_ms,
        ended_at_ms: now_ms(),
        consistent_at,
        objects: vec![ManifestObject {
            name: object.to_owned(),
            size: stored.size,
            sha256: stored.sha256,
            raw_size: stored.source_bytes,
            compression: "zstd".into(),
            encryption: stored.encryption,
        }],
        tools,
        row_counts,
        keys,
    };
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| fail("manifest", e))?;
    repo.store
        .put(
            &repo.path(&format!("{dir}/{}", common::MANIFEST)),
            PutPayload::from(body),
        )
        .await
        .map_err(|e| fail("manifest", e))?;
    Ok(manifest)
}

/// `cmd` run at nice value `nice` (inside the container: an unprivileged process may lower
/// its own priority), as is when `nice` is 0.
fn niced(nice: i32, cmd: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = Vec::with_capacity(cmd.len() + 3);
    if nice > 0 {
        v.extend(["nice".to_owned(), "-n".to_owned(), nice.to_string()]);
    }
    v.extend(cmd.iter().map(|a| (*a).to_owned()));
    v
}

/// Streams the output of `cmd`, run in `member`'s container, to `rel`; the command's exit
/// code is checked before the upload is completed (a failure aborts it: nothing is left).
async fn stream_command(
    ctx: &BackupContext,
    repo: &Repo,
    member: &str,
    cmd: &[&str],
    rel: &str,
    zstd: Option<Zstd>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(stream::Stored, ExecOutput), Failure> {
    // Through a FIFO in the member's configuration directory, not through the engine
    // (decision 171).
    let pipe = PipeDir::config(ctx.state.config_dir(member));
    let exec = exec_piped(
        ctx.runtime.as_ref(),
        &format!("mofang-{member}"),
        &pipe,
        cmd,
    )
    .await
    .map_err(|e| fail("stream", e))?;
    let (input, outcome) = with_verdict(exec, cmd);
    let stored = stream::store::<String>(repo, rel, input, zstd, progress)
        .await
        .map_err(|e| fail("stream", e))?;
    let out = outcome
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .ok_or_else(|| fail("stream", "the command's outcome is missing"))?;
    Ok((stored, out))
}

/// A command's output as a stream ([`with_verdict`]).
pub(crate) type Output = futures::stream::BoxStream<'static, Result<bytes::Bytes, String>>;
/// A command's outcome, once its output ended well ([`with_verdict`]).
pub(crate) type Outcome = Arc<Mutex<Option<ExecOutput>>>;

/// A command's output, then its verdict: one more item, an error naming the program (not
/// `nice` or `ionice` before it) when it exited with another code than 0; its outcome (exit
/// code, standard error) kept in the second value once the stream has ended well.
pub(crate) fn with_verdict(exec: ExecStream, cmd: &[&str]) -> (Output, Outcome) {
    let outcome: Arc<Mutex<Option<ExecOutput>>> = Arc::default();
    let kept = outcome.clone();
    let program = program_of(cmd);
    let name = program.clone();
    let done = exec.done;
    // After the last byte of output: the command's verdict, as one more item of the stream.
    let verdict = futures::stream::once(async move {
        match done.await {
            Ok(Ok(out)) if out.exit_code == 0 => {
                *kept.lock().unwrap_or_else(PoisonError::into_inner) = Some(out);
                None
            }
            Ok(Ok(out)) => Some(Err(format!(
                "{program} exited with code {}: {}",
                out.exit_code,
                tail(&out.stderr)
            ))),
            Ok(Err(e)) => Some(Err(format!("{program}: {e}"))),
            Err(_) => Some(Err(format!("{program}: the runtime dropped the command"))),
        }
    })
    .filter_map(futures::future::ready);
    let input = exec
        .stdout
        .map(move |r| r.map_err(|e| format!("{name}: {e}")))
        .chain(verdict)
        .boxed();
    (input, outcome)
}

async fn tool_version(ctx: &BackupContext, container: &str, cmd: &[&str]) -> String {
    match ctx.runtime.exec(container, cmd, None).await {
        Ok(o) => {
            let text = if o.stdout.trim().is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            text.lines().next().unwrap_or_default().trim().to_owned()
        }
        Err(e) => format!("unknown ({e})"),
    }
}

/// Runs one SQL statement on the member with its admin account (`client.cnf`); its output.
async fn sql(ctx: &BackupContext, container: &str, statement: &str) -> Result<String, String> {
    let out = ctx
        .runtime
        .exec(
            container,
            &[
                "mariadb",
                "--defaults-extra-file=/etc/mofang/client.cnf",
                "--socket=/run/mysqld/mysqld.sock",
                "-N",
                "-B",
                "-e",
                statement,
            ],
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
    if out.exit_code != 0 {
        return Err(format!(
            "{statement:.40}: exit code {}: {}",
            out.exit_code,
            tail(&out.stderr)
        ));
    }
    Ok(out.stdout)
}

/// Rows per application table at the binlog position `at` (`file:offset`, the backup's, in
/// this member's binlog): counted in a consistent snapshot taken now, then moved back by the
/// row events logged between `at` and the snapshot ([`counts`], decision 87). Nothing is
/// stopped or locked: the member keeps applying (a replica) or taking writes (a primary).
async fn count_rows_at(
    ctx: &BackupContext,
    container: &str,
    at: &str,
) -> Result<BTreeMap<String, u64>, String> {
    let (from_file, from_pos) = counts::parse_position(at)
        .ok_or_else(|| format!("the backup recorded no binlog position ({at:?})"))?;
    let query = sql(ctx, container, common::COUNT_QUERY_SQL).await?;
    let query = query.trim();
    let counted = if query.is_empty() || query == "NULL" {
        "SHOW STATUS LIKE 'binlog_snapshot_%'".to_owned()
    } else {
        format!("SHOW STATUS LIKE 'binlog_snapshot_%'; {query}")
    };
    let out = sql(
        ctx,
        container,
        &format!("START TRANSACTION WITH CONSISTENT SNAPSHOT; {counted}; COMMIT"),
    )
    .await?;
    let (to_file, to_pos) = counts::snapshot_position(&out)
        .ok_or_else(|| "the snapshot has no binlog position (binlog off?)".to_owned())?;
    let snapshot = common::parse_row_counts(&out, "");
    if (from_file.as_str(), from_pos) == (to_file.as_str(), to_pos) {
        return Ok(snapshot);
    }
    let files = counts::files_between(
        &sql(ctx, container, "SHOW BINARY LOGS").await?,
        &from_file,
        &to_file,
    )?;
    let dir = sql(ctx, container, "SELECT @@log_bin_basename").await?;
    let dir = dir
        .trim()
        .rsplit_once('/')
        .map(|(d, _)| d.to_owned())
        .ok_or_else(|| format!("log_bin_basename {:?}", dir.trim()))?;
    let paths: Vec<String> = files
        .iter()
        .map(|f| format!("'{dir}/{}'", f.replace('\'', "")))
        .collect();
    // The value lines are dropped in the container: only row and event lines matter.
    let script = format!(
        "set -o pipefail; mariadb-binlog -v --base64-output=DECODE-ROWS --start-position={from_pos} \
         --stop-position={to_pos} {} | grep -v -e '^###   ' -e '^### SET$' -e '^### WHERE$'",
        paths.join(" ")
    );
    let read = ctx
        .runtime
        .exec(container, &["bash", "-c", &script], None)
        .await
        .map_err(|e| e.to_string())?;
    if read.exit_code != 0 {
        return Err(format!(
            "mariadb-binlog exited with code {}: {}",
            read.exit_code,
            tail(&read.stderr)
        ));
    }
    let delta = counts::row_delta(&read.stdout)?;
    info!(from = %at, to = %format!("{to_file}:{to_pos}"), tables = delta.len(), "row counts moved back to the backup's position");
    counts::at_backup(&snapshot, &delta)
}

/// The key count `redis-check-rdb` printed (`[info] 500 keys read`).
pub fn rdb_keys(out: &str) -> Option<u64> {
    out.lines()
        .filter_map(|l| l.strip_suffix("keys read"))
        .filter_map(|l| l.trim().rsplit(' ').next()?.parse().ok())
        .next()
}

/// The last lines of a command's standard error, for a message.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    /// mariadb-backup runs under `nice` when the agent lowers a backup's priority, and an
    /// error still names mariadb-backup, not `nice`.
    #[test]
    fn the_backup_command_is_niced() {
        assert_eq!(super::niced(0, &["a", "-b"]), vec!["a", "-b"]);
        assert_eq!(
            super::niced(19, &super::MARIADB_BACKUP)[..4],
            ["nice", "-n", "19", "mariadb-backup"]
        );
    }

    /// The tuning knobs put `--throttle` and `ionice -c 3` where mariadb-backup and the
    /// kernel read them, and the program named in errors is still mariadb-backup.
    #[test]
    fn the_backup_command_takes_its_tuning() {
        use super::{program_of, Tuning};
        let plain = Tuning::default().mariadb_backup(0);
        assert_eq!(plain, super::MARIADB_BACKUP.to_vec());
        let t = Tuning {
            throttle_mib_s: 20,
            ionice_idle: true,
            zstd_threads: 1,
        };
        let cmd = t.mariadb_backup(19);
        assert_eq!(
            cmd[..7],
            ["nice", "-n", "19", "ionice", "-c", "3", "mariadb-backup"]
        );
        assert_eq!(cmd.last().map(String::as_str), Some("--throttle=20"));
        let argv: Vec<&str> = cmd.iter().map(String::as_str).collect();
        assert_eq!(program_of(&argv), "mariadb-backup");
        assert_eq!(program_of(&["cat", "/data/dump.rdb"]), "cat");
        assert_eq!(t.zstd_threads(8), 1);
        assert_eq!(Tuning::default().zstd_threads(8), 4);
        assert_eq!(Tuning::default().zstd_threads(2), 2);
        assert_eq!(Tuning::default().zstd_threads(0), 1);
    }

    /// What redis-check-rdb 7.0 prints at the end of a good file.
    #[test]
    fn the_key_count_is_read_from_redis_check_rdb() {
        let out =
            "[offset 0] Checking RDB file dump.rdb\n[offset 27] AUX FIELD redis-ver = '7.0.15'\n\
            [offset 4521] \\o/ RDB looks OK! \\o/\n[info] 300 keys read\n[info] 0 expires\n";
        assert_eq!(super::rdb_keys(out), Some(300));
        assert_eq!(super::rdb_keys("nothing"), None);
    }
}
