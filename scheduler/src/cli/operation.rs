//! `mofang operation ...` (show, list, cancel), and starting an operation from `mofang
//! instance restart|stop|...` with `--wait`: its steps shown as they change until it ends.

use super::render::{print_json, word};
use anyhow::{bail, Result};
use clap::Subcommand;
use mofang_scheduler::client::{Client, NewOperation};
use mofang_scheduler::ops::{OpState, OpStep, Operation, StepAction};
use std::time::{Duration, Instant};

#[derive(Subcommand, Debug)]
pub(crate) enum OperationCmd {
    /// One operation with its steps.
    Show {
        /// Operation id.
        id: String,
    },
    /// The operations of an instance, newest first.
    List {
        /// Instance name.
        instance: String,
    },
    /// Stop an operation at its next safe point (no step half done).
    Cancel {
        /// Operation id.
        id: String,
    },
}

/// Runs `mofang operation ...`.
pub(crate) async fn run(c: &Client, cmd: OperationCmd, json: bool) -> Result<()> {
    match cmd {
        OperationCmd::Show { id } => {
            let op = c.operation(&id).await?;
            if json {
                print_json(&op)
            } else {
                print_operation(&op)
            }
        }
        OperationCmd::List { instance } => {
            let ops = c.operations(&instance).await?;
            if json {
                print_json(&ops);
                return Ok(());
            }
            println!(
                "{:<24} {:<8} {:<10} {:>5}  REASON",
                "ID", "TYPE", "STATE", "DONE"
            );
            for o in &ops {
                println!(
                    "{:<24} {:<8} {:<10} {:>2}/{:<2}  {}",
                    o.id,
                    word(&o.kind),
                    word(&o.state),
                    o.done.len(),
                    o.total,
                    o.reason
                );
            }
        }
        OperationCmd::Cancel { id } => {
            let op = c.cancel_operation(&id).await?;
            if json {
                print_json(&op)
            } else {
                println!("operation {id}: cancel asked; it stops at its next safe point");
            }
        }
    }
    Ok(())
}

/// Starts `op` on instance `name`; with `wait`, follows it to its end, showing each change
/// of step on stderr, and fails unless it succeeded.
pub(crate) async fn start(
    c: &Client,
    name: &str,
    mut op: NewOperation,
    wait: bool,
    timeout: u64,
    json: bool,
) -> Result<()> {
    op.timeout_s = Some(i64::try_from(timeout).unwrap_or(i64::MAX));
    let kind = word(&op.kind);
    let started = c.start_operation(name, &op).await?;
    let id = started.id.clone();
    if !wait {
        if json {
            print_json(&started)
        } else {
            println!("operation {id} ({kind} of {name}) started; follow it with `mofang operation show {id}`");
        }
        return Ok(());
    }
    let ended = wait_operation(c, &id, json).await?;
    if json {
        print_json(&ended)
    } else {
        print_operation(&ended)
    }
    if ended.state != OpState::Succeeded {
        bail!("operation {id} {}: {}", word(&ended.state), ended.reason);
    }
    Ok(())
}

/// Polls an operation until it ends, printing a line on stderr each time its progress
/// changes (nothing when `quiet`).
async fn wait_operation(c: &Client, id: &str, quiet: bool) -> Result<Operation> {
    let start = Instant::now();
    let mut last = String::new();
    let op = c
        .wait_operation(id, Duration::from_millis(500), |op| {
            let line = progress_line(op);
            if line != last && !quiet {
                eprintln!("[{:>6.1}s] {line}", start.elapsed().as_secs_f64());
                last = line;
            }
        })
        .await?;
    Ok(op)
}

/// Where an operation is, in one line: `running 1/3 done; restart shop-1: running`.
pub(crate) fn progress_line(op: &Operation) -> String {
    let step = op.steps.last().map(step_line).unwrap_or_default();
    format!(
        "{} {}/{} done; {step}{}",
        word(&op.state),
        op.done.len(),
        op.total,
        if op.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", op.reason)
        }
    )
}

/// One step as a line: what it does, its state and why.
pub(crate) fn step_line(st: &OpStep) -> String {
    let what = match &st.action {
        StepAction::Restart { member, .. } => format!("restart {member}"),
        StepAction::Rebuild {
            member, node: None, ..
        } => format!("rebuild {member}"),
        StepAction::Rebuild {
            member,
            node: Some(n),
            ..
        } => format!("rebuild {member} on {n}"),
        StepAction::Stop => "stop every member".into(),
        StepAction::Start => "start every member".into(),
        StepAction::Switchover { from } => format!("switchover from {from}"),
        StepAction::AddReplica {
            member,
            node,
            donor,
            backup,
            ..
        } => format!(
            "add {member} on {node} (seeded from {})",
            mofang_scheduler::ops::seeded_from(donor.as_deref(), backup.as_deref())
        ),
        StepAction::RemoveReplica { member } => format!("remove {member}"),
        StepAction::SetResources { cpu, memory } => {
            format!("set {} cores, {memory} MiB", word(cpu))
        }
        StepAction::SetDisk { disk } => format!("grow volumes to {disk} MiB"),
        StepAction::SetParameters { generation } => {
            format!("set parameters (generation {generation})")
        }
        StepAction::SetVersion { .. } => "set_version".into(),
    };
    format!(
        "{what}: {}{}",
        word(&st.state),
        if st.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", st.reason)
        }
    )
}

/// An operation with its steps and how long each took.
pub(crate) fn render_operation(op: &Operation) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    // Writing into a String cannot fail.
    let _ = writeln!(o, "operation: {}", op.id);
    let _ = writeln!(o, "instance:  {}", op.instance);
    let _ = writeln!(o, "type:      {}", word(&op.kind));
    let _ = writeln!(o, "state:     {}", word(&op.state));
    if !op.reason.is_empty() {
        let _ = writeln!(o, "reason:    {}", op.reason);
    }
    let _ = writeln!(o, "done:      {} of {} members", op.done.len(), op.total);
    for (i, st) in op.steps.iter().enumerate() {
        let secs = if st.ended_ms >= st.started_ms {
            format!("{:.1}s", (st.ended_ms - st.started_ms) as f64 / 1000.0)
        } else {
            "-".into()
        };
        let _ = writeln!(o, "  {:>2}. {:<40} {secs}", i + 1, step_line(st));
    }
    o
}

fn print_operation(op: &Operation) {
    print!("{}", render_operation(op));
}

#[cfg(test)]
mod tests {
    use super::*;
    use mofang_scheduler::ops::StepState;

    fn op() -> Operation {
        serde_json::from_value(serde_json::json!({
            "id": "op-1", "instance": "shop", "type": "resize", "state": "running",
            "created_ms": 1, "timeout_ms": 3_600_000, "total": 3, "done": ["shop-1"],
            "steps": [
                {"action": "set_resources", "cpu": 2.0, "memory": 512, "state": "done",
                 "started_ms": 1000, "ended_ms": 2500},
                {"action": "restart", "member": "shop-2", "generation": 1, "state": "running",
                 "started_ms": 2500, "ended_ms": 0, "reason": "waiting for shop-2 healthy"}]
        }))
        .unwrap()
    }

    #[test]
    fn the_progress_line_names_the_step_under_way() {
        assert_eq!(
            progress_line(&op()),
            "running 1/3 done; restart shop-2: running (waiting for shop-2 healthy)"
        );
    }

    #[test]
    fn an_operation_shows_each_step_and_how_long_it_took() {
        let text = render_operation(&op());
        assert!(text.contains("type:      resize\n"), "{text}");
        assert!(text.contains("done:      1 of 3 members\n"), "{text}");
        assert!(!text.contains("reason:"), "{text}");
        let step1 = text.lines().find(|l| l.contains(" 1. ")).unwrap();
        assert!(step1.contains("set 2.0 cores, 512 MiB: done"), "{step1}");
        assert!(step1.ends_with("1.5s"), "{step1}");
        let step2 = text.lines().find(|l| l.contains(" 2. ")).unwrap();
        assert!(
            step2.ends_with(" -"),
            "a running step has no duration: {step2}"
        );
    }

    #[test]
    fn every_step_reads_as_a_line() {
        let step = |action: StepAction| OpStep {
            action,
            state: StepState::Done,
            started_ms: 0,
            ended_ms: 0,
            reason: String::new(),
        };
        let add = step(StepAction::AddReplica {
            member: "shop-3".into(),
            node: "n1".into(),
            disk_class: "ssd".into(),
            donor: None,
            backup: None,
        });
        assert_eq!(
            step_line(&add),
            "add shop-3 on n1 (seeded from the primary): done"
        );
        let sw = step(StepAction::Switchover {
            from: "shop-0".into(),
        });
        assert_eq!(step_line(&sw), "switchover from shop-0: done");
        let v = step(StepAction::SetVersion {
            version: "11.8".into(),
            from: "10.11".into(),
        });
        assert_eq!(step_line(&v), "set_version: done");
    }
}
