//! Operator hooks around a failover (Orchestrator's model): executables that get the facts in
//! environment variables, or webhooks that get them as a JSON body. Each has a timeout. A
//! `pre_failover` hook that fails (non-zero exit, non-2xx answer, timeout) aborts the failover.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use tracing::{info, warn};

/// One hook: exactly one of `command` and `url`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// Program and arguments (no shell).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Webhook URL, POSTed a JSON body.
    #[serde(default)]
    pub url: Option<String>,
    /// Timeout in ms. Default 10000.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_timeout() -> u64 {
    10_000
}

/// `[failover.hooks]`: lists of hooks per moment.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Hooks {
    /// Before promoting; any failure aborts the failover.
    pub pre_failover: Vec<Hook>,
    /// After the new primary is healthy.
    pub post_failover: Vec<Hook>,
    /// After a failover was aborted or did not complete.
    pub post_unsuccessful_failover: Vec<Hook>,
}

impl Hooks {
    /// Every hook has exactly one of `command` and `url`, and a usable timeout.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (name, list) in [
            ("pre_failover", &self.pre_failover),
            ("post_failover", &self.post_failover),
            (
                "post_unsuccessful_failover",
                &self.post_unsuccessful_failover,
            ),
        ] {
            for (i, h) in list.iter().enumerate() {
                let field = format!("failover.hooks.{name}[{i}]");
                match (&h.command, &h.url) {
                    (Some(c), None) if !c.is_empty() && !c[0].is_empty() => {}
                    (None, Some(u)) if u.starts_with("http://") || u.starts_with("https://") => {}
                    _ => {
                        return Err((
                            field,
                            "needs exactly one of command (non-empty) or url (http/https)".into(),
                        ))
                    }
                }
                if h.timeout_ms == 0 || h.timeout_ms > 600_000 {
                    return Err((
                        format!("{field}.timeout_ms"),
                        "must be within 1 .. 600000".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The facts a hook receives (`MOFANG_*` environment variables, or the JSON body).
#[derive(Debug, Clone, Serialize, Default)]
pub struct HookEnv {
    /// `pre_failover`, `post_failover`, `post_unsuccessful_failover`.
    pub hook: String,
    /// Instance name.
    pub instance: String,
    /// Old primary member id.
    pub old_primary: String,
    /// New primary member id (empty when none was chosen).
    pub new_primary: String,
    /// The epoch of the new assignment.
    pub epoch: u64,
    /// Why.
    pub reason: String,
}

/// Why a hook failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program could not start or exited non-zero.
    #[error("hook {what} failed: {why}")]
    Failed {
        /// Command or URL.
        what: String,
        /// Exit status or error.
        why: String,
    },
    /// The hook did not finish in time.
    #[error("hook {what} timed out after {after:?}")]
    Timeout {
        /// Command or URL.
        what: String,
        /// The limit.
        after: Duration,
    },
}

/// Runs `hooks` one after the other; the first failure stops and is returned.
pub async fn run(hooks: &[Hook], env: &HookEnv) -> Result<(), Error> {
    for h in hooks {
        let limit = Duration::from_millis(h.timeout_ms);
        let what = h
            .command
            .as_ref()
            .map(|c| c.join(" "))
            .or_else(|| h.url.clone())
            .unwrap_or_default();
        let r = tokio::time::timeout(limit, run_one(h, env)).await;
        match r {
            Ok(Ok(())) => info!(hook = %env.hook, what = %what, "hook succeeded"),
            Ok(Err(why)) => {
                warn!(hook = %env.hook, what = %what, error = %why, "hook failed");
                return Err(Error::Failed { what, why });
            }
            Err(_) => {
                warn!(hook = %env.hook, what = %what, "hook timed out");
                return Err(Error::Timeout { what, after: limit });
            }
        }
    }
    Ok(())
}

async fn run_one(h: &Hook, env: &HookEnv) -> Result<(), String> {
    if let Some(cmd) = &h.command {
        let Some((prog, args)) = cmd.split_first() else {
            return Err("empty command".into());
        };
        let status = tokio::process::Command::new(prog)
            .args(args)
            .env("MOFANG_HOOK", &env.hook)
            .env("MOFANG_INSTANCE", &env.instance)
            .env("MOFANG_OLD_PRIMARY", &env.old_primary)
            .env("MOFANG_NEW_PRIMARY", &env.new_primary)
            .env("MOFANG_EPOCH", env.epoch.to_string())
            .env("MOFANG_REASON", &env.reason)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .status()
            .await
            .map_err(|e| e.to_string())?;
        return if status.success() {
            Ok(())
        } else {
            Err(format!("exit status {status}"))
        };
    }
    if let Some(url) = &h.url {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(h.timeout_ms))
            .build()
            .map_err(|e| e.to_string())?;
        let resp = client
            .post(url)
            .json(env)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        return if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", resp.status()))
        };
    }
    Err("hook has neither command nor url".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Hook {
        Hook {
            command: Some(args.iter().map(|s| s.to_string()).collect()),
            url: None,
            timeout_ms: 2000,
        }
    }

    #[tokio::test]
    async fn exit_status_and_timeout_decide() {
        let env = HookEnv {
            hook: "pre_failover".into(),
            instance: "db".into(),
            ..Default::default()
        };
        assert!(run(
            &[cmd(&["sh", "-c", "test \"$MOFANG_INSTANCE\" = db"])],
            &env
        )
        .await
        .is_ok());
        assert!(run(&[cmd(&["sh", "-c", "exit 3"])], &env).await.is_err());
        let mut slow = cmd(&["sleep", "5"]);
        slow.timeout_ms = 100;
        assert!(matches!(
            run(&[slow], &env).await,
            Err(Error::Timeout { .. })
        ));
        assert!(run(&[cmd(&["/nonexistent/hook"])], &env).await.is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let h = Hooks {
            pre_failover: vec![Hook {
                command: None,
                url: None,
                timeout_ms: 1,
            }],
            ..Default::default()
        };
        assert_eq!(
            h.validate().unwrap_err().0,
            "failover.hooks.pre_failover[0]"
        );
    }
}
