//! Service registration: schedulers as service `mofang-scheduler`, and every database member
//! as an instance of a service named after its database instance with tag `primary` or
//! `replica`, so `primary.<instance>.service.consul` resolves to the writable primary.
//!
//! The [`Registry`] trait hides the directory; [`ConsulRegistry`] registers with a Consul
//! agent (`/v1/agent/service/register`), which runs the health checks and keeps the catalog
//! in sync (<https://developer.hashicorp.com/consul/api-docs/agent/service>). Register
//! services with the agent on the host where they run: a node's failure then takes its
//! services out of DNS along with it.

use mofang_common::Role;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Name of the schedulers' service.
pub const SCHEDULER_SERVICE: &str = "mofang-scheduler";

/// Why a registration call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory refused or did not answer.
    #[error(transparent)]
    Consul(#[from] crate::consul::Error),
    /// The service description cannot be registered.
    #[error("invalid service {id}: {message}")]
    Invalid {
        /// Service id.
        id: String,
        /// Why.
        message: String,
    },
}

/// Result of a registration call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A scheduler as a service.
#[derive(Debug, Clone)]
pub struct SchedulerService {
    /// Service id, unique among schedulers (e.g. `mofang-scheduler-<host>`).
    pub id: String,
    /// Address agents and clients reach it at.
    pub address: String,
    /// REST API port (the service's port).
    pub rest_port: u16,
    /// Agent gRPC port (tagged address `grpc`, and `grpc_port` in the service metadata).
    pub grpc_port: u16,
    /// URL of the HTTP health check, e.g. `http://10.0.0.5:8080/v1/health`.
    pub health_url: String,
    /// How often the agent runs the check.
    pub check_interval: Duration,
}

impl SchedulerService {
    /// Id of the service's health check; give it to the election so that the leader's
    /// session dies with a failing scheduler.
    pub fn check_id(&self) -> String {
        format!("service:{}", self.id)
    }
}

/// How a member's health is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberCheck {
    /// The agent GETs this URL every `interval`; 2xx is passing, 429 warning, anything else
    /// critical (e.g. the mofang agent's `/v1/members/<member>/primary`).
    Http {
        /// URL.
        url: String,
        /// Interval.
        interval: Duration,
    },
    /// Critical unless [`Registry::set_member_health`] passes it at least every `ttl`.
    Ttl {
        /// TTL.
        ttl: Duration,
    },
}

/// A database member as a service instance.
#[derive(Debug, Clone)]
pub struct MemberService {
    /// Database instance name: the service name.
    pub instance: String,
    /// Member id: the service id.
    pub member: String,
    /// Role: the tag.
    pub role: Role,
    /// Address clients connect to.
    pub address: String,
    /// Port clients connect to.
    pub port: u16,
    /// Health check.
    pub check: MemberCheck,
    /// Service metadata (e.g. `epoch`, `node`, `engine`).
    pub meta: BTreeMap<String, String>,
}

impl MemberService {
    /// Id of the member's health check.
    pub fn check_id(&self) -> String {
        format!("service:{}", self.member)
    }
}

/// A service directory.
#[async_trait::async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Registers (or re-registers) a scheduler.
    async fn register_scheduler(&self, service: &SchedulerService) -> Result<()>;
    /// Removes a scheduler; removing one that is not there is not an error.
    async fn deregister_scheduler(&self, id: &str) -> Result<()>;
    /// Registers a member, or replaces its registration (role change: new tag, new check).
    /// Consul keeps the check's current status across a re-registration, so a healthy
    /// member stays resolvable through a role change.
    async fn register_member(&self, member: &MemberService) -> Result<()>;
    /// Removes a member; removing one that is not there is not an error.
    async fn deregister_member(&self, member: &str) -> Result<()>;
    /// Sets the state of a member's TTL check (`healthy`: passing, else critical).
    async fn set_member_health(&self, member: &str, healthy: bool, note: &str) -> Result<()>;
}

/// [`Registry`] on a Consul agent.
#[derive(Debug, Clone)]
pub struct ConsulRegistry {
    client: crate::consul::ConsulClient,
}

impl ConsulRegistry {
    /// Registers with the agent behind `client`.
    pub fn new(client: crate::consul::ConsulClient) -> Self {
        ConsulRegistry { client }
    }
}

/// Consul's duration syntax.
fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

fn meta(entries: impl IntoIterator<Item = (String, String)>) -> Value {
    Value::Object(
        entries
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect::<Map<_, _>>(),
    )
}

fn check_id_ok(id: &str) -> Result<()> {
    if id.is_empty() || id.contains('/') {
        return Err(Error::Invalid {
            id: id.to_owned(),
            message: "a service id must be non-empty and contain no `/`".to_owned(),
        });
    }
    Ok(())
}

/// The agent's registration body for a scheduler.
fn scheduler_definition(s: &SchedulerService) -> Value {
    json!({
        "ID": s.id,
        "Name": SCHEDULER_SERVICE,
        "Tags": ["rest", "grpc"],
        "Address": s.address,
        "Port": s.rest_port,
        "Meta": meta([
            ("rest_port".to_owned(), s.rest_port.to_string()),
            ("grpc_port".to_owned(), s.grpc_port.to_string()),
        ]),
        "TaggedAddresses": {
            "rest": { "Address": s.address, "Port": s.rest_port },
            "grpc": { "Address": s.address, "Port": s.grpc_port },
        },
        "Check": {
            "Name": "mofang-scheduler health",
            "HTTP": s.health_url,
            // Consul does not hold the cluster CA: the check asks "does it answer", the
            // agents and the CLI verify the certificate themselves (docs/security.md).
            "TLSSkipVerify": s.health_url.starts_with("https://"),
            "Method": "GET",
            "Interval": go_duration(s.check_interval),
            "Timeout": go_duration(s.check_interval.max(Duration::from_secs(1))),
            // A scheduler registers itself while it runs: passing until the first check
            // says otherwise, so an election session can depend on the check at once.
            "Status": "passing",
            // A scheduler that died without deregistering leaves the catalog eventually.
            "DeregisterCriticalServiceAfter": "10m",
        },
    })
}

/// The agent's registration body for a member.
fn member_definition(m: &MemberService) -> Value {
    let check = match &m.check {
        MemberCheck::Http { url, interval } => json!({
            "Name": format!("{} {}", m.member, m.role),
            "HTTP": url,
            "Method": "GET",
            "Interval": go_duration(*interval),
            "Timeout": go_duration((*interval).max(Duration::from_secs(1))),
        }),
        MemberCheck::Ttl { ttl } => json!({
            "Name": format!("{} {}", m.member, m.role),
            "TTL": go_duration(*ttl),
        }),
    };
    json!({
        "ID": m.member,
        "Name": m.instance,
        "Tags": [m.role.as_str()],
        "Address": m.address,
        "Port": m.port,
        "Meta": meta(m.meta.clone()),
        "Check": check,
    })
}

#[async_trait::async_trait]
impl Registry for ConsulRegistry {
    async fn register_scheduler(&self, service: &SchedulerService) -> Result<()> {
        check_id_ok(&service.id)?;
        self.client
            .service_register(&scheduler_definition(service))
            .await?;
        Ok(())
    }

    async fn deregister_scheduler(&self, id: &str) -> Result<()> {
        check_id_ok(id)?;
        self.client.service_deregister(id).await?;
        Ok(())
    }

    async fn register_member(&self, member: &MemberService) -> Result<()> {
        check_id_ok(&member.member)?;
        self.client
            .service_register(&member_definition(member))
            .await?;
        Ok(())
    }

    async fn deregister_member(&self, member: &str) -> Result<()> {
        check_id_ok(member)?;
        self.client.service_deregister(member).await?;
        Ok(())
    }

    async fn set_member_health(&self, member: &str, healthy: bool, note: &str) -> Result<()> {
        check_id_ok(member)?;
        let state = if healthy { "pass" } else { "fail" };
        self.client
            .check_update(&format!("service:{member}"), state, note)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_definition_carries_role_tag_and_check() {
        let m = MemberService {
            instance: "orders".to_owned(),
            member: "orders-1".to_owned(),
            role: Role::Replica,
            address: "10.0.0.7".to_owned(),
            port: 3306,
            check: MemberCheck::Http {
                url: "http://10.0.0.7:7070/v1/members/orders-1/replica".to_owned(),
                interval: Duration::from_secs(1),
            },
            meta: BTreeMap::from([("epoch".to_owned(), "3".to_owned())]),
        };
        let d = member_definition(&m);
        assert_eq!(d["Name"], "orders");
        assert_eq!(d["ID"], "orders-1");
        assert_eq!(d["Tags"], json!(["replica"]));
        assert_eq!(d["Meta"]["epoch"], "3");
        assert_eq!(d["Check"]["Interval"], "1000ms");
        assert_eq!(m.check_id(), "service:orders-1");
    }

    #[test]
    fn ids_with_slashes_are_refused() {
        assert!(check_id_ok("a/b").is_err());
        assert!(check_id_ok("").is_err());
        assert!(check_id_ok("orders-0").is_ok());
    }
}
