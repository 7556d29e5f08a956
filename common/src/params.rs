//! The catalogue of engine parameters an operator may set (`reconfigure`, issue 17): per
//! engine, each parameter's name (the engine's own), type, range, whether the server takes it
//! live and a one-line description. The scheduler validates against it and serves it at
//! `GET /v1/engines`; the agent renders the values into the config and applies the dynamic
//! ones live. Names and values that pass [`check`] are safe to put into SQL or a Redis command
//! (an identifier of the catalogue, a number, or one of the listed words).

use crate::EngineKind;

/// The kind of value a parameter takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// A whole number within `min ..= max`.
    Int {
        /// Smallest allowed.
        min: i64,
        /// Largest allowed.
        max: i64,
    },
    /// One of these words.
    Enum(&'static [&'static str]),
}

/// One settable parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    /// The engine's own name (`max_connections`, `maxmemory-policy`).
    pub name: &'static str,
    /// Its values.
    pub ty: ParamType,
    /// Unit of an integer (`connections`, `seconds`, `bytes`), empty if none.
    pub unit: &'static str,
    /// The server takes it live (`SET GLOBAL` / `CONFIG SET`); false: a restart is needed.
    pub dynamic: bool,
    /// An integer must be a multiple of this (1: any): the server rounds other values down
    /// (MariaDB's `max_allowed_packet` to KiB), which would then differ from the desired one
    /// for ever.
    pub multiple_of: i64,
    /// One line.
    pub description: &'static str,
}

const MARIADB: &[Param] = &[
    Param {
        name: "max_connections",
        ty: ParamType::Int {
            min: 10,
            max: 10_000,
        },
        unit: "connections",
        dynamic: true,
        multiple_of: 1,
        description: "Most client connections at once (default 200).",
    },
    Param {
        name: "wait_timeout",
        ty: ParamType::Int {
            min: 1,
            max: 31_536_000,
        },
        unit: "seconds",
        dynamic: true,
        multiple_of: 1,
        description: "An idle client connection is closed after this long (default 28800).",
    },
    Param {
        name: "max_allowed_packet",
        ty: ParamType::Int {
            min: 1_048_576,
            max: 1_073_741_824,
        },
        unit: "bytes",
        dynamic: true,
        multiple_of: 1024,
        description: "Largest packet or row a client may send (default 16 MiB).",
    },
    Param {
        name: "long_query_time",
        ty: ParamType::Int { min: 0, max: 3600 },
        unit: "seconds",
        dynamic: true,
        multiple_of: 1,
        description: "A query slower than this counts as slow (default 10).",
    },
    Param {
        name: "thread_cache_size",
        ty: ParamType::Int {
            min: 0,
            max: 16_384,
        },
        unit: "threads",
        dynamic: true,
        multiple_of: 1,
        description: "Threads kept for reuse after their connection closes.",
    },
    Param {
        name: "innodb_log_buffer_size",
        ty: ParamType::Int {
            min: 262_144,
            max: 268_435_456,
        },
        unit: "bytes",
        dynamic: false,
        multiple_of: 1,
        description: "InnoDB's redo log buffer (default 16 MiB); read at start.",
    },
];

const REDIS: &[Param] = &[
    Param {
        name: "maxmemory-policy",
        ty: ParamType::Enum(&[
            "noeviction",
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
        ]),
        unit: "",
        dynamic: true,
        multiple_of: 1,
        description: "What happens at maxmemory: refuse writes (default) or evict keys.",
    },
    Param {
        name: "timeout",
        ty: ParamType::Int {
            min: 0,
            max: 31_536_000,
        },
        unit: "seconds",
        dynamic: true,
        multiple_of: 1,
        description: "An idle client connection is closed after this long (0: never, default).",
    },
    Param {
        name: "hz",
        ty: ParamType::Int { min: 1, max: 500 },
        unit: "per second",
        dynamic: true,
        multiple_of: 1,
        description: "Background task frequency (default 10).",
    },
    Param {
        name: "maxclients",
        ty: ParamType::Int {
            min: 1,
            max: 65_000,
        },
        unit: "connections",
        dynamic: true,
        multiple_of: 1,
        description: "Most client connections at once (default 10000).",
    },
    Param {
        name: "databases",
        ty: ParamType::Int { min: 1, max: 1024 },
        unit: "databases",
        dynamic: false,
        multiple_of: 1,
        description: "Number of logical databases (default 16); read at start.",
    },
];

/// Every settable parameter of an engine.
pub fn catalogue(engine: EngineKind) -> &'static [Param] {
    match engine {
        EngineKind::Mariadb => MARIADB,
        EngineKind::Redis => REDIS,
    }
}

/// The parameter `name` of `engine`, if settable.
pub fn find(engine: EngineKind, name: &str) -> Option<&'static Param> {
    catalogue(engine).iter().find(|p| p.name == name)
}

/// Checks `value` for `name`: the parameter and the value in canonical form (an integer
/// without sign noise, a listed word), or why not (naming the parameter and the allowed
/// range).
pub fn check(
    engine: EngineKind,
    name: &str,
    value: &str,
) -> Result<(&'static Param, String), String> {
    let p = find(engine, name).ok_or_else(|| {
        format!(
            "settings.{name}: not a settable {engine} parameter (settable: {})",
            catalogue(engine)
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    match p.ty {
        ParamType::Int { min, max } => match value.trim().parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) && n % p.multiple_of.max(1) == 0 => {
                Ok((p, n.to_string()))
            }
            _ => Err(format!(
                "settings.{name}: {value:?} is not a whole number within {min} ..= {max}{}{}",
                if p.unit.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", p.unit)
                },
                if p.multiple_of > 1 {
                    format!(", a multiple of {}", p.multiple_of)
                } else {
                    String::new()
                }
            )),
        },
        ParamType::Enum(words) => match words.iter().find(|w| **w == value.trim()) {
            Some(w) => Ok((p, (*w).to_owned())),
            None => Err(format!(
                "settings.{name}: {value:?} is not one of {}",
                words.join(", ")
            )),
        },
    }
}

/// A value as a running server reports it (`SHOW GLOBAL VARIABLES`, `CONFIG GET`), in the
/// canonical form [`check`] gives desired values, so the two compare equal when the server
/// runs what was asked: MariaDB shows the whole seconds of `long_query_time` as `10.000000`.
/// A value that is not a whole number (`0.5` set by hand) is kept as reported.
pub fn canonical_effective(engine: EngineKind, name: &str, reported: &str) -> String {
    let t = reported.trim();
    let Some(ParamType::Int { .. }) = find(engine, name).map(|p| p.ty) else {
        return t.to_owned();
    };
    if let Ok(n) = t.parse::<i64>() {
        return n.to_string();
    }
    // `10.000000`: an integer part and zeros only.
    match t.split_once('.') {
        Some((whole, frac)) if !frac.is_empty() && frac.bytes().all(|b| b == b'0') => whole
            .parse::<i64>()
            .map_or_else(|_| t.to_owned(), |n| n.to_string()),
        _ => t.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_against_the_catalogue_and_canonical() {
        let (p, v) = check(EngineKind::Mariadb, "max_connections", " 300").expect("ok");
        assert!(p.dynamic);
        assert_eq!(v, "300");
        let e = check(EngineKind::Mariadb, "max_connections", "5").unwrap_err();
        assert!(
            e.contains("settings.max_connections") && e.contains("10 ..= 10000"),
            "{e}"
        );
        let e = check(EngineKind::Mariadb, "max_connections", "1; DROP").unwrap_err();
        assert!(e.contains("max_connections"), "{e}");
        let e = check(EngineKind::Mariadb, "bogus", "1").unwrap_err();
        assert!(
            e.contains("settings.bogus") && e.contains("max_connections"),
            "{e}"
        );
        assert!(
            !check(EngineKind::Mariadb, "innodb_log_buffer_size", "8388608")
                .expect("ok")
                .0
                .dynamic
        );
        assert_eq!(
            check(EngineKind::Redis, "maxmemory-policy", "allkeys-lru")
                .expect("ok")
                .1,
            "allkeys-lru"
        );
        assert!(check(EngineKind::Redis, "maxmemory-policy", "lru").is_err());
        assert!(check(EngineKind::Redis, "max_connections", "100").is_err());
    }

    #[test]
    fn a_packet_size_must_be_whole_kib_since_the_server_rounds_it_down() {
        assert!(check(EngineKind::Mariadb, "max_allowed_packet", "2097152").is_ok());
        let e = check(EngineKind::Mariadb, "max_allowed_packet", "2097153").unwrap_err();
        assert!(e.contains("a multiple of 1024"), "{e}");
    }

    #[test]
    fn effective_values_compare_in_the_canonical_form_of_desired_ones() {
        let c = |name, v| canonical_effective(EngineKind::Mariadb, name, v);
        assert_eq!(c("long_query_time", "10.000000"), "10");
        assert_eq!(c("long_query_time", "0.500000"), "0.500000");
        assert_eq!(c("max_connections", " 321\n"), "321");
        assert_eq!(c("max_connections", "+321"), "321");
        assert_eq!(
            canonical_effective(EngineKind::Redis, "maxmemory-policy", "allkeys-lru"),
            "allkeys-lru"
        );
        // Not of the catalogue: kept as reported.
        assert_eq!(c("innodb_buffer_pool_size", "1.0"), "1.0");
    }

    #[test]
    fn names_are_plain_identifiers() {
        for e in [EngineKind::Mariadb, EngineKind::Redis] {
            for p in catalogue(e) {
                assert!(
                    p.name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'-'),
                    "{}",
                    p.name
                );
            }
        }
    }
}
