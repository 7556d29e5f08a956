//! Step 1, the member's data volume: reserved (or grown) on a disk of the asked class; and
//! its usage for the report, walked every 60 s, every 15 s once it is past 80 % of the
//! reservation.

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

/// Bytes used and whether that is over the reservation, walked again when [`usage_due`].
pub(super) fn usage(m: &Member<'_>, memo: &mut WorkerMemo) -> (u64, bool) {
    match memo.last_usage {
        Some((at, used, over)) if !usage_due(at.elapsed(), used, m.a.disk_bytes) => (used, over),
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

/// Whether a volume's usage, measured `age` ago at `used` of `size` bytes, is walked again:
/// after 60 s (usage moves slowly, and the walk was 6 % of an idle agent's CPU at 50
/// members), after 15 s once past 80 % of the reservation (where it matters soon).
fn usage_due(age: Duration, used: u64, size: u64) -> bool {
    let near_full = size > 0 && used.saturating_mul(5) >= size.saturating_mul(4);
    age >= if near_full {
        Duration::from_secs(15)
    } else {
        Duration::from_secs(60)
    }
}

#[cfg(test)]
mod tests {
    use super::usage_due;
    use std::time::Duration;

    #[test]
    fn a_volume_is_walked_every_minute_and_every_15_s_once_near_full() {
        let gib = 1000u64 << 20;
        let s = Duration::from_secs;
        assert!(!usage_due(s(14), gib / 10, gib));
        assert!(
            !usage_due(s(59), gib / 10, gib),
            "a small volume waits a minute"
        );
        assert!(usage_due(s(60), gib / 10, gib));
        assert!(!usage_due(s(14), gib * 8 / 10, gib));
        assert!(usage_due(s(15), gib * 8 / 10, gib), "80 % full: every 15 s");
        assert!(usage_due(s(15), gib * 2, gib), "over: every 15 s");
        assert!(
            !usage_due(s(15), 0, 0),
            "no reservation known: the slow cadence"
        );
    }
}
