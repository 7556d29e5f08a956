//! Step 2, secrets and config: the instance's credentials, the member's port, and the
//! server's config files rendered by the engine into the member's config directory.

use super::decide::RotationOrder;
use super::{Member, Result, Shared};
use crate::config::NetworkMode;
use crate::engine::{ClientTls, MemberConfig, MemberTls, Secrets, Target};
use crate::state::{MemberState, MemberTlsState};
use mofang_common::DbTls;

/// What the config step settled, for the steps after it.
pub(super) struct Configured {
    /// The instance's credentials.
    pub(super) secrets: Secrets,
    /// Host networking or a Docker network.
    pub(super) network: NetworkMode,
    /// The port the server listens on.
    pub(super) port: u16,
    /// Database traffic TLS: the member's key, certificate and CA (None: plain text).
    pub(super) tls: Option<MemberTlsState>,
    /// The instance's TLS mode, which the config files carry.
    pub(super) mode: DbTls,
    /// How the agent reaches the server: over TLS while the running server serves it, which
    /// after a change of `mode` lasts until its restart (`certs::serving`).
    pub(super) client: Option<ClientTls>,
}

impl Configured {
    /// Where the agent reaches the server: `host:port`, over TLS when the member has it.
    pub(super) fn target(&self, member: &str, host: String) -> Target {
        Target {
            host,
            port: self.port,
            tls: self.client.clone().map(|mut c| {
                c.server_name = member.to_owned();
                c
            }),
        }
    }
}

/// Step 2: secrets kept, a port allocated (host networking), the config written. A replica
/// whose primary's address the scheduler does not know yet (just created, or the scheduler
/// just restarted) is kept exactly as it is: no new config, except a first one for a new
/// member of an engine that starts before its primary is known (see
/// [`crate::engine::Engine::starts_before_primary_known`]).
pub(super) fn write(
    m: &Member<'_>,
    st: &mut MemberState,
    tls: Option<(DbTls, MemberTlsState)>,
) -> Result<Configured> {
    let (sh, a, member) = (m.sh, m.a, m.name());
    let secrets = sh
        .state
        .secrets(&a.instance, Secrets::from_map(&a.secrets))?;
    let network = sh.cfg.network_mode();
    let port = match network {
        NetworkMode::Host => match st.port {
            Some(p) => p,
            None => {
                let p = sh.allocate_port(member)?;
                st.port = Some(p);
                p
            }
        },
        NetworkMode::Docker(_) => m.engine.kind().port(),
    };
    let announce = match &network {
        NetworkMode::Host => Target {
            host: sh.cfg.advertise_address.clone(),
            port,
            tls: None,
        },
        // On a Docker network the container name resolves for every peer on it.
        NetworkMode::Docker(_) => Target {
            host: Shared::container_name(member),
            port,
            tls: None,
        },
    };
    let mc = MemberConfig {
        member: member.to_owned(),
        port,
        announce,
        memory_bytes: a.memory_bytes,
        replica_of: m.role.replica_of().cloned(),
        settings: a
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        // A server restarted during a rotation accepts what the running one does.
        also_accepted: RotationOrder::parse(a)
            .filter(|r| r.step.both_accepted())
            .map(|r| (r.account, r.other)),
        tls: tls.as_ref().map(|(mode, t)| MemberTls {
            mode: *mode,
            cert_pem: t.cert_pem.clone(),
            key_pem: t.key_pem.clone(),
            ca_pem: t.ca_pem.clone(),
        }),
    };
    let first_config = || {
        std::fs::read_dir(sh.state.config_dir(member))
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
    };
    if !m.role.waiting() || (m.engine.starts_before_primary_known() && first_config()) {
        sh.state
            .write_config(member, &m.engine.render(&mc, &secrets), m.engine.uid())?;
    }
    let mode = tls.as_ref().map_or(DbTls::Off, |(mode, _)| *mode);
    Ok(Configured {
        secrets,
        network,
        port,
        client: tls
            .as_ref()
            .map(|(_, t)| super::certs::client_tls(member, t)),
        tls: tls.map(|(_, t)| t),
        mode,
    })
}
