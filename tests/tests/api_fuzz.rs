//! The REST API under an API fuzzer that is not ours (issue 15): schemathesis (PyPI, pinned in
//! scripts/setup) runs against a real scheduler's `/v1/openapi.json` over TLS (the cluster's
//! CA) with an admin token: every operation, generated valid and invalid requests, bounded by
//! examples per operation, with every check schemathesis has (`--checks all`): no answer may
//! be a server error; every answer must match the document (status code, content type,
//! headers, body schema); a request the document forbids must be refused and one it allows
//! accepted (two operations may answer 422 for rules JSON Schema cannot state:
//! `tests/fuzz/schemathesis.toml` names them and why); auth must be checked; a deleted
//! resource must be gone.

use anyhow::{Context, Result};
use mofang_tests::cluster::SchedulerProcess;
use std::path::PathBuf;
use std::process::Command;

/// The `st` command pip installed (scripts/setup), beside the interpreter's other scripts.
fn schemathesis() -> Result<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .context("python3 (run scripts/setup test)")?;
    let st = PathBuf::from(String::from_utf8(out.stdout)?.trim()).join("st");
    anyhow::ensure!(
        st.exists(),
        "{} is missing: run scripts/setup test (schemathesis from PyPI)",
        st.display()
    );
    Ok(st)
}

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() -> Result<()> {
    let st = schemathesis()?;
    let sched = SchedulerProcess::start("")?;
    let token = sched.admin_token()?;
    let ca = sched.pki.as_ref().context("TLS is on")?.ca_file();
    let report = sched.dir.path().join("schemathesis");
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/schemathesis.toml");
    let out = Command::new(st)
        // Its own files (`.schemathesis/`) go with the scheduler's, not into the tree.
        .current_dir(sched.dir.path())
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{}/v1/openapi.json", sched.rest))
        .args([
            "--checks",
            "all",
            // Bounded: a few examples per operation, one worker (2 cores are shared), a
            // fixed seed so a failure can be replayed, no example database between runs.
            "--max-examples",
            "25",
            "--workers",
            "1",
            "--seed",
            "15",
            "--generation-database",
            "none",
            "--no-color",
            "--report",
            "junit",
            "--report-dir",
        ])
        .arg(&report)
        .arg("--tls-verify")
        .arg(ca)
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .output()
        .context("running schemathesis")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found failures (exit {}):\n{text}\n--- scheduler log ---\n{}",
        out.status,
        sched.log()
    );
    // It did run every operation.
    assert!(
        text.contains("passed") && !text.contains("No operations"),
        "{text}"
    );
    eprintln!("{text}");
    Ok(())
}
