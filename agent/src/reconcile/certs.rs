//! Step 2a, database traffic TLS (issue 15 point 7): a member of an instance with TLS has its
//! own key and a certificate of the cluster CA for the names it is reached at.
//!
//! The key is made here and never leaves the host: it is kept sealed in the state directory
//! (`members/<member>/tls.sealed`) and rendered 0600 for the server's uid into the member's
//! config directory. The agent sends a certificate request to the scheduler
//! (`SignMemberCertificate`, over the link's mutual TLS), which signs it for the names it
//! allows (`scheduler/src/cluster/member_certs.rs`). On a Docker network the member's address
//! is its container's IP, known only once the container runs: the first certificate names the
//! member and its container, a second one (same key) adds the IP once the scheduler has seen
//! it reported, and the server loads it without a restart (`Engine::reload_tls`).

use super::answers::Server;
use super::config::{self, Configured};
use super::status::report;
use super::{Action, Error, Member, Result, Step, WorkerMemo};
use crate::config::NetworkMode;
use crate::engine::ClientTls;
use crate::runtime::ContainerInfo;
use crate::state::{MemberState, MemberTlsState};
use mofang_common::proto::MemberCertificateRequest;
use mofang_common::DbTls;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

/// A certificate is renewed this long before it expires.
const RENEW_BEFORE_S: i64 = 30 * 86_400;
/// How long a signing call may take.
const SIGN_TIMEOUT: Duration = Duration::from_secs(5);

/// Step 2a: with TLS on, the member's key and a certificate naming what is known before its
/// container runs (its container's name; with host networking its address too). Until the
/// first certificate is signed the pass stops: the server must find its files at start.
pub(super) async fn material(
    m: &Member<'_>,
    st: &MemberState,
) -> Result<Step<Option<(DbTls, MemberTlsState)>>> {
    let (sh, a) = (m.sh, m.a);
    let mode =
        DbTls::parse(&a.tls).ok_or_else(|| Error::BadAssignment(format!("tls {:?}", a.tls)))?;
    if !mode.is_on() {
        return Ok(Step::Next(None));
    }
    let wanted = wanted_names(
        m.name(),
        &sh.cfg.network_mode(),
        &sh.cfg.advertise_address,
        None,
    );
    match ensure(m, &wanted).await {
        Ok(t) => Ok(Step::Next(Some((mode, t)))),
        Err(reason) => {
            report(sh, a, st, None, None, false, reason);
            Ok(Step::Stop(Action::Requeue(Duration::from_secs(1))))
        }
    }
}

/// Step 3a, on a Docker network: once the container runs, its certificate names its IP too
/// (signed again with the same key once the scheduler has seen the address reported; asked at
/// most every 2 s while refused). Until it does, the member is not healthy
/// (`WorkerMemo::tls_pending`).
pub(super) async fn name_address(
    m: &Member<'_>,
    cfg: &mut Configured,
    st: &mut MemberState,
    running: &ContainerInfo,
    memo: &mut WorkerMemo,
) -> Result<()> {
    memo.tls_pending = None;
    let (Some(kept), NetworkMode::Docker(net)) = (cfg.tls.clone(), cfg.network.clone()) else {
        return Ok(());
    };
    let ip = running.ips.get(&net).map(String::as_str);
    let wanted = wanted_names(m.name(), &cfg.network, &m.sh.cfg.advertise_address, ip);
    let may_ask = memo.tls_retry_at.is_none_or(|t| Instant::now() >= t);
    if may_ask && !covers(&kept, &wanted, now_s()) {
        let renewed = ensure(m, &wanted).await.unwrap_or_else(|_| kept.clone());
        memo.tls_retry_at =
            (!covers(&renewed, &wanted, now_s())).then(|| Instant::now() + Duration::from_secs(2));
        if renewed != kept {
            let mode = DbTls::parse(&m.a.tls).unwrap_or(DbTls::Required);
            *cfg = config::write(m, st, Some((mode, renewed)))?;
        }
    }
    memo.tls_pending = cfg
        .tls
        .as_ref()
        .filter(|t| !covers(t, &wanted, now_s()))
        .map(|_| format!("waiting for a certificate naming {}", wanted.join(", ")));
    Ok(())
}

/// Step 4a: a server that started before its current certificate was written loads it
/// without a restart, once per container and certificate. A failure keeps the member
/// unhealthy and is tried again next pass.
pub(super) async fn load(
    m: &Member<'_>,
    cfg: &Configured,
    server: &Server,
    running: &ContainerInfo,
    memo: &mut WorkerMemo,
) {
    let Some(t) = &cfg.tls else {
        return;
    };
    let loaded = Some((running.id.clone(), t.cert_pem.clone()));
    if memo.tls_loaded == loaded {
        return;
    }
    match m.engine.reload_tls(&server.target, &cfg.secrets).await {
        Ok(()) => memo.tls_loaded = loaded,
        Err(e) => {
            warn!(member = %m.name(), error = %e, "could not make the server load its certificate");
            memo.tls_pending = Some(format!("the server has not loaded its certificate: {e}"));
        }
    }
}

/// Step 3b, TLS as the running server has it (decision 95): the mode it read from its config
/// at its last start, kept in the member's state. After a change of the instance's `tls` the
/// config holds the new mode at once, but a server turns TLS on or off only when it restarts
/// (the rolling restart of the change): until then the agent reaches it as it serves, over
/// TLS with the member's kept certificate's CA, or in plain text.
pub(super) fn serving(
    m: &Member<'_>,
    cfg: &mut Configured,
    st: &mut MemberState,
    running: &ContainerInfo,
) -> Result<()> {
    let started_at = running.started_at.clone().unwrap_or_default();
    let now = serving_after(st.serving_tls.as_ref(), &started_at, cfg.mode);
    if st.serving_tls.as_ref() != Some(&now) {
        if st.serving_tls.as_ref().is_some_and(|k| k.mode != now.mode) {
            info!(member = m.name(), serving = %now.mode, "the server serves the TLS mode of its config from this start");
        }
        st.serving_tls = Some(now.clone());
        m.sh.state.save_member(m.name(), st)?;
    }
    let serving = DbTls::parse(&now.mode).unwrap_or(cfg.mode);
    cfg.client = if !serving.is_on() {
        None
    } else if let Some(t) = &cfg.tls {
        Some(client_tls(m.name(), t))
    } else {
        // Turning TLS off: the server still serves it until its restart.
        m.sh.state
            .member_tls(m.name())?
            .map(|t| client_tls(m.name(), &t))
    };
    Ok(())
}

/// Step 4b: `optional` <-> `required` needs no restart: a MariaDB server that serves TLS
/// refuses plain text or not as `require_secure_transport` says, set live. Turning TLS off,
/// a server that required it accepts plain text at once (`optional`) until it restarts
/// without TLS, so members already restarted reach it. A failure is tried again next pass.
pub(super) async fn set_live(
    m: &Member<'_>,
    cfg: &Configured,
    server: &Server,
    st: &mut MemberState,
) -> Result<()> {
    let Some(kept) = st.serving_tls.clone() else {
        return Ok(());
    };
    let serving = DbTls::parse(&kept.mode).unwrap_or(cfg.mode);
    let Some(to) = live_change(serving, cfg.mode) else {
        return Ok(());
    };
    match m
        .engine
        .require_tls(&server.target, &cfg.secrets, to == DbTls::Required)
        .await
    {
        Ok(()) => {
            info!(member = m.name(), from = %serving, to = %to, "TLS mode set on the running server");
            st.serving_tls = Some(crate::state::ServingTls {
                mode: to.as_str().into(),
                started_at: kept.started_at,
            });
            m.sh.state.save_member(m.name(), st)?;
        }
        Err(e) => {
            warn!(member = m.name(), error = %e, "could not set the TLS mode on the running server");
        }
    }
    Ok(())
}

/// The mode a server serves with ([`serving`]): what it was last seen with while it runs in
/// the same start, else (a start not seen yet, or never seen) the mode its config holds now,
/// which it read at that start: the agent writes the config before it starts a container.
pub(super) fn serving_after(
    kept: Option<&crate::state::ServingTls>,
    started_at: &str,
    desired: DbTls,
) -> crate::state::ServingTls {
    match kept {
        Some(k) if k.started_at == started_at => k.clone(),
        _ => crate::state::ServingTls {
            mode: desired.as_str().into(),
            started_at: started_at.to_owned(),
        },
    }
}

/// What to set on a running server that serves TLS ([`set_live`]): the desired mode when it
/// is on; `optional` while it is off and the server still requires TLS; nothing when the
/// server serves no TLS (that takes a restart) or already serves as wanted.
pub(super) fn live_change(serving: DbTls, desired: DbTls) -> Option<DbTls> {
    let want = match (serving, desired) {
        (DbTls::Off, _) => return None,
        (_, DbTls::Off) => DbTls::Optional,
        (_, on) => on,
    };
    (want != serving).then_some(want)
}

/// Whether a replica replicates over TLS: it has the cluster CA (its instance's TLS is on)
/// and its primary serves TLS (`primary_tls`, as the primary last reported it; empty from an
/// older scheduler: as the instance's mode says).
pub(super) fn replicate_over_tls(desired: DbTls, primary_tls: &str) -> bool {
    desired.is_on() && (primary_tls.is_empty() || DbTls::parse(primary_tls) != Some(DbTls::Off))
}

/// The names a member is reached at besides its id: its container's name, and its address
/// (the node's advertised address with host networking, its IP on a Docker network once known).
pub(super) fn wanted_names(
    member: &str,
    network: &NetworkMode,
    advertise_address: &str,
    ip: Option<&str>,
) -> Vec<String> {
    let mut names = vec![super::Shared::container_name(member)];
    let address = match network {
        NetworkMode::Host => Some(advertise_address),
        NetworkMode::Docker(_) => ip,
    };
    if let Some(a) = address.filter(|a| !a.is_empty()) {
        names.push(a.to_owned());
    }
    names
}

/// Whether a kept certificate serves: it carries every name wanted and does not expire within
/// [`RENEW_BEFORE_S`].
pub(super) fn covers(kept: &MemberTlsState, wanted: &[String], now_s: i64) -> bool {
    wanted.iter().all(|w| kept.names.contains(w)) && kept.not_after - now_s > RENEW_BEFORE_S
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// How the agent itself talks to the member: the CA, and the member id as the name.
pub(super) fn client_tls(member: &str, kept: &MemberTlsState) -> ClientTls {
    ClientTls {
        ca_pem: kept.ca_pem.clone(),
        server_name: member.to_owned(),
    }
}

/// The member's TLS material for `wanted` names: the kept one when it covers them, else a
/// certificate newly signed for them (with the kept key, or a new one). When signing fails,
/// the kept material is used as it is, if any; with none, the reason (the pass waits).
pub(super) async fn ensure(m: &Member<'_>, wanted: &[String]) -> Result<MemberTlsState, String> {
    let member = m.name();
    let kept =
        m.sh.state
            .member_tls(member)
            .map_err(|e| format!("member TLS state: {e}"))?;
    if let Some(k) = &kept {
        if covers(k, wanted, now_s()) {
            return Ok(k.clone());
        }
    }
    match sign(m, kept.as_ref(), wanted).await {
        Ok(new) => {
            m.sh.state
                .save_member_tls(member, &new)
                .map_err(|e| format!("member TLS state: {e}"))?;
            info!(member, names = ?new.names, "member certificate signed by the cluster CA");
            Ok(new)
        }
        Err(e) => match kept {
            Some(k) => {
                debug!(member, error = %e, "member certificate not renewed yet; the kept one serves");
                Ok(k)
            }
            None => Err(format!("waiting for the member's certificate: {e}")),
        },
    }
}

/// Asks the scheduler to sign a request for `wanted` made with the kept key (or a new one).
async fn sign(
    m: &Member<'_>,
    kept: Option<&MemberTlsState>,
    wanted: &[String],
) -> Result<MemberTlsState, String> {
    let member = m.name();
    // Names already signed stay (an address learnt later adds to them).
    let mut names: Vec<String> = kept.map(|k| k.names.clone()).unwrap_or_default();
    for w in wanted {
        if !names.contains(w) {
            names.push(w.clone());
        }
    }
    let req = mofang_common::tls::pki::member_csr(member, &names, kept.map(|k| k.key_pem.as_str()))
        .map_err(|e| e.to_string())?;
    let Some(mut client) = m.sh.scheduler.get() else {
        return Err("no session with the scheduler".into());
    };
    let call = client.sign_member_certificate(MemberCertificateRequest {
        node: m.sh.cfg.node.clone(),
        member: member.to_owned(),
        csr_pem: req.cert_pem,
        names: names.clone(),
    });
    let answer = tokio::time::timeout(SIGN_TIMEOUT, call)
        .await
        .map_err(|_| format!("the scheduler did not answer within {SIGN_TIMEOUT:?}"))?
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    mofang_common::tls::check_key_pair(&answer.cert_pem, &req.key_pem)
        .map_err(|e| format!("the signed certificate does not fit the member's key: {e}"))?;
    let not_after = mofang_common::tls::not_after(&answer.cert_pem)
        .ok_or("the signed certificate cannot be read")?;
    Ok(MemberTlsState {
        key_pem: req.key_pem,
        cert_pem: answer.cert_pem,
        ca_pem: answer.ca_pem,
        names,
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(names: &[&str], not_after: i64) -> MemberTlsState {
        MemberTlsState {
            key_pem: String::new(),
            cert_pem: String::new(),
            ca_pem: String::new(),
            names: names.iter().map(|s| s.to_string()).collect(),
            not_after,
        }
    }

    #[test]
    fn a_member_is_named_by_its_container_and_its_address_once_known() {
        let docker = NetworkMode::Docker("net".into());
        assert_eq!(
            wanted_names("db-0", &docker, "10.0.0.5", None),
            ["mofang-db-0"]
        );
        assert_eq!(
            wanted_names("db-0", &docker, "10.0.0.5", Some("172.18.0.3")),
            ["mofang-db-0", "172.18.0.3"]
        );
        assert_eq!(
            wanted_names("db-0", &NetworkMode::Host, "10.0.0.5", Some("172.18.0.3")),
            ["mofang-db-0", "10.0.0.5"]
        );
    }

    #[test]
    fn a_server_serves_the_tls_mode_of_its_config_at_its_last_start() {
        use crate::state::ServingTls;
        let kept = |mode: &str, at: &str| ServingTls {
            mode: mode.into(),
            started_at: at.into(),
        };
        // Never seen: the config's mode (an agent that knew no serving mode, or a new member).
        assert_eq!(serving_after(None, "t1", DbTls::Off), kept("off", "t1"));
        // The instance's tls changed, the server has not restarted: it serves as before.
        let before = kept("off", "t1");
        assert_eq!(serving_after(Some(&before), "t1", DbTls::Required), before);
        // Restarted (the rolling restart, or any start): it read the new config.
        assert_eq!(
            serving_after(Some(&before), "t2", DbTls::Required),
            kept("required", "t2")
        );
    }

    #[test]
    fn optional_and_required_change_live_and_tls_on_or_off_waits_for_a_restart() {
        use DbTls::*;
        assert_eq!(live_change(Optional, Required), Some(Required));
        assert_eq!(live_change(Required, Optional), Some(Optional));
        // Turning off: plain text accepted at once, TLS itself goes with the restart.
        assert_eq!(live_change(Required, Off), Some(Optional));
        assert_eq!(live_change(Optional, Off), None);
        // Turning on: nothing live, the server has no certificate loaded until it restarts.
        assert_eq!(live_change(Off, Required), None);
        assert_eq!(live_change(Off, Optional), None);
        assert_eq!(live_change(Required, Required), None);
    }

    #[test]
    fn a_replica_replicates_over_tls_only_from_a_primary_that_serves_it() {
        use DbTls::*;
        assert!(replicate_over_tls(Required, "required"));
        assert!(replicate_over_tls(Optional, "optional"));
        // The primary not restarted yet after TLS was turned on: plain text, it accepts it.
        assert!(!replicate_over_tls(Required, "off"));
        // TLS being turned off: this replica has no CA file any more; the primary accepts
        // plain text (set live to optional).
        assert!(!replicate_over_tls(Off, "optional"));
        // A scheduler that does not say: as the instance's mode.
        assert!(replicate_over_tls(Required, ""));
        assert!(!replicate_over_tls(Off, ""));
    }

    #[test]
    fn a_kept_certificate_serves_until_a_name_is_missing_or_it_nears_its_end() {
        let now = 1_000_000_000;
        let year = now + 365 * 86_400;
        let k = kept(&["mofang-db-0", "172.18.0.3"], year);
        assert!(covers(&k, &["mofang-db-0".into()], now));
        assert!(covers(
            &k,
            &["mofang-db-0".into(), "172.18.0.3".into()],
            now
        ));
        // The container came back with another IP.
        assert!(!covers(
            &k,
            &["mofang-db-0".into(), "172.18.0.9".into()],
            now
        ));
        // Renewed 30 days before it expires.
        assert!(!covers(&k, &["mofang-db-0".into()], year - 29 * 86_400));
    }
}
