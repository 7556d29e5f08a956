//! The web console at `/ui`: server-rendered pages over the REST API's own answers.
//!
//! Every page and every action is a call of the API router in this process, made with the
//! signed-in user's token: the same validation, role checks, audit entries and follower
//! forwarding as `mofang` and curl get (one source of truth). The console adds sessions
//! (cookie + CSRF token), HTML, and live updates by polling (`assets/console.js`).
//! Assets are embedded; responses carry a strict Content-Security-Policy.

pub mod pages;
pub mod session;
pub mod views;

use crate::api::Api;
use crate::api::{CredentialsView, EngineView};
use crate::cluster::{BackupHealthView, BackupRepoView, InstanceView};
use crate::model::now_ms;
use crate::model::{AuditEntry, Event};
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::Markup;
use pages::Frame;
use serde::de::DeserializeOwned;
use session::{Session, Sessions};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use tower::ServiceExt;
use tracing::{info, warn};
use views::Node;

/// Errors of the console's calls of the API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API answered with an error (its status, code and reason).
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The API's error code.
        code: String,
        /// The API's reason.
        message: String,
    },
    /// An answer of the API did not parse as the view expected.
    #[error("the API's answer to {path} does not parse")]
    Decode {
        /// The API path.
        path: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// An answer of the API could not be read.
    #[error("the API's answer to {path} could not be read")]
    Read {
        /// The API path.
        path: String,
    },
    /// A request to the API could not be built (a name no API path can hold).
    #[error("no API request can be made for {path}")]
    Request {
        /// The API path.
        path: String,
    },
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The Content-Security-Policy of every console answer: nothing but this origin, no inline
/// script or style, no framing, forms only to this origin.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' \
     data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; \
     object-src 'none'";

/// Largest API answer read (2,000 instances are a few MiB of JSON).
const MAX_ANSWER: usize = 256 << 20;
/// Events kept for the overview and the events page (the last 24 h, at most this many).
const EVENTS_KEPT: usize = 5_000;
/// How long the API's backup health is reused: the overview polls every 2 s, and the
/// health reads every backup record (about 90 ms for 6,000 records in a debug build).
const BACKUP_HEALTH_TTL_MS: i64 = 5_000;
/// Audit entries kept for the audit page (the newest).
const AUDIT_KEPT: usize = 10_000;
/// Entries a read of a log past the kept tail asks the API for at once ...
const PAST_STEP: usize = 1_000;
/// ... and at most this many reads for one page (a rare filter shows what it found and
/// links on from where it stopped).
const PAST_READS: usize = 10;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// The entries of a log (`GET /v1/events`, `GET /v1/audit`) this scheduler has read, newest
/// last: a cursor so each page reads only what is new.
#[derive(Debug)]
struct Tail<T> {
    since: u64,
    items: VecDeque<T>,
}

impl<T> Tail<T> {
    /// The oldest id kept (the next to come when nothing is): ids below it are not kept.
    fn floor(&self, id: fn(&T) -> u64) -> u64 {
        self.items.front().map_or(self.since.saturating_add(1), id)
    }
}

impl<T> Default for Tail<T> {
    fn default() -> Self {
        Tail {
            since: 0,
            items: VecDeque::new(),
        }
    }
}

struct Inner {
    api: Api,
    /// The REST API's router (without the console), called in-process.
    v1: Router,
    sessions: Sessions,
    recent: tokio::sync::Mutex<Tail<Event>>,
    audit: tokio::sync::Mutex<Tail<AuditEntry>>,
    /// `GET /v1/backup-health` as last read, and when.
    backup_health: tokio::sync::Mutex<Option<(i64, Vec<BackupHealthView>)>>,
}

/// The console's state.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

impl Console {
    /// A console over `api`, calling the API through `v1` (the REST router of the same
    /// scheduler, so followers forward to the leader as for any API call).
    pub fn new(api: Api, v1: Router) -> Self {
        Console {
            inner: Arc::new(Inner {
                api,
                v1,
                sessions: Sessions::default(),
                recent: tokio::sync::Mutex::new(Tail::default()),
                audit: tokio::sync::Mutex::new(Tail::default()),
                backup_health: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// Calls the API as the signed-in user; the body of a 2xx answer.
    async fn call(
        &self,
        v: &Visit,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Bytes> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", v.session.token));
        let body = match body {
            Some(json) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        let mut req = b.body(body).map_err(|_| Error::Request {
            path: path.to_owned(),
        })?;
        // The audit log records the browser's address, as for a direct API call.
        if let Some(peer) = v.peer {
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        let resp = match self.inner.v1.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), MAX_ANSWER)
            .await
            .map_err(|_| Error::Read {
                path: path.to_owned(),
            })?;
        if status.is_success() {
            return Ok(bytes);
        }
        #[derive(serde::Deserialize)]
        struct ErrBody {
            error: Detail,
        }
        #[derive(serde::Deserialize)]
        struct Detail {
            code: String,
            message: String,
        }
        let (code, message) = match serde_json::from_slice::<ErrBody>(&bytes) {
            Ok(b) => (b.error.code, b.error.message),
            Err(_) => (
                "error".to_owned(),
                String::from_utf8_lossy(&bytes).chars().take(500).collect(),
            ),
        };
        Err(Error::Api {
            status,
            code,
            message,
        })
    }

    async fn get<T: DeserializeOwned>(&self, v: &Visit, path: &str) -> Result<T> {
        let bytes = self.call(v, Method::GET, path, None).await?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Decode {
            path: path.to_owned(),
            source,
        })
    }

    /// The events of the last 24 h (at most [`EVENTS_KEPT`]), newest first, reading only
    /// those not read before.
    async fn recent_events(&self, v: &Visit, now: i64) -> Result<Vec<Event>> {
        let fresh = |e: &Event| e.at_ms > now - views::RECENT_MS;
        self.follow(
            v,
            &self.inner.recent,
            "/v1/events",
            |e| e.id,
            fresh,
            EVENTS_KEPT,
        )
        .await
    }

    /// The newest audit entries (at most [`AUDIT_KEPT`]), newest first, reading only those
    /// not read before. Each visit asks the API with the visitor's token first, so anyone
    /// but an admin gets its 403 and nothing read before.
    async fn recent_audit(&self, v: &Visit) -> Result<Vec<AuditEntry>> {
        self.follow(
            v,
            &self.inner.audit,
            "/v1/audit",
            |e| e.id,
            |_| true,
            AUDIT_KEPT,
        )
        .await
    }

    /// Reads a log from `path` past `tail`'s cursor (at most 10 pages of 10,000 a visit: a
    /// long history is caught up over a few visits), keeps the last `max` entries that
    /// `keep`; all kept, newest first.
    async fn follow<T: DeserializeOwned + Clone>(
        &self,
        v: &Visit,
        tail: &tokio::sync::Mutex<Tail<T>>,
        path: &str,
        id: fn(&T) -> u64,
        keep: impl Fn(&T) -> bool,
        max: usize,
    ) -> Result<Vec<T>> {
        let mut t = tail.lock().await;
        for _ in 0..10 {
            let page: Vec<T> = self
                .get(v, &format!("{path}?since={}&limit=10000", t.since))
                .await?;
            let full = page.len() == 10_000;
            for e in page {
                t.since = t.since.max(id(&e));
                if keep(&e) {
                    t.items.push_back(e);
                } else {
                    // What is kept stays one stretch of the log's newest entries, so the
                    // oldest kept is where reading the API past the tail starts (`floor`).
                    t.items.clear();
                }
            }
            if !full {
                break;
            }
        }
        while t.items.len() > max || t.items.front().is_some_and(|e| !keep(e)) {
            t.items.pop_front();
        }
        Ok(t.items.iter().rev().cloned().collect())
    }

    /// The oldest event id the console keeps.
    async fn events_floor(&self) -> u64 {
        self.inner.recent.lock().await.floor(|e| e.id)
    }

    /// The oldest audit id the console keeps.
    async fn audit_floor(&self) -> u64 {
        self.inner.audit.lock().await.floor(|e| e.id)
    }

    /// A page of a log past the kept tail, read from the API at `query` (`/v1/events?...&`):
    /// backward from `Older(b)` (the newest `want` that `keep` accepts below b), or forward
    /// from `Newer` (the oldest `want` between its ids); newest first, with its links.
    async fn read_past<T: DeserializeOwned>(
        &self,
        v: &Visit,
        query: &str,
        id: fn(&T) -> u64,
        source: views::LogSource,
        keep: impl Fn(&T) -> bool,
        want: usize,
    ) -> Result<views::ReadPage<T>> {
        let mut items = Vec::new();
        match source {
            views::LogSource::Kept => {}
            views::LogSource::Older(before) => {
                let mut b = before;
                let mut more = b > 1;
                'reads: for _ in 0..PAST_READS {
                    if !more {
                        break;
                    }
                    let chunk: Vec<T> = self
                        .get(v, &format!("{query}before={b}&limit={PAST_STEP}"))
                        .await?;
                    let n = chunk.len();
                    more = n == PAST_STEP;
                    // Oldest first: walked newest first.
                    for (i, e) in chunk.into_iter().rev().enumerate() {
                        b = id(&e);
                        if keep(&e) {
                            items.push(e);
                            if items.len() == want {
                                more = (more || i + 1 < n) && b > 1;
                                break 'reads;
                            }
                        }
                    }
                    more = more && b > 1;
                }
                return Ok(views::ReadPage {
                    newer: Some(items.first().map_or(before.saturating_sub(1), id)),
                    older: more.then_some(b),
                    items,
                });
            }
            views::LogSource::Newer { after, floor } => {
                let mut a = after;
                let mut reached_floor = false;
                'reads: for _ in 0..PAST_READS {
                    let chunk: Vec<T> = self
                        .get(v, &format!("{query}since={a}&limit={PAST_STEP}"))
                        .await?;
                    let short = chunk.len() < PAST_STEP;
                    for e in chunk {
                        if id(&e) >= floor {
                            reached_floor = true;
                            break 'reads;
                        }
                        a = id(&e);
                        if keep(&e) {
                            items.push(e);
                            if items.len() == want {
                                break 'reads;
                            }
                        }
                    }
                    if short {
                        reached_floor = true;
                        break;
                    }
                }
                let newest = items.last().map_or(a, id);
                items.reverse();
                return Ok(views::ReadPage {
                    // Reaching the tail: its oldest page comes next.
                    newer: Some(if reached_floor {
                        floor.saturating_sub(1)
                    } else {
                        newest
                    }),
                    older: Some(items.last().map_or(after.saturating_add(1), id)),
                    items,
                });
            }
        }
        Ok(views::ReadPage {
            items,
            newer: None,
            older: None,
        })
    }

    /// The API's backup health (`GET /v1/backup-health`), read again when older than
    /// [`BACKUP_HEALTH_TTL_MS`]: the figures are at most that old.
    async fn backup_health(&self, v: &Visit) -> Result<Vec<BackupHealthView>> {
        let mut cached = self.inner.backup_health.lock().await;
        let now = now_ms();
        if let Some((at, h)) = cached.as_ref() {
            if now - at < BACKUP_HEALTH_TTL_MS {
                return Ok(h.clone());
            }
        }
        let h: Vec<BackupHealthView> = self.get(v, "/v1/backup-health").await?;
        *cached = Some((now, h.clone()));
        Ok(h)
    }

    /// Instances, nodes and the problems they show.
    async fn fleet(
        &self,
        v: &Visit,
    ) -> Result<(Vec<InstanceView>, Vec<Node>, Vec<views::Problem>)> {
        let cluster = &self.inner.api.cluster;
        let (instances, nodes): (Vec<InstanceView>, Vec<Node>) = if cluster.is_active() {
            // The leader: the API's views themselves (what `GET /v1/instances` and
            // `GET /v1/nodes` answer, any role may read them), without a JSON round trip.
            (
                cluster.instances(),
                cluster.nodes().iter().map(Node::from).collect(),
            )
        } else {
            // A follower: through the API router, which forwards to the leader.
            (
                self.get(v, "/v1/instances").await?,
                self.get(v, "/v1/nodes").await?,
            )
        };
        // Only the leader knows the hold; a follower shows none rather than a stale one.
        let hold = cluster.is_active() && cluster.mass_hold();
        let problems = views::problems(&instances, &nodes, hold);
        Ok((instances, nodes, problems))
    }
}

/// A request of a signed-in browser.
pub struct Visit {
    session: Session,
    cookie: String,
    peer: Option<SocketAddr>,
}

impl Visit {
    fn frame(&self, problems: usize) -> Frame {
        Frame {
            who: self.session.who.clone(),
            role: format!("{:?}", self.session.role).to_lowercase(),
            can_act: self.session.can_act(),
            is_admin: self.session.is_admin(),
            csrf: self.session.csrf.clone(),
            problems,
            now_ms: now_ms(),
        }
    }
}

fn cookie_of(parts: &Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| session::cookie_value(h, name))
        .map(str::to_owned)
}

impl FromRequestParts<Console> for Visit {
    type Rejection = Response;

    /// The session of the request's cookie; without one, to sign-in remembering the page
    /// (a form posted with an expired session remembers the page it was posted from).
    async fn from_request_parts(parts: &mut Parts, c: &Console) -> Result<Self, Response> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        if let Some(cookie) = cookie_of(parts, session::COOKIE) {
            if let Some(session) = c.inner.sessions.get(&cookie, now_ms()) {
                return Ok(Visit {
                    session,
                    cookie,
                    peer,
                });
            }
        }
        let here = if parts.method == Method::GET {
            parts
                .uri
                .path_and_query()
                .map_or("/ui".to_owned(), |p| p.as_str().to_owned())
        } else {
            parts
                .headers
                .get(header::REFERER)
                .and_then(|r| r.to_str().ok())
                .and_then(|r| r.splitn(4, '/').nth(3))
                .map_or("/ui".to_owned(), |p| format!("/{p}"))
        };
        Err(Redirect::to(&session::login_redirect(&here)).into_response())
    }
}

fn html(status: StatusCode, m: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

/// Carries out an action on an instance through the API: on success, to `done`; refused by
/// the API (but for an expired token), the instance page again with the API's reason.
async fn instance_action(
    c: &Console,
    v: &Visit,
    name: &str,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
    done: &str,
) -> Response {
    match c.call(v, method, path, body).await {
        Ok(_) => Redirect::to(done).into_response(),
        Err(Error::Api {
            status, message, ..
        }) if status != StatusCode::UNAUTHORIZED => {
            render_instance(c, v, name, status, None, Some(&message)).await
        }
        Err(e) => failed(c, v, &e),
    }
}

/// An error page for a failed API call; a token no longer accepted signs the session out.
fn failed(c: &Console, v: &Visit, e: &Error) -> Response {
    match e {
        Error::Api { status, .. } if *status == StatusCode::UNAUTHORIZED => {
            c.inner.sessions.close(&v.cookie);
            Redirect::to("/ui/login").into_response()
        }
        Error::Api {
            status, message, ..
        } => html(
            *status,
            pages::message(Some(&v.frame(0)), "The scheduler refused", message),
        ),
        other => {
            warn!(error = %other, "console: API call failed");
            html(
                StatusCode::BAD_GATEWAY,
                pages::message(Some(&v.frame(0)), "Something failed", &other.to_string()),
            )
        }
    }
}

/// Checks a form's CSRF token: the 403 to answer without the session's.
fn csrf_refusal(v: &Visit, form: &BTreeMap<String, String>) -> Option<Response> {
    if session::csrf_matches(&v.session.csrf, form.get("csrf").map(String::as_str)) {
        None
    } else {
        warn!(who = %v.session.who, "console: form refused without its CSRF token");
        Some(html(
            StatusCode::FORBIDDEN,
            pages::message(
                Some(&v.frame(0)),
                "Refused",
                "This form's security token is missing or stale: reload the page and try again.",
            ),
        ))
    }
}

/// Names in console paths are those the API accepts (DNS labels, member ids, operation
/// ids); anything else is not looked up.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn not_found(v: &Visit) -> Response {
    html(
        StatusCode::NOT_FOUND,
        pages::message(Some(&v.frame(0)), "Not found", "No such page."),
    )
}

/// Fixed texts of `?done=` (never the query's own text: no content injection).
fn flash(done: Option<&str>) -> Option<&'static str> {
    match done? {
        "created" => Some("Instance created: it is being placed and started."),
        "switchover" => Some("Switchover done."),
        "deleted" => Some("Instance deleted: its members are being removed."),
        "cordon" => Some("Node cordoned: no new members are placed on it."),
        "drain" => Some("Node draining: its members are being moved away."),
        "uncordon" => Some("Node active again."),
        "operation" => Some("Operation started: its steps are below."),
        "backup" => Some("Backup asked: it shows below as it runs."),
        "cancel" => Some("Cancel asked: the operation stops at its next safe point."),
        "batch" => Some("Batch started: its progress is below."),
        "batch-cancel" => {
            Some("Cancel asked: the batch's running operations stop, no new one starts.")
        }
        _ => None,
    }
}

// ---- handlers --------------------------------------------------------------------------------

#[derive(serde::Deserialize, Default)]
struct LoginQuery {
    #[serde(default)]
    next: Option<String>,
}

async fn login_page(Query(q): Query<LoginQuery>) -> Response {
    let pre = session::random_id();
    let next = q.next.as_deref().and_then(session::safe_next);
    let mut resp = html(StatusCode::OK, pages::login(&pre, next, None));
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(session::LOGIN_COOKIE, &pre, 600)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

async fn login(
    State(c): State<Console>,
    parts: Parts,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    let next = form
        .get("next")
        .and_then(|n| session::safe_next(n))
        .unwrap_or("/ui")
        .to_owned();
    // Login CSRF: the form's token must be the one its page set in a cookie (double submit).
    let pre = cookie_of(&parts, session::LOGIN_COOKIE).unwrap_or_default();
    if !session::csrf_matches(&pre, form.get("csrf").map(String::as_str)) {
        return html(
            StatusCode::FORBIDDEN,
            pages::message(
                None,
                "Refused",
                "The sign-in form expired or did not come from this console: load it again.",
            ),
        );
    }
    let token = form.get("token").map_or("", |t| t.trim());
    let Some(id) = c.inner.api.tokens.check(token).cloned() else {
        warn!("console: sign-in with an unknown token");
        let pre = session::random_id();
        let mut resp = html(
            StatusCode::UNAUTHORIZED,
            pages::login(
                &pre,
                Some(&next),
                Some("That token is not known to this scheduler."),
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&session::set_cookie(session::LOGIN_COOKIE, &pre, 600))
        {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        return resp;
    };
    let (cookie, s) = c.inner.sessions.open(token, &id.name, id.role, now_ms());
    info!(who = %s.who, role = ?s.role, "console: signed in");
    let mut resp = Redirect::to(&next).into_response();
    let max_age = session::SESSION_TTL_MS / 1000;
    for v in [
        session::set_cookie(session::COOKIE, &cookie, max_age),
        session::set_cookie(session::LOGIN_COOKIE, "gone", 0),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

async fn logout(
    State(c): State<Console>,
    v: Visit,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    if let Some(r) = csrf_refusal(&v, &form) {
        return r;
    }
    c.inner.sessions.close(&v.cookie);
    let mut resp = Redirect::to("/ui/login").into_response();
    if let Ok(h) = HeaderValue::from_str(&session::set_cookie(session::COOKIE, "gone", 0)) {
        resp.headers_mut().append(header::SET_COOKIE, h);
    }
    resp
}

async fn overview(State(c): State<Console>, v: Visit) -> Response {
    let now = now_ms();
    let (instances, nodes, problems) = match c.fleet(&v).await {
        Ok(f) => f,
        Err(e) => return failed(&c, &v, &e),
    };
    let recent = match c.recent_events(&v, now).await {
        Ok(e) => views::recent_notable(&e, now),
        Err(e) => return failed(&c, &v, &e),
    };
    let backups = match c.backup_health(&v).await {
        Ok(h) => views::backup_summary(&h, &instances),
        Err(e) => return failed(&c, &v, &e),
    };
    let f = v.frame(problems.len());
    html(
        StatusCode::OK,
        pages::overview(&f, &instances, &nodes, &problems, &recent, &backups),
    )
}

async fn problems(State(c): State<Console>, v: Visit) -> Response {
    match c.fleet(&v).await {
        Ok((_, _, p)) => html(StatusCode::OK, pages::problems(&v.frame(p.len()), &p)),
        Err(e) => failed(&c, &v, &e),
    }
}

#[derive(serde::Deserialize, Default)]
struct ListQuery {
    #[serde(flatten)]
    filter: views::InstanceFilter,
    #[serde(default)]
    done: Option<String>,
    /// Page number from 1 (text: numbers do not parse inside a flattened query).
    #[serde(default)]
    page: String,
}

async fn instances(
    State(c): State<Console>,
    v: Visit,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    match c.fleet(&v).await {
        Ok((all, _, p)) => html(
            StatusCode::OK,
            pages::instances(
                &v.frame(p.len()),
                &all,
                &q.filter,
                q.page.parse().unwrap_or(1),
                flash(q.done.as_deref()),
            ),
        ),
        Err(e) => failed(&c, &v, &e),
    }
}

#[derive(serde::Deserialize, Default)]
struct RestoreQuery {
    #[serde(default)]
    restore_from: String,
    #[serde(default)]
    backup: String,
    #[serde(default)]
    time: String,
}

/// The create form; opened from a backup (`?restore_from=&backup=` or `&time=`), prefilled
/// with the source instance's engine, version, replicas and resources.
async fn create_page(
    State(c): State<Console>,
    v: Visit,
    q: Result<Query<RestoreQuery>, QueryRejection>,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let mut values = BTreeMap::new();
    if plain_name(&q.restore_from) {
        let src = match c.fleet(&v).await {
            Ok((all, _, _)) => all.into_iter().find(|i| i.name == q.restore_from),
            Err(e) => return failed(&c, &v, &e),
        };
        if let Some(src) = src {
            let r = &src.spec.resources;
            for (k, val) in [
                ("name", format!("{}-restored", src.name)),
                ("engine", src.engine.clone()),
                ("version", src.version.clone()),
                ("replicas", src.replicas.to_string()),
                ("cpu", r.cpu.to_string()),
                ("memory", r.memory.to_string()),
                ("disk", r.disk.to_string()),
                ("restore_from", src.name.clone()),
                ("backup", q.backup.clone()),
                ("time", q.time.clone()),
            ] {
                values.insert(k.to_owned(), val);
            }
        }
    }
    render_create(&c, &v, StatusCode::OK, &values, &BTreeMap::new()).await
}

async fn create_backup(
    State(c): State<Console>,
    v: Visit,
    Path(name): Path<String>,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    if let Some(r) = csrf_refusal(&v, &form) {
        return r;
    }
    if !plain_name(&name) {
        return not_found(&v);
    }
    let body = serde_json::json!({ "repo": form.get("repo").map_or("", |r| r.trim()) });
    let path = format!("/v1/instances/{name}/backups");
    instance_action(
        &c,
        &v,
        &name,
        Method::POST,
        &path,
        Some(body),
        &format!("/ui/instances/{name}?done=backup"),
    )
    .await
}

async fn render_create(
    c: &Console,
    v: &Visit,
    status: StatusCode,
    values: &BTreeMap<String, String>,
    errors: &BTreeMap<String, String>,
) -> Response {
    let engines: Vec<EngineView> = match c.get(v, "/v1/engines").await {
        Ok(e) => e,
        Err(e) => return failed(c, v, &e),
    };
    let problems = match c.fleet(v).await {
        Ok((_, _, p)) => p.len(),
        Err(e) => return failed(c, v, &e),
    };
    html(
        status,
        pages::create(&v.frame(problems), &engines, values, errors),
    )
}

async fn create(
    State(c): State<Console>,
    v: Visit,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    if let Some(r) = csrf_refusal(&v, &form) {
        return r;
    }
    let body = views::create_body(&form);
    match c.call(&v, Method::POST, "/v1/instances", Some(body)).await {
        Ok(_) => {
            let name = form.get("name").map_or("", |n| n.trim());
            Redirect::to(&format!("/ui/instances/{name}?done=created")).into_response()
        }
        Err(Error::Api {
            status,
            code,
            message,
        }) if status != StatusCode::UNAUTHORIZED => {
            let field = views::field_of_error(&code, &message).unwrap_or("");
            let errors = BTreeMap::from([(field.to_owned(), message)]);
            let mut values = form.clone();
            values.remove("csrf");
            render_create(&c, &v, status, &values, &errors).await
        }
        Err(e) => failed(&c, &v, &e),
    }
}

#[derive(serde::Deserialize, Default)]
struct DoneQuery {
    #[serde(default)]
    done: Option<String>,
}

async fn instance_page(
    State(c): State<Console>,
    v: Visit,
    Path(name): Path<String>,
    q: Result<Query<DoneQuery>, QueryRejection>,
) -> Response {
    let done = q.ok().and_then(|Query(q)| q.done);
    render_instance(&c, &v, &name, StatusCode::OK, flash(done.as_deref()), None).await
}

async fn render_instance(
    c: &Console,
    v: &Visit,
    name: &str,
    status: StatusCode,
    flash: Option<&str>,
    action_error: Option<&str>,
) -> Response {
    let shown = Shown {
        flash,
        action_error,
        ..Shown::default()
    };
    render_instance_with(c, v, name, status, &shown).await
}

/// What an instance page shows besides the instance: a flash, the API's refusal of an
/// action, credentials an admin asked for, the reconfigure form as sent and its refusal.
#[derive(Default)]
struct Shown<'a> {
    flash: Option<&'a str>,
    action_error: Option<&'a str>,
    credentials: Option<&'a CredentialsView>,
    reconfigure: views::FormState,
}

async fn render_instance_with(
    c: &Console,
    v: &Visit,
    name: &str,
    status: StatusCode,
    shown: &Shown<'_>,
) -> Response {
    if !plain_name(name) {
        return not_found(v);
    }
    let (instances, nodes, problems) = match c.fleet(v).await {
        Ok(f) => f,
        Err(e) => return failed(c, v, &e),
    };
    let Some(i) = instances.iter().find(|i| i.name == name) else {
        return html(
            StatusCode::NOT_FOUND,
            pages::message(
                Some(&v.frame(problems.len())),
                "Not found",
                &format!("There is no instance {name}."),
            ),
        );
    };
    let mut events: Vec<Event> = match c
        .get(v, &format!("/v1/events?instance={name}&limit=10000"))
        .await
    {
        Ok(e) => e,
        Err(e) => return failed(c, v, &e),
    };
    events.reverse();
    events.truncate(40);
    let mut ops: Vec<views::Operation> =
        match c.get(v, &format!("/v1/instances/{name}/operations")).await {
            Ok(o) => o,
            Err(e) => return failed(c, v, &e),
        };
    ops.truncate(10);
    let mut backups: Vec<views::Backup> =
        match c.get(v, &format!("/v1/instances/{name}/backups")).await {
            Ok(b) => b,
            Err(e) => return failed(c, v, &e),
        };
    backups.sort_by_key(|b| std::cmp::Reverse(b.requested_at_ms));
    backups.truncate(30);
    let (repos, engines): (Vec<BackupRepoView>, Vec<EngineView>) = if v.session.can_act() {
        let repos = match c.get(v, "/v1/backup-repos").await {
            Ok(r) => r,
            Err(e) => return failed(c, v, &e),
        };
        match c.get(v, "/v1/engines").await {
            Ok(e) => (repos, e),
            Err(e) => return failed(c, v, &e),
        }
    } else {
        (Vec::new(), Vec::new())
    };
    let topo = views::topology(i, &nodes);
    html(
        status,
        pages::instance(
            &v.frame(problems.len()),
            &pages::InstanceData {
                instance: i,
                topology: &topo,
                events: &events,
                operations: &ops,
                backups: &backups,
                repos: &repos,
                credentials: shown.credentials,
                engine: engines.iter().find(|e| e.engine == i.engine),
                reconfigure: &shown.reconfigure,
            },
            shown.flash,
            shown.action_error,
        ),
    )
}

async fn switchover(
    State(c): State<Console>,
    v: Visit,
    Path(name): Path<String>,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    if let Some(r) = csrf_refusal(&v, &form) {
        return r;
    }
    if !plain_name(&name) {
        return not_found(&v);
    }
    let body = match form
        .get("target")
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
    {
        Some(t) => serde_json::json!({ "target": t }),
        None => serde_json::json!({}),
    };
    let path = format!("/v1/instances/{name}/switchover");
    instance_action(
        &c,
        &v,
        &name,
        Method::POST,
        &path,
        Some(body),
        &format!("/ui/instances/{name}?done=switchover"),
    )
    .await
}

/// Shows an instance's credentials to an admin, once: the API decides (403 for anyone
/// else), and the reveal is written to the audit log before anything is shown (no entry, no
/// credentials: as the API's audit of a mutating call).
async fn reveal_credentials(
    State(c): State<Console>,
    v: Visit,
    Path(name): Path<String>,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    if let Some(r) = csrf_refusal(&v, &form) {
        return r;
    }
    if !plain_name(&name) {
        return not_found(&v);
    }
    let creds: CredentialsView = match c
        .get(&v, &format!("/v1/instances/{name}/credentials"))
        .await
    {
        Ok(cr) => cr,
        Err(Error::Api {
            status, message, ..
        }) if status != StatusCode::UNAUTHORIZED => {
            return render_instance(&c, &v, &name, status, None, Some(&message)).await
        }
        Err(e) => return failed(&c, &v, &e),
    };
    let entry = crate::model::AuditEntry {
        id: 0,
        at_ms: now_ms(),
        who: v.session.who.clone(),
        source: v.peer.map(|p| p.to_string()).unwrap_or_default(),
        action: "reveal credentials (console)".into(),
        target: format!("instances/{name}/credentials"),
        status: StatusCode::OK.as_u16(),
        result: "shown".into(),
    };
    if let Err(e) = c.inner.api.cluster.store().append_audit(&entry).await {
        warn!(error = %e, instance = %name, "console: audit log unavailable: credentials not shown");
        return render_instance(
            &c,
            &v,
            &name,
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            Some("The audit log cannot be written: credentials are not shown."),
        )
        .await;
    }
    info!(who = %v.session.who, instance = %name, "console: credentials revealed");
    let shown = Shown {
        credentials: Some(&creds),
        ..Shown::default()
    };
    render_instance_with(&c, &v, &name, StatusCode::OK, &shown).await
}

async fn delete(
    State(c): State<Console>,
    v: Visit,
    Path(name): Path<String>,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    if let Some(r) = csrf_refusal(&v, &form) {
        return r;
    }
    if !plain_name(&name) {
        return not_found(&v);
    }
    if form.get("confirm").map(|s| s.trim()) != Some(name.as_str()) {
        let why = format!("Type the instance's name, {name}, to delete it. Nothing was deleted.");
        return render_instance(
            &c,
            &v,
            &name,
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
            Some(&why),
        )
        .await;
    }
    let path = format!("/v1/instances/{name}");
    instance_action(
        &c,
        &v,
        &name,
        Method::DELETE,
        &path,
        None,
        "/ui/instances?done=deleted",
    )
    .await
}

async fn nodes_page(
    State(c): State<Console>,
    v: Visit,
    q: Result<Query<DoneQuery>, QueryRejection>,
) -> Response {
    let done = q.ok().and_then(|Query(q)| q.done);
    let (_, mut nodes, p) = match c.fleet(&v).await {
        Ok(f) => f,
        Err(e) => return failed(&c, &v, &e),
    };
    // A follower's fleet carries each node's newest usage sample only (every page reads the
    // fleet); this page draws ten minutes of them.
    if !c.inner.api.cluster.is_active() {
        match c.get::<Vec<Node>>(&v, "/v1/nodes?history=true").await {
            Ok(n) => nodes = n,
            Err(e) => return failed(&c, &v, &e),
        }
    }
    html(
        StatusCode::OK,
        pages::nodes(&v.frame(p.len()), &nodes, flash(done.as_deref())),
    )
}

async fn node_action(
    State(c): State<Console>,
    v: Visit,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    if let Some(r) = csrf_refusal(&v, &form) {
        return r;
    }
    if !plain_name(&name) || !matches!(action.as_str(), "cordon" | "drain" | "uncordon") {
        return not_found(&v);
    }
    let path = format!("/v1/nodes/{name}/{action}");
    // A refusal (403 for a viewer, 404, 409) is the API's status and reason.
    match c.call(&v, Method::POST, &path, None).await {
        Ok(_) => Redirect::to(&format!("/ui/nodes?done={action}")).into_response(),
        Err(e) => failed(&c, &v, &e),
    }
}

#[derive(serde::Deserialize, Default)]
struct EventsQuery {
    #[serde(default)]
    instance: String,
    #[serde(default)]
    kind: String,
    /// Page cursors (text: anything not a number is none).
    #[serde(default)]
    before: String,
    #[serde(default)]
    after: String,
}

async fn events_page(
    State(c): State<Console>,
    v: Visit,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let now = now_ms();
    let problems = match c.fleet(&v).await {
        Ok((_, _, p)) => p.len(),
        Err(e) => return failed(&c, &v, &e),
    };
    let all = match c.recent_events(&v, now).await {
        Ok(e) => e,
        Err(e) => return failed(&c, &v, &e),
    };
    let filter = views::EventFilter {
        instance: q.instance.trim().to_owned(),
        kind: q.kind.trim().to_owned(),
    };
    let cursor = views::Cursor::parse(&q.before, &q.after);
    let floor = c.events_floor().await;
    let source = views::log_source(cursor, floor);
    if source != views::LogSource::Kept {
        // Older than the last 24 hours: from the API (the instance filtered by it).
        let query = if filter.instance.is_empty() {
            "/v1/events?".to_owned()
        } else {
            format!(
                "/v1/events?instance={}&",
                session::encode_query(&filter.instance)
            )
        };
        let past = match c
            .read_past(
                &v,
                &query,
                |e: &Event| e.id,
                source,
                |e| filter.keeps(e),
                pages::LOG_ROWS,
            )
            .await
        {
            Ok(p) => p,
            Err(e) => return failed(&c, &v, &e),
        };
        return html(
            StatusCode::OK,
            pages::events(&v.frame(problems), &past.page(), None, &filter),
        );
    }
    let matching: Vec<Event> = all.into_iter().filter(|e| filter.keeps(e)).collect();
    let page = views::past_the_tail(
        views::log_page(&matching, |e| e.id, cursor, pages::LOG_ROWS),
        floor,
    );
    html(
        StatusCode::OK,
        pages::events(&v.frame(problems), &page, Some(matching.len()), &filter),
    )
}

#[derive(serde::Deserialize, Default)]
struct AuditQuery {
    #[serde(default)]
    q: String,
    /// Page cursors (text: anything not a number is none).
    #[serde(default)]
    before: String,
    #[serde(default)]
    after: String,
}

async fn audit_page(
    State(c): State<Console>,
    v: Visit,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let problems = match c.fleet(&v).await {
        Ok((_, _, p)) => p.len(),
        Err(e) => return failed(&c, &v, &e),
    };
    // The API refuses a non-admin (403), as it does for `mofang audit`.
    let entries = match c.recent_audit(&v).await {
        Ok(e) => e,
        Err(e) => return failed(&c, &v, &e),
    };
    let needle = q.q.trim().to_lowercase();
    let keeps = |e: &AuditEntry| {
        needle.is_empty()
            || format!("{} {} {}", e.who, e.action, e.target)
                .to_lowercase()
                .contains(&needle)
    };
    let cursor = views::Cursor::parse(&q.before, &q.after);
    let floor = c.audit_floor().await;
    let source = views::log_source(cursor, floor);
    if source != views::LogSource::Kept {
        // Older than the newest 10,000: from the API.
        let past = match c
            .read_past(
                &v,
                "/v1/audit?",
                |e: &AuditEntry| e.id,
                source,
                keeps,
                pages::LOG_ROWS,
            )
            .await
        {
            Ok(p) => p,
            Err(e) => return failed(&c, &v, &e),
        };
        return html(
            StatusCode::OK,
            pages::audit(&v.frame(problems), &past.page(), None, q.q.trim()),
        );
    }
    let matching: Vec<AuditEntry> = entries.into_iter().filter(|e| keeps(e)).collect();
    let page = views::past_the_tail(
        views::log_page(&matching, |e| e.id, cursor, pages::LOG_ROWS),
        floor,
    );
    html(
        StatusCode::OK,
        pages::audit(&v.frame(problems), &page, Some(matching.len()), q.q.trim()),
    )
}

async fn operations_page(
    State(c): State<Console>,
    v: Visit,
    q: Result<Query<DoneQuery>, QueryRejection>,
) -> Response {
    let done = q.ok().and_then(|Query(q)| q.done);
    render_operations(
        &c,
        &v,
        StatusCode::OK,
        flash(done.as_deref()),
        &views::FormState::default(),
    )
    .await
}

/// The operations page: recent operations, the newest batches, the batch form as `form` has it.
async fn render_operations(
    c: &Console,
    v: &Visit,
    status: StatusCode,
    flash: Option<&str>,
    form: &views::FormState,
) -> Response {
    let problems = match c.fleet(v).await {
        Ok((_, _, p)) => p.len(),
        Err(e) => return failed(c, v, &e),
    };
    let events = match c.recent_events(v, now_ms()).await {
        Ok(e) => e,
        Err(e) => return failed(c, v, &e),
    };
    let mut ops = Vec::new();
    for id in views::operation_ids(&events).into_iter().take(50) {
        if !plain_name(&id) {
            continue;
        }
        match c
            .get::<views::Operation>(v, &format!("/v1/operations/{id}"))
            .await
        {
            Ok(op) => ops.push(op),
            // Deleted with its instance since.
            Err(Error::Api { status, .. }) if status == StatusCode::NOT_FOUND => {}
            Err(e) => return failed(c, v, &e),
        }
    }
    let batches = match c
        .get::<Vec<views::Batch>>(v, &format!("/v1/batches?limit={}", pages::BATCHES_SHOWN))
        .await
    {
        Ok(b) => b,
        Err(e) => return failed(c, v, &e),
    };
    html(
        status,
        pages::operations(&v.frame(problems), &ops, &batches, form, flash),
    )
}

/// Starts a batch from the operations page; a refusal is shown next to its field, the values
/// typed kept.
async fn start_batch(
    State(c): State<Console>,
    v: Visit,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    if let Some(r) = csrf_refusal(&v, &form) {
        return r;
    }
    let mut shown = views::FormState {
        values: form.clone(),
        errors: BTreeMap::new(),
    };
    shown.values.remove("csrf");
    let body = match views::batch_body(&form) {
        Ok(b) => b,
        Err((field, why)) => {
            shown.errors.insert(field.to_owned(), why);
            return render_operations(&c, &v, StatusCode::UNPROCESSABLE_ENTITY, None, &shown).await;
        }
    };
    match c.call(&v, Method::POST, "/v1/batches", Some(body)).await {
        Ok(_) => Redirect::to("/ui/operations?done=batch").into_response(),
        Err(Error::Api {
            status,
            code: _,
            message,
        }) if status != StatusCode::UNAUTHORIZED => {
            shown
                .errors
                .insert(views::batch_field_of_error(&message).to_owned(), message);
            render_operations(&c, &v, status, None, &shown).await
        }
        Err(e) => failed(&c, &v, &e),
    }
}

async fn cancel_batch(
    State(c): State<Console>,
    v: Visit,
    Path(id): Path<String>,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    if let Some(r) = csrf_refusal(&v, &form) {
        return r;
    }
    if !plain_name(&id) {
        return not_found(&v);
    }
    let path = format!("/v1/batches/{id}/cancel");
    match c.call(&v, Method::POST, &path, None).await {
        Ok(_) => Redirect::to("/ui/operations?done=batch-cancel").into_response(),
        Err(e) => failed(&c, &v, &e),
    }
}

async fn start_operation(
    State(c): State<Console>,
    v: Visit,
    Path(name): Path<String>,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    if let Some(r) = csrf_refusal(&v, &form) {
        return r;
    }
    if !plain_name(&name) {
        return not_found(&v);
    }
    let path = format!("/v1/instances/{name}/operations");
    let body = views::operation_body(&form);
    match c.call(&v, Method::POST, &path, Some(body)).await {
        Ok(_) => Redirect::to(&format!("/ui/instances/{name}?done=operation")).into_response(),
        // A parameter refused: the API's reason next to it, the values typed kept.
        Err(Error::Api {
            status,
            code,
            message,
        }) if status != StatusCode::UNAUTHORIZED => {
            if form.get("type").map(String::as_str) == Some("reconfigure") {
                if let Some(field) = views::parameter_of_error(&code, &message) {
                    let mut shown = Shown::default();
                    shown.reconfigure.values = form.clone();
                    shown.reconfigure.values.remove("csrf");
                    shown.reconfigure.errors.insert(field, message);
                    return render_instance_with(&c, &v, &name, status, &shown).await;
                }
            }
            render_instance(&c, &v, &name, status, None, Some(&message)).await
        }
        Err(e) => failed(&c, &v, &e),
    }
}

async fn cancel_operation(
    State(c): State<Console>,
    v: Visit,
    Path(id): Path<String>,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    if let Some(r) = csrf_refusal(&v, &form) {
        return r;
    }
    if !plain_name(&id) {
        return not_found(&v);
    }
    let back = form
        .get("back")
        .map(|b| b.trim())
        .filter(|b| plain_name(b))
        .map_or("/ui/operations?done=cancel".to_owned(), |b| {
            format!("/ui/instances/{b}?done=cancel")
        });
    let path = format!("/v1/operations/{id}/cancel");
    match c.call(&v, Method::POST, &path, None).await {
        Ok(_) => Redirect::to(&back).into_response(),
        Err(e) => failed(&c, &v, &e),
    }
}

#[derive(serde::Deserialize, Default)]
struct BackupsQuery {
    #[serde(flatten)]
    filter: views::BackupFilter,
    /// Page number from 1 (text: numbers do not parse inside a flattened query).
    #[serde(default)]
    page: String,
}

/// Every instance's backups: the API's backup health and backup list.
async fn backups_page(
    State(c): State<Console>,
    v: Visit,
    q: Result<Query<BackupsQuery>, QueryRejection>,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let problems = match c.fleet(&v).await {
        Ok((_, _, p)) => p.len(),
        Err(e) => return failed(&c, &v, &e),
    };
    let health = match c.backup_health(&v).await {
        Ok(h) => h,
        Err(e) => return failed(&c, &v, &e),
    };
    let all: Vec<views::Backup> = match c.get(&v, "/v1/backups").await {
        Ok(b) => b,
        Err(e) => return failed(&c, &v, &e),
    };
    let fleet = views::fleet_backups(&health, &all, &q.filter);
    html(
        StatusCode::OK,
        pages::backups(
            &v.frame(problems),
            &fleet,
            &q.filter,
            q.page.parse().unwrap_or(1),
        ),
    )
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        JS,
    )
        .into_response()
}

async fn ui_not_found() -> Response {
    html(
        StatusCode::NOT_FOUND,
        pages::message(None, "Not found", "No such console page."),
    )
}

/// Security headers on every console answer.
async fn secure_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// The console's routes (all under `/ui`), to be merged into the API's router.
pub fn router(console: Console) -> Router {
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/", get(overview))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/problems", get(problems))
        .route("/ui/instances", get(instances).post(create))
        .route("/ui/instances/new", get(create_page))
        .route("/ui/instances/{name}", get(instance_page))
        .route("/ui/instances/{name}/switchover", post(switchover))
        .route("/ui/instances/{name}/delete", post(delete))
        .route("/ui/nodes", get(nodes_page))
        .route("/ui/nodes/{name}/{action}", post(node_action))
        .route("/ui/events", get(events_page))
        .route("/ui/audit", get(audit_page))
        .route("/ui/operations", get(operations_page))
        .route("/ui/operations/{id}/cancel", post(cancel_operation))
        .route("/ui/batches", post(start_batch))
        .route("/ui/batches/{id}/cancel", post(cancel_batch))
        .route("/ui/instances/{name}/operations", post(start_operation))
        .route("/ui/instances/{name}/backups", post(create_backup))
        .route("/ui/instances/{name}/credentials", post(reveal_credentials))
        .route("/ui/backups", get(backups_page))
        .route("/ui/assets/console.css", get(css))
        .route("/ui/assets/console.js", get(js))
        .route("/ui/{*rest}", get(ui_not_found))
        .layer(middleware::from_fn(secure_headers))
        .with_state(console)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Tokens;
    use crate::cluster::Cluster;
    use crate::config::TokenRole;
    use crate::store::sqlite::SqliteStore;

    const ADMIN: &str = "admin-token-0123456789abcdef";
    const VIEWER: &str = "viewer-token-0123456789abcdef";

    async fn app() -> Router {
        let store = Arc::new(SqliteStore::open_in_memory().expect("in-memory store"));
        let cluster = Cluster::load(store, std::time::Duration::from_secs(30))
            .await
            .expect("load");
        cluster.activate().await.expect("activate");
        app_of(cluster)
    }

    fn app_of(cluster: Arc<Cluster>) -> Router {
        let mut tokens = Tokens::from_config(&[]);
        tokens.insert(ADMIN, "root", TokenRole::Admin);
        tokens.insert(VIEWER, "grafana", TokenRole::Viewer);
        crate::api::router(Api {
            tls: None,
            cluster,
            tokens: Arc::new(tokens),
            sealed: None,
        })
    }

    /// A leading cluster with two nodes heartbeating and an instance `shop` placed on them.
    async fn cluster_with_shop() -> Arc<Cluster> {
        use crate::model::{DiskInfo, InstanceSpec, Node as NodeRecord, NodeAdmin, Resources};
        let store = Arc::new(SqliteStore::open_in_memory().expect("in-memory store"));
        let cluster = Cluster::load(store, std::time::Duration::from_secs(30))
            .await
            .expect("load");
        cluster.activate().await.expect("activate");
        for n in ["n1", "n2"] {
            cluster
                .register(NodeRecord {
                    name: n.into(),
                    address: "127.0.0.1".into(),
                    labels: BTreeMap::from([("zone".into(), n.into())]),
                    cpu: 4.0,
                    memory_bytes: 8 << 30,
                    disks: vec![DiskInfo {
                        path: "/d".into(),
                        class: "ssd".into(),
                        capacity_bytes: 10 << 30,
                        free_bytes: 10 << 30,
                    }],
                    admin: NodeAdmin::Active,
                    agent_version: "test".into(),
                    registered_at_ms: 0,
                    http_address: String::new(),
                })
                .await
                .expect("register");
            cluster.heartbeat(mofang_common::proto::HeartbeatRequest {
                node: n.into(),
                ..Default::default()
            });
        }
        cluster
            .create_instance(InstanceSpec {
                name: "shop".into(),
                engine: mofang_common::EngineKind::Mariadb,
                version: "10.11".into(),
                replicas: 1,
                resources: Resources {
                    cpu: 0.5,
                    memory: 256,
                    disk: 512,
                },
                disk_class: None,
                placement: None,
                labels: BTreeMap::from([("team".into(), "pay".into())]),
                restore: None,
                tls: Default::default(),
                backup: None,
            })
            .await
            .expect("create");
        cluster
    }

    /// The leader's direct path (the API's view structs) and a follower's (their JSON) give
    /// the console the same views.
    #[tokio::test]
    async fn the_leaders_views_and_their_json_give_the_same_console_views() {
        let cluster = cluster_with_shop().await;
        let is = cluster.instances();
        assert_eq!(is.len(), 1);
        let direct = is[0].clone();
        let json: InstanceView =
            serde_json::from_value(serde_json::to_value(&is[0]).expect("json")).expect("parses");
        assert_eq!(direct, json);
        assert_eq!(direct.members.len(), 2);
        for n in cluster.nodes() {
            let json: Node =
                serde_json::from_value(serde_json::to_value(&n).expect("json")).expect("parses");
            assert_eq!(Node::from(&n), json);
            assert_eq!(json.state, "ready");
        }
    }

    /// An operation the API refuses: its status and reason on the instance page, nothing
    /// started; a restore form opened from a backup is prefilled from the source.
    #[tokio::test]
    async fn operation_refusals_and_the_restore_form_come_from_the_api() {
        let cluster = cluster_with_shop().await;
        let app = app_of(cluster.clone());
        let (cookie, csrf) = sign_in(&app, ADMIN).await;
        let (status, r) = send(
            &app,
            post(
                "/ui/instances/shop/operations",
                &cookie,
                &format!("csrf={csrf}&type=scale"),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let html = text(r).await;
        assert!(html.contains("id=\"action-error\""), "{html}");
        assert!(cluster
            .operations_of("shop")
            .await
            .expect("operations")
            .is_empty());
        let (status, r) = send(
            &app,
            get("/ui/instances/new?restore_from=shop&backup=shop-1", &cookie),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let html = text(r).await;
        for want in [
            "name=\"restore_from\" value=\"shop\"",
            "name=\"backup\" value=\"shop-1\"",
            "value=\"shop-restored\"",
            "value=\"256\"",
        ] {
            assert!(html.contains(want), "{want} in {html}");
        }
    }

    /// Batches from the operations page: a selector matching nothing is refused next to the
    /// selector with the values kept and nothing started; one matching starts a batch listed
    /// with its instances; cancel asks it to stop; a viewer sees neither form nor button and
    /// its post is refused.
    #[tokio::test]
    async fn batches_start_show_and_cancel_from_the_operations_page() {
        let cluster = cluster_with_shop().await;
        let app = app_of(cluster.clone());
        let (cookie, csrf) = sign_in(&app, ADMIN).await;
        // The instances a selector chooses, previewed in the list with the same syntax.
        for (selector, shown) in [("team%3Dpay", true), ("team%3Dops", false), ("team", true)] {
            let (status, r) = send(
                &app,
                get(&format!("/ui/instances?labels={selector}"), &cookie),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            let html = text(r).await;
            assert_eq!(
                html.contains("href=\"/ui/instances/shop\""),
                shown,
                "{selector}: {html}"
            );
        }
        let (_, r) = send(&app, get("/ui/instances?labels=team~pay", &cookie)).await;
        let html = text(r).await;
        assert!(html.contains("id=\"labels-error\""), "{html}");
        assert!(!html.contains("href=\"/ui/instances/shop\""), "{html}");
        let start = |form: &str| {
            let (app, cookie) = (app.clone(), cookie.clone());
            let form = format!("csrf={csrf}&{form}");
            async move { send(&app, post("/ui/batches", &cookie, &form)).await }
        };
        let (status, r) =
            start("selector=team%3Dnobody&type=restart&max_parallel=3&max_failures=1").await;
        // The API's answer, relayed: nothing matches (404 `no_match`).
        assert_eq!(status, StatusCode::NOT_FOUND);
        let html = text(r).await;
        assert!(html.contains("id=\"batch-selector-error\""), "{html}");
        assert!(html.contains("matches no instance"), "{html}");
        assert!(html.contains("value=\"team=nobody\""), "{html}");
        assert!(html.contains("value=\"3\""), "{html}");
        let (status, r) = start("selector=team%3Dpay&type=restart&max_parallel=many").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(text(r).await.contains("id=\"batch-max_parallel-error\""));
        let (status, r) = start("selector=team%3Dpay&type=scale").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(text(r).await.contains("id=\"batch-type-error\""));
        assert!(cluster.batches(10).await.expect("batches").is_empty());

        let (status, r) =
            start("selector=team%3Dpay&type=restart&max_parallel=1&max_failures=1").await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(
            r.headers().get(header::LOCATION).expect("location"),
            "/ui/operations?done=batch"
        );
        let batches = cluster.batches(10).await.expect("batches");
        assert_eq!(batches.len(), 1);
        let id = batches[0].id.clone();
        assert_eq!(batches[0].items[0].instance, "shop");
        let (status, r) = send(&app, get("/ui/operations?done=batch", &cookie)).await;
        assert_eq!(status, StatusCode::OK);
        let html = text(r).await;
        assert!(html.contains(&format!("data-batch=\"{id}\"")), "{html}");
        assert!(html.contains("data-instance=\"shop\""), "{html}");
        assert!(html.contains("Batch started"), "{html}");
        assert!(html.contains(&format!("/ui/batches/{id}/cancel")), "{html}");

        let (viewer, viewer_csrf) = sign_in(&app, VIEWER).await;
        let (_, r) = send(&app, get("/ui/operations", &viewer)).await;
        let html = text(r).await;
        assert!(html.contains(&format!("data-batch=\"{id}\"")), "{html}");
        assert!(!html.contains("id=\"batch\""), "no batch form for a viewer");
        assert!(!html.contains("/cancel"), "no cancel button for a viewer");
        let (status, _) = send(
            &app,
            post(
                &format!("/ui/batches/{id}/cancel"),
                &viewer,
                &format!("csrf={viewer_csrf}"),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(!cluster.batch(&id).await.expect("batch").cancel_requested);

        let (status, r) = send(
            &app,
            post(
                &format!("/ui/batches/{id}/cancel"),
                &cookie,
                &format!("csrf={csrf}"),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(
            r.headers().get(header::LOCATION).expect("location"),
            "/ui/operations?done=batch-cancel"
        );
        assert!(cluster.batch(&id).await.expect("batch").cancel_requested);
    }

    /// The fleet backups page, the instance's time axis and the overview's figures are the
    /// API's backup list and health: a failed backup first and its instance needing
    /// attention, the filter kept; a time picked for a restore that the API refuses shows
    /// its reason next to the time field, nothing created.
    #[tokio::test]
    async fn backups_the_pitr_axis_and_the_overview_figures_come_from_the_api() {
        let cluster = cluster_with_shop().await;
        for (id, state, at) in [
            ("shop-1000", "succeeded", 1_000),
            ("shop-2000", "failed", 2_000),
        ] {
            let b = serde_json::json!({"id": id, "instance": "shop", "engine": "mariadb",
                "version": "10.11", "repo": "r", "member": "shop-0", "node": "n1", "state": state,
                "reason": if state == "failed" { "disk full" } else { "" },
                "requested_at_ms": at, "ended_at_ms": at + 10, "size": 1 << 20});
            cluster
                .store()
                .put_meta(&format!("backup/{id}"), &b.to_string())
                .await
                .expect("backup record");
        }
        let app = app_of(cluster.clone());
        let (cookie, csrf) = sign_in(&app, ADMIN).await;
        let (status, r) = send(&app, get("/ui/backups", &cookie)).await;
        assert_eq!(status, StatusCode::OK);
        let html = text(r).await;
        assert!(
            html.contains("data-instance=\"shop\" data-standing=\"failing\""),
            "{html}"
        );
        let at = |id: &str| html.find(&format!("data-backup=\"{id}\"")).expect(id);
        assert!(at("shop-2000") < at("shop-1000"), "the failed one first");
        assert!(html.contains("disk full"));
        assert!(html.contains("/ui/instances/new?restore_from=shop&amp;backup=shop-1000"));
        let (_, r) = send(
            &app,
            get("/ui/backups?status=succeeded&instance=sh", &cookie),
        )
        .await;
        let html = text(r).await;
        assert!(html.contains("data-backup=\"shop-1000\""));
        assert!(!html.contains("data-backup=\"shop-2000\""));
        assert!(
            html.contains("name=\"instance\" type=\"search\" value=\"sh\""),
            "filter kept"
        );
        let (_, r) = send(&app, get("/ui", &cookie)).await;
        let html = text(r).await;
        assert!(
            html.contains("id=\"backups-failing\">1<"),
            "the overview counts it: {html}"
        );
        let (_, r) = send(&app, get("/ui/instances/shop", &cookie)).await;
        let html = text(r).await;
        assert!(html.contains("id=\"pitr-axis\""), "{html}");
        assert!(html.contains("class=\"mark succeeded\" data-backup=\"shop-1000\""));
        assert!(html.contains("class=\"mark failed\" data-backup=\"shop-2000\""));
        let (_, r) = send(
            &app,
            get(
                "/ui/instances/new?restore_from=shop&time=2026-12-01T14%3A45%3A10Z",
                &cookie,
            ),
        )
        .await;
        let html = text(r).await;
        assert!(
            html.contains("type=\"datetime-local\" step=\"1\" value=\"2026-12-01T14:45:10\""),
            "{html}"
        );
        let form = format!(
            "csrf={csrf}&restore_from=shop&time=noon&name=back&engine=mariadb&version=10.11\
             &replicas=0&cpu=0.5&memory=256&disk=512"
        );
        let (status, r) = send(&app, post("/ui/instances", &cookie, &form)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let html = text(r).await;
        assert!(
            html.contains("id=\"time-error\" role=\"alert\">restore.time:"),
            "{html}"
        );
        assert!(cluster.instance("back").is_none(), "nothing created");
    }

    /// The events and audit pages go by cursor, 100 a page, newest first, the filters kept
    /// in the page links; a page stays put while new entries arrive.
    #[tokio::test]
    async fn events_and_audit_are_paged_by_cursor_with_their_filters() {
        let cluster = cluster_with_shop().await;
        let now = now_ms();
        let evs: Vec<crate::model::Event> = (0..250)
            .map(|k| crate::model::Event {
                id: 0,
                at_ms: now - 1_000 + k,
                instance: Some("shop".into()),
                node: None,
                kind: "paged_test".into(),
                message: format!("event {k}"),
            })
            .collect();
        cluster.store().append_events(&evs).await.expect("events");
        let app = app_of(cluster.clone());
        let (cookie, _) = sign_in(&app, ADMIN).await;
        let rows = |html: &str| html.matches("data-kind=\"paged_test\"").count();
        let next = |html: &str, rel: &str| -> String {
            let at = html
                .find(&format!("rel=\"{rel}\""))
                .unwrap_or_else(|| panic!("a {rel} link in {html}"));
            let href = html[..at].rsplit("href=\"").next().expect("href");
            href.split('"').next().expect("link").replace("&amp;", "&")
        };
        let (_, r) = send(&app, get("/ui/events?kind=paged&instance=shop", &cookie)).await;
        let first = text(r).await;
        assert_eq!(rows(&first), 100);
        assert!(first.contains("event 249") && !first.contains("event 149<"));
        let older = next(&first, "next");
        assert!(
            older.starts_with("/ui/events?instance=shop&kind=paged&before="),
            "{older}"
        );
        // New events arrive: the second page is still the one after the first.
        let more = crate::model::Event {
            message: "event new".into(),
            ..evs[0].clone()
        };
        cluster.store().append_events(&[more]).await.expect("event");
        let (_, r) = send(&app, get(&older, &cookie)).await;
        let second = text(r).await;
        assert_eq!(rows(&second), 100);
        assert!(second.contains(">event 149<") && second.contains(">event 50<"));
        let (_, r) = send(&app, get(&next(&second, "next"), &cookie)).await;
        let third = text(r).await;
        assert_eq!(rows(&third), 50, "the oldest 50");
        assert!(!third.contains("rel=\"next\""), "no older page");
        let (_, r) = send(&app, get(&next(&third, "prev"), &cookie)).await;
        assert!(
            text(r).await.contains(">event 149<"),
            "newer: back to the second"
        );
        let (_, r) = send(&app, get("/ui/events?kind=nothing-such", &cookie)).await;
        assert!(!text(r).await.contains("rel=\"next\""));
        for k in 0..120 {
            let entry = crate::model::AuditEntry {
                id: 0,
                at_ms: now,
                who: "pager".into(),
                source: String::new(),
                action: format!("POST /v1/thing/{k}"),
                target: format!("thing-{k}"),
                status: 200,
                result: "ok".into(),
            };
            cluster.store().append_audit(&entry).await.expect("audit");
        }
        let (_, r) = send(&app, get("/ui/audit?q=pager", &cookie)).await;
        let first = text(r).await;
        assert_eq!(first.matches(">pager<").count(), 100);
        assert!(first.contains(">thing-119<") && !first.contains(">thing-19<"));
        let older = next(&first, "next");
        assert!(older.starts_with("/ui/audit?q=pager&before="), "{older}");
        let (_, r) = send(&app, get(&older, &cookie)).await;
        let second = text(r).await;
        assert_eq!(second.matches(">pager<").count(), 20);
        assert!(second.contains(">thing-0<"));
    }

    /// Pages older than what the console keeps (events past 24 hours, audit entries past the
    /// newest 10,000) are read from the store through the API: "Older" goes on below the
    /// kept tail, "Newer" comes back up to it, the filters kept.
    #[tokio::test]
    async fn pages_older_than_the_kept_tail_come_from_the_store() {
        let cluster = cluster_with_shop().await;
        let now = now_ms();
        let event = |k: usize, at_ms: i64, what: &str| crate::model::Event {
            id: 0,
            at_ms,
            instance: Some("shop".into()),
            node: None,
            kind: "aged_test".into(),
            message: format!("{what} {k}"),
        };
        let old: Vec<_> = (0..130)
            .map(|k| event(k, now - 2 * 86_400_000, "old"))
            .collect();
        let new: Vec<_> = (0..30).map(|k| event(k, now, "new")).collect();
        cluster.store().append_events(&old).await.expect("events");
        cluster.store().append_events(&new).await.expect("events");
        let app = app_of(cluster.clone());
        let (cookie, _) = sign_in(&app, ADMIN).await;
        let rows = |html: &str| html.matches("data-kind=\"aged_test\"").count();
        let link = |html: &str, rel: &str| -> Option<String> {
            let at = html.find(&format!("rel=\"{rel}\""))?;
            let href = html[..at].rsplit("href=\"").next()?;
            Some(href.split('"').next()?.replace("&amp;", "&"))
        };
        let page = |path: String| {
            let app = app.clone();
            let cookie = cookie.clone();
            async move {
                let (status, r) = send(&app, get(&path, &cookie)).await;
                assert_eq!(status, StatusCode::OK, "{path}");
                text(r).await
            }
        };
        let first = page("/ui/events?kind=aged&instance=shop".into()).await;
        assert_eq!(rows(&first), 30, "the last 24 hours");
        assert!(first.contains(">new 29<") && first.contains(">new 0<"));
        let second = page(link(&first, "next").expect("older past the tail")).await;
        assert!(second.contains("Older events, from the store"), "{second}");
        assert_eq!(rows(&second), 100);
        assert!(second.contains(">old 129<") && second.contains(">old 30<"));
        assert!(!second.contains(">new 0<"));
        let third = page(link(&second, "next").expect("older")).await;
        assert_eq!(rows(&third), 30);
        assert!(third.contains(">old 29<") && third.contains(">old 0<"));
        assert_eq!(link(&third, "next"), None, "the log's beginning");
        let back = page(link(&third, "prev").expect("newer")).await;
        assert_eq!(rows(&back), 100);
        assert!(back.contains(">old 129<") && back.contains(">old 30<"));
        let top = page(link(&back, "prev").expect("newer, into the tail")).await;
        assert!(
            top.contains(">new 0<") && !top.contains(">old 129<"),
            "{top}"
        );

        // The audit log past its newest 10,000 entries.
        for k in 0..(AUDIT_KEPT + 30) {
            let entry = crate::model::AuditEntry {
                id: 0,
                at_ms: now,
                who: "ager".into(),
                source: String::new(),
                action: "POST /v1/thing".into(),
                target: format!("thing-{k}"),
                status: 200,
                result: "ok".into(),
            };
            cluster.store().append_audit(&entry).await.expect("audit");
        }
        let mut html = page("/ui/audit?q=ager".into()).await;
        for _ in 0..AUDIT_KEPT / pages::LOG_ROWS {
            html = page(link(&html, "next").expect("older")).await;
        }
        assert!(html.contains("Older entries, from the store"), "{html}");
        assert_eq!(html.matches(">ager<").count(), 30);
        assert!(html.contains(">thing-29<") && html.contains(">thing-0<"));
    }

    /// The reconfigure form is the engine's catalogue (`GET /v1/engines`): each parameter
    /// with what it accepts and whether it restarts the members; a value the API refuses is
    /// shown next to its parameter with the values typed kept, nothing started.
    #[tokio::test]
    async fn reconfigure_shows_the_catalogue_and_the_apis_reason_next_to_the_parameter() {
        let cluster = cluster_with_shop().await;
        // Its members healthy and replicating: an operation is refused on anything less
        // before its parameters are looked at.
        let v = cluster.instance("shop").expect("shop");
        for m in &v.members {
            cluster.heartbeat(mofang_common::proto::HeartbeatRequest {
                node: m.node.clone(),
                members: vec![mofang_common::proto::MemberStatus {
                    member: m.id.clone(),
                    instance: "shop".into(),
                    healthy: true,
                    role: m.role.clone(),
                    epoch: v.epoch,
                    replication_ok: true,
                    container_state: "running".into(),
                    address: format!("{}:3306", m.node),
                    cpu: v.spec.resources.cpu,
                    memory_bytes: v.spec.resources.memory << 20,
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        let app = app_of(cluster.clone());
        let (cookie, csrf) = sign_in(&app, ADMIN).await;
        let (_, r) = send(&app, get("/ui/instances/shop", &cookie)).await;
        let html = text(r).await;
        for p in mofang_common::params::catalogue(mofang_common::EngineKind::Mariadb) {
            assert!(
                html.contains(&format!("data-param=\"{}\"", p.name)),
                "{}",
                p.name
            );
        }
        assert!(html.contains("10 ..= 10000 connections"), "{html}");
        let row = html
            .split("data-param=\"innodb_log_buffer_size\"")
            .nth(1)
            .and_then(|r| r.split("</tr>").next())
            .expect("its row");
        assert!(row.contains("badge restart"), "a restart is needed: {row}");
        let form =
            format!("csrf={csrf}&type=reconfigure&param.max_connections=5&param.wait_timeout=60");
        let (status, r) = send(&app, post("/ui/instances/shop/operations", &cookie, &form)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let html = text(r).await;
        assert!(
            html.contains(
                "id=\"param-max_connections-error\" role=\"alert\">settings.max_connections:"
            ),
            "{html}"
        );
        assert!(html.contains("name=\"param.max_connections\" type=\"number\" value=\"5\""));
        assert!(html.contains("name=\"param.wait_timeout\" type=\"number\" value=\"60\""));
        assert!(cluster
            .operations_of("shop")
            .await
            .expect("operations")
            .is_empty());
        // A viewer sees the catalogue nowhere (no form to fill).
        let (viewer, _) = sign_in(&app, VIEWER).await;
        let (_, r) = send(&app, get("/ui/instances/shop", &viewer)).await;
        assert!(!text(r).await.contains("id=\"reconfigure\""));
    }

    /// Credentials are shown to an admin who asks, once, with an audit entry; an operator's
    /// ask is the API's 403 and shows nothing.
    #[tokio::test]
    async fn credentials_are_revealed_to_admins_on_request_and_audited() {
        let cluster = cluster_with_shop().await;
        let app = app_of(cluster.clone());
        let app_password = cluster.credentials("shop").expect("credentials").app;
        let (admin, csrf) = sign_in(&app, ADMIN).await;
        let (_, r) = send(&app, get("/ui/instances/shop", &admin)).await;
        let page = text(r).await;
        assert!(page.contains("id=\"credentials\"") && !page.contains(&app_password));
        let (status, r) = send(
            &app,
            post(
                "/ui/instances/shop/credentials",
                &admin,
                &format!("csrf={csrf}"),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(text(r).await.contains(&app_password));
        let audit = cluster.store().audit(0, 100).await.expect("audit");
        assert!(
            audit.iter().any(|e| e.who == "root"
                && e.action.contains("reveal credentials")
                && e.target == "instances/shop/credentials"),
            "{audit:?}"
        );
        let mut tokens = Tokens::from_config(&[]);
        tokens.insert(ADMIN, "root", TokenRole::Operator);
        let app = crate::api::router(Api {
            tls: None,
            cluster: cluster.clone(),
            tokens: Arc::new(tokens),
            sealed: None,
        });
        let (op, csrf) = sign_in(&app, ADMIN).await;
        let (_, r) = send(&app, get("/ui/instances/shop", &op)).await;
        assert!(
            !text(r).await.contains("id=\"credentials\""),
            "no button for an operator"
        );
        let (status, r) = send(
            &app,
            post(
                "/ui/instances/shop/credentials",
                &op,
                &format!("csrf={csrf}"),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(!text(r).await.contains(&app_password));
    }

    /// A follower's console shows the leader's fleet: its reads go through the API router,
    /// which forwards them to the leader.
    #[tokio::test]
    async fn a_followers_console_shows_the_leaders_fleet() {
        let leader = app_of(cluster_with_shop().await);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, leader).await });
        let store = Arc::new(SqliteStore::open_in_memory().expect("in-memory store"));
        let follower = Cluster::load(store, std::time::Duration::from_secs(30))
            .await
            .expect("load");
        follower.deactivate();
        follower.set_leader_hint(Some(format!("http://{addr}")));
        let app = app_of(follower.clone());
        let (cookie, _) = sign_in(&app, VIEWER).await;
        let (status, r) = send(&app, get("/ui/instances", &cookie)).await;
        assert_eq!(status, StatusCode::OK);
        let html = text(r).await;
        assert!(
            html.contains("/ui/instances/shop") && html.contains("team=pay"),
            "{html}"
        );
        // The leader gone: the page says so (503 with the reason), never a blank page.
        follower.set_leader_hint(Some("http://127.0.0.1:1".into()));
        let (status, r) = send(&app, get("/ui", &cookie)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(text(r).await.contains("unreachable"));
    }

    async fn send(app: &Router, req: axum::http::Request<Body>) -> (StatusCode, Response) {
        let r = app.clone().oneshot(req).await.expect("answer");
        (r.status(), r)
    }

    async fn text(r: Response) -> String {
        let b = axum::body::to_bytes(r.into_body(), MAX_ANSWER)
            .await
            .expect("body");
        String::from_utf8_lossy(&b).into_owned()
    }

    fn get(path: &str, cookie: &str) -> axum::http::Request<Body> {
        axum::http::Request::get(path)
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .expect("request")
    }

    fn post(path: &str, cookie: &str, form: &str) -> axum::http::Request<Body> {
        axum::http::Request::post(path)
            .header(header::COOKIE, cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form.to_owned()))
            .expect("request")
    }

    fn set_cookie(r: &Response, name: &str) -> String {
        r.headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| session::cookie_value(v.split(';').next().unwrap_or(""), name))
            .unwrap_or_default()
            .to_owned()
    }

    /// Signs in with `token`; the session cookie header and the session's CSRF token.
    async fn sign_in(app: &Router, token: &str) -> (String, String) {
        let (_, page) = send(app, get("/ui/login", "")).await;
        let pre = set_cookie(&page, session::LOGIN_COOKIE);
        let (status, r) = send(
            app,
            post(
                "/ui/login",
                &format!("{}={pre}", session::LOGIN_COOKIE),
                &format!("csrf={pre}&token={token}&next=%2Fui%2Fnodes"),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(r.headers()[header::LOCATION], "/ui/nodes");
        let cookie = format!("{}={}", session::COOKIE, set_cookie(&r, session::COOKIE));
        let (_, page) = send(app, get("/ui/nodes", &cookie)).await;
        let html = text(page).await;
        let csrf = html
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("a CSRF field")
            .to_owned();
        (cookie, csrf)
    }

    #[tokio::test]
    async fn pages_need_a_session_and_remember_where_they_were() {
        let app = app().await;
        let (status, r) = send(&app, get("/ui/instances?engine=redis", "")).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(
            r.headers()[header::LOCATION],
            "/ui/login?next=/ui/instances%3Fengine%3Dredis"
        );
        let (_, r) = send(&app, get("/ui", "mofang_session=forged")).await;
        assert_eq!(r.headers()[header::LOCATION], "/ui/login");
    }

    #[tokio::test]
    async fn every_answer_has_the_strict_headers() {
        let app = app().await;
        for path in ["/ui/login", "/ui", "/ui/assets/console.js", "/ui/nope/x"] {
            let (_, r) = send(&app, get(path, "")).await;
            let h = r.headers();
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP, "{path}");
            assert!(CSP.contains("default-src 'self'") && CSP.contains("frame-ancestors 'none'"));
            assert!(!CSP.contains("unsafe-inline"));
            assert_eq!(h[header::X_FRAME_OPTIONS], "DENY", "{path}");
        }
        let (_, r) = send(&app, get("/ui/login", "")).await;
        let cookie = r.headers()[header::SET_COOKIE].to_str().expect("ascii");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        let html = text(r).await;
        assert!(
            !html.contains("<style") && !html.contains("style=\""),
            "no inline style"
        );
        assert!(!html.contains("<script>"), "no inline script");
    }

    #[tokio::test]
    async fn sign_in_needs_a_known_token_and_the_forms_own_cookie() {
        let app = app().await;
        let (_, page) = send(&app, get("/ui/login", "")).await;
        let pre = set_cookie(&page, session::LOGIN_COOKIE);
        let jar = format!("{}={pre}", session::LOGIN_COOKIE);
        let (status, _) = send(
            &app,
            post("/ui/login", &jar, &format!("csrf={pre}&token=nope")),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = send(
            &app,
            post("/ui/login", "", &format!("csrf={pre}&token={ADMIN}")),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "login CSRF: no cookie");
        let (status, r) = send(
            &app,
            post(
                "/ui/login",
                &jar,
                &format!("csrf={pre}&token={ADMIN}&next=https://evil.example/"),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(r.headers()[header::LOCATION], "/ui", "no open redirect");
        let session = r
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("mofang_session="))
            .expect("a session cookie")
            .to_owned();
        for part in [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/ui",
            "Max-Age=28800",
        ] {
            assert!(session.contains(part), "{session} lacks {part}");
        }
    }

    #[tokio::test]
    async fn a_form_without_its_csrf_token_is_refused() {
        let app = app().await;
        let (cookie, csrf) = sign_in(&app, ADMIN).await;
        let form = "name=shop&engine=mariadb&version=10.11&replicas=0&cpu=0.5&memory=256&disk=512";
        let (status, _) = send(&app, post("/ui/instances", &cookie, form)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = send(
            &app,
            post(
                "/ui/instances",
                &cookie,
                &format!("{form}&csrf=wrong{csrf}"),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = send(&app, post("/ui/logout", &cookie, "")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "sign-out is a form too");
    }

    #[tokio::test]
    async fn the_apis_reason_is_shown_next_to_the_field_and_nothing_is_created() {
        let app = app().await;
        let (cookie, csrf) = sign_in(&app, ADMIN).await;
        let form = format!(
            "csrf={csrf}&name=shop&engine=mariadb&version=10.11&replicas=9&cpu=0.5&memory=256&disk=512"
        );
        let (status, r) = send(&app, post("/ui/instances", &cookie, &form)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let html = text(r).await;
        assert!(
            html.contains("id=\"replicas-error\" role=\"alert\">replicas 9 is absurd: at most 8"),
            "{html}"
        );
        assert!(html.contains("value=\"shop\""), "values kept");
        let (_, r) = send(&app, get("/ui/instances", &cookie)).await;
        assert!(text(r).await.contains("0 of 0"), "nothing created");
    }

    #[tokio::test]
    async fn a_viewer_sees_no_actions_and_its_posts_are_refused_and_audited() {
        let app = app().await;
        let (cookie, csrf) = sign_in(&app, VIEWER).await;
        let (_, r) = send(&app, get("/ui/nodes", &cookie)).await;
        assert!(
            !text(r).await.contains("class=\"act"),
            "no action for a viewer"
        );
        let (_, r) = send(&app, get("/ui/instances", &cookie)).await;
        assert!(!text(r).await.contains("/ui/instances/new"));
        let form = format!(
            "csrf={csrf}&name=shop&engine=mariadb&version=10.11&replicas=0&cpu=0.5&memory=256&disk=512"
        );
        let (status, r) = send(&app, post("/ui/instances", &cookie, &form)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(text(r).await.contains("operator is needed"));
        let (status, _) = send(&app, get("/ui/audit", &cookie)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "the audit log is for admins");
        let (admin, _) = sign_in(&app, ADMIN).await;
        let (status, r) = send(&app, get("/ui/audit", &admin)).await;
        assert_eq!(status, StatusCode::OK);
        let html = text(r).await;
        assert!(
            html.contains("grafana") && html.contains("POST /v1/instances"),
            "the refused POST is in the audit log like an API call: {html}"
        );
    }

    #[tokio::test]
    async fn sign_out_ends_the_session() {
        let app = app().await;
        let (cookie, csrf) = sign_in(&app, ADMIN).await;
        let (status, _) = send(&app, post("/ui/logout", &cookie, &format!("csrf={csrf}"))).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let (status, r) = send(&app, get("/ui", &cookie)).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(r.headers()[header::LOCATION], "/ui/login");
    }
}
