//! Schemas the document states by hand where a type's own would say less than the API
//! checks (an enum that lives in `mofang-common`, a subset of an enum).

use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::Object;

fn string_enum(values: &[&str]) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .build()
}

/// Database traffic TLS: `off`, `optional` (MariaDB only) or `required`.
pub fn db_tls() -> Object {
    string_enum(&["off", "optional", "required"])
}

/// The operations a batch runs.
pub fn batch_kind() -> Object {
    string_enum(&["restart", "stop", "start"])
}

/// Engines.
pub fn engine() -> Object {
    string_enum(&["mariadb", "redis"])
}

/// Every version of every engine (which engine takes which: `GET /v1/engines`).
pub fn version() -> Object {
    let mut all: Vec<&str> = [
        mofang_common::EngineKind::Mariadb,
        mofang_common::EngineKind::Redis,
    ]
    .into_iter()
    .flat_map(|e| e.supported_versions().iter().copied())
    .collect();
    all.dedup();
    string_enum(&all)
}
