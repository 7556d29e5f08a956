//! `mofang events` and `mofang audit`: what happened, and who asked for what; read forward
//! from an id or backward from the newest.

use super::render::{ms_to_time, print_json, render_table, word};
use anyhow::Result;
use mofang_scheduler::client::{Client, LogRange};
use mofang_scheduler::model::{AuditEntry, Event};

/// Reading a log backward: a page older than an id, or the newest entries.
#[derive(clap::Args, Debug)]
pub(crate) struct Backward {
    /// Only the newest `--limit` entries before this id (a page older than one seen).
    #[arg(long, conflicts_with_all = ["since", "last"])]
    before: Option<u64>,
    /// The newest this many entries.
    #[arg(long, conflicts_with = "since")]
    last: Option<usize>,
    /// At most this many (with --before; at most 10000).
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

impl Backward {
    /// The range of a log read: forward from `since`, or backward.
    fn range(&self, since: u64) -> LogRange {
        match (self.before, self.last) {
            (Some(before), _) => LogRange {
                before: Some(before),
                limit: Some(self.limit),
                ..LogRange::default()
            },
            (None, Some(last)) => LogRange {
                before: Some(i64::MAX as u64),
                limit: Some(last),
                ..LogRange::default()
            },
            (None, None) => LogRange {
                since: Some(since),
                ..LogRange::default()
            },
        }
    }
}

/// `mofang events`.
pub(crate) async fn events(
    c: &Client,
    instance: Option<&str>,
    since: u64,
    back: &Backward,
    json: bool,
) -> Result<()> {
    let list = c.events(instance, back.range(since)).await?;
    if json {
        print_json(&list);
    } else {
        print!("{}", render_events(&list));
    }
    Ok(())
}

/// `mofang audit`.
pub(crate) async fn audit(c: &Client, since: u64, back: &Backward, json: bool) -> Result<()> {
    let list = c.audit(back.range(since)).await?;
    if json {
        print_json(&list);
    } else {
        print!("{}", render_audit(&list));
    }
    Ok(())
}

fn render_events(list: &[Event]) -> String {
    let rows = list
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                ms_to_time(e.at_ms),
                e.kind.clone(),
                word(&e.instance),
                word(&e.node),
                e.message.clone(),
            ]
        })
        .collect();
    render_table(&["ID", "TIME", "KIND", "INSTANCE", "NODE", "MESSAGE"], rows)
}

fn render_audit(list: &[AuditEntry]) -> String {
    let rows = list
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                ms_to_time(e.at_ms),
                e.who.clone(),
                e.source.clone(),
                e.action.clone(),
                e.status.to_string(),
                e.result.clone(),
            ]
        })
        .collect();
    render_table(
        &["ID", "TIME", "WHO", "SOURCE", "ACTION", "STATUS", "RESULT"],
        rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn back(before: Option<u64>, last: Option<usize>) -> Backward {
        Backward {
            before,
            last,
            limit: 100,
        }
    }

    #[test]
    fn a_log_is_read_forward_or_backward() {
        assert_eq!(back(None, None).range(7).query(), [("since", "7".into())]);
        assert_eq!(
            back(Some(50), None).range(0).query(),
            [("before", "50".to_owned()), ("limit", "100".into())]
        );
        assert_eq!(
            back(None, Some(5)).range(0).query(),
            [("before", i64::MAX.to_string()), ("limit", "5".into())]
        );
    }

    #[test]
    fn an_event_without_an_instance_shows_a_dash() {
        let e = Event {
            id: 3,
            at_ms: 1000,
            instance: None,
            node: Some("n1".into()),
            kind: "node_joined".into(),
            message: "joined".into(),
        };
        let text = render_events(&[e]);
        let row: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            ["3", "00:00:01.000Z", "node_joined", "-", "n1", "joined"]
        );
    }
}
