//! A small client of Consul's HTTP API: the KV, transaction, session and agent-service calls
//! that the Consul store, the Consul election and the Consul registry need.
//!
//! It talks plain HTTP to one Consul agent, normally the one on the same host
//! (<https://developer.hashicorp.com/consul/docs/agent>); the agent forwards to the servers.
//! The ACL token, when set, travels in the `X-Consul-Token` header and is never logged.

use base64::Engine as _;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// Timeout of an ordinary (non-blocking) request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra time given to a blocking query beyond its `wait`: Consul adds up to `wait/16` of
/// jitter (<https://developer.hashicorp.com/consul/api-docs/features/blocking>).
const BLOCKING_SLACK: Duration = Duration::from_secs(5);

/// Why a Consul call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address is not an `http://host:port` URL.
    #[error("invalid consul address {address:?}: {message}")]
    Address {
        /// The address given.
        address: String,
        /// Why it is refused.
        message: String,
    },
    /// The request did not get an answer (connection refused, reset, timed out).
    #[error("consul request {what} failed")]
    Request {
        /// Method and path.
        what: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// Consul answered with an error status.
    #[error("consul answered {what} with {status}: {body}")]
    Status {
        /// Method and path.
        what: String,
        /// HTTP status.
        status: u16,
        /// Consul's message.
        body: String,
    },
    /// Consul's answer could not be read.
    #[error("consul answered {what} with an unreadable body: {message}")]
    Decode {
        /// Method and path.
        what: String,
        /// What was wrong.
        message: String,
    },
}

/// Result of a Consul call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A client of one Consul agent's HTTP API. Cheap to clone.
#[derive(Clone)]
pub struct ConsulClient {
    /// `http://host:port/`.
    base: Url,
    /// ACL token.
    token: Option<String>,
    /// Pooled HTTP connections.
    http: reqwest::Client,
}

impl fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulClient")
            .field("base", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One KV entry as Consul returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// Full key.
    pub key: String,
    /// Value bytes (empty when Consul returned none).
    pub value: Vec<u8>,
    /// Raft index of the entry's creation.
    pub create_index: u64,
    /// Raft index of the entry's last change: the check-and-set version.
    pub modify_index: u64,
    /// Session holding the lock on the key, if any.
    pub session: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawEntry {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    create_index: u64,
    #[serde(default)]
    modify_index: u64,
    #[serde(default)]
    session: Option<String>,
}

impl RawEntry {
    fn decode(self) -> std::result::Result<KvEntry, String> {
        let value = match self.value {
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|e| format!("value of {} is not base64: {e}", self.key))?,
            None => Vec::new(),
        };
        Ok(KvEntry {
            key: self.key,
            value,
            create_index: self.create_index,
            modify_index: self.modify_index,
            session: self.session.filter(|s| !s.is_empty()),
        })
    }
}

/// One KV operation of a transaction (`PUT /v1/txn`).
#[derive(Debug, Clone)]
pub enum TxnOp {
    /// Sets the key.
    Set {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
    },
    /// Sets the key iff its `ModifyIndex` is `index`; index 0 means "iff it does not exist".
    Cas {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Expected `ModifyIndex`.
        index: u64,
    },
    /// Fails the transaction unless the key exists with `ModifyIndex` `index`.
    CheckIndex {
        /// Key.
        key: String,
        /// Expected `ModifyIndex`.
        index: u64,
    },
    /// Deletes the key iff its `ModifyIndex` is `index` (a missing key counts as deleted).
    DeleteCas {
        /// Key.
        key: String,
        /// Expected `ModifyIndex`.
        index: u64,
    },
    /// Reads the key; fails the transaction if it does not exist.
    Get {
        /// Key.
        key: String,
    },
}

impl TxnOp {
    fn to_json(&self) -> Value {
        let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
        let kv = match self {
            TxnOp::Set { key, value } => {
                serde_json::json!({"Verb": "set", "Key": key, "Value": b64(value)})
            }
            TxnOp::Cas { key, value, index } => {
                serde_json::json!({"Verb": "cas", "Key": key, "Value": b64(value), "Index": index})
            }
            TxnOp::CheckIndex { key, index } => {
                serde_json::json!({"Verb": "check-index", "Key": key, "Index": index})
            }
            TxnOp::DeleteCas { key, index } => {
                serde_json::json!({"Verb": "delete-cas", "Key": key, "Index": index})
            }
            TxnOp::Get { key } => serde_json::json!({"Verb": "get", "Key": key}),
        };
        serde_json::json!({ "KV": kv })
    }
}

/// What a transaction did.
#[derive(Debug)]
pub enum TxnOutcome {
    /// Applied; the KV entries Consul returned (values only for reads).
    Applied(Vec<KvEntry>),
    /// Rolled back; the indexes of the operations that failed, with Consul's reasons.
    RolledBack(Vec<(usize, String)>),
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResponse {
    #[serde(default)]
    results: Option<Vec<TxnResult>>,
    #[serde(default)]
    errors: Option<Vec<TxnError>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResult {
    #[serde(default, rename = "KV")]
    kv: Option<RawEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnError {
    op_index: usize,
    what: String,
}

/// What a session is created with (`PUT /v1/session/create`).
#[derive(Debug, Clone)]
pub struct SessionSpec {
    /// Human-readable name.
    pub name: String,
    /// TTL; Consul accepts 10 s to 24 h and may invalidate up to twice as late.
    pub ttl: Duration,
    /// After invalidation, the session's locks cannot be taken for this long.
    pub lock_delay: Duration,
    /// Health checks of the local node the session depends on (`serfHealth` and e.g. a
    /// service check): a critical check invalidates the session at once.
    pub checks: Vec<String>,
}

/// A session as `GET /v1/session/list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SessionInfo {
    /// Session id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Name given at creation (empty if none).
    #[serde(rename = "Name", default)]
    pub name: String,
    /// Consul node the session belongs to.
    #[serde(rename = "Node", default)]
    pub node: String,
}

impl ConsulClient {
    /// A client of the agent at `address` (`http://host:port`).
    pub fn new(address: &str, token: Option<String>) -> Result<Self> {
        Self::with_tls(address, token, None)
    }

    /// A client of the agent at `address`: `http://host:port` without `tls`,
    /// `https://host:port` with it (the CA that signed Consul's certificate, and the
    /// scheduler's client certificate when Consul has `verify_incoming`).
    pub fn with_tls(
        address: &str,
        token: Option<String>,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Self> {
        let bad = |message: &str| Error::Address {
            address: address.to_owned(),
            message: message.to_owned(),
        };
        let mut base = Url::parse(address).map_err(|e| bad(&e.to_string()))?;
        match (base.scheme(), tls.is_some()) {
            ("http", false) | ("https", true) => {}
            ("https", false) => {
                return Err(bad(
                    "https:// needs consul.ca_file (the CA that signed Consul's certificate)",
                ))
            }
            ("http", true) => {
                return Err(bad(
                    "consul.ca_file is given but the address is http://: use https://",
                ))
            }
            _ => return Err(bad("only http:// and https:// are supported")),
        }
        if base.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(bad("no query or fragment allowed"));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(3));
        if let Some(tls) = tls {
            builder = builder.use_preconfigured_tls(tls).https_only(true);
        }
        let http = builder
            .build()
            .map_err(|e| bad(&format!("cannot build an HTTP client: {e}")))?;
        Ok(ConsulClient { base, token, http })
    }

    /// The agent's base URL.
    pub fn address(&self) -> &str {
        self.base.as_str()
    }

    /// `base` + `segments` (each percent-encoded as one path segment) + query pairs.
    fn url<'a>(&self, segments: impl IntoIterator<Item = &'a str>, query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                if v.is_empty() {
                    pairs.append_key_only(k);
                } else {
                    pairs.append_pair(k, v);
                }
            }
        }
        url
    }

    /// The URL of a KV key (`/v1/kv/<key>`), every `/`-separated part encoded.
    fn kv_url(&self, key: &str, query: &[(&str, &str)]) -> Url {
        self.url(["v1", "kv"].into_iter().chain(key.split('/')), query)
    }

    /// Sends a request; returns the status and body of any answer, errors only when there is
    /// no answer.
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, bytes::Bytes)> {
        let what = format!("{method} {}", url.path());
        let mut req = self.http.request(method, url).timeout(timeout);
        if let Some(token) = &self.token {
            req = req.header("X-Consul-Token", token);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req.send().await.map_err(|source| Error::Request {
            what: what.clone(),
            source,
        })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|source| Error::Request { what, source })?;
        Ok((status, body))
    }

    /// Sends a request and requires a 2xx answer.
    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<bytes::Bytes> {
        let what = format!("{method} {}", url.path());
        let (status, body) = self.send(method, url, body, timeout).await?;
        if !status.is_success() {
            return Err(status_error(what, status, &body));
        }
        Ok(body)
    }

    /// One key, read in `consistent` mode; `None` if missing.
    pub async fn kv_get(&self, key: &str) -> Result<Option<KvEntry>> {
        let url = self.kv_url(key, &[("consistent", "")]);
        let what = format!("GET {}", url.path());
        let (status, body) = self.send(Method::GET, url, None, REQUEST_TIMEOUT).await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(decode_entries(&what, &body)?.into_iter().next()),
            s => Err(status_error(what, s, &body)),
        }
    }

    /// Every key under `prefix`, read in `consistent` mode, in key order.
    pub async fn kv_list(&self, prefix: &str) -> Result<Vec<KvEntry>> {
        let url = self.kv_url(prefix, &[("recurse", ""), ("consistent", "")]);
        let what = format!("GET {}", url.path());
        let (status, body) = self.send(Method::GET, url, None, REQUEST_TIMEOUT).await?;
        match status {
            StatusCode::NOT_FOUND => Ok(Vec::new()),
            s if s.is_success() => {
                let mut entries = decode_entries(&what, &body)?;
                entries.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(entries)
            }
            s => Err(status_error(what, s, &body)),
        }
    }

    /// Blocking query of one key: returns once its index passes `index` or `wait` passes,
    /// with the entry (if any) and the index to pass next time.
    pub async fn kv_watch(
        &self,
        key: &str,
        index: u64,
        wait: Duration,
    ) -> Result<(Option<KvEntry>, u64)> {
        let index_s = index.to_string();
        let wait_s = format!("{}ms", wait.as_millis());
        let url = self.kv_url(
            key,
            &[("consistent", ""), ("index", &index_s), ("wait", &wait_s)],
        );
        let what = format!("GET {}", url.path());
        let mut req = self
            .http
            .get(url)
            .timeout(wait + wait / 16 + BLOCKING_SLACK);
        if let Some(token) = &self.token {
            req = req.header("X-Consul-Token", token);
        }
        let resp = req.send().await.map_err(|source| Error::Request {
            what: what.clone(),
            source,
        })?;
        let status = resp.status();
        let next = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = resp.bytes().await.map_err(|source| Error::Request {
            what: what.clone(),
            source,
        })?;
        let entry = match status {
            StatusCode::NOT_FOUND => None,
            s if s.is_success() => decode_entries(&what, &body)?.into_iter().next(),
            s => return Err(status_error(what, s, &body)),
        };
        let next = next.ok_or_else(|| Error::Decode {
            what,
            message: "no X-Consul-Index header".to_owned(),
        })?;
        // The index can go backwards (a snapshot restore): start over from 0 then.
        Ok((entry, if next < index { 0 } else { next }))
    }

    /// Runs a transaction. A read-only one is served in `consistent` mode.
    pub async fn txn(&self, ops: &[TxnOp]) -> Result<TxnOutcome> {
        let body = Value::Array(ops.iter().map(TxnOp::to_json).collect());
        let body = serde_json::to_vec(&body).map_err(|e| Error::Decode {
            what: "PUT /v1/txn".to_owned(),
            message: format!("cannot encode the request: {e}"),
        })?;
        let url = self.url(["v1", "txn"], &[("consistent", "")]);
        let what = "PUT /v1/txn".to_owned();
        let (status, body) = self
            .send(Method::PUT, url, Some(body), REQUEST_TIMEOUT)
            .await?;
        if status != StatusCode::OK && status != StatusCode::CONFLICT {
            return Err(status_error(what, status, &body));
        }
        let resp: TxnResponse = serde_json::from_slice(&body).map_err(|e| Error::Decode {
            what: what.clone(),
            message: e.to_string(),
        })?;
        if status == StatusCode::CONFLICT {
            let errors = resp.errors.unwrap_or_default();
            if errors.is_empty() {
                return Err(Error::Decode {
                    what,
                    message: "409 without errors".to_owned(),
                });
            }
            return Ok(TxnOutcome::RolledBack(
                errors.into_iter().map(|e| (e.op_index, e.what)).collect(),
            ));
        }
        let entries = resp
            .results
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| r.kv)
            .map(RawEntry::decode)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|message| Error::Decode { what, message })?;
        Ok(TxnOutcome::Applied(entries))
    }

    /// Takes the lock on `key` for `session`, writing `value`; `false` if another session
    /// holds it or the lock-delay of an invalidated session is still running.
    pub async fn kv_acquire(&self, key: &str, session: &str, value: &[u8]) -> Result<bool> {
        let url = self.kv_url(key, &[("acquire", session)]);
        let body = self
            .call(Method::PUT, url, Some(value.to_vec()), REQUEST_TIMEOUT)
            .await?;
        Ok(body.trim_ascii() == b"true")
    }

    /// Releases the lock `session` holds on `key`; `false` if it did not hold it.
    pub async fn kv_release(&self, key: &str, session: &str) -> Result<bool> {
        let url = self.kv_url(key, &[("release", session)]);
        let body = self.call(Method::PUT, url, None, REQUEST_TIMEOUT).await?;
        Ok(body.trim_ascii() == b"true")
    }

    /// Creates a session; returns its id.
    pub async fn session_create(&self, spec: &SessionSpec) -> Result<String> {
        let body = serde_json::json!({
            "Name": spec.name,
            "TTL": format!("{}s", spec.ttl.as_secs()),
            "LockDelay": format!("{}ms", spec.lock_delay.as_millis()),
            "Behavior": "release",
            "Checks": spec.checks,
        });
        let url = self.url(["v1", "session", "create"], &[]);
        let what = "PUT /v1/session/create".to_owned();
        let body = self
            .call(
                Method::PUT,
                url,
                Some(body.to_string().into_bytes()),
                REQUEST_TIMEOUT,
            )
            .await?;
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let created: Created = serde_json::from_slice(&body).map_err(|e| Error::Decode {
            what,
            message: e.to_string(),
        })?;
        Ok(created.id)
    }

    /// Renews a session's TTL; `false` if the session no longer exists.
    pub async fn session_renew(&self, id: &str, timeout: Duration) -> Result<bool> {
        let url = self.url(["v1", "session", "renew", id], &[]);
        let what = format!("PUT {}", url.path());
        let (status, body) = self.send(Method::PUT, url, None, timeout).await?;
        match status {
            StatusCode::NOT_FOUND => Ok(false),
            s if s.is_success() => {
                // Consul answers 200 with an empty list or null for a gone session too.
                let list: Option<Vec<Value>> =
                    serde_json::from_slice(&body).map_err(|e| Error::Decode {
                        what,
                        message: e.to_string(),
                    })?;
                Ok(list.is_some_and(|l| !l.is_empty()))
            }
            s => Err(status_error(what, s, &body)),
        }
    }

    /// Every session of the datacenter (`GET /v1/session/list`), read consistently.
    pub async fn session_list(&self) -> Result<Vec<SessionInfo>> {
        let url = self.url(["v1", "session", "list"], &[("consistent", "")]);
        let what = format!("GET {}", url.path());
        let body = self.call(Method::GET, url, None, REQUEST_TIMEOUT).await?;
        let list: Option<Vec<SessionInfo>> =
            serde_json::from_slice(&body).map_err(|e| Error::Decode {
                what,
                message: e.to_string(),
            })?;
        Ok(list.unwrap_or_default())
    }

    /// Destroys a session: its locks are released (and their lock-delay starts).
    pub async fn session_destroy(&self, id: &str) -> Result<()> {
        let url = self.url(["v1", "session", "destroy", id], &[]);
        self.call(Method::PUT, url, None, REQUEST_TIMEOUT).await?;
        Ok(())
    }

    /// Registers (or replaces) a service with the agent (`PUT /v1/agent/service/register`).
    pub async fn service_register(&self, definition: &Value) -> Result<()> {
        let url = self.url(["v1", "agent", "service", "register"], &[]);
        self.call(
            Method::PUT,
            url,
            Some(definition.to_string().into_bytes()),
            REQUEST_TIMEOUT,
        )
        .await?;
        Ok(())
    }

    /// Removes a service from the agent; a service the agent does not know is not an error.
    pub async fn service_deregister(&self, id: &str) -> Result<()> {
        let url = self.url(["v1", "agent", "service", "deregister", id], &[]);
        let what = format!("PUT {}", url.path());
        let (status, body) = self.send(Method::PUT, url, None, REQUEST_TIMEOUT).await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        // Consul 1.8 answers 500 "Unknown service" for a service it does not have.
        if String::from_utf8_lossy(&body).contains("Unknown service") {
            return Ok(());
        }
        Err(status_error(what, status, &body))
    }

    /// Sets the state of a TTL check (`pass`, `warn` or `fail`) with a note.
    pub async fn check_update(&self, check_id: &str, state: &str, note: &str) -> Result<()> {
        let url = self.url(["v1", "agent", "check", state, check_id], &[("note", note)]);
        self.call(Method::PUT, url, None, REQUEST_TIMEOUT).await?;
        Ok(())
    }

    /// Healthy instances of a service from the catalog (`GET /v1/health/service/<name>`),
    /// as raw JSON.
    pub async fn healthy_service(&self, name: &str) -> Result<Vec<Value>> {
        let url = self.url(
            ["v1", "health", "service", name],
            &[("passing", ""), ("consistent", "")],
        );
        let what = format!("GET {}", url.path());
        let body = self.call(Method::GET, url, None, REQUEST_TIMEOUT).await?;
        serde_json::from_slice(&body).map_err(|e| Error::Decode {
            what,
            message: e.to_string(),
        })
    }
}

fn status_error(what: String, status: StatusCode, body: &[u8]) -> Error {
    let mut body = String::from_utf8_lossy(body).trim().to_owned();
    body.truncate(500);
    Error::Status {
        what,
        status: status.as_u16(),
        body,
    }
}

fn decode_entries(what: &str, body: &[u8]) -> Result<Vec<KvEntry>> {
    let raw: Vec<RawEntry> = serde_json::from_slice(body).map_err(|e| Error::Decode {
        what: what.to_owned(),
        message: e.to_string(),
    })?;
    raw.into_iter()
        .map(RawEntry::decode)
        .collect::<std::result::Result<_, _>>()
        .map_err(|message| Error::Decode {
            what: what.to_owned(),
            message,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_each_key_part() {
        let c = ConsulClient::new("http://127.0.0.1:8500", None).unwrap();
        let url = c.kv_url("mofang/instances/a b?c", &[("consistent", "")]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8500/v1/kv/mofang/instances/a%20b%3Fc?consistent"
        );
        let url = c.kv_url("mofang/events/", &[("recurse", ""), ("index", "7")]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8500/v1/kv/mofang/events/?recurse&index=7"
        );
    }

    #[test]
    fn addresses_are_checked() {
        assert!(ConsulClient::new("https://consul:8501", None).is_err());
        assert!(ConsulClient::new("ftp://consul:8501", None).is_err());
        assert!(ConsulClient::new("127.0.0.1:8500", None).is_err());
        assert!(ConsulClient::new("http://127.0.0.1:8500/?x=1", None).is_err());
        let c = ConsulClient::new("http://consul.local:8500", Some("s3cret".into())).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
