//! The exposition model: metric families, written to sample lines once ([`Families::render`])
//! and put together per scrape ([`write`]) in OpenMetrics 1.0.0 or the Prometheus text format
//! 0.0.4 (`promtool check metrics`, older Prometheus, curl). The two formats share sample
//! lines and differ only in metadata (decision 151).

use std::borrow::Cow;

/// A metric's type, as OpenMetrics names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic; the family name has no `_total`, the samples get it.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Constant 1 with labels; the family name has no `_info`, the sample gets it.
    Info,
    /// Untyped (mysqld_exporter's generic `SHOW GLOBAL STATUS` values).
    Unknown,
    /// Cumulative buckets, sum and count; each sample names its own suffix.
    Histogram,
}

/// A label set: `(name, value)` pairs in the order they are printed.
pub type Labels = Vec<(Cow<'static, str>, String)>;

/// A sample's labels: labels shared by many samples (a member's `mofang_*` labels, behind one
/// `Arc`) followed by the sample's own. A scrape writes tens of thousands of samples; sharing
/// the common part saves an allocation per label per sample.
#[derive(Debug, Clone, Default)]
pub struct LabelSet {
    /// Shared labels, printed first.
    pub shared: Option<std::sync::Arc<Labels>>,
    /// The sample's own labels.
    pub own: Labels,
}

impl From<Labels> for LabelSet {
    fn from(own: Labels) -> Self {
        LabelSet { shared: None, own }
    }
}

impl LabelSet {
    /// `shared` plus `own`.
    pub fn new(shared: &std::sync::Arc<Labels>, own: Labels) -> Self {
        LabelSet {
            shared: Some(shared.clone()),
            own,
        }
    }

    fn iter(&self) -> impl Iterator<Item = &(Cow<'static, str>, String)> {
        self.shared
            .iter()
            .flat_map(|s| s.iter())
            .chain(self.own.iter())
    }

    fn is_empty(&self) -> bool {
        self.shared.as_ref().is_none_or(|s| s.is_empty()) && self.own.is_empty()
    }
}

/// One sample of a family.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Labels.
    pub labels: LabelSet,
    /// Value (1 for info).
    pub value: f64,
    /// A histogram sample's suffix (`_bucket`, `_sum`, `_count`); other kinds' come from the
    /// kind.
    pub suffix: &'static str,
}

/// A metric family: one name, one help, one type, many label sets.
#[derive(Debug, Clone)]
pub struct Family {
    /// Name without the type's suffix (`container_cpu_usage_seconds` for a counter).
    pub name: Cow<'static, str>,
    /// Help text.
    pub help: Cow<'static, str>,
    /// Type.
    pub kind: Kind,
    /// Samples.
    pub samples: Vec<Sample>,
}

impl Family {
    /// An empty family.
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        help: impl Into<Cow<'static, str>>,
        kind: Kind,
    ) -> Self {
        Family {
            name: name.into(),
            help: help.into(),
            kind,
            samples: Vec::new(),
        }
    }

    /// Adds a sample; non-finite values are dropped (they mean "unknown", not a number).
    pub fn push(&mut self, labels: impl Into<LabelSet>, value: f64) {
        if value.is_finite() {
            self.samples.push(Sample {
                labels: labels.into(),
                value,
                suffix: "",
            });
        }
    }
}

/// Families gathered by name, kept in first-registration order so related metrics stay
/// together; the same name twice is merged (samples of two members into one family).
#[derive(Debug, Default, Clone)]
pub struct Families {
    list: Vec<Family>,
    // FxHash: the keys are our own family names (about 1,300 per MariaDB member and
    // collection), not an attacker's input; SipHash was 1.7 % of an idle agent's samples.
    index: rustc_hash::FxHashMap<Cow<'static, str>, usize>,
}

impl Families {
    /// The family `name`, created empty if new.
    pub fn get(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        help: impl Into<Cow<'static, str>>,
        kind: Kind,
    ) -> &mut Family {
        let name = name.into();
        let i = match self.index.get(&name) {
            Some(i) => *i,
            None => {
                self.list.push(Family::new(name.clone(), help, kind));
                self.index.insert(name, self.list.len() - 1);
                self.list.len() - 1
            }
        };
        &mut self.list[i]
    }

    /// Shorthand: one sample into family `name`.
    pub fn add(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        help: impl Into<Cow<'static, str>>,
        kind: Kind,
        labels: impl Into<LabelSet>,
        value: f64,
    ) {
        self.get(name, help, kind).push(labels, value);
    }

    /// Like [`Families::add`] for a name built at run time: allocates the name only when the
    /// family is new (the second member's `mysql_global_status_uptime` finds the first's).
    pub fn add_named(
        &mut self,
        name: &str,
        help: &'static str,
        kind: Kind,
        labels: impl Into<LabelSet>,
        value: f64,
    ) {
        match self.index.get(name) {
            Some(i) => {
                let i = *i;
                self.list[i].push(labels, value);
            }
            None => self.add(name.to_owned(), help, kind, labels, value),
        }
    }

    /// A histogram's samples: cumulative `_bucket`s by upper bound `le` (the last `+Inf`),
    /// `_sum` and `_count`. `cumulative` holds one count per bound of `bounds` and one more
    /// for `+Inf`.
    pub fn add_histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Labels,
        (bounds, cumulative, sum): (&[f64], &[u64], f64),
    ) {
        let f = self.get(name, help, Kind::Histogram);
        let les = bounds
            .iter()
            // `{:?}` keeps the `.0` of whole bounds (`1.0`), as OpenMetrics writes floats.
            .map(|b| format!("{b:?}"))
            .chain(std::iter::once("+Inf".to_owned()));
        for (le, n) in les.zip(cumulative) {
            let mut l = labels.clone();
            l.push(label("le", le));
            f.samples.push(Sample {
                labels: l.into(),
                value: *n as f64,
                suffix: "_bucket",
            });
        }
        let count = cumulative.last().copied().unwrap_or(0);
        for (suffix, value) in [("_sum", sum), ("_count", count as f64)] {
            f.samples.push(Sample {
                labels: labels.clone().into(),
                value,
                suffix,
            });
        }
    }

    /// The families gathered so far.
    pub fn iter(&self) -> impl Iterator<Item = &Family> {
        self.list.iter()
    }

    /// Appends every family of `other`.
    pub fn extend(&mut self, other: Families) {
        for f in other.list {
            let kind = f.kind;
            let dst = self.get(f.name, f.help, kind);
            dst.samples.extend(f.samples);
        }
    }
}

pub use mofang_common::exposition::Format;

/// One family's sample lines, written once: a member's database statistics are written when
/// they are collected and copied into every scrape until the next collection.
#[derive(Debug, Clone)]
pub struct Chunk {
    name: Cow<'static, str>,
    help: Cow<'static, str>,
    kind: Kind,
    lines: String,
}

/// Families written to sample lines, family by family (see [`Families::render`]).
#[derive(Debug, Default, Clone)]
pub struct Rendered {
    chunks: Vec<Chunk>,
}

impl Rendered {
    /// The same lines with the label set `old`, which every sample starts with (a member's
    /// `mofang_*` and `role` labels), written as `new`.
    pub fn relabel(&self, old: &Labels, new: &Labels) -> Rendered {
        let (old, new) = (open_labels(old), open_labels(new));
        if old.len() < 2 {
            // No labels to find: nothing can be relabelled.
            return self.clone();
        }
        let chunks = self
            .chunks
            .iter()
            .map(|c| Chunk {
                name: c.name.clone(),
                help: c.help.clone(),
                kind: c.kind,
                lines: c.lines.replace(&old, &new),
            })
            .collect();
        Rendered { chunks }
    }
}

/// `{` and the labels as a sample line starts with them: the needle of [`Rendered::relabel`].
fn open_labels(labels: &Labels) -> String {
    let mut out = String::from("{");
    for (k, v) in labels {
        out.push_str(k);
        out.push_str("=\"");
        escape_into(&mut out, v, true);
        out.push_str("\",");
    }
    out.pop();
    out
}

impl Families {
    /// The sample lines of every family (the same in both formats: only metadata differs).
    /// Consumes the families: their names move into the chunks instead of being copied (a
    /// MariaDB member's collection has about 1,300 families, most with a run-time name).
    pub fn render(self) -> Rendered {
        let chunks = self
            .list
            .into_iter()
            .filter(|f| !f.samples.is_empty())
            .map(|f| {
                let mut lines = String::with_capacity(f.samples.len() * 96);
                for s in &f.samples {
                    write_sample(&mut lines, &f, s);
                }
                Chunk {
                    name: f.name,
                    help: f.help,
                    kind: f.kind,
                    lines,
                }
            })
            .collect();
        Rendered { chunks }
    }
}

/// The suffix a family's samples carry after its name.
fn suffix(kind: Kind) -> &'static str {
    match kind {
        Kind::Counter => "_total",
        Kind::Info => "_info",
        Kind::Gauge | Kind::Unknown | Kind::Histogram => "",
    }
}

fn write_sample(out: &mut String, f: &Family, s: &Sample) {
    use std::fmt::Write;
    out.push_str(&f.name);
    out.push_str(suffix(f.kind));
    out.push_str(s.suffix);
    if !s.labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in s.labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            escape_into(out, v, true);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    if f.kind == Kind::Info {
        out.push('1');
    } else {
        // Shortest round-trip form, never an exponent; non-finite values never get here.
        let _ = write!(out, "{}", s.value);
    }
    out.push('\n');
}

/// Backslash, newline and (in label values and OpenMetrics help) double quote, escaped as
/// both formats want.
fn escape_into(out: &mut String, v: &str, quote: bool) {
    if !v.contains(['\\', '\n', '"']) {
        out.push_str(v);
        return;
    }
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Writes the families of every part in `format`: one HELP/TYPE per family name, with the
/// sample lines of all parts that have it, in the order names first appear. Only copies: the
/// sample lines were written by [`Families::render`].
pub fn write(parts: &[&Rendered], format: Format) -> String {
    let mut order: Vec<(&Chunk, Vec<&str>)> = Vec::new();
    // Keyed by family name for every chunk of every part (tens of thousands per scrape at
    // 50 members): FxHash, not SipHash, which was 8 % of a scrape's CPU.
    let mut index: rustc_hash::FxHashMap<&str, usize> = rustc_hash::FxHashMap::default();
    let mut bytes = 0;
    for c in parts.iter().flat_map(|p| p.chunks.iter()) {
        bytes += c.lines.len();
        match index.get(c.name.as_ref()) {
            Some(&i) => order[i].1.push(&c.lines),
            None => {
                index.insert(&c.name, order.len());
                order.push((c, vec![&c.lines]));
            }
        }
    }
    let mut out = String::with_capacity(bytes + order.len() * 160 + 16);
    for (c, lines) in order {
        let (name_suffix, ty) = match (format, c.kind) {
            (Format::OpenMetrics, Kind::Counter) => ("", "counter"),
            (Format::OpenMetrics, Kind::Gauge) => ("", "gauge"),
            (Format::OpenMetrics, Kind::Info) => ("", "info"),
            (Format::OpenMetrics, Kind::Unknown) => ("", "unknown"),
            (_, Kind::Histogram) => ("", "histogram"),
            // The text format's metadata names what the samples are called.
            (Format::Text, Kind::Counter) => ("_total", "counter"),
            (Format::Text, Kind::Gauge) => ("", "gauge"),
            (Format::Text, Kind::Info) => ("_info", "gauge"),
            (Format::Text, Kind::Unknown) => ("", "untyped"),
        };
        out.push_str("# HELP ");
        out.push_str(&c.name);
        out.push_str(name_suffix);
        out.push(' ');
        escape_into(&mut out, &c.help, format == Format::OpenMetrics);
        out.push_str("\n# TYPE ");
        out.push_str(&c.name);
        out.push_str(name_suffix);
        out.push(' ');
        out.push_str(ty);
        out.push('\n');
        for l in lines {
            out.push_str(l);
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

/// Encodes the families in `format`.
pub fn encode(families: &Families, format: Format) -> String {
    write(&[&families.clone().render()], format)
}

/// `(name, value)` label pair helper.
pub fn label(name: &'static str, value: impl Into<String>) -> (Cow<'static, str>, String) {
    (Cow::Borrowed(name), value.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_families() -> Families {
        let mut f = Families::default();
        f.add(
            "container_cpu_usage_seconds",
            "Cumulative cpu time consumed in seconds.",
            Kind::Counter,
            vec![label("cpu", "total"), label("name", "a\"b")],
            1.5,
        );
        f.add(
            "container_spec_memory_limit_bytes",
            "Memory limit for the container.",
            Kind::Gauge,
            vec![label("name", "x")],
            268435456.0,
        );
        f.add(
            "mysql_version",
            "MySQL version and distribution.",
            Kind::Info,
            vec![label("version", "10.11.6-MariaDB")],
            1.0,
        );
        f.add(
            "mysql_global_status_uptime",
            "Generic metric from SHOW GLOBAL STATUS.",
            Kind::Unknown,
            vec![],
            42.0,
        );
        f.add(
            "dropped",
            "NaN is not exported.",
            Kind::Gauge,
            vec![],
            f64::NAN,
        );
        f
    }

    #[test]
    fn openmetrics_has_suffixes_on_samples_and_eof() {
        let om = encode(&sample_families(), Format::OpenMetrics);
        assert!(
            om.contains("# TYPE container_cpu_usage_seconds counter\n"),
            "{om}"
        );
        assert!(
            om.contains("container_cpu_usage_seconds_total{cpu=\"total\",name=\"a\\\"b\"} 1.5\n"),
            "{om}"
        );
        assert!(
            om.contains(
                "# TYPE mysql_version info\nmysql_version_info{version=\"10.11.6-MariaDB\"} 1\n"
            ),
            "{om}"
        );
        assert!(
            om.contains("# TYPE mysql_global_status_uptime unknown\n"),
            "{om}"
        );
        assert!(!om.contains("dropped"), "{om}");
        assert!(om.ends_with("# EOF\n"));
    }

    #[test]
    fn text_format_names_metadata_like_the_samples() {
        let t = encode(&sample_families(), Format::Text);
        assert!(t.contains("# HELP container_cpu_usage_seconds_total Cumulative cpu time consumed in seconds.\n# TYPE container_cpu_usage_seconds_total counter\ncontainer_cpu_usage_seconds_total{"), "{t}");
        assert!(
            t.contains("# TYPE mysql_version_info gauge\nmysql_version_info{"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE mysql_global_status_uptime untyped\n"),
            "{t}"
        );
        assert!(
            t.contains("container_spec_memory_limit_bytes{name=\"x\"} 268435456"),
            "{t}"
        );
        assert!(!t.contains("# EOF"));
    }

    #[test]
    fn parts_written_apart_are_put_together_family_by_family() {
        let mut a = Families::default();
        a.add("redis_up", "h", Kind::Gauge, vec![label("m", "a")], 1.0);
        a.add("c", "x\\y\nz", Kind::Counter, vec![label("m", "a\nb")], 2.0);
        let mut b = Families::default();
        b.add("redis_up", "h", Kind::Gauge, vec![label("m", "b")], 0.0);
        let (a, b) = (a.render(), b.render());
        let t = write(&[&a, &b], Format::Text);
        assert_eq!(
            t,
            "# HELP redis_up h\n# TYPE redis_up gauge\nredis_up{m=\"a\"} 1\nredis_up{m=\"b\"} 0\n\
             # HELP c_total x\\\\y\\nz\n# TYPE c_total counter\nc_total{m=\"a\\nb\"} 2\n"
        );
        let om = write(&[&a, &b], Format::OpenMetrics);
        assert!(om.starts_with("# HELP redis_up h\n# TYPE redis_up gauge\nredis_up{m=\"a\"} 1\nredis_up{m=\"b\"} 0\n"), "{om}");
        assert!(om.contains("# TYPE c counter\nc_total{"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");
    }

    #[test]
    fn relabelling_rewrites_the_leading_labels_of_every_sample_and_nothing_else() {
        let old = vec![label("mofang_member", "db-0"), label("role", "primary")];
        let new = vec![label("mofang_member", "db-0"), label("role", "replica")];
        let base = std::sync::Arc::new(old.clone());
        let mut f = Families::default();
        f.add("mysql_up", "h", Kind::Gauge, old.clone(), 1.0);
        f.add(
            "x",
            "h",
            Kind::Counter,
            LabelSet::new(&base, vec![label("note", "role=\"primary\"")]),
            2.0,
        );
        let t = write(&[&f.render().relabel(&old, &new)], Format::Text);
        assert!(
            t.contains("mysql_up{mofang_member=\"db-0\",role=\"replica\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("x_total{mofang_member=\"db-0\",role=\"replica\",note=\"role=\\\"primary\\\"\"} 2\n"),
            "a label value that looks like the old ones is left alone: {t}"
        );
        assert!(!t.contains("role=\"primary\""), "{t}");
    }

    #[test]
    fn same_family_from_two_sources_is_merged() {
        let mut a = Families::default();
        a.add("redis_up", "h", Kind::Gauge, vec![label("m", "a")], 1.0);
        let mut b = Families::default();
        b.add("redis_up", "h", Kind::Gauge, vec![label("m", "b")], 0.0);
        a.extend(b);
        let t = encode(&a, Format::Text);
        assert_eq!(t.matches("# TYPE redis_up gauge").count(), 1, "{t}");
        assert!(t.contains("redis_up{m=\"b\"} 0"), "{t}");
    }
}
