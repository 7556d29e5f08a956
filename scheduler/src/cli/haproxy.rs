//! `mofang instance haproxy-config <name>`: an HAProxy config with a read-write port that
//! always goes to the writable primary and a read-only port that spreads reads over healthy
//! replicas. Health checks ask each member's agent (`/v1/members/<member>/primary` or
//! `/replica`); server names are member ids, so one `uri-lf` check line serves them all.
//!
//! Traffic is passed through untouched (TCP mode), unless `--ca-file` is given for a Redis
//! instance with TLS: HAProxy then speaks TLS to every member itself, verifying the member's
//! certificate against the cluster CA **and its name** (the member id, which every member
//! certificate names: `verifyhost` and SNI per server), so it never forwards to a server
//! that is not the member it means (decision 111). MariaDB upgrades to TLS inside its own
//! protocol, which HAProxy cannot originate: its traffic stays passed through, and clients
//! verify end to end.

use mofang_scheduler::cluster::InstanceView;
use std::fmt::Write;

/// Ports and bind address of the rendered frontends.
#[derive(Debug, Clone)]
pub struct Ports {
    /// Address to bind.
    pub bind: String,
    /// Read-write port (primary).
    pub rw: u16,
    /// Read-only port (replicas, round robin).
    pub ro: u16,
    /// `/replica` lag limit, seconds.
    pub max_lag: u32,
    /// The cluster CA file HAProxy verifies members against (`--ca-file`): TLS to the
    /// members, name verified (Redis with TLS only).
    pub ca_file: Option<String>,
    /// A certificate and key (one PEM file) for HAProxy's own frontends (`--frontend-cert`):
    /// clients speak TLS to HAProxy. Without it the frontends are plain text (bind them to a
    /// private or loopback address).
    pub frontend_cert: Option<String>,
}

/// How HAProxy reaches the members of `inst`, or why it cannot as asked.
fn member_tls(inst: &InstanceView, p: &Ports) -> Result<Option<String>, String> {
    let Some(ca) = &p.ca_file else {
        if p.frontend_cert.is_some() {
            return Err(
                "--frontend-cert needs --ca-file: HAProxy terminates TLS only when it \
                        also speaks TLS to the members"
                    .into(),
            );
        }
        return Ok(None);
    };
    let engine = inst.engine.as_str();
    if !inst.spec.tls.is_on() {
        return Err(format!(
            "--ca-file: instance {} has tls off; its members serve no certificate",
            inst.name
        ));
    }
    if engine != "redis" {
        return Err(format!(
            "--ca-file: HAProxy cannot speak TLS to {engine} members ({engine} upgrades to TLS \
             inside its own protocol); leave --ca-file out: traffic passes through and clients \
             verify the member themselves"
        ));
    }
    Ok(Some(ca.clone()))
}

/// Renders the config for an instance view (`GET /v1/instances/{name}`). Members without a
/// known address or check address are left out, with a comment saying so.
pub fn render(inst: &InstanceView, p: &Ports) -> Result<String, String> {
    let name = inst.name.as_str();
    let tls = member_tls(inst, p)?;
    let mut servers = String::new();
    let mut skipped = String::new();
    for m in &inst.members {
        let (id, addr, check) = (&m.id, &m.address, &m.check_address);
        match (addr.is_empty(), check.rsplit_once(':')) {
            (false, Some((host, port))) => {
                // The check goes to the agent in plain HTTP (`no-check-ssl`); the traffic to
                // the member over TLS, its certificate's name checked against the member id.
                let ssl = tls.as_deref().map_or(String::new(), |ca| {
                    format!(
                        " ssl verify required ca-file {ca} verifyhost {id} sni str({id}) no-check-ssl"
                    )
                });
                let _ = writeln!(
                    servers,
                    "    server {id} {addr} check addr {host} port {port}{ssl}"
                );
            }
            _ => {
                let _ = writeln!(
                    skipped,
                    "# {id}: no address or agent check address known yet; render again later"
                );
            }
        }
    }
    let mut out = String::new();
    let _ = write!(
        out,
        "# HAProxy config for Mofang instance {name}, rendered by `mofang instance haproxy-config`.\n\
         # {bind}:{rw} reaches the writable primary of the current epoch; {bind}:{ro} spreads reads\n\
         # over replicas within {max_lag} s of lag. Checks ask each member's agent.\n\
         {skipped}\
         global\n\
         \x20   maxconn 4096\n\
         \n\
         defaults\n\
         \x20   mode tcp\n\
         \x20   timeout connect 2s\n\
         \x20   timeout client 1h\n\
         \x20   timeout server 1h\n\
         \x20   timeout check 1s\n\
         \x20   default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions\n\
         \n\
         frontend {name}_rw\n\
         \x20   bind {bind}:{rw}{crt}\n\
         \x20   default_backend {name}_rw\n\
         \n\
         backend {name}_rw\n\
         \x20   option httpchk\n\
         \x20   http-check send meth GET uri-lf /v1/members/%[srv_name]/primary\n\
         \x20   http-check expect status 200\n\
         {servers}\
         \n\
         frontend {name}_ro\n\
         \x20   bind {bind}:{ro}{crt}\n\
         \x20   default_backend {name}_ro\n\
         \n\
         backend {name}_ro\n\
         \x20   balance roundrobin\n\
         \x20   option httpchk\n\
         \x20   http-check send meth GET uri-lf /v1/members/%[srv_name]/replica?max_lag={max_lag}\n\
         \x20   http-check expect status 200\n\
         {servers}",
        bind = p.bind,
        rw = p.rw,
        ro = p.ro,
        max_lag = p.max_lag,
        crt = p
            .frontend_cert
            .as_deref()
            .map_or(String::new(), |c| format!(" ssl crt {c}")),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::fixture::{instance, member};

    #[test]
    fn one_server_line_per_member_with_its_agent_check() {
        let inst = instance(
            "shop",
            "mariadb",
            "off",
            vec![
                member("shop-0", "primary", "10.0.0.5:3306", "10.0.0.5:9187"),
                member("shop-1", "replica", "10.0.0.6:3306", "10.0.0.6:9187"),
                member("shop-2", "replica", "", ""),
            ],
        );
        let c = render(&inst, &ports(None, None)).expect("render");
        assert!(c.contains("server shop-0 10.0.0.5:3306 check addr 10.0.0.5 port 9187"));
        assert_eq!(c.matches("server shop-1 ").count(), 2, "{c}");
        assert!(c.contains("# shop-2: no address"));
        assert!(c.contains("/v1/members/%[srv_name]/primary"));
        assert!(c.contains("bind 127.0.0.1:6380\n"));
        assert!(!c.contains("ssl"), "passed through: {c}");
    }

    fn ports(ca: Option<&str>, crt: Option<&str>) -> Ports {
        Ports {
            bind: "127.0.0.1".into(),
            rw: 6379,
            ro: 6380,
            max_lag: 10,
            ca_file: ca.map(str::to_owned),
            frontend_cert: crt.map(str::to_owned),
        }
    }

    #[test]
    fn haproxy_verifies_each_redis_members_name_when_given_the_ca() {
        let inst = instance(
            "cache",
            "redis",
            "required",
            vec![
                member("cache-0", "primary", "10.0.0.5:6379", "10.0.0.5:9187"),
                member("cache-1", "replica", "10.0.0.6:6379", "10.0.0.6:9187"),
            ],
        );
        let c = render(&inst, &ports(Some("/etc/haproxy/ca.pem"), None)).expect("render");
        for id in ["cache-0", "cache-1"] {
            assert_eq!(
                c.matches(&format!(
                    "ssl verify required ca-file /etc/haproxy/ca.pem verifyhost {id} sni str({id}) no-check-ssl\n"
                ))
                .count(),
                2,
                "{c}"
            );
        }
        assert!(c.contains("bind 127.0.0.1:6379\n"), "plain frontends: {c}");
        let c = render(&inst, &ports(Some("ca.pem"), Some("haproxy.pem"))).expect("render");
        assert!(
            c.contains("bind 127.0.0.1:6379 ssl crt haproxy.pem\n"),
            "{c}"
        );
        assert!(
            c.contains("bind 127.0.0.1:6380 ssl crt haproxy.pem\n"),
            "{c}"
        );
    }

    #[test]
    fn member_tls_is_refused_where_haproxy_cannot_speak_it() {
        let maria = instance("shop", "mariadb", "required", vec![]);
        let e = render(&maria, &ports(Some("ca.pem"), None)).expect_err("mariadb");
        assert!(e.contains("inside its own protocol"), "{e}");
        let off = instance("cache", "redis", "off", vec![]);
        let e = render(&off, &ports(Some("ca.pem"), None)).expect_err("off");
        assert!(e.contains("tls off"), "{e}");
        let e = render(&off, &ports(None, Some("h.pem"))).expect_err("frontend alone");
        assert!(e.contains("--frontend-cert needs --ca-file"), "{e}");
        // Without --ca-file a TLS instance is passed through as before.
        assert!(render(&maria, &ports(None, None)).is_ok());
    }
}
