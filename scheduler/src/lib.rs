//! mofang-scheduler: the thin central brain. It keeps the desired state durable, places
//! members on nodes, serves the REST API and the agents' gRPC control plane.

pub mod agents;
pub mod api;
pub mod auth;
pub mod backup;
pub mod client;
pub mod cluster;
pub mod config;
pub mod console;
pub mod consul;
pub mod daemon;
pub mod election;
pub mod failover;
pub mod model;
pub mod ops;
pub mod placement;
pub mod registry;
pub mod rotation;
pub mod secrets;
pub mod store;
pub mod tls;
