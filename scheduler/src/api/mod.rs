//! REST API v1 (JSON, bearer tokens, audit of every mutating request, OpenAPI 3 document
//! generated from these handlers at `/v1/openapi.json`).

mod audit;
mod auth;
mod backups;
mod batches;
mod body;
mod error;
mod events;
mod failover;
mod forward;
mod instances;
mod keyring;
mod metrics;
mod nodes;
mod operations;
pub(crate) mod schema;
#[cfg(test)]
mod tests;

use audit::*;
use auth::*;
use backups::*;
use batches::*;
use body::*;
use error::*;
use events::*;
use failover::*;
use forward::*;
use instances::*;
use keyring::*;
use metrics::*;
use nodes::*;
use operations::*;

// The wire types of the API, named once: the handlers parse and answer them, the typed
// client (`crate::client`) sends and reads them.
pub use backups::{NewBackup, NewBackupRepo, RotateRepoKey};
pub use batches::NewBatch;
pub use failover::{AutoFailover, PromoteRequest, Resumed};
pub use instances::{CredentialsView, Deleted, InstancePatch, RotateAccount, RotateRequest};
pub use keyring::RootRotation;
pub use nodes::JoinTokenRequest;
pub use operations::{EngineParameter, EngineView, NewOperation};

use crate::auth::Tokens;
use crate::backup::Backup;
use crate::cluster::{BackupRepoView, Cluster, InstanceView, MemberView, NodeView2};
use crate::model::{
    AuditEntry, Credentials, Event, InstanceSpec, NodeAdmin, NodeState, PlacementSpec, Resources,
    Strategy,
};
use crate::secrets::{KeyStatus, KeyringStatus, Rotation, SealedStore};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::middleware::{self};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::{OpenApi, ToSchema};

/// Shared state of the handlers.
#[derive(Clone)]
pub struct Api {
    /// The cluster.
    pub cluster: Arc<Cluster>,
    /// Known tokens.
    pub tokens: Arc<Tokens>,
    /// The sealing store and its keyrings (`/v1/keyring`); `None` in tests of other routes.
    pub sealed: Option<Arc<SealedStore>>,
    /// TLS material (`None`: plain HTTP); a follower forwards to the leader over TLS.
    pub tls: Option<Arc<crate::tls::Tls>>,
}

/// Health of the scheduler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// True on the scheduler that leads (acts and serves the API); followers redirect.
    pub leader: bool,
}

#[utoipa::path(get, path = "/v1/health", responses((status = 200, body = Health)), security(()))]
async fn health(State(api): State<Api>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        leader: api.cluster.is_active(),
    })
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Mofang API", version = "1", description = "MariaDB and Redis instances on your own hosts."),
    paths(
        health, list_nodes, get_node, drain_node, cordon_node, uncordon_node, create_instance,
        list_instances, get_instance, get_parameters, delete_instance, credentials, events, audit, switchover,
        failover, failover_ack, auto_failover, failover_resume, keyring_status, keyring_rotate, keyring_rotate_root,
        rotate_credentials,
        create_join_token, revoke_node, add_backup_repo, list_backup_repos, get_backup_repo,
        delete_backup_repo, rotate_repo_key, retire_repo_key, patch_instance, start_operation, list_operations, get_operation, cancel_operation,
        start_batch, list_batches, get_batch, cancel_batch, engines,
        create_backup, list_backups, list_all_backups, backup_health, get_backup, delete_backup,
        verify_backup
    ),
    components(schemas(
        ErrorBody, ErrorDetail, Health, NodeView2, NodeState, NodeAdmin, InstanceSpec, Resources,
        PlacementSpec, Strategy, crate::model::RestoreRequest, crate::backup::schedule::BackupPolicy, crate::backup::schedule::Retention, crate::model::Restored, InstanceView, MemberView, Credentials, CredentialsView, Deleted, Event, AuditEntry,
        RotateRequest, RotateAccount, crate::cluster::RotationView, crate::cluster::PitrWindow, crate::cluster::RestoreProgress, crate::cluster::RestorePhaseView,
        PromoteRequest, AutoFailover, Resumed, KeyringStatus, KeyStatus, Rotation, RootRotation,
        JoinTokenRequest, crate::cluster::JoinToken, crate::cluster::Revocation,
        NewBackupRepo, RotateRepoKey, BackupRepoView, InstancePatch, NewOperation, NewBatch, crate::ops::batch::Batch, crate::ops::batch::BatchItem, crate::ops::Operation, crate::ops::OpKind,
        crate::ops::OpState, crate::ops::OpStep, EngineView, EngineParameter, crate::ops::StepState, crate::ops::StepAction,
        crate::ops::drift::ParametersView, crate::ops::drift::MemberParameters, crate::ops::drift::ParameterValue,
        crate::ops::drift::ParamState, crate::ops::drift::Drift,
        NewBackup, Backup, crate::cluster::BackupHealthView, crate::backup::BackupState, crate::backup::BackupObject,
        crate::model::Node, crate::model::DiskInfo
    )),
    modifiers(&BearerAuth, &ErrorResponses),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The errors any authenticated operation may answer, whatever its handler, documented on
/// every one (an API fuzzer checks each answer's status against the document): 400 (a body
/// or query that is not what the operation reads), 401 (no or unknown token), 403 (a role too
/// low), 413 (a body over 1 MiB), 422 (a body of the wrong shape) and 503 (no leader, the
/// store or the audit log unavailable). Each is the JSON `ErrorBody`.
struct ErrorResponses;

impl utoipa::Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        const GENERIC: [(&str, &str); 6] = [
            ("400", "The body or the query cannot be read (bad_json, bad_body, bad_query)"),
            ("401", "No or unknown bearer token (unauthorized)"),
            ("403", "The token's role is too low (forbidden)"),
            ("413", "The body is over 1 MiB (body_too_large)"),
            ("422", "The body has the wrong shape or values (invalid)"),
            ("503", "No scheduler leads, or the store or the audit log cannot be written: nothing was changed"),
        ];
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                // Operations open to anyone (`security(())`, e.g. health) answer none of these.
                let public = op
                    .security
                    .as_ref()
                    .is_some_and(|s| s.iter().all(|r| r == &Default::default()));
                if public {
                    continue;
                }
                for (code, why) in GENERIC {
                    op.responses
                        .responses
                        .entry(code.to_owned())
                        .or_insert_with(|| {
                            ResponseBuilder::new()
                                .description(why)
                                .content(
                                    "application/json",
                                    ContentBuilder::new()
                                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                                        .build(),
                                )
                                .build()
                                .into()
                        });
                }
            }
        }
    }
}

/// The REST API's routes alone (what the console calls in-process).
pub fn v1_router(api: Api) -> Router {
    let protected = Router::new()
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{name}", get(get_node))
        .route("/v1/nodes/{name}/drain", post(drain_node))
        .route("/v1/nodes/{name}/cordon", post(cordon_node))
        .route("/v1/nodes/{name}/uncordon", post(uncordon_node))
        .route("/v1/nodes/{name}/revoke", post(revoke_node))
        .route("/v1/join-tokens", post(create_join_token))
        .route("/v1/instances", get(list_instances).post(create_instance))
        .route(
            "/v1/instances/{name}",
            get(get_instance)
                .delete(delete_instance)
                .patch(patch_instance),
        )
        .route("/v1/instances/{name}/credentials", get(credentials))
        .route("/v1/instances/{name}/parameters", get(get_parameters))
        .route(
            "/v1/instances/{name}/credentials/rotate",
            post(rotate_credentials),
        )
        .route("/v1/instances/{name}/switchover", post(switchover))
        .route("/v1/instances/{name}/failover", post(failover))
        .route("/v1/instances/{name}/failover/ack", post(failover_ack))
        .route("/v1/instances/{name}/auto-failover", put(auto_failover))
        .route("/v1/failover/resume", post(failover_resume))
        .route("/v1/keyring", get(keyring_status))
        .route("/v1/keyring/rotate", post(keyring_rotate))
        .route("/v1/keyring/rotate-root", post(keyring_rotate_root))
        .route("/v1/events", get(events))
        .route("/v1/audit", get(audit))
        .route(
            "/v1/backup-repos",
            get(list_backup_repos).post(add_backup_repo),
        )
        .route(
            "/v1/backup-repos/{name}",
            get(get_backup_repo).delete(delete_backup_repo),
        )
        .route("/v1/backup-repos/{name}/rotate-key", post(rotate_repo_key))
        .route(
            "/v1/backup-repos/{name}/keys/{key_id}",
            axum::routing::delete(retire_repo_key),
        )
        .route(
            "/v1/instances/{name}/operations",
            get(list_operations).post(start_operation),
        )
        .route("/v1/operations/{id}", get(get_operation))
        .route("/v1/operations/{id}/cancel", post(cancel_operation))
        .route("/v1/engines", get(engines))
        .route("/v1/batches", get(list_batches).post(start_batch))
        .route("/v1/batches/{id}", get(get_batch))
        .route("/v1/batches/{id}/cancel", post(cancel_batch))
        .route(
            "/v1/instances/{name}/backups",
            get(list_backups).post(create_backup),
        )
        .route("/v1/backups", get(list_all_backups))
        .route("/v1/backup-health", get(backup_health))
        .route("/v1/backups/{id}", get(get_backup).delete(delete_backup))
        .route("/v1/backups/{id}/verify", post(verify_backup))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(api.clone(), audit_mw))
        .layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .layer(middleware::from_fn_with_state(api.clone(), leader_only));
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .merge(protected)
        .fallback(not_found)
        .with_state(api)
}

/// The router of the REST listener: the API and the web console at `/ui`, which calls the
/// API router in-process with the signed-in user's token (docs/console.md).
pub fn router(api: Api) -> Router {
    let console = crate::console::Console::new(api.clone(), v1_router(api.clone()));
    v1_router(api)
        .merge(crate::console::router(console))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(read_whole_body))
}
