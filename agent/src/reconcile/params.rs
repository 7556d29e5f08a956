//! Step 5b, parameters (`reconfigure`, issue 17): when the scheduler's parameters generation
//! is newer than the one this member applied, the dynamic parameters of the catalogue in the
//! assignment's settings are set live on the server (MariaDB `SET GLOBAL`, Redis
//! `CONFIG SET`); the config already carries every one of them (step 2), so a restart keeps
//! them and the restart-needed ones take effect at the rolling restart that follows. The
//! member then reports the generation.

use super::answers::Server;
use super::config::Configured;
use super::Member;
use crate::engine::catalogue_settings;
use crate::state::MemberState;
use tracing::{info, warn};

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
