//! `make demo` (first stage): through the agent's Docker runtime, start one MariaDB container
//! from the locally built image, write a row with a real client, read it back, and leave the
//! container running for the operator to look at (`make demo-down` removes it).

use anyhow::{Context, Result};
use mofang_agent::runtime::{ContainerRuntime, ContainerSpec, DockerRuntime, Mount, Network};
use mysql_async::prelude::Queryable;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

const NAME: &str = "mofang-demo-mariadb";

#[tokio::main]
async fn main() -> Result<()> {
    let rt = DockerRuntime::connect().await?;
    for old in rt.list(&[("mofang.demo", "1")]).await? {
        rt.remove(&old.id, true).await?;
    }
    let etc = std::env::current_dir()?.join(".demo/etc");
    std::fs::create_dir_all(&etc)?;
    std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o755))?;
    for (file, body) in [
        (
            "my.cnf",
            "[mysqld]\ndatadir=/var/lib/mysql\nsocket=/run/mysqld/mysqld.sock\n\
             bind-address=0.0.0.0\nskip-name-resolve\ninit_file=/etc/mofang/init.sql\n",
        ),
        (
            "init.sql",
            "SET sql_log_bin=0;\nCREATE DATABASE IF NOT EXISTS demo;\n\
             CREATE USER IF NOT EXISTS 'demo'@'%' IDENTIFIED BY 'demo';\n\
             GRANT ALL ON demo.* TO 'demo'@'%';\n",
        ),
    ] {
        std::fs::write(etc.join(file), body)?;
        std::fs::set_permissions(etc.join(file), std::fs::Permissions::from_mode(0o644))?;
    }
    let spec = ContainerSpec {
        name: NAME.into(),
        image: "mofang/mariadb:10.11".into(),
        args: vec![],
        env: vec![],
        labels: BTreeMap::from([("mofang.demo".to_owned(), "1".to_owned())]),
        mounts: vec![Mount {
            source: etc,
            target: "/etc/mofang".into(),
            read_only: true,
        }],
        network: Network::Named("bridge".into()),
        publish: Some(("127.0.0.1".into(), 0, 3306)),
        cpus: 1.0,
        memory_bytes: 512 << 20,
        pids_limit: 512,
        cap_add: vec![],
        user: "999:999".into(),
        stop_grace: Duration::from_secs(10),
    };
    let started = Instant::now();
    let id = rt.create(&spec).await?;
    rt.start(&id).await?;
    let port = *rt
        .inspect(&id)
        .await?
        .published
        .get(&3306)
        .context("3306 not published")?;
    println!("started {NAME} ({}) on 127.0.0.1:{port}", &id[..12]);

    let url = format!("mysql://demo:demo@127.0.0.1:{port}/demo");
    let mut conn = loop {
        match mysql_async::Conn::from_url(url.as_str()).await {
            Ok(c) => break c,
            Err(e) if started.elapsed() > Duration::from_secs(60) => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    println!(
        "MariaDB answered after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    conn.query_drop("CREATE TABLE IF NOT EXISTS greetings (id INT PRIMARY KEY, msg TEXT)")
        .await?;
    conn.query_drop("REPLACE INTO greetings VALUES (1, 'hello from mofang')")
        .await?;
    let row: Option<(i32, String, String)> = conn
        .query_first("SELECT id, msg, VERSION() FROM greetings WHERE id = 1")
        .await?;
    let (rid, msg, version) = row.context("row not found")?;
    println!("read back: id={rid} msg={msg:?} from MariaDB {version}");
    conn.disconnect().await?;
    println!("\nleft running; connect with: mariadb -h127.0.0.1 -P{port} -udemo -pdemo demo");
    println!("stop it with: make demo-down");
    Ok(())
}
