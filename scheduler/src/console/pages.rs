//! The console's HTML, rendered with maud (escaped by default) from the view models of
//! `views`. No inline script or style: the page works under `default-src 'self'`.

use super::session::encode_query;
use super::views::{
    self, ago, count_by, lag, utc, Fill, InstanceFilter, Node, Problem, Severity, Topology,
    TopologyNode,
};
use crate::api::{CredentialsView, EngineView};
use crate::cluster::{BackupRepoView, InstanceView};
use crate::model::{AuditEntry, Event};
use maud::{html, Markup, DOCTYPE};
use std::collections::BTreeMap;

/// Pages of the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// Overview.
    Overview,
    /// Instances.
    Instances,
    /// Nodes.
    Nodes,
    /// Operations.
    Operations,
    /// Backups.
    Backups,
    /// Events.
    Events,
    /// Audit (admins).
    Audit,
    /// Problems.
    Problems,
}

/// What every page of a signed-in user needs.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The token name signed in.
    pub who: String,
    /// Its role, lower case.
    pub role: String,
    /// May act (operator or admin).
    pub can_act: bool,
    /// Admin.
    pub is_admin: bool,
    /// The session's CSRF token.
    pub csrf: String,
    /// How many problems there are now.
    pub problems: usize,
    /// Now, unix ms (rendering is given the clock).
    pub now_ms: i64,
}

/// Instances per page of the list (a page stays well under 200 KB).
pub const PAGE_SIZE: usize = 100;

/// Entries per page of the events and audit pages.
pub const LOG_ROWS: usize = 100;

/// Live refresh interval of pages that update, ms.
pub const REFRESH_MS: u32 = 2000;

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Mofang" }
            link rel="stylesheet" href="/ui/assets/console.css";
            script src="/ui/assets/console.js" defer {}
        }
    }
}

/// The hidden CSRF field of a state-changing form.
pub fn csrf_field(f: &Frame) -> Markup {
    html! { input type="hidden" name="csrf" value=(f.csrf); }
}

/// A whole page: navigation, the connection banner, the Problems link, and `main`; with
/// `refresh`, its live regions follow the page's own address.
pub fn page(f: &Frame, title: &str, nav: Nav, refresh: bool, main: Markup) -> Markup {
    page_at(f, title, nav, refresh.then_some(""), main)
}

/// [`page`] whose live regions follow `live` (empty: the page's own address). A page
/// rendered as the answer to a form (a refusal shown on the instance page) follows the
/// page's GET address, not the form's.
pub fn page_at(f: &Frame, title: &str, nav: Nav, live: Option<&str>, main: Markup) -> Markup {
    let item = |n: Nav, href: &str, label: &str| {
        html! { a href=(href) aria-current=[(n == nav).then_some("page")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body data-refresh=(if live.is_some() { REFRESH_MS } else { 0 })
                data-live-url=[live.filter(|u| !u.is_empty())] {
                a.skip href="#main" { "Skip to content" }
                p.banner id="conn-banner" role="status" hidden {}
                header.top {
                    a.brand href="/ui" { "Mofang" }
                    nav aria-label="Console" {
                        (item(Nav::Overview, "/ui", "Overview"))
                        (item(Nav::Instances, "/ui/instances", "Instances"))
                        (item(Nav::Nodes, "/ui/nodes", "Nodes"))
                        (item(Nav::Operations, "/ui/operations", "Operations"))
                        (item(Nav::Backups, "/ui/backups", "Backups"))
                        (item(Nav::Events, "/ui/events", "Events"))
                        @if f.is_admin { (item(Nav::Audit, "/ui/audit", "Audit")) }
                        span id="nav-problems" data-live {
                            a.problems-link.has[f.problems > 0] href="/ui/problems"
                                aria-current=[(nav == Nav::Problems).then_some("page")] {
                                "Problems (" (f.problems) ")"
                            }
                        }
                    }
                    div.who {
                        span { (f.who) " · " (f.role) }
                        form.inline method="post" action="/ui/logout" {
                            (csrf_field(f))
                            button.small type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" { (main) }
            }
        }
    }
}

/// The sign-in page.
pub fn login(login_csrf: &str, next: Option<&str>, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in"))
            body data-refresh="0" {
                main.login id="main" {
                    h1 { "Mofang console" }
                    @if let Some(e) = error { p.error role="alert" { (e) } }
                    form.stack.card method="post" action="/ui/login" id="login" {
                        input type="hidden" name="csrf" value=(login_csrf);
                        @if let Some(n) = next { input type="hidden" name="next" value=(n); }
                        div.field {
                            label for="token" { "API token" }
                            input id="token" name="token" type="password" autocomplete="current-password" required autofocus;
                            p.hint { "The token you use with the mofang CLI or the REST API. It stays on the scheduler; your browser gets a session cookie." }
                        }
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

/// A page that only says something (errors, refusals).
pub fn message(f: Option<&Frame>, title: &str, text: &str) -> Markup {
    let body = html! { h1 { (title) } p.error role="alert" { (text) } p { a href="/ui" { "Back to the overview" } } };
    match f {
        Some(f) => page(f, title, Nav::Overview, false, body),
        None => html! {
            (DOCTYPE)
            html lang="en" { (head(title)) body data-refresh="0" { main id="main" { (body) } } }
        },
    }
}

fn badge(text: &str) -> Markup {
    html! { span.badge.(text) { (text) } }
}

fn counts(caption: &str, rows: &[(String, usize)]) -> Markup {
    html! {
        table {
            caption.muted { (caption) }
            @for (k, n) in rows { tr { td { (badge(k)) } td.num { (n) } } }
            @if rows.is_empty() { tr { td.muted colspan="2" { "none" } } }
        }
    }
}

fn meter_row(label: &str, u: views::Usage, unit: &str, digits: usize) -> Markup {
    let pct = (u.fraction() * 100.0).round();
    html! {
        span { (label) }
        meter min="0" max="1" low="0.7" high="0.9" optimum="0" value=(format!("{:.3}", u.fraction()))
            aria-label=(format!("{label} {pct}%")) {}
        span.num { (format!("{:.*} / {:.*} {unit}", digits, u.used, digits, u.capacity)) }
    }
}

fn fill_card(f: &Fill, what: &str) -> Markup {
    html! {
        div.card {
            h2 { (what) " " (f.name) }
            div.fill {
                (meter_row("CPU", f.cpu, "cores", 1))
                (meter_row("Memory", f.memory_mib, "MiB", 0))
                (meter_row("Disk", f.disk_reserved_mib, "MiB", 0))
                (meter_row("Disk used", f.disk_mib, "MiB", 0))
            }
            p.hint { (f.members) " members · CPU, memory and disk reserved by members against capacity; disk used as the filesystems report it" }
        }
    }
}

fn problem_list(ps: &[Problem]) -> Markup {
    html! {
        @if ps.is_empty() {
            p.muted { "No problems." }
        } @else {
            ul.problems {
                @for p in ps {
                    li {
                        (badge(match p.severity { Severity::Critical => "critical", Severity::Warning => "warning" }))
                        " " a href=(p.link) { (p.subject) } ": " (p.what)
                    }
                }
            }
        }
    }
}

fn event_rows(events: &[Event], now_ms: i64, with_instance: bool) -> Markup {
    html! {
        @if events.is_empty() {
            p.muted { "No events." }
        } @else {
            ol.timeline {
                @for e in events {
                    li.notable[views::NOTABLE.contains(&e.kind.as_str())] data-kind=(e.kind) {
                        span title=(utc(e.at_ms)) { (utc(e.at_ms)) br; span.muted { (ago(e.at_ms, now_ms)) } }
                        span {
                            strong { (e.kind) }
                            @if with_instance {
                                @if let Some(i) = &e.instance { br; a href=(format!("/ui/instances/{i}")) { (i) } }
                                @if let Some(n) = &e.node { br; span.muted { "node " (n) } }
                            }
                        }
                        span { (e.message) }
                    }
                }
            }
        }
    }
}

/// The overview.
pub fn overview(
    f: &Frame,
    instances: &[InstanceView],
    nodes: &[Node],
    problems: &[Problem],
    recent: &[Event],
    backups: &views::BackupSummary,
) -> Markup {
    let by_status = count_by(instances, |i| i.status.clone());
    let by_engine = count_by(instances, |i| format!("{} {}", i.engine, i.version));
    let by_state = count_by(nodes, |n| n.state.clone());
    let failed_over: Vec<&InstanceView> = instances
        .iter()
        .filter(|i| i.last_failover_ms > f.now_ms - views::RECENT_MS)
        .collect();
    let zones = views::zone_fill(nodes);
    let main = html! {
        h1 { "Overview" }
        div id="overview" data-live {
            div.grid {
                div.card { h2 { "Instances (" (instances.len()) ")" } (counts("by status", &by_status)) (counts("by engine and version", &by_engine)) }
                div.card { h2 { "Nodes (" (nodes.len()) ")" } (counts("by state", &by_state)) }
                div.card {
                    h2 { a href="/ui/problems" { "Problems (" (problems.len()) ")" } }
                    (problem_list(&problems[..problems.len().min(8)]))
                    @if problems.len() > 8 { p { a href="/ui/problems" { "All " (problems.len()) " problems" } } }
                }
                (backup_cards(backups))
            }
            h2 { "Failovers in the last 24 h (" (failed_over.len()) " instances)" }
            @if failed_over.is_empty() { p.muted { "None." } } @else {
                ul { @for i in &failed_over { li { a href=(format!("/ui/instances/{}", i.name)) { (i.name) } " — " (ago(i.last_failover_ms, f.now_ms)) } } }
            }
            h2 { "Failovers and failures in the last 24 h (events)" }
            (event_rows(&recent[..recent.len().min(20)], f.now_ms, true))
            h2 { "How full the fleet is, by zone" }
            div.grid { @for z in &zones { (fill_card(z, "Zone")) } }
            h2 { "By node" }
            div.grid { @for n in nodes { (fill_card(&views::node_fill(n), "Node")) } }
        }
    };
    page(f, "Overview", Nav::Overview, true, main)
}

/// The Problems page.
pub fn problems(f: &Frame, ps: &[Problem]) -> Markup {
    let main = html! {
        h1 { "Problems" }
        p.hint { "Nodes down, the mass-failure hold, degraded instances, replicas not replicating, binlog archives with a gap." }
        div id="problems" data-live { (problem_list(ps)) }
    };
    page(f, "Problems", Nav::Problems, true, main)
}

fn select(name: &str, label: &str, current: &str, options: &[String]) -> Markup {
    html! {
        div.field {
            label for=(name) { (label) }
            select id=(name) name=(name) {
                option value="" selected[current.is_empty()] { "any" }
                @for o in options { option value=(o) selected[o == current] { (o) } }
            }
        }
    }
}

/// The instances list with its filters.
pub fn instances(
    f: &Frame,
    all: &[InstanceView],
    filter: &InstanceFilter,
    page_no: usize,
    flash: Option<&str>,
) -> Markup {
    let distinct = |key: fn(&InstanceView) -> &str| -> Vec<String> {
        let mut v: Vec<String> = all.iter().map(|i| key(i).to_owned()).collect();
        v.sort();
        v.dedup();
        v
    };
    let matching: Vec<&InstanceView> = all.iter().filter(|i| filter.matches(i)).collect();
    let selector_error = filter.selector_error();
    let (page_no, pages, shown) = views::page_of(&matching, page_no, PAGE_SIZE);
    let link = |n: usize| {
        format!(
            "/ui/instances?q={}&labels={}&engine={}&version={}&status={}&page={n}",
            encode_query(&filter.q),
            encode_query(&filter.labels),
            encode_query(&filter.engine),
            encode_query(&filter.version),
            encode_query(&filter.status)
        )
    };
    let main = html! {
        h1 { "Instances" }
        @if let Some(m) = flash { p.flash role="status" { (m) } }
        @if f.can_act { p { a href="/ui/instances/new" { "Create an instance" } } }
        form.filters method="get" action="/ui/instances" role="search" {
            div.field { label for="q" { "Name or label" } input id="q" name="q" type="search" value=(filter.q); }
            div.field {
                label for="labels" { "Label selector" }
                input id="labels" name="labels" type="search" value=(filter.labels) placeholder="team=pay,env!=dev"
                    aria-invalid=[selector_error.as_ref().map(|_| "true")]
                    aria-describedby=[selector_error.as_ref().map(|_| "labels-error")];
                @if let Some(e) = &selector_error { p.field-error id="labels-error" role="alert" { (e) } }
            }
            (select("engine", "Engine", &filter.engine, &distinct(|i| &i.engine)))
            (select("version", "Version", &filter.version, &distinct(|i| &i.version)))
            (select("status", "Status", &filter.status, &distinct(|i| &i.status)))
            button type="submit" { "Filter" }
        }
        div.scroll id="instances" data-live {
            p.muted { (matching.len()) " of " (all.len()) @if pages > 1 { " · page " (page_no) " of " (pages) } }
            table {
                thead { tr { th { "Name" } th { "Engine" } th { "Status" } th.num { "Members" } th.num { "Epoch" } th { "Primary" } th { "Labels" } } }
                tbody {
                    @for i in shown {
                        tr {
                            td { a href=(format!("/ui/instances/{}", i.name)) { (i.name) } }
                            td { (i.engine) " " (i.version) }
                            td { (badge(&i.status)) }
                            td.num { (i.members.len()) }
                            td.num { (i.epoch) }
                            td { code { (i.primary) } }
                            td { @for (k, v) in &i.spec.labels { span.badge { (k) "=" (v) } " " } }
                        }
                    }
                }
            }
            (pager(page_no, pages, link))
        }
    };
    page(f, "Instances", Nav::Instances, true, main)
}

/// Links to the previous and next of `pages` pages (`link(n)`: page n's address, the
/// filters kept), and to the first and last when they are further away.
pub fn pager(page_no: usize, pages: usize, link: impl Fn(usize) -> String) -> Markup {
    html! {
        @if pages > 1 {
            nav.pager aria-label="Pages" {
                @if page_no > 2 { a href=(link(1)) { "First" } " " }
                @if page_no > 1 { a href=(link(page_no - 1)) rel="prev" { "Previous" } " " }
                span.muted { "page " (page_no) " of " (pages) } " "
                @if page_no < pages { a href=(link(page_no + 1)) rel="next" { "Next" } " " }
                @if page_no + 1 < pages { a href=(link(pages)) { "Last" } }
            }
        }
    }
}

/// The create form: the values typed, and the API's reason next to the field it is about
/// (`errors[""]`: the form as a whole).
pub fn create(
    f: &Frame,
    engines: &[EngineView],
    values: &BTreeMap<String, String>,
    errors: &BTreeMap<String, String>,
) -> Markup {
    let val = |k: &str, default: &str| values.get(k).cloned().unwrap_or_else(|| default.to_owned());
    let field = |name: &str, label: &str, default: &str, kind: &str, hint: &str| {
        let err = errors.get(name);
        let described = format!(
            "{name}-hint{}",
            if err.is_some() {
                format!(" {name}-error")
            } else {
                String::new()
            }
        );
        html! {
            div.field {
                label for=(name) { (label) }
                input id=(name) name=(name) type=(kind) value=(val(name, default))
                    aria-invalid=[err.map(|_| "true")] aria-describedby=(described)
                    step=[(kind == "number").then_some("any")]
                    list=[(name == "version").then_some("versions")];
                p.hint id=(format!("{name}-hint")) { (hint) }
                @if let Some(e) = err { p.field-error id=(format!("{name}-error")) role="alert" { (e) } }
            }
        }
    };
    let engine = val("engine", "mariadb");
    let engine_err = errors.get("engine");
    let versions: Vec<String> = engines
        .iter()
        .flat_map(|e| e.versions.iter().cloned())
        .collect();
    let restore_from = values.get("restore_from").filter(|v| !v.is_empty());
    // A restore to a time: the time is a field of its own (the API's reason next to it).
    let to_time = restore_from.is_some()
        && (values.get("time").is_some_and(|t| !t.is_empty()) || errors.contains_key("time"));
    let main = html! {
        h1 { @if restore_from.is_some() { "Restore into a new instance" } @else { "Create an instance" } }
        @if let Some(src) = restore_from {
            p.note {
                "From instance " a href=(format!("/ui/instances/{src}")) { (src) } ": "
                @match (values.get("backup").filter(|v| !v.is_empty()), values.get("time").filter(|v| !v.is_empty())) {
                    (_, Some(_)) => { "to the time below (the backup before it, then the archived binlogs)" },
                    (Some(b), None) => { "backup " code { (b) } },
                    (None, None) => { "its latest backup" },
                }
                ". A new instance is created; the source is not changed."
            }
        }
        @if let Some(e) = errors.get("") { p.error role="alert" id="form-error" { (e) } }
        form.stack.card method="post" action="/ui/instances" id="create" novalidate {
            (csrf_field(f))
            @for k in views::RESTORE_FIELDS {
                @if let Some(v) = values.get(*k).filter(|v| !v.is_empty() && (*k != "time" || !to_time)) { input type="hidden" name=(k) value=(v); }
            }
            @if to_time {
                @let err = errors.get("time");
                div.field {
                    label for="time" { "Restore to the time (UTC)" }
                    input id="time" name="time" type="datetime-local" step="1"
                        value=(views::local_input_of(&val("time", "")))
                        aria-invalid=[err.map(|_| "true")]
                        aria-describedby=(if err.is_some() { "time-hint time-error" } else { "time-hint" });
                    p.hint id="time-hint" { "Within the source's point-in-time window, to the second; the backup before it is restored and the archived binlogs replayed up to it." }
                    @if let Some(e) = err { p.field-error id="time-error" role="alert" { (e) } }
                }
            }
            (field("name", "Name", "", "text", "Lower-case letters, digits and '-', at most 40."))
            div.field {
                label for="engine" { "Engine" }
                select id="engine" name="engine" aria-invalid=[engine_err.map(|_| "true")] {
                    @for e in engines { option value=(e.engine) selected[e.engine == engine] { (e.engine) } }
                }
                @if let Some(e) = engine_err { p.field-error id="engine-error" role="alert" { (e) } }
            }
            (field("version", "Version", "10.11", "text",
                &engines.iter().map(|e| format!("{}: {}", e.engine, e.versions.join(", "))).collect::<Vec<_>>().join("; ")))
            datalist id="versions" { @for v in &versions { option value=(v) {} } }
            (field("replicas", "Replicas (besides the primary)", "1", "number", "0 to 8."))
            (field("cpu", "CPU cores per member", "0.5", "number", "0.1 to 64."))
            (field("memory", "Memory per member (MiB)", "256", "number", "64 MiB to 1 TiB."))
            (field("disk", "Disk per member (MiB)", "512", "number", "64 MiB to 64 TiB."))
            (field("labels", "Labels", "", "text", "Optional: key=value pairs separated by commas."))
            button.act type="submit" { "Create" }
        }
    };
    page(f, "Create an instance", Nav::Instances, false, main)
}

fn member_box(t: &TopologyNode, primary: bool) -> Markup {
    let m = &t.member;
    let sick = !m.healthy || m.state != "running";
    html! {
        div.member.primary[primary].sick[sick] data-member=(m.id) data-role=(m.role) {
            h3 { (if primary { "Primary " } else { "Replica " }) (m.id) }
            dl {
                dt { "node" } dd { (m.node) " (zone " (t.zone) ")" }
                dt { "health" } dd { (badge(if m.healthy { "healthy" } else { "unhealthy" })) " " (m.state) }
                dt { "role" } dd { (m.observed_role) @if m.observed_role != m.role { " (desired " (m.role) ")" } }
                dt { "epoch" } dd { (m.epoch) }
                @if !primary { dt { "lag" } dd { (lag(m.lag_seconds)) } }
                dt { "address" } dd { code { (m.address) } }
                @if !m.reason.is_empty() && sick { dt { "why" } dd { (m.reason) } }
            }
        }
    }
}

fn topology_diagram(t: &Topology) -> Markup {
    html! {
        div.topology role="img" aria-label="Replication topology: the primary and its replicas" {
            @match &t.primary {
                Some(p) => (member_box(p, true)),
                None => p.error { "No primary known." },
            }
            div.replicas {
                @for r in &t.replicas {
                    div.branch data-replica=(r.member.id) {
                        div.arrow.broken[r.broken.is_some()] {}
                        @if let Some(why) = &r.broken { p.broken-why { "replication broken: " (why) } }
                        (member_box(r, false))
                    }
                }
            }
        }
    }
}

/// Backups as a table, in the order given; operators get "Restore…" on each succeeded one
/// (a create form prefilled, which makes a new instance). `with_instance`: a column naming
/// each one's instance (the fleet page).
pub fn backup_table(f: &Frame, backups: &[views::Backup], with_instance: bool) -> Markup {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
    html! {
        @if backups.is_empty() {
            p.muted { "No backups." }
        } @else {
            div.scroll {
                table {
                    thead { tr {
                        th { "Backup" } @if with_instance { th { "Instance" } } th { "State" } th { "Taken" }
                        th.num { "Size" } th { "On" } th { "Verified" } @if f.can_act { th { "" } }
                    } }
                    tbody {
                        @for b in backups {
                            tr data-backup=(b.id) data-state=(b.state) {
                                td { code { (b.id) } br; span.muted { (b.repo) } }
                                @if with_instance { td { a href=(format!("/ui/instances/{}", b.instance)) { (b.instance) } } }
                                td { (badge(&b.state)) @if !b.reason.is_empty() { br; span.muted { (b.reason) } } }
                                td { (utc(b.requested_at_ms)) br; span.muted { (ago(b.requested_at_ms, f.now_ms)) } }
                                td.num { @if b.size > 0 { (mib(b.size)) } @else if b.bytes > 0 { (mib(b.bytes)) " read" } }
                                td { (b.member) br; span.muted { (b.node) } }
                                td {
                                    @if b.verifying { "verifying…" }
                                    @else {
                                        @match b.verify_ok {
                                            Some(true) => { (badge("healthy")) " " (ago(b.verified_at_ms, f.now_ms)) },
                                            Some(false) => { (badge("failed")) " " (b.verify_reason) },
                                            None => { span.muted { "never" } },
                                        }
                                    }
                                }
                                @if f.can_act {
                                    td { @if b.state == "succeeded" {
                                        a.act href=(format!("/ui/instances/new?restore_from={}&backup={}", b.instance, encode_query(&b.id))) { "Restore…" }
                                    } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The PITR window on a time axis with the full backups as marks (inline SVG, styled by the
/// stylesheet: no inline style, no script).
fn pitr_svg(axis: &views::PitrAxis) -> Markup {
    // The drawing is 1000 wide; the axis runs from 20 to 980.
    let x = |ms: i64| format!("{:.1}", 20.0 + 960.0 * axis.x(ms));
    let ticks = axis.ticks(5);
    let label = match axis.window {
        Some((a, b)) => format!(
            "Point-in-time window from {} to {}; {} full backups",
            utc(a),
            utc(b),
            axis.marks.len()
        ),
        None => format!("No point-in-time window; {} full backups", axis.marks.len()),
    };
    html! {
        svg.pitr-axis id="pitr-axis" viewBox="0 0 1000 92" role="img" aria-label=(label) xmlns="http://www.w3.org/2000/svg" {
            title { (label) }
            line.axis x1="20" y1="50" x2="980" y2="50" {}
            @if let Some((a, b)) = axis.window {
                @let (x1, x2) = (20.0 + 960.0 * axis.x(a), 20.0 + 960.0 * axis.x(b));
                rect.window id="pitr-window" x=(format!("{x1:.1}")) y="38" width=(format!("{:.1}", (x2 - x1).max(2.0))) height="24"
                    data-from=(utc(a)) data-to=(utc(b)) {
                    title { "restorable: " (utc(a)) " → " (utc(b)) }
                }
            }
            line.now x1=(x(axis.now_ms)) y1="14" x2=(x(axis.now_ms)) y2="66" {}
            text.now x=(x(axis.now_ms)) y="11" text-anchor="middle" { "now" }
            @for m in &axis.marks {
                g class=(format!("mark {}", m.state)) data-backup=(m.id) {
                    title { (m.id) " " (m.state) " " (utc(m.at_ms)) }
                    line x1=(x(m.at_ms)) y1="28" x2=(x(m.at_ms)) y2="72" {}
                    circle cx=(x(m.at_ms)) cy="50" r="6" {}
                }
            }
            @for (k, t) in ticks.iter().enumerate() {
                text.tick x=(x(*t)) y="88"
                    text-anchor=(if k == 0 { "start" } else if k + 1 == ticks.len() { "end" } else { "middle" }) {
                    (axis.label(*t))
                }
            }
        }
    }
}

/// An instance's backups: the PITR window and the full backups on a time axis, "restore to
/// a time" (operators), the backups newest first.
fn backup_timeline(f: &Frame, i: &InstanceView, backups: &[views::Backup]) -> Markup {
    let axis = views::pitr_axis(i, backups, f.now_ms);
    html! {
        @if let Some(w) = &i.pitr_window {
            p {
                "Point-in-time restore window: " code { (w.from) } " → " code { (w.to) }
                @if let Some(l) = i.pitr_lag_s { " · archive lag " (lag(l)) }
                @if f.can_act {
                    " · " a.act href=(format!("/ui/instances/new?restore_from={}&time={}", i.name, encode_query(&w.to))) { "Restore to the latest point" }
                }
            }
        } @else if let Some(r) = &i.pitr_reason {
            p.muted { "No point-in-time window: " (r) }
        }
        @if let Some(a) = &axis {
            figure.pitr {
                (pitr_svg(a))
                figcaption.hint {
                    span.key.window {} " restorable window · "
                    span.key.succeeded {} " full backup · "
                    span.key.failed {} " failed · "
                    span.key.running {} " running"
                }
            }
        }
        (backup_table(f, backups, false))
    }
}

/// The "restore to a time" form (operators, with a window): a time picked within the
/// window, prefilled with its latest point, opens the restore form; the API judges the time
/// (its reason shown next to the field there). Outside the live region: a time being picked
/// is never replaced.
fn restore_time_form(i: &InstanceView) -> Markup {
    html! {
        @if let Some(w) = &i.pitr_window {
            form.filters.act method="get" action="/ui/instances/new" id="restore-time" novalidate {
                input type="hidden" name="restore_from" value=(i.name);
                div.field {
                    label for="pitr-time" { "Restore to a time (UTC)" }
                    input id="pitr-time" name="time" type="datetime-local" step="1"
                        value=(views::local_input_of(&w.to)) min=(views::local_input_of(&w.from))
                        max=(views::local_input_of(&w.to)) aria-describedby="pitr-time-hint";
                    p.hint id="pitr-time-hint" { "From " (w.from) " to " (w.to) "." }
                }
                button.act type="submit" { "Restore to this time…" }
            }
        }
    }
}

/// What the instance page shows.
#[derive(Debug)]
pub struct InstanceData<'a> {
    /// The instance.
    pub instance: &'a InstanceView,
    /// Its topology.
    pub topology: &'a Topology,
    /// Its last events, newest first.
    pub events: &'a [Event],
    /// Its last operations, newest first.
    pub operations: &'a [views::Operation],
    /// Its backups, newest first.
    pub backups: &'a [views::Backup],
    /// The backup repositories (operators: "Back up now").
    pub repos: &'a [BackupRepoView],
    /// The credentials an admin asked to see (this answer only).
    pub credentials: Option<&'a CredentialsView>,
    /// The instance's engine with its parameter catalogue (operators: reconfigure).
    pub engine: Option<&'a EngineView>,
    /// The reconfigure form as sent, and the API's reason by field (a refusal).
    pub reconfigure: &'a views::FormState,
}

/// The instance page: topology, members, events (all live), and the actions of the role.
pub fn instance(
    f: &Frame,
    d: &InstanceData<'_>,
    flash: Option<&str>,
    action_error: Option<&str>,
) -> Markup {
    let (i, topo, events, ops, backups, repos) = (
        d.instance,
        d.topology,
        d.events,
        d.operations,
        d.backups,
        d.repos,
    );
    let replicas: Vec<&str> = i
        .members
        .iter()
        .filter(|m| m.role == "replica")
        .map(|m| m.id.as_str())
        .collect();
    let main = html! {
        h1 { "Instance " (i.name) }
        @if let Some(m) = flash { p.flash role="status" { (m) } }
        @if let Some(e) = action_error { p.error role="alert" id="action-error" { (e) } }
        div id="summary" data-live {
            p {
                "Status " span id="status" class=(format!("badge {}", i.status)) { (i.status) }
                " · " (i.engine) " " (i.version)
                " · epoch " span id="epoch" { (i.epoch) }
                " · primary " code { (i.primary) }
                " · automatic failover " (if i.auto_failover { "on" } else { "off" })
                @if i.last_failover_ms > 0 { " · last failover " (ago(i.last_failover_ms, f.now_ms)) }
            }
        }
        @if let Some(c) = d.credentials {
            div.card id="credentials-shown" {
                h2 { "Credentials" }
                p.hint { "Shown to you once, for this page; the reveal is in the audit log. Reload the page to hide them." }
                dl.creds {
                    dt { "app" } dd { code { (c.credentials.app) } }
                    dt { "mofang_admin" } dd { code { (c.credentials.admin) } }
                    dt { "mofang_repl" } dd { code { (c.credentials.repl) } }
                    dt { "mofang_monitor" } dd { code { (c.credentials.monitor) } }
                    dt { "TLS" } dd { (c.tls) }
                }
            }
        }
        h2 { "Topology" }
        div id="topology" data-live { (topology_diagram(topo)) }
        h2 { "Members" }
        div.scroll id="members" data-live {
            table {
                thead { tr { th { "Member" } th { "Node" } th { "Role" } th { "State" } th { "Health" } th.num { "Epoch" } th.num { "Lag" } th { "Address" } th { "Reason" } } }
                tbody {
                    @for m in &i.members {
                        tr {
                            td { (m.id) } td { (m.node) } td { (m.role) " / " (m.observed_role) }
                            td { (badge(&m.state)) } td { (badge(if m.healthy { "healthy" } else { "unhealthy" })) }
                            td.num { (m.epoch) } td.num { (lag(m.lag_seconds)) }
                            td { code { (m.address) } } td { (m.reason) }
                        }
                    }
                }
            }
        }
        @if f.can_act {
            h2 { "Actions" }
            div.grid {
                form.card.stack.act method="post" action=(format!("/ui/instances/{}/switchover", i.name)) id="switchover" {
                    (csrf_field(f))
                    div.field {
                        label for="target" { "Switch over to" }
                        select id="target" name="target" {
                            option value="" { "the most advanced healthy replica" }
                            @for r in &replicas { option value=(r) { (r) } }
                        }
                        p.hint { "The primary hands over to the replica without losing writes." }
                    }
                    button.act type="submit" { "Switch over" }
                }
                form.card.stack.act method="post" action=(format!("/ui/instances/{}/delete", i.name)) id="delete" {
                    (csrf_field(f))
                    div.field {
                        label for="confirm" { "Type " code { (i.name) } " to delete it" }
                        input id="confirm" name="confirm" type="text" autocomplete="off";
                        p.hint { "Its members, containers and volumes are removed. This cannot be undone." }
                    }
                    button.act.danger type="submit" { "Delete" }
                }
            }
            (operation_form(f, i))
            @if let Some(e) = d.engine { (reconfigure_form(f, i, e, d.reconfigure)) }
            @if f.is_admin && d.credentials.is_none() {
                form.filters.act method="post" action=(format!("/ui/instances/{}/credentials", i.name)) id="credentials" {
                    (csrf_field(f))
                    button.act type="submit" { "Show credentials" }
                    span.hint { "Admins only; each reveal is audited." }
                }
            }
        }
        h2 { "Operations" }
        div id="operations" data-live { (operations_table(f, ops, false)) }
        h2 { "Backups" }
        @if f.can_act {
            @if repos.is_empty() {
                p.muted { "No backup repository: add one with " code { "mofang backup-repo add" } "." }
            } @else {
                form.filters.act method="post" action=(format!("/ui/instances/{}/backups", i.name)) id="backup" {
                    (csrf_field(f))
                    div.field {
                        label for="repo" { "Repository" }
                        select id="repo" name="repo" { @for r in repos { option value=(r.name) { (r.name) " (" (r.kind) ")" } } }
                    }
                    button.act type="submit" { "Back up now" }
                }
            }
        }
        @if f.can_act { (restore_time_form(i)) }
        div id="backups" data-live { (backup_timeline(f, i, backups)) }
        h2 { "Events" }
        div id="events" data-live { (event_rows(events, f.now_ms, false)) }
    };
    page_at(
        f,
        &format!("Instance {}", i.name),
        Nav::Instances,
        Some(&format!("/ui/instances/{}", i.name)),
        main,
    )
}

/// The form that starts a day-2 operation: the type and the fields it takes. The API says
/// what a type needs (its reason is shown on the page).
fn operation_form(f: &Frame, i: &InstanceView) -> Markup {
    let kinds = [
        ("restart", "Restart (rolling, replicas first)"),
        ("scale", "Scale (replicas)"),
        ("resize", "Resize (CPU, memory)"),
        ("expand", "Expand (disk)"),
        ("upgrade", "Upgrade (version)"),
        ("stop", "Stop"),
        ("start", "Start"),
    ];
    html! {
        form.card.stack.act method="post" action=(format!("/ui/instances/{}/operations", i.name)) id="operation" {
            (csrf_field(f))
            div.field {
                label for="op-type" { "Operation" }
                select id="op-type" name="type" {
                    @for (k, label) in kinds { option value=(k) { (label) } }
                }
            }
            div.grid {
                div.field { label for="op-replicas" { "Replicas (scale)" } input id="op-replicas" name="replicas" type="number" placeholder=(i.replicas); }
                div.field { label for="op-cpu" { "CPU (resize)" } input id="op-cpu" name="cpu" type="number" step="any" placeholder=(i.spec.resources.cpu); }
                div.field { label for="op-memory" { "Memory MiB (resize)" } input id="op-memory" name="memory" type="number" placeholder=(i.spec.resources.memory); }
                div.field { label for="op-disk" { "Disk MiB (expand)" } input id="op-disk" name="disk" type="number" placeholder=(i.spec.resources.disk); }
                div.field { label for="op-version" { "Version (upgrade)" } input id="op-version" name="version" type="text" placeholder=(i.version); }
            }
            p.hint { "Engine parameters: Reconfigure below." }
            button.act type="submit" { "Start the operation" }
        }
    }
}

/// The reconfigure form: the engine's parameter catalogue (`GET /v1/engines`) with each
/// one's value now, what it accepts and whether a change restarts the members; a field per
/// parameter, those filled sent. The API judges the values (`novalidate`): its reason is
/// shown next to the parameter it names, the values typed kept.
fn reconfigure_form(f: &Frame, i: &InstanceView, e: &EngineView, st: &views::FormState) -> Markup {
    html! {
        form.card.stack.act.wide method="post" action=(format!("/ui/instances/{}/operations", i.name)) id="reconfigure" novalidate {
            (csrf_field(f))
            input type="hidden" name="type" value="reconfigure";
            h3 { "Reconfigure" }
            p.hint { "Fill the parameters to change, leave the others empty. Live ones are applied on every member at once; the others by a rolling restart, replicas first." }
            div.scroll {
                table.params {
                    thead { tr { th { "Parameter" } th { "Now" } th { "Allowed" } th { "Applied" } th { "New value" } } }
                    tbody {
                        @for p in &e.parameters {
                            @let field = format!("param.{}", p.name);
                            @let id = format!("param-{}", p.name);
                            @let err = st.errors.get(&field);
                            @let typed = st.values.get(&field).map_or("", String::as_str);
                            tr data-param=(p.name) {
                                td { label for=(id) { code { (p.name) } } br; span.hint { (p.description) } }
                                td { @match i.parameters.get(&p.name) { Some(v) => code { (v) }, None => span.muted { "default" } } }
                                td { (p.allowed()) }
                                td { @if p.dynamic { "live" } @else { (badge("restart")) } }
                                td {
                                    @if p.values.is_empty() {
                                        input id=(id) name=(field) type="number" value=(typed) min=[p.min] max=[p.max]
                                            aria-invalid=[err.map(|_| "true")] aria-describedby=[err.map(|_| format!("{id}-error"))];
                                    } @else {
                                        select id=(id) name=(field) aria-invalid=[err.map(|_| "true")] aria-describedby=[err.map(|_| format!("{id}-error"))] {
                                            option value="" selected[typed.is_empty()] { "unchanged" }
                                            @for w in &p.values { option value=(w) selected[w == typed] { (w) } }
                                        }
                                    }
                                    @if let Some(msg) = err { p.field-error id=(format!("{id}-error")) role="alert" { (msg) } }
                                }
                            }
                        }
                    }
                }
            }
            button.act type="submit" { "Reconfigure" }
        }
    }
}

/// Operations with their steps, newest first; operators may cancel live ones.
pub fn operations_table(f: &Frame, ops: &[views::Operation], with_instance: bool) -> Markup {
    html! {
        @if ops.is_empty() {
            p.muted { "No operations." }
        } @else {
            div.scroll {
                table {
                    thead { tr {
                        th { "Operation" } @if with_instance { th { "Instance" } } th { "State" } th { "Progress" }
                        th { "Started" } th { "By" } th { "Steps" } @if f.can_act { th { "" } }
                    } }
                    tbody {
                        @for op in ops {
                            tr data-op=(op.id) {
                                td { strong { (op.kind) } br; code.muted { (op.id) } }
                                @if with_instance { td { a href=(format!("/ui/instances/{}", op.instance)) { (op.instance) } } }
                                td { (badge(&op.state)) @if op.cancel_requested && op.is_live() { " cancelling" } @if !op.reason.is_empty() { br; span.muted { (op.reason) } } }
                                td { @if op.total > 0 { meter min="0" max=(op.total) value=(op.done.len()) aria-label="members done" {} " " (op.done.len()) "/" (op.total) } }
                                td { (ago(op.created_ms, f.now_ms)) }
                                td { (op.requested_by) }
                                td {
                                    details {
                                        summary { (op.steps.len()) " steps" }
                                        ol {
                                            @for st in &op.steps {
                                                li { (st.action) @if let Some(m) = &st.member { " " (m) } " — " (st.state) @if !st.reason.is_empty() { ": " (st.reason) } }
                                            }
                                        }
                                    }
                                }
                                @if f.can_act {
                                    td {
                                        @if op.is_live() && !op.cancel_requested {
                                            form.inline.act method="post" action=(format!("/ui/operations/{}/cancel", op.id)) {
                                                (csrf_field(f))
                                                input type="hidden" name="back" value=(if with_instance { String::new() } else { op.instance.clone() });
                                                button.small.danger.act type="submit" { "Cancel" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Batches as a table, newest first: progress, each instance's operation, cancel.
pub fn batches_table(f: &Frame, batches: &[views::Batch]) -> Markup {
    html! {
        @if batches.is_empty() {
            p.muted { "No batches." }
        } @else {
            div.scroll {
                table {
                    thead { tr {
                        th { "Batch" } th { "Selector" } th { "State" } th { "Progress" }
                        th { "Started" } th { "By" } th { "Instances" } @if f.can_act { th { "" } }
                    } }
                    tbody {
                        @for b in batches {
                            tr data-batch=(b.id) data-state=(b.state) {
                                td { strong { (b.kind) } br; code.muted { (b.id) } }
                                td { code { (b.selector) } br; span.muted { (b.max_parallel) " at once, stop after " (b.max_failures) " failed" } }
                                td { (badge(&b.state)) @if b.cancel_requested && b.is_live() { " cancelling" } }
                                td {
                                    meter min="0" max=(b.items.len()) value=(b.ended()) aria-label="instances done" {}
                                    " " (b.ended()) "/" (b.items.len()) br;
                                    span.muted {
                                        (b.count("succeeded")) " succeeded, " (b.count("running")) " running"
                                        @if b.count("failed") + b.count("cancelled") > 0 { ", " (b.count("failed") + b.count("cancelled")) " failed" }
                                        @if b.count("not_started") > 0 { ", " (b.count("not_started")) " not started" }
                                    }
                                }
                                td { (ago(b.created_ms, f.now_ms)) }
                                td { (b.requested_by) }
                                td {
                                    details {
                                        summary { (b.items.len()) @if b.items.len() == 1 { " instance" } @else { " instances" } }
                                        ol {
                                            @for i in &b.items {
                                                li data-instance=(i.instance) data-state=(i.state) {
                                                    a href=(format!("/ui/instances/{}", i.instance)) { (i.instance) }
                                                    " — " (i.state)
                                                    @if let Some(op) = &i.operation { " " code.muted { (op) } }
                                                    @if !i.reason.is_empty() { ": " (i.reason) }
                                                }
                                            }
                                        }
                                    }
                                }
                                @if f.can_act {
                                    td {
                                        @if b.is_live() && !b.cancel_requested {
                                            form.inline.act method="post" action=(format!("/ui/batches/{}/cancel", b.id)) {
                                                (csrf_field(f))
                                                button.small.danger.act type="submit" { "Cancel" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The form that starts a batch; `form` holds the values sent and the API's refusal.
fn batch_form(f: &Frame, form: &views::FormState) -> Markup {
    let val = |k: &str, default: &str| {
        form.values
            .get(k)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    };
    let field = |name: &str, label: &str, default: &str, kind: &str, hint: &str| {
        let id = format!("batch-{name}");
        let err = form.errors.get(name);
        let described = match err {
            Some(_) => format!("{id}-hint {id}-error"),
            None => format!("{id}-hint"),
        };
        html! {
            div.field {
                label for=(id) { (label) }
                input id=(id) name=(name) type=(kind) value=(val(name, default))
                    min=[(kind == "number").then_some("1")]
                    aria-invalid=[err.map(|_| "true")] aria-describedby=(described);
                p.hint id=(format!("{id}-hint")) { (hint) }
                @if let Some(e) = err { p.field-error id=(format!("{id}-error")) role="alert" { (e) } }
            }
        }
    };
    let kind = val("type", "restart");
    let type_err = form.errors.get("type");
    html! {
        form.stack.card method="post" action="/ui/batches" id="batch" novalidate {
            (csrf_field(f))
            (field("selector", "Instances with labels", "", "text", "A label selector: k=v,k2=v2, k, or k!=v; resolved when the batch starts. The instances list's label selector shows which instances it chooses."))
            div.field {
                label for="batch-type" { "Operation" }
                select id="batch-type" name="type" aria-invalid=[type_err.map(|_| "true")] {
                    @for t in views::BATCH_TYPES { option value=(t) selected[t == kind] { (t) } }
                }
                @if let Some(e) = type_err { p.field-error id="batch-type-error" role="alert" { (e) } }
            }
            (field("max_parallel", "At most at once", "1", "number", "1 to 100 operations running at the same time."))
            (field("max_failures", "Stop after failures", "1", "number", "No new operation starts once this many failed."))
            button.act type="submit" { "Start the batch" }
        }
    }
}

/// Running and recent (24 h) operations across instances, and the newest batches.
pub fn operations(
    f: &Frame,
    ops: &[views::Operation],
    batches: &[views::Batch],
    form: &views::FormState,
    flash: Option<&str>,
) -> Markup {
    let main = html! {
        h1 { "Operations" }
        @if let Some(m) = flash { p.flash role="status" { (m) } }
        p.hint { "Operations started in the last 24 hours (as the events name them), newest first, at most 50. Start one from its instance's page." }
        div id="operations" data-live { (operations_table(f, ops, true)) }
        h2 id="batches-heading" { "Batches" }
        p.hint { "One operation on every instance a label selector chooses, a few at a time; none started after too many failed. The newest " (BATCHES_SHOWN) "." }
        @if f.can_act { (batch_form(f, form)) }
        div id="batches" data-live { (batches_table(f, batches)) }
    };
    page(f, "Operations", Nav::Operations, true, main)
}

/// Batches the operations page lists.
pub const BATCHES_SHOWN: usize = 20;

/// A node's host use over the last ten minutes: CPU busy and memory used, each as a share of
/// the host's, drawn as two lines (live: the page polls), the newest figures under it.
fn usage_graph(n: &Node, now_ms: i64) -> Markup {
    let Some(last) = n.usage.last() else {
        return html! { span.muted { "not reported" } };
    };
    let (cpu, mem) = views::usage_lines(&n.usage, now_ms, 600_000, 120.0, 32.0);
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    let figures = format!(
        "CPU {:.1} of {} cores busy, memory {:.1} of {:.1} GiB used",
        last.cpu_cores_busy,
        last.cpu_cores,
        gib(last.memory_used_bytes),
        gib(last.memory_total_bytes)
    );
    html! {
        svg.usage viewBox="0 0 120 32" width="120" height="32" role="img"
            aria-label=(format!("{figures}; the last 10 minutes")) data-samples=(n.usage.len()) {
            rect.frame x="0" y="0" width="120" height="32" {}
            polyline.cpu points=(cpu) {}
            polyline.mem points=(mem) {}
        }
        br;
        span.muted { span.key-cpu { "CPU" } (format!(" {:.1}/{}", last.cpu_cores_busy, last.cpu_cores)) " · " span.key-mem { "mem" } (format!(" {:.1}/{:.1} GiB", gib(last.memory_used_bytes), gib(last.memory_total_bytes))) }
    }
}

/// The nodes page: capacity and reservations, and cordon/drain/uncordon for operators.
pub fn nodes(f: &Frame, nodes: &[Node], flash: Option<&str>) -> Markup {
    let main = html! {
        h1 { "Nodes" }
        @if let Some(m) = flash { p.flash role="status" { (m) } }
        div.scroll id="nodes" data-live {
            table {
                thead { tr { th { "Node" } th { "Zone" } th { "State" } th { "Heartbeat" } th.num { "Members" } th { "CPU reserved" } th { "Memory reserved" } th { "Disk reserved" } th { "Host use, 10 min" } th { "Agent" } @if f.can_act { th { "Actions" } } } }
                tbody {
                    @for n in nodes {
                        @let fill = views::node_fill(n);
                        tr {
                            td { (n.name) br; code.muted { (n.address) } }
                            td { (n.zone()) }
                            td { (badge(&n.state)) }
                            td { (ago(n.last_heartbeat_ms, f.now_ms)) }
                            td.num { (n.members) }
                            td { meter min="0" max="1" value=(format!("{:.3}", fill.cpu.fraction())) aria-label="CPU reserved" {} br; (format!("{:.1} / {:.1}", fill.cpu.used, fill.cpu.capacity)) }
                            td { meter min="0" max="1" value=(format!("{:.3}", fill.memory_mib.fraction())) aria-label="memory reserved" {} br; (format!("{:.0} / {:.0} MiB", fill.memory_mib.used, fill.memory_mib.capacity)) }
                            td { meter min="0" max="1" value=(format!("{:.3}", fill.disk_reserved_mib.fraction())) aria-label="disk reserved" {} br; (format!("{:.0} / {:.0} MiB", fill.disk_reserved_mib.used, fill.disk_reserved_mib.capacity)) }
                            td { (usage_graph(n, f.now_ms)) }
                            td { (n.agent_version) }
                            @if f.can_act {
                                td {
                                    @for (action, label) in [("cordon", "Cordon"), ("drain", "Drain"), ("uncordon", "Uncordon")] {
                                        @let shown = match action { "uncordon" => n.admin != "active", _ => n.admin == "active" };
                                        @if shown {
                                            form.inline.act method="post" action=(format!("/ui/nodes/{}/{action}", n.name)) {
                                                (csrf_field(f))
                                                button.small.act type="submit" { (label) }
                                            } " "
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(f, "Nodes", Nav::Nodes, true, main)
}

/// Links of a page of a log, newest first: to the newest page, the newer and the older one;
/// `link(cursor)` is the page's address with its filters and `cursor` (`before=`/`after=`).
fn log_pager<T>(page: &views::LogPage<'_, T>, link: impl Fn(&str) -> String) -> Markup {
    html! {
        @if page.newer.is_some() || page.older.is_some() {
            nav.pager aria-label="Pages" {
                @if let Some(a) = page.newer {
                    a href=(link("")) { "Newest" } " "
                    a href=(link(&format!("after={a}"))) rel="prev" { "Newer" } " "
                }
                @if let Some(b) = page.older { a href=(link(&format!("before={b}"))) rel="next" { "Older" } }
            }
        }
    }
}

/// The events of the last 24 hours (as this scheduler has read them), filtered, a page.
pub fn events(
    f: &Frame,
    log: &views::LogPage<'_, Event>,
    matching: Option<usize>,
    filter: &views::EventFilter,
) -> Markup {
    let link = |cursor: &str| {
        format!(
            "/ui/events?instance={}&kind={}&{cursor}",
            encode_query(&filter.instance),
            encode_query(&filter.kind)
        )
    };
    let evs: Vec<Event> = log.items.iter().map(|e| (*e).clone()).collect();
    let main = html! {
        h1 { "Events" }
        form.filters method="get" action="/ui/events" role="search" {
            div.field { label for="instance" { "Instance" } input id="instance" name="instance" type="search" value=(filter.instance); }
            div.field { label for="kind" { "Kind" } input id="kind" name="kind" type="search" value=(filter.kind); }
            button type="submit" { "Filter" }
        }
        p.hint { "Newest first, " (LOG_ROWS) " a page: the last 24 hours live, then older ones from the store (" code { "mofang events --before ID" } ")." }
        div id="events" data-live {
            p.muted {
                @match matching { Some(n) => { (n) " events in the last 24 hours" }, None => { "Older events, from the store" } }
                @if let (Some(a), Some(b)) = (log.items.first(), log.items.last()) { " · this page: " (utc(b.at_ms)) " to " (utc(a.at_ms)) }
            }
            (event_rows(&evs, f.now_ms, true))
            (log_pager(log, link))
        }
    };
    page(f, "Events", Nav::Events, true, main)
}

/// The audit log (admins), newest first, a page.
pub fn audit(
    f: &Frame,
    log: &views::LogPage<'_, AuditEntry>,
    matching: Option<usize>,
    q: &str,
) -> Markup {
    let link = |cursor: &str| format!("/ui/audit?q={}&{cursor}", encode_query(q));
    let main = html! {
        h1 { "Audit log" }
        form.filters method="get" action="/ui/audit" role="search" {
            div.field { label for="q" { "Who, action or target" } input id="q" name="q" type="search" value=(q); }
            button type="submit" { "Filter" }
        }
        p.hint { "Newest first, " (LOG_ROWS) " a page: the newest 10,000 entries, then older ones from the store (" code { "mofang audit --before ID" } ")." }
        p.muted { @match matching { Some(n) => { (n) " of the newest entries" }, None => { "Older entries, from the store" } } }
        div.scroll id="audit" {
            table {
                thead { tr { th { "Time" } th { "Who" } th { "Source" } th { "Action" } th { "Target" } th.num { "Status" } th { "Result" } } }
                tbody {
                    @for e in &log.items {
                        tr data-id=(e.id) { td { (utc(e.at_ms)) } td { (e.who) } td { code { (e.source) } } td { code { (e.action) } } td { (e.target) } td.num { (e.status) } td { (e.result) } }
                    }
                }
            }
        }
        (log_pager(log, link))
    };
    page(f, "Audit", Nav::Audit, false, main)
}

/// Rows of the backups page's "needs attention" table at most (the filter finds the rest).
pub const ATTENTION_ROWS: usize = 100;

/// The fleet-wide backups page: instances whose backups fail, are overdue or failed
/// verification (worst first), then every backup the filters keep (failed first), paged.
pub fn backups(
    f: &Frame,
    fleet: &views::FleetBackups,
    filter: &views::BackupFilter,
    page_no: usize,
) -> Markup {
    let (page_no, pages, shown) = views::page_of(&fleet.backups, page_no, PAGE_SIZE);
    let link = |n: usize| {
        format!(
            "/ui/backups?instance={}&status={}&page={n}",
            encode_query(&filter.instance),
            encode_query(&filter.status)
        )
    };
    let statuses: Vec<String> = views::BACKUP_STATUSES
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let main = html! {
        h1 { "Backups" }
        p.hint { "Every instance's backups. Failing: the newest finished backup failed; overdue: a scheduled backup over "
            (views::OVERDUE_AFTER_S / 60) " minutes past its slot with no success since (the alerts' thresholds). "
            "Back up and restore from an instance's page." }
        form.filters method="get" action="/ui/backups" role="search" {
            div.field { label for="instance" { "Instance" } input id="instance" name="instance" type="search" value=(filter.instance); }
            (select("status", "Status", &filter.status, &statuses))
            button type="submit" { "Filter" }
        }
        div id="backup-health" data-live {
            p {
                @for (st, n) in &fleet.counts {
                    span class=(format!("badge {}", st.label())) data-standing=(st.label()) { (st.label()) " " (n) } " "
                }
                @if fleet.counts.is_empty() { span.muted { "No instances." } }
            }
            h2 { "Needing attention (" (fleet.attention.len()) ")" }
            @if fleet.attention.is_empty() {
                p.muted { "None: no backup failing, overdue or failing verification." }
            } @else {
                div.scroll {
                    table {
                        thead { tr { th { "Instance" } th { "Standing" } th { "Last success" } th { "Schedule" } th.num { "Overdue" } th.num { "Backups" } } }
                        tbody {
                            @for (st, h) in fleet.attention.iter().take(ATTENTION_ROWS) {
                                tr data-instance=(h.instance) data-standing=(st.label()) {
                                    td { a href=(format!("/ui/instances/{}", h.instance)) { (h.instance) } }
                                    td { (badge(st.label())) }
                                    td { (ago(h.last_success_ms.unwrap_or(0), f.now_ms)) }
                                    td { @if let Some(c) = &h.schedule { code { (c) } } @else { span.muted { "none" } } }
                                    td.num { @if let Some(o) = h.overdue_s.filter(|o| *o > 0) { (lag(o)) } }
                                    td.num { (h.backups) }
                                }
                            }
                        }
                    }
                }
                @if fleet.attention.len() > ATTENTION_ROWS { p.muted { "The first " (ATTENTION_ROWS) " shown: filter by instance for the others." } }
            }
        }
        h2 { "All backups" }
        div id="fleet-backups" data-live {
            p.muted { (fleet.backups.len()) " backups: failed first, then failed verifications, then those of failing and overdue instances, newest first" }
            (backup_table(f, shown, true))
            (pager(page_no, pages, link))
        }
    };
    page(f, "Backups", Nav::Backups, true, main)
}

/// The overview's backup and archive figures.
fn backup_cards(s: &views::BackupSummary) -> Markup {
    let names = |list: &[String]| {
        html! {
            @for (k, n) in list.iter().take(8).enumerate() {
                @if k > 0 { ", " } a href=(format!("/ui/instances/{n}")) { (n) }
            }
            @if list.len() > 8 { " …" }
        }
    };
    let overdue: Vec<String> = s.overdue.iter().map(|(n, _)| n.clone()).collect();
    let lagging: Vec<String> = s.lagging.iter().map(|(n, _)| n.clone()).collect();
    html! {
        div.card id="backup-figures" {
            h2 { a href="/ui/backups" { "Backups" } }
            table {
                tr { td { "failing" } td.num.bad[!s.failing.is_empty()] id="backups-failing" { (s.failing.len()) } td { (names(&s.failing)) } }
                tr { td { "overdue (over " (views::OVERDUE_AFTER_S / 60) " min)" } td.num.bad[!s.overdue.is_empty()] id="backups-overdue" { (s.overdue.len()) } td { (names(&overdue)) } }
                tr { td { "verification failed" } td.num.bad[!s.verify_failed.is_empty()] id="backups-verify-failed" { (s.verify_failed.len()) } td { (names(&s.verify_failed)) } }
            }
        }
        div.card id="archive-figures" {
            h2 { "PITR archives (" (s.archiving) ")" }
            table {
                tr { td { "lagging (over " (views::ARCHIVE_LAG_AFTER_S / 60) " min)" } td.num.bad[!s.lagging.is_empty()] id="archives-lagging" { (s.lagging.len()) } td { (names(&lagging)) } }
                tr { td { "largest lag" } td.num id="archive-worst-lag" { @match &s.worst_lag { Some((_, l)) => (lag(*l)), None => "-" } }
                    td { @if let Some((n, _)) = &s.worst_lag { a href=(format!("/ui/instances/{n}")) { (n) } } } }
            }
        }
    }
}
