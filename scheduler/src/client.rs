//! A typed client of the REST API v1 (`mofang_scheduler::api`): what the `mofang` CLI, the
//! end-to-end tests and the benchmarks call instead of writing paths and JSON by hand. Each
//! method returns the type the handler serializes (`InstanceView`, `Operation`, `Batch`,
//! `Backup`, ...); a refusal is an [`Error::Api`] carrying the API's error code, so a caller
//! matches on `not_found` or `operation_running` rather than on text.
//!
//! A new leader refuses mutating requests with 503 `leader_warming_up` until it has heard
//! from its nodes (decision 134): the client sends such a request again after the
//! `Retry-After` it gave, for at most [`WARM_UP_PATIENCE`] in all ([`warm_up_wait`]).

use crate::backup::Backup;
use crate::cluster::{
    BackupHealthView, BackupRepoView, InstanceView, JoinToken, NodeView2, Revocation,
};
use crate::model::{AuditEntry, Event, InstanceSpec};
use crate::ops::batch::Batch;
use crate::ops::drift::ParametersView;
use crate::ops::Operation;
use crate::secrets::{KeyringStatus, Rotation};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// The API's own request and answer types, the ones its handlers parse and write (one
/// definition of each: what crosses the wire is named once).
pub use crate::api::{
    AutoFailover, CredentialsView, Deleted, EngineParameter, EngineView, Health, InstancePatch,
    JoinTokenRequest, NewBackup, NewBackupRepo, NewBatch, NewOperation, PromoteRequest, Resumed,
    RootRotation, RotateAccount, RotateRepoKey, RotateRequest,
};

/// What a call of the API can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The scheduler answered with an error status and its JSON error (`{"error": {"code",
    /// "message"}}`); a body without one has the code `error` and the body as the message.
    #[error("{code} ({status}): {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The API's error code (`not_found`, `operation_running`, ...).
        code: String,
        /// What the scheduler said.
        message: String,
    },
    /// The scheduler's address and a path do not make a URL.
    #[error("{url:?} is not a URL of the scheduler's API (give its address as https://host:port)")]
    Address {
        /// The address and path as joined.
        url: String,
    },
    /// The request was not sent or no answer came (connection refused, TLS, timeout).
    #[error("cannot reach the scheduler at {addr}")]
    Send {
        /// The scheduler's address.
        addr: String,
        /// What failed.
        #[source]
        source: reqwest::Error,
    },
    /// The answer's body could not be read.
    #[error("reading the answer to {method} {path}")]
    Read {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
        /// What failed.
        #[source]
        source: reqwest::Error,
    },
    /// A request body could not be written as JSON.
    #[error("writing a request body as JSON")]
    Encode(#[source] serde_json::Error),
    /// The answer is not the JSON this client expects of the path.
    #[error("the answer to {method} {path} did not parse")]
    Decode {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
        /// What failed.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// The API's error code of a refusal; None for a transport or decoding failure.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A 404: no such instance, operation, backup, ...
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

/// The result of a call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The longest the client waits in all for a new leader to warm up before it gives its
/// refusal.
pub const WARM_UP_PATIENCE: Duration = Duration::from_secs(30);

/// How long to wait before sending a request again: only after a 503 `leader_warming_up`
/// (nothing was done: a new leader has not heard from its nodes yet, decision 134), for the
/// `Retry-After` it gave (1 to 10 s), and not past [`WARM_UP_PATIENCE`] in all.
pub fn warm_up_wait(
    status: u16,
    code: &str,
    retry_after_secs: Option<u64>,
    waited: Duration,
) -> Option<Duration> {
    if status != 503 || code != "leader_warming_up" {
        return None;
    }
    let wait = Duration::from_secs(retry_after_secs.unwrap_or(1).clamp(1, 10));
    (waited + wait <= WARM_UP_PATIENCE).then_some(wait)
}

/// The error an answer with a failing `status` and body `text` stands for.
pub fn api_error(status: u16, text: &str) -> Error {
    let v: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()));
    let code = v["error"]["code"].as_str().unwrap_or("error").to_owned();
    let message = v["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| v.to_string());
    Error::Api {
        status,
        code,
        message,
    }
}

/// The URL of `segments` under the API at `addr`, each segment percent-encoded (a name
/// holding `/` or `?` stays one segment), with `query` form-encoded.
pub fn url(addr: &str, segments: &[&str], query: &[(&str, String)]) -> Result<Url> {
    let bad = || Error::Address {
        url: format!("{}/{}", addr.trim_end_matches('/'), segments.join("/")),
    };
    let mut u = Url::parse(addr).map_err(|_| bad())?;
    u.path_segments_mut()
        .map_err(|_| bad())?
        .pop_if_empty()
        .extend(segments);
    if !query.is_empty() {
        let mut q = u.query_pairs_mut();
        for (k, v) in query {
            q.append_pair(k, v);
        }
    }
    Ok(u)
}

/// The URL of `path` (with any query, as given) under the API at `addr`.
pub fn raw_url(addr: &str, path: &str) -> Result<Url> {
    let joined = format!("{}{path}", addr.trim_end_matches('/'));
    Url::parse(&joined).map_err(|_| Error::Address { url: joined })
}

/// Told how long the client waits before sending a request again to a warming-up leader.
pub type WarmUpHook = Arc<dyn Fn(Duration) + Send + Sync>;

/// A client of one scheduler's REST API (a follower forwards to the leader).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    addr: String,
    token: Option<String>,
    on_warm_up: Option<WarmUpHook>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Which part of a log (events, audit) to read: forward from an id, or backward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogRange {
    /// Only entries after this id.
    pub since: Option<u64>,
    /// Only the newest `limit` entries before this id.
    pub before: Option<u64>,
    /// At most this many.
    pub limit: Option<usize>,
}

impl LogRange {
    /// The query pairs of this range.
    pub fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(s) = self.since {
            q.push(("since", s.to_string()));
        }
        if let Some(b) = self.before {
            q.push(("before", b.to_string()));
        }
        if let Some(l) = self.limit {
            q.push(("limit", l.to_string()));
        }
        q
    }
}

impl Client {
    /// A client of the API at `addr` (`https://host:port`) over `http` (which carries the
    /// TLS settings: the cluster CA, a client certificate).
    pub fn new(addr: impl Into<String>, http: reqwest::Client) -> Self {
        Client {
            http,
            addr: addr.into(),
            token: None,
            on_warm_up: None,
        }
    }

    /// Sends `token` as the bearer token.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Calls `hook` with the wait before each request sent again to a warming-up leader.
    pub fn on_warm_up(mut self, hook: impl Fn(Duration) + Send + Sync + 'static) -> Self {
        self.on_warm_up = Some(Arc::new(hook));
        self
    }

    /// The scheduler's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends a request to `url`, again while a new leader warms up; the body of a success.
    async fn send(&self, method: Method, url: Url, body: Option<Vec<u8>>) -> Result<String> {
        let mut waited = Duration::ZERO;
        loop {
            let mut req = self.http.request(method.clone(), url.clone());
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = &body {
                req = req.header(CONTENT_TYPE, "application/json").body(b.clone());
            }
            let resp = req.send().await.map_err(|source| Error::Send {
                addr: self.addr.clone(),
                source,
            })?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<u64>().ok());
            let text = resp.text().await.map_err(|source| Error::Read {
                method: method.clone(),
                path: url.path().to_owned(),
                source,
            })?;
            if (200..300).contains(&status) {
                return Ok(text);
            }
            let err = api_error(status, &text);
            let code = err.code().unwrap_or_default();
            match warm_up_wait(status, code, retry_after, waited) {
                Some(wait) => {
                    if let Some(hook) = &self.on_warm_up {
                        hook(wait);
                    }
                    tokio::time::sleep(wait).await;
                    waited += wait;
                }
                None => return Err(err),
            }
        }
    }

    /// A typed call of `segments` (each percent-encoded) with `query` and a JSON `body`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<T> {
        let url = url(&self.addr, segments, query)?;
        let path = url.path().to_owned();
        let text = self.send(method.clone(), url, body).await?;
        decode(&method, &path, &text)
    }

    /// As [`Client::call`], the answer's body ignored (a 204).
    async fn call_unit(&self, method: Method, segments: &[&str]) -> Result<()> {
        let url = url(&self.addr, segments, &[])?;
        self.send(method, url, None).await.map(drop)
    }

    async fn get<T: DeserializeOwned>(&self, segments: &[&str]) -> Result<T> {
        self.call(Method::GET, segments, &[], None).await
    }

    async fn post<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> Result<T> {
        self.call(Method::POST, segments, &[], Some(json(body)?))
            .await
    }

    // ---- raw JSON, for callers that only pass it through

    /// `GET path` (with any query, as given): the answer as JSON.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        self.call_json(Method::GET, path, None).await
    }

    /// `method path` with a JSON body: the answer as JSON (`null` when empty).
    pub async fn call_json(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let url = raw_url(&self.addr, path)?;
        let body = body.map(json).transpose()?;
        let text = self.send(method.clone(), url, body).await?;
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        decode(&method, path, &text)
    }

    // ---- the scheduler

    /// `GET /v1/health` (no token needed).
    pub async fn health(&self) -> Result<Health> {
        self.get(&["v1", "health"]).await
    }

    /// `GET /v1/engines`: the engines, their versions and parameters.
    pub async fn engines(&self) -> Result<Vec<EngineView>> {
        self.get(&["v1", "engines"]).await
    }

    // ---- nodes

    /// `GET /v1/nodes`: each node with its newest usage sample.
    pub async fn nodes(&self) -> Result<Vec<NodeView2>> {
        self.get(&["v1", "nodes"]).await
    }

    /// `GET /v1/nodes?history=true`: each node with its usage samples of the last ten
    /// minutes.
    pub async fn nodes_with_history(&self) -> Result<Vec<NodeView2>> {
        self.call(
            Method::GET,
            &["v1", "nodes"],
            &[("history", "true".to_owned())],
            None,
        )
        .await
    }

    /// `GET /v1/nodes/{name}`.
    pub async fn node(&self, name: &str) -> Result<NodeView2> {
        self.get(&["v1", "nodes", name]).await
    }

    /// `POST /v1/nodes/{name}/{action}`: `drain`, `cordon` or `uncordon`.
    pub async fn node_action(&self, name: &str, action: NodeAction) -> Result<NodeView2> {
        self.post(&["v1", "nodes", name, action.as_str()], &EMPTY)
            .await
    }

    /// `POST /v1/nodes/{name}/revoke` (admin).
    pub async fn revoke_node(&self, name: &str) -> Result<Revocation> {
        self.post(&["v1", "nodes", name, "revoke"], &EMPTY).await
    }

    /// `POST /v1/join-tokens` (admin): a token valid `ttl_secs`, for `node` or any new one.
    pub async fn create_join_token(
        &self,
        ttl_secs: Option<u64>,
        node: Option<&str>,
    ) -> Result<JoinToken> {
        let req = JoinTokenRequest {
            ttl_secs,
            node: node.map(str::to_owned),
        };
        self.post(&["v1", "join-tokens"], &req).await
    }

    // ---- instances

    /// `POST /v1/instances`.
    pub async fn create_instance(&self, spec: &InstanceSpec) -> Result<InstanceView> {
        self.post(&["v1", "instances"], spec).await
    }

    /// `GET /v1/instances`, only those matching `selector` when given.
    pub async fn instances(&self, selector: Option<&str>) -> Result<Vec<InstanceView>> {
        let query: Vec<(&str, String)> = selector
            .map(|s| ("selector", s.to_owned()))
            .into_iter()
            .collect();
        self.call(Method::GET, &["v1", "instances"], &query, None)
            .await
    }

    /// `GET /v1/instances/{name}`.
    pub async fn instance(&self, name: &str) -> Result<InstanceView> {
        self.get(&["v1", "instances", name]).await
    }

    /// `PATCH /v1/instances/{name}`.
    pub async fn patch_instance(&self, name: &str, patch: &InstancePatch) -> Result<InstanceView> {
        self.call(
            Method::PATCH,
            &["v1", "instances", name],
            &[],
            Some(json(patch)?),
        )
        .await
    }

    /// `DELETE /v1/instances/{name}`.
    pub async fn delete_instance(&self, name: &str) -> Result<Deleted> {
        self.call(Method::DELETE, &["v1", "instances", name], &[], None)
            .await
    }

    /// `GET /v1/instances/{name}/parameters`.
    pub async fn parameters(&self, name: &str) -> Result<ParametersView> {
        self.get(&["v1", "instances", name, "parameters"]).await
    }

    /// `GET /v1/instances/{name}/credentials` (admin).
    pub async fn credentials(&self, name: &str) -> Result<CredentialsView> {
        self.get(&["v1", "instances", name, "credentials"]).await
    }

    /// `POST /v1/instances/{name}/credentials/rotate` (admin).
    pub async fn rotate_credentials(
        &self,
        name: &str,
        account: RotateAccount,
        grace_s: Option<u64>,
    ) -> Result<InstanceView> {
        self.post(
            &["v1", "instances", name, "credentials", "rotate"],
            &RotateRequest { account, grace_s },
        )
        .await
    }

    /// `POST /v1/instances/{name}/switchover`: answers once done.
    pub async fn switchover(&self, name: &str, target: Option<&str>) -> Result<InstanceView> {
        let req = PromoteRequest {
            target: target.map(str::to_owned),
        };
        self.post(&["v1", "instances", name, "switchover"], &req)
            .await
    }

    /// `POST /v1/instances/{name}/failover`: answers once decided.
    pub async fn failover(&self, name: &str, target: Option<&str>) -> Result<InstanceView> {
        let req = PromoteRequest {
            target: target.map(str::to_owned),
        };
        self.post(&["v1", "instances", name, "failover"], &req)
            .await
    }

    /// `POST /v1/instances/{name}/failover/ack`.
    pub async fn failover_ack(&self, name: &str) -> Result<InstanceView> {
        self.post(&["v1", "instances", name, "failover", "ack"], &EMPTY)
            .await
    }

    /// `PUT /v1/instances/{name}/auto-failover`.
    pub async fn set_auto_failover(&self, name: &str, enabled: bool) -> Result<InstanceView> {
        self.call(
            Method::PUT,
            &["v1", "instances", name, "auto-failover"],
            &[],
            Some(json(&AutoFailover { enabled })?),
        )
        .await
    }

    /// `POST /v1/failover/resume`.
    pub async fn failover_resume(&self) -> Result<Resumed> {
        self.post(&["v1", "failover", "resume"], &EMPTY).await
    }

    // ---- operations

    /// `POST /v1/instances/{name}/operations`.
    pub async fn start_operation(&self, name: &str, op: &NewOperation) -> Result<Operation> {
        self.post(&["v1", "instances", name, "operations"], op)
            .await
    }

    /// `GET /v1/instances/{name}/operations`: newest first.
    pub async fn operations(&self, name: &str) -> Result<Vec<Operation>> {
        self.get(&["v1", "instances", name, "operations"]).await
    }

    /// `GET /v1/operations/{id}`.
    pub async fn operation(&self, id: &str) -> Result<Operation> {
        self.get(&["v1", "operations", id]).await
    }

    /// `POST /v1/operations/{id}/cancel`.
    pub async fn cancel_operation(&self, id: &str) -> Result<Operation> {
        self.post(&["v1", "operations", id, "cancel"], &EMPTY).await
    }

    /// Polls operation `id` every `poll` until it has ended (succeeded, failed or
    /// cancelled), showing each answer to `seen`; the operation as it ended.
    pub async fn wait_operation(
        &self,
        id: &str,
        poll: Duration,
        mut seen: impl FnMut(&Operation),
    ) -> Result<Operation> {
        loop {
            let op = self.operation(id).await?;
            seen(&op);
            if op.state.is_terminal() {
                return Ok(op);
            }
            tokio::time::sleep(poll).await;
        }
    }

    // ---- batches

    /// `POST /v1/batches`.
    pub async fn start_batch(&self, batch: &NewBatch) -> Result<Batch> {
        self.post(&["v1", "batches"], batch).await
    }

    /// `GET /v1/batches`: the newest, newest first.
    pub async fn batches(&self, limit: Option<usize>) -> Result<Vec<Batch>> {
        let query: Vec<(&str, String)> = limit
            .map(|l| ("limit", l.to_string()))
            .into_iter()
            .collect();
        self.call(Method::GET, &["v1", "batches"], &query, None)
            .await
    }

    /// `GET /v1/batches/{id}`.
    pub async fn batch(&self, id: &str) -> Result<Batch> {
        self.get(&["v1", "batches", id]).await
    }

    /// `POST /v1/batches/{id}/cancel`.
    pub async fn cancel_batch(&self, id: &str) -> Result<Batch> {
        self.post(&["v1", "batches", id, "cancel"], &EMPTY).await
    }

    // ---- events and audit

    /// `GET /v1/events`, of `instance` only when given.
    pub async fn events(&self, instance: Option<&str>, range: LogRange) -> Result<Vec<Event>> {
        let mut query = range.query();
        if let Some(i) = instance {
            query.push(("instance", i.to_owned()));
        }
        self.call(Method::GET, &["v1", "events"], &query, None)
            .await
    }

    /// `GET /v1/audit` (admin).
    pub async fn audit(&self, range: LogRange) -> Result<Vec<AuditEntry>> {
        self.call(Method::GET, &["v1", "audit"], &range.query(), None)
            .await
    }

    // ---- keyring

    /// `GET /v1/keyring` (admin).
    pub async fn keyring(&self) -> Result<KeyringStatus> {
        self.get(&["v1", "keyring"]).await
    }

    /// `POST /v1/keyring/rotate` (admin).
    pub async fn rotate_keyring(&self) -> Result<Rotation> {
        self.post(&["v1", "keyring", "rotate"], &EMPTY).await
    }

    /// `POST /v1/keyring/rotate-root` (admin).
    pub async fn rotate_root_keyring(&self) -> Result<RootRotation> {
        self.post(&["v1", "keyring", "rotate-root"], &EMPTY).await
    }

    // ---- backups

    /// `POST /v1/instances/{name}/backups`.
    pub async fn create_backup(&self, instance: &str, req: &NewBackup) -> Result<Backup> {
        self.post(&["v1", "instances", instance, "backups"], req)
            .await
    }

    /// `GET /v1/instances/{name}/backups` (also of a deleted instance).
    pub async fn backups(&self, instance: &str) -> Result<Vec<Backup>> {
        self.get(&["v1", "instances", instance, "backups"]).await
    }

    /// `GET /v1/backups`: every backup.
    pub async fn all_backups(&self) -> Result<Vec<Backup>> {
        self.get(&["v1", "backups"]).await
    }

    /// `GET /v1/backup-health`.
    pub async fn backup_health(&self) -> Result<Vec<BackupHealthView>> {
        self.get(&["v1", "backup-health"]).await
    }

    /// `GET /v1/backups/{id}`.
    pub async fn backup(&self, id: &str) -> Result<Backup> {
        self.get(&["v1", "backups", id]).await
    }

    /// `DELETE /v1/backups/{id}`: the backup and its objects.
    pub async fn delete_backup(&self, id: &str) -> Result<()> {
        self.call_unit(Method::DELETE, &["v1", "backups", id]).await
    }

    /// `POST /v1/backups/{id}/verify`.
    pub async fn verify_backup(&self, id: &str) -> Result<Backup> {
        self.post(&["v1", "backups", id, "verify"], &EMPTY).await
    }

    /// `POST /v1/backup-repos` (admin): checked from the scheduler and every live agent.
    pub async fn add_backup_repo(&self, repo: &NewBackupRepo) -> Result<BackupRepoView> {
        self.post(&["v1", "backup-repos"], repo).await
    }

    /// `GET /v1/backup-repos`.
    pub async fn backup_repos(&self) -> Result<Vec<BackupRepoView>> {
        self.get(&["v1", "backup-repos"]).await
    }

    /// `GET /v1/backup-repos/{name}`.
    pub async fn backup_repo(&self, name: &str) -> Result<BackupRepoView> {
        self.get(&["v1", "backup-repos", name]).await
    }

    /// `DELETE /v1/backup-repos/{name}` (admin): forgotten, its objects kept.
    pub async fn delete_backup_repo(&self, name: &str) -> Result<()> {
        self.call_unit(Method::DELETE, &["v1", "backup-repos", name])
            .await
    }

    /// `POST /v1/backup-repos/{name}/rotate-key`: a new repository key (`key`, or a random
    /// one); the old one is retired.
    pub async fn rotate_repo_key(
        &self,
        name: &str,
        key: Option<mofang_common::repo::Secret>,
    ) -> Result<BackupRepoView> {
        let body = RotateRepoKey {
            encryption_key: key,
        };
        self.post(&["v1", "backup-repos", name, "rotate-key"], &body)
            .await
    }

    /// `DELETE /v1/backup-repos/{name}/keys/{key_id}`: forgets a retired key (refused,
    /// `key_in_use`, while anything stored needs it).
    pub async fn retire_repo_key(&self, name: &str, key_id: &str) -> Result<BackupRepoView> {
        self.call(
            Method::DELETE,
            &["v1", "backup-repos", name, "keys", key_id],
            &[],
            None,
        )
        .await
    }
}

/// What `POST /v1/nodes/{name}/...` asks of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAction {
    /// Stop placing on it and move its members away.
    Drain,
    /// Stop placing on it.
    Cordon,
    /// Place on it again.
    Uncordon,
}

impl NodeAction {
    /// The path's last segment.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeAction::Drain => "drain",
            NodeAction::Cordon => "cordon",
            NodeAction::Uncordon => "uncordon",
        }
    }
}

/// `{}`: the body of a POST that takes none.
#[derive(Serialize)]
struct Empty {}

const EMPTY: Empty = Empty {};

/// A JSON answer read as `T`.
fn decode<T: DeserializeOwned>(method: &Method, path: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|source| Error::Decode {
        method: method.clone(),
        path: path.to_owned(),
        source,
    })
}

/// A request body as JSON.
fn json<B: Serialize + ?Sized>(body: &B) -> Result<Vec<u8>> {
    serde_json::to_vec(body).map_err(Error::Encode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::OpKind;
    use std::collections::BTreeMap;

    #[test]
    fn a_create_refused_while_the_leader_warms_up_is_sent_again_within_a_bound() {
        let s = Duration::from_secs;
        assert_eq!(
            warm_up_wait(503, "leader_warming_up", Some(2), s(0)),
            Some(s(2))
        );
        assert_eq!(
            warm_up_wait(503, "leader_warming_up", None, s(0)),
            Some(s(1))
        );
        assert_eq!(
            warm_up_wait(503, "leader_warming_up", Some(600), s(0)),
            Some(s(10))
        );
        assert_eq!(warm_up_wait(503, "leader_warming_up", Some(2), s(29)), None);
        assert_eq!(warm_up_wait(503, "no_leader", Some(2), s(0)), None);
        assert_eq!(warm_up_wait(409, "unplaceable", None, s(0)), None);
        assert_eq!(warm_up_wait(201, "", None, s(0)), None);
    }

    #[test]
    fn an_api_error_carries_its_code_and_reads_as_the_cli_said_it() {
        let e = api_error(
            404,
            r#"{"error": {"code": "not_found", "message": "instance shop not found"}}"#,
        );
        assert!(e.is_not_found());
        assert_eq!(e.code(), Some("not_found"));
        assert_eq!(e.to_string(), "not_found (404): instance shop not found");
        // Not our JSON (a proxy's page): the code `error`, the body as the message.
        let e = api_error(502, "Bad Gateway");
        assert_eq!(e.code(), Some("error"));
        assert_eq!(e.to_string(), r#"error (502): "Bad Gateway""#);
        let e = api_error(500, r#"{"detail": "x"}"#);
        assert_eq!(e.to_string(), r#"error (500): {"detail":"x"}"#);
    }

    #[test]
    fn path_segments_and_queries_are_encoded() {
        let u = url("https://127.0.0.1:8080", &["v1", "instances", "shop"], &[]).unwrap();
        assert_eq!(u.as_str(), "https://127.0.0.1:8080/v1/instances/shop");
        let u = url("https://h:1/", &["v1", "backups", "a/b?c d#e"], &[]).unwrap();
        assert_eq!(u.as_str(), "https://h:1/v1/backups/a%2Fb%3Fc%20d%23e");
        let u = url(
            "http://h:1",
            &["v1", "instances"],
            &[("selector", "env=prod,tier!=db&x".to_owned())],
        )
        .unwrap();
        assert_eq!(
            u.as_str(),
            "http://h:1/v1/instances?selector=env%3Dprod%2Ctier%21%3Ddb%26x"
        );
        // A base under a path prefix (a reverse proxy) keeps it.
        let u = url("https://h/mofang/", &["v1", "health"], &[]).unwrap();
        assert_eq!(u.as_str(), "https://h/mofang/v1/health");
        assert!(matches!(
            url("not a url", &["v1"], &[]),
            Err(Error::Address { .. })
        ));
        let u = raw_url("https://h:1/", "/v1/events?since=3").unwrap();
        assert_eq!(u.as_str(), "https://h:1/v1/events?since=3");
    }

    #[test]
    fn a_log_range_sends_only_what_is_set() {
        let r = LogRange {
            before: Some(i64::MAX as u64),
            limit: Some(5),
            ..LogRange::default()
        };
        assert_eq!(
            r.query(),
            [("before", i64::MAX.to_string()), ("limit", "5".into())]
        );
        assert_eq!(
            LogRange {
                since: Some(0),
                ..LogRange::default()
            }
            .query(),
            [("since", "0".to_owned())]
        );
    }

    /// What the client sends is what the handler reads back: a body read again is the body.
    fn reads_back<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
        body: &T,
    ) -> serde_json::Value {
        let v = serde_json::to_value(body).unwrap();
        assert_eq!(&serde_json::from_value::<T>(v.clone()).unwrap(), body);
        v
    }

    #[test]
    fn request_bodies_send_only_what_is_set() {
        let mut op = NewOperation::new(OpKind::Resize);
        op.memory = Some(512);
        op.timeout_s = Some(3600);
        assert_eq!(
            reads_back(&op),
            serde_json::json!({"type": "resize", "memory": 512, "timeout_s": 3600})
        );
        // Absent: unchanged; `null`: removed. The two must not be confused on the wire.
        assert_eq!(reads_back(&InstancePatch::default()), serde_json::json!({}));
        let patch = InstancePatch {
            backup: Some(None),
            ..InstancePatch::default()
        };
        assert_eq!(reads_back(&patch), serde_json::json!({"backup": null}));
        let mut labels = BTreeMap::new();
        labels.insert("team".to_owned(), Some("pay".to_owned()));
        labels.insert("old".to_owned(), None);
        let patch = InstancePatch {
            labels,
            ..InstancePatch::default()
        };
        assert_eq!(
            reads_back(&patch),
            serde_json::json!({"labels": {"team": "pay", "old": null}})
        );
        let batch = NewBatch {
            selector: "env=prod".into(),
            kind: OpKind::Restart,
            timeout_s: None,
            max_parallel: 2,
            max_failures: 1,
        };
        assert_eq!(
            reads_back(&batch),
            serde_json::json!({"selector": "env=prod", "type": "restart", "max_parallel": 2, "max_failures": 1})
        );
        let backup = NewBackup {
            repo: "main".into(),
            ..NewBackup::default()
        };
        assert_eq!(
            reads_back(&backup),
            serde_json::json!({"repo": "main", "primary": false})
        );
        assert_eq!(
            reads_back(&PromoteRequest::default()),
            serde_json::json!({})
        );
        let rotate = RotateRequest {
            account: RotateAccount::App,
            grace_s: None,
        };
        assert_eq!(reads_back(&rotate), serde_json::json!({"account": "app"}));
        assert_eq!(
            reads_back(&JoinTokenRequest::default()),
            serde_json::json!({})
        );
    }

    /// The handler takes `name`, `encrypt` and `encryption_key` off a repository's body and
    /// reads the rest as the kind's `RepoSpec`, which refuses another kind's fields.
    #[test]
    fn a_backup_repo_body_holds_its_kind_s_fields_only() {
        use mofang_common::repo::{RepoSpec, Secret};
        let spec_of = |repo: &NewBackupRepo| {
            let mut v = reads_back(repo);
            let fields = v.as_object_mut().unwrap();
            for k in ["name", "encrypt", "encryption_key"] {
                fields.remove(k);
            }
            serde_json::from_value::<RepoSpec>(v).unwrap()
        };
        let fs = NewBackupRepo {
            name: "main".into(),
            kind: "fs".into(),
            path: Some("/srv/b".into()),
            ..NewBackupRepo::default()
        };
        assert_eq!(
            reads_back(&fs),
            serde_json::json!({"name": "main", "kind": "fs", "path": "/srv/b"})
        );
        assert_eq!(spec_of(&fs).kind(), "fs");
        let s3 = NewBackupRepo {
            name: "offsite".into(),
            kind: "s3".into(),
            endpoint: Some("http://10.0.0.5:8333".into()),
            bucket: Some("b".into()),
            access_key_id: Some("id".into()),
            secret_access_key: Some(Secret("shh".into())),
            path_style: Some(false),
            encrypt: true,
            encryption_key: Some(Secret("k".into())),
            ..NewBackupRepo::default()
        };
        assert_eq!(spec_of(&s3).kind(), "s3");
        assert!(!format!("{s3:?}").contains("shh"), "{s3:?}");
    }
}
