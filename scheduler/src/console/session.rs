//! Console sessions: an API token exchanged for a server-side session (cookie), its CSRF
//! token, and the checks on `?next=` and cookies. Pure except for the random ids; the clock
//! is passed in.

use crate::config::TokenRole;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

/// Name of the session cookie.
pub const COOKIE: &str = "mofang_session";
/// Name of the sign-in form's cookie (login CSRF: double submit, before any session).
pub const LOGIN_COOKIE: &str = "mofang_login";
/// How long a session lasts from sign-in (absolute, not sliding): 8 hours.
pub const SESSION_TTL_MS: i64 = 8 * 3600 * 1000;
/// Most sessions held at once; the oldest is dropped beyond it.
pub const MAX_SESSIONS: usize = 10_000;

/// One signed-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The API token it acts with (kept in memory only, never sent back to the browser).
    pub token: String,
    /// The token's name (the audit log's `who`).
    pub who: String,
    /// Its role: what the pages offer.
    pub role: TokenRole,
    /// The CSRF token every state-changing form of this session carries.
    pub csrf: String,
    /// When it expires (unix ms).
    pub expires_ms: i64,
}

impl Session {
    /// May start and change things (operator or admin).
    pub fn can_act(&self) -> bool {
        self.role >= TokenRole::Operator
    }

    /// May read the audit log and credentials.
    pub fn is_admin(&self) -> bool {
        self.role >= TokenRole::Admin
    }
}

/// The sessions of this scheduler, by the SHA-256 of their cookie (a memory dump does not
/// give usable cookies). A restart signs everyone out (decision 137).
#[derive(Debug, Default)]
pub struct Sessions {
    by_digest: Mutex<HashMap<String, Session>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A fresh random id: 43 alphanumeric characters (about 256 bits).
pub fn random_id() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 43)
}

impl Sessions {
    /// Opens a session for `who`; returns its cookie value.
    pub fn open(&self, token: &str, who: &str, role: TokenRole, now_ms: i64) -> (String, Session) {
        let id = random_id();
        let session = Session {
            token: token.to_owned(),
            who: who.to_owned(),
            role,
            csrf: random_id(),
            expires_ms: now_ms.saturating_add(SESSION_TTL_MS),
        };
        let mut map = lock(&self.by_digest);
        map.retain(|_, s| s.expires_ms > now_ms);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires_ms)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(digest(&id), session.clone());
        (id, session)
    }

    /// The live session of a cookie value; an expired one is forgotten.
    pub fn get(&self, cookie: &str, now_ms: i64) -> Option<Session> {
        let key = digest(cookie);
        let mut map = lock(&self.by_digest);
        match map.get(&key) {
            Some(s) if s.expires_ms > now_ms => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Signs a session out.
    pub fn close(&self, cookie: &str) {
        lock(&self.by_digest).remove(&digest(cookie));
    }

    /// Sessions held.
    pub fn len(&self) -> usize {
        lock(&self.by_digest).len()
    }

    /// No session held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn digest(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Compares a form's CSRF token with the session's in time independent of where they
/// differ. An empty or missing token never matches.
pub fn csrf_matches(expected: &str, given: Option<&str>) -> bool {
    let Some(given) = given else { return false };
    if expected.is_empty() || expected.len() != given.len() {
        return false;
    }
    expected
        .bytes()
        .zip(given.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name && !v.is_empty()).then_some(v)
    })
}

/// The `Set-Cookie` value of a session (or sign-in) cookie: only over HTTPS, never to
/// scripts, never on a cross-site request, only under `/ui`.
pub fn set_cookie(name: &str, value: &str, max_age_s: i64) -> String {
    format!("{name}={value}; HttpOnly; Secure; SameSite=Strict; Path=/ui; Max-Age={max_age_s}")
}

/// `next` if it is a console page to return to after sign-in: a relative `/ui` path, with
/// no scheme, host, `//`, backslash, `..` segment or control character; else `None` (the
/// caller goes to the overview). Keeps an open redirect out.
pub fn safe_next(next: &str) -> Option<&str> {
    let path = next.split(['?', '#']).next().unwrap_or_default();
    let ok = (path == "/ui" || path.starts_with("/ui/"))
        && !next.contains("//")
        && !next.contains('\\')
        && !next.chars().any(|c| c.is_control() || c.is_whitespace())
        && !path.split('/').any(|seg| seg == ".." || seg == ".")
        && !next.contains("%2e")
        && !next.contains("%2E")
        && !next.contains("%2f")
        && !next.contains("%2F")
        && !next.contains("%5c")
        && !next.contains("%5C");
    ok.then_some(next)
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept).
pub fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where a page asked without a session sends the browser: sign-in, remembering the page.
pub fn login_redirect(path_and_query: &str) -> String {
    match safe_next(path_and_query) {
        Some(next) if next != "/ui" && next != "/ui/" => {
            format!("/ui/login?next={}", encode_query(next))
        }
        _ => "/ui/login".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lives_until_its_expiry_and_not_after() {
        let s = Sessions::default();
        let (id, opened) = s.open("tok", "ops", TokenRole::Operator, 1_000);
        assert_eq!(s.get(&id, 1_000 + SESSION_TTL_MS - 1), Some(opened));
        assert_eq!(s.get(&id, 1_000 + SESSION_TTL_MS), None);
        assert!(s.is_empty(), "an expired session is forgotten");
        assert_eq!(s.get("not-a-session", 1_000), None);
    }

    #[test]
    fn a_closed_session_is_gone_and_ids_differ() {
        let s = Sessions::default();
        let (a, sa) = s.open("tok", "ops", TokenRole::Viewer, 0);
        let (b, sb) = s.open("tok", "ops", TokenRole::Viewer, 0);
        assert_ne!(a, b);
        assert_ne!(sa.csrf, sb.csrf);
        assert_ne!(sa.csrf, a, "the CSRF token is not the cookie");
        s.close(&a);
        assert_eq!(s.get(&a, 1), None);
        assert!(s.get(&b, 1).is_some());
    }

    #[test]
    fn sessions_are_bounded() {
        let s = Sessions::default();
        for i in 0..(MAX_SESSIONS as i64 + 5) {
            s.open("tok", "ops", TokenRole::Viewer, i);
        }
        assert_eq!(s.len(), MAX_SESSIONS);
    }

    #[test]
    fn roles_decide_what_a_session_may_do() {
        let s = Sessions::default();
        let (_, viewer) = s.open("t", "v", TokenRole::Viewer, 0);
        let (_, op) = s.open("t", "o", TokenRole::Operator, 0);
        let (_, admin) = s.open("t", "a", TokenRole::Admin, 0);
        assert!(!viewer.can_act() && !viewer.is_admin());
        assert!(op.can_act() && !op.is_admin());
        assert!(admin.can_act() && admin.is_admin());
    }

    #[test]
    fn csrf_needs_the_exact_token() {
        assert!(csrf_matches("abc123", Some("abc123")));
        assert!(!csrf_matches("abc123", Some("abc124")));
        assert!(!csrf_matches("abc123", Some("abc12")));
        assert!(!csrf_matches("abc123", None));
        assert!(!csrf_matches("", Some("")));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let h = "a=1; mofang_session=xyz; mofang_sessionx=no";
        assert_eq!(cookie_value(h, COOKIE), Some("xyz"));
        assert_eq!(cookie_value(h, "a"), Some("1"));
        assert_eq!(cookie_value("mofang_session=", COOKIE), None);
        assert_eq!(cookie_value("", COOKIE), None);
        let c = set_cookie(COOKIE, "v", 60);
        for part in [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/ui",
            "Max-Age=60",
        ] {
            assert!(c.contains(part), "{c} lacks {part}");
        }
    }

    #[test]
    fn next_accepts_only_console_paths() {
        for ok in [
            "/ui",
            "/ui/",
            "/ui/instances/shop",
            "/ui/instances?engine=redis",
        ] {
            assert_eq!(safe_next(ok), Some(ok), "{ok}");
        }
        for bad in [
            "https://evil.example/ui",
            "//evil.example/ui",
            "/ui//evil.example",
            "/\\evil.example",
            "/ui\\..\\v1",
            "/uix",
            "/v1/instances",
            "/ui/../v1/audit",
            "/ui/%2e%2e/v1",
            "ui/instances",
            "/ui/a b",
            "/ui/\nx",
            "",
            "javascript:alert(1)",
        ] {
            assert_eq!(safe_next(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_page_without_a_session_goes_to_sign_in_remembering_it() {
        assert_eq!(
            login_redirect("/ui/instances/shop?x=1&y=2"),
            "/ui/login?next=/ui/instances/shop%3Fx%3D1%26y%3D2"
        );
        assert_eq!(login_redirect("/ui"), "/ui/login");
        assert_eq!(login_redirect("//evil"), "/ui/login");
    }
}
