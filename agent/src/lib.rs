//! mofang-agent: the per-host daemon. It runs database containers, owns their volumes, checks
//! their health, enforces their roles and reports to the scheduler.

pub mod runtime;
