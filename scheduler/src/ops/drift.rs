//! Desired against effective engine parameters (`GET /v1/instances/{name}/parameters`,
//! issue 17): for every parameter of the engine's catalogue, the value `reconfigure` set in
//! the instance record and the value each member's server runs as its agent last read it,
//! and the drift between them. A pure function of the record and what agents reported; the
//! cluster gathers the inputs (`cluster/views.rs`).
//!
//! Drift is measured against what the platform asked: a parameter never set by `reconfigure`
//! runs the engine's default and is shown (`default`), never drifting. A difference while
//! the platform is still applying a change is `pending`, not drift: the member has not
//! applied the record's parameters generation yet, or the parameter needs a restart and an
//! operation (the reconfigure's rolling restart) is running on the instance.

use mofang_common::params::catalogue;
use mofang_common::EngineKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// How a member's effective value stands against the desired one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParamState {
    /// The server runs the desired value.
    InSync,
    /// No desired value (never set by `reconfigure`): the server runs its default or its own.
    Default,
    /// The server runs another value while the change is being applied (this member has not
    /// applied the parameters generation yet, or it awaits its restart in a running
    /// operation).
    Pending,
    /// The server runs another value and nothing the platform does will change it: set
    /// behind the platform's back, or a restart-needed value whose rolling restart did not
    /// happen (a cancelled reconfigure). A `reconfigure` with the value (or any rolling
    /// restart for a restart-needed one) brings it back.
    Drift,
    /// Not reported: the member is not observed now (its node is down, its server does not
    /// answer, the instance is stopped) or its agent does not report parameters.
    Unknown,
}

/// One parameter of one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ParameterValue {
    /// The engine's name (`max_connections`, `maxmemory-policy`).
    pub name: String,
    /// The value set by `reconfigure`; absent: never set (the engine's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<String>,
    /// The value the member's server runs, as its agent last read it; absent: unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective: Option<String>,
    /// How the two stand.
    pub state: ParamState,
}

/// One member's parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MemberParameters {
    /// Member id.
    pub member: String,
    /// Its role in the record (`primary`, `replica`).
    pub role: String,
    /// The parameters generation its agent applied (live ones set, config rendered).
    pub applied_generation: u64,
    /// Every parameter of the engine's catalogue, in the catalogue's order.
    pub parameters: Vec<ParameterValue>,
}

/// A member whose server runs another value than the desired one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Drift {
    /// Member id.
    pub member: String,
    /// The parameter.
    pub parameter: String,
    /// The value set by `reconfigure`.
    pub desired: String,
    /// The value its server runs.
    pub effective: String,
}

/// `GET /v1/instances/{name}/parameters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ParametersView {
    /// The instance.
    pub instance: String,
    /// Its engine.
    pub engine: String,
    /// The values set by `reconfigure` (name: value); empty: every parameter at its default.
    pub desired: BTreeMap<String, String>,
    /// The record's parameters generation (grows with every `reconfigure`).
    pub generation: u64,
    /// Each member's values.
    pub members: Vec<MemberParameters>,
    /// Every member and parameter in state `drift`; empty: no drift.
    pub drift: Vec<Drift>,
}

/// A member as seen for the view.
#[derive(Debug, Clone)]
pub struct MemberSeen<'a> {
    /// Member id.
    pub member: &'a str,
    /// Its role in the record.
    pub role: &'a str,
    /// The parameters generation it reports applied (0: none).
    pub applied_generation: u64,
    /// What its server runs, as its agent last reported it; None or empty: not reported.
    pub effective: Option<&'a BTreeMap<String, String>>,
}

/// What the instance record says of its parameters.
#[derive(Debug, Clone, Copy)]
pub struct Desired<'a> {
    /// The instance.
    pub instance: &'a str,
    /// Its engine.
    pub engine: EngineKind,
    /// The values set by `reconfigure`, in canonical form (`params::check`).
    pub values: &'a BTreeMap<String, String>,
    /// The record's parameters generation.
    pub generation: u64,
    /// An operation runs on the instance (a restart-needed value may await its restart).
    pub operation_running: bool,
}

/// The state of one value.
fn state(
    desired: Option<&str>,
    effective: Option<&str>,
    dynamic: bool,
    applied: bool,
    operation_running: bool,
) -> ParamState {
    match (desired, effective) {
        (_, None) => ParamState::Unknown,
        (None, Some(_)) => ParamState::Default,
        (Some(d), Some(e)) if d == e => ParamState::InSync,
        _ if !applied => ParamState::Pending,
        _ if !dynamic && operation_running => ParamState::Pending,
        _ => ParamState::Drift,
    }
}

/// Desired against effective for every member and every parameter of the catalogue.
pub fn view(d: Desired<'_>, members: &[MemberSeen<'_>]) -> ParametersView {
    let mut drift = Vec::new();
    let members = members
        .iter()
        .map(|m| {
            let reported = m.effective.filter(|e| !e.is_empty());
            let applied = m.applied_generation >= d.generation;
            let parameters = catalogue(d.engine)
                .iter()
                .map(|p| {
                    let desired = d.values.get(p.name).cloned();
                    let effective = reported.and_then(|e| e.get(p.name)).cloned();
                    let state = state(
                        desired.as_deref(),
                        effective.as_deref(),
                        p.dynamic,
                        applied,
                        d.operation_running,
                    );
                    if let (ParamState::Drift, Some(want), Some(runs)) =
                        (state, &desired, &effective)
                    {
                        drift.push(Drift {
                            member: m.member.to_owned(),
                            parameter: p.name.to_owned(),
                            desired: want.clone(),
                            effective: runs.clone(),
                        });
                    }
                    ParameterValue {
                        name: p.name.to_owned(),
                        desired,
                        effective,
                        state,
                    }
                })
                .collect();
            MemberParameters {
                member: m.member.to_owned(),
                role: m.role.to_owned(),
                applied_generation: m.applied_generation,
                parameters,
            }
        })
        .collect();
    ParametersView {
        instance: d.instance.to_owned(),
        engine: d.engine.to_string(),
        desired: d.values.clone(),
        generation: d.generation,
        members,
        drift,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn value<'v>(v: &'v ParametersView, member: &str, name: &str) -> &'v ParameterValue {
        v.members
            .iter()
            .find(|m| m.member == member)
            .and_then(|m| m.parameters.iter().find(|p| p.name == name))
            .expect("value")
    }

    fn desired(values: &BTreeMap<String, String>, generation: u64, running: bool) -> Desired<'_> {
        Desired {
            instance: "shop",
            engine: EngineKind::Mariadb,
            values,
            generation,
            operation_running: running,
        }
    }

    #[test]
    fn every_member_on_the_desired_value_is_in_sync_and_no_drift() {
        let want = map(&[("max_connections", "321")]);
        let runs = map(&[("max_connections", "321"), ("wait_timeout", "28800")]);
        let members = [
            MemberSeen {
                member: "shop-0",
                role: "primary",
                applied_generation: 1,
                effective: Some(&runs),
            },
            MemberSeen {
                member: "shop-1",
                role: "replica",
                applied_generation: 1,
                effective: Some(&runs),
            },
        ];
        let v = view(desired(&want, 1, false), &members);
        assert!(v.drift.is_empty(), "{v:?}");
        for m in ["shop-0", "shop-1"] {
            assert_eq!(value(&v, m, "max_connections").state, ParamState::InSync);
            let w = value(&v, m, "wait_timeout");
            assert_eq!((w.state, w.desired.as_deref()), (ParamState::Default, None));
            assert_eq!(w.effective.as_deref(), Some("28800"));
            // Never read: unknown, not drift.
            assert_eq!(value(&v, m, "long_query_time").state, ParamState::Unknown);
        }
        // The catalogue's order, whole.
        assert_eq!(
            v.members[0].parameters.len(),
            catalogue(EngineKind::Mariadb).len()
        );
    }

    #[test]
    fn a_value_changed_behind_the_platforms_back_is_drift_on_that_member_only() {
        let want = map(&[("max_connections", "321")]);
        let good = map(&[("max_connections", "321")]);
        let bad = map(&[("max_connections", "77")]);
        let members = [
            MemberSeen {
                member: "shop-0",
                role: "primary",
                applied_generation: 1,
                effective: Some(&good),
            },
            MemberSeen {
                member: "shop-1",
                role: "replica",
                applied_generation: 1,
                effective: Some(&bad),
            },
        ];
        let v = view(desired(&want, 1, false), &members);
        assert_eq!(
            v.drift,
            [Drift {
                member: "shop-1".into(),
                parameter: "max_connections".into(),
                desired: "321".into(),
                effective: "77".into(),
            }]
        );
        assert_eq!(
            value(&v, "shop-0", "max_connections").state,
            ParamState::InSync
        );
        // An operation running changes nothing for a live parameter: its value is applied
        // before the member reports the generation.
        let v = view(desired(&want, 1, true), &members);
        assert_eq!(v.drift.len(), 1, "{v:?}");
    }

    #[test]
    fn a_change_being_applied_is_pending_not_drift() {
        let want = map(&[
            ("max_connections", "500"),
            ("innodb_log_buffer_size", "8388608"),
        ]);
        let old = map(&[
            ("max_connections", "321"),
            ("innodb_log_buffer_size", "16777216"),
        ]);
        let live_done = map(&[
            ("max_connections", "500"),
            ("innodb_log_buffer_size", "16777216"),
        ]);
        // shop-1 has not applied generation 2 yet; shop-0 has, and awaits its restart.
        let members = [
            MemberSeen {
                member: "shop-0",
                role: "primary",
                applied_generation: 2,
                effective: Some(&live_done),
            },
            MemberSeen {
                member: "shop-1",
                role: "replica",
                applied_generation: 1,
                effective: Some(&old),
            },
        ];
        let v = view(desired(&want, 2, true), &members);
        assert!(v.drift.is_empty(), "{v:?}");
        assert_eq!(
            value(&v, "shop-1", "max_connections").state,
            ParamState::Pending
        );
        assert_eq!(
            value(&v, "shop-0", "innodb_log_buffer_size").state,
            ParamState::Pending
        );
        assert_eq!(
            value(&v, "shop-0", "max_connections").state,
            ParamState::InSync
        );
        // The operation ended (cancelled before the restart): the restart-needed value the
        // server does not run is drift; the member that never applied the generation still
        // has it coming.
        let v = view(desired(&want, 2, false), &members);
        assert_eq!(
            v.drift
                .iter()
                .map(|d| (d.member.as_str(), d.parameter.as_str()))
                .collect::<Vec<_>>(),
            [("shop-0", "innodb_log_buffer_size")]
        );
    }

    #[test]
    fn a_member_not_reporting_is_unknown_never_drift() {
        let want = map(&[("max_connections", "321")]);
        let empty = BTreeMap::new();
        let members = [
            MemberSeen {
                member: "shop-0",
                role: "primary",
                applied_generation: 1,
                effective: None,
            },
            MemberSeen {
                member: "shop-1",
                role: "replica",
                applied_generation: 1,
                effective: Some(&empty),
            },
        ];
        let v = view(desired(&want, 1, false), &members);
        assert!(v.drift.is_empty());
        for m in ["shop-0", "shop-1"] {
            let p = value(&v, m, "max_connections");
            assert_eq!(
                (p.state, p.effective.as_deref()),
                (ParamState::Unknown, None)
            );
            assert_eq!(p.desired.as_deref(), Some("321"));
        }
    }

    #[test]
    fn redis_parameters_come_from_its_own_catalogue() {
        let want = map(&[("maxmemory-policy", "allkeys-lru")]);
        let runs = map(&[("maxmemory-policy", "noeviction"), ("hz", "10")]);
        let members = [MemberSeen {
            member: "kv-0",
            role: "primary",
            applied_generation: 3,
            effective: Some(&runs),
        }];
        let v = view(
            Desired {
                instance: "kv",
                engine: EngineKind::Redis,
                values: &want,
                generation: 3,
                operation_running: false,
            },
            &members,
        );
        assert_eq!(v.engine, "redis");
        assert_eq!(v.drift.len(), 1);
        assert_eq!(v.drift[0].effective, "noeviction");
        assert_eq!(value(&v, "kv-0", "hz").state, ParamState::Default);
        assert!(v.members[0]
            .parameters
            .iter()
            .all(|p| p.name != "max_connections"));
    }
}
