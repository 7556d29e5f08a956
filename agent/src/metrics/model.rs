//! The exposition model: metric families gathered at scrape time, encoded by `prometheus-client`
//! as OpenMetrics, and rewritten line by line into the Prometheus text format 0.0.4 for scrapers
//! that do not ask for OpenMetrics (`promtool check metrics`, older Prometheus, curl).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
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
            });
        }
    }
}

/// Families gathered by name, kept in first-registration order so related metrics stay
/// together; the same name twice is merged (samples of two members into one family).
#[derive(Debug, Default)]
pub struct Families {
    list: Vec<Family>,
    index: std::collections::HashMap<Cow<'static, str>, usize>,
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

/// The families as a `prometheus-client` collector, so the crate writes the exposition.
#[derive(Debug)]
struct Snapshot(Families);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // One label buffer for every sample: no allocation per sample.
        let mut labels: Vec<(&str, &str)> = Vec::with_capacity(16);
        for f in self.0.iter().filter(|f| !f.samples.is_empty()) {
            let ty = match f.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
                Kind::Info => MetricType::Info,
                Kind::Unknown => MetricType::Unknown,
            };
            let mut metric = encoder.encode_descriptor(&f.name, &f.help, None, ty)?;
            for s in &f.samples {
                labels.clear();
                labels.extend(s.labels.iter().map(|(k, v)| (k.as_ref(), v.as_str())));
                if f.kind == Kind::Info {
                    // Info labels go straight to encode_info (no family level in between).
                    metric.encode_info(&labels)?;
                    continue;
                }
                if s.labels.is_empty() {
                    encode_value(&mut metric, f.kind, s.value)?;
                } else {
                    encode_value(&mut metric.encode_family(&labels)?, f.kind, s.value)?;
                }
            }
        }
        Ok(())
    }
}

fn encode_value(m: &mut MetricEncoder<'_>, kind: Kind, v: f64) -> Result<(), std::fmt::Error> {
    match kind {
        Kind::Counter => m.encode_counter::<NoLabelSet, f64, f64>(&v, None),
        _ => m.encode_gauge(&v),
    }
}

/// Exposition formats the endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Text,
}

impl Format {
    /// The Content-Type of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// Content negotiation on an `Accept` header: OpenMetrics when the client lists it with a
    /// quality above every text/plain entry (Prometheus does), else the text format.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let (mut om, mut text) = (0.0f64, 0.0f64);
        for part in accept.split(',') {
            let mut params = part.split(';').map(str::trim);
            let media = params.next().unwrap_or("").to_ascii_lowercase();
            let q = params
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f64>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => om = om.max(q),
                "text/plain" | "*/*" | "text/*" => text = text.max(q),
                _ => {}
            }
        }
        if om > 0.0 && om >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// Encodes the families in `format`.
pub fn encode(families: Families, format: Format) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(families)));
    let mut om = String::with_capacity(64 * 1024);
    prometheus_client::encoding::text::encode(&mut om, &registry)?;
    Ok(match format {
        Format::OpenMetrics => om,
        Format::Text => openmetrics_to_text(&om),
    })
}

/// Rewrites the OpenMetrics text that `prometheus-client` writes into the Prometheus text
/// format 0.0.4. The sample lines are the same; only the metadata differs: a counter's and an
/// info's HELP/TYPE name carries the `_total`/`_info` suffix the samples carry, info becomes
/// gauge, unknown becomes untyped, and there are no `# UNIT` or `# EOF` lines.
/// Exemplars and `_created` samples, which the text format lacks, are never written by us.
pub fn openmetrics_to_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut lines = om.lines().peekable();
    while let Some(line) = lines.next() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            // HELP precedes TYPE: look ahead to learn the suffix.
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let ty = lines
                .peek()
                .and_then(|l| l.strip_prefix("# TYPE "))
                .and_then(|t| t.split_once(' '))
                .map(|(_, ty)| ty)
                .unwrap_or("");
            let (suffix, text_ty) = match ty {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "gauge" => ("", "gauge"),
                "histogram" => ("", "histogram"),
                _ => ("", "untyped"),
            };
            out.push_str("# HELP ");
            out.push_str(name);
            out.push_str(suffix);
            out.push(' ');
            out.push_str(help);
            out.push('\n');
            if lines.peek().is_some_and(|l| l.starts_with("# TYPE ")) {
                lines.next();
                out.push_str("# TYPE ");
                out.push_str(name);
                out.push_str(suffix);
                out.push(' ');
                out.push_str(text_ty);
                out.push('\n');
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
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
        let om = encode(sample_families(), Format::OpenMetrics).unwrap();
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
        let t = encode(sample_families(), Format::Text).unwrap();
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
    fn negotiation_follows_prometheus_accept_header() {
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prom)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Text
        );
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(
            Format::negotiate(Some("text/plain;q=1,application/openmetrics-text;q=0.5")),
            Format::Text
        );
    }

    #[test]
    fn same_family_from_two_sources_is_merged() {
        let mut a = Families::default();
        a.add("redis_up", "h", Kind::Gauge, vec![label("m", "a")], 1.0);
        let mut b = Families::default();
        b.add("redis_up", "h", Kind::Gauge, vec![label("m", "b")], 0.0);
        a.extend(b);
        let t = encode(a, Format::Text).unwrap();
        assert_eq!(t.matches("# TYPE redis_up gauge").count(), 1, "{t}");
        assert!(t.contains("redis_up{m=\"b\"} 0"), "{t}");
    }
}
