//! Credential rotation's order as pure functions (like `failover/decide.rs`: no I/O, no
//! clock inside). A rotation is three steps, each written to the instance record before any
//! agent acts on it, and the next is written only once every member of the instance reports
//! the current one carried out (`MemberStatus.rotation`):
//!
//! 1. `add`: every member accepts the new password beside the old one; everything that logs
//!    in keeps using the old one.
//! 2. `switch`: the new password becomes the instance's (credentials, assignments, the
//!    agents' rendered files and connections, replication); the old one is still accepted,
//!    for at least `grace_ms`.
//! 3. `drop`: members accept the new password only. Then the rotation is over.
//!
//! No consumer is ever switched to a password a member does not accept yet, and no password
//! is dropped while a consumer may still use it: replication, monitoring, the agents' checks
//! and failover keep working throughout (docs/security.md).

use crate::model::{CredentialRotation, Instance};
use mofang_common::rotation::{self, Account, RotationStep};

/// The longest grace an operator may ask for: a week.
pub const MAX_GRACE_MS: u64 = 7 * 24 * 3600 * 1000;

/// Why a rotation cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Another rotation of the instance is under way (409 `rotation_in_progress`).
    #[error("instance {instance}: the {account} password's rotation is at step {step}; wait until it is over")]
    InProgress {
        /// The instance.
        instance: String,
        /// The account being rotated.
        account: Account,
        /// Its step.
        step: RotationStep,
    },
    /// The grace is longer than [`MAX_GRACE_MS`] (422 `invalid`).
    #[error("grace of {grace_s} s is over the limit of {} s", MAX_GRACE_MS / 1000)]
    GraceTooLong {
        /// What was asked.
        grace_s: u64,
    },
}

impl Refusal {
    /// The API error code.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::InProgress { .. } => "rotation_in_progress",
            Refusal::GraceTooLong { .. } => "invalid",
        }
    }
}

/// What to do next with a rotation under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// These members have not reported the current step carried out yet.
    Wait(Vec<String>),
    /// Every member uses the new password; the old one stays accepted until this time (ms).
    Grace(i64),
    /// Write this step.
    Advance(RotationStep),
    /// Every member accepts only the new password: the rotation is over.
    Finish,
}

/// The instance record with a new rotation of `account` at its first step. `password` is
/// the new password; `now_ms` its id.
pub fn start(
    inst: &Instance,
    account: Account,
    password: String,
    grace_ms: u64,
    now_ms: i64,
) -> Result<Instance, Refusal> {
    if let Some(r) = &inst.rotation {
        return Err(Refusal::InProgress {
            instance: inst.spec.name.clone(),
            account: r.account,
            step: r.step,
        });
    }
    if grace_ms > MAX_GRACE_MS {
        return Err(Refusal::GraceTooLong {
            grace_s: grace_ms / 1000,
        });
    }
    let mut next = inst.clone();
    next.rotation = Some(Box::new(CredentialRotation {
        id: now_ms.max(0) as u64,
        account,
        step: RotationStep::Add,
        password,
        grace_ms,
        switched_at_ms: 0,
    }));
    Ok(next)
}

/// What the rotation of `inst` needs next, from what each member reports (`reported(member)`:
/// its `MemberStatus.rotation`, None when it has not reported). Every member of the record
/// counts, whatever its role or its node's state: a member that cannot report (its node is
/// down) holds the rotation until it reports or is replaced.
pub fn next<'a>(
    inst: &'a Instance,
    reported: impl Fn(&str) -> Option<&'a str>,
    now_ms: i64,
) -> Option<Next> {
    let r = inst.rotation.as_ref()?;
    let want = rotation::done(r.id, r.step);
    let missing: Vec<String> = inst
        .members
        .iter()
        .filter(|m| reported(&m.id) != Some(want.as_str()))
        .map(|m| m.id.clone())
        .collect();
    if !missing.is_empty() {
        return Some(Next::Wait(missing));
    }
    Some(match r.step {
        RotationStep::Add => Next::Advance(RotationStep::Switch),
        RotationStep::Switch => {
            let until = r.switched_at_ms.saturating_add(r.grace_ms as i64);
            if now_ms < until {
                Next::Grace(until)
            } else {
                Next::Advance(RotationStep::Drop)
            }
        }
        RotationStep::Drop => Next::Finish,
    })
}

/// The instance record after `next` ([`Next::Advance`] or [`Next::Finish`]; others change
/// nothing). At the switch the new password becomes the instance's and the old one is kept
/// in the rotation until the rotation is over.
pub fn apply(inst: &Instance, next: &Next, now_ms: i64) -> Instance {
    let mut out = inst.clone();
    let Some(r) = out.rotation.as_mut() else {
        return out;
    };
    match next {
        Next::Advance(RotationStep::Switch) if r.step == RotationStep::Add => {
            std::mem::swap(out.credentials.get_mut(r.account), &mut r.password);
            r.step = RotationStep::Switch;
            r.switched_at_ms = now_ms;
        }
        Next::Advance(RotationStep::Drop) if r.step == RotationStep::Switch => {
            r.step = RotationStep::Drop;
        }
        Next::Finish if r.step == RotationStep::Drop => out.rotation = None,
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Credentials, InstanceSpec, MemberRecord, Resources};
    use mofang_common::{EngineKind, Role};
    use std::collections::HashMap;

    fn instance() -> Instance {
        let spec = InstanceSpec {
            name: "orders".into(),
            engine: EngineKind::Mariadb,
            version: "10.11".into(),
            replicas: 2,
            resources: Resources {
                cpu: 1.0,
                memory: 256,
                disk: 1024,
            },
            disk_class: None,
            placement: None,
            labels: Default::default(),
            restore: None,
            tls: Default::default(),
            backup: None,
        };
        let members = ["orders-0", "orders-1", "orders-2"]
            .iter()
            .enumerate()
            .map(|(i, id)| MemberRecord {
                id: (*id).into(),
                node: format!("n{i}"),
                role: if i == 0 { Role::Primary } else { Role::Replica },
                disk_class: "ssd".into(),
            })
            .collect();
        let creds = Credentials {
            admin: "ADMIN-OLD".into(),
            repl: "REPL-OLD".into(),
            monitor: "MON-OLD".into(),
            app: "APP-OLD".into(),
        };
        Instance::new(spec, members, creds)
    }

    /// Every member reports `what`, except those in `silent`.
    fn all(what: &str, silent: &[&str]) -> HashMap<String, String> {
        ["orders-0", "orders-1", "orders-2"]
            .iter()
            .filter(|m| !silent.contains(m))
            .map(|m| ((*m).to_owned(), what.to_owned()))
            .collect()
    }

    fn step(i: &Instance, reports: &HashMap<String, String>, now: i64) -> Option<Next> {
        next(i, |m| reports.get(m).map(String::as_str), now)
    }

    #[test]
    fn the_steps_follow_each_other_only_when_every_member_reports_the_current_one() {
        let i = instance();
        assert_eq!(
            step(&i, &HashMap::new(), 0),
            None,
            "no rotation, nothing to do"
        );
        let i = start(&i, Account::Repl, "REPL-NEW".into(), 5_000, 1_000).expect("start");
        let r = i.rotation.as_ref().expect("rotation");
        assert_eq!((r.id, r.step), (1_000, RotationStep::Add));
        assert_eq!(
            i.credentials.repl, "REPL-OLD",
            "consumers keep the old one while members add"
        );

        // One member has not added it yet (its node is down, say): nobody switches.
        let reports = all("1000:add", &["orders-2"]);
        assert_eq!(
            step(&i, &reports, 2_000),
            Some(Next::Wait(vec!["orders-2".into()]))
        );
        // A report of another rotation or step does not count.
        let mut stale = all("1000:add", &[]);
        stale.insert("orders-1".into(), "999:drop".into());
        assert_eq!(
            step(&i, &stale, 2_000),
            Some(Next::Wait(vec!["orders-1".into()]))
        );

        let n = step(&i, &all("1000:add", &[]), 2_000).expect("next");
        assert_eq!(n, Next::Advance(RotationStep::Switch));
        let i = apply(&i, &n, 2_000);
        assert_eq!(
            i.credentials.repl, "REPL-NEW",
            "the new one is the instance's"
        );
        let r = i.rotation.as_ref().expect("rotation");
        assert_eq!(
            (r.step, r.password.as_str(), r.switched_at_ms),
            (RotationStep::Switch, "REPL-OLD", 2_000)
        );
        assert_eq!(i.credentials.app, "APP-OLD", "other accounts untouched");

        // Members still on `add` hold the switch step back.
        assert!(
            matches!(step(&i, &all("1000:add", &[]), 9_000), Some(Next::Wait(w)) if w.len() == 3)
        );
        // Every member switched: the old one stays for the grace, then is dropped.
        let switched = all("1000:switch", &[]);
        assert_eq!(step(&i, &switched, 6_999), Some(Next::Grace(7_000)));
        let n = step(&i, &switched, 7_000).expect("next");
        assert_eq!(n, Next::Advance(RotationStep::Drop));
        let i = apply(&i, &n, 7_000);
        assert_eq!(
            i.rotation.as_ref().map(|r| r.step),
            Some(RotationStep::Drop)
        );
        assert_eq!(i.credentials.repl, "REPL-NEW");

        assert!(matches!(step(&i, &switched, 8_000), Some(Next::Wait(_))));
        let n = step(&i, &all("1000:drop", &[]), 8_000).expect("next");
        assert_eq!(n, Next::Finish);
        let i = apply(&i, &n, 8_000);
        assert_eq!(i.rotation, None);
        assert_eq!(i.credentials.repl, "REPL-NEW");
    }

    #[test]
    fn one_rotation_at_a_time_and_a_bounded_grace() {
        let i = start(&instance(), Account::App, "APP-NEW".into(), 0, 1).expect("start");
        let e = start(&i, Account::Admin, "X".into(), 0, 2).expect_err("second");
        assert_eq!(e.code(), "rotation_in_progress");
        assert!(
            e.to_string()
                .contains("app password's rotation is at step add"),
            "{e}"
        );
        let e =
            start(&instance(), Account::App, "X".into(), MAX_GRACE_MS + 1, 2).expect_err("grace");
        assert_eq!(e.code(), "invalid");
    }

    #[test]
    fn a_step_applied_twice_or_out_of_order_changes_nothing() {
        let i = start(&instance(), Account::Admin, "ADMIN-NEW".into(), 0, 1).expect("start");
        // A drop or finish before the switch is ignored: the old password is never lost
        // before every consumer has the new one.
        assert_eq!(apply(&i, &Next::Advance(RotationStep::Drop), 5), i);
        assert_eq!(apply(&i, &Next::Finish, 5), i);
        let s = apply(&i, &Next::Advance(RotationStep::Switch), 5);
        assert_eq!(
            apply(&s, &Next::Advance(RotationStep::Switch), 6),
            s,
            "no second swap"
        );
        assert_eq!(apply(&s, &Next::Wait(vec![]), 6), s);
        assert_eq!(apply(&s, &Next::Grace(9), 6), s);
    }

    #[test]
    fn a_rotation_never_prints_its_password() {
        let i = start(&instance(), Account::App, "APP-NEW-SECRET".into(), 0, 1).expect("start");
        assert!(!format!("{:?}", i.rotation).contains("APP-NEW-SECRET"));
        assert!(!format!("{i:?}").contains("APP-NEW-SECRET"));
    }
}
