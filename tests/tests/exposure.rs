//! Least exposure (issue 15 point 8), end to end: what answers without a token — the agents'
//! HTTP server (`/metrics`, `/healthz`, role checks) and the scheduler's `/metrics`, health and
//! OpenAPI document — reveals no secret, in steady state, during a credential rotation and
//! while a member is down; no daemon log holds one; and an agent listens only where its config
//! says.

use anyhow::{ensure, Context, Result};
use mofang_common::repo::Secret;
use mofang_scheduler::client::{NewBackupRepo, RotateAccount};
use mofang_tests::s3::SeaweedFs;
use mofang_tests::scenario::{container_of, docker_cli, replica_of, Env};
use mofang_tests::{eventually, unique_name};
use reqwest::StatusCode;
use std::collections::BTreeSet;
use std::time::Duration;

/// Every answer of every endpoint reachable without a token, as `(url, body)`.
async fn unauthenticated_answers(env: &Env) -> Result<Vec<(String, String)>> {
    let mut urls = vec![
        format!("{}/metrics", env.sched.rest),
        format!("{}/v1/health", env.sched.rest),
        format!("{}/v1/openapi.json", env.sched.rest),
        // Refused, but the refusal is an answer too.
        format!("{}/v1/instances", env.sched.rest),
    ];
    let instances = env.client().instances(None).await?;
    for a in &env.agents {
        urls.push(format!("{}/metrics", a.http));
        urls.push(format!("{}/healthz", a.http));
        urls.push(format!("{}/v1/health", a.http));
        urls.push(format!("{}/v1/members/nosuch/primary", a.http));
    }
    for i in &instances {
        for m in &i.members {
            let (at, id) = (&m.check_address, &m.id);
            for check in ["primary", "replica"] {
                urls.push(format!("http://{at}/v1/members/{id}/{check}"));
            }
            // A physical seed copy asked for without a proof (decision 167): refused.
            urls.push(format!(
                "http://{at}/v1/members/{id}/seed?member=intruder&at={}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs()
            ));
        }
    }
    let mut out = Vec::new();
    for url in urls {
        for accept in ["text/plain", "application/openmetrics-text; version=1.0.0"] {
            let resp = env
                .http
                .get(&url)
                .header("accept", accept)
                .send()
                .await
                .with_context(|| format!("GET {url}"))?;
            ensure!(
                !(url.contains("/seed?") && resp.status().is_success()),
                "{url} served a copy without a proof"
            );
            out.push((url.clone(), resp.text().await?));
        }
    }
    Ok(out)
}

/// Fails naming the place (never the secret) when any secret appears in any answer.
fn assert_clean(what: &str, answers: &[(String, String)], secrets: &BTreeSet<String>) {
    let mut leaks = Vec::new();
    for (url, body) in answers {
        for s in secrets {
            if body.contains(s.as_str()) {
                leaks.push(format!("{url} holds a secret starting {}", &s[..4]));
            }
        }
    }
    assert!(leaks.is_empty(), "{what}: {leaks:#?}");
    assert!(
        answers
            .iter()
            .any(|(u, b)| u.ends_with("/metrics") && b.contains("_up{")),
        "{what}: the metrics were read"
    );
}

/// Every password of every instance, the repository secret and the admin token.
async fn secrets(env: &Env, names: &[&str], extra: &[&str]) -> Result<BTreeSet<String>> {
    let mut out: BTreeSet<String> = extra.iter().map(|s| (*s).to_owned()).collect();
    out.insert(env.token.clone());
    for n in names {
        let c = env.client().credentials(n).await?.credentials;
        for p in [c.admin, c.repl, c.monitor, c.app] {
            out.insert(p);
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_unauthenticated_answer_and_no_log_reveals_a_secret() -> Result<()> {
    let s3 = SeaweedFs::shared().await?;
    let env = Env::start(2).await?;
    let (my, rd) = (unique_name("expmy"), unique_name("exprd"));
    env.create(&my, "mariadb", 1).await?;
    env.create(&rd, "redis", 1).await?;
    let client = env.client();
    client
        .add_backup_repo(&NewBackupRepo {
            name: "exposure".into(),
            kind: "s3".into(),
            endpoint: Some(s3.endpoint.clone()),
            bucket: Some(s3.bucket.clone()),
            prefix: Some("exposure".into()),
            access_key_id: Some(s3.access_key.clone()),
            secret_access_key: Some(Secret(s3.secret_key.clone())),
            ..NewBackupRepo::default()
        })
        .await
        .context("backup repository")?;
    let mut all = secrets(&env, &[&my, &rd], &[&s3.secret_key]).await?;

    // Steady state.
    assert_clean("steady", &unauthenticated_answers(&env).await?, &all);

    // During a rotation: the new app password travels to the agents beside the old one.
    client
        .rotate_credentials(&my, RotateAccount::App, Some(600))
        .await
        .context("rotate")?;
    eventually("switched", Duration::from_secs(60), || async {
        let v = env.instance(&my).await?;
        ensure!(
            v.rotation.as_ref().is_some_and(|r| r.step == "switch"),
            "{:?}",
            v.rotation
        );
        Ok(())
    })
    .await?;
    all.extend(secrets(&env, &[&my], &[]).await?);
    assert_clean("rotating", &unauthenticated_answers(&env).await?, &all);

    // A member down: its failures are reported (role checks answer 503 with a reason).
    let inst = env.instance(&rd).await?;
    let replica = replica_of(&inst)?.id.clone();
    docker_cli(&["pause", &container_of(&replica)])?;
    let seen = eventually(
        "the paused replica reported",
        Duration::from_secs(30),
        || async {
            let v = env.instance(&rd).await?;
            let m = v
                .members
                .into_iter()
                .find(|m| m.id == replica)
                .context("member")?;
            ensure!(!m.healthy && !m.reason.is_empty(), "{m:?}");
            Ok(m)
        },
    )
    .await;
    let answers = unauthenticated_answers(&env).await;
    docker_cli(&["unpause", &container_of(&replica)])?;
    seen?;
    assert_clean("member down", &answers?, &all);

    // No log of any daemon (agents at debug level) holds one.
    let mut logs = vec![("scheduler".to_owned(), env.sched.log())];
    logs.extend(env.agents.iter().map(|a| (a.node.clone(), a.log())));
    let logged: Vec<(String, String)> = logs;
    let mut leaks = Vec::new();
    for (who, log) in &logged {
        ensure!(
            log.contains("INFO"),
            "{who}'s log was read: {} bytes",
            log.len()
        );
        for s in &all {
            if log.contains(s.as_str()) {
                leaks.push(format!("{who}'s log holds a secret starting {}", &s[..4]));
            }
        }
    }
    ensure!(leaks.is_empty(), "{leaks:#?}");
    Ok(())
}

/// The listening TCP sockets (`addr:port`) of process `pid`: its socket inodes matched with
/// the LISTEN entries of its network namespace's `/proc/net/tcp{,6}`.
fn listening(pid: u32) -> Result<BTreeSet<String>> {
    let mut inodes = BTreeSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(target) = std::fs::read_link(fd?.path()) else {
            continue;
        };
        if let Some(i) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
        {
            inodes.insert(i.to_owned());
        }
    }
    let mut out = BTreeSet::new();
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{file}"))?;
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address rem_address st ... inode (10th field); 0A is LISTEN.
            if f.len() < 10 || f[3] != "0A" || !inodes.contains(f[9]) {
                continue;
            }
            let (addr, port) = f[1].split_once(':').context("local address")?;
            let port = u16::from_str_radix(port, 16)?;
            let ip = if v6 {
                let b = hex_bytes(addr)?;
                // Four 32-bit words, each in host (little-endian) order.
                let mut o = [0u8; 16];
                for w in 0..4 {
                    for k in 0..4 {
                        o[w * 4 + k] = b[w * 4 + 3 - k];
                    }
                }
                std::net::IpAddr::from(o).to_string()
            } else {
                let b = hex_bytes(addr)?;
                std::net::IpAddr::from([b[3], b[2], b[1], b[0]]).to_string()
            };
            out.insert(format!("{ip}:{port}"));
        }
    }
    Ok(out)
}

fn hex_bytes(s: &str) -> Result<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| Ok(u8::from_str_radix(s.get(i..i + 2).context("hex")?, 16)?))
        .collect()
}

/// An agent configured with `http_listen = "127.0.0.1:<port>"` listens there and nowhere
/// else (it dials the scheduler; members listen in their own containers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_listens_only_where_configured() -> Result<()> {
    let env = Env::start(1).await?;
    let name = unique_name("bind");
    env.create(&name, "redis", 0).await?;
    for a in &env.agents {
        let pid = a.pid().context("agent runs")?;
        let want = a.http.trim_start_matches("http://").to_owned();
        let got = listening(pid)?;
        assert_eq!(
            got,
            BTreeSet::from([want.clone()]),
            "agent {} listens on {got:?}, configured {want}",
            a.node
        );
        // And it answers there.
        let r = env.http.get(format!("{}/healthz", a.http)).send().await?;
        assert_eq!(r.status(), StatusCode::OK);
    }
    Ok(())
}
