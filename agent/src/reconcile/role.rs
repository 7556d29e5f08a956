//! Step 5, the role under the epoch rule: an assignment of an older epoch than the one
//! applied is ignored; otherwise the step [`decide::role_step`] chooses (follow, fence,
//! open) is carried out on the server and the epoch recorded.

use super::answers::Server;
use super::config::Configured;
use super::container::rebuild;
use super::decide::{self, RoleStep};
use super::{replicas_of, Error, Member, Result, Shared, WorkerMemo};
use crate::engine::{Engine, ObservedRole, Secrets, Target};
use crate::state::MemberState;
use mofang_common::proto::Assignment;
use tracing::{info, warn};

/// Step 5: applies the assignment's role unless the member waits for its primary's address
/// or the assignment is stale; then the reason to report instead of the observed one.
pub(super) async fn apply(
    m: &Member<'_>,
    cfg: &Configured,
    server: &Server,
    container: &str,
    st: &mut MemberState,
    orig: &MemberState,
    memo: &mut WorkerMemo,
) -> Result<Option<String>> {
    let (sh, a, member) = (m.sh, m.a, m.name());
    if m.role.waiting() {
        return Ok(Some("waiting for the primary's address".into()));
    }
    if a.epoch < st.applied_epoch {
        warn!(
            member,
            epoch = a.epoch,
            applied = st.applied_epoch,
            "stale role assignment ignored"
        );
        return Ok(Some(format!(
            "ignored assignment of epoch {} (member has {})",
            a.epoch, st.applied_epoch
        )));
    }
    let mut step = decide::role_step(
        m.role,
        a.epoch,
        st,
        sh.lease.writable(),
        sh.lease.last_ack().is_some(),
        sh.started.elapsed() < sh.lease.ttl(),
    );
    if let RoleStep::Follow { primary, .. } = &mut step {
        // Over TLS once the primary serves it (a TLS change is rolled out member by member).
        primary.tls = cfg
            .tls
            .as_ref()
            .filter(|_| super::certs::replicate_over_tls(cfg.mode, &a.primary_tls))
            .map(|t| crate::engine::ClientTls {
                ca_pem: t.ca_pem.clone(),
                server_name: primary.host.clone(),
            });
    }
    if let RoleStep::Follow {
        primary,
        fence_first,
        seed,
    } = &step
    {
        memo.follow_asked = Some(primary.clone());
        // Observed following this very primary last time, in this container: nothing to do.
        if decide::follow_in_order(
            memo.followed.as_ref(),
            container,
            primary,
            *fence_first,
            *seed,
            st.fenced,
        ) {
            step = RoleStep::Ignore;
        }
    }
    // A held new primary has not taken its role: recorded as applied, the next pass would
    // take it for a primary already open at this epoch and open it (decision 123).
    let held = step == RoleStep::HoldOpen;
    carry_out(
        sh,
        a,
        m.engine,
        (&server.target, container),
        &cfg.secrets,
        step,
        st,
    )
    .await?;
    if held {
        return Ok(Some(
            "new primary: waiting until the old primary can acknowledge no write".into(),
        ));
    }
    if st.applied_epoch != a.epoch || st.applied_role != a.role {
        info!(member, epoch = a.epoch, role = %a.role, "role applied");
        st.applied_epoch = a.epoch;
        st.applied_role = a.role.clone();
    }
    if st != orig {
        sh.state.save_member(member, st)?;
    }
    Ok(None)
}

/// The replica a new member copies its first snapshot from (`seed_from`), if the scheduler
/// named one with a valid address.
fn seed_donor(a: &Assignment) -> Option<Target> {
    if a.seed_from.is_empty() {
        return None;
    }
    Target::parse(&a.seed_from).ok()
}

/// Carries out the role step [`decide::role_step`] chose.
async fn carry_out(
    sh: &Shared,
    a: &Assignment,
    engine: &dyn Engine,
    (at, container): (&Target, &str),
    secrets: &Secrets,
    step: RoleStep,
    st: &mut MemberState,
) -> Result<()> {
    match step {
        RoleStep::Follow {
            primary,
            fence_first,
            seed,
        } => {
            if seed {
                // A replica added by a scale copies from a healthy replica the scheduler
                // names (the primary is not loaded); else from the primary.
                let donor = seed_donor(a).unwrap_or_else(|| primary.clone());
                if let Some(script) = engine.seed_script(&donor, at) {
                    info!(member = %a.member, primary = %primary, from = %donor, "seeding replica");
                    let out = sh
                        .runtime
                        .exec(container, &["bash", "-c", &script], None)
                        .await?;
                    if out.exit_code != 0 {
                        return Err(Error::Seed(out.stderr.trim().chars().take(400).collect()));
                    }
                    // The copy is of the primary of `a.epoch`. If another member was promoted
                    // meanwhile, its position means nothing to the new primary: start over.
                    if sh.assignment(&a.member).map(|x| x.epoch) != Some(a.epoch) {
                        warn!(member = %a.member, epoch = a.epoch, "primary changed while seeding: rebuilding");
                        rebuild(sh, &a.member, container).await?;
                        return Err(Error::Seed(
                            "the primary changed while seeding; seeding again from the new one"
                                .into(),
                        ));
                    }
                    info!(member = %a.member, "replica seeded");
                }
                st.needs_seed = false;
                sh.state.save_member(&a.member, st)?;
            }
            if fence_first {
                // Demoted: stop application writes first, killing sessions, so a commit that
                // waits for a semi-sync acknowledgement from a replica that now follows the
                // new primary can never complete and be acknowledged later.
                engine.fence(at, secrets).await?;
                // Recorded, so that a Redis pause is lifted below once the member follows:
                // left in place, it outlived a later promotion and stalled every write (soak,
                // Redis round 3: the first primary, demoted, promoted again).
                st.fenced = true;
            }
            // Read-only first (MariaDB), then follow the new primary.
            engine.replicate_from(at, secrets, &primary).await?;
            if st.fenced {
                // A Redis replica takes no application writes anyway; lift its pause. (A
                // MariaDB fence is read_only, which a replica keeps.)
                if engine.kind() == mofang_common::EngineKind::Redis {
                    engine.unfence(at, secrets).await?;
                }
                st.fenced = false;
            }
        }
        // Just (re)started and not yet heard from the scheduler: neither fence nor promote
        // on a guess; the primary keeps whatever it was doing for up to lease_ttl.
        // The new primary of a failover while the old one may still acknowledge a write:
        // nothing (it keeps replicating from the old primary) until the hold is lifted.
        RoleStep::Wait | RoleStep::HoldOpen | RoleStep::Ignore => {}
        RoleStep::FenceLeaseLost => {
            // Cut off from the scheduler for lease_ttl less the fence budget: another member
            // may be promoted elsewhere once the lease has run out, so this primary stops
            // taking writes a budget before then (decision 145).
            if !st.fenced {
                warn!(
                    member = %a.member,
                    epoch = a.epoch,
                    left_ms = sh.lease.remaining().map_or(0, |d| d.as_millis()),
                    "scheduler lease running out: fencing primary"
                );
            }
            engine.fence(at, secrets).await?;
            st.fenced = true;
        }
        RoleStep::FenceHeld => {
            // Restarted while held (no scheduler): stays read-only until a newer epoch.
            engine.fence(at, secrets).await?;
            st.fenced = true;
        }
        RoleStep::FenceForSwitchover => {
            // Switchover step 1: stop writes, keep the epoch; the target catches up next.
            if !st.fenced {
                info!(member = %a.member, epoch = a.epoch, "fencing primary for switchover");
            }
            engine.fence(at, secrets).await?;
            st.fenced = true;
        }
        RoleStep::Open { after } => {
            let obs = engine.observe(at, secrets).await?;
            if obs.role != ObservedRole::Primary || st.applied_epoch != a.epoch {
                engine
                    .promote(at, secrets, replicas_of(a), after.as_deref())
                    .await?;
            }
            if st.fenced {
                engine.unfence(at, secrets).await?;
                info!(member = %a.member, "primary unfenced");
                st.fenced = false;
            }
        }
    }
    Ok(())
}
