//! Failover benchmark (`make bench-failover`, issue 6 point 9): repeated failovers of one
//! instance under a Jepsen-style writer, with the RTO a client sees and the acknowledged
//! writes lost in each round; Redis Sentinel (Debian's `redis-sentinel`) on the same Redis
//! image as the side-by-side anchor. Prints figures; asserts no timing.
//!
//! RTO: from the last write acknowledged by the old primary to the first write acknowledged
//! by the new one, the writer finding the primary as a client would (the instance's
//! `primary` in the API, or `SENTINEL get-master-addr-by-name`) on every reconnect.
//!
//! Usage: bench_failover [--rounds N] [--scenarios a,b,...] [--logs DIR] [--minutes M]
//!                       [--stress] [--soak] [--agents NAME=PATH,NAME=PATH]
//! `--agents` runs every Mofang scenario once per named `mofang-agent` binary, one after the
//! other in the same run (side by side: before and after a change), each row labelled
//! `<scenario> [<name>]`; without it the agents are the workspace's.
//! Scenarios: mariadb-kill, mariadb-partition, redis-kill, sentinel-kill (the default set),
//! and any of them with `-production` appended (the daemons' default timers: lease 10 s,
//! node_ttl 5 s), e.g. mariadb-partition-production, mariadb-pause-production.
//! Every `<engine>-<fault>` runs, for engine `mariadb` or `redis` and fault `kill`, `stop`,
//! `pause`, `partition`, `agent-kill`, `scheduler-kill`, `leader-kill` or `double-kill` (see
//! [`Fault`]). `leader-kill` runs three schedulers on one Consul (a `consul` binary, installed
//! by scripts/setup); the others one scheduler with its SQLite store.
//!
//! `--soak` (`make soak-failover`) runs every fault on both engines, rounds taken in turn
//! across scenarios until `--rounds` each or `--minutes` in all; `--stress` saturates every
//! core with `stress-ng` meanwhile. After each round every member must hold exactly the
//! primary's set (converged). The run exits non-zero if an acknowledged write was lost where
//! the mode promises none (MariaDB semi-sync), if a write appeared that was never attempted,
//! or if members did not converge.

use anyhow::{bail, Context, Result};
use mofang_scheduler::client;
use mofang_scheduler::cluster::InstanceView;
use mofang_tests::cluster::{TestNetwork, Timings};
use mofang_tests::coord::ConsulProcess;
use mofang_tests::faults::{isolate, rejoin};
use mofang_tests::scenario::{
    container_of, docker_cli, primary_of, set_contents, Env, PrimarySource, SetOutcome, SetWriter,
};
use mofang_tests::{eventually, test_label, unique_name};
use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Writes acknowledged before each fault, and after the new primary took over.
const WARMUP_ACKS: u64 = 200;
const AFTER_ACKS: u64 = 200;
/// Ids of round `r` are `(r + 1) * ID_BLOCK + 1 ...`, so rounds never collide.
const ID_BLOCK: u64 = 10_000_000;

/// The agent stops restarting a member after 5 restarts within 10 minutes (its crash-loop
/// guard, `MAX_CRASH_RESTARTS` in agent/src/reconcile/decide.rs), and a killed or stopped
/// container counts as a crash: scenarios that end containers move to a fresh instance
/// before any one member would die more than this many times. Counted per member, not per
/// instance: the primary that dies is the most advanced replica of the round before, and the
/// same two members can take turns (soak, redis-agent-kill: stopped at round 18 by the guard
/// when deaths were counted per instance).
const DEATHS_PER_MEMBER: usize = 4;

/// Mofang's budget to call an unanswering database dead: `failover.failed_checks` (3)
/// consecutive failed checks, one every 250 ms. Sentinel's `down-after-milliseconds`.
const DETECTION_BUDGET_MS: u64 = 750;
/// Sentinel refuses a new failover of one master name within twice this (default 180 s,
/// which would allow one failover every 6 minutes); it also bounds a stuck failover.
const SENTINEL_FAILOVER_TIMEOUT_MS: u64 = 5000;

fn str_arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// One failover.
#[derive(Debug, Clone)]
struct Round {
    /// Client-observed: last ack by the old primary to first ack by the new one.
    rto: Duration,
    /// Fault to the API (or Sentinel) naming the new primary.
    switched: Duration,
    /// Acknowledged writes in this round.
    acked: usize,
    /// Acknowledged writes missing on the new primary.
    lost: usize,
    /// Fault to the acknowledgement of the last lost write (partitions: how long the cut-off
    /// primary kept acknowledging writes; the bound is its lease), and which server
    /// acknowledged it ("old primary", "new primary" or its address).
    lost_window: Option<(Duration, Duration, String)>,
    /// Writes acknowledged after the fault by a server other than the new primary: how many,
    /// the last one's time after the fault and who ("old primary" or its address). A frozen
    /// or cut-off primary should acknowledge nothing once it is frozen or fenced.
    late_acks: Option<(usize, Duration, String)>,
    /// Writes on the new primary never attempted.
    unexpected: usize,
    /// End of the round to the instance being whole again (old primary a replica).
    healed: Duration,
    /// Every member holds exactly the primary's set of this round's ids.
    converged: bool,
    /// `leader-kill`: the leader's `kill -9` to another scheduler (or the restarted one)
    /// saying it leads.
    new_leader: Option<Duration>,
    /// Members whose container the fault ended (kill, stop), for the crash-loop budget.
    ended: Vec<String>,
}

struct Scenario {
    name: String,
    what: String,
    rounds: Vec<Round>,
    /// A soak goes on to the next scenario after one fails: why this one stopped.
    error: Option<String>,
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The RTO of one round from the writer's acknowledgements: from the last write acknowledged
/// by another primary to the first acknowledged by `new` after `fault`. After two faults in a
/// row that is the second outage (the interim primary's last write), and the final primary
/// can be the first one again: when the interim primary was killed before it acknowledged
/// anything, every acknowledgement is the first primary's, and the outage runs from its last
/// one before the fault.
fn rto_of(out: &SetOutcome, new: &str, fault: Instant) -> Result<Duration> {
    let first_new = out
        .acks
        .iter()
        .find(|a| a.at > fault && &*a.primary == new)
        .map(|a| a.at)
        .with_context(|| format!("no write acknowledged by the new primary {new}"))?;
    let last_before = out
        .acks
        .iter()
        .rev()
        .find(|a| a.at <= first_new && &*a.primary != new)
        .or_else(|| out.acks.iter().rev().find(|a| a.at <= fault))
        .map(|a| a.at)
        .context("no write acknowledged before the fault")?;
    Ok(first_new.saturating_duration_since(last_before))
}

/// (lost, unexpected) of one round: `present` is the new primary's set.
fn count_loss(out: &SetOutcome, present: &BTreeSet<u64>, first_id: u64) -> (usize, usize) {
    let mine: BTreeSet<u64> = present
        .range(first_id..first_id + ID_BLOCK)
        .copied()
        .collect();
    (out.lost(&mine).len(), out.unexpected(&mine).len())
}

/// Fault to the first and the last acknowledgement of a lost write, if any was lost, and
/// who acknowledged the last one.
fn lost_window(
    out: &SetOutcome,
    present: &BTreeSet<u64>,
    first_id: u64,
    fault: Instant,
    (old, new): (&str, &str),
) -> Option<(Duration, Duration, String)> {
    let lost: Vec<_> = out
        .acks
        .iter()
        .filter(|a| a.id >= first_id && a.id < first_id + ID_BLOCK && !present.contains(&a.id))
        .collect();
    let first = lost.iter().map(|a| a.at).min()?;
    let last = lost.iter().max_by_key(|a| a.at)?;
    let by = match &*last.primary {
        p if p == old => "the old primary".to_owned(),
        p if p == new => "the new primary".to_owned(),
        p => p.to_owned(),
    };
    let since = |t: Instant| {
        if t >= fault {
            t - fault
        } else {
            Duration::ZERO
        }
    };
    Some((since(first), since(last.at), by))
}

/// Past this after the fault, an acknowledgement by anyone but the new primary is reported
/// (a write in flight when the fault struck may still be answered just after it).
const LATE_AFTER: Duration = Duration::from_millis(100);

/// Acknowledgements after `after` by anyone but the new primary: count, last one's time after
/// the fault, and by whom.
fn late_acks(
    out: &SetOutcome,
    fault: Instant,
    after: Duration,
    (old, new): (&str, &str),
) -> Option<(usize, Duration, String)> {
    let late: Vec<_> = out
        .acks
        .iter()
        .filter(|a| a.at > fault + after && &*a.primary != new)
        .collect();
    let last = late.last()?;
    let by = if &*last.primary == old {
        "the old primary".to_owned()
    } else {
        last.primary.to_string()
    };
    Some((late.len(), last.at.saturating_duration_since(fault), by))
}

/// `docker` with `args` on a blocking thread: run on a runtime worker, the command (seconds
/// under a saturated CPU) held up the writer's task queued behind it, which then recorded
/// acknowledgements that had arrived before the fault as arriving seconds after it.
async fn docker_off_runtime(args: &[&str]) -> Result<String> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker_cli(&args)
    })
    .await?
}

fn print_round(scenario: &str, i: usize, r: &Round) {
    println!(
        "  {scenario} round {:>2}: RTO {:>7}  new primary named after {:>7}  acked {:>5}  lost {}{}  unexpected {}  whole again after {}  converged {}{}{}",
        i + 1,
        secs(r.rto),
        secs(r.switched),
        r.acked,
        r.lost,
        r.lost_window
            .as_ref()
            .map_or(String::new(), |(first, last, by)| format!(
                " (acknowledged {} to {} after the fault, the last by {by})",
                secs(*first),
                secs(*last)
            )),
        r.unexpected,
        secs(r.healed),
        if r.converged { "yes" } else { "NO" },
        r.late_acks
            .as_ref()
            .map_or(String::new(), |(n, last, by)| format!(
                "  late acks {n} (last {} after the fault, by {by})",
                secs(*last)
            )),
        r.new_leader
            .map_or(String::new(), |d| format!("  new leader {} after the kill", secs(d))),
    );
}

// ---------------------------------------------------------------------------------------
// Mofang

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// `docker kill` of the primary's container.
    Kill,
    /// The primary's host: its agent's link to the scheduler cut, its container cut off
    /// from the other members (iptables); healed after the failover.
    Partition,
    /// `docker stop` of the primary's container (SIGTERM, a clean shutdown).
    Stop,
    /// `docker pause` of the primary's container (a frozen server); unpaused after the
    /// failover, it must rejoin as a replica.
    Pause,
    /// `docker kill` of the primary's container and `kill -9` of its agent: the scheduler
    /// hears nothing more from that host; the agent comes back after the failover.
    AgentKill,
    /// `docker kill` of the primary's container, then `kill -9` of the scheduler as the
    /// failover starts, restarted at once on the same data: the new process finishes the job.
    SchedulerKill,
    /// Three schedulers on one Consul: `docker kill` of the primary's container, then
    /// `kill -9` of the leading scheduler as the failover starts, restarted at once on the
    /// same data: the new leader (elected once the dead one's Consul session is gone)
    /// finishes the job.
    LeaderKill,
    /// `docker kill` of the primary, and of the new primary as soon as it is healthy, before
    /// the first one has rejoined: the third member must take over with every write.
    DoubleKill,
}

impl Fault {
    const ALL: [Fault; 8] = [
        Fault::Kill,
        Fault::Stop,
        Fault::Pause,
        Fault::Partition,
        Fault::AgentKill,
        Fault::SchedulerKill,
        Fault::LeaderKill,
        Fault::DoubleKill,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Partition => "partition",
            Fault::Stop => "stop",
            Fault::Pause => "pause",
            Fault::AgentKill => "agent-kill",
            Fault::SchedulerKill => "scheduler-kill",
            Fault::LeaderKill => "leader-kill",
            Fault::DoubleKill => "double-kill",
        }
    }

    /// Containers this fault ends (the agent's crash-loop guard counts them).
    fn deaths(self) -> usize {
        match self {
            Fault::Partition | Fault::Pause => 0,
            Fault::DoubleKill => 2,
            _ => 1,
        }
    }
}

/// How long an instance must look whole before the next fault: a member's first report
/// after it rejoined can look healthy for a moment before its replication fails (it is then
/// found diverged and rebuilt).
const SETTLED_FOR: Duration = Duration::from_millis(1500);

/// `GET /v1/instances/{name}` from the first scheduler that answers.
async fn instance(env: &Env, name: &str) -> Result<InstanceView> {
    env.instance(name).await
}

/// An instance view as JSON, for a message.
fn json_of(v: &InstanceView) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("{e}"))
}

/// Why an instance view is not whole: every member healthy in its assigned role at the
/// instance's epoch, every replica replicating (lag known), and for MariaDB every member at
/// the same GTID position (the writer is stopped, so replicas catch up).
fn not_whole(v: &InstanceView) -> Option<String> {
    let members_ok = v.members.iter().all(|m| {
        m.healthy
            && m.role == m.observed_role
            && m.epoch == v.epoch
            && (m.role == "primary" || (0..=1).contains(&m.lag_seconds))
    });
    let positions: BTreeSet<&str> = v.members.iter().map(|m| m.position.as_str()).collect();
    let caught_up = v.engine != "mariadb" || positions.len() == 1;
    (v.status != "ready" || !members_ok || !caught_up).then(|| json_of(v))
}

/// True when every member of a whole instance holds exactly the primary's ids of this round
/// (read at each member with the application account; replicas serve reads).
async fn converged(whole: &InstanceView, engine: &str, pw: &str, first_id: u64) -> Result<bool> {
    let addr = &primary_of(whole)?.address;
    let round = |s: BTreeSet<u64>| -> BTreeSet<u64> {
        s.range(first_id..first_id + ID_BLOCK).copied().collect()
    };
    let want = round(set_contents(engine, addr, pw).await?);
    for m in &whole.members {
        let a = m.address.as_str();
        // A replica may still apply the last events: give it a moment.
        let ok = eventually("replica converged", Duration::from_secs(20), || async {
            let have = round(set_contents(engine, a, pw).await?);
            if have == want {
                Ok(())
            } else {
                bail!("{} of {} ids", have.len(), want.len())
            }
        })
        .await
        .is_ok();
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Waits until the instance has been whole (see [`not_whole`]) for [`SETTLED_FOR`]: ready
/// for the next fault.
async fn wait_whole(env: &Env, name: &str, limit: Duration) -> Result<InstanceView> {
    let until = Instant::now() + limit;
    let mut since: Option<Instant> = None;
    loop {
        let why = match instance(env, name).await {
            Ok(v) => match not_whole(&v) {
                None => {
                    if since.get_or_insert_with(Instant::now).elapsed() >= SETTLED_FOR {
                        return Ok(v);
                    }
                    None
                }
                Some(why) => Some(why),
            },
            Err(e) => Some(format!("{e:#}")),
        };
        if let Some(why) = why {
            since = None;
            if Instant::now() > until {
                bail!("instance not whole again within {limit:?}: {why}");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn mofang_round(
    env: &mut Env,
    name: &str,
    engine: &str,
    pw: &str,
    fault: Fault,
    round: usize,
) -> Result<Round> {
    let inst = wait_whole(env, name, Duration::from_secs(180)).await?;
    let epoch = inst.epoch;
    let old = primary_of(&inst)?;
    let old_id = old.id.clone();
    let old_addr = old.address.clone();
    let first_id = (round as u64 + 1) * ID_BLOCK + 1;

    let writer = SetWriter::start_from(PrimarySource::api(env, name), engine, pw, first_id).await?;
    writer
        .wait_acked(WARMUP_ACKS, Duration::from_secs(60))
        .await?;
    let container = container_of(&old_id);
    let agent = env.agent_running(&inst, &old_id)?;
    let leader = match fault {
        Fault::LeaderKill => env.leader(Duration::from_secs(60)).await?,
        _ => 0,
    };
    let mut new_leader = None;
    let fault_at = Instant::now();
    match fault {
        Fault::Kill | Fault::DoubleKill => {
            docker_off_runtime(&["kill", &container]).await?;
        }
        Fault::Stop => {
            docker_off_runtime(&["stop", "-t", "5", &container]).await?;
        }
        Fault::Pause => {
            // On a saturated host runc's cgroup-v1 freezer may give up ("unable to freeze")
            // and leave the container running: the fault was not made, so it is made again.
            let mut tries = 0;
            while let Err(e) = docker_off_runtime(&["pause", &container]).await {
                tries += 1;
                if tries >= 5 || !e.to_string().contains("unable to freeze") {
                    return Err(e);
                }
                println!("    (docker pause: unable to freeze under load; trying again)");
            }
        }
        Fault::AgentKill => {
            docker_off_runtime(&["kill", &container]).await?;
            env.agents[agent].kill9()?;
        }
        Fault::SchedulerKill => {
            docker_off_runtime(&["kill", &container]).await?;
            // The failover is detected within a few hundred ms: kill the scheduler in the
            // middle of it, and start it again on the same data.
            tokio::time::sleep(Duration::from_millis(400)).await;
            env.sched.restart()?;
        }
        Fault::LeaderKill => {
            docker_off_runtime(&["kill", &container]).await?;
            tokio::time::sleep(Duration::from_millis(400)).await;
            let killed = Instant::now();
            env.scheduler_mut(leader)?.restart()?;
            env.leader(Duration::from_secs(120)).await?;
            new_leader = Some(killed.elapsed());
        }
        Fault::Partition => {
            let peers: Vec<String> = inst
                .members
                .iter()
                .filter(|m| m.id != old_id)
                .filter_map(|m| Some(m.address.rsplit_once(':')?.0.to_owned()))
                .collect();
            env.links[agent].cut();
            isolate(&container, &peers)?;
        }
    }
    // When the API names another primary (what a reconnecting client gets). A leader just
    // elected may answer an error for a moment.
    let switched = loop {
        let v = instance(env, name).await;
        let p = v.as_ref().map_or("", |v| v.primary.as_str());
        if !p.is_empty() && p != old_addr {
            break fault_at.elapsed();
        }
        if fault_at.elapsed() > Duration::from_secs(120) {
            bail!(
                "no new primary named within 120 s: {}",
                v.map_or_else(|e| format!("{e:#}"), |v| json_of(&v))
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut after = env
        .new_primary(name, epoch, Duration::from_secs(120))
        .await?;
    let mut ended = if fault.deaths() > 0 {
        vec![old_id.clone()]
    } else {
        Vec::new()
    };
    if fault == Fault::DoubleKill {
        // The new primary dies too, before the first one is back.
        let second_id = primary_of(&after)?.id.clone();
        ended.push(second_id.clone());
        let second_epoch = after.epoch;
        docker_off_runtime(&["kill", &container_of(&second_id)]).await?;
        after = env
            .new_primary(name, second_epoch, Duration::from_secs(120))
            .await?;
    }
    let new_addr = primary_of(&after)?.address.clone();
    let n = writer.acked();
    writer
        .wait_acked(n + AFTER_ACKS, Duration::from_secs(60))
        .await?;
    let out = writer.stop().await?;
    let present = set_contents(engine, &new_addr, pw).await?;
    let (lost, unexpected) = count_loss(&out, &present, first_id);
    let lost_window = lost_window(&out, &present, first_id, fault_at, (&old_addr, &new_addr));
    let late_acks = late_acks(&out, fault_at, LATE_AFTER, (&old_addr, &new_addr));
    let rto = rto_of(&out, &new_addr, fault_at)?;

    let heal_at = Instant::now();
    match fault {
        Fault::Partition => {
            rejoin(&container)?;
            env.links[agent].heal();
        }
        Fault::Pause => {
            mofang_tests::scenario::unpause(&container)?;
        }
        Fault::AgentKill => env.agents[agent].restart()?,
        _ => {}
    }
    let whole = wait_whole(env, name, Duration::from_secs(180)).await?;
    let converged = converged(&whole, engine, pw, first_id).await?;
    Ok(Round {
        rto,
        switched,
        acked: out.acked.len(),
        lost,
        lost_window,
        late_acks,
        unexpected,
        healed: heal_at.elapsed(),
        converged,
        new_leader,
        ended,
    })
}

async fn mofang_scenario(
    label: String,
    engine: &str,
    fault: Fault,
    timings: Timings,
    rounds: usize,
    deadline: Option<Instant>,
) -> Result<Scenario> {
    // The bench fails over the same instance every round: no block period, no replacement
    // of the partitioned host's members while it is cut off.
    let extra = format!(
        "[failover]\nlease_ttl_ms = {}\nfailover_block_period_ms = 0\nreplace_after_ms = 3600000\n",
        timings.lease_ttl_ms
    );
    // Declared before the environment, so dropped after its schedulers.
    let consul = match fault {
        Fault::LeaderKill => Some(ConsulProcess::start().await?),
        _ => None,
    };
    let mut env = match &consul {
        Some(c) => Env::start_ha(3, &c.http, &extra, &timings).await?,
        None => Env::start_timed(3, &extra, &timings).await?,
    };
    let what = format!(
        "{engine}, 1 primary + 2 replicas on 3 agents{}; agents' lease {} s, node_ttl {} s, heartbeats every {} ms",
        if consul.is_some() {
            ", 3 schedulers on one Consul (session TTL 10 s, lock-delay 1 s)"
        } else {
            ""
        },
        timings.lease_ttl_ms as f64 / 1000.0,
        timings.node_ttl_ms as f64 / 1000.0,
        timings.heartbeat_interval_ms
    );
    println!("{label}: {what}");
    let mut out = Vec::new();
    let result = async {
        let mut instance: Option<(String, String)> = None;
        let mut deaths: HashMap<String, usize> = HashMap::new();
        for r in 0..rounds {
            if r > 0 && deadline.is_some_and(|d| Instant::now() > d) {
                println!("  {label}: time is up after {r} rounds");
                break;
            }
            // The next victim is whoever is primary then: assume the most-killed member.
            let worst = deaths.values().copied().max().unwrap_or(0);
            if worst + fault.deaths() > DEATHS_PER_MEMBER {
                deaths.clear();
                if let Some((old, _)) = instance.take() {
                    let old = old.as_str();
                    // As before, whatever it answers: only a scheduler not reached fails.
                    let deleted = env.on_any(|c| async move { c.delete_instance(old).await });
                    if let Err(e @ client::Error::Send { .. }) = deleted.await {
                        return Err(e.into());
                    }
                }
            }
            let (name, pw) = match &instance {
                Some(i) => i.clone(),
                None => {
                    let name = unique_name("bench");
                    let t = Instant::now();
                    env.create(&name, engine, 2).await?;
                    println!("  {label}: instance {name} ready in {}", secs(t.elapsed()));
                    let pw = env.app_password(&name).await?;
                    instance.insert((name, pw)).clone()
                }
            };
            let round = mofang_round(&mut env, &name, engine, &pw, fault, r)
                .await
                .with_context(|| format!("{label} round {}", r + 1))?;
            for m in &round.ended {
                *deaths.entry(m.clone()).or_default() += 1;
            }
            print_round(&label, r, &round);
            out.push(round);
        }
        anyhow::Ok(())
    }
    .await;
    if let Some(dir) = str_arg("--logs") {
        // For a breakdown of each failover (lease lost, decision, promotion) afterwards.
        std::fs::create_dir_all(&dir)?;
        for (i, a) in env.agents.iter().enumerate() {
            std::fs::write(format!("{dir}/{label}-agent{i}.log"), a.log())?;
        }
        std::fs::write(format!("{dir}/{label}-scheduler.log"), env.sched.log())?;
        for (i, s) in env.peers.iter().enumerate() {
            std::fs::write(format!("{dir}/{label}-scheduler{}.log", i + 1), s.log())?;
        }
    }
    Ok(Scenario {
        name: label.to_owned(),
        what,
        rounds: out,
        error: result.err().map(|e| format!("{e:#}")),
    })
}

// ---------------------------------------------------------------------------------------
// Redis Sentinel

const MASTER: &str = "mymaster";

/// Three `mofang/redis:7.0` containers (primary + 2 replicas) at fixed addresses on a
/// bench-owned network, and three `redis-sentinel` processes on loopback.
struct SentinelSetup {
    containers: Vec<String>,
    ips: Vec<String>,
    sentinels: Vec<Child>,
    sentinel_addrs: Vec<String>,
    password: String,
    // Dropped after the containers are removed (field order).
    _net: TestNetwork,
    _dir: tempfile::TempDir,
}

impl Drop for SentinelSetup {
    fn drop(&mut self) {
        for c in &mut self.sentinels {
            let _ = c.kill();
            let _ = c.wait();
        }
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", "-v", c]).output();
        }
    }
}

/// A labelled bridge network with a subnet of Docker's choosing (needed for fixed
/// addresses): Docker picks a free subnet, then the network is made again with it.
fn network_with_subnet() -> Result<(TestNetwork, std::net::Ipv4Addr)> {
    let probe = TestNetwork::create(&unique_name("snet"))?;
    let subnet = docker_cli(&[
        "network",
        "inspect",
        "-f",
        "{{(index .IPAM.Config 0).Subnet}}",
        &probe.name,
    ])?;
    let name = probe.name.clone();
    drop(probe);
    let (k, v) = test_label();
    docker_cli(&[
        "network",
        "create",
        "--driver",
        "bridge",
        "--subnet",
        &subnet,
        "--label",
        &format!("{k}={v}"),
        &name,
    ])?;
    let base: std::net::Ipv4Addr = subnet
        .split_once('/')
        .context("subnet")?
        .0
        .parse()
        .context("subnet address")?;
    Ok((TestNetwork { name }, base))
}

fn redis_conf(password: &str, replica_of: Option<&str>) -> String {
    // As the agent renders it (agent/src/engine/redis.rs), with a 384 MiB memory limit.
    let maxmemory = (384u64 << 20) / 4 * 3;
    let mut c = format!(
        "bind 0.0.0.0\nport 6379\nprotected-mode no\ndaemonize no\ndir /var/lib/redis\n\
         appendonly yes\nappendfsync everysec\nmaxmemory {maxmemory}\n\
         maxmemory-policy noeviction\nreplica-read-only yes\nrepl-timeout 5\n\
         repl-ping-replica-period 1\nmasteruser admin\nmasterauth {password}\n\
         user default off\nuser admin on >{password} ~* &* +@all\n\
         user app on >{password} ~* &* +@all -@admin -@dangerous\n"
    );
    if let Some(p) = replica_of {
        c.push_str(&format!("replicaof {p} 6379\n"));
    }
    c
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl SentinelSetup {
    async fn start() -> Result<SentinelSetup> {
        let _ = mofang_tests::docker().await;
        if Command::new("redis-sentinel")
            .arg("--version")
            .output()
            .is_err()
        {
            bail!("redis-sentinel not found: run scripts/setup (Debian package redis-sentinel)");
        }
        let dir = tempfile::Builder::new()
            .prefix("mofang-sentinel-bench-")
            .tempdir_in("/var/tmp")?;
        let (net, base) = network_with_subnet()?;
        let base = u32::from(base);
        let password = format!("bench{}", std::process::id());
        let (k, v) = test_label();
        let ips: Vec<String> = (0..3)
            .map(|i| std::net::Ipv4Addr::from(base + 10 + i).to_string())
            .collect();
        let mut setup = SentinelSetup {
            containers: Vec::new(),
            ips: ips.clone(),
            sentinels: Vec::new(),
            sentinel_addrs: Vec::new(),
            password: password.clone(),
            _net: net,
            _dir: dir,
        };
        use std::os::unix::fs::PermissionsExt;
        for (i, ip) in ips.iter().enumerate() {
            // Sentinel rewrites the config (CONFIG REWRITE) when it repoints a member: the
            // directory is writable by the image's redis user.
            let cdir = setup._dir.path().join(format!("redis{i}"));
            std::fs::create_dir(&cdir)?;
            let conf = cdir.join("redis.conf");
            std::fs::write(&conf, redis_conf(&password, (i > 0).then_some(&ips[0])))?;
            std::fs::set_permissions(&cdir, std::fs::Permissions::from_mode(0o777))?;
            std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o666))?;
            let name = unique_name("sentinel-redis");
            docker_cli(&[
                "run",
                "-d",
                "--name",
                &name,
                "--label",
                &format!("{k}={v}"),
                "--network",
                &setup._net.name,
                "--ip",
                ip,
                "--cpus",
                "0.5",
                "--memory",
                "384m",
                "-v",
                &format!("{}:/etc/mofang", cdir.display()),
                "mofang/redis:7.0",
            ])?;
            setup.containers.push(name);
        }
        for i in 0..3 {
            let port = free_port()?;
            let sdir = setup._dir.path().join(format!("sentinel{i}"));
            std::fs::create_dir(&sdir)?;
            let conf = sdir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n\
                     dir {dir}\nlogfile {dir}/sentinel.log\n\
                     sentinel announce-ip 127.0.0.1\nsentinel announce-port {port}\n\
                     sentinel monitor {MASTER} {ip} 6379 2\n\
                     sentinel auth-user {MASTER} admin\nsentinel auth-pass {MASTER} {password}\n\
                     sentinel down-after-milliseconds {MASTER} {DETECTION_BUDGET_MS}\n\
                     sentinel failover-timeout {MASTER} {SENTINEL_FAILOVER_TIMEOUT_MS}\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    dir = sdir.display(),
                    ip = ips[0],
                ),
            )?;
            let child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting redis-sentinel")?;
            setup.sentinels.push(child);
            setup.sentinel_addrs.push(format!("127.0.0.1:{port}"));
        }
        // The sentinels find each other through the master's hello channel.
        eventually(
            "sentinels know each other",
            Duration::from_secs(60),
            || async {
                for s in &setup.sentinel_addrs {
                    let others: Vec<Vec<String>> = sentinel_cmd(s, &["sentinels", MASTER]).await?;
                    if others.len() != 2 {
                        bail!("{s} knows {} other sentinels", others.len());
                    }
                }
                Ok(())
            },
        )
        .await?;
        Ok(setup)
    }

    fn source(&self) -> PrimarySource {
        PrimarySource::Sentinel {
            sentinels: self.sentinel_addrs.clone(),
            master: MASTER.into(),
        }
    }

    fn container_at(&self, addr: &str) -> Result<&str> {
        let ip = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        self.ips
            .iter()
            .position(|i| i == ip)
            .map(|i| self.containers[i].as_str())
            .with_context(|| format!("no container at {addr}"))
    }

    /// INFO replication of the member at `ip`, as key/value pairs.
    async fn info(&self, ip: &str) -> Result<std::collections::HashMap<String, String>> {
        tokio::time::timeout(Duration::from_secs(2), async {
            let client =
                redis::Client::open(format!("redis://admin:{}@{ip}:6379/", self.password))?;
            let mut c = client.get_multiplexed_async_connection().await?;
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut c)
                .await?;
            anyhow::Ok(
                info.lines()
                    .filter_map(|l| l.trim().split_once(':'))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            )
        })
        .await
        .context("INFO timed out")?
    }

    /// Waits until every sentinel names the same master and counts both replicas up (not
    /// down, not disconnected), and both replicas replicate from that master: ready for the
    /// next fault.
    async fn wait_whole(&self, limit: Duration) -> Result<String> {
        eventually("sentinel set whole again", limit, || async {
            let mut master = None;
            for s in &self.sentinel_addrs {
                let (h, p): (String, u16) =
                    sentinel_cmd(s, &["get-master-addr-by-name", MASTER]).await?;
                let a = format!("{h}:{p}");
                if master.get_or_insert_with(|| a.clone()) != &a {
                    bail!("sentinels disagree on the master");
                }
                let replicas: Vec<Vec<String>> = sentinel_cmd(s, &["replicas", MASTER]).await?;
                let up = replicas
                    .iter()
                    .filter(|r| {
                        let f = |k: &str| {
                            r.chunks(2)
                                .find(|kv| kv[0] == k)
                                .and_then(|kv| kv.get(1).cloned())
                                .unwrap_or_default()
                        };
                        // Its link state comes from INFO every 10 s: checked below, directly.
                        f("flags") == "slave"
                    })
                    .count();
                if up != 2 {
                    bail!("{s} sees {up} healthy replicas");
                }
            }
            let master = master.context("no sentinel")?;
            let mip = master.rsplit_once(':').map_or(master.as_str(), |(h, _)| h);
            let info = self.info(mip).await?;
            if info.get("role").map(String::as_str) != Some("master")
                || info.get("connected_slaves").map(String::as_str) != Some("2")
            {
                bail!("master {master}: {info:?}");
            }
            for ip in self.ips.iter().filter(|i| *i != mip) {
                let info = self.info(ip).await?;
                if info.get("master_host").map(String::as_str) != Some(mip)
                    || info.get("master_link_status").map(String::as_str) != Some("up")
                {
                    bail!("replica {ip}: {info:?}");
                }
            }
            Ok(master)
        })
        .await
    }
}

/// `SENTINEL <args>` on one sentinel.
async fn sentinel_cmd<T: redis::FromRedisValue>(addr: &str, args: &[&str]) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(2), async {
        let client = redis::Client::open(format!("redis://{addr}/"))?;
        let mut c = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd("SENTINEL");
        for a in args {
            cmd.arg(*a);
        }
        anyhow::Ok(cmd.query_async(&mut c).await?)
    })
    .await
    .with_context(|| format!("sentinel {addr} timed out"))?
}

async fn sentinel_round(
    setup: &SentinelSetup,
    round: usize,
    last_fault: &mut Option<Instant>,
) -> Result<Round> {
    let old_addr = setup.wait_whole(Duration::from_secs(180)).await?;
    // Sentinel starts no second failover of one master within 2 x failover-timeout.
    if let Some(t) = *last_fault {
        let gap = Duration::from_millis(2 * SENTINEL_FAILOVER_TIMEOUT_MS + 500);
        tokio::time::sleep(gap.saturating_sub(t.elapsed())).await;
    }
    let first_id = (round as u64 + 1) * ID_BLOCK + 1;
    let writer = SetWriter::start_from(setup.source(), "redis", &setup.password, first_id).await?;
    writer
        .wait_acked(WARMUP_ACKS, Duration::from_secs(60))
        .await?;
    let container = setup.container_at(&old_addr)?.to_owned();
    let fault_at = Instant::now();
    *last_fault = Some(fault_at);
    docker_off_runtime(&["kill", &container]).await?;
    let source = setup.source();
    let (switched, new_addr) = loop {
        if let Ok(p) = source.primary().await {
            if p != old_addr {
                break (fault_at.elapsed(), p);
            }
        }
        if fault_at.elapsed() > Duration::from_secs(120) {
            bail!("sentinel named no new master within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let n = writer.acked();
    writer
        .wait_acked(n + AFTER_ACKS, Duration::from_secs(60))
        .await?;
    let out = writer.stop().await?;
    let present = set_contents("redis", &new_addr, &setup.password).await?;
    let (lost, unexpected) = count_loss(&out, &present, first_id);
    let lost_window = lost_window(&out, &present, first_id, fault_at, (&old_addr, &new_addr));
    let late_acks = late_acks(&out, fault_at, LATE_AFTER, (&old_addr, &new_addr));
    let rto = rto_of(&out, &new_addr, fault_at)?;
    // The killed member comes back (as Mofang's agent restarts it); Sentinel turns it into
    // a replica of the new master.
    let heal_at = Instant::now();
    docker_cli(&["start", &container])?;
    setup.wait_whole(Duration::from_secs(180)).await?;
    Ok(Round {
        rto,
        switched,
        acked: out.acked.len(),
        lost,
        lost_window,
        late_acks,
        unexpected,
        healed: heal_at.elapsed(),
        // Not checked for Sentinel (the anchor for RTO only).
        converged: true,
        new_leader: None,
        ended: Vec::new(),
    })
}

async fn sentinel_scenario(rounds: usize) -> Result<Scenario> {
    let label = "sentinel-kill";
    let setup = SentinelSetup::start().await?;
    let what = format!(
        "redis 7.0 (same image), 1 master + 2 replicas, 3 redis-sentinel (quorum 2), down-after-milliseconds {DETECTION_BUDGET_MS}, failover-timeout {SENTINEL_FAILOVER_TIMEOUT_MS}"
    );
    println!("{label}: {what}");
    let mut out = Vec::new();
    let mut last_fault = None;
    for r in 0..rounds {
        let round = sentinel_round(&setup, r, &mut last_fault)
            .await
            .with_context(|| format!("{label} round {}", r + 1))?;
        print_round(label, r, &round);
        out.push(round);
    }
    Ok(Scenario {
        name: label.to_owned(),
        what,
        rounds: out,
        error: None,
    })
}

// ---------------------------------------------------------------------------------------

fn summary(scenarios: &[Scenario]) {
    println!("\n| scenario | rounds | acknowledged | lost | unexpected | converged | RTO p50 | RTO p99 | RTO max | new primary named, p50 / max | lost per round |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for s in scenarios {
        let mut rto: Vec<Duration> = s.rounds.iter().map(|r| r.rto).collect();
        rto.sort();
        let mut sw: Vec<Duration> = s.rounds.iter().map(|r| r.switched).collect();
        sw.sort();
        let per_round: Vec<String> = s.rounds.iter().map(|r| r.lost.to_string()).collect();
        let acked: usize = s.rounds.iter().map(|r| r.acked).sum();
        let lost: usize = s.rounds.iter().map(|r| r.lost).sum();
        let unexpected: usize = s.rounds.iter().map(|r| r.unexpected).sum();
        let converged = s.rounds.iter().filter(|r| r.converged).count();
        println!(
            "| {} | {} | {acked} | {lost} | {unexpected} | {converged}/{} | {} | {} | {} | {} / {} | {} |",
            s.name,
            s.rounds.len(),
            s.rounds.len(),
            secs(pct(&rto, 0.50)),
            secs(pct(&rto, 0.99)),
            secs(rto.last().copied().unwrap_or_default()),
            secs(pct(&sw, 0.50)),
            secs(sw.last().copied().unwrap_or_default()),
            per_round.join(" "),
        );
    }
    for s in scenarios {
        println!("{}: {}", s.name, s.what);
    }
    for line in rto_ratios(scenarios) {
        println!("{line}");
    }
    for s in scenarios {
        if let Some(e) = &s.error {
            println!("{} STOPPED after {} rounds: {e}", s.name, s.rounds.len());
        }
    }
}

/// Each Mofang container-kill scenario's RTO against Sentinel's in the same run (issue 13:
/// p99 <= 0.55 x Sentinel's), when both ran.
fn rto_ratios(scenarios: &[Scenario]) -> Vec<String> {
    const TARGET: f64 = 0.55;
    let sorted = |s: &Scenario| {
        let mut v: Vec<Duration> = s.rounds.iter().map(|r| r.rto).collect();
        v.sort();
        v
    };
    let Some(sentinel) = scenarios
        .iter()
        .find(|s| s.name == "sentinel-kill" && !s.rounds.is_empty())
    else {
        return Vec::new();
    };
    let anchor = sorted(sentinel);
    let (a50, a99) = (pct(&anchor, 0.50), pct(&anchor, 0.99));
    scenarios
        .iter()
        .filter(|s| s.name.split(' ').next().is_some_and(|n| n.ends_with("-kill")) && s.name != "sentinel-kill" && !s.rounds.is_empty())
        .filter(|s| !s.name.contains("agent") && !s.name.contains("leader") && !s.name.contains("scheduler") && !s.name.contains("double"))
        .map(|s| {
            let v = sorted(s);
            let r99 = pct(&v, 0.99).as_secs_f64() / a99.as_secs_f64().max(1e-9);
            let r50 = pct(&v, 0.50).as_secs_f64() / a50.as_secs_f64().max(1e-9);
            format!(
                "RTO ratio {} / sentinel-kill: p50 {r50:.2}x, p99 {r99:.2}x (target p99 <= {TARGET}x: {})",
                s.name,
                if r99 <= TARGET { "met" } else { "not met" }
            )
        })
        .collect()
}

/// What broke a promise: acknowledged writes lost where the mode promises none (MariaDB
/// semi-sync), writes never attempted, members that did not converge.
fn broken_promises(scenarios: &[Scenario]) -> Vec<String> {
    let mut out = Vec::new();
    for s in scenarios {
        if let Some(e) = &s.error {
            out.push(format!(
                "{} stopped after {} rounds: {e}",
                s.name,
                s.rounds.len()
            ));
        }
        for (i, r) in s.rounds.iter().enumerate() {
            if s.name.starts_with("mariadb") && r.lost > 0 {
                out.push(format!(
                    "{} round {}: {} acknowledged writes lost",
                    s.name,
                    i + 1,
                    r.lost
                ));
            }
            if r.unexpected > 0 {
                out.push(format!(
                    "{} round {}: {} writes never attempted",
                    s.name,
                    i + 1,
                    r.unexpected
                ));
            }
            if !r.converged {
                out.push(format!(
                    "{} round {}: members did not converge",
                    s.name,
                    i + 1
                ));
            }
        }
    }
    out
}

/// The machine's 1, 5 and 15 minute load averages: the bench shares 2 cores with whatever
/// else runs, and the figures move with it.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `<engine>-<fault>` of a Mofang scenario, with the daemons' default timers when it ends in
/// `-production` (e.g. `mariadb-pause-production`).
fn parse_scenario(name: &str) -> Option<(&'static str, Fault, Timings)> {
    let (name, timings) = match name.strip_suffix("-production") {
        Some(n) => (n, Timings::PRODUCTION),
        None => (name, Timings::FAST),
    };
    let (engine, fault) = name.split_once('-')?;
    let engine = match engine {
        "mariadb" => "mariadb",
        "redis" => "redis",
        _ => return None,
    };
    let fault = Fault::ALL.into_iter().find(|f| f.name() == fault)?;
    Some((engine, fault, timings))
}

/// The agents to compare (`--agents NAME=PATH,...`): a name and binary each; one unnamed
/// entry, the workspace's agent, without the option.
type Agents = [(Option<String>, Option<std::path::PathBuf>)];

async fn run(
    rounds: usize,
    which: &[String],
    minutes: Option<f64>,
    agents: &Agents,
) -> Result<Vec<Scenario>> {
    let started = Instant::now();
    println!("load average at start: {}", loadavg());
    // A time bound is shared out evenly among the scenarios still to run, so every scenario
    // gets its turn and the time one leaves (its rounds done early) goes to the next.
    let end = minutes.map(|m| started + Duration::from_secs_f64(m * 60.0));
    let mut done = Vec::new();
    for (i, w) in which.iter().enumerate() {
        let deadline = end.map(|end| {
            let now = Instant::now();
            now + end.saturating_duration_since(now) / (which.len() - i) as u32
        });
        let runs = match (w.as_str(), parse_scenario(w)) {
            ("sentinel-kill", _) => vec![sentinel_scenario(rounds).await?],
            (_, Some((engine, fault, timings))) => {
                let mut runs = Vec::new();
                for (name, bin) in agents {
                    mofang_tests::cluster::use_agent_binary(bin.clone());
                    let label = match name {
                        Some(n) => format!("{w} [{n}]"),
                        None => w.clone(),
                    };
                    runs.push(
                        mofang_scenario(label, engine, fault, timings, rounds, deadline).await?,
                    );
                }
                mofang_tests::cluster::use_agent_binary(None);
                runs
            }
            (other, None) => bail!("unknown scenario {other}"),
        };
        for s in runs {
            if let Some(e) = &s.error {
                // The rounds so far count; the next scenario gets its turn.
                println!("  {}: STOPPED: {e}", s.name);
            }
            done.push(s);
        }
        println!(
            "  ({} elapsed; load average {})",
            secs(started.elapsed()),
            loadavg()
        );
    }
    summary(&done);
    println!("total: {}", secs(started.elapsed()));
    Ok(done)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let rounds = str_arg("--rounds")
        .map(|r| r.parse::<usize>())
        .transpose()
        .context("--rounds")?
        .unwrap_or(20);
    let minutes = str_arg("--minutes")
        .map(|m| m.parse::<f64>())
        .transpose()
        .context("--minutes")?;
    let flag = |f: &str| std::env::args().any(|a| a == f);
    let soak = flag("--soak");
    let default = if soak {
        ["mariadb", "redis"]
            .iter()
            .flat_map(|e| Fault::ALL.iter().map(move |f| format!("{e}-{}", f.name())))
            .collect::<Vec<_>>()
            .join(",")
    } else {
        "mariadb-kill,mariadb-partition,redis-kill,sentinel-kill".into()
    };
    let which: Vec<String> = str_arg("--scenarios")
        .unwrap_or(default)
        .split(',')
        .map(str::to_owned)
        .collect();
    println!(
        "failover {}: {rounds} rounds per scenario{}; scenarios {}; machine: {} cores{}",
        if soak { "soak" } else { "benchmark" },
        minutes.map_or(String::new(), |m| format!(", at most {m} minutes")),
        which.join(", "),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if flag("--stress") {
            "; stress-ng on every core"
        } else {
            ""
        }
    );
    // CPU saturation for the whole run: the faults meet a machine with no spare cycles.
    let _stress = if flag("--stress") {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Some(StressNg(
            Command::new("stress-ng")
                .args(["--cpu", &cores.to_string(), "--timeout", "0"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("stress-ng (scripts/setup installs it)")?,
        ))
    } else {
        None
    };
    let agents: Vec<(Option<String>, Option<std::path::PathBuf>)> = match str_arg("--agents") {
        None => vec![(None, None)],
        Some(list) => list
            .split(',')
            .map(|a| {
                let (name, path) = a
                    .split_once('=')
                    .with_context(|| format!("--agents: '{a}' is not NAME=PATH"))?;
                let path = std::path::PathBuf::from(path);
                if !path.is_file() {
                    bail!("--agents: no file {}", path.display());
                }
                Ok((Some(name.to_owned()), Some(path)))
            })
            .collect::<Result<_>>()?,
    };
    // Ctrl-C drops the scenario in progress: its processes, containers and networks go.
    let done = tokio::select! {
        r = run(rounds, &which, minutes, &agents) => r?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    };
    let broken = broken_promises(&done);
    if !broken.is_empty() {
        bail!("promises broken:\n{}", broken.join("\n"));
    }
    Ok(())
}

/// `stress-ng`, stopped with the run.
struct StressNg(Child);

impl Drop for StressNg {
    fn drop(&mut self) {
        // SIGTERM lets stress-ng stop its workers.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}
