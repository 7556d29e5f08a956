//! Physical seeds between agents (decision 167). A new or rebuilt MariaDB replica is filled
//! with a copy of a healthy replica of its instance (the donor the scheduler names), taken
//! by `mariadb-backup --backup --stream=mbstream` in the donor's own container and streamed
//! by the donor's agent over its HTTP server (`GET /v1/members/{donor}/seed`), compressed
//! with zstd and sealed with the STREAM construction of `mofang_common::backup_crypt`; the new
//! member's agent opens it and unpacks and prepares it into the member's volume as a restore
//! does, then the member follows the primary from the copy's GTID position. Nothing is
//! staged on either host's disk, and the primary serves nothing.
//!
//! The keys come from the instance's admin password (`mofang_common::seed`): a request is
//! signed for its time, and only the agent of a member of the same instance can ask for a
//! copy or read one.

use crate::backup::run::{with_verdict, Tuning};
use crate::backup::stream::{sealed_stream, Encrypt, Zstd};
use crate::runtime::{exec_piped, ContainerRuntime, PipeDir};
use crate::state::LocalState;
use crate::statuses::Statuses;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use mofang_common::proto::{Assignment, DesiredState, MemberStatus};
use mofang_common::seed::{SeedKeys, PROOF_HEADER};
use mofang_common::{error_chain, Role};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// What the donor's side needs.
pub struct Donor {
    /// Desired state (the donor's assignment: role, instance, credentials).
    pub desired: watch::Receiver<Option<DesiredState>>,
    /// Member statuses (the donor must be a healthy replica).
    pub statuses: Statuses,
    /// The container runtime (`mariadb-backup` runs in the donor's container).
    pub runtime: Arc<dyn ContainerRuntime>,
    /// Nice value of the copy's work (the agent's `backup_nice`).
    pub nice: i32,
    /// The copy's pressure on the host (the agent's backup tuning).
    pub tuning: Tuning,
    /// The agent's state (the donor's configuration directory, where the copy's FIFO is made).
    pub state: LocalState,
    /// Donors serving a copy now: one copy per donor at a time.
    serving: Arc<Serving>,
}

impl Donor {
    /// A donor side with nothing being served.
    pub fn new(
        desired: watch::Receiver<Option<DesiredState>>,
        statuses: Statuses,
        runtime: Arc<dyn ContainerRuntime>,
        nice: i32,
        tuning: Tuning,
        state: LocalState,
    ) -> Self {
        Donor {
            desired,
            statuses,
            runtime,
            nice,
            tuning,
            state,
            serving: Arc::default(),
        }
    }
}

/// Query of a seed request.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SeedQuery {
    /// The member the copy is for.
    pub member: String,
    /// The Unix second the request is signed for.
    pub at: i64,
}

/// The route.
pub fn router(donor: Arc<Donor>) -> Router {
    Router::new()
        .route("/v1/members/{member}/seed", get(serve))
        .with_state(donor)
}

/// A refusal: status and reason.
pub type Refusal = (StatusCode, String);

/// Whether the donor serves `q` (pure): the donor is a healthy MariaDB replica of this node,
/// the copy is for another member, and the proof is the instance's for this donor and member
/// at a time within the window of `now_s`. The keys to seal the copy with, or why not.
pub fn admit(
    a: Option<&Assignment>,
    s: Option<&MemberStatus>,
    donor: &str,
    q: &SeedQuery,
    proof: &str,
    now_s: i64,
) -> Result<SeedKeys, Refusal> {
    let a = a.ok_or((
        StatusCode::NOT_FOUND,
        format!("member {donor} is not on this node"),
    ))?;
    if a.engine != "mariadb" {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "member {donor} is {}: only MariaDB is copied physically",
                a.engine
            ),
        ));
    }
    if q.member == donor {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("member {donor} cannot seed itself"),
        ));
    }
    if Role::parse(&a.role) != Some(Role::Replica) {
        return Err((
            StatusCode::CONFLICT,
            format!("member {donor} is {}: only a replica serves a copy", a.role),
        ));
    }
    let healthy = s.is_some_and(|s| s.healthy && s.replication_ok);
    if !healthy {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("member {donor} is not a healthy, replicating replica now"),
        ));
    }
    let secret = a.secrets.get("admin").filter(|p| !p.is_empty()).ok_or((
        StatusCode::SERVICE_UNAVAILABLE,
        format!("member {donor} has no credentials yet"),
    ))?;
    let keys = SeedKeys::derive(secret, &a.instance, donor, &q.member);
    keys.check(q.at, now_s, proof)
        .map_err(|e| (StatusCode::FORBIDDEN, e.to_string()))?;
    Ok(keys)
}

/// The donors serving a copy now.
#[derive(Debug, Default)]
struct Serving(Mutex<BTreeSet<String>>);

impl Serving {
    /// Marks `donor` busy until the returned guard drops; `None` while it serves a copy.
    fn claim(self: &Arc<Self>, donor: &str) -> Option<Busy> {
        let fresh = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(donor.to_owned());
        fresh.then(|| Busy {
            donor: donor.to_owned(),
            owner: self.clone(),
        })
    }
}

/// Marks a donor busy while its copy streams; dropped with the response's body.
struct Busy {
    donor: String,
    owner: Arc<Serving>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.owner
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.donor);
    }
}

/// A JSON answer `{"error": why}` with `status`.
fn refusal(status: StatusCode, why: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": why }))).into_response()
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn serve(
    State(d): State<Arc<Donor>>,
    Path(donor): Path<String>,
    Query(q): Query<SeedQuery>,
    headers: HeaderMap,
) -> Response {
    let proof = headers
        .get(PROOF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let a = d
        .desired
        .borrow()
        .as_ref()
        .and_then(|ds| ds.members.iter().find(|a| a.member == donor).cloned());
    let s = d
        .statuses
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&donor)
        .cloned();
    let keys = match admit(a.as_ref(), s.as_ref(), &donor, &q, proof, now_s()) {
        Ok(k) => k,
        Err((status, why)) => {
            warn!(donor = %donor, member = %q.member, status = status.as_u16(), why = %why, "seed copy refused");
            return refusal(status, why);
        }
    };
    let Some(busy) = d.serving.claim(&donor) else {
        return refusal(
            StatusCode::CONFLICT,
            format!("member {donor} is serving a copy already"),
        );
    };
    let cmd = d.tuning.mariadb_backup(d.nice);
    let argv: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let container = format!("mofang-{donor}");
    let pipe = PipeDir::config(d.state.config_dir(&donor));
    let exec = match exec_piped(d.runtime.as_ref(), &container, &pipe, &argv).await {
        Ok(e) => e,
        Err(e) => {
            let why = format!("mariadb-backup in {container}: {e}");
            warn!(donor = %donor, member = %q.member, error = %why, "seed copy failed to start");
            return refusal(StatusCode::INTERNAL_SERVER_ERROR, why);
        }
    };
    let (output, outcome) = with_verdict(exec, &argv);
    // mariadb-backup exits 0 only after a complete copy, and says so last: without its
    // "completed OK" the copy is not finished and the stream stays unsealed.
    let completed = futures::stream::once(async move {
        let out = outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match out {
            Some(o) if o.stderr.contains("completed OK") => None,
            Some(_) => Some(Err("mariadb-backup did not say completed OK".to_owned())),
            None => None,
        }
    })
    .filter_map(futures::future::ready);
    let input: BoxStream<'static, Result<Bytes, String>> = output.chain(completed).boxed();
    let threads = d
        .tuning
        .zstd_threads(std::thread::available_parallelism().map_or(1, |n| n.get()));
    let zstd = Zstd {
        level: 3,
        threads,
        nice: d.nice,
    };
    let encrypt = Encrypt {
        key: zeroize::Zeroizing::new(*keys.stream_key()),
        aad: keys.aad().as_bytes().to_vec(),
    };
    let sealed = match sealed_stream(input, zstd, encrypt) {
        Ok(s) => s,
        Err(e) => return refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    info!(donor = %donor, member = %q.member, "serving a physical copy");
    let (member, shown) = (q.member.clone(), donor.clone());
    // The donor stays busy until the body is dropped (sent, or the reader gone).
    let body = sealed.map(move |item| {
        let _held = &busy;
        if let Err(e) = &item {
            warn!(donor = %shown, member = %member, error = %e, "seed copy failed while streaming: the reader sees it cut short");
        }
        item.map_err(std::io::Error::other)
    });
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(body),
    )
        .into_response()
}

/// How long a donor may stay silent while its copy streams (mariadb-backup waits for locks
/// at its end).
const READ_TIMEOUT: Duration = Duration::from_secs(600);

/// Asks the donor agent `a.seed_agent` for a copy of `a.seed_member` for `a.member`: its plain
/// mbstream, opened as it comes (the last item an error if it does not open or is cut
/// short). `progress` is told the plain bytes so far.
pub async fn fetch(
    a: &Assignment,
    admin_password: &str,
    progress: crate::backup::restore::Progress,
) -> Result<crate::runtime::Input, String> {
    let keys = SeedKeys::derive(admin_password, &a.instance, &a.seed_member, &a.member);
    let at = now_s();
    let url = format!(
        "http://{}/v1/members/{}/seed?member={}&at={at}",
        a.seed_agent, a.seed_member, a.member
    );
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(READ_TIMEOUT)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let resp = client
        .get(&url)
        .header(PROOF_HEADER, keys.proof(at))
        .send()
        .await
        .map_err(|e| format!("asking {} for a copy: {}", a.seed_agent, error_chain(&e)))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        return Err(format!(
            "the donor's agent {} refused the copy ({status}): {}",
            a.seed_agent,
            text.trim()
        ));
    }
    let from = a.seed_agent.clone();
    let body = futures::stream::unfold(Some(resp), move |resp| {
        let from = from.clone();
        async move {
            let mut resp = resp?;
            match resp.chunk().await {
                Ok(Some(c)) => Some((Ok(c), Some(resp))),
                Ok(None) => None,
                Err(e) => Some((
                    Err(format!("reading the copy from {from}: {}", error_chain(&e))),
                    None,
                )),
            }
        }
    })
    .boxed();
    crate::backup::restore::opened_seed(
        &format!("the copy of {}", a.seed_member),
        zeroize::Zeroizing::new(*keys.stream_key()),
        keys.aad().as_bytes(),
        body,
        progress,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const ADMIN: &str = "adminPasswordOfTheInstance0123";

    /// One copy per donor at a time: a second claim is refused while the first one's
    /// guard lives (the response's body), and taken once it dropped; other donors are free.
    #[test]
    fn a_donor_serves_one_copy_at_a_time() {
        let serving = Arc::new(Serving::default());
        let first = serving.claim("orders-1").expect("free");
        assert!(serving.claim("orders-1").is_none(), "serving already");
        let other = serving.claim("orders-2").expect("another donor is free");
        drop(first);
        assert!(
            serving.claim("orders-1").is_some(),
            "free again once the copy ended"
        );
        drop(other);
    }

    fn donor(role: &str) -> Assignment {
        Assignment {
            member: "orders-1".into(),
            instance: "orders".into(),
            engine: "mariadb".into(),
            role: role.into(),
            secrets: HashMap::from([("admin".to_owned(), ADMIN.to_owned())]),
            ..Default::default()
        }
    }

    fn healthy() -> MemberStatus {
        MemberStatus {
            member: "orders-1".into(),
            healthy: true,
            replication_ok: true,
            ..Default::default()
        }
    }

    fn ask(member: &str, at: i64) -> (SeedQuery, String) {
        let keys = SeedKeys::derive(ADMIN, "orders", "orders-1", member);
        (
            SeedQuery {
                member: member.into(),
                at,
            },
            keys.proof(at),
        )
    }

    #[test]
    fn a_healthy_replica_serves_a_request_signed_with_its_instances_password() {
        let (q, proof) = ask("orders-3", 1000);
        let keys = admit(
            Some(&donor("replica")),
            Some(&healthy()),
            "orders-1",
            &q,
            &proof,
            1010,
        )
        .unwrap();
        let asker = SeedKeys::derive(ADMIN, "orders", "orders-1", "orders-3");
        assert_eq!(keys.stream_key(), asker.stream_key());
    }

    #[test]
    fn a_donor_refuses_the_primary_an_unhealthy_replica_a_bad_proof_and_a_stale_time() {
        let (q, proof) = ask("orders-3", 1000);
        let code = |a: Option<&Assignment>, s: Option<&MemberStatus>, q: &SeedQuery, p: &str| {
            admit(a, s, "orders-1", q, p, 1000).unwrap_err().0
        };
        assert_eq!(
            code(None, Some(&healthy()), &q, &proof),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            code(Some(&donor("primary")), Some(&healthy()), &q, &proof),
            StatusCode::CONFLICT,
            "the primary serves no copy"
        );
        let lagging = MemberStatus {
            replication_ok: false,
            ..healthy()
        };
        assert_eq!(
            code(Some(&donor("replica")), Some(&lagging), &q, &proof),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            code(Some(&donor("replica")), None, &q, &proof),
            StatusCode::SERVICE_UNAVAILABLE
        );
        // Signed by someone without the instance's password.
        let forged = SeedKeys::derive(
            "notTheAdminPassword0123456789",
            "orders",
            "orders-1",
            "orders-3",
        )
        .proof(1000);
        assert_eq!(
            code(Some(&donor("replica")), Some(&healthy()), &q, &forged),
            StatusCode::FORBIDDEN
        );
        // A proof for another member does not serve this one.
        let (_, other) = ask("orders-4", 1000);
        assert_eq!(
            code(Some(&donor("replica")), Some(&healthy()), &q, &other),
            StatusCode::FORBIDDEN
        );
        let (old, old_proof) = ask("orders-3", 1000 - 301);
        assert_eq!(
            code(Some(&donor("replica")), Some(&healthy()), &old, &old_proof),
            StatusCode::FORBIDDEN
        );
        let mut redis = donor("replica");
        redis.engine = "redis".into();
        assert_eq!(
            code(Some(&redis), Some(&healthy()), &q, &proof),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        let (me, me_proof) = ask("orders-1", 1000);
        assert_eq!(
            code(Some(&donor("replica")), Some(&healthy()), &me, &me_proof),
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
