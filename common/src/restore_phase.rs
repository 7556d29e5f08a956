//! The phases of a restore as the agent reports them and the scheduler shows them (issue 16:
//! a point-in-time restore's binlog download, `mariadb-backup --prepare` and binlog replay
//! have progress of their own, not only the data object's bytes). The agent names its
//! current phase and that phase's counters in `MemberStatus.restore_phase` (and `_done`,
//! `_total`); the one-shot container that prepares and replays says where it is in a marker
//! file of the volume ([`MARKER`], [`parse_marker`]); [`phases`] turns what was reported
//! into every phase of the restore with its state. Pure: no I/O.

use serde::{Deserialize, Serialize};

/// File in the restored volume where the one-shot container writes its phase
/// (`prepare`, `replay <done> <total>`); removed when it ends.
pub const MARKER: &str = ".mofang-restore-phase";

/// One phase of a restore, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// A point-in-time restore's archived binlog files read from the repository (sha256
    /// checked, decrypted, decompressed) into the volume: files.
    Binlogs,
    /// The backup's data object read, decompressed and unpacked: bytes (decompressed).
    Data,
    /// MariaDB: `mariadb-backup --prepare` (InnoDB's crash recovery on the copy), then a
    /// server started on a socket: no counter.
    Prepare,
    /// MariaDB point-in-time restore: the binlog files replayed into that server: files.
    Replay,
}

impl Phase {
    /// Its name in the status and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Binlogs => "binlogs",
            Phase::Data => "data",
            Phase::Prepare => "prepare",
            Phase::Replay => "replay",
        }
    }

    /// The phase named `s` (as [`Phase::as_str`] writes it).
    pub fn parse(s: &str) -> Option<Phase> {
        [Phase::Binlogs, Phase::Data, Phase::Prepare, Phase::Replay]
            .into_iter()
            .find(|p| p.as_str() == s)
    }

    /// What its counters count.
    pub fn unit(self) -> &'static str {
        match self {
            Phase::Binlogs | Phase::Replay => "files",
            Phase::Data => "bytes",
            Phase::Prepare => "",
        }
    }
}

/// The phases a restore goes through: MariaDB unpacks and prepares, and with archived
/// binlogs (a point-in-time restore) downloads them first and replays them last; Redis
/// only writes its RDB.
pub fn plan(engine: &str, binlog_files: usize) -> Vec<Phase> {
    match (engine, binlog_files) {
        ("mariadb", 0) => vec![Phase::Data, Phase::Prepare],
        ("mariadb", _) => vec![Phase::Binlogs, Phase::Data, Phase::Prepare, Phase::Replay],
        _ => vec![Phase::Data],
    }
}

/// What the one-shot container wrote in [`MARKER`]: `prepare`, or `replay <done> <total>`.
/// `None` for anything else (an empty file caught while it was being written).
pub fn parse_marker(text: &str) -> Option<(Phase, u64, u64)> {
    let mut it = text.split_whitespace();
    let phase = Phase::parse(it.next()?)?;
    match phase {
        Phase::Prepare => Some((phase, 0, 0)),
        Phase::Replay => {
            let done = it.next()?.parse().ok()?;
            let total = it.next()?.parse().ok()?;
            Some((phase, done, total))
        }
        Phase::Binlogs | Phase::Data => None,
    }
}

/// Where one phase is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseState {
    /// Ended.
    Done,
    /// Under way.
    Running,
    /// Not begun.
    Pending,
}

/// One phase of a restore with its counters (`unit`: `bytes`, `files`, or empty when it
/// has none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseProgress {
    /// The phase.
    pub phase: Phase,
    /// Where it is.
    pub state: PhaseState,
    /// Units done.
    pub done: u64,
    /// Units in all (0: no counter).
    pub total: u64,
    /// What the counters count.
    pub unit: &'static str,
}

/// What the restoring agent reported: its current phase and that phase's counters, and the
/// data object's bytes (decompressed) so far and in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reported {
    /// The current phase; `None`: an agent that reports only the data's bytes.
    pub phase: Option<Phase>,
    /// Its units done.
    pub done: u64,
    /// Its units in all.
    pub total: u64,
    /// The data object's bytes so far.
    pub data_bytes: u64,
    /// The data object's bytes in all.
    pub data_total: u64,
}

/// Every phase of a restore of `engine` bringing `binlog_files` archived files, with its
/// state: those before the current one done (their counters full), the current one running
/// with what was reported, the rest pending. An agent that names no phase but reports data
/// bytes is in `data`; a reported phase the plan does not hold (an older scheduler's view of
/// a newer agent) leaves every phase pending but the data's bytes shown.
pub fn phases(engine: &str, binlog_files: usize, r: &Reported) -> Vec<PhaseProgress> {
    let plan = plan(engine, binlog_files);
    let current = r
        .phase
        .or((r.data_bytes > 0 || r.data_total > 0).then_some(Phase::Data));
    let at = current.and_then(|c| plan.iter().position(|p| *p == c));
    let files = binlog_files as u64;
    plan.iter()
        .enumerate()
        .map(|(i, &phase)| {
            let state = match at {
                Some(a) if i < a => PhaseState::Done,
                Some(a) if i == a => PhaseState::Running,
                _ => PhaseState::Pending,
            };
            let total = match phase {
                Phase::Binlogs | Phase::Replay => files,
                Phase::Data => r.data_total,
                Phase::Prepare => 0,
            };
            let done = match (state, phase) {
                (PhaseState::Done, _) => total,
                (_, Phase::Data) => r.data_bytes,
                (PhaseState::Running, _) => r.done.min(total),
                (PhaseState::Pending, _) => 0,
            };
            PhaseProgress {
                phase,
                state,
                done,
                total,
                unit: phase.unit(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(v: &[PhaseProgress]) -> Vec<(&'static str, PhaseState, u64, u64)> {
        v.iter()
            .map(|p| (p.phase.as_str(), p.state, p.done, p.total))
            .collect()
    }

    /// A point-in-time restore of three files goes binlogs, data, prepare, replay; each
    /// phase before the current is done with its counters full, the current shows what was
    /// reported, those after are pending at 0.
    #[test]
    fn a_point_in_time_restore_shows_every_phase_in_order() {
        use PhaseState::*;
        let at = |phase, done, total, data_bytes| Reported {
            phase: Some(phase),
            done,
            total,
            data_bytes,
            data_total: 1000,
        };
        assert_eq!(
            states(&phases("mariadb", 3, &at(Phase::Binlogs, 1, 3, 0))),
            vec![
                ("binlogs", Running, 1, 3),
                ("data", Pending, 0, 1000),
                ("prepare", Pending, 0, 0),
                ("replay", Pending, 0, 3)
            ]
        );
        assert_eq!(
            states(&phases("mariadb", 3, &at(Phase::Data, 400, 1000, 400))),
            vec![
                ("binlogs", Done, 3, 3),
                ("data", Running, 400, 1000),
                ("prepare", Pending, 0, 0),
                ("replay", Pending, 0, 3)
            ]
        );
        assert_eq!(
            states(&phases("mariadb", 3, &at(Phase::Prepare, 0, 0, 1000))),
            vec![
                ("binlogs", Done, 3, 3),
                ("data", Done, 1000, 1000),
                ("prepare", Running, 0, 0),
                ("replay", Pending, 0, 3)
            ]
        );
        // A count past the plan's (the files are the plan's) is held to it.
        assert_eq!(
            states(&phases("mariadb", 3, &at(Phase::Replay, 5, 5, 1000))),
            vec![
                ("binlogs", Done, 3, 3),
                ("data", Done, 1000, 1000),
                ("prepare", Done, 0, 0),
                ("replay", Running, 3, 3)
            ]
        );
        let units: Vec<&str> = phases("mariadb", 3, &Reported::default())
            .iter()
            .map(|p| p.unit)
            .collect();
        assert_eq!(units, vec!["files", "bytes", "", "files"]);
    }

    /// Without binlogs MariaDB has data and prepare only, Redis data only; an agent that
    /// reports only bytes is in data; nothing reported: all pending; a phase the plan does
    /// not hold leaves all pending.
    #[test]
    fn plain_restores_and_older_agents() {
        use PhaseState::*;
        let bytes_only = Reported {
            data_bytes: 10,
            data_total: 20,
            ..Reported::default()
        };
        assert_eq!(
            states(&phases("mariadb", 0, &bytes_only)),
            vec![("data", Running, 10, 20), ("prepare", Pending, 0, 0)]
        );
        assert_eq!(
            states(&phases("redis", 0, &bytes_only)),
            vec![("data", Running, 10, 20)]
        );
        assert_eq!(
            states(&phases("mariadb", 0, &Reported::default())),
            vec![("data", Pending, 0, 0), ("prepare", Pending, 0, 0)]
        );
        let replaying = Reported {
            phase: Some(Phase::Replay),
            done: 1,
            total: 2,
            ..bytes_only
        };
        assert_eq!(
            states(&phases("mariadb", 0, &replaying)),
            vec![("data", Pending, 10, 20), ("prepare", Pending, 0, 0)]
        );
    }

    /// The container's marker: `prepare`, `replay <done> <total>`; anything else (empty,
    /// cut, a phase the container never writes) is not read.
    #[test]
    fn the_marker_is_read_or_ignored() {
        assert_eq!(parse_marker("prepare\n"), Some((Phase::Prepare, 0, 0)));
        assert_eq!(parse_marker("replay 2 5\n"), Some((Phase::Replay, 2, 5)));
        for bad in ["", "replay 2", "replay x 5", "data 1 2", "teleport"] {
            assert_eq!(parse_marker(bad), None, "{bad:?}");
        }
        for p in [Phase::Binlogs, Phase::Data, Phase::Prepare, Phase::Replay] {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
        }
    }
}
