//! Output shared by every command: tables padded to their widest cell, times of day, values
//! as the API spells them, and `--json` (the API's own JSON).

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Prints the table [`render_table`] makes.
pub(crate) fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    print!("{}", render_table(headers, rows));
}

/// A table: columns padded to their widest cell, two spaces apart.
pub(crate) fn render_table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = w.get_mut(i) {
                *w = (*w).max(c.len());
            }
        }
    }
    let mut text = String::new();
    let mut line = |cells: Vec<String>| {
        let out: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<width$}", c, width = w.get(i).copied().unwrap_or(0)))
            .collect();
        text.push_str(out.join("  ").trim_end());
        text.push('\n');
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
    text
}

/// A unix time in ms as the time of day, UTC (`14:03:07.250Z`).
pub(crate) fn ms_to_time(ms: i64) -> String {
    let secs = ms / 1000;
    let (h, m, sec) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{sec:02}.{:03}Z", ms % 1000)
}

/// `v` as the API writes it, for a cell: a string bare, `-` for null, anything else as
/// JSON (an enum's snake_case name, a number as JSON writes it: `4.0`, not `4`).
pub(crate) fn word<T: Serialize + ?Sized>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        Ok(Value::Null) => "-".into(),
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

/// `v` as compact JSON (`null` when absent), as the API answered it.
pub(crate) fn compact<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_value(v)
        .map(|v| v.to_string())
        .unwrap_or_default()
}

/// Prints `v` as pretty JSON (`--json`).
pub(crate) fn print_json<T: Serialize + ?Sized>(v: &T) {
    let text = serde_json::to_value(v)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_default();
    println!("{text}");
}

/// A flag's value read as the API's word for it (`--engine redis`, `--type restart`).
pub(crate) fn parse_word<T: DeserializeOwned>(flag: &str, v: &str) -> Result<T> {
    serde_json::from_value(Value::String(v.to_owned())).with_context(|| format!("{flag} {v:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_each_column_to_its_widest_cell() {
        let t = render_table(
            &["NAME", "STATE"],
            vec![
                vec!["shop".into(), "ready".into()],
                vec!["a-much-longer-name".into(), "".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME                STATE\nshop                ready\na-much-longer-name\n"
        );
    }

    #[test]
    fn cells_read_as_the_api_writes_them() {
        assert_eq!(word("x"), "x");
        assert_eq!(word(&None::<String>), "-");
        assert_eq!(word(&4.0f64), "4.0");
        assert_eq!(word(&0.5f64), "0.5");
        assert_eq!(
            word(&mofang_scheduler::ops::OpState::Succeeded),
            "succeeded"
        );
        assert_eq!(word(&vec!["a", "b"]), r#"["a","b"]"#);
        assert_eq!(ms_to_time(3_723_004), "01:02:03.004Z");
        assert_eq!(compact(&None::<u32>), "null");
    }

    #[test]
    fn flags_parse_as_the_api_words() {
        let k: mofang_scheduler::ops::OpKind = parse_word("--type", "restart").unwrap();
        assert_eq!(k, mofang_scheduler::ops::OpKind::Restart);
        let e = parse_word::<mofang_scheduler::ops::OpKind>("--type", "reboot").unwrap_err();
        assert!(format!("{e:#}").starts_with("--type \"reboot\""), "{e:#}");
    }
}
