//! Replication positions, compared the same way by agents and the scheduler.
//!
//! MariaDB reports a GTID list (`0-1-42,1-3-7`: domain-server-sequence per domain), Redis a
//! replication offset (`123456`). A position *covers* another when it is at least as far in
//! every domain; the scheduler promotes a replica whose position covers every other.

use std::collections::BTreeMap;

/// A parsed position: sequence (or offset) per replication domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position(BTreeMap<u32, u64>);

impl Position {
    /// Parses a MariaDB GTID list or a Redis offset. Unparseable parts are ignored, so an
    /// empty or garbled position is simply "nothing applied".
    pub fn parse(s: &str) -> Self {
        let mut m = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let fields: Vec<&str> = part.split('-').collect();
            let (domain, seq) = match fields.as_slice() {
                [offset] => (Some(0), offset.parse().ok()),
                [d, _server, n] => (d.parse().ok(), n.parse().ok()),
                _ => (None, None),
            };
            if let (Some(d), Some(n)) = (domain, seq) {
                let e = m.entry(d).or_insert(0);
                *e = (*e).max(n);
            }
        }
        Position(m)
    }

    /// True when `self` is at least as far as `other` in every domain.
    pub fn covers(&self, other: &Position) -> bool {
        other
            .0
            .iter()
            .all(|(d, n)| self.0.get(d).is_some_and(|m| m >= n))
    }

    /// `(domain, sequence)` pairs, by domain.
    pub fn domains(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.0.iter().map(|(d, n)| (*d, *n))
    }

    /// Total progress (sum over domains): orders positions none of which covers the others.
    pub fn total(&self) -> u128 {
        self.0.values().map(|&n| u128::from(n)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_lists_and_offsets() {
        let a = Position::parse("0-1-42,1-3-7");
        let b = Position::parse("0-2-40");
        assert!(a.covers(&b));
        assert!(!b.covers(&a));
        assert_eq!(a.total(), 49);
        assert!(Position::parse("1500").covers(&Position::parse("1499")));
        assert!(!Position::parse("").covers(&Position::parse("0-1-1")));
        assert!(Position::parse("0-1-1").covers(&Position::parse("")));
        assert_eq!(Position::parse("garbage-x"), Position::default());
    }
}
