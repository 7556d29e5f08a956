//! Step 5b, parameters (`reconfigure`, issue 17): when the scheduler's parameters generation
//! is newer than the one this member applied, the dynamic parameters of the catalogue in the
//! assignment's settings are set live on the server (MariaDB `SET GLOBAL`, Redis
//! `CONFIG SET`); the config already carries every one of them (step 2), so a restart keeps
//! them and the restart-needed ones take effect at the rolling restart that follows. The
//! member then reports the generation.
//!
//! Step 6c, reading them back (`GET /v1/instances/{name}/parameters`, drift): the effective
//! values are read on their own cadence ([`PARAMETERS_EVERY`]), at once after a new
//! generation was applied or the server restarted, never at every pass: the pass is the
//! liveness check, and a few hundred variables per member every 250 ms were most of its
//! cost on a busy host.

use super::answers::Server;
use super::config::Configured;
use super::{Member, WorkerMemo};
use crate::engine::catalogue_settings;
use crate::state::MemberState;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How often a member's effective parameters are read when nothing changed.
pub(super) const PARAMETERS_EVERY: Duration = Duration::from_secs(10);

/// When, in which container start and at which applied generation the parameters were last
/// read.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ParametersRead {
    pub at: Instant,
    /// `<container id>@<started at>`: a restart (same container) starts a new server, whose
    /// values are read at once (a reconfigure's rolling restart would otherwise show its
    /// restart-needed values as drift for up to [`PARAMETERS_EVERY`] after it ended).
    pub container: String,
    pub generation: u64,
}

/// Whether the effective parameters are due for a read: never read, read in another
/// container (restarted, upgraded), before the generation now applied, or long enough ago.
pub(super) fn parameters_due(
    last: Option<&ParametersRead>,
    now: Instant,
    container: &str,
    generation: u64,
) -> bool {
    match last {
        None => true,
        Some(r) => {
            r.container != container
                || r.generation != generation
                || now.saturating_duration_since(r.at) >= PARAMETERS_EVERY
        }
    }
}

/// Reads the effective parameters when due and keeps them in the worker's memory for the
/// report. A failed read keeps the last values and is tried again on the next pass.
pub(super) async fn read(
    m: &Member<'_>,
    cfg: &Configured,
    server: &Server,
    container: &str,
    st: &MemberState,
    memo: &mut WorkerMemo,
) {
    let now = Instant::now();
    if !parameters_due(
        memo.parameters_read.as_ref(),
        now,
        container,
        st.parameters_generation,
    ) {
        return;
    }
    match m.engine.parameters(&server.target, &cfg.secrets).await {
        Ok(values) => {
            memo.parameters = values;
            memo.parameters_read = Some(ParametersRead {
                at: now,
                container: container.to_owned(),
                generation: st.parameters_generation,
            });
        }
        Err(e) => {
            debug!(member = m.name(), error = %e, "could not read the parameters; trying again")
        }
    }
}

/// The parameters a report carries: the last read, empty before the first.
pub(super) fn last(memo: &WorkerMemo) -> BTreeMap<String, String> {
    memo.parameters.clone()
}

/// Applies the dynamic parameters once per generation. A failure is logged and tried again
/// on the next pass; it never stops the pass.
pub(super) async fn apply(m: &Member<'_>, cfg: &Configured, server: &Server, st: &mut MemberState) {
    let a = m.a;
    if a.parameters_generation <= st.parameters_generation {
        return;
    }
    let kind = m.engine.kind();
    let settings = a
        .settings
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (name, value) in catalogue_settings(kind, &settings) {
        let dynamic = mofang_common::params::find(kind, name).is_some_and(|p| p.dynamic);
        if !dynamic {
            continue;
        }
        if let Err(e) = m
            .engine
            .set_parameter(&server.target, &cfg.secrets, name, &value)
            .await
        {
            warn!(member = m.name(), parameter = name, error = %e, "could not set a parameter live; trying again");
            return;
        }
    }
    st.parameters_generation = a.parameters_generation;
    if let Err(e) = m.sh.state.save_member(m.name(), st) {
        warn!(member = m.name(), error = %e, "could not record the parameters applied");
        return;
    }
    info!(
        member = m.name(),
        generation = a.parameters_generation,
        "parameters applied"
    );
}
