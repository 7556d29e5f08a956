//! Step 5a, credential rotation: the member accepts the passwords the rotation's step asks
//! for (both, then the new one only), and from the `switch` step on its replication logs in
//! with the new `repl` password. Carried out on every member by its own agent (accounts do
//! not replicate: MariaDB's are written without binlog, Redis ACLs are per server); the
//! member then reports `<id>:<step>` and the scheduler moves on once every member has.

use super::answers::Server;
use super::config::Configured;
use super::decide::RotationOrder;
use super::Member;
use crate::state::MemberState;
use tracing::{info, warn};

/// Carries out the assignment's rotation step, if any. Returns what the member reports: the
/// step's `<id>:<step>` once done, None when there is no rotation or the step failed this pass
/// (logged; tried again next pass). A failure never stops the pass: the member keeps running
/// and reporting as before.
pub(super) async fn rotate(
    m: &Member<'_>,
    cfg: &Configured,
    server: &Server,
    st: &mut MemberState,
) -> Option<String> {
    let order = RotationOrder::parse(m.a)?;
    let current = cfg.secrets.get(order.account);
    let accepted = order.accepted(current);
    match m
        .engine
        .set_passwords(&server.target, &cfg.secrets, order.account, &accepted)
        .await
    {
        Ok(true) => info!(
            member = m.name(),
            account = %order.account,
            step = %order.step,
            passwords = accepted.len(),
            "account passwords changed for a credential rotation"
        ),
        Ok(false) => {}
        Err(e) => {
            warn!(member = m.name(), account = %order.account, step = %order.step, error = %e, "credential rotation step failed; trying again");
            return None;
        }
    }
    if order.repoint_replication(st) {
        if let Err(e) = m
            .engine
            .use_repl_password(&server.target, &cfg.secrets)
            .await
        {
            warn!(member = m.name(), error = %e, "replication could not switch to the new password; trying again");
            return None;
        }
        st.repl_switched = Some(order.id);
        if let Err(e) = m.sh.state.save_member(m.name(), st) {
            warn!(member = m.name(), error = %e, "could not record the replication password switch");
            return None;
        }
        info!(
            member = m.name(),
            "replication logs in with the new password"
        );
    }
    Some(order.done())
}
