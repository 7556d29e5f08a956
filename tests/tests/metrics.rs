//! The agent's `/metrics` against the real things: real Docker containers of the real images,
//! scraped by a real Prometheus (Debian package, started by the test on a free loopback port)
//! and checked with Prometheus's own tools: `promtool check metrics` on the agent's output,
//! `promtool test rules` on the shipped alert rules, `promtool check config` on the shipped
//! scrape configs, `amtool check-config` on the shipped Alertmanager config.

use anyhow::{bail, ensure, Context, Result};
use mofang_agent::engine::Secrets;
use mofang_common::proto::{Assignment, MemberStatus};
use mofang_tests::cluster::{AgentProcess, TestNetwork};
use mofang_tests::coord::free_port;
use mofang_tests::fake_scheduler::FakeScheduler;
use mofang_tests::{docker, eventually, unique_name};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn monitoring() -> PathBuf {
    repo().join("packaging/monitoring")
}

fn secret_map(s: &Secrets) -> HashMap<String, String> {
    HashMap::from([
        ("admin".into(), s.admin.clone()),
        ("repl".into(), s.repl.clone()),
        ("monitor".into(), s.monitor.clone()),
        ("app".into(), s.app.clone()),
    ])
}

fn assignment(
    instance: &str,
    member: &str,
    engine: &str,
    role: &str,
    primary: &str,
    s: &Secrets,
) -> Assignment {
    Assignment {
        member: member.into(),
        instance: instance.into(),
        engine: engine.into(),
        version: if engine == "redis" { "7.0" } else { "10.11" }.into(),
        role: role.into(),
        epoch: 1,
        cpu: 0.5,
        memory_bytes: 256 * MIB,
        disk_bytes: 512 * MIB,
        disk_class: "ssd".into(),
        primary_address: primary.into(),
        secrets: secret_map(s),
        settings: HashMap::from([("replicas".into(), "1".into())]),
        ..Default::default()
    }
}

async fn wait_healthy(
    fake: &FakeScheduler,
    agent: &AgentProcess,
    member: &str,
    pred: impl Fn(&MemberStatus) -> bool,
) -> Result<MemberStatus> {
    eventually(
        &format!("{member} healthy"),
        Duration::from_secs(120),
        || async {
            let hb = fake.last_heartbeat(&agent.node).context("no heartbeat")?;
            let m = hb
                .members
                .into_iter()
                .find(|m| m.member == member)
                .context("not reported")?;
            if pred(&m) {
                Ok(m)
            } else {
                bail!("{m:?}")
            }
        },
    )
    .await
}

/// A Prometheus server (the Debian package's binary) with its own config and data directory.
struct Prometheus {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("mofang-prometheus-")
            .tempdir()?;
        let port = free_port()?;
        let cfg = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: mofang-agent\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), cfg)?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting prometheus (Debian package `prometheus`; run scripts/setup)")?;
        Ok(Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query; the result vector.
    async fn query(&self, http: &reqwest::Client, q: &str) -> Result<Vec<Value>> {
        let v: Value = http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", q)])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        ensure!(v["status"] == "success", "query {q}: {v}");
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until `q` returns exactly one series and returns it.
    async fn one(&self, http: &reqwest::Client, q: &str) -> Result<Value> {
        eventually(q, Duration::from_secs(60), || async {
            let r = self.query(http, q).await?;
            match r.as_slice() {
                [one] => Ok(one.clone()),
                other => bail!("{} series: {other:?}", other.len()),
            }
        })
        .await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- prometheus log ----\n{}", self.log());
        }
    }
}

fn value(series: &Value) -> Result<f64> {
    series["value"][1]
        .as_str()
        .context("no value")?
        .parse()
        .context("value not a number")
}

fn label<'a>(series: &'a Value, name: &str) -> &'a str {
    series["metric"][name].as_str().unwrap_or("")
}

/// Names the exporters that Mofang replaces already publish, which promtool's linter flags:
/// mysqld_exporter's generic families embed the server's own variable names
/// (`mysql_global_variables_expire_logs_days`: "use base unit seconds"), and redis_exporter
/// names some durations `_sec`, node_exporter keeps /proc/meminfo's capitals. Dashboards and rules depend on these spellings; every other
/// name (cAdvisor's, node_exporter's, Mofang's) must lint clean.
fn is_inherited_exporter_name(metric: &str) -> bool {
    [
        "mysql_global_variables_",
        "mysql_global_status_",
        "mysql_slave_status_",
        // node_exporter's /proc/meminfo spelling (node_memory_MemAvailable_bytes): camelCase.
        "node_memory_",
    ]
    .iter()
    .any(|p| metric.starts_with(p))
        || [
            "redis_aof_current_rewrite_duration_sec",
            "redis_aof_last_rewrite_duration_sec",
            "redis_rdb_current_bgsave_duration_sec",
            "redis_rdb_last_bgsave_duration_sec",
        ]
        .contains(&metric)
}

/// Runs `promtool check metrics` on an exposition; parse errors fail, and lint problems fail
/// unless they are about names inherited from the replaced exporters.
fn promtool_check_metrics(exposition: &str) -> Result<()> {
    let v = mofang_tests::promtool::check_metrics_verdict(exposition)?;
    let (stderr, stdout) = (v.stderr.as_str(), v.stdout.as_str());
    ensure!(
        !stderr.contains("error while linting"),
        "promtool could not parse the exposition:\n{stderr}"
    );
    let problems: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            let metric = l.split_whitespace().next().unwrap_or("");
            !is_inherited_exporter_name(metric)
        })
        .collect();
    ensure!(
        problems.is_empty(),
        "promtool check metrics found problems (exit {:?}):\n{}",
        v.code,
        problems.join("\n")
    );
    // 0: clean; 3: lint problems only (the inherited names above).
    ensure!(
        matches!(v.code, Some(0) | Some(3)),
        "promtool check metrics exit {:?}: {stderr}",
        v.code
    );
    Ok(())
}

/// The value of the sample line `name{...}` holding every `needle`, from a text exposition.
fn sample(text: &str, name: &str, needles: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_metrics_reach_a_real_prometheus() -> Result<()> {
    let _docker = docker().await;
    let fake = FakeScheduler::start().await?;
    let net = TestNetwork::create(&unique_name("net"))?;
    let agent = AgentProcess::start(
        &unique_name("node"),
        &fake.endpoint(),
        &net.name,
        4096,
        // A long deadline, so that a scrape that waited on a database would be seen waiting.
        "metrics_timeout_ms = 10000\nmetrics_interval_ms = 1000",
    )?;
    let s = Secrets::generate();
    let db = unique_name("db");
    let cache = unique_name("cache");
    let (m_db, m_c0, m_c1) = (
        format!("{db}-0"),
        format!("{cache}-0"),
        format!("{cache}-1"),
    );

    // A MariaDB primary, a Redis primary and its replica, each with a 256 MiB limit.
    let mdb = assignment(&db, &m_db, "mariadb", "primary", "", &s);
    let c0 = assignment(&cache, &m_c0, "redis", "primary", "", &s);
    fake.set_desired(&agent.node, vec![mdb.clone(), c0.clone()]);
    let p = wait_healthy(&fake, &agent, &m_c0, |m| m.healthy).await?;
    let c1 = assignment(&cache, &m_c1, "redis", "replica", &p.address, &s);
    fake.set_desired(&agent.node, vec![mdb, c0, c1]);
    wait_healthy(&fake, &agent, &m_c1, |m| m.healthy && m.replication_ok).await?;
    let db_status = wait_healthy(&fake, &agent, &m_db, |m| m.healthy).await?;

    // The agent's own output, in the Prometheus text format: promtool accepts it.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let metrics_url = format!("{}/metrics", agent.http);
    let text = eventually(
        "metrics with all members up",
        Duration::from_secs(30),
        || async {
            let t = http.get(&metrics_url).send().await?.text().await?;
            for (name, m) in [
                ("mysql_up", &m_db),
                ("redis_up", &m_c0),
                ("redis_up", &m_c1),
            ] {
                let up = sample(&t, name, &[&format!("mofang_member=\"{m}\"")]);
                ensure!(up == Some(1.0), "{name} of {m} is {up:?}");
            }
            Ok(t)
        },
    )
    .await?;
    promtool_check_metrics(&text)?;
    for family in [
        "# TYPE container_cpu_usage_seconds_total counter",
        "# TYPE container_memory_working_set_bytes gauge",
        "# TYPE node_cpu_seconds_total counter",
        "# TYPE mysql_global_status_commands_total counter",
        "# TYPE redis_commands_processed_total counter",
        "# TYPE mofang_agent_heartbeats_total counter",
        "# TYPE mofang_agent_reconcile_pass_seconds histogram",
        "# TYPE mofang_agent_collect_seconds histogram",
        "# TYPE mofang_agent_heartbeat_ack_age_seconds gauge",
    ] {
        assert!(text.contains(family), "missing {family}");
    }
    // Every pass and every collection is in its histogram.
    let passes = sample(&text, "mofang_agent_reconcile_pass_seconds_count", &[]);
    let in_inf = sample(
        &text,
        "mofang_agent_reconcile_pass_seconds_bucket",
        &["le=\"+Inf\""],
    );
    ensure!(
        passes.is_some_and(|n| n >= 3.0) && passes == in_inf,
        "reconcile passes: count {passes:?}, +Inf bucket {in_inf:?}"
    );
    let collected = sample(
        &text,
        "mofang_agent_collect_seconds_count",
        &["source=\"database\""],
    );
    ensure!(
        collected.is_some_and(|n| n >= 3.0),
        "database collections: {collected:?}"
    );
    // Ready: linked to the scheduler, the runtime answers; members by state beside.
    let health = http.get(format!("{}/v1/health", agent.http)).send().await?;
    ensure!(health.status() == 200, "health: {}", health.status());
    let health: Value = health.json().await?;
    ensure!(
        health["ready"] == true && health["members"]["healthy"] == 3,
        "{health}"
    );
    let hb = sample(
        &text,
        "mofang_agent_heartbeats_total",
        &["result=\"success\""],
    );
    assert!(hb.is_some_and(|n| n >= 1.0), "heartbeats: {hb:?}");

    // OpenMetrics when asked for it, as Prometheus does.
    let om = http
        .get(&metrics_url)
        .header(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await?;
    let ct = om
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let om = om.text().await?;
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    assert!(om.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    assert!(om.contains("# TYPE container_cpu_usage_seconds counter"));

    // A real Prometheus scrapes the agent; its HTTP API sees what dashboards use.
    let target = agent.http.trim_start_matches("http://");
    let prom = Prometheus::start(target)?;
    let up = prom.one(&http, "up{job=\"mofang-agent\"} == 1").await?;
    assert_eq!(value(&up)?, 1.0);
    // The histograms parse in Prometheus's OpenMetrics scrape too: a quantile is computed.
    let p99 = prom
        .one(
            &http,
            "histogram_quantile(0.99, sum by (le) (mofang_agent_reconcile_pass_seconds_bucket))",
        )
        .await?;
    ensure!(value(&p99)? > 0.0, "reconcile pass p99: {p99}");
    let targets: Value = http
        .get(format!("{}/api/v1/targets", prom.url))
        .send()
        .await?
        .json()
        .await?;
    let t = &targets["data"]["activeTargets"][0];
    assert_eq!(t["health"], "up", "{t}");
    assert_eq!(t["lastError"], "", "{t}");

    let ws = prom
        .one(
            &http,
            &format!(
                "container_memory_working_set_bytes{{container_label_mofang_member=\"{m_db}\"}}"
            ),
        )
        .await?;
    assert_eq!(label(&ws, "name"), format!("mofang-{m_db}"));
    assert_eq!(label(&ws, "image"), "mofang/mariadb:10.11");
    assert_eq!(label(&ws, "container_label_mofang_instance"), db);
    assert_eq!(label(&ws, "container_label_mofang_node"), agent.node);
    // cAdvisor's `id` is the cgroup path, which names the container.
    assert!(label(&ws, "id").contains(&db_status.container_id), "{ws}");
    let ws_bytes = value(&ws)?;
    assert!(
        ws_bytes > 4.0 * MIB as f64 && ws_bytes <= 256.0 * MIB as f64,
        "MariaDB working set {ws_bytes}"
    );
    let limit = prom
        .one(
            &http,
            &format!(
                "container_spec_memory_limit_bytes{{container_label_mofang_member=\"{m_db}\"}}"
            ),
        )
        .await?;
    assert_eq!(value(&limit)?, 268_435_456.0);
    let cpu = prom
        .one(
            &http,
            &format!("container_cpu_usage_seconds_total{{container_label_mofang_member=\"{m_db}\",cpu=\"total\"}}"),
        )
        .await?;
    assert!(value(&cpu)? > 0.0, "{cpu}");
    let quota = prom
        .one(
            &http,
            &format!("container_spec_cpu_quota{{container_label_mofang_member=\"{m_db}\"}}"),
        )
        .await?;
    assert_eq!(value(&quota)?, 50_000.0, "0.5 cores of a 100 ms period");
    // On a Docker network each member has its own interface (eth0) and traffic on it.
    let rx = prom
        .one(
            &http,
            &format!("container_network_receive_bytes_total{{container_label_mofang_member=\"{m_c0}\",interface=\"eth0\"}}"),
        )
        .await?;
    assert!(value(&rx)? > 0.0, "{rx}");

    let mysql_up = prom
        .one(&http, &format!("mysql_up{{mofang_member=\"{m_db}\"}}"))
        .await?;
    assert_eq!(value(&mysql_up)?, 1.0);
    assert_eq!(label(&mysql_up, "mofang_instance"), db);
    assert_eq!(label(&mysql_up, "role"), "primary");
    let ro = prom
        .one(
            &http,
            &format!("mysql_global_variables_read_only{{mofang_member=\"{m_db}\"}}"),
        )
        .await?;
    assert_eq!(value(&ro)?, 0.0, "the primary is writable");
    let slaves = prom
        .one(
            &http,
            &format!("redis_connected_slaves{{mofang_member=\"{m_c0}\"}}"),
        )
        .await?;
    assert_eq!(value(&slaves)?, 1.0);
    assert_eq!(label(&slaves, "mofang_instance"), cache);
    assert_eq!(label(&slaves, "role"), "primary");
    let link = prom
        .one(
            &http,
            &format!("redis_master_link_up{{mofang_member=\"{m_c1}\"}}"),
        )
        .await?;
    assert_eq!(value(&link)?, 1.0);
    assert_eq!(label(&link, "role"), "replica");
    let info = prom
        .one(
            &http,
            &format!("redis_instance_info{{mofang_member=\"{m_c1}\"}}"),
        )
        .await?;
    assert_eq!(label(&info, "role"), "slave", "redis_exporter's word");
    assert!(label(&info, "redis_version").starts_with("7.0"), "{info}");
    let node_mem = prom.one(&http, "node_memory_MemAvailable_bytes").await?;
    assert!(value(&node_mem)? > 0.0);
    let reserved = prom.one(&http, "mofang_volume_reserved_bytes").await?;
    assert_eq!(value(&reserved)?, 3.0 * 512.0 * MIB as f64);
    drop(prom);

    // A hung database (container frozen: TCP accepted, nothing answered) shows down within its
    // deadline, and everything else is still served.
    let frozen = db_status.container_id.clone();
    let paused = Command::new("docker").args(["pause", &frozen]).status()?;
    ensure!(paused.success(), "docker pause failed");
    // Scrapes are served from the last collections: while the frozen member's collection waits
    // out its 10 s deadline, a scrape still answers at once (with a 3 s client, several times).
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    for _ in 0..3 {
        let t = quick
            .get(&metrics_url)
            .send()
            .await
            .context("a scrape while a member is frozen must not wait on its database")?
            .text()
            .await?;
        ensure!(
            sample(&t, "redis_up", &[&format!("mofang_member=\"{m_c0}\"")]) == Some(1.0),
            "redis_up of {m_c0} during the freeze"
        );
        // The cgroup and /proc files too are served as last read in the background (decision
        // 154): their age is that reading's, never the scrape's 0, and within the cadence.
        let files_age = sample(
            &t,
            "mofang_agent_collect_age_seconds",
            &["source=\"files\""],
        );
        ensure!(
            files_age.is_some_and(|a| a > 0.0 && a < 30.0),
            "age of the file reading served: {files_age:?}"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let r = eventually(
        "frozen member shows down",
        Duration::from_secs(30),
        || async {
            let t = http.get(&metrics_url).send().await?.text().await?;
            let db_up = sample(&t, "mysql_up", &[&format!("mofang_member=\"{m_db}\"")]);
            ensure!(
                db_up == Some(0.0),
                "mysql_up of the frozen member: {db_up:?}"
            );
            for m in [&m_c0, &m_c1] {
                let up = sample(&t, "redis_up", &[&format!("mofang_member=\"{m}\"")]);
                ensure!(up == Some(1.0), "redis_up of {m}: {up:?}");
            }
            let ws = sample(
                &t,
                "container_memory_working_set_bytes",
                &[&format!("container_label_mofang_member=\"{m_db}\"")],
            );
            ensure!(
                ws.is_some_and(|v| v > 0.0),
                "frozen container's memory: {ws:?}"
            );
            Ok(())
        },
    )
    .await;
    let _ = Command::new("docker").args(["unpause", &frozen]).status();
    r?;

    // The scheduler stops acknowledging: once the lease has run out the agent says it is not
    // ready, and why.
    fake.refuse_heartbeats(true);
    let why = eventually(
        "the agent reports itself unready",
        Duration::from_secs(60),
        || async {
            let resp = http.get(format!("{}/v1/health", agent.http)).send().await?;
            ensure!(resp.status() == 503, "health: {}", resp.status());
            let v: Value = resp.json().await?;
            Ok(v)
        },
    )
    .await?;
    ensure!(
        why["ready"] == false
            && why["reasons"].as_array().is_some_and(|r| r
                .iter()
                .any(|r| r.as_str().is_some_and(|r| r.contains("lease")))),
        "{why}"
    );
    Ok(())
}

#[test]
fn alert_rules_pass_their_promtool_tests() -> Result<()> {
    let dir = monitoring();
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(dir.join("rules/mofang.rules.yml"))
        .output()
        .context("running promtool")?;
    ensure!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(dir.join("rules/mofang.rules.test.yml"))
        .output()
        .context("running promtool")?;
    ensure!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn scrape_configs_and_alertmanager_config_are_valid() -> Result<()> {
    let dir = monitoring();
    let check = |cfg: &str| -> Result<(bool, String)> {
        let out = Command::new("promtool")
            .args(["check", "config", "--syntax-only"])
            .arg(dir.join(cfg))
            .output()
            .context("running promtool")?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    };
    let (ok, out) = check("prometheus/static.yml")?;
    ensure!(ok, "promtool check config static.yml:\n{out}");
    // Debian 12's Prometheus is built without Consul service discovery ("Disable Consul SD"
    // in its changelog), so its promtool rejects exactly the `consul_sd_configs` fields; any
    // other mistake in the file would be listed too and fails the test.
    let (ok, out) = check("prometheus/consul.yml")?;
    if !ok {
        let errors: Vec<&str> = out
            .lines()
            .filter(|l| l.trim_start().starts_with("line "))
            .collect();
        ensure!(
            !errors.is_empty()
                && errors
                    .iter()
                    .all(|l| l.contains("field consul_sd_configs not found")),
            "promtool check config consul.yml:\n{out}"
        );
    }
    let out = Command::new("amtool")
        .arg("check-config")
        .arg(dir.join("alertmanager/alertmanager.yml"))
        .output()
        .context("running amtool (Debian package `prometheus-alertmanager`)")?;
    ensure!(
        out.status.success(),
        "amtool check-config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Critical database alerts page, whichever node raised them; host alerts route by node.
    for (labels, receiver) in [
        (
            &[
                "alertname=MofangDatabaseDown",
                "severity=critical",
                "mofang_instance=orders",
            ][..],
            "dba-pager",
        ),
        (
            &[
                "alertname=MofangReplicationLagging",
                "severity=warning",
                "mofang_instance=orders",
            ][..],
            "dba-oncall",
        ),
        (
            &["alertname=MofangAgentDown", "severity=critical", "node=db3"][..],
            "dba-pager",
        ),
        (
            &[
                "alertname=MofangDiskNearlyFull",
                "severity=warning",
                "node=db3",
            ][..],
            "dba-oncall",
        ),
    ] {
        let out = Command::new("amtool")
            .args(["config", "routes", "test", "--config.file"])
            .arg(dir.join("alertmanager/alertmanager.yml"))
            .arg(format!("--verify.receivers={receiver}"))
            .args(labels)
            .output()?;
        ensure!(
            out.status.success(),
            "{labels:?} should reach {receiver}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[test]
fn dashboards_are_grafana_json_over_agent_metrics() -> Result<()> {
    let dir = monitoring().join("grafana");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        seen += 1;
        let v: Value = serde_json::from_slice(&std::fs::read(&path)?)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        ensure!(v["title"].is_string(), "{}: no title", path.display());
        let panels = v["panels"].as_array().context("panels")?;
        ensure!(!panels.is_empty(), "{}: no panels", path.display());
        for p in panels {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or("");
                ensure!(
                    !expr.is_empty(),
                    "{}: panel {} without expr",
                    path.display(),
                    p["title"]
                );
            }
        }
    }
    ensure!(
        seen >= 2,
        "expected the instance and host dashboards in {}",
        dir.display()
    );
    Ok(())
}
