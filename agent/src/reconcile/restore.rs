//! Step 3, first: the primary of an instance restored from a backup has its data volume filled
//! from the backup (`backup::restore`) before its container is first created; its status
//! says how far the restore is. Done once per member (`MemberState::restored_from`); a
//! failed restore is tried again on the next pass, the volume wiped first.

use super::status::{report, status};
use super::{Action, Member, Result, Step};
use crate::state::MemberState;
use crate::volume::Volume;
use mofang_common::backup::RestoreSource;
use mofang_common::{labels, Role};
use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};
use std::time::Duration;
use tracing::{info, warn};

/// Fills the volume when the assignment asks for a restore not done yet.
pub(super) async fn fill(m: &Member<'_>, vol: &Volume, st: &mut MemberState) -> Result<Step<()>> {
    let (sh, a, member) = (m.sh, m.a, m.name());
    if a.restore.is_empty() || m.role.role() != Role::Primary {
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
    if st.restored_from.as_deref() == Some(src.backup.as_str()) {
        return Ok(Step::Next(()));
    }
    let fresh = std::fs::read_dir(&vol.path)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    if !fresh && st.restore_attempt.as_deref() != Some(src.backup.as_str()) {
        // Data this agent did not restore (the member ran before): never wiped.
        return Ok(Step::Next(()));
    }
    if st.restore_attempt.as_deref() != Some(src.backup.as_str()) {
        st.restore_attempt = Some(src.backup.clone());
        sh.state.save_member(member, st)?;
    }
    info!(member, backup = %src.backup, "restoring the data volume from a backup");
    let base = status(sh, a, st, None, "");
    let (statuses, changed) = (sh.statuses.clone(), sh.status_changed.clone());
    let backup = src.backup.clone();
    let last_step = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let progress: crate::backup::restore::Progress = Arc::new(move |done: u64, total: u64| {
        // One status per 16 MiB (and the first), not one per chunk.
        let step = done >> 24;
        if last_step.swap(step, std::sync::atomic::Ordering::Relaxed) == step {
            return;
        }
        let mut s = base.clone();
        s.reason = format!("restoring backup {backup}: {done} of {total} bytes");
        s.restore_bytes = done;
        s.restore_total = total;
        let first = step == 0;
        statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(s.member.clone(), s);
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
            sh.state.save_member(member, st)?;
            Ok(Step::Next(()))
        }
        Err(e) => {
            warn!(member, backup = %src.backup, error = %e, "restore failed; trying again");
            report(
                sh,
                a,
                st,
                None,
                None,
                false,
                format!("restore from backup {} failed: {e}", src.backup),
            );
            Ok(Step::Stop(Action::Requeue(Duration::from_secs(10))))
        }
    }
}
