//! Database collection, in the background: one task per member asks its server for its
//! statistics every `metrics_interval_ms`, each time within its own deadline
//! (`metrics_timeout_ms`), and keeps the last answer with when it came. A scrape renders the
//! last answers and never waits on a database (cAdvisor's housekeeping model): a slow or hung
//! server turns into `mysql_up 0` / `redis_up 0` for that member once its collection misses the
//! deadline, and never holds up the others or the scrape. Connections (monitoring account only)
//! are kept between collections and dropped on any error.

use super::model::{label, Families, Kind, Labels, Rendered};
use super::{mysql, redis};
use mofang_common::EngineKind;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// One member to collect.
#[derive(Clone, PartialEq)]
pub struct Target {
    /// Engine.
    pub engine: EngineKind,
    /// `mofang_instance`, `mofang_member`, `role`.
    pub labels: Labels,
    /// Member id (connection cache key).
    pub member: String,
    /// Where the server answers, when known (None: no running container yet).
    pub addr: Option<(String, u16)>,
    /// Monitoring password, when known.
    pub password: Option<String>,
    /// TLS to the member (its instance has TLS on and it has a certificate).
    pub tls: Option<crate::engine::ClientTls>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("engine", &self.engine)
            .field("member", &self.member)
            .field("addr", &self.addr)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

enum Conn {
    /// The connection and the variables last read on it.
    Mysql(mysql_async::Conn, Option<mysql::KeptVariables>),
    Redis(redis::Client),
}

/// A member's cached connection and the address it was opened to.
type Slot = Arc<tokio::sync::Mutex<Option<((String, u16), Conn)>>>;

/// Connections kept between scrapes, one per member.
#[derive(Default)]
pub struct Pool {
    slots: Mutex<HashMap<String, Slot>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl Pool {
    fn slot(&self, member: &str) -> Slot {
        let mut m = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(member.to_owned()).or_default().clone()
    }

    /// Forgets connections of members no longer scraped.
    pub fn retain(&self, members: &[&str]) {
        let mut m = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|k, _| members.contains(&k.as_str()));
    }
}

/// What one member's server answered.
#[derive(Debug)]
enum Answer {
    Mysql(mysql::Raw),
    Redis(String),
}

/// What one member's collection gave.
#[derive(Debug)]
struct Outcome {
    answer: Option<Answer>,
    error: Option<String>,
}

async fn scrape_mysql(
    slot: &Slot,
    addr: &(String, u16),
    password: &str,
    tls: Option<&crate::engine::ClientTls>,
) -> Result<Answer, String> {
    let mut guard = slot.lock().await;
    // Taken out while in use: if the deadline cancels us mid-query, the half-used connection
    // is dropped with this future instead of being reused.
    let (mut conn, mut kept) = match guard.take() {
        Some((a, Conn::Mysql(c, kept))) if &a == addr => (c, kept),
        _ => (
            mysql::connect(&addr.0, addr.1, password, tls)
                .await
                .map_err(|e| e.to_string())?,
            None,
        ),
    };
    let raw = mysql::query(&mut conn, &mut kept, Instant::now())
        .await
        .map_err(|e| e.to_string())?;
    *guard = Some((addr.clone(), Conn::Mysql(conn, kept)));
    Ok(Answer::Mysql(raw))
}

async fn scrape_redis(
    slot: &Slot,
    addr: &(String, u16),
    password: &str,
    tls: Option<&crate::engine::ClientTls>,
) -> Result<Answer, String> {
    let mut guard = slot.lock().await;
    let mut client = match guard.take() {
        Some((a, Conn::Redis(c))) if &a == addr => c,
        _ => redis::Client::connect(&addr.0, addr.1, password, tls)
            .await
            .map_err(|e| e.to_string())?,
    };
    let info = client.info_all().await.map_err(|e| e.to_string())?;
    *guard = Some((addr.clone(), Conn::Redis(client)));
    Ok(Answer::Redis(info))
}

async fn scrape_one(pool: &Pool, t: &Target, timeout: Duration) -> Outcome {
    let (Some(addr), Some(password)) = (&t.addr, &t.password) else {
        return Outcome {
            answer: None,
            error: Some("no running container or no credentials yet".into()),
        };
    };
    let slot = pool.slot(&t.member);
    let work = async {
        match t.engine {
            EngineKind::Mariadb => scrape_mysql(&slot, addr, password, t.tls.as_ref()).await,
            EngineKind::Redis => scrape_redis(&slot, addr, password, t.tls.as_ref()).await,
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(answer)) => Outcome {
            answer: Some(answer),
            error: None,
        },
        Ok(Err(e)) => Outcome {
            answer: None,
            error: Some(e),
        },
        Err(_) => Outcome {
            answer: None,
            error: Some(format!("no answer within {timeout:?}")),
        },
    }
}

/// The last collection of one member's database: only its families as written (the rows
/// they came from are dropped, a member's written lines are all that is kept of it).
#[derive(Debug, Clone)]
pub struct Collected {
    /// When it ended.
    at: Instant,
    /// The member's families, written once when collected, with the labels they carry.
    rendered: Arc<(Labels, Rendered)>,
}

impl Collected {
    fn new(t: &Target, outcome: Outcome, took: Duration, at: Instant) -> Self {
        let mut f = Families::default();
        member_families(t, &outcome, took, &mut f);
        Collected {
            at,
            rendered: Arc::new((t.labels.clone(), f.render())),
        }
    }
}

/// Keeps one collecting task per member and their last answers.
#[derive(Debug, Default)]
pub struct Collector {
    /// Each member's collection durations.
    pub durations: super::histogram::Histogram,
    pool: Pool,
    last: Mutex<HashMap<String, Collected>>,
    tasks: Mutex<HashMap<String, Task>>,
}

/// A member's collecting task: its target (changes wake it) and its stop switch.
#[derive(Debug)]
struct Task {
    target: watch::Sender<Target>,
    stop: CancellationToken,
}

impl Drop for Task {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Collector {
    /// Starts a task for each new target, hands changed targets (address, password, role
    /// label, TLS) to theirs (which collect again at once), and stops the tasks, connections and
    /// answers of members no longer among `targets`.
    /// `(interval, timeout)`: the shortest cadence (`metrics_interval_ms`) and each
    /// collection's deadline; `cadence` times the collections after the scrapes.
    pub fn sync(
        self: &Arc<Self>,
        targets: &[Target],
        (interval, timeout): (Duration, Duration),
        cadence: &Arc<super::cadence::Cadence>,
        shutdown: &CancellationToken,
    ) {
        let names: Vec<&str> = targets.iter().map(|t| t.member.as_str()).collect();
        {
            let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
            tasks.retain(|m, _| names.contains(&m.as_str()));
            for t in targets {
                match tasks.get(&t.member) {
                    Some(task) => {
                        task.target.send_if_modified(|cur| {
                            let changed = cur != t;
                            if changed {
                                *cur = t.clone();
                            }
                            changed
                        });
                    }
                    None => {
                        let (tx, rx) = watch::channel(t.clone());
                        let stop = shutdown.child_token();
                        tokio::spawn(self.clone().collect_member(
                            rx,
                            (interval, timeout),
                            cadence.clone(),
                            stop.clone(),
                        ));
                        tasks.insert(t.member.clone(), Task { target: tx, stop });
                    }
                }
            }
        }
        self.pool.retain(&names);
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|m, _| names.contains(&m.as_str()));
    }

    /// One member's loop: collect, keep the answer, wait for the next collection the scrapes'
    /// cadence asks for (decision 168), a scrape after an idle spell, or a new target.
    async fn collect_member(
        self: Arc<Self>,
        mut target: watch::Receiver<Target>,
        (interval, timeout): (Duration, Duration),
        cadence: Arc<super::cadence::Cadence>,
        stop: CancellationToken,
    ) {
        loop {
            let t = target.borrow_and_update().clone();
            let start = Instant::now();
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                o = scrape_one(&self.pool, &t, timeout) => o,
            };
            if let Some(e) = &outcome.error {
                debug!(member = %t.member, error = %e, "database collection failed");
            }
            // Written now, once: every scrape until the next collection only copies it.
            let took = start.elapsed();
            self.durations.observe(took);
            let c = Collected::new(&t, outcome, took, Instant::now());
            if stop.is_cancelled() {
                return;
            }
            self.last
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(t.member.clone(), c);
            let wait = cadence.next_wait(interval, &t.member, took);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = cadence.woken() => {}
                r = target.changed() => if r.is_err() { return },
            }
        }
    }

    /// The last answers of `targets`' members, for one scrape.
    pub fn last(&self, targets: &[Target]) -> Vec<Option<Collected>> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        targets
            .iter()
            .map(|t| last.get(&t.member).cloned())
            .collect()
    }
}

/// The last collection of each target (`collected[i]` is `targets[i]`'s), for one scrape: its
/// families as written when collected (`mysql_up` / `redis_up`, the collection's duration and
/// success, the server's statistics), and its age, added to `out`. A member not collected yet
/// (its task just started) renders nothing: absent is not down. A member whose labels changed
/// since (its role) is served with the new labels; its task is already collecting again.
pub fn render(
    targets: &[Target],
    collected: &[Option<Collected>],
    now: Instant,
    out: &mut Families,
) -> Vec<Arc<(Labels, Rendered)>> {
    let mut parts = Vec::with_capacity(targets.len());
    for (t, c) in targets.iter().zip(collected) {
        let Some(c) = c else { continue };
        let mut s = t.labels.clone();
        s.push(label("source", "database"));
        out.add(
            "mofang_agent_collect_age_seconds",
            "Seconds since the source's values served here were collected.",
            Kind::Gauge,
            s,
            now.saturating_duration_since(c.at).as_secs_f64(),
        );
        if c.rendered.0 == t.labels {
            parts.push(c.rendered.clone());
        } else {
            // Every sample of the member starts with its labels: written again with the new
            // ones, nothing else changes.
            let relabelled = c.rendered.1.relabel(&c.rendered.0, &t.labels);
            parts.push(Arc::new((t.labels.clone(), relabelled)));
        }
    }
    parts
}

/// One member's families from one collection.
fn member_families(t: &Target, outcome: &Outcome, took: Duration, out: &mut Families) {
    let up = if outcome.answer.is_some() { 1.0 } else { 0.0 };
    let (name, help) = match t.engine {
        EngineKind::Mariadb => ("mysql_up", "Whether the MySQL server is up."),
        EngineKind::Redis => ("redis_up", "Information about the Redis instance"),
    };
    out.add(name, help, Kind::Gauge, t.labels.clone(), up);
    let mut l = t.labels.clone();
    l.push(label("engine", t.engine.as_str()));
    out.add(
        "mofang_db_scrape_duration_seconds",
        "How long the last collection of the member's database took.",
        Kind::Gauge,
        l.clone(),
        took.as_secs_f64(),
    );
    out.add(
        "mofang_db_scrape_success",
        "1 if the last collection of the member's database succeeded within its deadline.",
        Kind::Gauge,
        l,
        up,
    );
    let mut s = t.labels.clone();
    s.push(label("source", "database"));
    out.add(
        "mofang_agent_collect_duration_seconds",
        "How long the last collection from the source took.",
        Kind::Gauge,
        s,
        took.as_secs_f64(),
    );
    let base = Arc::new(t.labels.clone());
    match &outcome.answer {
        Some(Answer::Mysql(raw)) => mysql::families(raw, &base, out),
        Some(Answer::Redis(info)) => redis::families(info, &base, out),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::model::{write, Format};

    fn target(engine: EngineKind, member: &str, addr: Option<(String, u16)>) -> Target {
        Target {
            engine,
            labels: vec![label("mofang_member", member), label("role", "primary")],
            member: member.into(),
            addr,
            password: Some("monitor-secret".into()),
            tls: None,
        }
    }

    fn collected(
        t: &Target,
        answer: Option<Answer>,
        error: Option<&str>,
        age: Duration,
    ) -> Collected {
        let outcome = Outcome {
            answer,
            error: error.map(str::to_owned),
        };
        Collected::new(t, outcome, Duration::from_millis(7), Instant::now() - age)
    }

    /// What a scrape writes: the families added to `out` and the members' written parts.
    fn scrape_text(targets: &[Target], last: &[Option<Collected>]) -> String {
        let mut out = Families::default();
        let parts = render(targets, last, Instant::now(), &mut out);
        let own = out.render();
        let mut all: Vec<&Rendered> = vec![&own];
        all.extend(parts.iter().map(|p| &p.1));
        write(&all, Format::Text)
    }

    fn value(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn a_scrape_renders_each_members_last_collection_with_its_age() {
        let targets = [
            target(EngineKind::Mariadb, "db-0", Some(("10.0.0.2".into(), 3306))),
            target(EngineKind::Redis, "kv-0", Some(("10.0.0.3".into(), 6379))),
            target(EngineKind::Redis, "kv-1", None),
        ];
        let raw = mysql::Raw {
            status: vec![("Threads_connected".into(), "4".into())],
            ..Default::default()
        };
        let last = [
            Some(collected(
                &targets[0],
                Some(Answer::Mysql(raw)),
                None,
                Duration::from_secs(3),
            )),
            Some(collected(
                &targets[1],
                None,
                Some("no answer within 2s"),
                Duration::ZERO,
            )),
            // kv-1's task has not finished its first collection: nothing, not "down".
            None,
        ];
        let t = scrape_text(&targets, &last);
        assert_eq!(
            value(&t, "mysql_up{mofang_member=\"db-0\""),
            Some(1.0),
            "{t}"
        );
        assert_eq!(
            value(
                &t,
                "mysql_global_status_threads_connected{mofang_member=\"db-0\""
            ),
            Some(4.0),
            "{t}"
        );
        assert_eq!(
            value(&t, "redis_up{mofang_member=\"kv-0\""),
            Some(0.0),
            "{t}"
        );
        assert!(
            !t.contains("kv-1"),
            "a member not collected yet renders nothing: {t}"
        );
        let age = value(
            &t,
            "mofang_agent_collect_age_seconds{mofang_member=\"db-0\",role=\"primary\",source=\"database\"}",
        )
        .expect("db-0's age");
        assert!((3.0..4.0).contains(&age), "age {age}");
        assert!(!t.contains("monitor-secret"), "no password in the output");
    }

    #[test]
    fn a_member_whose_role_changed_since_its_collection_is_served_with_its_new_role() {
        let mut t = target(EngineKind::Redis, "kv-0", Some(("10.0.0.3".into(), 6379)));
        let info = "# Server\r\nredis_version:7.0.15\r\n# Clients\r\nconnected_clients:3\r\n";
        let last = [Some(collected(
            &t,
            Some(Answer::Redis(info.into())),
            None,
            Duration::ZERO,
        ))];
        let before = scrape_text(std::slice::from_ref(&t), &last);
        assert!(
            before.contains("redis_connected_clients{mofang_member=\"kv-0\",role=\"primary\"} 3"),
            "{before}"
        );
        // Promoted/demoted between two collections: no sample keeps the old role.
        t.labels = vec![label("mofang_member", "kv-0"), label("role", "replica")];
        let after = scrape_text(std::slice::from_ref(&t), &last);
        assert!(!after.contains("role=\"primary\""), "{after}");
        assert!(
            after.contains("redis_connected_clients{mofang_member=\"kv-0\",role=\"replica\"} 3"),
            "{after}"
        );
        assert_eq!(after.matches("# TYPE redis_up gauge").count(), 1, "{after}");
    }

    /// A server that accepts connections and never answers (a frozen container).
    async fn silent_server() -> (tokio::net::TcpListener, (String, u16)) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let port = l.local_addr().expect("has an address").port();
        (l, ("127.0.0.1".into(), port))
    }

    async fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
        for _ in 0..500 {
            if let Some(v) = f() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached within 5 s");
    }

    #[tokio::test]
    async fn collections_run_in_the_background_and_follow_the_member_list() {
        let (_listener, addr) = silent_server().await;
        let hung = target(EngineKind::Redis, "kv-0", Some(addr));
        let absent = target(EngineKind::Mariadb, "db-0", None);
        let c = Arc::new(Collector::default());
        let shutdown = CancellationToken::new();
        let targets = [hung.clone(), absent.clone()];
        c.sync(
            &targets,
            (Duration::from_millis(50), Duration::from_millis(300)),
            &Arc::default(),
            &shutdown,
        );
        // Reading the last answers never waits on the hung server.
        let first = c.last(&targets);
        assert!(
            first[0].is_none(),
            "the hung member's first collection is still running"
        );
        // The member without a container is down at once; the hung one once its deadline passed.
        let down = wait_for(|| {
            let l = c.last(&targets);
            match (&l[0], &l[1]) {
                (Some(a), Some(b)) => Some((a.clone(), b.clone())),
                _ => None,
            }
        })
        .await;
        let (hung_text, absent_text) = (
            write(&[&down.0.rendered.1], Format::Text),
            write(&[&down.1.rendered.1], Format::Text),
        );
        assert_eq!(value(&hung_text, "redis_up{"), Some(0.0), "{hung_text}");
        let took = value(&hung_text, "mofang_db_scrape_duration_seconds{");
        assert!(took.is_some_and(|t| t >= 0.3), "{took:?}");
        assert_eq!(value(&absent_text, "mysql_up{"), Some(0.0), "{absent_text}");
        // A member that leaves takes its task and its answer with it.
        c.sync(
            &targets[1..],
            (Duration::from_millis(50), Duration::from_millis(300)),
            &Arc::default(),
            &shutdown,
        );
        assert!(c.last(&targets[..1])[0].is_none());
        assert!(c.tasks.lock().expect("lock").len() == 1);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_changed_target_is_collected_again_at_once() {
        let (_listener, addr) = silent_server().await;
        let c = Arc::new(Collector::default());
        let shutdown = CancellationToken::new();
        let before = target(EngineKind::Redis, "kv-0", None);
        // An hour between collections: only a change of target can bring the next one.
        c.sync(
            std::slice::from_ref(&before),
            (Duration::from_secs(3600), Duration::from_millis(100)),
            &Arc::default(),
            &shutdown,
        );
        let first = wait_for(|| c.last(std::slice::from_ref(&before))[0].clone()).await;
        let after = target(EngineKind::Redis, "kv-0", Some(addr));
        c.sync(
            std::slice::from_ref(&after),
            (Duration::from_secs(3600), Duration::from_millis(100)),
            &Arc::default(),
            &shutdown,
        );
        wait_for(|| {
            c.last(std::slice::from_ref(&after))[0]
                .clone()
                .filter(|l| l.at > first.at)
        })
        .await;
        shutdown.cancel();
    }
}
