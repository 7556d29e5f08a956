//! Database endpoints in the service directory: every member is an instance of a service
//! named after its database instance, tagged `primary` or `replica`, with a health check
//! answered by the member's agent (`/v1/members/{member}/primary` or `/replica`), so
//! `primary.<instance>.service.consul` resolves to the writable primary only. The leader
//! keeps the directory in step with the desired roles (on every change, and every second).

use super::{lock, Cluster};
use crate::registry::{MemberCheck, MemberService, Registry};
use mofang_common::Role;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tracing::{info, warn};

/// What was registered last, per member: (instance, role, address, check URL, epoch).
pub type Registered = HashMap<String, (String, Role, String, String, u64)>;

impl Cluster {
    /// Registers new or changed members, deregisters members that are gone.
    pub async fn sync_endpoints(&self, reg: &dyn Registry, done: &mut Registered) {
        let want: Registered = {
            let inner = lock(&self.inner);
            let mut want = HashMap::new();
            for i in inner.instances.values().filter(|i| i.revision > 0) {
                for m in &i.members {
                    let Some(s) = inner.live.get(&m.node).and_then(|l| l.members.get(&m.id)) else {
                        continue;
                    };
                    if s.address.is_empty() {
                        continue;
                    }
                    let check = inner
                        .nodes
                        .get(&m.node)
                        .filter(|n| !n.http_address.is_empty())
                        .map(|n| {
                            format!("http://{}/v1/members/{}/{}", n.http_address, m.id, m.role)
                        })
                        .unwrap_or_default();
                    want.insert(
                        m.id.clone(),
                        (
                            i.spec.name.clone(),
                            m.role,
                            s.address.clone(),
                            check,
                            i.epoch,
                        ),
                    );
                }
            }
            want
        };
        for (member, w) in &want {
            if done.get(member) == Some(w) {
                continue;
            }
            let (instance, role, address, check, epoch) = w;
            let Some((host, port)) = address
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
            else {
                continue;
            };
            let svc = MemberService {
                instance: instance.clone(),
                member: member.clone(),
                role: *role,
                address: host,
                port,
                check: if check.is_empty() {
                    // No agent HTTP address known: a TTL check the scheduler never passes
                    // keeps the member out of DNS rather than in it unchecked.
                    MemberCheck::Ttl {
                        ttl: Duration::from_secs(10),
                    }
                } else {
                    MemberCheck::Http {
                        url: check.clone(),
                        interval: Duration::from_secs(1),
                    }
                },
                meta: BTreeMap::from([("epoch".to_owned(), epoch.to_string())]),
            };
            match reg.register_member(&svc).await {
                Ok(()) => {
                    info!(member = %member, instance = %instance, role = %role, "endpoint registered");
                    done.insert(member.clone(), w.clone());
                }
                Err(e) => warn!(member = %member, error = %e, "could not register endpoint"),
            }
        }
        let gone: Vec<String> = done
            .keys()
            .filter(|m| !want.contains_key(*m))
            .cloned()
            .collect();
        for m in gone {
            match reg.deregister_member(&m).await {
                Ok(()) => {
                    done.remove(&m);
                }
                Err(e) => warn!(member = %m, error = %e, "could not deregister endpoint"),
            }
        }
    }
}
