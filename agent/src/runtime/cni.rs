//! Member networking for the containerd runtime through CNI plugins (Debian's
//! `containernetworking-plugins`): one bridge network the agent defines itself (bridge +
//! host-local IPAM, then firewall for the FORWARD chain), a network namespace per member made with `ip netns`, the plugins run
//! as the CNI spec says (config on stdin, `CNI_*` in the environment, the result on stdout).
//! The address lives as long as the namespace, not the database process, like the Docker
//! runtime's holder: a dead server's address answers with a reset.

use super::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The CNI spec version the agent speaks (Debian 12's plugins, 1.1.1, know up to 1.0.0).
const CNI_VERSION: &str = "0.4.0";
/// The interface name inside each member's namespace.
const IFNAME: &str = "eth0";

/// One bridge network of member namespaces.
#[derive(Debug, Clone)]
pub struct Cni {
    /// Where the plugin binaries are (`/usr/lib/cni`).
    pub plugin_dir: PathBuf,
    /// The network's name (the agent's `network`): `ContainerInfo::ips` is keyed by it. The
    /// CNI network itself is named after the bridge, so every network name on one bridge
    /// shares one address pool (host-local keeps a pool per CNI network name).
    pub network: String,
    /// The Linux bridge the plugin makes (at most 15 characters).
    pub bridge: String,
    /// The subnet host-local hands addresses from, e.g. `10.213.0.0/16`.
    pub subnet: String,
    /// host-local's allocation directory (one file per address, holding the container id).
    pub data_dir: PathBuf,
}

/// The part of a CNI result the agent reads.
#[derive(Debug, Deserialize)]
struct CniResult {
    #[serde(default)]
    ips: Vec<CniIp>,
}

#[derive(Debug, Deserialize)]
struct CniIp {
    address: String,
}

/// The path of a named network namespace made by `ip netns add`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/var/run/netns").join(name)
}

impl Cni {
    /// The bridge plugin's network config: the host is the gateway, traffic out is
    /// masqueraded (a member reaches S3 for its backups), addresses from host-local.
    pub fn bridge_config(&self) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": CNI_VERSION,
            "name": self.bridge,
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "subnet": self.subnet,
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": self.data_dir,
            },
        })
    }

    fn loopback_config(&self) -> serde_json::Value {
        serde_json::json!({ "cniVersion": CNI_VERSION, "name": self.bridge, "type": "loopback" })
    }

    /// The firewall plugin chained after the bridge: it accepts the member's forwarded
    /// traffic, which a host whose FORWARD policy is DROP (Docker Engine sets it, with
    /// br_netfilter loaded) would otherwise drop between two members on the bridge.
    fn firewall_config(&self, prev: &serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": CNI_VERSION,
            "name": self.bridge,
            "type": "firewall",
            "prevResult": prev,
        })
    }

    fn result_path(&self, id: &str) -> PathBuf {
        self.data_dir.join("results").join(format!("{id}.json"))
    }

    /// Makes sure the member's namespace exists with its address; returns the address. Idempotent:
    /// a namespace that has an address keeps it (an agent restart, a restarted member).
    pub async fn ensure(&self, id: &str, netns: &str) -> Result<String> {
        let path = netns_path(netns);
        if !path.exists() {
            run_ip(&["netns", "add", netns]).await?;
        }
        let saved = self.result_path(id);
        if let (Some(ip), true) = (self.ip_of(id), saved.exists()) {
            return Ok(ip);
        }
        if self.ip_of(id).is_some() {
            // Half made (cut short before the firewall): the address released and made again.
            self.invoke("DEL", &self.bridge_config(), id, &path).await?;
        }
        self.invoke("ADD", &self.loopback_config(), id, &path)
            .await?;
        let out = self.invoke("ADD", &self.bridge_config(), id, &path).await?;
        let prev: serde_json::Value = serde_json::from_slice(&out)
            .map_err(|e| Error::Api(format!("CNI bridge result for {id}: {e}")))?;
        self.invoke("ADD", &self.firewall_config(&prev), id, &path)
            .await?;
        if let Some(dir) = saved.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Api(format!("{}: {e}", dir.display())))?;
        }
        std::fs::write(&saved, prev.to_string())
            .map_err(|e| Error::Api(format!("{}: {e}", saved.display())))?;
        let result: CniResult = serde_json::from_value(prev)
            .map_err(|e| Error::Api(format!("CNI bridge result for {id}: {e}")))?;
        result
            .ips
            .first()
            .map(|ip| ip.address.split('/').next().unwrap_or_default().to_owned())
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| Error::Api(format!("CNI bridge gave {id} no address")))
    }

    /// Releases the member's address and deletes its namespace; what is already gone is fine.
    pub async fn teardown(&self, id: &str, netns: &str) -> Result<()> {
        let path = netns_path(netns);
        let saved = self.result_path(id);
        // The firewall's rules are found from the result its ADD was given.
        if let Some(prev) = std::fs::read(&saved)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        {
            if let Err(e) = self
                .invoke("DEL", &self.firewall_config(&prev), id, &path)
                .await
            {
                tracing::warn!(container = %id, error = %e, "CNI firewall DEL failed");
            }
        }
        // DEL is idempotent by the spec; host-local releases the address even without a namespace.
        self.invoke("DEL", &self.bridge_config(), id, &path).await?;
        let _ = std::fs::remove_file(&saved);
        if path.exists() {
            run_ip(&["netns", "delete", netns]).await?;
        }
        Ok(())
    }

    /// The address host-local gave container `id`, read from its allocation files.
    pub fn ip_of(&self, id: &str) -> Option<String> {
        let dir = self.data_dir.join(&self.bridge);
        std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.parse::<std::net::IpAddr>().ok()?;
            let text = std::fs::read_to_string(e.path()).ok()?;
            (allocation_owner(&text) == id).then_some(name)
        })
    }

    async fn invoke(
        &self,
        command: &str,
        config: &serde_json::Value,
        id: &str,
        netns: &Path,
    ) -> Result<Vec<u8>> {
        let kind = config["type"].as_str().unwrap_or_default();
        let plugin = self.plugin_dir.join(kind);
        let mut child = Command::new(&plugin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", if kind == "loopback" { "lo" } else { IFNAME })
            .env("CNI_PATH", &self.plugin_dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| Error::Api(format!("CNI plugin {}: {e}", plugin.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            let bytes = config.to_string().into_bytes();
            stdin
                .write_all(&bytes)
                .await
                .map_err(|e| Error::Api(format!("CNI plugin {kind}: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| Error::Api(format!("CNI plugin {kind}: {e}")))?;
        if !out.status.success() {
            // A plugin's error is a JSON object on stdout (`msg`, `details`).
            return Err(Error::Api(format!(
                "CNI {command} {kind} for {id}: {}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(out.stdout)
    }
}

/// The container id in a host-local allocation file (`<id>\r\n<ifname>`, or `<id>` alone).
fn allocation_owner(text: &str) -> &str {
    text.lines().next().unwrap_or_default().trim()
}

async fn run_ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| Error::Api(format!("ip {}: {e}", args.join(" "))))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Api(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cni(dir: &Path) -> Cni {
        Cni {
            plugin_dir: "/usr/lib/cni".into(),
            network: "mofang".into(),
            bridge: "mofang0".into(),
            subnet: "10.213.0.0/16".into(),
            data_dir: dir.to_owned(),
        }
    }

    #[test]
    fn the_bridge_config_names_the_network_bridge_and_subnet() {
        let c = cni(Path::new("/var/lib/x"));
        let v = c.bridge_config();
        assert_eq!(v["name"], "mofang0", "the CNI network is the bridge's");
        assert_eq!(v["bridge"], "mofang0");
        assert_eq!(v["ipam"]["type"], "host-local");
        assert_eq!(v["ipam"]["subnet"], "10.213.0.0/16");
        assert_eq!(v["ipam"]["dataDir"], "/var/lib/x");
    }

    #[test]
    fn an_address_is_found_from_host_locals_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let net = dir.path().join("mofang0");
        std::fs::create_dir_all(&net).expect("mkdir");
        std::fs::write(net.join("10.213.0.2"), "mofang-a\r\neth0").expect("write");
        std::fs::write(net.join("10.213.0.3"), "mofang-b").expect("write");
        std::fs::write(net.join("last_reserved_ip.0"), "10.213.0.3").expect("write");
        std::fs::write(net.join("lock"), "").expect("write");
        let c = cni(dir.path());
        assert_eq!(c.ip_of("mofang-a").as_deref(), Some("10.213.0.2"));
        assert_eq!(c.ip_of("mofang-b").as_deref(), Some("10.213.0.3"));
        assert_eq!(c.ip_of("mofang-c"), None);
    }
}
