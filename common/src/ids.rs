//! Newtype ids (`NodeId`, `InstanceName`, `MemberId`, `Epoch`) so they cannot be mixed up.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("{kind} name is empty")]
    Empty {
        /// What was being named.
        kind: &'static str,
    },
    /// The name is longer than a DNS label allows.
    #[error("{kind} name '{name}' is {len} characters, at most {max} allowed")]
    TooLong {
        /// What was being named.
        kind: &'static str,
        /// The offending name.
        name: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name is not a DNS label (lower-case letters, digits, '-', not at either end).
    #[error("{kind} name '{name}' must be lower-case letters, digits and '-', starting with a letter and not ending with '-'")]
    NotDnsLabel {
        /// What was being named.
        kind: &'static str,
        /// The offending name.
        name: String,
    },
}

/// Checks a name against DNS label rules (RFC 1123), at most `max` characters.
/// Names end up in container names, Consul service names and DNS, so all share the rule.
pub fn validate_dns_label(kind: &'static str, name: &str, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            kind,
            name: name.to_owned(),
            len: name.len(),
            max,
        });
    }
    let bytes = name.as_bytes();
    let ok_chars = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if !ok_chars || !bytes[0].is_ascii_lowercase() || bytes[bytes.len() - 1] == b'-' {
        return Err(NameError::NotDnsLabel {
            kind,
            name: name.to_owned(),
        });
    }
    Ok(())
}

macro_rules! name_newtype {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps a name.
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                validate_dns_label($kind, &name, $max)?;
                Ok(Self(name))
            }
            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
    };
}

name_newtype!(
    /// A host running one agent, e.g. `node-a`.
    NodeId, "node", 63
);
name_newtype!(
    /// A database instance, e.g. `orders`. Members are named `<instance>-<n>`.
    InstanceName, "instance", 40
);
name_newtype!(
    /// One member (one container, one volume) of an instance, e.g. `orders-0`.
    MemberId, "member", 63
);

/// A per-instance role-assignment generation. Only grows; an agent applies a role change only
/// if its epoch is newer than the one the member has.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert!(InstanceName::new("orders-1").is_ok());
        assert!(matches!(
            InstanceName::new(""),
            Err(NameError::Empty { .. })
        ));
        assert!(matches!(
            InstanceName::new("Orders"),
            Err(NameError::NotDnsLabel { .. })
        ));
        assert!(matches!(
            InstanceName::new("1abc"),
            Err(NameError::NotDnsLabel { .. })
        ));
        assert!(matches!(
            InstanceName::new("abc-"),
            Err(NameError::NotDnsLabel { .. })
        ));
        assert!(matches!(
            InstanceName::new("a_b"),
            Err(NameError::NotDnsLabel { .. })
        ));
        assert!(matches!(
            InstanceName::new("a".repeat(41)),
            Err(NameError::TooLong { .. })
        ));
    }

    #[test]
    fn serde_validates() {
        let ok: NodeId = serde_json::from_str("\"node-a\"").unwrap();
        assert_eq!(ok.as_str(), "node-a");
        assert!(serde_json::from_str::<NodeId>("\"Node A\"").is_err());
    }
}
