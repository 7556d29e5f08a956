//! `mofang node ...`: nodes, their state and reservations, drain/cordon, revocation and
//! join tokens.

use super::render::{ms_to_time, print_json, render_table, word};
use super::tls;
use anyhow::Result;
use clap::Subcommand;
use mofang_scheduler::client::{Client, NodeAction};
use mofang_scheduler::cluster::NodeView2;

#[derive(Subcommand, Debug)]
pub(crate) enum NodeCmd {
    /// List nodes.
    List,
    /// Show one node.
    Show {
        /// Name.
        name: String,
    },
    /// Stop placing on a node and move its members away.
    Drain {
        /// Name.
        name: String,
    },
    /// Stop placing on a node.
    Cordon {
        /// Name.
        name: String,
    },
    /// Allow placing on a node again.
    Uncordon {
        /// Name.
        name: String,
    },
    /// Refuse a node's certificates from now on (admin); its members are handled as on a
    /// node loss. A new certificate (a join token made with --node) admits it again.
    Revoke {
        /// Name.
        name: String,
    },
    /// One-time tokens with which a new agent gets its certificate (admin).
    #[command(subcommand)]
    JoinToken(JoinTokenCmd),
}

#[derive(Subcommand, Debug)]
pub(crate) enum JoinTokenCmd {
    /// Create a token; give it to one agent as `tls.join_token`.
    Create {
        /// Lifetime: 90s, 30m, 1h, 2d (one minute to one week).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Admit only this node (a host joined again); default: any node not registered.
        #[arg(long)]
        node: Option<String>,
    },
}

/// Runs `mofang node ...`.
pub(crate) async fn run(c: &Client, cmd: NodeCmd, json: bool) -> Result<()> {
    match cmd {
        NodeCmd::List => {
            let nodes = c.nodes().await?;
            if json {
                print_json(&nodes);
                return Ok(());
            }
            print!("{}", render_nodes(&nodes));
        }
        // JSON either way: a node has more than a screen of fields.
        NodeCmd::Show { name } => print_json(&c.node(&name).await?),
        NodeCmd::Drain { name } => action(c, &name, NodeAction::Drain, json).await?,
        NodeCmd::Cordon { name } => action(c, &name, NodeAction::Cordon, json).await?,
        NodeCmd::Uncordon { name } => action(c, &name, NodeAction::Uncordon, json).await?,
        NodeCmd::Revoke { name } => {
            let r = c.revoke_node(&name).await?;
            if json {
                print_json(&r)
            } else {
                println!(
                    "node {name} revoked: its certificates issued before now are refused; \
                     its members are handled as on a node loss"
                );
            }
        }
        NodeCmd::JoinToken(JoinTokenCmd::Create { ttl, node }) => {
            let secs = tls::parse_ttl(&ttl)?;
            let t = c.create_join_token(Some(secs), node.as_deref()).await?;
            if json {
                print_json(&t)
            } else {
                println!("{}", t.token);
                eprintln!(
                    "one-time join token for {}, valid until {}: set it as tls.join_token in the agent's config",
                    t.node.as_ref().map_or("a new node".to_owned(), |n| format!("node {n}")),
                    ms_to_time(t.expires_at_ms)
                );
            }
        }
    }
    Ok(())
}

async fn action(c: &Client, name: &str, action: NodeAction, json: bool) -> Result<()> {
    let n = c.node_action(name, action).await?;
    if json {
        print_json(&n);
    } else {
        println!("{name}: {}", word(&n.state));
    }
    Ok(())
}

/// `node list`: a row per node with its reservations against what it offers.
fn render_nodes(nodes: &[NodeView2]) -> String {
    let rows = nodes
        .iter()
        .map(|n| {
            vec![
                n.node.name.clone(),
                word(&n.state),
                n.node.address.clone(),
                word(&n.node.labels.get("zone")),
                format!("{:.1}/{}", n.reserved_cpu, word(&n.node.cpu)),
                format!("{}/{}", n.reserved_memory_mib, n.node.memory_bytes >> 20),
                n.members.to_string(),
            ]
        })
        .collect();
    render_table(
        &[
            "NAME",
            "STATE",
            "ADDRESS",
            "ZONE",
            "CPU",
            "MEMORY MIB",
            "MEMBERS",
        ],
        rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_node_row_shows_reservations_against_capacity() {
        let n: NodeView2 = serde_json::from_value(json!({
            "name": "n1", "address": "10.0.0.1", "labels": {"zone": "a"}, "cpu": 4.0,
            "memory_bytes": 8u64 << 30, "disks": [], "admin": "active", "agent_version": "1",
            "registered_at_ms": 1, "http_address": "10.0.0.1:9187",
            "state": "ready", "last_heartbeat_ms": 2, "reserved_cpu": 1.5,
            "reserved_memory_mib": 768, "reserved_disk_mib": {"ssd": 1024}, "members": 2,
            "usage": []
        }))
        .unwrap();
        let text = render_nodes(std::slice::from_ref(&n));
        let row: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            ["n1", "ready", "10.0.0.1", "a", "1.5/4.0", "768/8192", "2"]
        );
        let mut no_zone = n;
        no_zone.node.labels.clear();
        let text = render_nodes(&[no_zone]);
        assert_eq!(
            text.lines().nth(1).unwrap().split_whitespace().nth(3),
            Some("-")
        );
    }
}
