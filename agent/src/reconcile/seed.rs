//! Step 3, after a restore: a new or rebuilt MariaDB replica whose donor the scheduler named
//! with the donor's agent (`seed_agent`, `seed_member`) is filled with a physical copy of the
//! donor, streamed by that agent ([`crate::seed`], decision 167), before its container is
//! created; it then follows the primary from the copy's GTID position. One attempt per donor
//! and rebuild generation: a copy that fails leaves the volume empty again and the member to
//! the logical copy (`seed_from`), which the role step makes as before.

use super::status::report;
use super::{Action, Member, Result, Step};
use crate::state::MemberState;
use crate::volume::Volume;
use mofang_common::proto::Assignment;
use mofang_common::restore_phase::Phase;
use mofang_common::{labels, Role};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The copy to make now (`<donor>@<rebuild generation>`), if any (pure): a MariaDB replica
/// with a donor agent named, whose volume is fresh or holds this agent's unfinished attempt
/// at that copy, and which has not ended an attempt at it before.
pub(super) fn copy_due(
    a: &Assignment,
    role: Role,
    st: &MemberState,
    fresh: bool,
) -> Option<String> {
    if a.engine != "mariadb"
        || role != Role::Replica
        || a.seed_agent.is_empty()
        || a.seed_member.is_empty()
        || a.seed_member == a.member
    {
        return None;
    }
    let key = format!("{}@{}", a.seed_member, a.rebuild_generation);
    if st.seed_copy_done.as_deref() == Some(key.as_str()) {
        return None;
    }
    if !fresh && st.seed_copy_attempt.as_deref() != Some(key.as_str()) {
        // Data this agent did not copy (the member ran before): never wiped.
        return None;
    }
    Some(key)
}

/// Copies the donor into the volume when [`copy_due`] says so.
pub(super) async fn copy(m: &Member<'_>, vol: &Volume, st: &mut MemberState) -> Result<Step<()>> {
    let (sh, a, member) = (m.sh, m.a, m.name());
    let fresh = vol.is_fresh();
    let Some(key) = copy_due(a, m.role.role(), st, fresh) else {
        return Ok(Step::Next(()));
    };
    let Some(admin) = a.secrets.get("admin").filter(|p| !p.is_empty()) else {
        return Ok(Step::Next(()));
    };
    if st.seed_copy_attempt.as_deref() != Some(key.as_str()) {
        st.seed_copy_attempt = Some(key.clone());
        sh.state.save_member(member, st)?;
    }
    info!(member, donor = %a.seed_member, agent = %a.seed_agent, "seeding replica: a physical copy of the donor");
    report(
        sh,
        a,
        st,
        None,
        None,
        false,
        format!("seeding: a physical copy of {} streaming", a.seed_member),
    );
    let started = Instant::now();
    let bytes = Arc::new(AtomicU64::new(0));
    let counted = bytes.clone();
    let result = async {
        let input = crate::seed::fetch(
            a,
            admin,
            Arc::new(move |done, _| counted.store(done, Ordering::Relaxed)),
        )
        .await?;
        let to = crate::backup::restore::Into {
            member,
            image: sh.cfg.image(&a.engine, m.version),
            volume: &vol.path,
            uid: m.engine.uid(),
            labels: BTreeMap::from([
                (labels::NODE.to_owned(), sh.cfg.node.clone()),
                (labels::INSTANCE.to_owned(), a.instance.clone()),
                ("mofang.seed".to_owned(), a.seed_member.clone()),
            ]),
        };
        let phases: crate::backup::restore::PhaseProgress = Arc::new(|_: Phase, _: u64, _: u64| {});
        crate::backup::restore::unpack_mariadb(sh.runtime.as_ref(), input, "", true, to, phases)
            .await
    }
    .await;
    st.seed_copy_attempt = None;
    st.seed_copy_done = Some(key);
    match result {
        Ok(()) => {
            // Filled: no logical copy follows (a rebuild asked for one).
            st.needs_seed = false;
            sh.state.save_member(member, st)?;
            info!(
                member,
                donor = %a.seed_member,
                bytes = bytes.load(Ordering::Relaxed),
                seconds = started.elapsed().as_secs_f64(),
                "replica seeded: physical copy of the donor unpacked and prepared"
            );
            Ok(Step::Next(()))
        }
        Err(e) => {
            warn!(member, donor = %a.seed_member, error = %e, "physical copy failed: copying logically instead");
            // The next pass finds no volume, makes it anew, and the role step copies.
            sh.volumes.delete(member)?;
            st.needs_seed = true;
            sh.state.save_member(member, st)?;
            report(
                sh,
                a,
                st,
                None,
                None,
                false,
                format!(
                    "physical copy of {} failed ({e}); copying logically instead",
                    a.seed_member
                ),
            );
            Ok(Step::Stop(Action::Requeue(Duration::from_millis(100))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_replica() -> Assignment {
        Assignment {
            member: "orders-3".into(),
            instance: "orders".into(),
            engine: "mariadb".into(),
            role: "replica".into(),
            seed_agent: "10.0.0.2:9187".into(),
            seed_member: "orders-2".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_fresh_replica_with_a_donor_agent_is_copied_once_per_donor_and_generation() {
        let a = new_replica();
        let mut st = MemberState::default();
        assert_eq!(
            copy_due(&a, Role::Replica, &st, true).as_deref(),
            Some("orders-2@0")
        );
        // An attempt cut short (the agent died): its partial volume is this agent's.
        st.seed_copy_attempt = Some("orders-2@0".into());
        assert_eq!(
            copy_due(&a, Role::Replica, &st, false).as_deref(),
            Some("orders-2@0")
        );
        // Ended (well or not): never again for that donor and generation; a diverged
        // replica's rebuild then copies logically.
        st.seed_copy_attempt = None;
        st.seed_copy_done = Some("orders-2@0".into());
        assert_eq!(copy_due(&a, Role::Replica, &st, true), None);
        // The scheduler's rebuild raises the generation: a new copy.
        let rebuilt = Assignment {
            rebuild_generation: 1,
            ..a.clone()
        };
        assert_eq!(
            copy_due(&rebuilt, Role::Replica, &st, true).as_deref(),
            Some("orders-2@1")
        );
    }

    #[test]
    fn data_the_agent_did_not_copy_the_primary_redis_and_no_donor_are_left_alone() {
        let a = new_replica();
        let st = MemberState::default();
        assert_eq!(
            copy_due(&a, Role::Replica, &st, false),
            None,
            "a volume with data"
        );
        assert_eq!(copy_due(&a, Role::Primary, &st, true), None);
        let redis = Assignment {
            engine: "redis".into(),
            ..a.clone()
        };
        assert_eq!(copy_due(&redis, Role::Replica, &st, true), None);
        let logical = Assignment {
            seed_agent: String::new(),
            ..a.clone()
        };
        assert_eq!(copy_due(&logical, Role::Replica, &st, true), None);
        let itself = Assignment {
            seed_member: "orders-3".into(),
            ..a
        };
        assert_eq!(copy_due(&itself, Role::Replica, &st, true), None);
    }
}
