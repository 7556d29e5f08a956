//! Step 3, first: the primary of an instance restored from a backup, or a new replica a
//! scale-up seeds from a backup of its instance (decision 164), has its data volume filled
//! from the backup (`backup::restore`) before its container is first created; its status
//! says how far the restore is. Done once per member (`MemberState::restored_from`): a
//! replica rebuilt later (its copy too old for the primary's binlogs, a divergence) is seeded
//! by a copy from a replica or its primary instead; a failed restore is tried again on the
//! next pass, the volume wiped first.

use super::status::{report, status};
use super::{now_ms, Action, Member, Result, Step};
use crate::state::MemberState;
use crate::volume::Volume;
use mofang_common::backup::RestoreSource;
use mofang_common::restore_phase::Phase;
use mofang_common::{labels, Role};
use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};
use std::time::Duration;
use tracing::{info, warn};

/// Fills the volume when the assignment asks for a restore not done yet.
pub(super) async fn fill(m: &Member<'_>, vol: &Volume, st: &mut MemberState) -> Result<Step<()>> {
    let (sh, a, member) = (m.sh, m.a, m.name());
    if a.restore.is_empty() {
        return Ok(Step::Next(()));
    }
    let src: RestoreSource = match serde_json::from_str(&a.restore) {
        Ok(s) => s,
        Err(e) => {
            report(
                sh,
                a,
                st,
                None,
                None,
                true,
                format!("restore: bad source: {e}"),
            );
            return Ok(Step::Stop(Action::Requeue(Duration::from_secs(30))));
        }
    };
    // A restore fills a restored instance's primary, or seeds a new replica from a backup of
    // its own instance (decision 164); a replica is never filled as a primary is.
    let want = if src.replica {
        Role::Replica
    } else {
        Role::Primary
    };
    if m.role.role() != want || st.restored_from.as_deref() == Some(src.backup.as_str()) {
        return Ok(Step::Next(()));
    }
    let fresh = vol.is_fresh();
    if !fresh && st.restore_attempt.as_deref() != Some(src.backup.as_str()) {
        // Data this agent did not restore (the member ran before): never wiped.
        return Ok(Step::Next(()));
    }
    let wait_ms = st.restore_retry_at_ms - now_ms();
    if st.restore_attempt.as_deref() == Some(src.backup.as_str()) && wait_ms > 0 {
        // The failure's reason stays reported meanwhile.
        return Ok(Step::Stop(Action::Requeue(Duration::from_millis(
            wait_ms.unsigned_abs(),
        ))));
    }
    if st.restore_attempt.as_deref() != Some(src.backup.as_str()) {
        st.restore_attempt = Some(src.backup.clone());
        sh.state.save_member(member, st)?;
    }
    info!(member, backup = %src.backup, "restoring the data volume from a backup");
    let base = status(sh, a, st, None, "");
    let (statuses, changed) = (sh.statuses.clone(), sh.status_changed.clone());
    let backup = src.backup.clone();
    // The data's bytes stay in the status through the later phases.
    let shown = std::sync::Mutex::new(Shown::default());
    let progress: crate::backup::restore::PhaseProgress =
        Arc::new(move |phase: Phase, done: u64, total: u64| {
            let mut shown = shown.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(first) = shown.update(phase, done, total) else {
                return;
            };
            let mut s = base.clone();
            s.reason = reason(&backup, phase, done, total);
            s.restore_bytes = shown.data.0;
            s.restore_total = shown.data.1;
            s.restore_phase = phase.as_str().to_owned();
            if phase != Phase::Data {
                (s.restore_phase_done, s.restore_phase_total) = (done, total);
            }
            statuses
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(s.member.clone(), s);
            // A new phase goes out at once; the data's steps with the next heartbeat.
            if first {
                changed.notify_one();
            }
        });
    let labels = BTreeMap::from([
        (labels::NODE.to_owned(), sh.cfg.node.clone()),
        (labels::INSTANCE.to_owned(), a.instance.clone()),
        ("mofang.restore".to_owned(), src.backup.clone()),
    ]);
    let to = crate::backup::restore::Into {
        member,
        image: sh.cfg.image(&a.engine, m.version),
        volume: &vol.path,
        uid: m.engine.uid(),
        labels,
    };
    match crate::backup::restore::fill(sh.runtime.as_ref(), &src, to, progress).await {
        Ok(()) => {
            info!(member, backup = %src.backup, "data volume restored");
            st.restored_from = Some(src.backup);
            // Filled: no copy from a live member follows (a rebuild asked for one).
            st.needs_seed = false;
            sh.state.save_member(member, st)?;
            Ok(Step::Next(()))
        }
        Err(e) => {
            warn!(member, backup = %src.backup, error = %e, retry_in_s = RETRY.as_secs(), "restore failed; trying again");
            st.restore_retry_at_ms = now_ms() + RETRY.as_millis() as i64;
            sh.state.save_member(member, st)?;
            report(
                sh,
                a,
                st,
                None,
                None,
                false,
                format!("restore from backup {} failed: {e}", src.backup),
            );
            Ok(Step::Stop(Action::Requeue(RETRY)))
        }
    }
}

/// How long after a failed restore the next attempt starts.
const RETRY: Duration = Duration::from_secs(10);

/// What the member's status last showed of the restore, to report a phase's change at once
/// and the data's bytes once per 16 MiB, not once per chunk.
#[derive(Debug, Default)]
struct Shown {
    phase: Option<Phase>,
    /// The data's 16 MiB step last shown.
    step: u64,
    /// The data's bytes (decompressed) so far and in all.
    data: (u64, u64),
    /// The counters last shown of a phase other than data.
    counters: (u64, u64),
}

impl Shown {
    /// Takes a report: `None` when the status need not change, else whether it is a new
    /// phase (to be sent at once).
    fn update(&mut self, phase: Phase, done: u64, total: u64) -> Option<bool> {
        let new_phase = self.phase != Some(phase);
        if phase == Phase::Data {
            self.data = (done, total);
            let step = done >> 24;
            if !new_phase && step == self.step {
                return None;
            }
            self.step = step;
        } else {
            if !new_phase && self.counters == (done, total) {
                return None;
            }
            self.counters = (done, total);
        }
        self.phase = Some(phase);
        Some(new_phase)
    }
}

/// The member's `reason` while it restores.
fn reason(backup: &str, phase: Phase, done: u64, total: u64) -> String {
    match phase {
        Phase::Binlogs => {
            format!("restoring backup {backup}: reading archived binlog {done} of {total}")
        }
        Phase::Data => format!("restoring backup {backup}: {done} of {total} bytes"),
        Phase::Prepare => {
            format!("restoring backup {backup}: preparing (mariadb-backup --prepare)")
        }
        Phase::Replay => format!("restoring backup {backup}: replayed binlog {done} of {total}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data's bytes are shown once per 16 MiB step (and at the phase's start), every
    /// other phase at each change of its counters, and a new phase always at once.
    #[test]
    fn a_restore_status_changes_per_step_and_phase() {
        let mut s = Shown::default();
        assert_eq!(s.update(Phase::Binlogs, 0, 2), Some(true));
        assert_eq!(s.update(Phase::Binlogs, 0, 2), None);
        assert_eq!(s.update(Phase::Binlogs, 1, 2), Some(false));
        assert_eq!(s.update(Phase::Data, 100, 64 << 20), Some(true));
        assert_eq!(s.update(Phase::Data, 1 << 20, 64 << 20), None);
        assert_eq!(s.data, (1 << 20, 64 << 20), "the bytes are kept");
        assert_eq!(s.update(Phase::Data, 17 << 20, 64 << 20), Some(false));
        assert_eq!(s.update(Phase::Prepare, 0, 0), Some(true));
        assert_eq!(s.update(Phase::Prepare, 0, 0), None);
        assert_eq!(
            s.data,
            (17 << 20, 64 << 20),
            "the data's bytes outlive its phase"
        );
        assert_eq!(s.update(Phase::Replay, 0, 2), Some(true));
        assert_eq!(s.update(Phase::Replay, 1, 2), Some(false));
        assert_eq!(
            reason("b1", Phase::Replay, 1, 2),
            "restoring backup b1: replayed binlog 1 of 2"
        );
    }
}
