//! mofang-agent: the per-host daemon. It runs database containers, owns their volumes, checks
//! their health, enforces their roles and reports to the scheduler.

pub mod agent;
pub mod backup;
pub mod config;
pub mod engine;
pub mod health;
pub mod http;
pub mod link;
pub mod metrics;
pub mod reconcile;
pub mod roles;
pub mod runtime;
pub mod seed;
pub mod state;
pub mod statuses;
pub mod tls;
pub mod volume;
