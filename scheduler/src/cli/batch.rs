//! `mofang batch ...`: one operation on every instance a label selector chooses, followed
//! with `--wait`.

use super::render::{parse_word, print_json, word};
use anyhow::{bail, Result};
use clap::Subcommand;
use mofang_scheduler::client::{Client, NewBatch};
use mofang_scheduler::ops::batch::Batch;
use mofang_scheduler::ops::OpState;
use std::time::{Duration, Instant};

#[derive(Subcommand, Debug)]
pub(crate) enum BatchCmd {
    /// Start a batch.
    Create {
        /// Label selector (`k=v,k2=v2`, `k`, `k!=v`).
        #[arg(long, short = 'l')]
        selector: String,
        /// restart, stop or start.
        #[arg(long = "type")]
        kind: String,
        /// At most this many operations at once.
        #[arg(long, default_value_t = 1)]
        max_parallel: usize,
        /// After this many failed operations no new one starts.
        #[arg(long, default_value_t = 1)]
        max_failures: usize,
        /// Wait until the batch ends, showing its progress.
        #[arg(long)]
        wait: bool,
    },
    /// The newest batches, newest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One batch with each instance's operation.
    Show {
        /// Batch id.
        id: String,
    },
    /// Stop a batch: its running operations are cancelled, none started.
    Cancel {
        /// Batch id.
        id: String,
    },
}

/// Runs `mofang batch ...`.
pub(crate) async fn run(c: &Client, cmd: BatchCmd, json: bool) -> Result<()> {
    match cmd {
        BatchCmd::Create {
            selector,
            kind,
            max_parallel,
            max_failures,
            wait,
        } => {
            let req = NewBatch {
                selector,
                kind: parse_word("--type", &kind)?,
                timeout_s: None,
                max_parallel,
                max_failures,
            };
            let b = c.start_batch(&req).await?;
            if !wait {
                if json {
                    print_json(&b)
                } else {
                    print!("{}", render_batch(&b))
                }
                return Ok(());
            }
            let start = Instant::now();
            let mut last = String::new();
            let b = loop {
                let b = c.batch(&b.id).await?;
                let line = batch_line(&b);
                if line != last && !json {
                    eprintln!("[{:>6.1}s] {line}", start.elapsed().as_secs_f64());
                    last = line;
                }
                if b.state.is_terminal() {
                    break b;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            if json {
                print_json(&b)
            } else {
                print!("{}", render_batch(&b))
            }
            if b.state != OpState::Succeeded {
                bail!("batch {} {}", b.id, word(&b.state));
            }
        }
        BatchCmd::List { limit } => {
            let list = c.batches(Some(limit)).await?;
            if json {
                print_json(&list)
            } else {
                println!("{:<28} {:<20} PROGRESS", "BATCH", "SELECTOR");
                for b in &list {
                    println!("{:<28} {:<20} {}", b.id, b.selector, batch_line(b));
                }
            }
        }
        BatchCmd::Show { id } => {
            let b = c.batch(&id).await?;
            if json {
                print_json(&b)
            } else {
                print!("{}", render_batch(&b))
            }
        }
        BatchCmd::Cancel { id } => {
            let b = c.cancel_batch(&id).await?;
            if json {
                print_json(&b)
            } else {
                println!("batch {id}: cancel asked");
            }
        }
    }
    Ok(())
}

/// A batch's progress in one line: `restart running: 1 succeeded, 2 running, ...`.
pub(crate) fn batch_line(b: &Batch) -> String {
    let count = |st: &str| b.items.iter().filter(|i| i.state == st).count();
    format!(
        "{} {}: {} succeeded, {} running, {} pending, {} failed of {}",
        word(&b.kind),
        word(&b.state),
        count("succeeded"),
        count("running"),
        count("pending"),
        count("failed"),
        b.items.len()
    )
}

/// A batch with a line per instance: its state, operation and reason.
pub(crate) fn render_batch(b: &Batch) -> String {
    let mut text = format!(
        "batch:    {}\nselector: {}\n{}\n",
        b.id,
        b.selector,
        batch_line(b)
    );
    for i in &b.items {
        text.push_str(&format!(
            "  {:<24} {:<12} {:<28} {}\n",
            i.instance,
            i.state,
            word(&i.operation),
            i.reason
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_counts_its_items_by_state() {
        let b: Batch = serde_json::from_value(serde_json::json!({
            "id": "batch-1", "selector": "env=prod", "type": "restart", "timeout_ms": 1,
            "max_parallel": 2, "max_failures": 1, "state": "running", "created_ms": 1,
            "items": [
                {"instance": "a", "operation": "op-1", "state": "succeeded"},
                {"instance": "b", "operation": "op-2", "state": "running"},
                {"instance": "c", "state": "pending"}]
        }))
        .unwrap();
        assert_eq!(
            batch_line(&b),
            "restart running: 1 succeeded, 1 running, 1 pending, 0 failed of 3"
        );
        let text = render_batch(&b);
        let c = text
            .lines()
            .find(|l| l.trim_start().starts_with("c "))
            .unwrap();
        assert_eq!(
            c.split_whitespace().collect::<Vec<_>>(),
            ["c", "pending", "-"]
        );
    }
}
