//! Step 4, the health check: the server answers a real protocol round trip (the engine's
//! ping). Failed checks count only once the server has answered in this container: a
//! starting server is not a dead one.

use super::config::Configured;
use super::status::{report, status_keeping_last};
use super::{Action, Member, Result, Step, WorkerMemo};
use crate::config::NetworkMode;
use crate::engine::Target;
use crate::runtime::ContainerInfo;
use crate::state::MemberState;
use std::time::Duration;

/// Where the server answers: the address the agent asks at, the one clients are told.
#[derive(Debug)]
pub(super) struct Server {
    /// Where the agent reaches the server (loopback, or its IP on the Docker network).
    pub(super) target: Target,
    /// `host:port` reported to the scheduler for clients and peers.
    pub(super) address: String,
}

/// Step 4: the server answers a ping. Until then the pass stops, keeping the member's last
/// address and position.
pub(super) async fn ping(
    m: &Member<'_>,
    cfg: &Configured,
    container: &ContainerInfo,
    st: &MemberState,
    memo: &mut WorkerMemo,
) -> Result<Step<Server>> {
    let (sh, a, port) = (m.sh, m.a, cfg.port);
    let target = match &cfg.network {
        NetworkMode::Host => cfg.target(m.name(), "127.0.0.1".into()),
        NetworkMode::Docker(net) => match container.ips.get(net) {
            Some(ip) => cfg.target(m.name(), ip.clone()),
            None => {
                report(
                    sh,
                    a,
                    st,
                    Some(container),
                    None,
                    false,
                    format!("no IP on network {net} yet"),
                );
                return Ok(Step::Stop(Action::Requeue(Duration::from_millis(250))));
            }
        },
    };
    let address = match &cfg.network {
        NetworkMode::Host => format!("{}:{port}", sh.cfg.advertise_address),
        NetworkMode::Docker(_) => target.to_string(),
    };
    if let Err(e) = m.engine.ping(&target, &cfg.secrets).await {
        memo.ping_failures += 1;
        let failed = memo.failed_checks(&container.id);
        if super::container::kill_if_deposed(m, st, container, failed, memo).await? {
            return Ok(Step::Stop(Action::Requeue(Duration::from_millis(100))));
        }
        // Its last position is kept: a replica that does not answer still holds what it
        // received, and the scheduler compares positions when it picks a new primary.
        let mut s = status_keeping_last(sh, a, st, container);
        s.address = address;
        s.failed_checks = failed;
        s.reason = format!("not answering ({} checks): {e}", memo.ping_failures);
        sh.set_status(s);
        return Ok(Step::Stop(Action::Requeue(Duration::from_millis(250))));
    }
    memo.ping_failures = 0;
    memo.answered_in = Some(container.id.clone());
    Ok(Step::Next(Server { target, address }))
}

#[cfg(test)]
mod tests {
    //! The health check on the recording fake engine: failed checks and what is kept.

    use super::super::fake::{assignment, rig, Rig};
    use super::*;
    use mofang_common::proto::MemberStatus;

    /// The server answers (true) or not.
    fn answering(r: &Rig, yes: bool) {
        if let Ok(mut db) = r.db.0.lock() {
            db.answering = yes;
        }
    }

    /// A whole pass; the status it left and the failed checks in it.
    async fn pass(r: &mut Rig) -> (MemberStatus, u32) {
        let s = r.pass(&assignment("primary", 3, "")).await;
        let n = s.failed_checks;
        (s, n)
    }

    #[tokio::test]
    async fn a_silent_server_counts_failed_checks_only_after_it_answered_in_that_container() {
        let mut r = rig(Duration::from_secs(10));
        r.sh.lease.renew();
        answering(&r, false);

        // A server starting in a new container (port: the first of the default range): not
        // answering, yet no failed check.
        let (s, n) = pass(&mut r).await;
        assert_eq!(r.rt.take_calls(), ["create mofang-db-0", "start c1"]);
        assert_eq!(n, 0, "{s:?}");
        assert!(s.reason.starts_with("not answering (1 checks)"), "{s:?}");
        assert_eq!(s.address, "127.0.0.1:33000", "{s:?}");
        let (s, n) = pass(&mut r).await;
        assert_eq!(n, 0, "{s:?}");
        assert!(s.reason.starts_with("not answering (2 checks)"), "{s:?}");
        assert!(
            r.db.take_calls().is_empty(),
            "no role step before it answers"
        );

        // It answers once: from now on a silence in this container is a failed check, and
        // the position it reported is kept.
        answering(&r, true);
        let (s, n) = pass(&mut r).await;
        assert!(s.healthy && n == 0, "{s:?}");
        answering(&r, false);
        let (s, n) = pass(&mut r).await;
        assert_eq!(n, 1, "{s:?}");
        assert!(!s.healthy && s.position == "0-1-5", "{s:?}");
        let (_, n) = pass(&mut r).await;
        assert_eq!(n, 2);

        // A new container starts the count again.
        r.sh.runtime.remove("c1", true).await.expect("remove");
        r.rt.take_calls();
        let (s, n) = pass(&mut r).await;
        assert_eq!(r.rt.take_calls(), ["create mofang-db-0", "start c2"]);
        assert_eq!((s.container_id.as_str(), n), ("c2", 0), "{s:?}");
    }

    #[tokio::test]
    async fn the_step_stops_the_pass_soon_while_the_server_does_not_answer() {
        let mut r = rig(Duration::from_secs(10));
        r.sh.lease.renew();
        r.pass(&assignment("primary", 3, "")).await;
        answering(&r, false);
        let a = assignment("primary", 3, "");
        let role = super::super::decide::DesiredRole::parse(&a).expect("role");
        let m = Member {
            sh: &r.sh,
            a: &a,
            engine: &r.db,
            role: &role,
            version: "10.11",
        };
        let mut st = r.sh.state.load_member("db-0").expect("state");
        let cfg = super::super::config::write(&m, &mut st, None).expect("config");
        let c = r.sh.runtime.inspect("c1").await.expect("container");
        let step = ping(&m, &cfg, &c, &st, &mut r.memo).await.expect("ping");
        assert!(
            matches!(step, Step::Stop(Action::Requeue(d)) if d == Duration::from_millis(250)),
            "{step:?}"
        );
        answering(&r, true);
        let step = ping(&m, &cfg, &c, &st, &mut r.memo).await.expect("ping");
        let Step::Next(server) = step else {
            panic!("{step:?}");
        };
        assert_eq!(server.target.to_string(), "127.0.0.1:33000");
        assert_eq!(server.address, "127.0.0.1:33000");
        assert_eq!(r.memo.answered_in.as_deref(), Some("c1"));
    }
}
