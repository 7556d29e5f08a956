//! The web console in a real browser against the real daemons: headless Chromium (Debian's
//! `chromium`, driven through `chromedriver` over WebDriver) signs in to a real scheduler
//! with real agents and MariaDB, creates an instance through the form, switches over from
//! the instance page, watches a `docker kill` failover on the diagram and in the events, and
//! checks the refusals (a viewer, a form without its CSRF token). It takes a screenshot of
//! each page (to `$MOFANG_SCREENSHOTS`, docs/console.md) and checks each page's weight.
//!
//! One test, one environment: the scenarios run in order on one cluster to keep wall time
//! small.

use anyhow::{bail, Context, Result};
use fantoccini::{Client, ClientBuilder, Locator};
use mofang_scheduler::client::NewBackupRepo;
use mofang_scheduler::cluster::NodeView2;
use mofang_tests::scenario::{container_of, docker_cli, primary_of, replica_of, Env};
use mofang_tests::{eventually, unique_name};
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Fast failover (as tests/tests/failover.rs), two tokens (an admin and a viewer), and binlogs
/// archived every 2 s so the point-in-time window shows soon after a backup.
const ADMIN_TOKEN: &str = "console-admin-token-0123456789";
const VIEWER_TOKEN: &str = "console-viewer-token-0123456789";

fn config() -> String {
    format!(
        "[failover]\nlease_ttl_ms = 2000\nreplace_after_ms = 8000\n\
         [[tokens]]\nname = \"console-admin\"\nrole = \"admin\"\nsecret = \"{ADMIN_TOKEN}\"\n\
         [[tokens]]\nname = \"console-viewer\"\nrole = \"viewer\"\nsecret = \"{VIEWER_TOKEN}\"\n\
         [backup]\narchive_interval_s = 2\n"
    )
}

/// Largest HTML+CSS+JS of one page (issue 18).
const PAGE_BUDGET: usize = 200 * 1024;

/// chromedriver on a free loopback port, and a headless Chromium session through it.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Result<Browser> {
        let port = mofang_tests::coord::free_port()?;
        // chromedriver and the Chromium it starts in a process group of their own, so that
        // dropping the browser ends both (killing chromedriver alone left Chromium and its
        // renderers running for the rest of the suite).
        let driver = Command::new("chromedriver")
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("chromedriver (Debian's chromium-driver; scripts/setup test)")?;
        let profile = tempfile::Builder::new()
            .prefix("mofang-chromium-")
            .tempdir()?;
        let caps = json!({
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--ignore-certificate-errors", "--window-size=1280,800", "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => bail!("capabilities"),
        };
        let url = format!("http://127.0.0.1:{port}");
        let mut browser = None;
        for _ in 0..50 {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => {
                    browser = Some(c);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        let client = browser.context("no WebDriver session from chromedriver")?;
        client.set_window_size(1280, 800).await?;
        Ok(Browser {
            client,
            driver,
            _profile: profile,
        })
    }

    /// Where the browser is and what `main` says (for failure messages).
    async fn dump(&self) -> String {
        let at = self.path().await.unwrap_or_default();
        let main = self.text("main").await.unwrap_or_default();
        format!("at {at}: {}", main.chars().take(3000).collect::<String>())
    }

    /// An attribute of the first element matching `css`, read in one step (live regions are
    /// replaced every 2 s: an element found first may be gone when it is read).
    async fn attr(&self, css: &str, name: &str) -> Result<Option<String>> {
        let v = self
            .client
            .execute(
                "const e = document.querySelector(arguments[0]);
                 return e ? e.getAttribute(arguments[1]) : null;",
                vec![json!(css), json!(name)],
            )
            .await?;
        Ok(v.as_str().map(str::to_owned))
    }

    /// Text of the first element matching `css`, read in one step (see [`Browser::attr`]).
    async fn text(&self, css: &str) -> Result<String> {
        let v = self
            .client
            .execute(
                "const e = document.querySelector(arguments[0]);
                 return e ? e.innerText : null;",
                vec![json!(css)],
            )
            .await?;
        v.as_str()
            .map(str::to_owned)
            .with_context(|| format!("no {css} on the page"))
    }

    async fn count(&self, css: &str) -> Result<usize> {
        Ok(self.client.find_all(Locator::Css(css)).await?.len())
    }

    async fn fill(&self, id: &str, value: &str) -> Result<()> {
        let e = self.client.find(Locator::Id(id)).await?;
        e.clear().await?;
        e.send_keys(value).await?;
        Ok(())
    }

    async fn path(&self) -> Result<String> {
        let u = self.client.current_url().await?;
        Ok(match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        })
    }

    /// Whether the page is Chromium's network error page. Chromium aborts every load under
    /// way when the host's addresses change (ERR_NETWORK_CHANGED), and Docker changes them
    /// whenever a container starts (its veth gets an address); other tests start containers
    /// all the time. So navigations are retried, and forms resubmitted unless the server
    /// did what they ask (the answer was lost, not the request).
    async fn net_error(&self) -> Result<bool> {
        let v = self
            .client
            .execute(
                "return !!document.getElementById('main-frame-error') \
                 || (!!document.body && document.body.classList.contains('neterror'));",
                vec![],
            )
            .await?;
        Ok(v == json!(true))
    }

    /// Loads `url`, again while Chromium shows its network error page.
    async fn goto(&self, url: &str) -> Result<()> {
        for _ in 0..10 {
            self.client.goto(url).await?;
            if !self.net_error().await? {
                return Ok(());
            }
            eprintln!("{url}: Chromium's network error page (a network change); loading again");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        bail!("{url}: network error page ten times")
    }

    /// Clicks `css` and waits for the next page to have loaded.
    async fn click_and_wait(&self, css: &str) -> Result<()> {
        self.client
            .execute("window.mofangOldPage = true; return null;", vec![])
            .await?;
        self.client.find(Locator::Css(css)).await?.click().await?;
        eventually("the next page", Duration::from_secs(60), || async {
            let v = self
                .client
                .execute(
                    "return window.mofangOldPage === undefined && document.readyState === 'complete';",
                    vec![],
                )
                .await?;
            if v == json!(true) {
                Ok(())
            } else {
                bail!("still loading")
            }
        })
        .await
    }

    /// Submits the form of button `css` (already filled) and waits for the next page. When
    /// Chromium aborted it, asks `done` whether the server did it anyway (then loads
    /// `landing`), else loads `form_page`, fills the form as it was and submits again.
    async fn submit_checked(
        &self,
        css: &str,
        form_page: &str,
        done: impl AsyncFn() -> Result<bool>,
        landing: &str,
    ) -> Result<()> {
        let fields = self
            .client
            .execute(
                "return Array.from(document.querySelector(arguments[0]).form.elements)
                   .filter(e => e.name && e.type !== 'hidden').map(e => [e.name, e.value]);",
                vec![json!(css)],
            )
            .await?;
        for attempt in 0..6 {
            if attempt > 0 {
                if done().await? {
                    return self.goto(landing).await;
                }
                self.goto(form_page).await?;
                self.client
                    .execute(
                        "const [css, fields] = arguments;
                         const f = document.querySelector(css).form;
                         for (const [n, v] of fields) { const e = f.elements.namedItem(n); if (e) { e.value = v; } }
                         return null;",
                        vec![json!(css), fields.clone()],
                    )
                    .await?;
            }
            self.click_and_wait(css).await?;
            if !self.net_error().await? {
                return Ok(());
            }
            eprintln!("{css}: Chromium's network error page (a network change); again");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        bail!("{css}: network error page six times")
    }

    /// [`Browser::submit_checked`] for a form whose effect is harmless to repeat (or that
    /// changes nothing), posted from the page the browser is on.
    async fn submit(&self, css: &str) -> Result<()> {
        let here = self.client.current_url().await?.to_string();
        self.submit_checked(css, &here, async || Ok(false), &here)
            .await
    }

    /// Signs in with `token` on the sign-in page the browser is on.
    async fn sign_in(&self, token: &str) -> Result<()> {
        self.fill("token", token).await?;
        self.submit("#login button[type=submit]").await
    }

    /// Runs `script` (async, its result passed to the last argument) until it gives a
    /// number: a fetch aborted by a network change gives a TypeError.
    async fn fetch_number(&self, script: &str, args: Vec<Value>) -> Result<u64> {
        let mut last = Value::Null;
        for _ in 0..10 {
            last = self.client.execute_async(script, args.clone()).await?;
            if let Some(n) = last.as_u64() {
                return Ok(n);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        bail!("{args:?}: {last}")
    }

    /// A hand-made POST from the page (the browser's cookies go with it): its HTTP status.
    async fn post(&self, path: &str, body: &str) -> Result<u64> {
        self.fetch_number(
            "const [path, body, done] = arguments;
             fetch(path, {method: 'POST', body: body, credentials: 'same-origin',
               headers: {'Content-Type': 'application/x-www-form-urlencoded'}})
               .then(r => done(r.status)).catch(e => done(String(e)));",
            vec![json!(path), json!(body)],
        )
        .await
    }

    /// Bytes of a GET of `path` with the browser's session.
    async fn size(&self, path: &str) -> Result<usize> {
        let n = self
            .fetch_number(
                "const [path, done] = arguments;
                 fetch(path, {credentials: 'same-origin', cache: 'no-store'}).then(r => r.arrayBuffer())
                   .then(b => done(b.byteLength)).catch(e => done(String(e)));",
                vec![json!(path)],
            )
            .await?;
        Ok(n as usize)
    }

    /// Saves a screenshot as `<name>.png` under `$MOFANG_SCREENSHOTS` (or the test's
    /// target directory).
    async fn shot(&self, name: &str) -> Result<()> {
        let dir = std::env::var_os("MOFANG_SCREENSHOTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console"));
        std::fs::create_dir_all(&dir)?;
        let png = self.client.screenshot().await?;
        std::fs::write(dir.join(format!("{name}.png")), png)?;
        Ok(())
    }

    /// Opens folded details, scrolls element `id` (and its heading) to the top of the window,
    /// then takes a screenshot.
    async fn shot_at(&self, name: &str, id: &str) -> Result<()> {
        self.client
            .execute(
                "document.querySelectorAll('details').forEach(d => { d.open = true; });
                 document.getElementById(arguments[0]).scrollIntoView();
                 window.scrollBy(0, -48); return null;",
                vec![json!(id)],
            )
            .await?;
        self.shot(name).await
    }

    /// The connection banner's text while it shows (`None`: hidden).
    async fn banner(&self) -> Result<Option<String>> {
        let v = self
            .client
            .execute(
                "const e = document.getElementById('conn-banner');
                 return e && !e.hidden ? e.textContent : null;",
                vec![],
            )
            .await?;
        Ok(v.as_str().map(str::to_owned))
    }

    /// Waits up to `secs` for the connection banner; its text.
    async fn wait_banner(&self, what: &str, secs: u64) -> Result<String> {
        let r = eventually(what, Duration::from_secs(secs), || async {
            self.banner().await?.context("no banner yet")
        })
        .await;
        explain(self, r).await
    }

    /// Whether the page fits the window's width (no sideways scrolling of the page).
    async fn fits_width(&self) -> Result<bool> {
        let v = self
            .client
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
                vec![],
            )
            .await?;
        Ok(v == json!(true))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Whether instance `name` exists (and is not being deleted).
async fn exists(env: &Env, name: &str) -> Result<bool> {
    match env.client().instance(name).await {
        Ok(v) => Ok(v.status != "deleting"),
        // Refused (not found, or no answer from the leader): not there as far as one can tell.
        Err(e) if e.status().is_some() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// How many operations instance `name` has.
async fn operations(env: &Env, name: &str) -> Result<usize> {
    Ok(env.client().operations(name).await?.len())
}

/// `r`, or its error with where the browser is and what the page says.
async fn explain<T>(b: &Browser, r: Result<T>) -> Result<T> {
    match r {
        Ok(v) => Ok(v),
        Err(e) => bail!("{e:#}\n{}", b.dump().await),
    }
}

/// Waits until the instance page the browser is on shows the status `ready` by itself.
async fn wait_ready(b: &Browser, what: &str, secs: u64) -> Result<()> {
    let r = eventually(what, Duration::from_secs(secs), || async {
        let s = b.text("#status").await?;
        if s == "ready" {
            Ok(())
        } else {
            bail!("status {s}")
        }
    })
    .await;
    explain(b, r).await
}

/// Submits the create (or restore) form the browser is on, filled, for instance `name`
/// (opening `form_page` again if Chromium lost the answer), and waits on the new instance's
/// page until it is ready.
async fn create_from_form(b: &Browser, env: &Env, form_page: &str, name: &str) -> Result<()> {
    let landing = format!("/ui/instances/{name}?done=created");
    let base = b.client.current_url().await?;
    let landing_url = base.join(&landing)?.to_string();
    b.submit_checked(
        "#create button[type=submit]",
        form_page,
        async || exists(env, name).await,
        &landing_url,
    )
    .await?;
    assert_eq!(b.path().await?, landing);
    wait_ready(b, &format!("{name} is ready"), 180).await
}

/// The member id the topology diagram shows as primary.
async fn diagram_primary(b: &Browser) -> Result<String> {
    b.attr("#topology .member.primary", "data-member")
        .await?
        .context("no primary on the diagram")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() -> Result<()> {
    mofang_tests::init_tracing();
    let env = Env::start_with(3, &config()).await?;
    let base = env.sched.rest.clone();
    let b = Browser::start().await?;
    let ui = |p: &str| format!("{base}{p}");

    // Sign in: a page asked without a session goes to sign-in and comes back after it.
    b.goto(&ui("/ui/nodes")).await?;
    let at = b.path().await?;
    if at != "/ui/login?next=/ui/nodes" {
        bail!("at {at}: {}", b.client.source().await?);
    }
    b.shot("login").await?;
    b.sign_in("not-a-token-at-all-000").await?;
    assert!(b.text(".error").await?.contains("not known"));
    b.sign_in(ADMIN_TOKEN).await?;
    assert_eq!(b.path().await?, "/ui/nodes");
    assert_eq!(b.count("#nodes tbody tr").await?, 3, "three nodes listed");

    // A bad form value: the API's reason next to the field, nothing created.
    let name = unique_name("console");
    b.goto(&ui("/ui/instances/new")).await?;
    b.fill("name", &name).await?;
    b.fill("replicas", "9").await?;
    b.submit("#create button[type=submit]").await?;
    let why = b.text("#replicas-error").await?;
    assert!(why.contains("at most 8"), "{why}");
    assert_eq!(
        b.client
            .find(Locator::Id("replicas"))
            .await?
            .attr("aria-invalid")
            .await?
            .as_deref(),
        Some("true")
    );
    b.shot("create-error").await?;
    let r = env.client().instance(&name).await;
    assert!(
        r.as_ref().is_err_and(|e| e.is_not_found()),
        "nothing created: {r:?}"
    );

    // Create a MariaDB instance with one replica through the form; the page turns ready by
    // itself (live updates).
    b.fill("replicas", "1").await?;
    b.fill("labels", "team=console").await?;
    let page = ui(&format!("/ui/instances/{name}"));
    b.submit_checked(
        "#create button[type=submit]",
        &ui("/ui/instances/new"),
        async || exists(&env, &name).await,
        &format!("{page}?done=created"),
    )
    .await?;
    let at = b.path().await?;
    if at != format!("/ui/instances/{name}?done=created") {
        bail!("create: at {at}: {}", b.text("main").await?);
    }
    explain(
        &b,
        eventually(
            "the instance page shows ready",
            Duration::from_secs(180),
            || async {
                let s = b.text("#status").await?;
                if s == "ready" && b.count("#topology .member").await? == 2 {
                    Ok(())
                } else {
                    bail!("status {s}")
                }
            },
        )
        .await,
    )
    .await?;
    assert!(b.count("form.act").await? >= 2, "an admin has actions");
    b.shot("instance").await?;

    // Switch over to the replica from the instance page; the diagram follows.
    let inst = env.instance(&name).await?;
    let old = diagram_primary(&b).await?;
    assert_eq!(primary_of(&inst)?.id, old);
    let target = replica_of(&inst)?.id.clone();
    b.client
        .find(Locator::Id("target"))
        .await?
        .select_by_value(&target)
        .await?;
    b.submit_checked(
        "#switchover button[type=submit]",
        &page,
        // The request reached the scheduler when the switchover has begun (its first write
        // fences the primary with this event); submitting again would race the first.
        async || {
            let events = env.instance_events(&name).await?;
            Ok(events.iter().any(|e| e.kind == "switchover_started"))
        },
        &format!("{page}?done=switchover"),
    )
    .await?;
    // When Chromium lost the form's answer, the landing page may load while the target is
    // still promoting (the spec names it primary first); the events list follows live.
    explain(
        &b,
        eventually(
            "the diagram shows the new primary and the events its completion",
            Duration::from_secs(60),
            || async {
                let p = diagram_primary(&b).await?;
                let done = b
                    .count("#events li[data-kind=switchover_completed]")
                    .await?;
                if p == target && done >= 1 {
                    Ok(())
                } else {
                    bail!("primary {p}, switchover_completed events {done}")
                }
            },
        )
        .await,
    )
    .await?;
    b.shot("instance-switched-over").await?;
    // The old primary back as a healthy replica first: until then no replica could take
    // over, and the scheduler restarts a killed primary in place instead.
    explain(
        &b,
        eventually(
            "the old primary replicates again",
            Duration::from_secs(90),
            || async {
                let v = env.instance(&name).await?;
                let m = v
                    .members
                    .iter()
                    .find(|m| m.id == old)
                    .context("the old primary")?;
                if m.role == "replica"
                    && m.healthy
                    && m.observed_role == "replica"
                    && m.lag_seconds == 0
                {
                    Ok(())
                } else {
                    bail!("{m:?}")
                }
            },
        )
        .await,
    )
    .await?;

    // Kill the primary's container: the open page shows the failover on the diagram and in
    // the events, without a reload.
    let killed = diagram_primary(&b).await?;
    docker_cli(&["kill", &container_of(&killed)])?;
    explain(
        &b,
        eventually(
            "the diagram shows the failover",
            Duration::from_secs(90),
            || async {
                let p = diagram_primary(&b).await?;
                let done = b.count("#events li[data-kind=failover_completed]").await?;
                if p != killed && done >= 1 {
                    Ok(())
                } else {
                    bail!("primary {p}, failover_completed events {done}")
                }
            },
        )
        .await,
    )
    .await?;
    b.shot("instance-after-failover").await?;
    b.shot_at("instance-events", "events").await?;

    // A day-2 operation from the instance page: a rolling restart, its steps shown as they
    // happen.
    wait_ready(&b, "ready again after the failover", 90).await?;
    b.client
        .find(Locator::Id("op-type"))
        .await?
        .select_by_value("restart")
        .await?;
    b.submit_checked(
        "#operation button[type=submit]",
        &page,
        async || Ok(operations(&env, &name).await? > 0),
        &format!("{page}?done=operation"),
    )
    .await?;
    explain(
        &b,
        eventually(
            "the restart succeeds on the page",
            Duration::from_secs(120),
            || async {
                let state = b.text("#operations tbody tr:first-child .badge").await?;
                if state == "succeeded" {
                    Ok(())
                } else {
                    bail!("operation {state}")
                }
            },
        )
        .await,
    )
    .await?;
    b.shot_at("instance-operations", "operations").await?;

    // Reconfigure with the engine's catalogue on the page: a value out of range is refused
    // next to its parameter, nothing started; one in range is applied (live).
    let before = operations(&env, &name).await?;
    b.goto(&page).await?;
    let row = b
        .text("#reconfigure tr[data-param=innodb_log_buffer_size]")
        .await?;
    assert!(row.contains("restart"), "{row}");
    b.fill("param-max_connections", "5").await?;
    b.submit("#reconfigure button[type=submit]").await?;
    let why = b.text("#param-max_connections-error").await?;
    assert!(why.contains("10 ..= 10000"), "{why}");
    b.shot_at("reconfigure-error", "reconfigure").await?;
    assert_eq!(operations(&env, &name).await?, before, "nothing started");
    b.fill("param-max_connections", "300").await?;
    b.submit_checked(
        "#reconfigure button[type=submit]",
        &page,
        async || Ok(operations(&env, &name).await? > before),
        &format!("{page}?done=operation"),
    )
    .await?;
    explain(
        &b,
        eventually(
            "the reconfigure succeeds on the page",
            Duration::from_secs(120),
            || async {
                let row = b.text("#operations tbody tr:first-child").await?;
                if row.contains("reconfigure") && row.contains("succeeded") {
                    Ok(())
                } else {
                    bail!("{row}")
                }
            },
        )
        .await,
    )
    .await?;
    let v = env.instance(&name).await?;
    assert_eq!(
        v.parameters.get("max_connections").map(String::as_str),
        Some("300"),
        "{v:?}"
    );
    b.goto(&page).await?;
    assert!(b
        .text("#reconfigure tr[data-param=max_connections]")
        .await?
        .contains("300"));

    // A batch from the operations page: a rolling restart of every instance labelled
    // team=console (this one), its progress following live; the instance ready after it.
    let ops_page = ui("/ui/operations");
    b.goto(&ops_page).await?;
    b.fill("batch-selector", "team=console").await?;
    b.submit_checked(
        "#batch button[type=submit]",
        &ops_page,
        async || Ok(!env.client().batches(None).await?.is_empty()),
        &format!("{ops_page}?done=batch"),
    )
    .await?;
    explain(
        &b,
        eventually(
            "the batch succeeds on the page",
            Duration::from_secs(180),
            || async {
                let row = "#batches tbody tr:first-child";
                let state = b.attr(row, "data-state").await?.unwrap_or_default();
                let item = b
                    .attr(&format!("{row} li[data-instance={name}]"), "data-state")
                    .await?
                    .unwrap_or_default();
                if state == "succeeded" && item == "succeeded" {
                    Ok(())
                } else {
                    bail!("batch {state}, {name} {item}")
                }
            },
        )
        .await,
    )
    .await?;
    b.shot_at("operations-batches", "batches-heading").await?;
    let v = env.client().batches(None).await?;
    let newest = v.first().context("a batch")?;
    assert_eq!(newest.selector, "team=console", "{v:?}");
    assert_eq!(newest.items.len(), 1, "{v:?}");
    b.goto(&page).await?;
    wait_ready(&b, "ready after the batch", 90).await?;

    // Back up from the instance page into a directory repository, then restore that backup
    // into a new instance from the timeline.
    let repo_dir = tempfile::Builder::new()
        .prefix("mofang-console-repo-")
        .tempdir_in("/var/tmp")?;
    env.client()
        .add_backup_repo(&NewBackupRepo {
            name: "local".into(),
            kind: "fs".into(),
            path: Some(repo_dir.path().display().to_string()),
            ..NewBackupRepo::default()
        })
        .await
        .context("backup repository")?;
    b.goto(&ui(&format!("/ui/instances/{name}"))).await?;
    b.client
        .find(Locator::Id("repo"))
        .await?
        .select_by_value("local")
        .await?;
    b.submit_checked(
        "#backup button[type=submit]",
        &page,
        async || Ok(!env.client().backups(&name).await?.is_empty()),
        &format!("{page}?done=backup"),
    )
    .await?;
    explain(
        &b,
        eventually(
            "the backup succeeds on the timeline",
            Duration::from_secs(120),
            || async {
                match b.count("#backups tr[data-state=succeeded]").await? {
                    0 => bail!("{}", b.text("#backups").await?),
                    _ => Ok(()),
                }
            },
        )
        .await,
    )
    .await?;
    assert!(
        b.count("#pitr-axis g.mark.succeeded").await? >= 1,
        "the backup on the time axis"
    );
    let restore_link = b
        .attr("#backups tr[data-state=succeeded] a.act", "href")
        .await?
        .context("the restore link")?;
    b.goto(&restore_link).await?;
    explain(
        &b,
        eventually("the restore form", Duration::from_secs(30), || async {
            b.client
                .find(Locator::Css("#create input[name=restore_from]"))
                .await?;
            Ok(())
        })
        .await,
    )
    .await?;
    let restored = unique_name("restored");
    b.fill("name", &restored).await?;
    b.fill("replicas", "0").await?;
    b.shot("restore-form").await?;
    create_from_form(&b, &env, &restore_link, &restored).await?;
    let v = env.instance(&restored).await?;
    assert!(
        v.restored_from
            .as_deref()
            .is_some_and(|b| b.starts_with(&name)),
        "{v:?}"
    );
    env.client()
        .delete_instance(&restored)
        .await
        .with_context(|| format!("delete {restored}"))?;

    // Point-in-time: rows written after the backup are archived; the window shows on the
    // time axis by itself. A time picked outside it: the API's reason next to the time
    // field, nothing created; the latest point (prefilled): restored, ready.
    {
        use mysql_async::prelude::Queryable;
        let v = env.instance(&name).await?;
        let p = primary_of(&v)?;
        let password = env.app_password(&name).await?;
        let mut c = mofang_tests::scenario::mysql(&p.address, &password).await?;
        c.query_drop("CREATE TABLE IF NOT EXISTS picked (id INT PRIMARY KEY)")
            .await?;
        c.query_drop("INSERT INTO picked VALUES (1), (2), (3)")
            .await?;
    }
    b.goto(&page).await?;
    explain(
        &b,
        eventually(
            "the PITR window on the time axis",
            Duration::from_secs(90),
            || async {
                match b.attr("#pitr-window", "data-to").await? {
                    Some(to) => Ok(to),
                    None => bail!("{}", b.text("#backups").await?),
                }
            },
        )
        .await,
    )
    .await?;
    b.shot_at("instance-backups", "backup").await?;
    // The picker is outside the live region: the page loaded again to have it.
    b.goto(&page).await?;
    let latest = b
        .attr("#pitr-time", "value")
        .await?
        .context("the time picker, prefilled")?;
    let set_time = async |id: &str, value: &str| -> Result<()> {
        b.client
            .execute(
                "document.getElementById(arguments[0]).value = arguments[1]; return null;",
                vec![json!(id), json!(value)],
            )
            .await?;
        Ok(())
    };
    set_time("pitr-time", "2000-01-01T00:00:00").await?;
    b.submit("#restore-time button[type=submit]").await?;
    let at_time = unique_name("attime");
    b.fill("name", &at_time).await?;
    b.fill("replicas", "0").await?;
    b.submit("#create button[type=submit]").await?;
    let why = b.text("#time-error").await?;
    assert!(why.contains("outside the point-in-time window"), "{why}");
    b.shot("restore-time-error").await?;
    assert!(!exists(&env, &at_time).await?, "nothing created");
    set_time("time", &latest).await?;
    let form_page = ui(&format!(
        "/ui/instances/new?restore_from={name}&time={latest}"
    ));
    create_from_form(&b, &env, &form_page, &at_time).await?;
    env.client()
        .delete_instance(&at_time)
        .await
        .with_context(|| format!("delete {at_time}"))?;

    // Every instance's backups on one page; the overview's backup figures.
    b.goto(&ui("/ui/backups")).await?;
    assert!(
        b.count(&format!("#fleet-backups tr[data-backup^='{name}-']"))
            .await?
            >= 1,
        "the backup on the fleet page"
    );
    b.goto(&ui("/ui")).await?;
    assert_eq!(b.text("#backups-failing").await?, "0");
    assert!(b.text("#archive-figures").await?.contains("PITR archives"));
    b.goto(&page).await?;

    // An admin reveals the credentials on request; the reveal is audited.
    b.submit("#credentials button[type=submit]").await?;
    let shown = b.text("#credentials-shown").await?;
    let app = env.app_password(&name).await?;
    assert!(shown.contains(&app), "the app password is shown");
    b.goto(&page).await?;
    assert_eq!(b.count("#credentials-shown").await?, 0, "shown once");

    // A form without its CSRF token is refused, and nothing changes.
    let epoch = env.instance(&name).await?.epoch;
    let status = b
        .post(&format!("/ui/instances/{name}/switchover"), "target=")
        .await?;
    assert_eq!(status, 403, "a switchover form without its CSRF token");
    assert_eq!(env.instance(&name).await?.epoch, epoch);

    // The nodes page draws each host's use of the last minutes, live: by now (minutes into
    // the test, a sample per 10 s) several samples, CPU within the host's cores and memory
    // within what is installed, as the API gives them.
    let nodes: Vec<NodeView2> = env.client().nodes_with_history().await?;
    for n in &nodes {
        assert!(n.usage.len() >= 3, "{n:?}");
        for s in &n.usage {
            let cores = f64::from(s.cpu_cores);
            let busy = s.cpu_cores_busy;
            let (used, total) = (s.memory_used_bytes, s.memory_total_bytes);
            assert!(cores >= 1.0 && (0.0..=cores).contains(&busy), "{s:?}");
            assert!(used > 0 && used < total, "{s:?}");
        }
    }
    // Disk reserved against capacity (every member here has the form's 512 MiB).
    for n in &nodes {
        let reserved: u64 = n.reserved_disk_mib.values().sum();
        assert_eq!(reserved, 512 * u64::from(n.members), "{n:?}");
    }
    let newest_only = env.client().nodes().await?;
    assert_eq!(newest_only.first().map(|n| n.usage.len()), Some(1));
    b.goto(&ui("/ui/nodes")).await?;
    assert_eq!(b.count("#nodes svg.usage").await?, 3, "a graph per node");
    assert_eq!(
        b.count("#nodes meter[aria-label='disk reserved']").await?,
        3,
        "disk reserved per node"
    );
    let points = b
        .attr("#nodes svg.usage polyline.cpu", "points")
        .await?
        .unwrap_or_default();
    assert!(points.split(' ').count() >= 3, "{points}");

    // The other pages, with screenshots and their weights.
    for (path, shot) in [
        ("/ui", "overview"),
        ("/ui/instances", "instances"),
        ("/ui/nodes", "nodes"),
        ("/ui/events", "events"),
        ("/ui/problems", "problems"),
        ("/ui/audit", "audit"),
        ("/ui/operations", "operations"),
        ("/ui/backups", "backups"),
    ] {
        b.goto(&ui(path)).await?;
        b.shot(shot).await?;
    }
    b.goto(&ui("/ui")).await?;
    let assets = b.size("/ui/assets/console.css").await? + b.size("/ui/assets/console.js").await?;
    for path in [
        "/ui".to_owned(),
        "/ui/instances".to_owned(),
        "/ui/instances/new".to_owned(),
        format!("/ui/instances/{name}"),
        "/ui/nodes".to_owned(),
        "/ui/events".to_owned(),
        "/ui/audit".to_owned(),
        "/ui/backups".to_owned(),
        "/ui/operations".to_owned(),
    ] {
        let html = b.size(&path).await?;
        println!("page weight {path}: HTML {html} B + CSS/JS {assets} B");
        assert!(html + assets < PAGE_BUDGET, "{path}: {} B", html + assets);
    }
    b.goto(&ui("/ui/audit?q=switchover")).await?;
    let audit = b.text("main table").await?;
    assert!(
        audit.contains("console-admin") && audit.contains("/switchover"),
        "console actions are audited like API calls: {audit}"
    );
    b.goto(&ui("/ui/audit?q=credentials")).await?;
    assert!(b.text("main table").await?.contains("reveal credentials"));

    // Paging: 110 automatic-failover settings, each an event and two audit entries. The
    // events and audit pages show 100 a page, newest first; "Older" keeps the filters.
    let client = env.client();
    for _ in 0..110 {
        client
            .set_auto_failover(&name, true)
            .await
            .context("auto-failover")?;
    }
    b.goto(&ui(&format!(
        "/ui/events?instance={name}&kind=auto_failover"
    )))
    .await?;
    assert_eq!(b.count("#events li[data-kind=auto_failover]").await?, 100);
    let older = b
        .attr("#events a[rel=next]", "href")
        .await?
        .context("an Older link")?;
    assert!(
        older.starts_with(&format!(
            "/ui/events?instance={name}&kind=auto_failover&before="
        )),
        "{older}"
    );
    b.goto(&ui(&older)).await?;
    let rest = b.count("#events li[data-kind=auto_failover]").await?;
    assert!((10..100).contains(&rest), "{rest} on the older page");
    assert!(b.attr("#events a[rel=prev]", "href").await?.is_some());
    b.goto(&ui("/ui/audit?q=auto-failover")).await?;
    assert_eq!(b.count("#audit tbody tr").await?, 100);
    let older = b
        .attr("a[rel=next]", "href")
        .await?
        .context("an Older link")?;
    assert!(
        older.starts_with("/ui/audit?q=auto-failover&before="),
        "{older}"
    );
    b.goto(&ui(&older)).await?;
    assert_eq!(b.count("#audit tbody tr").await?, 100);
    assert_eq!(
        b.attr("#q", "value").await?.as_deref(),
        Some("auto-failover"),
        "the filter kept"
    );
    b.shot("audit-older").await?;

    // A phone's screen: every page fits its width (tables scroll inside their box), and
    // every page is usable by keyboard and screen reader: each form field labelled, each
    // button named, each link a real link, no tab order forced.
    b.client.set_window_size(390, 844).await?;
    for path in [
        "/ui".to_owned(),
        "/ui/problems".to_owned(),
        "/ui/instances".to_owned(),
        "/ui/instances/new".to_owned(),
        format!("/ui/instances/{name}"),
        "/ui/operations".to_owned(),
        "/ui/backups".to_owned(),
        "/ui/nodes".to_owned(),
        "/ui/events".to_owned(),
        "/ui/audit".to_owned(),
    ] {
        b.goto(&ui(&path)).await?;
        assert!(b.fits_width().await?, "{path} fits 390 px");
        let unlabelled = b
            .client
            .execute(
                "const bad = [];
                 for (const e of document.querySelectorAll('input, select, textarea')) {
                   if (e.type === 'hidden') continue;
                   if (!(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                       && !e.getAttribute('aria-labelledby')) bad.push(e.outerHTML.slice(0, 120));
                 }
                 for (const e of document.querySelectorAll('button')) {
                   if (!e.textContent.trim() && !e.getAttribute('aria-label')) bad.push(e.outerHTML.slice(0, 120));
                 }
                 for (const e of document.querySelectorAll('a:not([href])')) bad.push(e.outerHTML.slice(0, 120));
                 for (const e of document.querySelectorAll('[tabindex]')) {
                   if (parseInt(e.getAttribute('tabindex'), 10) > 0) bad.push(e.outerHTML.slice(0, 120));
                 }
                 return bad;",
                vec![],
            )
            .await?;
        assert_eq!(
            unlabelled,
            json!([]),
            "{path}: not usable by keyboard or screen reader"
        );
        match path.as_str() {
            "/ui" => b.shot("phone-overview").await?,
            p if p.starts_with("/ui/instances/t-") => b.shot("phone-instance").await?,
            _ => {}
        }
    }
    b.client.set_window_size(1280, 800).await?;

    // A viewer: no action buttons, and a hand-made POST (with its own CSRF token) is refused.
    b.goto(&ui("/ui")).await?;
    b.submit("header form button").await?;
    assert_eq!(b.path().await?, "/ui/login");
    b.sign_in(VIEWER_TOKEN).await?;
    for path in [
        format!("/ui/instances/{name}"),
        "/ui/instances".to_owned(),
        "/ui/nodes".to_owned(),
        "/ui/backups".to_owned(),
    ] {
        b.goto(&ui(&path)).await?;
        let actions = b
            .count("form.act, button.act, a[href='/ui/instances/new']")
            .await?;
        assert_eq!(actions, 0, "a viewer sees no action on {path}");
    }
    b.goto(&ui(&format!("/ui/instances/{name}"))).await?;
    b.shot("viewer-instance").await?;
    let csrf = b
        .client
        .find(Locator::Css("header input[name=csrf]"))
        .await?
        .attr("value")
        .await?
        .context("the viewer's CSRF token")?;
    let status = b
        .post(
            &format!("/ui/instances/{name}/switchover"),
            &format!("csrf={csrf}&target="),
        )
        .await?;
    assert_eq!(status, 403, "a viewer's hand-made POST");
    assert_eq!(env.instance(&name).await?.epoch, epoch);

    // A lost session goes back to sign-in and returns to the page after it.
    b.client.delete_all_cookies().await?;
    b.goto(&ui("/ui/events")).await?;
    assert_eq!(b.path().await?, "/ui/login?next=/ui/events");
    // From the keyboard: the token field has the focus, Tab goes to the button.
    let focused = b.client.active_element().await?;
    assert_eq!(focused.attr("id").await?.as_deref(), Some("token"));
    focused.send_keys("\u{E004}").await?;
    let focused = b.client.active_element().await?;
    assert_eq!(focused.attr("type").await?.as_deref(), Some("submit"));
    b.sign_in(VIEWER_TOKEN).await?;
    assert_eq!(b.path().await?, "/ui/events");

    // Delete from the instance page as an admin: refused until the name is typed.
    b.submit("header form button").await?;
    b.sign_in(ADMIN_TOKEN).await?;
    b.goto(&ui(&format!("/ui/instances/{name}"))).await?;
    if b.count("#confirm").await? == 0 {
        bail!(
            "no delete form at {}: {}",
            b.path().await?,
            b.text("body").await?
        );
    }
    b.fill("confirm", "not-the-name").await?;
    b.submit("#delete button[type=submit]").await?;
    assert!(b
        .text("#action-error")
        .await?
        .contains("Nothing was deleted"));
    let r = env.client().instance(&name).await;
    assert!(r.is_ok(), "still there: {r:?}");
    b.fill("confirm", &name).await?;
    b.submit_checked(
        "#delete button[type=submit]",
        &page,
        async || Ok(!exists(&env, &name).await?),
        &ui("/ui/instances?done=deleted"),
    )
    .await?;
    assert_eq!(b.path().await?, "/ui/instances?done=deleted");
    explain(
        &b,
        eventually("the instance is gone", Duration::from_secs(60), || async {
            match env.client().instance(&name).await {
                Err(e) if e.is_not_found() => Ok(()),
                Ok(v) => bail!("{}", v.status),
                Err(e) => bail!("{e}"),
            }
        })
        .await,
    )
    .await?;
    b.client.clone().close().await?;
    Ok(())
}

/// The console on a follower, and through a leader change (issue 18: "followers forward
/// like the API does"; "a leader change shows a banner and reconnects, never a blank
/// page"): three schedulers on a real Consul, two agents. Signed in on a follower, its
/// nodes page lists the leader's nodes; an instance created through the follower's form is
/// ready on the follower's page (the form forwarded to the leader); the leader frozen with
/// that page open: a read forwarded to it is answered by the next leader, and the page is
/// whole under the new leader without a reload (the thawed leader steps down); the
/// follower itself frozen: after 10 s unanswered the banner says so, and goes once thawed;
/// the follower killed: the page keeps what it
/// showed under a banner saying the scheduler does not answer, and once it is started again
/// (its sessions gone) goes to sign-in and back to the page after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_on_a_follower_and_through_a_leader_change() -> Result<()> {
    mofang_tests::init_tracing();
    let consul = mofang_tests::coord::ConsulProcess::start().await?;
    let mut env = Env::start_ha(2, &consul.http, "", &mofang_tests::cluster::Timings::FAST).await?;
    let leader = env.leader(Duration::from_secs(60)).await?;
    let follower = (leader + 1) % 3;
    let base = env
        .schedulers()
        .nth(follower)
        .context("the follower")?
        .rest
        .clone();
    let ui = |p: &str| format!("{base}{p}");
    let b = Browser::start().await?;
    b.goto(&ui("/ui/nodes")).await?;
    b.sign_in(&env.token).await?;
    assert_eq!(b.path().await?, "/ui/nodes");
    assert_eq!(
        b.count("#nodes tbody tr").await?,
        2,
        "the leader's two nodes"
    );

    let name = unique_name("follow");
    b.goto(&ui("/ui/instances/new")).await?;
    b.fill("name", &name).await?;
    b.client
        .find(Locator::Id("engine"))
        .await?
        .select_by_value("redis")
        .await?;
    b.fill("version", "7.0").await?;
    b.fill("replicas", "1").await?;
    let form = ui("/ui/instances/new");
    create_from_form(&b, &env, &form, &name).await?;
    assert_eq!(b.count("#topology .member").await?, 2);

    // The leader frozen (SIGSTOP: its sockets open, nothing answered) with the page open on
    // the follower: the follower forwards the page's polls (and an API read) to the frozen
    // leader, and once another leads (its session expired in Consul) asks the new leader
    // again instead of waiting out its 90 s client timeout; the page never goes blank and
    // is whole under the new leader without a reload (a banner shows only if a poll waits
    // over 10 s, which these timings' election does not reach). Thawed, the old leader
    // leads no more.
    let whole = || async {
        let status = b.text("#status").await?;
        let members = b.count("#topology .member").await?;
        if b.banner().await?.is_none() && status == "ready" && members == 2 {
            Ok(())
        } else {
            bail!("status {status}, {members} members")
        }
    };
    env.schedulers()
        .nth(leader)
        .context("the leader")?
        .pause()?;
    let through_follower = mofang_scheduler::client::Client::new(
        env.schedulers()
            .nth(follower)
            .context("the follower")?
            .rest
            .clone(),
        env.http.clone(),
    )
    .with_token(Some(env.token.clone()));
    let waiting = tokio::spawn(async move { through_follower.instances(None).await });
    let listed = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .context(
            "a read forwarded to the frozen leader still waits a minute after the freeze",
        )???;
    assert!(
        listed.iter().any(|i| i.name == name),
        "the new leader's instances: {listed:?}"
    );
    assert_eq!(b.count("#topology .member").await?, 2, "the page kept");
    let new_leader = env.leader(Duration::from_secs(30)).await?;
    assert_ne!(new_leader, leader, "a new leader");
    explain(
        &b,
        eventually(
            "the follower's page whole under a new leader",
            Duration::from_secs(90),
            whole,
        )
        .await,
    )
    .await?;
    env.schedulers()
        .nth(leader)
        .context("the old leader")?
        .resume()?;
    let old = env.schedulers().nth(leader).context("the old leader")?;
    eventually(
        "the thawed leader steps down",
        Duration::from_secs(30),
        || async {
            let api = mofang_scheduler::client::Client::new(old.rest.clone(), env.http.clone());
            let h = tokio::time::timeout(Duration::from_secs(2), api.health()).await??;
            if !h.leader {
                Ok(())
            } else {
                bail!("{h:?}")
            }
        },
    )
    .await?;
    // Polled again and again: still whole (a blank page would show).
    tokio::time::sleep(Duration::from_secs(5)).await;
    explain(&b, whole().await).await?;

    // The page's own scheduler frozen: nothing answers its polls, so after 10 s the page
    // says so; thawed, the banner goes.
    let own = env.schedulers().nth(follower).context("the follower")?;
    own.pause()?;
    let banner = b
        .wait_banner("the page says its scheduler has not answered", 30)
        .await;
    own.resume()?;
    let banner = banner?;
    assert!(banner.contains("has not answered for 10 s"), "{banner}");
    explain(
        &b,
        eventually("whole again once thawed", Duration::from_secs(60), whole).await,
    )
    .await?;

    // The page's own scheduler killed: the banner says so, and polling goes on; started
    // again (sessions are in its memory: this one is gone), the page goes to sign-in and
    // back to itself after it.
    let page = b.path().await?;
    env.scheduler_mut(follower)?.kill9()?;
    let banner = b
        .wait_banner("the page says the scheduler does not answer", 20)
        .await?;
    assert!(banner.contains("reconnecting"), "{banner}");
    assert_eq!(b.count("#topology .member").await?, 2, "the page kept");
    b.shot("follower-scheduler-lost").await?;
    env.scheduler_mut(follower)?.restart()?;
    explain(
        &b,
        eventually(
            "back at sign-in, the page remembered",
            Duration::from_secs(60),
            || async {
                let at = b.path().await?;
                if at.starts_with("/ui/login?next=") {
                    Ok(())
                } else {
                    bail!("at {at}")
                }
            },
        )
        .await,
    )
    .await?;
    b.sign_in(&env.token).await?;
    let at = b.path().await?;
    assert!(
        at.starts_with(page.split('?').next().unwrap_or_default()),
        "{at}, not {page}"
    );
    explain(
        &b,
        eventually("the page whole again", Duration::from_secs(60), whole).await,
    )
    .await?;
    Ok(())
}
