//! Backups end to end (issue 16), against real agents and a real S3 (SeaweedFS, one per test
//! binary): backup repositories are checked from the scheduler and from every live agent
//! before they are kept, and refused naming the host and the failing step.

use anyhow::{bail, ensure, Context, Result};
use mofang_common::repo::Secret;
use mofang_scheduler::backup::schedule::{BackupPolicy, Retention};
use mofang_scheduler::backup::{Backup, BackupState};
use mofang_scheduler::client::{
    self, InstancePatch, LogRange, NewBackup, NewBackupRepo, NewOperation,
};
use mofang_scheduler::cluster::{BackupRepoView, InstanceView, RestoreProgress};
use mofang_scheduler::model::{Event, InstanceSpec, RestoreRequest};
use mofang_scheduler::ops::{OpKind, OpState, Operation, StepAction};
use mofang_scheduler::secrets::{KeyringStatus, Rotation};
use mofang_tests::s3::SeaweedFs;
use mofang_tests::scenario::{
    admin_sql as sql, container_of, docker_cli, instance_spec, primary_of, replica_of, Env,
};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;

fn s3_repo(s3: &SeaweedFs, name: &str, secret: &str, prefix: &str) -> NewBackupRepo {
    NewBackupRepo {
        name: name.into(),
        kind: "s3".into(),
        endpoint: Some(s3.endpoint.clone()),
        bucket: Some(s3.bucket.clone()),
        prefix: Some(prefix.into()),
        access_key_id: Some(s3.access_key.clone()),
        secret_access_key: Some(Secret(secret.into())),
        ..NewBackupRepo::default()
    }
}

/// A value as compact JSON, for failure messages.
fn js<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("<not JSON: {e}>"))
}

/// What the API answered to a request it refused.
#[derive(Debug)]
struct Refusal {
    /// HTTP status.
    status: u16,
    /// The API's error code.
    code: String,
    /// Its message.
    message: String,
}

/// The refusal of a call expected to be refused; an answer, or no answer, is an error.
fn refusal<T: std::fmt::Debug>(r: client::Result<T>) -> Result<Refusal> {
    match r {
        Err(client::Error::Api {
            status,
            code,
            message,
        }) => Ok(Refusal {
            status,
            code,
            message,
        }),
        Err(e) => Err(e.into()),
        Ok(v) => bail!("accepted: {v:?}"),
    }
}

/// [`instance_spec`] created from a backup of `from`: `backup` (default: its latest), to
/// `time` (a point-in-time restore) when given.
fn restoring(
    name: &str,
    engine: &str,
    replicas: u32,
    from: &str,
    backup: Option<&str>,
    time: Option<String>,
) -> Result<InstanceSpec> {
    let mut spec = instance_spec(name, engine, replicas)?;
    spec.restore = Some(RestoreRequest {
        from_instance: from.to_owned(),
        backup: backup.map(str::to_owned),
        time,
    });
    Ok(spec)
}

/// A good S3 repository is probed by the scheduler and by both agents, then listed without
/// its secret; an encrypting one added through the CLI (`--encrypt`, the key from the
/// environment) is probed with an encrypted round trip everywhere and never shows its key;
/// one with a wrong secret is refused at the scheduler's `write` step; a directory
/// repository whose directory is missing is refused at `open`; an agent that does not answer
/// gets its node named; a deleted repository is gone.
#[tokio::test(flavor = "multi_thread")]
async fn repositories_are_checked_everywhere_before_they_are_kept() -> Result<()> {
    let s3 = SeaweedFs::shared().await?;
    let env = Env::start(2).await?;
    env.wait_ready_nodes(2).await?;
    let c = env.client();

    let v = c
        .add_backup_repo(&s3_repo(s3, "main", &s3.secret_key, "backups"))
        .await?;
    ensure!(
        v.kind == "s3" && v.bucket.as_deref() == Some(s3.bucket.as_str()),
        "{}",
        js(&v)
    );
    // Both agents ran the probe (and it succeeded: the add would have been refused).
    for a in &env.agents {
        let log = a.log();
        ensure!(
            log.contains("repo_probe") && log.contains("job succeeded"),
            "agent {} did not run the probe:\n{log}",
            a.node
        );
    }
    // Raw JSON: the whole answer, fields this client does not know included, must not hold
    // the secret.
    let raw = c.get_json("/v1/backup-repos").await?;
    ensure!(
        !raw.to_string().contains(&s3.secret_key),
        "the secret is shown: {raw}"
    );
    let listed: Vec<BackupRepoView> = serde_json::from_value(raw)?;
    ensure!(listed.len() == 1, "{}", js(&listed));
    ensure!(
        !env.sched.log().contains(&s3.secret_key),
        "the secret is logged"
    );
    // Nothing is left behind by the probes.
    {
        use futures::TryStreamExt;
        use object_store::ObjectStore;
        let store = s3.object_store()?;
        let left: Vec<_> = store
            .list(Some(&"backups/.mofang-probe".into()))
            .try_collect()
            .await?;
        ensure!(left.is_empty(), "probe objects left: {left:?}");
    }

    // Encrypting, through the CLI (`backup-repo add --encrypt`), the key from the
    // environment: the scheduler and both agents also seal, read back and open an encrypted
    // probe object; the key id is the key's, the key itself shown and logged nowhere; a
    // malformed key is refused by the CLI's request, naming the field, with nothing kept.
    let key = mofang_common::backup_crypt::RepoKey::generate();
    let key_text = key.to_text().to_string();
    let cli_add = |name: &'static str, key: String| {
        let env = &env;
        async move {
            tokio::process::Command::new(mofang_tests::cluster::binaries()?.join("mofang"))
                .args([
                    "--json",
                    "backup-repo",
                    "add",
                    name,
                    "--kind",
                    "s3",
                    "--endpoint",
                    &s3.endpoint,
                    "--bucket",
                    &s3.bucket,
                    "--prefix",
                    "vault",
                    "--access-key-id",
                    &s3.access_key,
                    "--encrypt",
                ])
                .envs(env.sched.cli_env())
                .env("MOFANG_TOKEN", &env.token)
                .env("MOFANG_S3_SECRET_ACCESS_KEY", &s3.secret_key)
                .env("MOFANG_BACKUP_ENCRYPTION_KEY", key)
                .output()
                .await
                .map_err(anyhow::Error::from)
        }
    };
    let out = cli_add("vault", key_text.clone()).await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "backup-repo add --encrypt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: BackupRepoView = serde_json::from_str(&stdout)?;
    ensure!(
        v.encrypted && v.key_id.as_deref() == Some(key.id().as_str()),
        "{} (key id {})",
        js(&v),
        key.id()
    );
    for a in &env.agents {
        let log = a.log();
        ensure!(
            log.contains("repository probe passed: write, read, list, delete, encrypt"),
            "agent {} did not probe the encrypted round trip:\n{log}",
            a.node
        );
        ensure!(!log.contains(&key_text), "agent {} logged the key", a.node);
    }
    // Raw JSON: the whole answer must not hold the key.
    let raw = c.get_json("/v1/backup-repos/vault").await?;
    let listed: BackupRepoView = serde_json::from_value(raw.clone())?;
    ensure!(
        listed.encrypted && !raw.to_string().contains(&key_text),
        "{raw}"
    );
    ensure!(
        !stdout.contains(&key_text) && !env.sched.log().contains(&key_text),
        "the key is shown or logged"
    );
    {
        use futures::TryStreamExt;
        use object_store::ObjectStore;
        let left: Vec<_> = s3
            .object_store()?
            .list(Some(&"vault/.mofang-probe".into()))
            .try_collect()
            .await?;
        ensure!(left.is_empty(), "encrypted probe objects left: {left:?}");
    }
    let bad = "not-a-key-at-all";
    let out = cli_add("vault2", bad.to_owned()).await?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        !out.status.success() && stderr.contains("encryption_key") && !stderr.contains(bad),
        "a malformed key through the CLI: {} {stderr}",
        out.status
    );
    let r = refusal(c.backup_repo("vault2").await)?;
    ensure!(r.status == 404, "a refused repository is kept: {r:?}");
    c.delete_backup_repo("vault").await?;

    let r = refusal(
        c.add_backup_repo(&s3_repo(s3, "main", &s3.secret_key, "x"))
            .await,
    )?;
    ensure!(r.status == 409, "same name twice: {r:?}");

    let r = refusal(
        c.add_backup_repo(&s3_repo(s3, "wrong", "not-the-secret", "backups"))
            .await,
    )?;
    ensure!(r.status == 422, "{r:?}");
    ensure!(
        r.code == "repo_check_failed" && r.message.contains("on scheduler at step write"),
        "{r:?}"
    );

    let missing = std::env::temp_dir().join(mofang_tests::unique_name("no-such-dir"));
    let r = refusal(
        c.add_backup_repo(&NewBackupRepo {
            name: "nfs".into(),
            kind: "fs".into(),
            path: Some(missing.to_str().context("temp path")?.to_owned()),
            ..NewBackupRepo::default()
        })
        .await,
    )?;
    ensure!(r.status == 422, "{r:?}");
    ensure!(r.message.contains("at step open"), "{r:?}");

    // The second agent's link is cut just before the add: its node is still live, is asked,
    // and never answers.
    env.links[1].cut();
    let added = c
        .add_backup_repo(&s3_repo(s3, "second", &s3.secret_key, "other"))
        .await;
    env.links[1].heal();
    let r = refusal(added)?;
    ensure!(r.status == 422, "{r:?}");
    ensure!(
        r.message
            .contains(&format!("on {} at step answer", env.agents[1].node)),
        "{r:?}"
    );
    ensure!(
        c.backup_repos().await?.len() == 1,
        "a refused repository is not kept"
    );

    c.delete_backup_repo("main").await?;
    let r = refusal(c.backup_repo("main").await)?;
    ensure!(r.status == 404, "{r:?}");
    Ok(())
}

/// `mariadb-backup --backup --stream=mbstream` run in a replica's own container, its output
/// compressed with multi-threaded zstd and uploaded to S3 as it comes (the agent's stream
/// code on the real runtime): the object's sha256 is the one computed on the way, and the
/// backup, unpacked and prepared in a throwaway container, opens with exactly the rows the
/// replica had.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_streams_a_mariadb_backup_that_prepares_and_holds_its_rows() -> Result<()> {
    use futures::StreamExt;
    use mofang_agent::backup::stream::{self, Zstd};
    use mofang_agent::runtime::ContainerRuntime;
    use object_store::ObjectStore;
    use sha2::Digest;

    let s3 = SeaweedFs::shared().await?;
    let env = Env::start(2).await?;
    env.wait_ready_nodes(2).await?;
    let inst = env.create("bk", "mariadb", 1).await?;
    let primary = primary_of(&inst)?.id.clone();
    let replica = replica_of(&inst)?.id.clone();
    sql(
        &primary,
        "CREATE DATABASE bk; CREATE TABLE bk.t (id INT PRIMARY KEY); \
         INSERT INTO bk.t SELECT seq FROM bk.seq_1_to_1000",
    )?;
    mofang_tests::eventually("replica caught up", Duration::from_secs(30), || async {
        let n = sql(&replica, "SELECT COUNT(*) FROM bk.t").unwrap_or_default();
        ensure!(n == "1000", "replica has {n:?} rows");
        Ok(())
    })
    .await?;

    let rt = mofang_tests::docker().await;
    let exec = rt
        .exec_stream(
            &container_of(&replica),
            &[
                "mariadb-backup",
                "--defaults-extra-file=/etc/mofang/client.cnf",
                "--backup",
                "--stream=mbstream",
                "--target-dir=/tmp",
                "--datadir=/var/lib/mysql",
                "--socket=/run/mysqld/mysqld.sock",
            ],
            None,
        )
        .await?;
    let repo = mofang_common::repo::RepoSpec::S3 {
        endpoint: s3.endpoint.clone(),
        bucket: s3.bucket.clone(),
        prefix: "stream-test".into(),
        region: "us-east-1".into(),
        access_key_id: s3.access_key.clone(),
        secret_access_key: mofang_common::repo::Secret(s3.secret_key.clone()),
        path_style: true,
        encryption_key: None,
        retired_keys: Vec::new(),
    }
    .open()?;
    let stored = stream::store(
        &repo,
        "bk/full.mbstream.zst",
        exec.stdout.boxed(),
        Some(Zstd {
            level: 3,
            threads: 2,
            nice: 19,
        }),
        &|_| {},
    )
    .await?;
    let out = exec.done.await??;
    ensure!(out.exit_code == 0, "mariadb-backup failed: {}", out.stderr);
    ensure!(out.stderr.contains("completed OK"), "{}", out.stderr);

    let body = s3
        .object_store()?
        .get(&"stream-test/bk/full.mbstream.zst".into())
        .await?
        .bytes()
        .await?;
    ensure!(
        body.len() as u64 == stored.size,
        "size {} vs {}",
        body.len(),
        stored.size
    );
    ensure!(
        hex::encode(sha2::Sha256::digest(&body)) == stored.sha256,
        "sha256 differs"
    );
    let raw = zstd::decode_all(&body[..])?;
    ensure!(raw.len() as u64 == stored.source_bytes);

    // Unpack, prepare and open it in a throwaway container; count the rows.
    let script = "set -e; mkdir /tmp/r; cd /tmp/r; mbstream -x; \
        mariadb-backup --prepare --target-dir=/tmp/r >/tmp/prepare.log 2>&1 || { cat /tmp/prepare.log; exit 1; }; \
        mariadbd --no-defaults --datadir=/tmp/r --skip-networking --socket=/tmp/s --skip-grant-tables \
          --log-error=/tmp/err.log & \
        for i in $(seq 1 100); do mariadb -S /tmp/s -N -e 'SELECT COUNT(*), MIN(id), MAX(id) FROM bk.t' 2>/dev/null && exit 0; sleep 0.2; done; \
        cat /tmp/err.log; exit 1";
    let mut child = std::process::Command::new("docker")
        .args(["run", "-i", "--rm", "--label"])
        .arg(format!(
            "{}={}",
            mofang_tests::test_label().0,
            mofang_tests::test_label().1
        ))
        .args(["--entrypoint", "sh", "mofang/mariadb:10.11", "-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&raw)
    });
    let output = child.wait_with_output()?;
    let fed = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))?;
    ensure!(
        fed.is_ok() && output.status.success(),
        "restore check failed ({fed:?}): {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success()
            && text.split_whitespace().collect::<Vec<_>>() == ["1000", "1", "1000"],
        "restore check: {}\n{}",
        text,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Polls a backup until its state is final (or `limit` passes).
async fn wait_backup(env: &Env, id: &str, limit: Duration) -> Result<Backup> {
    let c = env.client();
    mofang_tests::eventually("backup ended", limit, || async {
        let b = c.backup(id).await?;
        ensure!(
            b.state == BackupState::Succeeded || b.state == BackupState::Failed,
            "{}",
            js(&b)
        );
        Ok(b)
    })
    .await
}

/// Asks for a backup into `repo`; checks it is accepted `pending` and returns the record.
async fn request_backup(env: &Env, instance: &str, repo: &str) -> Result<Backup> {
    let b = env
        .client()
        .create_backup(
            instance,
            &NewBackup {
                repo: repo.to_owned(),
                ..NewBackup::default()
            },
        )
        .await?;
    ensure!(b.state == BackupState::Pending, "{}", js(&b));
    Ok(b)
}

/// The objects under a prefix of the bucket.
async fn objects_under(s3: &SeaweedFs, prefix: &str) -> Result<Vec<String>> {
    use futures::TryStreamExt;
    use object_store::ObjectStore;
    let listed: Vec<_> = s3
        .object_store()?
        .list(Some(&prefix.into()))
        .try_collect()
        .await?;
    Ok(listed.into_iter().map(|m| m.location.to_string()).collect())
}

/// A stored object's bytes.
async fn object(s3: &SeaweedFs, path: &str) -> Result<Vec<u8>> {
    use object_store::ObjectStore;
    Ok(s3
        .object_store()?
        .get(&path.into())
        .await?
        .bytes()
        .await?
        .to_vec())
}

/// Runs the `mofang` CLI against the cluster; its JSON output, read as the API type it
/// prints.
async fn mofang_cli<T: DeserializeOwned>(env: &Env, args: &[&str]) -> Result<T> {
    mofang_cli_env(env, args, &[]).await
}

/// [`mofang_cli`] with more environment.
async fn mofang_cli_env<T: DeserializeOwned>(
    env: &Env,
    args: &[&str],
    extra: &[(&str, &str)],
) -> Result<T> {
    let out = tokio::process::Command::new(mofang_tests::cluster::binaries()?.join("mofang"))
        .args(args)
        .envs(env.sched.cli_env())
        .envs(extra.iter().copied())
        .env("MOFANG_TOKEN", &env.token)
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "mofang {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "mofang {args:?} printed {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The member ids of an instance view with `role`.
fn members_with(inst: &InstanceView, role: &str) -> Vec<String> {
    inst.members
        .iter()
        .filter(|m| m.role == role)
        .map(|m| m.id.clone())
        .collect()
}

/// Backups as records and jobs, on one cluster (two agents, a SeaweedFS of its own):
/// - MariaDB: a backup is taken on the replica by default, answers 202 `pending`, a second one
///   meanwhile is refused 409 naming the first; it succeeds with a manifest in the repository
///   whose object sizes and sha256 are those stored, at the primary's GTID; events and audit
///   entries name each step.
/// - The replica's container killed mid-backup (the store frozen so the upload cannot finish
///   first): `failed` with the reason, nothing left under the backup's directory; the next
///   backup succeeds.
/// - Redis: BGSAVE on the replica, the RDB stored with its replication offset.
/// - A deleted backup's objects are gone; a deleted instance keeps its backups.
/// - The repository unreachable: `failed` naming the repository write.
#[tokio::test(flavor = "multi_thread")]
async fn backups_are_records_run_by_agents_and_fail_cleanly() -> Result<()> {
    use sha2::Digest;
    // Its own server: this test freezes and stops it.
    let s3 = SeaweedFs::start().await?;
    let env = Env::start(2).await?;
    env.wait_ready_nodes(2).await?;
    let c = env.client();
    // Through the CLI, the secret from the environment.
    let v: BackupRepoView = mofang_cli_env(
        &env,
        &[
            "--json",
            "backup-repo",
            "add",
            "main",
            "--kind",
            "s3",
            "--endpoint",
            &s3.endpoint,
            "--bucket",
            &s3.bucket,
            "--prefix",
            "bk",
            "--access-key-id",
            &s3.access_key,
        ],
        &[("MOFANG_S3_SECRET_ACCESS_KEY", &s3.secret_key)],
    )
    .await?;
    ensure!(v.name == "main" && v.kind == "s3", "{}", js(&v));

    // ---- MariaDB: the default member, 409, the manifest ----------------------------------
    let inst = env.create("db", "mariadb", 1).await?;
    let primary = primary_of(&inst)?.id.clone();
    let replica = members_with(&inst, "replica").pop().context("a replica")?;
    // 1000 small rows, and ~60 MiB that zstd cannot shrink (more than the upload holds in
    // flight, so a frozen store stops the backup midway).
    sql(
        &primary,
        "CREATE DATABASE bk; CREATE TABLE bk.t (id INT PRIMARY KEY); \
         INSERT INTO bk.t SELECT seq FROM bk.seq_1_to_1000; \
         CREATE TABLE bk.big (id INT PRIMARY KEY, b VARBINARY(1024)); \
         INSERT INTO bk.big SELECT seq, RANDOM_BYTES(1024) FROM bk.seq_1_to_60000",
    )?;
    let gtid = sql(&primary, "SELECT @@gtid_current_pos")?;
    mofang_tests::eventually("replica caught up", Duration::from_secs(120), || async {
        let at = sql(&replica, "SELECT @@gtid_current_pos").unwrap_or_default();
        ensure!(at == gtid, "replica at {at:?}, primary at {gtid:?}");
        Ok(())
    })
    .await?;

    let first = request_backup(&env, "db", "main").await?;
    let id = first.id.clone();
    ensure!(first.member == replica, "not the replica: {}", js(&first));
    let r = refusal(
        c.create_backup(
            "db",
            &NewBackup {
                repo: "main".into(),
                primary: true,
                ..NewBackup::default()
            },
        )
        .await,
    )?;
    ensure!(
        r.status == 409 && r.code == "backup_running" && r.message.contains(&id),
        "a second backup while one runs: {r:?}"
    );
    let b = wait_backup(&env, &id, Duration::from_secs(180)).await?;
    ensure!(b.state == BackupState::Succeeded, "{}", js(&b));
    ensure!(
        b.consistent_at.gtid == gtid,
        "consistent at {:?} while the primary is at {gtid}: {}",
        b.consistent_at,
        js(&b)
    );
    ensure!(
        b.tools
            .get("mariadb-backup")
            .is_some_and(|t| t.contains("10.11")),
        "{}",
        js(&b)
    );
    let objects = &b.objects;
    ensure!(objects.len() == 1, "{}", js(&b));
    let data = object(&s3, &format!("bk/{}", objects[0].path)).await?;
    ensure!(
        data.len() as u64 == objects[0].size
            && hex::encode(sha2::Sha256::digest(&data)) == objects[0].sha256,
        "the stored object differs from its record"
    );
    let raw = zstd::decode_all(&data[..])?;
    ensure!(raw.starts_with(b"XBSTCK01"), "not an mbstream");
    ensure!(
        raw.len() > 60 << 20,
        "{} bytes: the table is missing",
        raw.len()
    );
    let manifest: mofang_common::backup::Manifest =
        serde_json::from_slice(&object(&s3, &format!("bk/{}", b.manifest)).await?)?;
    ensure!(
        manifest.id == id
            && manifest.instance == "db"
            && manifest.engine == "mariadb"
            && manifest.version == "10.11"
            && manifest.consistent_at.gtid == gtid
            && manifest.objects.first().map(|o| &o.sha256) == Some(&objects[0].sha256),
        "manifest {manifest:?}"
    );
    let kinds: Vec<String> = env
        .instance_events("db")
        .await?
        .into_iter()
        .map(|e| e.kind)
        .collect();
    for k in ["backup_requested", "backup_started", "backup_succeeded"] {
        ensure!(kinds.iter().any(|x| x == k), "no {k} event: {kinds:?}");
    }
    let audit = js(&c.audit(LogRange::default()).await?);
    ensure!(
        audit.contains("POST /v1/instances/db/backups") && audit.contains("backup_succeeded"),
        "audit: {audit}"
    );

    // ---- killed mid-backup ---------------------------------------------------------------
    s3.freeze(true)?;
    let killed = request_backup(&env, "db", "main").await;
    let killed = match killed {
        Ok(k) => k,
        Err(e) => {
            s3.freeze(false)?;
            return Err(e);
        }
    };
    let kid = killed.id.clone();
    let midway = mofang_tests::eventually("backup midway", Duration::from_secs(60), || async {
        let b = c.backup(&kid).await?;
        ensure!(b.state == BackupState::Running && b.bytes > 0, "{}", js(&b));
        Ok(b)
    })
    .await;
    let kill = midway.and_then(|_| docker_cli(&["kill", &container_of(&replica)]));
    s3.freeze(false)?;
    kill?;
    let b = wait_backup(&env, &kid, Duration::from_secs(120)).await?;
    ensure!(
        b.state == BackupState::Failed
            && b.reason.contains("stream failed")
            && b.reason.contains("mariadb-backup"),
        "{}",
        js(&b)
    );
    let left = objects_under(&s3, &format!("bk/backups/db/{kid}")).await?;
    ensure!(left.is_empty(), "a failed backup left {left:?}");
    ensure!(
        env.instance_events("db")
            .await?
            .iter()
            .any(|e| e.kind == "backup_failed" && e.message.contains(&kid)),
        "no backup_failed event"
    );
    env.ready("db").await?;
    let again = request_backup(&env, "db", "main").await?;
    let again = wait_backup(&env, &again.id, Duration::from_secs(180)).await?;
    ensure!(
        again.state == BackupState::Succeeded,
        "the next backup: {}",
        js(&again)
    );
    let again_id = again.id.clone();

    // ---- MariaDB restore: exactly the rows of the backup --------------------------------
    // Rows written after the backup must not be in the restored instance.
    sql(
        &primary,
        "INSERT INTO bk.t SELECT seq FROM bk.seq_1001_to_1100",
    )?;
    let v = c
        .create_instance(&restoring(
            "db2",
            "mariadb",
            1,
            "db",
            Some(&again_id),
            None,
        )?)
        .await?;
    ensure!(
        v.restored_from.as_deref() == Some(again_id.as_str()),
        "{}",
        js(&v)
    );
    let db2 = env.ready("db2").await?;
    let db2_primary = primary_of(&db2)?.id.clone();
    let db2_replica = members_with(&db2, "replica").pop().context("replica")?;
    let want = "1000\t1\t1000\t60000";
    let q = "SELECT COUNT(*), MIN(id), MAX(id), (SELECT COUNT(*) FROM bk.big) FROM bk.t";
    let got = sql(&db2_primary, q)?;
    ensure!(
        got == want,
        "restored primary holds {got:?}, the backup {want:?}"
    );
    mofang_tests::eventually(
        "restored replica seeded",
        Duration::from_secs(120),
        || async {
            let got = sql(&db2_replica, q).unwrap_or_default();
            ensure!(got == want, "restored replica holds {got:?}");
            Ok(())
        },
    )
    .await?;
    // The restored primary takes writes, and they replicate.
    sql(&db2_primary, "INSERT INTO bk.t VALUES (5000)")?;
    mofang_tests::eventually("write replicated", Duration::from_secs(60), || async {
        let n = sql(&db2_replica, "SELECT COUNT(*) FROM bk.t").unwrap_or_default();
        ensure!(n == "1001", "replica has {n}");
        Ok(())
    })
    .await?;

    // ---- a restore whose object is missing or tampered: refused naming it, nothing made --
    let first_path = objects[0].path.clone();
    let first_object = format!("bk/{first_path}");
    let bad = restoring("db3", "mariadb", 1, "db", Some(&id), None)?;
    {
        use object_store::ObjectStore;
        let store = s3.object_store()?;
        store.delete(&first_object.as_str().into()).await?;
        let r = refusal(c.create_instance(&bad).await)?;
        ensure!(
            r.status == 422 && r.code == "restore_refused" && r.message.contains(&first_path),
            "a missing object: {r:?}"
        );
        let r = refusal(c.instance("db3").await)?;
        ensure!(r.status == 404, "an instance was created: {r:?}");
        let mut tampered = data.clone();
        let mid = tampered.len() / 2;
        tampered[mid] ^= 0xff;
        store
            .put(&first_object.as_str().into(), tampered.into())
            .await?;
        let r = refusal(c.create_instance(&bad).await)?;
        ensure!(
            r.status == 422
                && r.code == "restore_refused"
                && r.message.contains(&first_path)
                && r.message.contains("sha256"),
            "a tampered object: {r:?}"
        );
        let r = refusal(c.instance("db3").await)?;
        ensure!(r.status == 404, "an instance was created: {r:?}");
    }

    // ---- Redis ---------------------------------------------------------------------------
    let kv = env.create("kv", "redis", 1).await?;
    let addr = primary_of(&kv)?.address.clone();
    let pass = env.app_password("kv").await?;
    let client = redis::Client::open(format!("redis://app:{pass}@{addr}/"))?;
    let mut rc = client.get_multiplexed_async_connection().await?;
    for k in 0..500u32 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{k}"))
            .arg(k)
            .query_async(&mut rc)
            .await?;
    }
    // Through the CLI, as an operator would: `--wait` ends with the backup's record.
    let rb: Backup = mofang_cli(
        &env,
        &[
            "--json", "backup", "create", "kv", "--repo", "main", "--wait",
        ],
    )
    .await?;
    let kv_replica = members_with(&kv, "replica").pop().context("replica")?;
    ensure!(rb.member == kv_replica, "{}", js(&rb));
    ensure!(rb.state == BackupState::Succeeded, "{}", js(&rb));
    ensure!(rb.consistent_at.offset > Some(0), "{}", js(&rb));
    let rb_object = rb.objects.first().context("objects")?;
    let rdb = object(&s3, &format!("bk/{}", rb_object.path)).await?;
    ensure!(
        hex::encode(sha2::Sha256::digest(&rdb)) == rb_object.sha256,
        "RDB sha256"
    );
    ensure!(
        zstd::decode_all(&rdb[..])?.starts_with(b"REDIS"),
        "not an RDB"
    );
    // Keys written after the backup must not be restored.
    for k in 500..600u32 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{k}"))
            .arg(k)
            .query_async(&mut rc)
            .await?;
    }

    // ---- delete a backup; delete an instance ---------------------------------------------
    c.delete_backup(&id).await?;
    let left = objects_under(&s3, &format!("bk/backups/db/{id}")).await?;
    ensure!(left.is_empty(), "a deleted backup left {left:?}");
    let r = refusal(c.backup(&id).await)?;
    ensure!(r.status == 404, "{r:?}");
    c.delete_instance("kv").await?;
    let kept = c.backups("kv").await?;
    ensure!(
        kept.len() == 1 && kept[0].id == rb.id,
        "the deleted instance's backups: {}",
        js(&kept)
    );

    // ---- Redis restore from a deleted instance's latest backup: exactly its keys ---------
    let kv2: InstanceView = mofang_cli(
        &env,
        &[
            "--json",
            "instance",
            "create",
            "kv2",
            "--engine",
            "redis",
            "--memory",
            "384",
            "--disk",
            "512",
            "--restore-from",
            "kv",
            "--wait",
        ],
    )
    .await?;
    let listed = c.instance("kv2").await?;
    ensure!(
        listed.restored_from.as_deref() == Some(rb.id.as_str()),
        "{}",
        js(&listed)
    );
    let listed: Vec<Backup> = mofang_cli(&env, &["--json", "backup", "list", "kv"]).await?;
    ensure!(listed.len() == 1, "{}", js(&listed));
    let pass2 = env.app_password("kv2").await?;
    let want: Vec<String> = (0..500).map(|k| format!("k{k}")).collect();
    for m in &kv2.members {
        let client = redis::Client::open(format!("redis://app:{pass2}@{}/", m.address))?;
        mofang_tests::eventually("restored keys", Duration::from_secs(60), || async {
            let mut c = client.get_multiplexed_async_connection().await?;
            // DBSIZE 500 and every k0..k499 there: exactly the backup's keys.
            let n: u64 = redis::cmd("DBSIZE").query_async(&mut c).await?;
            let mut mget = redis::cmd("MGET");
            for k in &want {
                mget.arg(k);
            }
            let values: Vec<Option<u32>> = mget.query_async(&mut c).await?;
            let present = values.iter().filter(|v| v.is_some()).count();
            ensure!(
                n == 500 && present == 500,
                "{} holds {n} keys, {present} of the backup's 500",
                m.id
            );
            let v: u32 = redis::cmd("GET").arg("k499").query_async(&mut c).await?;
            ensure!(v == 499, "k499 = {v}");
            Ok(())
        })
        .await?;
    }

    // ---- the repository unreachable ------------------------------------------------------
    drop(s3);
    let gone = request_backup(&env, "db", "main").await?;
    let gone = wait_backup(&env, &gone.id, Duration::from_secs(120)).await?;
    ensure!(
        gone.state == BackupState::Failed && gone.reason.contains("to the repository"),
        "{}",
        js(&gone)
    );
    Ok(())
}

/// One write of the PITR writer: when it was sent and when (if) it was acknowledged, by the
/// wall clock MariaDB timestamps binlog events with.
#[derive(Debug, Clone, Copy)]
struct Write {
    id: u64,
    attempted: std::time::SystemTime,
    acked: Option<std::time::SystemTime>,
}

/// Inserts ids 1, 2, … into `app.pitr` one at a time at the instance's primary (found
/// through the API again after any error), every 20 ms, recording each write's times.
fn pitr_writer(
    env: &Env,
    instance: &str,
    password: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Write>> {
    use mysql_async::prelude::Queryable;
    let source = mofang_tests::scenario::PrimarySource::api(env, instance);
    tokio::spawn(async move {
        let mut out = Vec::new();
        let mut conn: Option<mysql_async::Conn> = None;
        let mut id = 0u64;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            if conn.is_none() {
                let c = tokio::time::timeout(Duration::from_secs(2), async {
                    let at = source.primary().await?;
                    mofang_tests::scenario::mysql(&at, &password).await
                })
                .await;
                match c {
                    Ok(Ok(c)) => conn = Some(c),
                    _ => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            }
            id += 1;
            let attempted = std::time::SystemTime::now();
            let r = match conn.as_mut() {
                Some(c) => tokio::time::timeout(
                    Duration::from_secs(5),
                    c.exec_drop("INSERT INTO pitr (id) VALUES (?)", (id,)),
                )
                .await
                .map_err(|_| ())
                .and_then(|r| r.map_err(|_| ())),
                None => Err(()),
            };
            let acked = r.is_ok().then(std::time::SystemTime::now);
            out.push(Write {
                id,
                attempted,
                acked,
            });
            if r.is_err() {
                conn = None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        out
    })
}

fn unix_s(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn now_s() -> i64 {
    unix_s(std::time::SystemTime::now()) as i64
}

/// Sleeps until the wall clock reads `t` (unix seconds).
async fn sleep_until(t: i64) {
    let left = t as f64 - unix_s(std::time::SystemTime::now());
    if left > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(left)).await;
    }
}

/// Waits for the restored instance `name` to be ready, reading its view every 50 ms; checks
/// every `restore_progress` seen on the way is a point-in-time restore's four phases in
/// order (`binlogs`, `data`, `prepare`, `replay`; the done ones before the running one, the
/// pending after; the binlog files downloaded and replayed counted against the same total;
/// the current `phase` the running one), and that none is shown once ready. Returns the
/// view and the phases seen running, in the order first seen.
async fn ready_watching_phases(env: &Env, name: &str) -> Result<(InstanceView, Vec<String>)> {
    let c = env.client();
    let mut seen: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let v = c.instance(name).await?;
        if v.status == "ready" {
            ensure!(
                v.restore_progress.is_none(),
                "progress shown after the restore: {}",
                js(&v)
            );
            return Ok((v, seen));
        }
        if let Some(p) = &v.restore_progress {
            let phases = &p.phases;
            let names: Vec<&str> = phases.iter().map(|x| x.name.as_str()).collect();
            ensure!(
                names == ["binlogs", "data", "prepare", "replay"],
                "phases of a point-in-time restore: {}",
                js(p)
            );
            let states: Vec<&str> = phases.iter().map(|x| x.state.as_str()).collect();
            let running = states.iter().position(|s| *s == "running");
            let ordered = states.iter().enumerate().all(|(i, s)| match running {
                Some(r) if i < r => *s == "done",
                Some(r) if i > r => *s == "pending",
                Some(_) => true,
                None => *s == "pending",
            });
            let files = phases[0].total;
            ensure!(
                ordered
                    && files > 0
                    && phases[3].total == files
                    && phases.iter().all(|x| x.done <= x.total || x.name == "data"),
                "phase states and counters: {}",
                js(p)
            );
            if let Some(r) = running {
                ensure!(p.phase == names[r], "current phase: {}", js(p));
                if !seen.iter().any(|s| s == names[r]) {
                    seen.push(names[r].to_owned());
                }
            }
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{name} is not ready: {}",
            js(&v)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Restores `from` to `at` into `name` and checks it holds exactly the writes acknowledged
/// before `at`, none attempted at or after it (the one write in flight across `at` may be
/// either), on its primary and its seeded replica. Returns the number of rows.
async fn check_restore_to(
    env: &Env,
    from: &str,
    name: &str,
    at: i64,
    writes: &[Write],
    cli: bool,
) -> Result<usize> {
    let time = mofang_common::pitr::format_utc(at);
    let started = std::time::Instant::now();
    if cli {
        let _: InstanceView = mofang_cli(
            env,
            &[
                "--json",
                "instance",
                "create",
                name,
                "--engine",
                "mariadb",
                "--replicas",
                "1",
                "--memory",
                "384",
                "--disk",
                "512",
                "--restore-from",
                from,
                "--restore-time",
                &time,
            ],
        )
        .await?;
    } else {
        env.client()
            .create_instance(&restoring(
                name,
                "mariadb",
                1,
                from,
                None,
                Some(time.clone()),
            )?)
            .await
            .with_context(|| format!("restore to {at}"))?;
    }
    let (inst, phases) = ready_watching_phases(env, name).await?;
    eprintln!(
        "restore of {from} to {time} into {name}: ready in {:.1} s; phases seen: {phases:?}",
        started.elapsed().as_secs_f64()
    );
    // The phases past the data object (its prepare, or the binlogs' replay) show too.
    ensure!(
        phases.iter().any(|p| p == "prepare" || p == "replay"),
        "restore of {name}: no phase past the data seen ({phases:?})"
    );
    let before: std::collections::BTreeSet<u64> = writes
        .iter()
        .filter(|w| w.acked.is_some_and(|a| unix_s(a) < at as f64))
        .map(|w| w.id)
        .collect();
    let after: std::collections::BTreeSet<u64> = writes
        .iter()
        .filter(|w| unix_s(w.attempted) >= at as f64)
        .map(|w| w.id)
        .collect();
    ensure!(
        !before.is_empty() && !after.is_empty(),
        "writes on both sides of {at}"
    );
    let mut seen = 0;
    for role in ["primary", "replica"] {
        let member = members_with(&inst, role)
            .into_iter()
            .next()
            .context("member")?;
        let rows = mofang_tests::eventually("restored rows", Duration::from_secs(60), || async {
            let text = sql(&member, "SELECT id FROM app.pitr ORDER BY id")?;
            let rows: std::collections::BTreeSet<u64> =
                text.lines().filter_map(|l| l.trim().parse().ok()).collect();
            let missing: Vec<_> = before.difference(&rows).collect();
            let extra: Vec<_> = rows.intersection(&after).collect();
            ensure!(
                missing.is_empty() && extra.is_empty(),
                "{role} {member} restored to {at}: {} rows; acknowledged before and missing: {missing:?}; attempted after and present: {extra:?}",
                rows.len()
            );
            Ok(rows)
        })
        .await?;
        seen = rows.len();
    }
    Ok(seen)
}

/// PITR exactness (issue 16): a writer inserts rows continuously, recording each write's
/// acknowledgement; a full backup is taken; writes go on through a switchover and a
/// failover (the primary's container killed) while each primary in turn archives its closed
/// binlogs. The archive stays ready (no gap across the change of primary), and a restore to
/// a time T between the switchover and the failover, and to one just after the failover,
/// holds exactly the rows acknowledged before T and none attempted at or after it. A time
/// outside the window is refused naming it.
#[tokio::test(flavor = "multi_thread")]
async fn pitr_restores_exactly_to_a_time_across_switchover_and_failover() -> Result<()> {
    let s3 = SeaweedFs::shared().await?;
    let env = Env::start_with(3, "\n[backup]\narchive_interval_s = 2\n").await?;
    let c = env.client();
    c.add_backup_repo(&s3_repo(s3, "main", &s3.secret_key, "pitr"))
        .await?;
    let inst = env.create("src", "mariadb", 2).await?;
    let password = env.app_password("src").await?;
    {
        use mysql_async::prelude::Queryable;
        let p = primary_of(&inst)?;
        let mut c = mofang_tests::scenario::mysql(&p.address, &password).await?;
        c.query_drop("CREATE TABLE pitr (id BIGINT PRIMARY KEY)")
            .await?;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = pitr_writer(&env, "src", password, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;

    let b = request_backup(&env, "src", "main").await?;
    let b = wait_backup(&env, &b.id, Duration::from_secs(120)).await?;
    ensure!(b.state == BackupState::Succeeded, "{}", js(&b));
    let archiving = mofang_tests::eventually("a window", Duration::from_secs(60), || async {
        let v = c.instance("src").await?;
        ensure!(
            v.pitr_ready == Some(true) && v.pitr_window.is_some(),
            "{}",
            js(&v)
        );
        Ok(v)
    })
    .await?;
    eprintln!("window after the backup: {:?}", archiving.pitr_window);

    // Switchover.
    let epoch = archiving.epoch;
    c.switchover("src", None).await.context("switchover")?;
    let after_switch = env
        .new_primary("src", epoch, Duration::from_secs(60))
        .await?;
    let t1 = now_s() + 3;
    sleep_until(t1 + 3).await;

    // Failover: the primary's container killed.
    let old = primary_of(&after_switch)?;
    let killed = std::time::Instant::now();
    docker_cli(&["kill", &container_of(&old.id)])?;
    let after_fail = env
        .new_primary("src", after_switch.epoch, Duration::from_secs(60))
        .await?;
    let failover_s = killed.elapsed().as_secs_f64();
    let t2 = now_s() + 2;
    sleep_until(t2 + 3).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let writes = writer.await?;
    let acked = writes.iter().filter(|w| w.acked.is_some()).count();
    let mut outage = 0.0f64;
    let mut last: Option<f64> = None;
    for a in writes.iter().filter_map(|w| w.acked).map(unix_s) {
        if let Some(l) = last {
            outage = outage.max(a - l);
        }
        last = Some(a);
    }
    eprintln!(
        "{} writes, {acked} acknowledged, longest time between two acknowledgements {outage:.2} s; \
         kill to new primary {failover_s:.1} s; primaries {} -> {} -> {}",
        writes.len(),
        primary_of(&inst)?.id,
        old.id,
        primary_of(&after_fail)?.id
    );

    // The archive reaches past T2 and has no gap across the switchover and the failover.
    let done = mofang_tests::eventually("the archive past T2", Duration::from_secs(60), || async {
        let v = c.instance("src").await?;
        let to = v
            .pitr_window
            .as_ref()
            .map(|w| w.to.as_str())
            .unwrap_or_default();
        let to = mofang_common::pitr::parse_utc(to).unwrap_or(0);
        ensure!(v.pitr_ready == Some(true) && to > t2, "{}", js(&v));
        Ok(v)
    })
    .await?;
    eprintln!("window at the end: {:?}", done.pitr_window);

    // Each primary in turn archived: index objects from at least two members, and the
    // scheduler's metrics say the archive is ready and caught up.
    {
        use object_store::ObjectStore;
        let store = s3.object_store()?;
        let mut members = std::collections::BTreeSet::new();
        for path in objects_under(s3, "pitr/binlogs/src").await? {
            if path.ends_with(".json") {
                let bytes = store.get(&path.as_str().into()).await?.bytes().await?;
                let idx: mofang_common::pitr::BinlogIndex = serde_json::from_slice(&bytes)?;
                members.insert(idx.member);
            }
        }
        eprintln!("binlogs archived by {members:?}");
        ensure!(members.len() >= 2, "archived by {members:?} only");
        mofang_tests::eventually("archive caught up", Duration::from_secs(30), || async {
            let metrics = env
                .http
                .get(format!("{}/metrics", env.sched.rest))
                .send()
                .await?
                .text()
                .await?;
            ensure!(
                metrics.contains("mofang_pitr_ready{mofang_instance=\"src\"} 1")
                    && metrics
                        .contains("mofang_pitr_archive_lag_seconds{mofang_instance=\"src\"} 0"),
                "{metrics}"
            );
            Ok(())
        })
        .await?;
    }

    let n1 = check_restore_to(&env, "src", "at-switch", t1, &writes, false).await?;
    let n2 = check_restore_to(&env, "src", "at-fail", t2, &writes, true).await?;
    eprintln!("restored to T1 {t1}: {n1} rows; to T2 {t2}: {n2} rows");
    ensure!(n2 > n1, "later time, more rows");

    // Outside the window: 422 naming it.
    let window_from = done.pitr_window.as_ref().map(|w| w.from.as_str());
    let from = mofang_common::pitr::parse_utc(window_from.unwrap_or("")).unwrap_or(0);
    let r = refusal(
        c.create_instance(&restoring(
            "too-early",
            "mariadb",
            0,
            "src",
            None,
            Some(mofang_common::pitr::format_utc(from - 3600)),
        )?)
        .await,
    )?;
    ensure!(
        r.status == 422
            && r.message.contains("outside the point-in-time window")
            && r.message.contains(window_from.unwrap_or("?")),
        "{r:?}"
    );
    ensure!(c.instance("too-early").await.is_err(), "nothing created");
    Ok(())
}

/// Gap detection on a real archive: binlogs the primary purged before they were archived
/// leave a gap; the instance shows `pitr_ready: false` naming the missing transactions, a
/// `pitr_gap` event is recorded, a restore to a time past the gap is refused; the next full
/// backup closes the gap (`pitr_ready` event) and a time after it restores again.
#[tokio::test(flavor = "multi_thread")]
async fn purged_binlogs_are_a_gap_until_the_next_full_backup() -> Result<()> {
    let s3 = SeaweedFs::shared().await?;
    let env = Env::start_with(2, "\n[backup]\narchive_interval_s = 2\n").await?;
    let c = env.client();
    c.add_backup_repo(&s3_repo(s3, "main", &s3.secret_key, "gap"))
        .await?;
    let inst = env.create("gp", "mariadb", 1).await?;
    let primary = primary_of(&inst)?.id.clone();
    sql(
        &primary,
        "CREATE TABLE app.g (id INT PRIMARY KEY); INSERT INTO app.g VALUES (1),(2),(3)",
    )?;
    let b = request_backup(&env, "gp", "main").await?;
    let b = wait_backup(&env, &b.id, Duration::from_secs(120)).await?;
    ensure!(b.state == BackupState::Succeeded, "{}", js(&b));
    sql(&primary, "INSERT INTO app.g VALUES (4)")?;
    mofang_tests::eventually("a window", Duration::from_secs(60), || async {
        let v = c.instance("gp").await?;
        ensure!(
            v.pitr_ready == Some(true) && v.pitr_window.is_some(),
            "{}",
            js(&v)
        );
        Ok(())
    })
    .await?;

    // Transactions 5 and 6 go to a file that is closed and purged at once, before the
    // archiver's next pass (every second here) can read it; 7 and 8 follow in a file that is
    // archived. 7 is acknowledged by the replica (semi-sync) before the purge, so the
    // replica's dump thread has left the purged file (MariaDB keeps a file in use).
    sql(
        &primary,
        "FLUSH BINARY LOGS; INSERT INTO app.g VALUES (5); INSERT INTO app.g VALUES (6); \
         FLUSH BINARY LOGS; INSERT INTO app.g VALUES (7); \
         PURGE BINARY LOGS BEFORE NOW() + INTERVAL 1 DAY; INSERT INTO app.g VALUES (8)",
    )?;
    let gap = mofang_tests::eventually("a gap", Duration::from_secs(60), || async {
        let v = c.instance("gp").await?;
        ensure!(v.pitr_ready == Some(false), "{}", js(&v));
        Ok(v)
    })
    .await?;
    let reason = gap.pitr_reason.as_deref().unwrap_or_default();
    ensure!(
        reason.contains("no transactions") && reason.contains("next full backup"),
        "{}",
        js(&gap)
    );
    let events = env.instance_events("gp").await?;
    ensure!(
        events.iter().any(|e| e.kind == "pitr_gap"),
        "no pitr_gap event: {events:?}"
    );
    // A time after the gap cannot be restored to.
    let r = refusal(
        c.create_instance(&restoring(
            "gp-late",
            "mariadb",
            0,
            "gp",
            None,
            Some(mofang_common::pitr::format_utc(now_s())),
        )?)
        .await,
    )?;
    ensure!(
        r.status == 422 && r.message.contains("outside the point-in-time window"),
        "{r:?}"
    );

    // The next full backup closes it.
    let b2 = request_backup(&env, "gp", "main").await?;
    let b2 = wait_backup(&env, &b2.id, Duration::from_secs(120)).await?;
    ensure!(b2.state == BackupState::Succeeded, "{}", js(&b2));
    sql(&primary, "INSERT INTO app.g VALUES (9)")?;
    let after = now_s() + 2;
    sleep_until(after + 1).await;
    sql(&primary, "INSERT INTO app.g VALUES (10)")?;
    let ready = mofang_tests::eventually("ready again", Duration::from_secs(60), || async {
        let v = c.instance("gp").await?;
        let to = v.pitr_window.as_ref().map(|w| w.to.as_str()).unwrap_or("");
        let to = mofang_common::pitr::parse_utc(to).unwrap_or(0);
        ensure!(v.pitr_ready == Some(true) && to >= after, "{}", js(&v));
        Ok(v)
    })
    .await?;
    eprintln!("after the gap: {:?}", ready.pitr_window);
    let events = env.instance_events("gp").await?;
    ensure!(
        events.iter().any(|e| e.kind == "pitr_ready"),
        "no pitr_ready event: {events:?}"
    );
    c.create_instance(&restoring(
        "gp-now",
        "mariadb",
        0,
        "gp",
        None,
        Some(mofang_common::pitr::format_utc(after)),
    )?)
    .await?;
    let restored = env.ready("gp-now").await?;
    let member = primary_of(&restored)?.id.clone();
    let rows = mofang_tests::eventually("restored rows", Duration::from_secs(60), || async {
        sql(&member, "SELECT GROUP_CONCAT(id ORDER BY id) FROM app.g")
    })
    .await?;
    ensure!(
        rows == "1,2,3,4,5,6,7,8,9",
        "restored after the gap: {rows}"
    );
    Ok(())
}

/// The events of `kind` of an instance.
async fn events_of(env: &Env, instance: &str, kind: &str) -> Result<Vec<Event>> {
    Ok(env
        .instance_events(instance)
        .await?
        .into_iter()
        .filter(|e| e.kind == kind)
        .collect())
}

/// Polls a backup until no verification of it runs.
async fn wait_verified(env: &Env, id: &str) -> Result<Backup> {
    let c = env.client();
    mofang_tests::eventually("verification ended", Duration::from_secs(180), || async {
        let b = c.backup(id).await?;
        ensure!(!b.verifying && b.verified_at_ms > 0, "{}", js(&b));
        Ok(b)
    })
    .await
}

/// Schedules, retention and verification on one cluster (two agents, real MariaDB, Redis and
/// SeaweedFS):
/// - a bad cron, a bad retention and an unknown repository are refused at create with 422
///   naming the field;
/// - an instance created with `backup: {schedule: every 4 s, retention: {count: 2}}` is backed
///   up by the leader at its slots while rows are written; retention deletes the older
///   backups, their objects and the archived binlogs that only they needed: once the schedule
///   is changed (PATCH) to a yearly one, exactly the newest two backups are left, and the
///   bucket holds exactly their objects and no binlog index ending at or before the older
///   one's GTID;
/// - a writer inserts on the primary all through the backups: the backed-up replica stays
///   healthy, never shows its SQL thread stopped, and its position moves while a backup runs;
/// - every kept backup's manifest holds row counts; the newest's are those at its position
///   (the writer's table included); its verification (CLI `backup verify --wait`) restores it
///   in a throwaway container and finds exactly those counts; the other, its data object
///   overwritten in the bucket, fails naming the object;
/// - a `verify` schedule verifies the latest backup again by itself;
/// - Redis: a backup records the RDB's key count, and its verification loads it and passes.
#[tokio::test(flavor = "multi_thread")]
async fn scheduled_backups_are_kept_by_retention_and_verified() -> Result<()> {
    let s3 = SeaweedFs::shared().await?;
    let env = Env::start_with(2, "\n[backup]\narchive_interval_s = 2\n").await?;
    env.wait_ready_nodes(2).await?;
    let c = env.client();
    c.add_backup_repo(&s3_repo(s3, "main", &s3.secret_key, "sched"))
        .await?;
    let policy =
        |repo: &str, schedule: &str, count: Option<u32>, verify: Option<&str>| BackupPolicy {
            repo: repo.to_owned(),
            schedule: schedule.to_owned(),
            retention: Retention { days: None, count },
            verify: verify.map(str::to_owned),
        };

    // ---- refusals naming the field ---------------------------------------------------------
    for (p, field) in [
        (
            policy("main", "every minute", None, None),
            "backup.schedule",
        ),
        (
            policy("main", "@daily", None, Some("61 * * * *")),
            "backup.verify",
        ),
        (
            policy("main", "@daily", Some(0), None),
            "backup.retention.count",
        ),
        (policy("nowhere", "@daily", None, None), "backup.repo"),
    ] {
        let mut s = instance_spec("sc", "mariadb", 1)?;
        s.backup = Some(p);
        let r = refusal(c.create_instance(&s).await)?;
        ensure!(
            r.status == 422 && r.message.starts_with(field),
            "{field}: {r:?}"
        );
    }

    // ---- a schedule of every 4 s, retention count 2 ----------------------------------------
    let mut s = instance_spec("sc", "mariadb", 1)?;
    s.backup = Some(policy("main", "*/6 * * * * *", Some(2), None));
    c.create_instance(&s).await?;
    let inst = env.ready("sc").await?;
    ensure!(
        inst.spec.backup.as_ref().and_then(|b| b.retention.count) == Some(2),
        "{}",
        js(&inst)
    );
    let primary = primary_of(&inst)?.id.clone();
    sql(
        &primary,
        "CREATE TABLE app.s (id INT PRIMARY KEY); CREATE TABLE app.u (id INT PRIMARY KEY); \
         CREATE TABLE app.pitr (id BIGINT PRIMARY KEY); \
         CREATE TABLE app.big (id INT PRIMARY KEY, b VARBINARY(1024)); \
         INSERT INTO app.big SELECT seq, RANDOM_BYTES(1024) FROM app.seq_1_to_40000",
    )?;
    // A writer on the primary all through the backups: the backed-up replica must keep
    // applying, and the row counts recorded must still be those at each backup's position.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = pitr_writer(&env, "sc", env.app_password("sc").await?, stop.clone());
    // Per backup seen running: the positions its member reported meanwhile.
    let mut during: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let (mut observed, mut silent) = (0, 0);
    // Rows in three steps, backups between them (so older backups have archived binlogs that
    // only they need).
    for (from, to) in [(1, 200), (201, 400), (401, 500)] {
        sql(
            &primary,
            &format!("INSERT INTO app.s SELECT seq FROM app.seq_{from}_to_{to}; INSERT INTO app.u VALUES ({to})"),
        )?;
        let seen = events_of(&env, "sc", "backup_succeeded").await?.len();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            // While a backup runs on the replica, it stays healthy and replicating, and its
            // position moves on.
            let running: Vec<(String, String)> = c
                .backups("sc")
                .await?
                .into_iter()
                .filter(|b| b.state == BackupState::Running)
                .map(|b| (b.id, b.member))
                .collect();
            let v = c.instance("sc").await?;
            for m in &v.members {
                ensure!(
                    !m.reason.contains("SQL thread"),
                    "a replica shown stopped or broken during a backup: {}",
                    js(m)
                );
                for (id, member) in &running {
                    // A node whose heartbeats are late shows `unknown` (nothing the backup
                    // did to replication): counted apart.
                    if m.id == *member && m.state == "unknown" {
                        silent += 1;
                    } else if m.id == *member {
                        observed += 1;
                        ensure!(
                            m.healthy,
                            "the backed-up member during backup {id}: {}",
                            js(m)
                        );
                        let pos = m.position.clone();
                        let seen = during.entry(id.clone()).or_default();
                        if seen.last() != Some(&pos) {
                            seen.push(pos);
                        }
                    }
                }
            }
            let n = events_of(&env, "sc", "backup_succeeded").await?.len();
            if n >= seen + 2 {
                break;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "{n} backups succeeded, {seen} before"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let writes = writer.await?;
    let acked = writes.iter().filter(|w| w.acked.is_some()).count();
    // The replica applied the primary's writes while backed up: a position seen moving
    // during some backup (each heartbeat carries it; a backup of a second or two may show one).
    let advanced = during.values().filter(|p| p.len() >= 2).count();
    ensure!(
        advanced >= 1,
        "no backup saw its member's position move: {during:?}"
    );
    let expired = events_of(&env, "sc", "backup_expired").await?;
    ensure!(!expired.is_empty(), "no backup expired");
    // A yearly schedule: no more backups; retention goes on.
    let v = c
        .patch_instance(
            "sc",
            &InstancePatch {
                backup: Some(Some(policy("main", "0 0 1 1 *", Some(2), None))),
                ..InstancePatch::default()
            },
        )
        .await?;
    ensure!(
        v.spec.backup.as_ref().map(|b| b.schedule.as_str()) == Some("0 0 1 1 *"),
        "{}",
        js(&v)
    );
    let kept = mofang_tests::eventually("two backups left", Duration::from_secs(60), || async {
        let list = c.backups("sc").await?;
        ensure!(
            list.len() == 2 && list.iter().all(|b| b.state == BackupState::Succeeded),
            "{}",
            list.iter()
                .map(|b| format!("{} {}", b.id, b.state))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(list)
    })
    .await?;
    let ids: Vec<String> = kept.iter().map(|b| b.id.clone()).collect();
    let succeeded = events_of(&env, "sc", "backup_succeeded").await?.len();
    ensure!(succeeded >= 6, "{succeeded} scheduled backups");
    let left = objects_under(s3, "sched/backups/sc").await?;
    let mut dirs: Vec<String> = left
        .iter()
        .filter_map(|p| p.split('/').nth(3).map(str::to_owned))
        .collect();
    dirs.sort();
    dirs.dedup();
    let mut want = ids.clone();
    want.sort();
    ensure!(
        dirs == want,
        "objects of {dirs:?} in the bucket, backups {want:?} kept: {left:?}"
    );
    ensure!(
        left.len() == 4,
        "a data object and a manifest each: {left:?}"
    );
    // Archived binlogs: none left that ends at or before the older kept backup's GTID, and
    // some were deleted.
    let older = &kept[0];
    let older_seq: u64 = older
        .consistent_at
        .gtid
        .rsplit('-')
        .next()
        .and_then(|s| s.parse().ok())
        .context("gtid")?;
    mofang_tests::eventually(
        "unneeded binlogs deleted",
        Duration::from_secs(30),
        || async {
            let idx = objects_under(s3, "sched/binlogs/sc").await?;
            let stale: Vec<&String> = idx
                .iter()
                .filter(|p| p.ends_with(".json"))
                .filter(|p| {
                    p.rsplit('/')
                        .next()
                        .and_then(|n| n.split('-').next()?.parse::<u64>().ok())
                        .is_some_and(|last| last <= older_seq)
                })
                .collect();
            ensure!(
                stale.is_empty(),
                "binlog indexes at or before {older_seq}: {stale:?}"
            );
            Ok(())
        },
    )
    .await?;
    ensure!(
        events_of(&env, "sc", "backup_expired")
            .await?
            .iter()
            .any(|e| e.message.contains("archived binlog files")),
        "no archived binlog deleted"
    );

    // ---- verification ----------------------------------------------------------------------
    let newest = &kept[1];
    let newest_id = newest.id.as_str();
    // Taken while the writer ran: `app.pitr` has some count, the others are known.
    let pitr_rows = newest
        .row_counts
        .as_ref()
        .and_then(|r| r.get("app.pitr"))
        .copied()
        .unwrap_or_default();
    let counts: std::collections::BTreeMap<String, u64> = [
        ("app.big", 40000),
        ("app.pitr", pitr_rows),
        ("app.s", 500),
        ("app.u", 3),
    ]
    .into_iter()
    .map(|(t, n)| (t.to_owned(), n))
    .collect();
    ensure!(
        newest.row_counts.as_ref() == Some(&counts)
            && pitr_rows > 0
            && pitr_rows <= writes.len() as u64
            && kept.iter().all(|b| b.row_counts.is_some()),
        "row counts at backup time: {}",
        js(&kept)
    );
    let verify_started = std::time::Instant::now();
    let v: Backup = mofang_cli(&env, &["--json", "backup", "verify", newest_id, "--wait"]).await?;
    let verify_took = verify_started.elapsed();
    ensure!(
        v.verify_ok == Some(true) && v.verify_reason.contains("match those recorded"),
        "{}",
        js(&v)
    );
    // Backup health on the leader's /metrics: the newest succeeded, none failed, not overdue.
    let metrics = env
        .http
        .get(format!("{}/metrics", env.sched.rest))
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        metrics.contains("mofang_backup_last_success_timestamp_seconds{mofang_instance=\"sc\"} ")
            && metrics.contains("mofang_backup_verify_last_failed{mofang_instance=\"sc\"} 0\n")
            && metrics.contains("mofang_backup_missed_total{mofang_instance=\"sc\"} "),
        "{metrics}"
    );
    // Prometheus's own parser and linter on the scheduler's exposition (text format), and
    // the OpenMetrics answer to a scrape that asks for it, as Prometheus does.
    mofang_tests::promtool::check_metrics(&metrics)?;
    let om = env
        .http
        .get(format!("{}/metrics", env.sched.rest))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .await?;
    ensure!(
        om.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/openmetrics-text")),
        "{:?}",
        om.headers()
    );
    let om = om.text().await?;
    ensure!(
        om.ends_with("# EOF\n") && om.contains("# TYPE mofang_backup_missed counter\n"),
        "{om}"
    );
    eprintln!(
        "figures: {succeeded} scheduled backups succeeded, {} backup_expired events, {} backup_missed; {acked} of {} writes acknowledged during the backups; the backed-up member seen healthy {observed} times while its backup ran ({silent} times its node's heartbeat late), its position moving during {advanced} of {} backups seen running (distinct positions seen per backup: {:?}); the newest backup's app.pitr count {pitr_rows}; `backup verify --wait` of {newest_id} took {verify_took:?}",
        events_of(&env, "sc", "backup_expired").await?.len(),
        events_of(&env, "sc", "backup_missed").await?.len(),
        writes.len(),
        during.len(),
        during.values().map(Vec::len).collect::<Vec<_>>(),
    );

    // ---- restore progress as a field, on a restore of the newest backup --------------------
    c.create_instance(&restoring(
        "sc-copy",
        "mariadb",
        0,
        "sc",
        Some(newest_id),
        None,
    )?)
    .await?;
    let raw = newest.objects.first().context("raw_size")?.raw_size;
    let mut seen: Vec<RestoreProgress> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let copy = loop {
        let v = c.instance("sc-copy").await?;
        if let Some(p) = &v.restore_progress {
            seen.push(p.clone());
        }
        if v.status == "ready" {
            break v;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the restored copy is not ready: {}",
            js(&v)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(
        copy.restore_progress.is_none(),
        "progress shown after the restore: {}",
        js(&copy)
    );
    ensure!(
        !seen.is_empty()
            && seen.iter().all(|p| p.backup == newest_id && p.total == raw)
            && seen.iter().all(|p| p.bytes <= raw),
        "restore progress seen: {seen:?} (raw size {raw})"
    );
    eprintln!(
        "figures: restore_progress seen {} times: {:?}",
        seen.len(),
        seen.iter().map(|p| p.bytes).collect::<Vec<_>>()
    );
    let copy_primary = primary_of(&copy)?.id.clone();
    ensure!(
        sql(&copy_primary, "SELECT COUNT(*) FROM app.s")? == "500",
        "the copy's rows"
    );

    // The older one's data object overwritten in the bucket.
    let older_id = older.id.as_str();
    let path = older.objects.first().context("path")?.path.clone();
    {
        use object_store::ObjectStore;
        let store = s3.object_store()?;
        let bytes = object(s3, &format!("sched/{path}")).await?;
        let mut tampered = bytes.clone();
        let mid = tampered.len() / 2;
        tampered[mid] ^= 0xff;
        store
            .put(&format!("sched/{path}").as_str().into(), tampered.into())
            .await?;
    }
    let v = c.verify_backup(older_id).await?;
    ensure!(v.verifying, "{}", js(&v));
    let r = refusal(c.verify_backup(older_id).await)?;
    ensure!(
        r.status == 409 && r.code == "verify_running",
        "a second verification meanwhile: {r:?}"
    );
    let b = wait_verified(&env, older_id).await?;
    ensure!(
        b.verify_ok == Some(false) && b.verify_reason.contains(&path),
        "a tampered backup: {}",
        js(&b)
    );
    ensure!(
        !events_of(&env, "sc", "verify_failed").await?.is_empty(),
        "no verify_failed event"
    );
    let metrics = env
        .http
        .get(format!("{}/metrics", env.sched.rest))
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        metrics.contains("mofang_backup_verify_last_failed{mofang_instance=\"sc\"} 1\n"),
        "a failed verification on /metrics: {metrics}"
    );

    // ---- a verification schedule -----------------------------------------------------------
    let before = c.backup(newest_id).await?.verified_at_ms;
    c.patch_instance(
        "sc",
        &InstancePatch {
            backup: Some(Some(policy(
                "main",
                "0 0 1 1 *",
                Some(2),
                Some("*/3 * * * * *"),
            ))),
            ..InstancePatch::default()
        },
    )
    .await?;
    mofang_tests::eventually(
        "a scheduled verification",
        Duration::from_secs(120),
        || async {
            let b = c.backup(newest_id).await?;
            ensure!(
                b.verified_at_ms > before && b.verify_ok == Some(true),
                "{}",
                js(&b)
            );
            Ok(())
        },
    )
    .await?;
    // Removed through the CLI.
    let v: InstanceView = mofang_cli(
        &env,
        &["--json", "instance", "backup-policy", "sc", "--none"],
    )
    .await?;
    ensure!(v.spec.backup.is_none(), "{}", js(&v));
    ensure!(
        c.instance("sc").await?.spec.backup.is_none(),
        "policy removed"
    );

    // ---- Redis -----------------------------------------------------------------------------
    let kv = env.create("skv", "redis", 1).await?;
    let addr = primary_of(&kv)?.address.clone();
    let pass = env.app_password("skv").await?;
    let client = redis::Client::open(format!("redis://app:{pass}@{addr}/"))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    for k in 0..300u32 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{k}"))
            .arg(k)
            .query_async(&mut conn)
            .await?;
    }
    let kv_replica = members_with(&kv, "replica").pop().context("replica")?;
    let replica_addr = kv
        .members
        .iter()
        .find(|m| m.id == kv_replica)
        .map(|m| m.address.clone())
        .context("replica address")?;
    let rc = redis::Client::open(format!("redis://app:{pass}@{replica_addr}/"))?;
    let rc = rc.get_multiplexed_async_connection().await?;
    mofang_tests::eventually("replica holds 300 keys", Duration::from_secs(30), || {
        let mut rc = rc.clone();
        async move {
            let n: u64 = redis::cmd("DBSIZE").query_async(&mut rc).await?;
            ensure!(n == 300, "{n} keys on the replica");
            Ok(())
        }
    })
    .await?;
    let rb: Backup = mofang_cli(
        &env,
        &[
            "--json", "backup", "create", "skv", "--repo", "main", "--wait",
        ],
    )
    .await?;
    ensure!(
        rb.state == BackupState::Succeeded && rb.keys == Some(300),
        "{}",
        js(&rb)
    );
    let v: Backup = mofang_cli(&env, &["--json", "backup", "verify", &rb.id, "--wait"]).await?;
    ensure!(
        v.verify_ok == Some(true) && v.verify_reason.contains("300 keys"),
        "{}",
        js(&v)
    );
    Ok(())
}

/// `mofang keyring rotate` seals the backup repository records (their S3 secret) again with
/// the new data key before it retires the old one: after a rotation and a scheduler restart
/// (which reads every record back from the store), the repository is still listed and a
/// backup into it succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn repositories_still_work_after_a_keyring_rotation_retires_their_key() -> Result<()> {
    let s3 = SeaweedFs::shared().await?;
    let mut env = Env::start(2).await?;
    env.wait_ready_nodes(2).await?;
    env.client()
        .add_backup_repo(&s3_repo(s3, "rot", &s3.secret_key, "rotation"))
        .await?;
    env.create("rkv", "redis", 1).await?;
    let before: KeyringStatus = mofang_cli(&env, &["keyring", "status", "--json"]).await?;
    ensure!(
        before.active_key == 1 && before.keys.first().map(|k| k.sealed_values) == Some(5),
        "four credentials and the repository under key 1: {}",
        js(&before)
    );

    let r: Rotation = mofang_cli(&env, &["keyring", "rotate", "--json"]).await?;
    ensure!(r.active_key == 2 && r.retired_keys == [1], "{}", js(&r));
    ensure!(
        r.status.pending_records == 0
            && r.status.keys.len() == 1
            && r.status.keys[0].sealed_values == 5,
        "{}",
        js(&r)
    );

    env.sched.restart()?;
    env.token = env.sched.admin_token()?;
    env.wait_ready_nodes(2).await?;
    // The client of the restarted scheduler, with its new token.
    let c = env.client();
    let listed = c.backup_repos().await?;
    ensure!(
        listed.first().map(|r| r.name.as_str()) == Some("rot"),
        "{}",
        js(&listed)
    );
    let b = request_backup(&env, "rkv", "rot").await?;
    let id = b.id.clone();
    let b = wait_backup(&env, &id, Duration::from_secs(300)).await?;
    ensure!(b.state == BackupState::Succeeded, "{}", js(&b));
    let stored = objects_under(s3, &format!("rotation/backups/rkv/{id}")).await?;
    ensure!(
        stored.iter().any(|p| p.ends_with("manifest.json")),
        "{stored:?}"
    );
    Ok(())
}

/// Client-side encryption (issue 16, decisions 119-122), against real MariaDB, Redis and
/// SeaweedFS:
/// - a repository added with `"encrypt": true` shows `encrypted` and its key id, never the
///   key; a malformed `encryption_key`, or one without `encrypt`, is refused 422 with nothing
///   kept;
/// - a MariaDB backup into it records the algorithm and key id on each object; the object
///   read raw through the S3 API starts with `backup_crypt::MAGIC` and holds no row's text;
///   the archived binlogs are encrypted the same way (their index says so);
/// - after a keyring rotation that retires the key which sealed the repository record, a
///   restore holds exactly the backup's rows (none written after it); a point-in-time
///   restore, which decrypts the archived binlogs too, holds exactly the rows written before
///   its time; a verification passes;
/// - one byte of the data object overwritten through S3: the verification fails naming the
///   object, and a restore from it is refused naming it, nothing created;
/// - Redis: the RDB is stored encrypted and a restore holds exactly its keys.
#[tokio::test(flavor = "multi_thread")]
async fn encrypted_repositories_store_nothing_readable_and_restore_exactly() -> Result<()> {
    // Instance names unique in this binary: container names are `mofang-<member>` on the one
    // Docker host, so two tests running at once with an instance `db` took each other's
    // containers (make test, session 11: "the container name /mofang-db-0 is already in use").
    use mofang_common::backup::ObjectEncryption;
    use mofang_common::backup_crypt::{ALGORITHM, MAGIC};
    let s3 = SeaweedFs::shared().await?;
    let env = Env::start_with(2, "\n[backup]\narchive_interval_s = 2\n").await?;
    env.wait_ready_nodes(2).await?;
    let c = env.client();

    // ---- bad input: refused, nothing kept ------------------------------------------------
    // A malformed key, and a key without `encrypt`, through the typed client.
    for (repo, what) in [
        (
            NewBackupRepo {
                encrypt: true,
                encryption_key: Some(Secret("c2hvcnQ".into())),
                ..s3_repo(s3, "bad", &s3.secret_key, "enc-bad")
            },
            "encryption_key",
        ),
        (
            NewBackupRepo {
                encryption_key: Some(Secret("A".repeat(43))),
                ..s3_repo(s3, "bad", &s3.secret_key, "enc-bad")
            },
            "encrypt",
        ),
    ] {
        let r = refusal(c.add_backup_repo(&repo).await)?;
        ensure!(
            r.status == 422 && r.message.contains(what) && !r.message.contains("c2hvcnQ"),
            "{repo:?} ({:?}): {r:?}",
            repo.encryption_key.as_ref().map(|k| &k.0)
        );
    }
    // `encrypt` not a boolean: a body the typed client cannot send, raw.
    {
        let mut body = serde_json::to_value(s3_repo(s3, "bad", &s3.secret_key, "enc-bad"))?;
        body["encrypt"] = Value::from("yes");
        let (status, v) = env
            .call(Method::POST, "/v1/backup-repos", Some(body))
            .await?;
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        ensure!(
            status == reqwest::StatusCode::UNPROCESSABLE_ENTITY
                && msg.contains("encrypt")
                && !msg.contains("c2hvcnQ"),
            "{{\"encrypt\": \"yes\"}}: {status} {v}"
        );
    }
    ensure!(
        c.backup_repos().await?.is_empty(),
        "a refused repository was kept"
    );

    // ---- an encrypting repository ----------------------------------------------------------
    // Raw JSON through the client: the answer must have no `encryption_key` field at all
    // (which the typed view would not see).
    let body = serde_json::to_value(NewBackupRepo {
        encrypt: true,
        ..s3_repo(s3, "enc", &s3.secret_key, "enc")
    })?;
    let raw = c
        .call_json(Method::POST, "/v1/backup-repos", Some(&body))
        .await?;
    let repo: BackupRepoView = serde_json::from_value(raw.clone())?;
    let key_id = repo.key_id.clone().unwrap_or_default();
    ensure!(
        repo.encrypted && key_id.len() == 16 && raw.get("encryption_key").is_none(),
        "{raw}"
    );
    let encrypted = ObjectEncryption {
        algorithm: ALGORITHM.to_owned(),
        key_id: key_id.clone(),
    };

    // ---- MariaDB: known rows, a backup, rows after it -------------------------------------
    let inst = env.create("edb", "mariadb", 1).await?;
    let primary = primary_of(&inst)?.id.clone();
    let marker = "mofang-plaintext-marker";
    sql(
        &primary,
        &format!(
            "CREATE TABLE app.t (id INT PRIMARY KEY, v VARCHAR(64)); \
             INSERT INTO app.t SELECT seq, CONCAT('{marker}-', seq) FROM app.seq_1_to_1000"
        ),
    )?;
    let b = request_backup(&env, "edb", "enc").await?;
    let id = b.id.clone();
    let b = wait_backup(&env, &id, Duration::from_secs(180)).await?;
    ensure!(b.state == BackupState::Succeeded, "{}", js(&b));
    let first = b.objects.first().context("objects")?;
    ensure!(
        first.encryption.as_ref() == Some(&encrypted),
        "the record: {}",
        js(&b)
    );
    let path = first.path.clone();
    let raw = object(s3, &format!("enc/{path}")).await?;
    ensure!(
        raw.starts_with(MAGIC) && raw.len() as u64 == first.size,
        "the stored object does not start with the encryption header ({} bytes)",
        raw.len()
    );
    ensure!(
        !raw.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "a row's text is readable in the stored object"
    );
    let manifest: mofang_common::backup::Manifest =
        serde_json::from_slice(&object(s3, &format!("enc/backups/edb/{id}/manifest.json")).await?)?;
    ensure!(
        manifest.objects.first().and_then(|o| o.encryption.as_ref()) == Some(&encrypted),
        "the manifest: {manifest:?}"
    );
    sql(
        &primary,
        &format!(
            "INSERT INTO app.t SELECT seq, CONCAT('{marker}-', seq) FROM app.seq_1001_to_1100"
        ),
    )?;
    let t = now_s() + 2;
    sleep_until(t + 1).await;
    sql(
        &primary,
        &format!(
            "INSERT INTO app.t SELECT seq, CONCAT('{marker}-', seq) FROM app.seq_1101_to_1200"
        ),
    )?;

    // ---- a keyring rotation retires the key that sealed the repository record; the backup
    // ---- still restores (the repository key inside the record did not change) -----------
    let r: Rotation = mofang_cli(&env, &["keyring", "rotate", "--json"]).await?;
    ensure!(r.active_key == 2 && r.retired_keys == [1], "{}", js(&r));
    let listed = c.backup_repos().await?;
    ensure!(
        listed
            .first()
            .is_some_and(|r| r.key_id.as_deref() == Some(key_id.as_str()) && r.encrypted),
        "{}",
        js(&listed)
    );

    // ---- a restore of the backup: exactly its rows ------------------------------------------
    c.create_instance(&restoring("edb2", "mariadb", 0, "edb", Some(&id), None)?)
        .await?;
    let db2 = env.ready("edb2").await?;
    let db2_primary = primary_of(&db2)?.id.clone();
    let q =
        format!("SELECT COUNT(*), MIN(id), MAX(id), SUM(v = CONCAT('{marker}-', id)) FROM app.t");
    let got = sql(&db2_primary, &q)?;
    ensure!(got == "1000\t1\t1000\t1000", "the restore holds {got:?}");

    // ---- archived binlogs are encrypted; a point-in-time restore decrypts them -------------
    let to = mofang_common::pitr::format_utc(t + 1);
    mofang_tests::eventually(
        "the window past the time",
        Duration::from_secs(90),
        || async {
            let v = c.instance("edb").await?;
            let end = v
                .pitr_window
                .as_ref()
                .map(|w| w.to.clone())
                .unwrap_or_default();
            ensure!(v.pitr_ready == Some(true) && end >= to, "{}", js(&v));
            Ok(())
        },
    )
    .await?;
    let archived = objects_under(s3, "enc/binlogs/edb").await?;
    let (mut data, mut indexes) = (0, 0);
    for p in &archived {
        let bytes = object(s3, p).await?;
        if p.ends_with(".json") {
            let idx: mofang_common::pitr::BinlogIndex = serde_json::from_slice(&bytes)?;
            ensure!(
                idx.encryption.as_ref() == Some(&encrypted),
                "index {p}: {idx:?}"
            );
            indexes += 1;
        } else {
            ensure!(
                bytes.starts_with(MAGIC)
                    && !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "archived binlog {p} is readable"
            );
            data += 1;
        }
    }
    ensure!(data > 0 && indexes > 0, "archived: {archived:?}");
    c.create_instance(&restoring(
        "edb3",
        "mariadb",
        0,
        "edb",
        None,
        Some(mofang_common::pitr::format_utc(t)),
    )?)
    .await?;
    let db3 = env.ready("edb3").await?;
    let db3_primary = primary_of(&db3)?.id.clone();
    let got = sql(&db3_primary, &q)?;
    ensure!(
        got == "1100\t1\t1100\t1100",
        "the point-in-time restore holds {got:?}"
    );

    // ---- verification: passes, then fails on one altered byte, naming the object ----------
    c.verify_backup(&id).await?;
    let v = wait_verified(&env, &id).await?;
    ensure!(v.verify_ok == Some(true), "{}", js(&v));
    let before = v.verified_at_ms;
    {
        use object_store::ObjectStore;
        let mut tampered = raw.clone();
        let mid = tampered.len() / 2;
        tampered[mid] ^= 0x01;
        s3.object_store()?
            .put(&format!("enc/{path}").as_str().into(), tampered.into())
            .await?;
    }
    c.verify_backup(&id).await?;
    let v = mofang_tests::eventually("verification ended", Duration::from_secs(180), || async {
        let b = c.backup(&id).await?;
        ensure!(!b.verifying && b.verified_at_ms > before, "{}", js(&b));
        Ok(b)
    })
    .await?;
    ensure!(
        v.verify_ok == Some(false) && v.verify_reason.contains(&path),
        "a tampered encrypted backup: {}",
        js(&v)
    );
    eprintln!("tampered backup's verification: {}", v.verify_reason);
    let r = refusal(
        c.create_instance(&restoring("edb4", "mariadb", 0, "edb", Some(&id), None)?)
            .await,
    )?;
    ensure!(
        r.status == 422 && r.message.contains(&path),
        "a restore of the tampered backup: {r:?}"
    );
    let r = refusal(c.instance("edb4").await)?;
    ensure!(r.status == 404, "an instance was created: {r:?}");

    // ---- Redis: the RDB stored encrypted, restored exactly ---------------------------------
    let kv = env.create("ekv", "redis", 0).await?;
    let mut conn = redis_app(&env, &kv).await?;
    for k in 0..200u32 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{k}"))
            .arg(format!("{marker}-{k}"))
            .query_async(&mut conn)
            .await?;
    }
    let rb = request_backup(&env, "ekv", "enc").await?;
    let rb = wait_backup(&env, &rb.id, Duration::from_secs(120)).await?;
    ensure!(
        rb.state == BackupState::Succeeded && rb.keys == Some(200),
        "{}",
        js(&rb)
    );
    let rdb = object(
        s3,
        &format!("enc/{}", rb.objects.first().context("path")?.path),
    )
    .await?;
    ensure!(
        rdb.starts_with(MAGIC) && !rdb.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the RDB is readable in the store"
    );
    for k in 200..250u32 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{k}"))
            .arg(k)
            .query_async(&mut conn)
            .await?;
    }
    c.create_instance(&restoring("ekv2", "redis", 0, "ekv", None, None)?)
        .await?;
    let kv2 = env.ready("ekv2").await?;
    let mut c2 = redis_app(&env, &kv2).await?;
    let n: u64 = redis::cmd("DBSIZE").query_async(&mut c2).await?;
    let v: String = redis::cmd("GET").arg("k7").query_async(&mut c2).await?;
    ensure!(
        n == 200 && v == format!("{marker}-7"),
        "the Redis restore: {n} keys, k7 {v:?}"
    );
    eprintln!(
        "encrypted: MariaDB object {} bytes, {} archived binlogs, RDB {} bytes",
        raw.len(),
        data,
        rdb.len()
    );
    Ok(())
}

/// The member and the backup of an operation's first `add_replica` step.
fn added_replica(op: &Operation) -> Result<(String, Option<String>)> {
    op.steps
        .iter()
        .find_map(|s| match &s.action {
            StepAction::AddReplica { member, backup, .. } => Some((member.clone(), backup.clone())),
            _ => None,
        })
        .with_context(|| format!("an add_replica step: {}", js(&op.steps)))
}

/// A scale-up of a MariaDB instance that has a backup seeds the new replica from it
/// (decision 164): a physical copy restored into the new member's volume, which then follows
/// the primary from the backup's GTID position. No member serves a copy (no `SHOW CREATE
/// DATABASE` on the primary or the replica, which the logical copy's `mariadb-dump` asks);
/// the
/// new replica holds the rows of the backup, the rows written after it (from the primary's
/// binlog) and a row written after the scale, each exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_scale_up_seeds_the_new_replica_from_the_latest_backup() -> Result<()> {
    let s3 = SeaweedFs::shared().await?;
    let env = Env::start(3).await?;
    env.wait_ready_nodes(3).await?;
    let c = env.client();
    c.add_backup_repo(&s3_repo(s3, "main", &s3.secret_key, "seed"))
        .await?;
    let inst = env.create("sd", "mariadb", 1).await?;
    let primary = primary_of(&inst)?.id.clone();
    let replica = members_with(&inst, "replica").pop().context("a replica")?;
    sql(
        &primary,
        "CREATE DATABASE sd; CREATE TABLE sd.t (id INT PRIMARY KEY); \
         INSERT INTO sd.t SELECT seq FROM sd.seq_1_to_500",
    )?;
    let gtid = sql(&primary, "SELECT @@gtid_current_pos")?;
    mofang_tests::eventually("replica caught up", Duration::from_secs(60), || async {
        let at = sql(&replica, "SELECT @@gtid_current_pos").unwrap_or_default();
        ensure!(at == gtid, "replica at {at:?}, primary at {gtid:?}");
        Ok(())
    })
    .await?;
    let first = request_backup(&env, "sd", "main").await?;
    let id = first.id.clone();
    let b = wait_backup(&env, &id, Duration::from_secs(180)).await?;
    ensure!(b.state == BackupState::Succeeded, "{}", js(&b));
    // Only in the primary's binlog, not in the backup.
    sql(
        &primary,
        "INSERT INTO sd.t SELECT seq FROM sd.seq_501_to_600",
    )?;
    // The logical copy (`mariadb-dump --databases`) asks its source `SHOW CREATE DATABASE`
    // for each database; nothing else does (measured: MariaDB 10.11's dump with
    // `--single-transaction --gtid --master-data` runs no `FLUSH` and no `SHOW MASTER STATUS`,
    // and the binlog archiver's `FLUSH BINARY LOGS` made `Com_flush` no signal). Shown to
    // count a copy in the second half of this test.
    let copies = |m: &str| status_counter(m, "Com_show_create_db");
    let before = (copies(&primary)?, copies(&replica)?);

    let scale = |replicas: u32| {
        let mut op = NewOperation::new(OpKind::Scale);
        op.replicas = Some(replicas);
        let env = &env;
        async move { env.run_operation("sd", &op, Duration::from_secs(300)).await }
    };
    let op = scale(2).await?;
    ensure!(op.state == OpState::Succeeded, "{}", js(&op));
    let (new, backup) = added_replica(&op)?;
    ensure!(
        backup.as_deref() == Some(id.as_str()),
        "seeded from another source: {}",
        js(&op.steps)
    );
    let events = events_of(&env, "sd", "operation_step").await?;
    ensure!(
        events.iter().any(|e| e
            .message
            .contains(&format!("seeded from backup {id} (a physical copy"))),
        "no step event names the backup: {events:?}"
    );
    // The new member's agent restored the backup and made no logical copy.
    let after_inst = c.instance("sd").await?;
    let agent = &env.agents[env.agent_running(&after_inst, &new)?];
    let log = agent.log();
    ensure!(
        log.lines()
            .any(|l| l.contains("data volume restored") && l.contains(&new)),
        "{new}'s agent did not restore it:\n{log}"
    );
    ensure!(
        !log.lines()
            .any(|l| l.contains("seeding replica") && l.contains(&new)),
        "{new} was copied from a live member:\n{log}"
    );
    ensure!(
        (copies(&primary)?, copies(&replica)?) == before,
        "a member served a copy (SHOW CREATE DATABASE counts {before:?} before)"
    );
    let rows = |m: &str| {
        sql(
            m,
            "SELECT COUNT(*), COUNT(DISTINCT id), MIN(id), MAX(id) FROM sd.t",
        )
    };
    ensure!(
        rows(&new)?.split_whitespace().collect::<Vec<_>>() == ["600", "600", "1", "600"],
        "{new}: {}",
        rows(&new)?
    );
    sql(&primary, "INSERT INTO sd.t VALUES (601)")?;
    sd_rows_reach(&new, 601, "the new replica follows").await?;

    // A rebuild of it is filled from the same backup, as a new replica is: no live member
    // serves a copy, logical (`SHOW CREATE DATABASE`) or physical (`BACKUP STAGE`).
    let backups_served = |m: &str| status_counter(m, "Com_backup");
    let before = (
        copies(&primary)?,
        copies(&replica)?,
        backups_served(&primary)?,
        backups_served(&replica)?,
    );
    let marks: Vec<usize> = env.agents.iter().map(|a| a.log().len()).collect();
    let mut op = NewOperation::new(OpKind::Rebuild);
    op.member = Some(new.clone());
    let rb = env
        .run_operation("sd", &op, Duration::from_secs(300))
        .await?;
    ensure!(rb.state == OpState::Succeeded, "{}", js(&rb));
    ensure!(
        rb.steps.iter().any(|s| matches!(
            &s.action,
            StepAction::Rebuild { member, backup, .. }
                if member == &new && backup.as_deref() == Some(id.as_str())
        )),
        "the rebuild names no backup: {}",
        js(&rb.steps)
    );
    let rebuilt = c.instance("sd").await?;
    let k = env.agent_running(&rebuilt, &new)?;
    let log = env.agents[k].log();
    let since = &log[marks[k].min(log.len())..];
    ensure!(
        since
            .lines()
            .any(|l| l.contains("data volume restored") && l.contains(&new)),
        "{new}'s rebuild was not restored from the backup:\n{since}"
    );
    let after = (
        copies(&primary)?,
        copies(&replica)?,
        backups_served(&primary)?,
        backups_served(&replica)?,
    );
    ensure!(
        after == before,
        "a member served a copy for the rebuild (primary logical, replica logical, primary \
         physical, replica physical: {before:?} before, {after:?} after)\n{since}"
    );
    sd_rows_reach(&new, 601, "the rebuilt replica holds every row").await?;

    // The primary's binlogs no longer reach back to the backup: the replica seeded from it
    // cannot follow (error 1236, purged), is rebuilt by its agent and copied from a replica.
    let down = scale(1).await?;
    ensure!(down.state == OpState::Succeeded, "{}", js(&down));
    sql(&primary, "INSERT INTO sd.t VALUES (602); FLUSH BINARY LOGS")?;
    // A log a replica's dump thread still reads is kept: purged once it moved on.
    mofang_tests::eventually(
        "the first binlog purged",
        Duration::from_secs(30),
        || async {
            sql(&primary, "PURGE BINARY LOGS BEFORE NOW()")?;
            let logs = sql(&primary, "SHOW BINARY LOGS")?;
            ensure!(!logs.contains("mysql-bin.000001"), "{logs}");
            Ok(())
        },
    )
    .await?;
    // Only what the agents log from here on counts (a member id may be used again).
    let marks: Vec<usize> = env.agents.iter().map(|a| a.log().len()).collect();
    let kept = c.instance("sd").await?;
    let donor = members_with(&kept, "replica")
        .pop()
        .context("the replica kept")?;
    let served = copies(&donor)?;
    // The donor's agent refuses connections: its physical copy fails (decision 167), and the
    // member falls back to the logical copy from that replica.
    let donor_port: u16 = env.agents[env.agent_running(&kept, &donor)?]
        .http
        .rsplit(':')
        .next()
        .context("the donor agent's port")?
        .parse()?;
    let refused = mofang_tests::faults::PortRefused::start(donor_port)?;
    let up = scale(2).await?;
    drop(refused);
    ensure!(up.state == OpState::Succeeded, "{}", js(&up));
    let (again, backup) = added_replica(&up)?;
    ensure!(backup.as_deref() == Some(id.as_str()), "{}", js(&up.steps));
    let inst = c.instance("sd").await?;
    let k = env.agent_running(&inst, &again)?;
    let log = env.agents[k].log().split_off(marks[k]);
    ensure!(
        log.lines()
            .any(|l| l.contains("data volume restored") && l.contains(&again))
            && log
                .lines()
                .any(|l| l.contains("physical copy failed") && l.contains(&again))
            && log
                .lines()
                .any(|l| l.contains("seeding replica") && l.contains(&again)),
        "{again} was not restored, then copied from a replica:\n{log}"
    );
    ensure!(
        copies(&donor)? > served,
        "the copy from {donor} is not counted: the first half's check would not see one"
    );
    sd_rows_reach(&again, 602, "the copied replica follows").await?;
    Ok(())
}

/// A global status counter of a member's server (`Com_backup`, ...).
fn status_counter(member: &str, name: &str) -> Result<u64> {
    let out = sql(member, &format!("SHOW GLOBAL STATUS LIKE '{name}'"))?;
    Ok(out
        .split_whitespace()
        .nth(1)
        .context(name.to_owned())?
        .parse()?)
}

/// Waits up to 30 s until table `sd.t` of `member` holds exactly the ids 1..=n, each once.
async fn sd_rows_reach(member: &str, n: u64, what: &str) -> Result<()> {
    let want = [n, n, 1, n].map(|v| v.to_string());
    mofang_tests::eventually(what, Duration::from_secs(30), || async {
        let got = sql(
            member,
            "SELECT COUNT(*), COUNT(DISTINCT id), MIN(id), MAX(id) FROM sd.t",
        )?;
        ensure!(
            got.split_whitespace().collect::<Vec<_>>() == want,
            "{member}: {got}"
        );
        Ok(())
    })
    .await
}

/// Adds an encrypting repository `name` (prefix `name`) of the store; its key's id.
async fn encrypting_repo(c: &client::Client, s3: &SeaweedFs, name: &str) -> Result<String> {
    let repo = c
        .add_backup_repo(&NewBackupRepo {
            encrypt: true,
            ..s3_repo(s3, name, &s3.secret_key, name)
        })
        .await?;
    repo.key_id
        .context("an encrypting repository without a key id")
}

/// The ids of the repository keys the binlog indexes of `instance` under `prefix` record.
async fn index_key_ids(s3: &SeaweedFs, prefix: &str, instance: &str) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for p in objects_under(s3, &format!("{prefix}/binlogs/{instance}")).await? {
        if p.ends_with(".json") {
            let idx: mofang_common::pitr::BinlogIndex =
                serde_json::from_slice(&object(s3, &p).await?)?;
            ids.push(idx.encryption.map(|e| e.key_id).unwrap_or_default());
        }
    }
    Ok(ids)
}

/// A repository's key replaced in place (decision 169), against real SeaweedFS, MariaDB
/// and Redis:
/// - MariaDB: a backup and binlogs archived under the first key, the key rotated, binlogs
///   archived under the second: the indexes record both keys, a later backup records the
///   second; the first key cannot be retired (409 naming the backup and the binlogs); a
///   point-in-time restore to a time after the rotation, from the backup taken before it
///   through binlogs of both keys, holds exactly the rows written before that time;
/// - Redis, in a repository of its own: a backup under the first key, the key rotated (the
///   CLI), the old backup still restores exactly; retiring the old key is refused while the
///   backup exists and succeeds once it is deleted; a backup under the new key restores
///   after the old key is gone; the repository view never shows a key.
#[tokio::test(flavor = "multi_thread")]
async fn a_repository_key_rotates_without_losing_a_backup_or_a_binlog() -> Result<()> {
    let s3 = SeaweedFs::shared().await?;
    let env = Env::start_with(2, "\n[backup]\narchive_interval_s = 2\n").await?;
    env.wait_ready_nodes(2).await?;
    let c = env.client();
    let k1 = encrypting_repo(&c, s3, "rot").await?;

    // ---- MariaDB: a backup and binlogs under the first key --------------------------------
    let inst = env.create("kdb", "mariadb", 1).await?;
    let primary = primary_of(&inst)?.id.clone();
    sql(
        &primary,
        "CREATE TABLE app.t (id INT PRIMARY KEY); \
         INSERT INTO app.t SELECT seq FROM app.seq_1_to_100",
    )?;
    let b1 = request_backup(&env, "kdb", "rot").await?;
    let b1 = wait_backup(&env, &b1.id, Duration::from_secs(180)).await?;
    ensure!(
        b1.state == BackupState::Succeeded
            && b1
                .objects
                .iter()
                .all(|o| o.encryption.as_ref().map(|e| e.key_id.as_str()) == Some(k1.as_str())),
        "{}",
        js(&b1)
    );
    sql(
        &primary,
        "INSERT INTO app.t SELECT seq FROM app.seq_101_to_200",
    )?;
    mofang_tests::eventually(
        "binlogs archived under the first key",
        Duration::from_secs(60),
        || async {
            let ids = index_key_ids(s3, "rot", "kdb").await?;
            ensure!(ids.iter().any(|k| k == &k1), "{ids:?}");
            Ok(())
        },
    )
    .await?;

    // ---- the key replaced in place ----------------------------------------------------------
    let rotated = c.rotate_repo_key("rot", None).await?;
    let k2 = rotated.key_id.clone().context("new key id")?;
    ensure!(
        k2 != k1 && rotated.retired_key_ids == [k1.clone()] && rotated.encrypted,
        "{}",
        js(&rotated)
    );
    sql(
        &primary,
        "INSERT INTO app.t SELECT seq FROM app.seq_201_to_300",
    )?;
    let t = now_s() + 2;
    sleep_until(t + 1).await;
    sql(
        &primary,
        "INSERT INTO app.t SELECT seq FROM app.seq_301_to_400",
    )?;
    let to = mofang_common::pitr::format_utc(t + 1);
    mofang_tests::eventually(
        "binlogs archived under the new key, the window past the time",
        Duration::from_secs(90),
        || async {
            let ids = index_key_ids(s3, "rot", "kdb").await?;
            ensure!(
                ids.iter().any(|k| k == &k2) && ids.iter().all(|k| k == &k1 || k == &k2),
                "{ids:?}"
            );
            let v = c.instance("kdb").await?;
            let end = v
                .pitr_window
                .as_ref()
                .map(|w| w.to.clone())
                .unwrap_or_default();
            ensure!(v.pitr_ready == Some(true) && end >= to, "{}", js(&v));
            Ok(())
        },
    )
    .await?;

    // The first key still opens a backup and binlogs: it cannot go.
    let r = refusal(c.retire_repo_key("rot", &k1).await)?;
    ensure!(
        r.status == 409
            && r.code == "key_in_use"
            && r.message.contains(&b1.id)
            && r.message.contains("archived binlog"),
        "{r:?}"
    );
    let r = refusal(c.retire_repo_key("rot", &k2).await)?;
    ensure!(
        r.status == 422 && r.message.contains("rotate it first"),
        "{r:?}"
    );

    // A point-in-time restore after the rotation: the backup of the first key, binlogs of both.
    c.create_instance(&restoring(
        "kdb2",
        "mariadb",
        0,
        "kdb",
        Some(&b1.id),
        Some(mofang_common::pitr::format_utc(t)),
    )?)
    .await?;
    let kdb2 = env.ready("kdb2").await?;
    let got = sql(
        &primary_of(&kdb2)?.id,
        "SELECT COUNT(*), MIN(id), MAX(id) FROM app.t",
    )?;
    ensure!(
        got == "300\t1\t300",
        "the point-in-time restore across the rotation holds {got:?}"
    );
    let b2 = request_backup(&env, "kdb", "rot").await?;
    let b2 = wait_backup(&env, &b2.id, Duration::from_secs(180)).await?;
    ensure!(
        b2.state == BackupState::Succeeded
            && b2
                .objects
                .iter()
                .all(|o| o.encryption.as_ref().map(|e| e.key_id.as_str()) == Some(k2.as_str())),
        "{}",
        js(&b2)
    );

    // ---- Redis, in a repository of its own: retire once nothing needs the key -------------
    let ka = encrypting_repo(&c, s3, "rotkv").await?;
    let kv = env.create("kkv", "redis", 0).await?;
    let mut conn = redis_app(&env, &kv).await?;
    for k in 0..100u32 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{k}"))
            .arg(k)
            .query_async(&mut conn)
            .await?;
    }
    let r1 = request_backup(&env, "kkv", "rotkv").await?;
    let r1 = wait_backup(&env, &r1.id, Duration::from_secs(120)).await?;
    ensure!(
        r1.state == BackupState::Succeeded && r1.keys == Some(100),
        "{}",
        js(&r1)
    );
    // Through the CLI, with the key from the environment: the one given is the one used.
    let given = mofang_common::backup_crypt::RepoKey::generate();
    let rotated: BackupRepoView = mofang_cli_env(
        &env,
        &["backup-repo", "rotate-key", "rotkv", "--json"],
        &[("MOFANG_BACKUP_ENCRYPTION_KEY", given.to_text().as_str())],
    )
    .await?;
    ensure!(
        rotated.key_id.as_deref() == Some(given.id().as_str())
            && rotated.retired_key_ids == [ka.clone()],
        "{}",
        js(&rotated)
    );
    let raw = c
        .call_json(Method::GET, "/v1/backup-repos/rotkv", None::<&Value>)
        .await?;
    ensure!(
        !raw.to_string().contains(given.to_text().as_str())
            && raw.get("encryption_key").is_none()
            && raw.get("retired_keys").is_none(),
        "a key is shown: {raw}"
    );
    for k in 100..150u32 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{k}"))
            .arg(k)
            .query_async(&mut conn)
            .await?;
    }
    let r = refusal(c.retire_repo_key("rotkv", &ka).await)?;
    ensure!(r.status == 409 && r.message.contains(&r1.id), "{r:?}");
    // The old backup restores with the retired key.
    c.create_instance(&restoring("kkv2", "redis", 0, "kkv", Some(&r1.id), None)?)
        .await?;
    let kv2 = env.ready("kkv2").await?;
    ensure!(
        redis_keys(&env, &kv2).await? == 100,
        "the restore of the first key's backup"
    );
    let r2 = request_backup(&env, "kkv", "rotkv").await?;
    let r2 = wait_backup(&env, &r2.id, Duration::from_secs(120)).await?;
    ensure!(
        r2.state == BackupState::Succeeded && r2.keys == Some(150),
        "{}",
        js(&r2)
    );
    c.delete_backup(&r1.id).await?;
    // Retired through the CLI once nothing needs it.
    let done: BackupRepoView = mofang_cli_env(
        &env,
        &["backup-repo", "retire-key", "rotkv", ka.as_str(), "--json"],
        &[],
    )
    .await?;
    ensure!(
        done.retired_key_ids.is_empty() && done.key_id == rotated.key_id,
        "{}",
        js(&done)
    );
    c.create_instance(&restoring("kkv3", "redis", 0, "kkv", Some(&r2.id), None)?)
        .await?;
    let kv3 = env.ready("kkv3").await?;
    ensure!(
        redis_keys(&env, &kv3).await? == 150,
        "the restore of the new key's backup"
    );
    eprintln!(
        "repository keys: {k1} -> {k2} (MariaDB), {ka} -> {} (Redis), retired and forgotten",
        given.id()
    );
    Ok(())
}

/// A connection to a Redis instance's primary as its app account.
async fn redis_app(env: &Env, inst: &InstanceView) -> Result<redis::aio::MultiplexedConnection> {
    let addr = primary_of(inst)?.address.clone();
    let pass = env.app_password(&inst.name).await?;
    Ok(redis::Client::open(format!("redis://app:{pass}@{addr}/"))?
        .get_multiplexed_async_connection()
        .await?)
}

/// `DBSIZE` of a Redis instance's primary, as the app account.
async fn redis_keys(env: &Env, inst: &InstanceView) -> Result<u64> {
    let mut conn = redis_app(env, inst).await?;
    Ok(redis::cmd("DBSIZE").query_async(&mut conn).await?)
}
