//! Which member a backup is taken on, as a pure function of what is seen (the shape of
//! `failover/decide.rs`): a healthy replica by default, the least lagging one first, so the
//! primary's clients do not pay for the backup; the primary only when no replica is healthy,
//! or when asked; a named member when named, if it is healthy.

use mofang_common::Role;

/// What is seen of one member.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Member id.
    pub id: String,
    /// Its node.
    pub node: String,
    /// Desired role.
    pub role: Role,
    /// Its agent reports it healthy (and, a replica, replicating), and its node is up.
    pub healthy: bool,
    /// Replication lag in seconds, when known (replicas).
    pub lag_seconds: Option<i64>,
}

/// What the request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ask {
    /// This member.
    pub member: Option<String>,
    /// The primary.
    pub primary: bool,
}

/// A backup cannot be taken: why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoMember {
    /// The named member is not a member of the instance.
    #[error("instance {instance} has no member {member}")]
    Unknown {
        /// The instance.
        instance: String,
        /// The member asked for.
        member: String,
    },
    /// The member asked for (by name, or the primary) is not healthy.
    #[error("member {member} is not healthy: a backup is taken on a healthy member")]
    Unhealthy {
        /// The member.
        member: String,
    },
    /// Asked for both a member and the primary.
    #[error("ask for a member or for the primary, not both")]
    Ambiguous,
    /// No member is healthy.
    #[error("no member of instance {instance} is healthy")]
    NoneHealthy {
        /// The instance.
        instance: String,
    },
}

/// Picks the member; see the module's header for the order.
pub fn choose<'a>(
    instance: &str,
    members: &'a [Candidate],
    ask: &Ask,
) -> Result<&'a Candidate, NoMember> {
    let healthy = |c: &&Candidate| c.healthy;
    match (&ask.member, ask.primary) {
        (Some(_), true) => Err(NoMember::Ambiguous),
        (Some(name), false) => {
            let c = members
                .iter()
                .find(|c| &c.id == name)
                .ok_or_else(|| NoMember::Unknown {
                    instance: instance.to_owned(),
                    member: name.clone(),
                })?;
            Some(c).filter(healthy).ok_or_else(|| NoMember::Unhealthy {
                member: c.id.clone(),
            })
        }
        (None, true) => {
            let p = members
                .iter()
                .find(|c| c.role == Role::Primary)
                .ok_or_else(|| NoMember::NoneHealthy {
                    instance: instance.to_owned(),
                })?;
            Some(p).filter(healthy).ok_or_else(|| NoMember::Unhealthy {
                member: p.id.clone(),
            })
        }
        (None, false) => members
            .iter()
            .filter(|c| c.role == Role::Replica)
            .filter(healthy)
            .min_by(|a, b| {
                let lag = |c: &Candidate| c.lag_seconds.unwrap_or(i64::MAX);
                lag(a).cmp(&lag(b)).then_with(|| a.id.cmp(&b.id))
            })
            .or_else(|| {
                members
                    .iter()
                    .filter(|c| c.role == Role::Primary)
                    .find(healthy)
            })
            .ok_or_else(|| NoMember::NoneHealthy {
                instance: instance.to_owned(),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, role: Role, healthy: bool, lag: Option<i64>) -> Candidate {
        Candidate {
            id: id.into(),
            node: format!("node-{id}"),
            role,
            healthy,
            lag_seconds: lag,
        }
    }

    fn pick(members: &[Candidate], ask: Ask) -> Result<String, NoMember> {
        choose("db", members, &ask).map(|c| c.id.clone())
    }

    /// Default: the healthy replica with the least lag (unknown lag last, then by id); the
    /// primary only when no replica is healthy; nothing when nobody is.
    #[test]
    fn a_healthy_replica_by_default_the_primary_only_when_none_is() {
        let ms = vec![
            m("db-0", Role::Primary, true, None),
            m("db-1", Role::Replica, true, Some(3)),
            m("db-2", Role::Replica, true, Some(0)),
            m("db-3", Role::Replica, false, Some(0)),
        ];
        assert_eq!(pick(&ms, Ask::default()), Ok("db-2".into()));
        let mut lagless = ms.clone();
        lagless[1].lag_seconds = None;
        lagless[2].lag_seconds = None;
        assert_eq!(pick(&lagless, Ask::default()), Ok("db-1".into()));
        let sick: Vec<Candidate> = ms
            .iter()
            .cloned()
            .map(|mut c| {
                c.healthy = c.role == Role::Primary;
                c
            })
            .collect();
        assert_eq!(pick(&sick, Ask::default()), Ok("db-0".into()));
        let dead: Vec<Candidate> = ms
            .iter()
            .cloned()
            .map(|mut c| {
                c.healthy = false;
                c
            })
            .collect();
        assert_eq!(
            pick(&dead, Ask::default()),
            Err(NoMember::NoneHealthy {
                instance: "db".into()
            })
        );
        assert_eq!(
            pick(&[], Ask::default()).map(|_| ()),
            Err(NoMember::NoneHealthy {
                instance: "db".into()
            })
        );
    }

    /// Asked for: the primary, or a named member, if healthy; an unknown or unhealthy one is
    /// refused naming it; both at once is refused.
    #[test]
    fn the_primary_or_a_named_member_when_asked() {
        let ms = vec![
            m("db-0", Role::Primary, true, None),
            m("db-1", Role::Replica, true, Some(0)),
            m("db-2", Role::Replica, false, None),
        ];
        let primary = Ask {
            primary: true,
            ..Ask::default()
        };
        assert_eq!(pick(&ms, primary.clone()), Ok("db-0".into()));
        let named = |n: &str| Ask {
            member: Some(n.into()),
            primary: false,
        };
        assert_eq!(pick(&ms, named("db-1")), Ok("db-1".into()));
        assert_eq!(
            pick(&ms, named("db-2")),
            Err(NoMember::Unhealthy {
                member: "db-2".into()
            })
        );
        assert!(matches!(
            pick(&ms, named("db-9")),
            Err(NoMember::Unknown { .. })
        ));
        assert_eq!(
            pick(
                &ms,
                Ask {
                    member: Some("db-1".into()),
                    primary: true
                }
            ),
            Err(NoMember::Ambiguous)
        );
        let mut sick = ms.clone();
        sick[0].healthy = false;
        assert_eq!(
            pick(&sick, primary),
            Err(NoMember::Unhealthy {
                member: "db-0".into()
            })
        );
    }
}
