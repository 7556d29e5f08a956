//! Credential rotation's words, shared by the scheduler (which orders the steps) and the
//! agents (which carry each step out on their members): the accounts, the steps, and what a
//! member reports once it has carried a step out (docs/security.md, "Credential rotation").

use serde::{Deserialize, Serialize};

/// An instance account whose password can be rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Account {
    /// `mofang_admin`: the agents' own account (and replica seeding's `client.cnf`).
    Admin,
    /// `mofang_repl`: replication (MariaDB `MASTER_PASSWORD`, Redis `masterauth`).
    Repl,
    /// `mofang_monitor`: the agents' metrics scrapes.
    Monitor,
    /// `app`: what applications connect with.
    App,
}

impl Account {
    /// Every account.
    pub const ALL: [Account; 4] = [
        Account::Admin,
        Account::Repl,
        Account::Monitor,
        Account::App,
    ];

    /// The name in the API, the assignment's secrets map and the credentials (`admin`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Account::Admin => "admin",
            Account::Repl => "repl",
            Account::Monitor => "monitor",
            Account::App => "app",
        }
    }

    /// The database user (MariaDB user `'<user>'@'%'`, Redis ACL user).
    pub fn user(self) -> &'static str {
        match self {
            Account::Admin => "mofang_admin",
            Account::Repl => "mofang_repl",
            Account::Monitor => "mofang_monitor",
            Account::App => "app",
        }
    }

    /// Parses [`Account::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The steps of a rotation, in order. The scheduler moves to the next one only when every
/// member of the instance reports the current one carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotationStep {
    /// Every member accepts the new password beside the old one; consumers use the old one.
    Add,
    /// The new password is the instance's: consumers (agents, replication, monitoring,
    /// rendered files, `mofang instance credentials`) use it; the old one is still accepted.
    Switch,
    /// Members accept the new password only.
    Drop,
}

impl RotationStep {
    /// The name in the protocol and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RotationStep::Add => "add",
            RotationStep::Switch => "switch",
            RotationStep::Drop => "drop",
        }
    }

    /// Parses [`RotationStep::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [RotationStep::Add, RotationStep::Switch, RotationStep::Drop]
            .into_iter()
            .find(|st| st.as_str() == s)
    }

    /// True while members must accept both passwords.
    pub fn both_accepted(self) -> bool {
        self != RotationStep::Drop
    }
}

impl std::fmt::Display for RotationStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a member reports (`MemberStatus.rotation`) once it has carried out `step` of
/// rotation `id`: `<id>:<step>`.
pub fn done(id: u64, step: RotationStep) -> String {
    format!("{id}:{step}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_steps_are_ordered() {
        for a in Account::ALL {
            assert_eq!(Account::parse(a.as_str()), Some(a));
        }
        assert_eq!(Account::parse("root"), None);
        for s in [RotationStep::Add, RotationStep::Switch, RotationStep::Drop] {
            assert_eq!(RotationStep::parse(s.as_str()), Some(s));
        }
        assert!(
            RotationStep::Add < RotationStep::Switch && RotationStep::Switch < RotationStep::Drop
        );
        assert_eq!(done(17, RotationStep::Switch), "17:switch");
        assert!(RotationStep::Switch.both_accepted() && !RotationStep::Drop.both_accepted());
    }
}
