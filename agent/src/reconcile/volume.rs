//! Step 1, the member's data volume: reserved (or grown) on a disk of the asked class; and
//! its usage for the report, looked up at most every 15 s.

use super::{Member, Result, WorkerMemo};
use crate::volume::Volume;
use std::time::{Duration, Instant};
use tracing::warn;

/// Step 1: the volume exists with the assignment's size.
pub(super) fn ensure(m: &Member<'_>) -> Result<Volume> {
    let a = m.a;
    let class = (!a.disk_class.is_empty()).then_some(a.disk_class.as_str());
    let uid = m.engine.uid();
    Ok(m.sh
        .volumes
        .ensure(m.name(), class, a.disk_bytes, uid, uid)?)
}

/// Bytes used and whether that is over the reservation; measured again after 15 s.
pub(super) fn usage(m: &Member<'_>, memo: &mut WorkerMemo) -> (u64, bool) {
    match memo.last_usage {
        Some((at, used, over)) if at.elapsed() < Duration::from_secs(15) => (used, over),
        _ => {
            let (used, over) =
                m.sh.volumes
                    .usage(m.name())
                    .map(|u| (u.used_bytes, u.over))
                    .unwrap_or((0, false));
            if over {
                warn!(
                    member = m.name(),
                    used,
                    size = m.a.disk_bytes,
                    "volume over its reservation"
                );
            }
            memo.last_usage = Some((Instant::now(), used, over));
            (used, over)
        }
    }
}
