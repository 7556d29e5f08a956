//! The locally built images run real servers: from Rust, through the agent's Docker runtime,
//! start `mofang/mariadb:10.11` and `mofang/redis:7.0`, write and read back with real clients.

use anyhow::{Context, Result};
use mofang_agent::runtime::{ContainerRuntime, ContainerSpec, DockerRuntime, Mount, Network};
use mofang_tests::{docker, eventually, test_label, unique_name};
use mysql_async::prelude::Queryable;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// A container spec publishing `port` on a random loopback port, with config files in `etc`.
fn spec(name: &str, image: &str, etc: &Path, port: u16) -> ContainerSpec {
    let (k, v) = test_label();
    ContainerSpec {
        name: name.to_owned(),
        image: image.to_owned(),
        args: vec![],
        env: vec![],
        labels: BTreeMap::from([(k, v)]),
        mounts: vec![Mount {
            source: etc.to_owned(),
            target: "/etc/mofang".into(),
            read_only: true,
        }],
        network: Network::Named("bridge".into()),
        publish: Some(("127.0.0.1".into(), 0, port)),
        cpus: 1.0,
        memory_bytes: 512 << 20,
        pids_limit: 512,
        cap_add: vec![],
        user: "999:999".into(),
        stop_grace: Duration::from_secs(5),
    }
}

/// A config directory the container's uid 999 can read.
fn config_dir(files: &[(&str, &str)]) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    for (name, body) in files {
        let p = dir.path().join(name);
        std::fs::write(&p, body)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(dir)
}

async fn run(rt: &DockerRuntime, spec: &ContainerSpec, port: u16) -> Result<(String, u16)> {
    let id = rt.create(spec).await?;
    rt.start(&id).await?;
    let info = rt.inspect(&id).await?;
    let host_port = *info.published.get(&port).context("port not published")?;
    Ok((id, host_port))
}

#[tokio::test]
async fn mariadb_image_stores_and_returns_a_row() -> Result<()> {
    let rt = docker().await;
    let etc = config_dir(&[
        (
            "my.cnf",
            "[mysqld]\ndatadir=/var/lib/mysql\nsocket=/run/mysqld/mysqld.sock\nbind-address=0.0.0.0\n\
             skip-name-resolve\ninit_file=/etc/mofang/init.sql\n",
        ),
        (
            "init.sql",
            "SET sql_log_bin=0;\nCREATE DATABASE IF NOT EXISTS app;\n\
             CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY 'app-secret';\n\
             GRANT ALL ON app.* TO 'app'@'%';\n",
        ),
    ])?;
    let name = unique_name("mariadb");
    let (id, port) = run(
        &rt,
        &spec(&name, "mofang/mariadb:10.11", etc.path(), 3306),
        3306,
    )
    .await?;

    let url = format!("mysql://app:app-secret@127.0.0.1:{port}/app");
    let result = async {
        let mut conn = eventually(
            "mariadb accepts connections",
            Duration::from_secs(60),
            || async { Ok(mysql_async::Conn::from_url(url.as_str()).await?) },
        )
        .await?;
        conn.query_drop("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(32))")
            .await?;
        conn.exec_drop("INSERT INTO t VALUES (?, ?)", (1, "hello mofang"))
            .await?;
        let v: Option<String> = conn.query_first("SELECT v FROM t WHERE id = 1").await?;
        let user: Option<String> = conn.query_first("SELECT CURRENT_USER()").await?;
        conn.disconnect().await?;
        assert_eq!(v.as_deref(), Some("hello mofang"));
        assert_eq!(user.as_deref(), Some("app@%"));
        // The server runs as the image's non-root user.
        let who = rt
            .exec(&id, &["sh", "-c", "ps -o user= -C mariadbd"], None)
            .await?;
        assert_eq!(
            who.stdout.trim(),
            "mysql",
            "mariadbd must run as mysql: {who:?}"
        );
        anyhow::Ok(())
    }
    .await;
    rt.remove(&id, true).await?;
    result
}

#[tokio::test]
async fn redis_image_stores_and_returns_a_key() -> Result<()> {
    let rt = docker().await;
    let etc = config_dir(&[(
        "redis.conf",
        "bind 0.0.0.0\nport 6379\ndir /var/lib/redis\nappendonly yes\n\
         user default off\nuser app on >app-secret ~app:* +@read +@write +@connection\n",
    )])?;
    let name = unique_name("redis");
    let (id, port) = run(
        &rt,
        &spec(&name, "mofang/redis:7.0", etc.path(), 6379),
        6379,
    )
    .await?;

    let result = async {
        let client = redis::Client::open(format!("redis://app:app-secret@127.0.0.1:{port}/"))?;
        let mut conn = eventually(
            "redis accepts connections",
            Duration::from_secs(30),
            || async { Ok(client.get_multiplexed_async_connection().await?) },
        )
        .await?;
        let _: () = redis::cmd("SET")
            .arg("app:greeting")
            .arg("hello mofang")
            .query_async(&mut conn)
            .await?;
        let v: String = redis::cmd("GET")
            .arg("app:greeting")
            .query_async(&mut conn)
            .await?;
        assert_eq!(v, "hello mofang");
        // Least privilege: the app user cannot touch keys outside its pattern.
        let denied: redis::RedisResult<()> = redis::cmd("SET")
            .arg("other")
            .arg("x")
            .query_async(&mut conn)
            .await;
        assert!(denied.is_err(), "ACL must refuse keys outside app:*");
        let who = rt
            .exec(&id, &["sh", "-c", "ps -o user= -C redis-server"], None)
            .await?;
        assert_eq!(
            who.stdout.trim(),
            "redis",
            "redis-server must run as redis: {who:?}"
        );
        anyhow::Ok(())
    }
    .await;
    rt.remove(&id, true).await?;
    result
}
