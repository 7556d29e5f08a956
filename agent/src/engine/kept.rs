//! The agent's kept session to each member's server (issue 19): a new connection, and with
//! TLS a new handshake, for every check of every member was most of an idle agent's CPU.
//! One session per server address, with the password and TLS it was opened with; a call
//! that asks with another password or TLS (a credential rotation, a TLS change) finds none
//! and the old one is dropped. Only calls that leave no session state behind run on it
//! (ping, probe, observe, parameters, replicate_from); the others open their own session.

use super::{ClientTls, Secrets, Target};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// The kept sessions of one engine, by server address.
pub(super) struct Sessions<C> {
    by_address: Mutex<HashMap<String, Kept<C>>>,
}

/// A kept session and what it was opened with.
struct Kept<C> {
    admin: String,
    tls: Option<ClientTls>,
    session: C,
}

impl<C> Default for Sessions<C> {
    fn default() -> Self {
        Sessions {
            by_address: Mutex::default(),
        }
    }
}

impl<C> Sessions<C> {
    /// The kept session to `at`, taken out while in use: a call cancelled by its deadline
    /// drops it (half used) instead of handing it to the next one. None when there is none,
    /// or it was opened with another password or TLS (then it is dropped).
    pub(super) fn take(&self, at: &Target, s: &Secrets) -> Option<C> {
        let k = self
            .by_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&at.to_string())?;
        (k.admin == s.admin && k.tls == at.tls).then_some(k.session)
    }

    /// Keeps `session` as the one to `at` (another one in its place is dropped).
    pub(super) fn keep(&self, at: &Target, s: &Secrets, session: C) {
        let k = Kept {
            admin: s.admin.clone(),
            tls: at.tls.clone(),
            session,
        };
        self.by_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(at.to_string(), k);
    }

    /// How many sessions are kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Runs `$body` (an expression using the session `$c`) on the kept session of `$sessions`
/// to `$at`; if that fails, once more on a fresh session from `$connect`, which is kept when
/// it succeeds. A kept session the server has closed (restarted, `wait_timeout`) is thus
/// never a failed check, while a server that does not answer still fails within the
/// caller's deadline, as it did with a fresh session. Calls run this way are idempotent.
macro_rules! on_kept {
    ($sessions:expr, $connect:path, $at:expr, $s:expr, |$c:ident| $body:expr) => {{
        let (at, s): (&Target, &Secrets) = ($at, $s);
        let mut done = None;
        if let Some(mut $c) = $sessions.take(at, s) {
            if let Ok(v) = $body {
                $sessions.keep(at, s, $c);
                done = Some(v);
            }
        }
        match done {
            Some(v) => Ok::<_, $crate::engine::Error>(v),
            None => {
                let mut $c = $connect(at, s).await?;
                let v = $body?;
                $sessions.keep(at, s, $c);
                Ok(v)
            }
        }
    }};
}
pub(super) use on_kept;

#[cfg(test)]
mod tests {
    use super::*;

    fn at(port: u16, tls: bool) -> Target {
        Target {
            host: "10.0.0.1".into(),
            port,
            tls: tls.then(|| ClientTls {
                ca_pem: "CA".into(),
                server_name: "db-0".into(),
            }),
        }
    }

    #[test]
    fn a_session_is_given_back_only_for_the_password_and_tls_it_was_opened_with() {
        let kept: Sessions<u32> = Sessions::default();
        let s = Secrets::generate();
        kept.keep(&at(3306, false), &s, 1);
        kept.keep(&at(3307, false), &s, 2);
        assert_eq!(kept.len(), 2, "one per address");
        assert_eq!(kept.take(&at(3306, false), &s), Some(1));
        assert_eq!(
            kept.take(&at(3306, false), &s),
            None,
            "taken out while in use"
        );
        // A rotated admin password or a TLS change: not given, and dropped.
        kept.keep(&at(3306, false), &s, 3);
        assert_eq!(kept.take(&at(3306, false), &Secrets::generate()), None);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept.take(&at(3307, true), &s), None);
        assert_eq!(kept.len(), 0);
        // A second session to one address replaces the first.
        kept.keep(&at(3306, false), &s, 4);
        kept.keep(&at(3306, false), &s, 5);
        assert_eq!(kept.take(&at(3306, false), &s), Some(5));
    }
}
