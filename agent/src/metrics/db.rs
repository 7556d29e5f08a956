//! Database scrapes, one per member, each within its own deadline: a slow or hung server turns
//! into `mysql_up 0` / `redis_up 0` for that member and never holds up the rest of the scrape.
//! Connections (monitoring account only) are kept between scrapes and dropped on any error.

use super::model::{label, Families, Kind, Labels};
use super::{mysql, redis};
use mofang_common::EngineKind;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::debug;

/// One member to scrape.
#[derive(Debug, Clone)]
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

enum Conn {
    Mysql(mysql_async::Conn),
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
enum Answer {
    Mysql(mysql::Raw),
    Redis(String),
}

/// What one member's scrape gave.
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
    let conn = match guard.take() {
        Some((a, Conn::Mysql(c))) if &a == addr => c,
        _ => mysql::connect(&addr.0, addr.1, password, tls)
            .await
            .map_err(|e| e.to_string())?,
    };
    let mut conn = conn;
    let raw = mysql::query(&mut conn).await.map_err(|e| e.to_string())?;
    *guard = Some((addr.clone(), Conn::Mysql(conn)));
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

/// Scrapes every target concurrently, each within `timeout`, and adds `mysql_up`/`redis_up`
/// and the per-member scrape duration and success.
pub async fn scrape_all(pool: &Pool, targets: &[Target], timeout: Duration, out: &mut Families) {
    let runs = targets.iter().map(|t| async move {
        let start = Instant::now();
        let o = scrape_one(pool, t, timeout).await;
        (t, o, start.elapsed())
    });
    for (t, o, took) in futures::future::join_all(runs).await {
        if let Some(e) = &o.error {
            debug!(member = %t.member, error = %e, "database scrape failed");
        }
        let up = if o.answer.is_some() { 1.0 } else { 0.0 };
        match t.engine {
            EngineKind::Mariadb => out.add(
                "mysql_up",
                "Whether the MySQL server is up.",
                Kind::Gauge,
                t.labels.clone(),
                up,
            ),
            EngineKind::Redis => out.add(
                "redis_up",
                "Information about the Redis instance",
                Kind::Gauge,
                t.labels.clone(),
                up,
            ),
        }
        let mut l = t.labels.clone();
        l.push(label("engine", t.engine.as_str()));
        out.add(
            "mofang_db_scrape_duration_seconds",
            "How long the last scrape of the member's database took.",
            Kind::Gauge,
            l.clone(),
            took.as_secs_f64(),
        );
        out.add(
            "mofang_db_scrape_success",
            "1 if the last scrape of the member's database succeeded within its deadline.",
            Kind::Gauge,
            l,
            up,
        );
        // Turned into samples one member after the other, straight into `out`: the second
        // member's families already exist and only get samples.
        let base = Arc::new(t.labels.clone());
        match &o.answer {
            Some(Answer::Mysql(raw)) => mysql::families(raw, &base, out),
            Some(Answer::Redis(info)) => redis::families(info, &base, out),
            None => {}
        }
    }
}
