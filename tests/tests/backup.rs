//! Backups end to end (issue 16), against real agents and a real S3 (SeaweedFS, one per test
//! binary): backup repositories are checked from the scheduler and from every live agent
//! before they are kept, and refused naming the host and the failing step.

use anyhow::{ensure, Result};
use mofang_tests::s3::SeaweedFs;
use mofang_tests::scenario::Env;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

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
