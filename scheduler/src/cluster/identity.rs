//! Node identity records: one-time join tokens (stored hashed, with their expiry) and node
//! revocations, both in the store's metadata so that every scheduler honours them.
//!
//! A join token lets an agent holding no certificate get one signed (`agents.rs`, `Join`).
//! Without `--node` it admits a node name nobody registered yet; with it, that one name (a
//! host joined again). So a token never lets its holder take an existing node's identity.

use super::{event, lock, Cluster, Result};
use crate::model::{now_ms, EventKind};
use crate::store::Store;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use tracing::{info, warn};
use utoipa::ToSchema;

/// Metadata key of the revocations (a JSON map node -> unix ms).
const REVOKED_KEY: &str = "revoked_nodes";
/// Metadata key prefix of join tokens (`join_token/<sha256 of the token>`).
const JOIN_PREFIX: &str = "join_token/";

/// A join token as stored (never the token itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    /// Created, unix ms.
    pub created_at_ms: i64,
    /// Refused from then on, unix ms.
    pub expires_at_ms: i64,
    /// Token name of the admin who made it.
    pub created_by: String,
    /// The only node it admits; none: any node not registered yet.
    pub node: Option<String>,
    /// The node that used it.
    #[serde(default)]
    pub used_by: Option<String>,
    /// When, unix ms.
    #[serde(default)]
    pub used_at_ms: Option<i64>,
}

/// A new join token, as the API returns it once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinToken {
    /// The token: give it to one agent (`tls.join_token`). Shown only now.
    pub token: String,
    /// Refused after this, unix ms.
    pub expires_at_ms: i64,
    /// The only node it admits; none: any node not registered yet.
    pub node: Option<String>,
}

/// A node revocation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Revocation {
    /// The node.
    pub node: String,
    /// From then on its certificates issued before are refused, unix ms.
    pub revoked_at_ms: i64,
}

/// Why a join was refused. Nothing is stored for a refused join.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefusal {
    /// No such token (never made, or mistyped).
    #[error("the join token is not known")]
    Unknown,
    /// Already used.
    #[error("the join token was already used (by node {by} at {at_ms} ms); create another with `mofang node join-token create`")]
    Used {
        /// The node that used it.
        by: String,
        /// When, unix ms.
        at_ms: i64,
    },
    /// Past its expiry.
    #[error("the join token expired (at {at_ms} ms); create another with `mofang node join-token create`")]
    Expired {
        /// The expiry, unix ms.
        at_ms: i64,
    },
    /// The token admits another node.
    #[error("the join token is for node {token_node}, not {asked}")]
    WrongNode {
        /// The node of the token.
        token_node: String,
        /// The node asked.
        asked: String,
    },
    /// The node is registered already and the token is not for it.
    #[error("node {0} is already registered: joining it again needs a token made with --node {0}")]
    AlreadyRegistered(String),
    /// The store failed; nothing was used.
    #[error("the state store failed: {0}")]
    Store(String),
    /// Signing failed.
    #[error("cannot sign the certificate request: {0}")]
    Sign(String),
}

impl JoinRefusal {
    /// Short machine name.
    pub fn code(&self) -> &'static str {
        match self {
            JoinRefusal::Unknown => "unknown_token",
            JoinRefusal::Used { .. } => "token_used",
            JoinRefusal::Expired { .. } => "token_expired",
            JoinRefusal::WrongNode { .. } => "token_for_other_node",
            JoinRefusal::AlreadyRegistered(_) => "node_registered",
            JoinRefusal::Store(_) => "store_unavailable",
            JoinRefusal::Sign(_) => "bad_request",
        }
    }
}

/// The stored digest of a token.
fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

/// Reads the revocations from the store.
pub(super) async fn load_revocations(store: &dyn Store) -> Result<BTreeMap<String, i64>> {
    Ok(match store.get_meta(REVOKED_KEY).await? {
        None => BTreeMap::new(),
        Some(text) => serde_json::from_str(&text).map_err(|e| {
            crate::store::Error::Backend(format!("corrupt {REVOKED_KEY} record: {e}"))
        })?,
    })
}

/// Whether a join with token record `rec` for `node` at `now_ms` is allowed; `registered`
/// says whether the node is known already.
pub fn check_join(
    rec: &JoinTokenRecord,
    node: &str,
    registered: bool,
    now_ms: i64,
) -> Result<(), JoinRefusal> {
    if let (Some(by), Some(at)) = (&rec.used_by, rec.used_at_ms) {
        return Err(JoinRefusal::Used {
            by: by.clone(),
            at_ms: at,
        });
    }
    if now_ms >= rec.expires_at_ms {
        return Err(JoinRefusal::Expired {
            at_ms: rec.expires_at_ms,
        });
    }
    match &rec.node {
        Some(n) if n != node => Err(JoinRefusal::WrongNode {
            token_node: n.clone(),
            asked: node.to_owned(),
        }),
        Some(_) => Ok(()),
        None if registered => Err(JoinRefusal::AlreadyRegistered(node.to_owned())),
        None => Ok(()),
    }
}

impl Cluster {
    /// Runs `f` on the current revocations (node -> unix ms).
    pub fn with_revoked<R>(&self, f: impl FnOnce(&BTreeMap<String, i64>) -> R) -> R {
        f(&self.revoked.borrow())
    }

    /// Follows the revocations (an open watch stream ends when its node is revoked).
    pub fn revocations(&self) -> tokio::sync::watch::Receiver<BTreeMap<String, i64>> {
        self.revoked.subscribe()
    }

    /// Makes a one-time join token valid `ttl_ms`, for `node` only if given; stores its
    /// digest. The token is returned once and never stored.
    pub async fn create_join_token(
        &self,
        ttl_ms: u64,
        node: Option<String>,
        by: &str,
    ) -> Result<JoinToken> {
        let token = hex::encode(rand::random::<[u8; 24]>());
        let now = now_ms();
        let expires_at_ms = now.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
        let rec = JoinTokenRecord {
            created_at_ms: now,
            expires_at_ms,
            created_by: by.to_owned(),
            node: node.clone(),
            used_by: None,
            used_at_ms: None,
        };
        let text =
            serde_json::to_string(&rec).map_err(|e| crate::store::Error::Backend(e.to_string()))?;
        self.store
            .put_meta(&format!("{JOIN_PREFIX}{}", digest(&token)), &text)
            .await?;
        info!(by = %by, node = ?node, expires_at_ms, "join token created");
        Ok(JoinToken {
            token,
            expires_at_ms,
            node,
        })
    }

    /// A join: checks `token` admits `node`, has `sign` make the certificate, marks the token
    /// used, records a `node_joined` event and returns the certificate. Refused: nothing is
    /// stored. One join at a time, so a token is used once.
    pub async fn join(
        &self,
        token: &str,
        node: &str,
        sign: impl FnOnce() -> Result<String, String>,
    ) -> Result<String, JoinRefusal> {
        let _one = self.joins.lock().await;
        let key = format!("{JOIN_PREFIX}{}", digest(token));
        let store_err = |e: crate::store::Error| JoinRefusal::Store(e.to_string());
        let text = self
            .store
            .get_meta(&key)
            .await
            .map_err(store_err)?
            .ok_or(JoinRefusal::Unknown)?;
        let mut rec: JoinTokenRecord =
            serde_json::from_str(&text).map_err(|e| JoinRefusal::Store(e.to_string()))?;
        let registered = lock(&self.inner).nodes.contains_key(node);
        let now = now_ms();
        check_join(&rec, node, registered, now)?;
        let cert = sign().map_err(JoinRefusal::Sign)?;
        rec.used_by = Some(node.to_owned());
        rec.used_at_ms = Some(now);
        let text = serde_json::to_string(&rec).map_err(|e| JoinRefusal::Store(e.to_string()))?;
        self.store.put_meta(&key, &text).await.map_err(store_err)?;
        let ev = event(
            EventKind::NodeJoined,
            None,
            Some(node),
            format!(
                "certificate signed for a join token made by {}",
                rec.created_by
            ),
        );
        if let Err(e) = self.store.append_events(&[ev]).await {
            warn!(error = %e, "could not record the node_joined event");
        }
        info!(node = %node, "node joined: certificate signed");
        Ok(cert)
    }

    /// Revokes `node`: stored first, then its certificates issued before now are refused on
    /// every call, its watch stream ends, and with no heartbeat accepted it goes down after
    /// `node_ttl` like a lost node (its members fail over or are replaced).
    pub async fn revoke_node(&self, node: &str, by: &str) -> Result<Revocation> {
        mofang_common::ids::validate_dns_label("node", node, 63)
            .map_err(|e| super::Error::Invalid(e.to_string()))?;
        let _one = self.joins.lock().await;
        let mut all = load_revocations(self.store.as_ref()).await?;
        let at = now_ms();
        all.insert(node.to_owned(), at);
        let text =
            serde_json::to_string(&all).map_err(|e| crate::store::Error::Backend(e.to_string()))?;
        self.store.put_meta(REVOKED_KEY, &text).await?;
        self.revoked.send_replace(all);
        lock(&self.inner).watchers.remove(node);
        self.store
            .append_events(&[event(
                EventKind::NodeRevoked,
                None,
                Some(node),
                format!("revoked by {by}: certificates issued before now are refused"),
            )])
            .await?;
        warn!(node = %node, by = %by, "node revoked");
        Ok(Revocation {
            node: node.to_owned(),
            revoked_at_ms: at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(node: Option<&str>) -> JoinTokenRecord {
        JoinTokenRecord {
            created_at_ms: 1000,
            expires_at_ms: 5000,
            created_by: "admin".into(),
            node: node.map(str::to_owned),
            used_by: None,
            used_at_ms: None,
        }
    }

    #[test]
    fn a_token_admits_one_new_node_once_before_it_expires() {
        assert_eq!(check_join(&rec(None), "n1", false, 2000), Ok(()));
        assert_eq!(
            check_join(&rec(None), "n1", false, 5000),
            Err(JoinRefusal::Expired { at_ms: 5000 })
        );
        let mut used = rec(None);
        used.used_by = Some("n1".into());
        used.used_at_ms = Some(2000);
        assert!(matches!(
            check_join(&used, "n2", false, 3000),
            Err(JoinRefusal::Used { .. })
        ));
    }

    #[test]
    fn a_token_never_takes_over_a_registered_node_unless_made_for_it() {
        assert_eq!(
            check_join(&rec(None), "n1", true, 2000),
            Err(JoinRefusal::AlreadyRegistered("n1".into()))
        );
        assert_eq!(check_join(&rec(Some("n1")), "n1", true, 2000), Ok(()));
        assert_eq!(
            check_join(&rec(Some("n1")), "n2", false, 2000),
            Err(JoinRefusal::WrongNode {
                token_node: "n1".into(),
                asked: "n2".into()
            })
        );
    }

    #[tokio::test]
    async fn tokens_are_stored_hashed_and_used_once_and_revocations_persist() {
        let store: std::sync::Arc<dyn Store> =
            std::sync::Arc::new(crate::store::SqliteStore::open_in_memory().unwrap());
        let cluster = Cluster::load(store.clone(), std::time::Duration::from_secs(5))
            .await
            .unwrap();
        let t = cluster
            .create_join_token(60_000, None, "admin")
            .await
            .unwrap();
        assert!(store
            .get_meta(&format!("{JOIN_PREFIX}{}", t.token))
            .await
            .unwrap()
            .is_none());
        let stored = store
            .get_meta(&format!("{JOIN_PREFIX}{}", digest(&t.token)))
            .await
            .unwrap()
            .unwrap();
        assert!(
            !stored.contains(&t.token),
            "the token itself is never stored"
        );

        // A refused signing uses nothing.
        assert!(matches!(
            cluster.join(&t.token, "n1", || Err("bad csr".into())).await,
            Err(JoinRefusal::Sign(_))
        ));
        assert_eq!(
            cluster.join(&t.token, "n1", || Ok("CERT".into())).await,
            Ok("CERT".to_owned())
        );
        assert!(matches!(
            cluster.join(&t.token, "n2", || Ok("CERT".into())).await,
            Err(JoinRefusal::Used { .. })
        ));
        assert_eq!(
            cluster.join("nonsense", "n3", || Ok("CERT".into())).await,
            Err(JoinRefusal::Unknown)
        );

        let r = cluster.revoke_node("n1", "admin").await.unwrap();
        assert_eq!(
            cluster.with_revoked(|m| m.get("n1").copied()),
            Some(r.revoked_at_ms)
        );
        // A scheduler loading the store later knows it.
        let again = Cluster::load(store, std::time::Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            again.with_revoked(|m| m.get("n1").copied()),
            Some(r.revoked_at_ms)
        );
        assert!(cluster.revoke_node("Bad Name", "admin").await.is_err());
    }
}
