//! What both daemons share about config files: one error type whose message always names the
//! field, and strict TOML reading (unknown fields refused by each schema's `deny_unknown_fields`).

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// Why a config file was refused. The message always names the field.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config {path}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (toml's message names the field and position).
    #[error("config {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// What toml said.
        message: String,
    },
    /// A field has a value the daemon cannot use.
    #[error("config field `{field}`: {message}")]
    Invalid {
        /// The field, dotted (`disks[0].path`).
        field: String,
        /// Why.
        message: String,
    },
}

/// Result of config loading.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An `Error::Invalid` for `field`.
pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Reads a config file.
pub fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses config text; `path` is only used in messages.
pub fn parse_toml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    toml::from_str(text).map_err(|e| Error::Parse {
        path: path.to_owned(),
        message: e.to_string().replace('\n', " ").trim().to_owned(),
    })
}
