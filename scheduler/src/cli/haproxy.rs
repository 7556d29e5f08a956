//! `mofang instance haproxy-config <name>`: an HAProxy config with a read-write port that
//! always goes to the writable primary and a read-only port that spreads reads over healthy
//! replicas. Health checks ask each member's agent (`/v1/members/<member>/primary` or
//! `/replica`); server names are member ids, so one `uri-lf` check line serves them all.

use serde_json::Value;
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
}

/// Renders the config for an instance view (`GET /v1/instances/{name}`). Members without a
/// known address or check address are left out, with a comment saying so.
pub fn render(inst: &Value, p: &Ports) -> String {
    let name = inst["name"].as_str().unwrap_or("instance");
    let mut servers = String::new();
    let mut skipped = String::new();
    for m in inst["members"].as_array().into_iter().flatten() {
        let id = m["id"].as_str().unwrap_or_default();
        let addr = m["address"].as_str().unwrap_or_default();
        let check = m["check_address"].as_str().unwrap_or_default();
        match (addr.is_empty(), check.rsplit_once(':')) {
            (false, Some((host, port))) => {
                let _ = writeln!(
                    servers,
                    "    server {id} {addr} check addr {host} port {port}"
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
         \x20   bind {bind}:{rw}\n\
         \x20   default_backend {name}_rw\n\
         \n\
         backend {name}_rw\n\
         \x20   option httpchk\n\
         \x20   http-check send meth GET uri-lf /v1/members/%[srv_name]/primary\n\
         \x20   http-check expect status 200\n\
         {servers}\
         \n\
         frontend {name}_ro\n\
         \x20   bind {bind}:{ro}\n\
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
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_server_line_per_member_with_its_agent_check() {
        let inst = json!({"name": "shop", "members": [
            {"id": "shop-0", "address": "10.0.0.5:3306", "check_address": "10.0.0.5:9187"},
            {"id": "shop-1", "address": "10.0.0.6:3306", "check_address": "10.0.0.6:9187"},
            {"id": "shop-2", "address": "", "check_address": ""}
        ]});
        let c = render(
            &inst,
            &Ports {
                bind: "127.0.0.1".into(),
                rw: 3306,
                ro: 3307,
                max_lag: 10,
            },
        );
        assert!(c.contains("server shop-0 10.0.0.5:3306 check addr 10.0.0.5 port 9187"));
        assert_eq!(c.matches("server shop-1 ").count(), 2, "{c}");
        assert!(c.contains("# shop-2: no address"));
        assert!(c.contains("/v1/members/%[srv_name]/primary"));
        assert!(c.contains("bind 127.0.0.1:3307"));
    }
}
