//! `promtool check metrics` (Debian package `prometheus`) on an exposition: Prometheus's own
//! parser and linter as the judge of what `/metrics` answers.

use anyhow::{ensure, Context, Result};
use std::io::Write;
use std::process::{Command, Stdio};

/// What `promtool check metrics` said of an exposition.
pub struct Verdict {
    /// It exited 0: parsed, and no lint problem.
    pub passed: bool,
    /// Its exit code (3: lint problems only).
    pub code: Option<i32>,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs `promtool check metrics` with the exposition on its standard input.
pub fn check_metrics_verdict(exposition: &str) -> Result<Verdict> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (Debian package `prometheus`)")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(exposition.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok(Verdict {
        passed: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Fails unless promtool parses the exposition and finds no lint problem.
pub fn check_metrics(exposition: &str) -> Result<()> {
    let v = check_metrics_verdict(exposition)?;
    ensure!(
        v.passed,
        "promtool check metrics: {}{}\n--- exposition ---\n{exposition}",
        v.stdout,
        v.stderr
    );
    Ok(())
}
