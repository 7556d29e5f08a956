//! The `verify` job: a backup restored into a throwaway container on this node, to prove it
//! restores. The data object is read with its size and sha256 checked and decompressed on the
//! way (the restore's [`super::restore::verified_stream`]). MariaDB: a one-shot container of
//! the engine's image, no network, as the server's uid, unpacks it (`mbstream -x`), prepares
//! it (`mariadb-backup --prepare`, InnoDB's recovery), starts a server on a socket and counts
//! the rows of every application table with the query the backup counted with. Redis: the RDB
//! is written to a scratch directory and loaded by a throwaway `redis-server` (no port), whose
//! `DBSIZE` is the answer. The scratch directory is removed afterwards, whatever happened.

use super::run::{BackupContext, Failure};
use crate::runtime::{Mount, OneShot};
use futures::StreamExt;
use mofang_common::backup::{self as common, params, verify_params, RestoreSource, VerifyFound};
use mofang_common::proto::Job;
use mofang_common::repo::RepoSpec;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tracing::{info, warn};

/// The server's uid in the engines' images: owner of the scratch directory.
const UID: u32 = 999;

/// The throwaway's script (MariaDB, bash): unpack, prepare, start, count, stop.
fn mariadb_script() -> String {
    format!(
        r#"set -e
set -o pipefail
cd /var/lib/mysql
mbstream -x
if ! mariadb-backup --prepare --target-dir=/var/lib/mysql >/tmp/prepare.log 2>&1; then
  echo "mariadb-backup --prepare failed: $(tail -c 1500 /tmp/prepare.log)"; exit 1
fi
mariadbd --no-defaults --datadir=/var/lib/mysql --skip-networking \
  --socket=/tmp/verify.sock --skip-grant-tables --skip-log-bin --log-error=/tmp/verify.err &
pid=$!
ok=
for i in $(seq 1 600); do
  if mariadb -S /tmp/verify.sock -e 'SELECT 1' >/dev/null 2>&1; then ok=1; break; fi
  if ! kill -0 $pid 2>/dev/null; then break; fi
  sleep 0.2
done
if [ -z "$ok" ]; then echo "the server did not start on the prepared backup: $(tail -c 1500 /tmp/verify.err)"; kill $pid 2>/dev/null || true; exit 1; fi
cat > /tmp/gen.sql <<'MOFANG_EOF'
{sql}
MOFANG_EOF
mariadb -S /tmp/verify.sock -N -B < /tmp/gen.sql > /tmp/count.sql
if [ -s /tmp/count.sql ] && [ "$(cat /tmp/count.sql)" != "NULL" ]; then
  mariadb -S /tmp/verify.sock -N -B < /tmp/count.sql | sed 's/^/ROWS\t/'
fi
mariadb -S /tmp/verify.sock -e 'SHUTDOWN'
wait $pid || true
echo verify-ok
"#,
        sql = common::COUNT_QUERY_SQL
    )
}

/// The throwaway's script (Redis, sh): load the RDB, print `DBSIZE`, stop.
const REDIS_SCRIPT: &str = r#"set -e
redis-server --port 0 --unixsocket /tmp/verify.sock --dir /data --dbfilename dump.rdb \
  --appendonly no --save '' --daemonize yes --logfile /tmp/verify.log
ok=
for i in $(seq 1 600); do
  if [ "$(redis-cli -s /tmp/verify.sock PING 2>/dev/null)" = PONG ]; then
    if redis-cli -s /tmp/verify.sock INFO persistence | grep -q '^loading:0'; then ok=1; break; fi
  fi
  sleep 0.2
done
if [ -z "$ok" ]; then echo "the RDB did not load: $(tail -c 1500 /tmp/verify.log)"; exit 1; fi
echo "KEYS $(redis-cli -s /tmp/verify.sock DBSIZE)"
redis-cli -s /tmp/verify.sock SHUTDOWN NOSAVE >/dev/null 2>&1 || true
echo verify-ok
"#;

/// Runs one verification; `progress` is told the bytes read so far.
pub async fn run(
    ctx: &BackupContext,
    job: &Job,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<VerifyFound, Failure> {
    let fail = |step: &str, e: String| (step.to_owned(), e);
    let param = |k: &str| job.params.get(k).cloned().unwrap_or_default();
    let num = |k: &str| param(k).parse::<u64>().unwrap_or(0);
    let id = param(params::ID);
    if id.is_empty()
        || !id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        return Err(fail("open", format!("backup id {id:?}")));
    }
    let spec: RepoSpec =
        serde_json::from_str(&job.repo).map_err(|e| fail("open", format!("repository: {e}")))?;
    let engine = param(params::ENGINE);
    let src = RestoreSource {
        backup: id.clone(),
        engine: engine.clone(),
        repo: Some(spec),
        object: param(verify_params::OBJECT),
        size: num(verify_params::SIZE),
        sha256: param(verify_params::SHA256),
        raw_size: num(verify_params::RAW_SIZE),
        encryption: match job.params.get(verify_params::ENCRYPTION) {
            Some(e) => Some(
                serde_json::from_str(e).map_err(|e| fail("open", format!("encryption: {e}")))?,
            ),
            None => None,
        },
        binlogs: vec![],
        stop_datetime: String::new(),
        replica: false,
    };
    let image = (ctx.image)(&engine, &param(params::VERSION));
    // Named by the job (one per verification): a cancelled one's leftovers never collide.
    let name = &job.id;
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        return Err(fail("open", format!("job id {name:?}")));
    }
    let dir = ctx.scratch.join(name);
    let io = |what: &Path, e: std::io::Error| fail("open", format!("{}: {e}", what.display()));
    if dir.exists() {
        let _ = tokio::fs::remove_dir_all(&dir).await;
    }
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| io(&dir, e))?;
    std::os::unix::fs::chown(&dir, Some(UID), Some(UID)).map_err(|e| io(&dir, e))?;
    let mut outcome = restore_and_count(ctx, &src, &image, &dir, name, progress).await;
    if outcome.is_err() {
        // A corrupt object usually breaks the unpacking before its last byte, where the
        // streamed sha256 check would have named it: read it once more to tell.
        if let Err(e) = check_object(&src).await {
            outcome = Err(fail("read", e));
        }
    }
    if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
        warn!(dir = %dir.display(), error = %e, "scratch directory of a verification not removed");
    }
    outcome
}

async fn restore_and_count(
    ctx: &BackupContext,
    src: &RestoreSource,
    image: &str,
    dir: &Path,
    name: &str,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<VerifyFound, Failure> {
    let fail = |step: &str, e: String| (step.to_owned(), e);
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = done.clone();
    let input = super::restore::verified_stream(
        src,
        Arc::new(move |n, _| seen.store(n, std::sync::atomic::Ordering::Relaxed)),
    )
    .map_err(|e| fail("read", e))?;
    let labels = BTreeMap::from([("mofang.verify".to_owned(), src.backup.clone())]);
    let (cmd, target, input) = match src.engine.as_str() {
        "mariadb" => (
            vec!["bash".to_owned(), "-c".to_owned(), mariadb_script()],
            "/var/lib/mysql",
            input,
        ),
        "redis" => {
            use tokio::io::AsyncWriteExt;
            let path = dir.join("dump.rdb");
            let mut f = tokio::fs::File::create(&path)
                .await
                .map_err(|e| fail("read", format!("{}: {e}", path.display())))?;
            let mut input = input;
            while let Some(chunk) = input.next().await {
                let chunk = chunk.map_err(|e| fail("read", e))?;
                f.write_all(&chunk)
                    .await
                    .map_err(|e| fail("read", format!("{}: {e}", path.display())))?;
                progress(done.load(std::sync::atomic::Ordering::Relaxed));
            }
            f.sync_all()
                .await
                .map_err(|e| fail("read", format!("{}: {e}", path.display())))?;
            std::os::unix::fs::chown(&path, Some(UID), Some(UID))
                .map_err(|e| fail("read", format!("{}: {e}", path.display())))?;
            (
                vec!["sh".to_owned(), "-c".to_owned(), REDIS_SCRIPT.to_owned()],
                "/data",
                futures::stream::empty().boxed(),
            )
        }
        other => {
            return Err(fail(
                "open",
                format!("no verification for engine {other:?}"),
            ))
        }
    };
    let out = ctx
        .runtime
        .run_once(
            &OneShot {
                name: format!("mofang-{name}"),
                image: image.to_owned(),
                cmd,
                mounts: vec![Mount {
                    source: dir.to_owned(),
                    target: target.into(),
                    read_only: false,
                }],
                user: format!("{UID}:{UID}"),
                labels,
            },
            input,
        )
        .await
        .map_err(|e| fail("restore", e.to_string()))?;
    progress(done.load(std::sync::atomic::Ordering::Relaxed));
    if out.exit_code != 0 || !out.stdout.contains("verify-ok") {
        let lines: Vec<&str> = out
            .stdout
            .lines()
            .chain(out.stderr.lines())
            .filter(|l| !l.starts_with("ROWS\t"))
            .collect();
        let tail: Vec<&str> = lines.into_iter().rev().take(8).collect();
        return Err(fail(
            "restore",
            format!(
                "the backup did not restore (exit code {}): {}",
                out.exit_code,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ),
        ));
    }
    let found = VerifyFound {
        row_counts: common::parse_row_counts(&out.stdout, "ROWS\t"),
        keys: out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("KEYS ")?.trim().parse().ok()),
    };
    info!(tables = found.row_counts.len(), keys = ?found.keys, "backup restored in a throwaway container");
    Ok(found)
}

/// Reads the data object whole, as the restore did (decrypted, decompressed), and compares
/// its size and sha256 with the record: why it is not the one backed up, naming it.
async fn check_object(src: &RestoreSource) -> Result<(), String> {
    let mut input = super::restore::verified_stream(src, Arc::new(|_, _| {}))?;
    while let Some(chunk) = input.next().await {
        chunk?;
    }
    Ok(())
}
