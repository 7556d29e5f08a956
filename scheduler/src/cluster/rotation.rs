//! Carrying out credential rotations: starting one (`POST /v1/instances/{name}/credentials/
//! rotate`) and, on every pass of the 250 ms loop, writing the next step that
//! [`crate::rotation::next`] decides from what the members report. Each step is written to the
//! store (compare-and-set, the instance marked busy for the write only) before any agent
//! hears of it, so a new leader carries on where the last one stopped.

use super::{event, lock, Cluster, Inner, Result};
use crate::model::{now_ms, EventKind, Instance};
use crate::rotation::{self, Next};
use mofang_common::rotation::{Account, RotationStep};
use std::sync::Arc;
use tracing::{info, warn};

/// A rotation as the API shows it (never a password).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RotationView {
    /// The account: `admin`, `repl`, `monitor` or `app`.
    pub account: String,
    /// The step members are carrying out: `add` (both passwords accepted, the old one in
    /// use), `switch` (the new one in use, the old one still accepted), `drop`.
    pub step: String,
    /// When it started (unix ms).
    pub started_at_ms: i64,
    /// How long the old password stays accepted after the switch, seconds.
    pub grace_s: u64,
    /// After the switch: the old password is accepted until at least this time (unix ms).
    pub old_accepted_until_ms: Option<i64>,
    /// Members that have not carried out the current step yet.
    pub waiting_for: Vec<String>,
}

/// What each member of `i` last reported of rotations.
fn reported<'a>(inner: &'a Inner, i: &Instance, member: &str) -> Option<&'a str> {
    let m = i.members.iter().find(|m| m.id == member)?;
    inner
        .live
        .get(&m.node)?
        .members
        .get(member)
        .map(|s| s.rotation.as_str())
}

impl Cluster {
    /// Starts a rotation of `account`'s password with a new random one. The old one stays
    /// accepted for at least `grace_ms` after the switch.
    pub async fn rotate_credentials(
        self: &Arc<Self>,
        name: &str,
        account: Account,
        grace_ms: u64,
    ) -> Result<Instance> {
        let Some(_busy) = self.begin(name) else {
            return Err(crate::failover::rails::Refusal::Busy {
                instance: name.to_owned(),
            }
            .into());
        };
        let current = lock(&self.inner)
            .instances
            .get(name)
            .filter(|i| i.revision > 0)
            .cloned()
            .ok_or_else(|| super::Error::NotFound(format!("instance {name}")))?;
        let next = rotation::start(
            &current,
            account,
            super::records::password(),
            grace_ms,
            now_ms(),
        )?;
        let stored = self
            .write(
                next,
                vec![event(
                    EventKind::CredentialsRotating,
                    Some(name),
                    None,
                    format!(
                        "rotation of the {account} password started: every member is to accept the new one beside the old (grace {} s after the switch)",
                        grace_ms / 1000
                    ),
                )],
            )
            .await?;
        info!(instance = name, %account, "credential rotation started");
        Ok(stored)
    }

    /// The rotation of an instance as the API shows it.
    pub(super) fn rotation_view(&self, inner: &Inner, i: &Instance) -> Option<RotationView> {
        let r = i.rotation.as_ref()?;
        let waiting_for = match rotation::next(i, |m| reported(inner, i, m), now_ms()) {
            Some(Next::Wait(w)) => w,
            _ => Vec::new(),
        };
        Some(RotationView {
            account: r.account.to_string(),
            step: r.step.to_string(),
            started_at_ms: r.id as i64,
            grace_s: r.grace_ms / 1000,
            old_accepted_until_ms: (r.step >= RotationStep::Switch)
                .then(|| r.switched_at_ms.saturating_add(r.grace_ms as i64)),
            waiting_for,
        })
    }

    /// One pass over the rotations under way: writes each next step that is due.
    pub async fn check_rotations(self: &Arc<Self>) {
        let due: Vec<(String, Next)> = {
            let inner = lock(&self.inner);
            let now = now_ms();
            inner
                .instances
                .values()
                .filter(|i| i.revision > 0 && i.rotation.is_some())
                .filter_map(|i| {
                    let n = rotation::next(i, |m| reported(&inner, i, m), now)?;
                    matches!(n, Next::Advance(_) | Next::Finish).then(|| (i.spec.name.clone(), n))
                })
                .collect()
        };
        for (name, n) in due {
            if let Err(e) = self.advance_rotation(&name, &n).await {
                warn!(instance = %name, error = %e, "credential rotation step not written; trying again");
            }
        }
    }

    async fn advance_rotation(self: &Arc<Self>, name: &str, n: &Next) -> Result<()> {
        // A failover or switchover writing meanwhile goes first; the step waits a pass.
        let Some(_busy) = self.begin(name) else {
            return Ok(());
        };
        let current = {
            let inner = lock(&self.inner);
            let Some(i) = inner.instances.get(name).filter(|i| i.revision > 0) else {
                return Ok(());
            };
            // Decided again on the record as it is now: it may have changed since.
            if rotation::next(i, |m| reported(&inner, i, m), now_ms()).as_ref() != Some(n) {
                return Ok(());
            }
            i.clone()
        };
        let Some(r) = current.rotation.as_ref() else {
            return Ok(());
        };
        let account = r.account;
        let next = rotation::apply(&current, n, now_ms());
        let events = match n {
            Next::Advance(RotationStep::Switch) => vec![event(
                EventKind::CredentialsSwitched,
                Some(name),
                None,
                format!(
                    "every member accepts the new {account} password: it is in use from now on; the old one is accepted for {} s more",
                    r.grace_ms / 1000
                ),
            )],
            Next::Finish => vec![event(
                EventKind::CredentialsRotated,
                Some(name),
                None,
                format!("the old {account} password is accepted no more: rotation done"),
            )],
            _ => Vec::new(),
        };
        self.write(next, events).await?;
        info!(instance = name, %account, step = ?n, "credential rotation moved on");
        Ok(())
    }
}
