//! Filling a restored instance's primary from a backup, before its server first starts.
//!
//! The data object is read from the repository, its sha256 and size checked on the way, and
//! decompressed as it comes. MariaDB: the stream is fed to a one-shot container of the
//! member's own image with its data volume mounted, which unpacks it (`mbstream -x`),
//! prepares it (`mariadb-backup --prepare`), clears the old instance's replication state
//! (`mysql.gtid_slave_pos`) with a server started for that alone, and gives the files to the
//! server's uid. Redis: the RDB is written into the volume as the base of a fresh append-only
//! file (the server runs with `appendonly yes`, which loads the AOF and ignores `dump.rdb`).
//! A restore that fails leaves the volume to be wiped and filled again on the next try.

use crate::runtime::{ContainerRuntime, Input, Mount, OneShot};
use bytes::Bytes;
use futures::StreamExt;
use mofang_common::backup::RestoreSource;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The one-shot container's script (MariaDB, bash): unpack, prepare, replay the archived
/// binlogs a point-in-time restore brought (`.mofang-pitr/plan`: one file and the GTID its
/// replay starts after per line, `-` for none; each replay stops at `MOFANG_PITR_STOP`, UTC),
/// clear the old replication state, hand the files to the server's user. A replay that stops
/// at the time before it reached its start GTID (`never reached expected GTID state`) had
/// nothing to apply: the time falls before that file's first new transaction.
const MARIADB_SCRIPT: &str = r#"set -e
set -o pipefail
cd /var/lib/mysql
find . -mindepth 1 -maxdepth 1 ! -name .mofang-pitr -exec rm -rf {} +
mbstream -x
mariadb-backup --prepare --target-dir=/var/lib/mysql
mariadbd --no-defaults --user=root --datadir=/var/lib/mysql --skip-networking \
  --socket=/tmp/restore.sock --skip-grant-tables --skip-log-bin --log-error=/tmp/restore.err &
pid=$!
ok=
for i in $(seq 1 600); do
  if mariadb -S /tmp/restore.sock -e 'SELECT 1' >/dev/null 2>&1; then ok=1; break; fi
  if ! kill -0 $pid 2>/dev/null; then break; fi
  sleep 0.2
done
if [ -z "$ok" ]; then cat /tmp/restore.err; kill $pid 2>/dev/null; exit 1; fi
if [ -f .mofang-pitr/plan ]; then
  export TZ=UTC
  while read -r f after; do
    args=()
    if [ "$after" != "-" ]; then args+=("--start-position=$after"); fi
    if [ -n "${MOFANG_PITR_STOP:-}" ]; then args+=("--stop-datetime=$MOFANG_PITR_STOP"); fi
    if ! mariadb-binlog "${args[@]}" ".mofang-pitr/$f" 2>/tmp/binlog.err | mariadb -S /tmp/restore.sock 2>/tmp/replay.err; then
      if [ -n "${MOFANG_PITR_STOP:-}" ] && grep -q "never reached expected GTID state" /tmp/binlog.err && [ ! -s /tmp/replay.err ]; then
        echo "replay of $f: the time comes before its first new transaction"
      else
        echo "replay of binlog $f failed: $(tail -c 2000 /tmp/binlog.err) $(tail -c 2000 /tmp/replay.err)"
        mariadb -S /tmp/restore.sock -e 'SHUTDOWN' || true
        exit 1
      fi
    fi
    echo "replayed binlog $f after ${after}"
  done < .mofang-pitr/plan
  rm -rf .mofang-pitr
fi
mariadb -S /tmp/restore.sock -e 'TRUNCATE TABLE mysql.gtid_slave_pos'
mariadb -S /tmp/restore.sock -e 'SHUTDOWN'
wait $pid || true
rm -f /var/lib/mysql/xtrabackup_* /var/lib/mysql/mariadb_backup_*
chown -R "$MOFANG_UID:$MOFANG_UID" /var/lib/mysql
echo restore-ok
"#;

/// Where the restore is (for the member's status).
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Reads the object, checking its sha256 and size, decompressed: a stream of raw bytes whose
/// last item is an error if the object is not the one recorded.
pub(super) fn verified_stream(src: &RestoreSource, progress: Progress) -> Result<Input, String> {
    let spec = src
        .repo
        .clone()
        .ok_or_else(|| format!("the repository of backup {} is unknown", src.backup))?;
    let repo = spec.open().map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, String>>(8);
    let src = src.clone();
    tokio::spawn(async move {
        let path = repo.path(&src.object);
        let result: Result<(), String> = async {
            let mut body = repo
                .store
                .get(&path)
                .await
                .map_err(|e| format!("reading {}: {e}", src.object))?
                .into_stream();
            let mut hash = Sha256::new();
            let mut decoder =
                zstd::stream::write::Decoder::new(Vec::new()).map_err(|e| format!("zstd: {e}"))?;
            let (mut size, mut raw) = (0u64, 0u64);
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| format!("reading {}: {e}", src.object))?;
                hash.update(&chunk);
                size += chunk.len() as u64;
                decoder
                    .write_all(&chunk)
                    .map_err(|e| format!("{}: zstd: {e}", src.object))?;
                let out = std::mem::take(decoder.get_mut());
                raw += out.len() as u64;
                progress(raw, src.raw_size);
                if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
                    return Err("the restore stopped reading".into());
                }
            }
            decoder
                .flush()
                .map_err(|e| format!("{}: zstd: {e}", src.object))?;
            let out = std::mem::take(decoder.get_mut());
            raw += out.len() as u64;
            progress(raw, src.raw_size);
            if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
                return Err("the restore stopped reading".into());
            }
            let sha = hex::encode(hash.finalize());
            if sha != src.sha256 || size != src.size {
                return Err(format!(
                    "object {} is not the one backed up: {size} bytes with sha256 {sha}, \
                     recorded {} bytes with sha256 {}",
                    src.object, src.size, src.sha256
                ));
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = tx.send(Err(e)).await;
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
}

/// The member a restore fills.
#[derive(Debug, Clone)]
pub struct Into<'a> {
    /// Member id.
    pub member: &'a str,
    /// Its image (the one-shot container's).
    pub image: String,
    /// Its data volume on the host.
    pub volume: &'a Path,
    /// The server's uid, owner of the files.
    pub uid: u32,
    /// Labels of the one-shot container.
    pub labels: BTreeMap<String, String>,
}

/// Fills the member's volume (empty or left by a failed attempt) from `src`.
pub async fn fill(
    runtime: &dyn ContainerRuntime,
    src: &RestoreSource,
    to: Into<'_>,
    progress: Progress,
) -> Result<(), String> {
    let Into {
        member,
        image,
        volume,
        uid,
        labels,
    } = to;
    if src.engine == "mariadb" {
        stage_binlogs(src, volume).await?;
    }
    let input = verified_stream(src, progress)?;
    match src.engine.as_str() {
        "mariadb" => {
            if !src
                .stop_datetime
                .bytes()
                .all(|c| c.is_ascii_digit() || b" :-".contains(&c))
            {
                return Err(format!("stop time {:?}", src.stop_datetime));
            }
            let script = format!(
                "export MOFANG_UID={uid}\nexport MOFANG_PITR_STOP='{}'\n{MARIADB_SCRIPT}",
                src.stop_datetime
            );
            let out = runtime
                .run_once(
                    &OneShot {
                        name: format!("mofang-restore-{member}"),
                        image,
                        cmd: vec!["bash".into(), "-c".into(), script],
                        mounts: vec![Mount {
                            source: volume.to_owned(),
                            target: "/var/lib/mysql".into(),
                            read_only: false,
                        }],
                        user: "0:0".into(),
                        labels,
                    },
                    input,
                )
                .await
                .map_err(|e| e.to_string())?;
            if out.exit_code != 0 || !out.stdout.contains("restore-ok") {
                let tail: Vec<&str> = out.stdout.lines().rev().take(8).collect();
                return Err(format!(
                    "unpacking and preparing the backup failed (exit code {}): {}",
                    out.exit_code,
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ));
            }
            Ok(())
        }
        "redis" => write_redis(input, volume, uid).await,
        other => Err(format!("no restore for engine {other:?}")),
    }
}

/// Directory of the volume where a point-in-time restore's binlogs wait for their replay.
const PITR_DIR: &str = ".mofang-pitr";

/// Point-in-time restore: the archived binlog files are read (sha256 and size checked),
/// decompressed into `.mofang-pitr/` of the volume with the replay's plan; the one-shot
/// container replays and removes them. Nothing when the restore brings no binlog.
async fn stage_binlogs(src: &RestoreSource, volume: &Path) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let dir = volume.join(PITR_DIR);
    let io = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
    if dir.exists() {
        tokio::fs::remove_dir_all(&dir)
            .await
            .map_err(|e| io(&dir, e))?;
    }
    if src.binlogs.is_empty() {
        return Ok(());
    }
    tokio::fs::create_dir(&dir).await.map_err(|e| io(&dir, e))?;
    let mut plan = String::new();
    for (k, b) in src.binlogs.iter().enumerate() {
        if !b
            .after
            .bytes()
            .all(|c| c.is_ascii_digit() || c == b'-' || c == b',')
        {
            return Err(format!("binlog start position {:?}", b.after));
        }
        let one = RestoreSource {
            object: b.object.clone(),
            size: b.size,
            sha256: b.sha256.clone(),
            raw_size: 0,
            binlogs: vec![],
            ..src.clone()
        };
        let mut input = verified_stream(&one, Arc::new(|_, _| {}))?;
        let name = format!("{k:06}.bin");
        let path = dir.join(&name);
        let mut f = tokio::fs::File::create(&path)
            .await
            .map_err(|e| io(&path, e))?;
        while let Some(chunk) = input.next().await {
            f.write_all(&chunk?).await.map_err(|e| io(&path, e))?;
        }
        f.sync_all().await.map_err(|e| io(&path, e))?;
        let after = if b.after.is_empty() { "-" } else { &b.after };
        plan.push_str(&format!("{name} {after}\n"));
    }
    let p = dir.join("plan");
    tokio::fs::write(&p, plan).await.map_err(|e| io(&p, e))
}

/// Writes the RDB as the base of a fresh multi-part append-only file
/// (`appendonlydir/appendonly.aof.1.base.rdb` and its manifest), owned by the server's uid.
async fn write_redis(mut input: Input, volume: &Path, uid: u32) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let io = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
    // What a failed attempt left.
    let mut entries = tokio::fs::read_dir(volume)
        .await
        .map_err(|e| io(volume, e))?;
    while let Some(e) = entries.next_entry().await.map_err(|e| io(volume, e))? {
        let p = e.path();
        let removed = if p.is_dir() {
            tokio::fs::remove_dir_all(&p).await
        } else {
            tokio::fs::remove_file(&p).await
        };
        removed.map_err(|e| io(&p, e))?;
    }
    let dir = volume.join("appendonlydir");
    tokio::fs::create_dir(&dir).await.map_err(|e| io(&dir, e))?;
    let base = dir.join("appendonly.aof.1.base.rdb");
    let mut f = tokio::fs::File::create(&base)
        .await
        .map_err(|e| io(&base, e))?;
    while let Some(chunk) = input.next().await {
        f.write_all(&chunk?).await.map_err(|e| io(&base, e))?;
    }
    f.sync_all().await.map_err(|e| io(&base, e))?;
    let manifest = dir.join("appendonly.aof.manifest");
    tokio::fs::write(&manifest, "file appendonly.aof.1.base.rdb seq 1 type b\n")
        .await
        .map_err(|e| io(&manifest, e))?;
    for p in [volume, dir.as_path(), base.as_path(), manifest.as_path()] {
        std::os::unix::fs::chown(p, Some(uid), Some(uid)).map_err(|e| io(p, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mofang_common::repo::RepoSpec;

    fn source(dir: &Path, stored: &super::super::stream::Stored, sha256: &str) -> RestoreSource {
        RestoreSource {
            backup: "b1".into(),
            engine: "redis".into(),
            repo: Some(RepoSpec::Fs {
                path: dir.to_string_lossy().into_owned(),
            }),
            object: "backups/kv/b1/dump.rdb.zst".into(),
            size: stored.size,
            sha256: sha256.into(),
            raw_size: stored.source_bytes,
            binlogs: vec![],
            stop_datetime: String::new(),
        }
    }

    /// A Redis restore writes the RDB as the AOF base with its manifest, replacing what a
    /// failed attempt left; an object whose sha256 is not the recorded one is refused naming
    /// it.
    #[tokio::test]
    async fn a_redis_restore_writes_the_aof_base_and_refuses_another_object() {
        let repo_dir = tempfile::tempdir().unwrap();
        let repo = RepoSpec::Fs {
            path: repo_dir.path().to_string_lossy().into_owned(),
        }
        .open()
        .unwrap();
        let rdb: Vec<u8> = (0..3_000_000u32).map(|i| (i % 97) as u8).collect();
        let chunks: Vec<Result<Bytes, String>> = rdb
            .chunks(100_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let stored = super::super::stream::store(
            &repo,
            "backups/kv/b1/dump.rdb.zst",
            futures::stream::iter(chunks).boxed(),
            Some(super::super::stream::Zstd {
                level: 3,
                threads: 0,
                nice: 0,
            }),
            &|_| {},
        )
        .await
        .unwrap();
        let vol = tempfile::tempdir().unwrap();
        std::fs::write(vol.path().join("left-over"), b"x").unwrap();
        let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(vol.path()).unwrap());
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let s2 = seen.clone();
        let progress: Progress = Arc::new(move |done, _| {
            s2.store(done, std::sync::atomic::Ordering::Relaxed);
        });
        let src = source(repo_dir.path(), &stored, &stored.sha256);
        let input = verified_stream(&src, progress).unwrap();
        write_redis(input, vol.path(), uid).await.unwrap();
        let base = vol.path().join("appendonlydir/appendonly.aof.1.base.rdb");
        assert_eq!(std::fs::read(&base).unwrap(), rdb);
        assert_eq!(
            std::fs::read_to_string(vol.path().join("appendonlydir/appendonly.aof.manifest"))
                .unwrap(),
            "file appendonly.aof.1.base.rdb seq 1 type b\n"
        );
        assert!(!vol.path().join("left-over").exists());
        assert_eq!(
            seen.load(std::sync::atomic::Ordering::Relaxed),
            rdb.len() as u64
        );

        let wrong = source(repo_dir.path(), &stored, &"0".repeat(64));
        let input = verified_stream(&wrong, Arc::new(|_, _| {})).unwrap();
        let e = write_redis(input, vol.path(), uid).await.unwrap_err();
        assert!(
            e.contains("backups/kv/b1/dump.rdb.zst") && e.contains("sha256"),
            "{e}"
        );
    }

    /// A point-in-time restore stages its binlog files (decompressed, in order) and the
    /// replay's plan in the volume, replacing what a failed attempt left; a file whose sha256
    /// is not the recorded one is refused naming it; a restore without binlogs stages nothing.
    #[tokio::test]
    async fn binlogs_are_staged_in_order_with_their_plan() {
        let repo_dir = tempfile::tempdir().unwrap();
        let repo = RepoSpec::Fs {
            path: repo_dir.path().to_string_lossy().into_owned(),
        }
        .open()
        .unwrap();
        let mut binlogs = Vec::new();
        for (k, after) in [(1u8, "0-7-4"), (2, "")] {
            let data = vec![k; 100_000];
            let object = format!("binlogs/db/data/7-mysql-bin.00000{k}-1.zst");
            let stored = super::super::stream::store(
                &repo,
                &object,
                futures::stream::iter(vec![Ok::<_, String>(Bytes::from(data))]).boxed(),
                Some(super::super::stream::Zstd {
                    level: 3,
                    threads: 0,
                    nice: 0,
                }),
                &|_| {},
            )
            .await
            .unwrap();
            binlogs.push(mofang_common::backup::RestoreBinlog {
                object,
                size: stored.size,
                sha256: stored.sha256,
                after: after.into(),
            });
        }
        let stored = super::super::stream::Stored {
            path: String::new(),
            size: 0,
            sha256: String::new(),
            source_bytes: 0,
        };
        let mut src = source(repo_dir.path(), &stored, "");
        src.engine = "mariadb".into();
        src.binlogs = binlogs;
        let vol = tempfile::tempdir().unwrap();
        std::fs::create_dir(vol.path().join(PITR_DIR)).unwrap();
        std::fs::write(vol.path().join(PITR_DIR).join("stale"), b"x").unwrap();
        stage_binlogs(&src, vol.path()).await.unwrap();
        let dir = vol.path().join(PITR_DIR);
        assert_eq!(
            std::fs::read(dir.join("000000.bin")).unwrap(),
            vec![1u8; 100_000]
        );
        assert_eq!(
            std::fs::read(dir.join("000001.bin")).unwrap(),
            vec![2u8; 100_000]
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("plan")).unwrap(),
            "000000.bin 0-7-4\n000001.bin -\n"
        );
        assert!(!dir.join("stale").exists());

        src.binlogs[1].sha256 = "0".repeat(64);
        let e = stage_binlogs(&src, vol.path()).await.unwrap_err();
        assert!(
            e.contains("mysql-bin.000002") && e.contains("sha256"),
            "{e}"
        );

        src.binlogs.clear();
        stage_binlogs(&src, vol.path()).await.unwrap();
        assert!(!dir.exists(), "nothing staged without binlogs");
    }
}
