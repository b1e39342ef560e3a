//! The Redis test harness itself: servers start, persist (or not) across restarts, come
//! back after a kill, form a working cluster, and leave no process behind.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use ragpool_queue::testing::{HarnessError, RedisCluster, RedisServer, ServerOptions};
use redis::{Commands, ConnectionLike};

fn connect(server: &RedisServer) -> Result<redis::Connection> {
    let client = redis::Client::open(server.url())?;
    client
        .get_connection()
        .context("connecting to the test server")
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

const AOF: ServerOptions = ServerOptions {
    aof: true,
    cluster: false,
};

#[test]
fn start_serves_set_and_get() -> Result<()> {
    let server = RedisServer::start()?;
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    let mut conn = connect(&server)?;
    let () = conn.set("greeting", "hello")?;
    let value: Option<String> = conn.get("greeting")?;
    assert_eq!(value.as_deref(), Some("hello"));
    Ok(())
}

#[test]
fn aof_restart_keeps_a_key() -> Result<()> {
    let mut server = RedisServer::start_with(AOF)?;
    let port = server.port();
    let () = connect(&server)?.set("kept", "yes")?;
    server.restart()?;
    assert_eq!(server.port(), port);
    let value: Option<String> = connect(&server)?.get("kept")?;
    assert_eq!(value.as_deref(), Some("yes"));
    Ok(())
}

#[test]
fn restart_without_persistence_loses_a_key() -> Result<()> {
    let mut server = RedisServer::start()?;
    let () = connect(&server)?.set("lost", "yes")?;
    server.restart()?;
    let value: Option<String> = connect(&server)?.get("lost")?;
    assert_eq!(value, None);
    Ok(())
}

#[test]
fn aof_keeps_an_acknowledged_write_across_a_kill() -> Result<()> {
    let mut server = RedisServer::start_with(AOF)?;
    let () = connect(&server)?.set("crash", "survived")?;
    server.kill()?;
    server.start_again()?;
    let value: Option<String> = connect(&server)?.get("crash")?;
    assert_eq!(value.as_deref(), Some("survived"));
    Ok(())
}

#[test]
fn kill_then_start_again_answers_ping() -> Result<()> {
    let mut server = RedisServer::start()?;
    let old_pid = server.pid().context("no pid")?;
    server.kill()?;
    assert!(!server.is_running());
    assert!(!process_exists(old_pid));
    assert!(
        connect(&server).is_err(),
        "a killed server still accepts connections"
    );

    server.start_again()?;
    assert!(server.is_running());
    let pong: String = redis::cmd("PING").query(&mut connect(&server)?)?;
    assert_eq!(pong, "PONG");
    Ok(())
}

#[test]
fn start_again_refuses_a_running_server() -> Result<()> {
    let mut server = RedisServer::start()?;
    let err = server
        .start_again()
        .err()
        .context("start_again succeeded")?;
    assert!(matches!(err, HarnessError::AlreadyRunning(p) if p == server.port()));
    Ok(())
}

#[test]
fn parallel_servers_get_their_own_ports() -> Result<()> {
    let handles: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(RedisServer::start))
        .collect();
    let mut servers = Vec::new();
    for handle in handles {
        let server = handle
            .join()
            .map_err(|_| anyhow::anyhow!("start panicked"))??;
        servers.push(server);
    }
    let mut ports: Vec<u16> = servers.iter().map(RedisServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), servers.len());
    for (i, server) in servers.iter().enumerate() {
        let () = connect(server)?.set("owner", i)?;
    }
    for (i, server) in servers.iter().enumerate() {
        let owner: usize = connect(server)?.get("owner")?;
        assert_eq!(owner, i);
    }
    Ok(())
}

#[test]
fn drop_leaves_no_process() -> Result<()> {
    let server = RedisServer::start()?;
    let pid = server.pid().context("no pid")?;
    assert!(process_exists(pid));
    drop(server);
    assert!(
        !process_exists(pid),
        "redis-server {pid} outlived its handle"
    );
    Ok(())
}

#[test]
fn a_cluster_needs_a_master() {
    let err = RedisCluster::start(0).err();
    assert!(matches!(err, Some(HarnessError::TooFewMasters(0))));
}

#[test]
fn cluster_of_three_serves_keys_across_slots() -> Result<()> {
    let mut cluster = RedisCluster::start(3)?;
    let client = redis::cluster::ClusterClient::new(cluster.urls())?;
    let mut conn = client.get_connection()?;
    for i in 0..100 {
        let () = conn.set(format!("key:{i}"), i)?;
    }
    for i in 0..100 {
        let value: i32 = conn.get(format!("key:{i}"))?;
        assert_eq!(value, i);
    }

    let mut pids = Vec::new();
    let mut total = 0;
    for node in cluster.nodes() {
        let mut node_conn = connect(node)?;
        let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut node_conn)?;
        ensure!(
            info.contains("cluster_state:ok"),
            "node {}: {info}",
            node.port()
        );
        ensure!(
            info.contains("cluster_slots_ok:16384"),
            "node {}: {info}",
            node.port()
        );
        let keys: usize = redis::cmd("DBSIZE").query(&mut node_conn)?;
        assert!(keys > 0, "node {} holds none of the 100 keys", node.port());
        assert!(node_conn.is_open());
        total += keys;
        pids.push(node.pid().context("no pid")?);
    }
    assert_eq!(total, 100);

    drop(cluster);
    for pid in pids {
        assert!(
            !process_exists(pid),
            "cluster node {pid} outlived its handle"
        );
    }
    Ok(())
}
