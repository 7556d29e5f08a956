//! Backups end to end (issue 16), against real agents and a real S3 (SeaweedFS, one per test
//! binary): backup repositories are checked from the scheduler and from every live agent
//! before they are kept, and refused naming the host and the failing step.

use anyhow::{ensure, Context, Result};
use mofang_tests::s3::SeaweedFs;
use mofang_tests::scenario::{container_of, docker_cli, Env};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

fn s3_repo(s3: &SeaweedFs, name: &str, secret: &str, prefix: &str) -> Value {
    json!({
        "name": name,
        "kind": "s3",
        "endpoint": s3.endpoint,
        "bucket": s3.bucket,
        "prefix": prefix,
        "access_key_id": s3.access_key,
        "secret_access_key": secret,
    })
}

/// A good S3 repository is probed by the scheduler and by both agents, then listed without
/// its secret; one with a wrong secret is refused at the scheduler's `write` step; a directory
/// repository whose directory is missing is refused at `open`; an agent that does not answer
/// gets its node named; a deleted repository is gone.
#[tokio::test(flavor = "multi_thread")]
async fn repositories_are_checked_everywhere_before_they_are_kept() -> Result<()> {
    let s3 = SeaweedFs::shared().await?;
    let env = Env::start(2).await?;
    env.wait_ready_nodes(2).await?;

    let (status, v) = env
        .call(
            Method::POST,
            "/v1/backup-repos",
            Some(s3_repo(s3, "main", &s3.secret_key, "backups")),
        )
        .await?;
    ensure!(status == StatusCode::CREATED, "{status} {v}");
    ensure!(
        v["kind"] == "s3" && v["bucket"] == s3.bucket.as_str(),
        "{v}"
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
    let listed = env.get("/v1/backup-repos").await?;
    ensure!(listed.as_array().map(Vec::len) == Some(1), "{listed}");
    ensure!(
        !listed.to_string().contains(&s3.secret_key),
        "the secret is shown: {listed}"
    );
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

    let (status, v) = env
        .call(
            Method::POST,
            "/v1/backup-repos",
            Some(s3_repo(s3, "main", &s3.secret_key, "x")),
        )
        .await?;
    ensure!(
        status == StatusCode::CONFLICT,
        "same name twice: {status} {v}"
    );

    let (status, v) = env
        .call(
            Method::POST,
            "/v1/backup-repos",
            Some(s3_repo(s3, "wrong", "not-the-secret", "backups")),
        )
        .await?;
    ensure!(status == StatusCode::UNPROCESSABLE_ENTITY, "{status} {v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    ensure!(
        v["error"]["code"] == "repo_check_failed" && msg.contains("on scheduler at step write"),
        "{v}"
    );

    let missing = std::env::temp_dir().join(mofang_tests::unique_name("no-such-dir"));
    let (status, v) = env
        .call(
            Method::POST,
            "/v1/backup-repos",
            Some(json!({"name": "nfs", "kind": "fs", "path": missing})),
        )
        .await?;
    ensure!(status == StatusCode::UNPROCESSABLE_ENTITY, "{status} {v}");
    ensure!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("at step open"),
        "{v}"
    );

    // The second agent's link is cut just before the add: its node is still live, is asked,
    // and never answers.
    env.links[1].cut();
    let (status, v) = env
        .call(
            Method::POST,
            "/v1/backup-repos",
            Some(s3_repo(s3, "second", &s3.secret_key, "other")),
        )
        .await?;
    env.links[1].heal();
    ensure!(status == StatusCode::UNPROCESSABLE_ENTITY, "{status} {v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    ensure!(
        msg.contains(&format!("on {} at step answer", env.agents[1].node)),
        "{v}"
    );
    ensure!(
        env.get("/v1/backup-repos").await?.as_array().map(Vec::len) == Some(1),
        "a refused repository is not kept"
    );

    let (status, _) = env
        .call(Method::DELETE, "/v1/backup-repos/main", None)
        .await?;
    ensure!(status == StatusCode::NO_CONTENT, "{status}");
    let (status, _) = env.call(Method::GET, "/v1/backup-repos/main", None).await?;
    ensure!(status == StatusCode::NOT_FOUND, "{status}");
    Ok(())
}

/// SQL through the client inside a member's container, as `mofang_admin`.
fn sql(member: &str, query: &str) -> Result<String> {
    docker_cli(&[
        "exec",
        &container_of(member),
        "mariadb",
        "--defaults-extra-file=/etc/mofang/client.cnf",
        "-N",
        "-e",
        query,
    ])
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
    let inst = env.create_ready("bk", "mariadb", 1).await?;
    let primary = Env::primary_member(&inst)?["id"]
        .as_str()
        .context("primary id")?
        .to_owned();
    let replica = inst["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["role"] == "replica"))
        .and_then(|m| m["id"].as_str())
        .context("replica id")?
        .to_owned();
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
    }
    .open()?;
    let stored = stream::store(
        &repo,
        "bk/full.mbstream.zst",
        exec.stdout.boxed(),
        Some(Zstd {
            level: 3,
            threads: 2,
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
