//! `ragpool-bench durability`: what `--durability replicated` costs, as a ratio to `local`
//! measured in the same run on the same primary and replica.
//!
//! A primary and one replica on loopback (no persistence, so the only difference between the
//! two runs is the `WAIT 1` after every state change); the same enqueue → claim → complete
//! workload as `ragpool-bench queue`, once with each setting, alternating, best of `rounds`.
//! A second row puts a number on the other way to keep acknowledged writes, a single Redis with
//! `appendfsync always`, against `local` without persistence. Loopback replication is about as
//! fast as replication gets; across machines each acknowledged change waits one more network
//! round trip to the replica.
//!
//! With `--cluster`, the same pair of runs on a Redis Cluster of three masters with a replica
//! each, the key prefix in six partitions: there each change's `WAIT` runs on the master
//! serving its partition.

use anyhow::Context;
use ragpool_queue::testing::{RedisCluster, RedisServer, ServerOptions};
use ragpool_queue::{BrokerConfig, Durability, RedisTarget};

use crate::queue::{flush, ragpool_with};
use crate::report::{Row, print_table};

/// Flags of `ragpool-bench durability`.
#[derive(clap::Args)]
pub struct Args {
    /// Tasks per run.
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// Concurrent consumers.
    #[arg(long, default_value_t = 8)]
    consumers: usize,
    /// Runs of each; the best of them is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Also compare the two settings on a Redis Cluster of three masters and three replicas
    /// (six partitions).
    #[arg(long)]
    cluster: bool,
}

/// Partitions of the key prefix on the cluster: two per master.
const CLUSTER_PARTITIONS: u16 = 6;

/// Starts a primary with a replica, and a single server with `appendfsync always`, runs the
/// workload under each setting `rounds` times and prints the table.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let (primary, _replica, aof) = tokio::task::spawn_blocking(|| {
        let primary = RedisServer::start()?;
        let replica = RedisServer::start_replica_of(primary.port(), ServerOptions::default())?;
        replica.wait_until_in_sync()?;
        let aof = RedisServer::start_with(ServerOptions {
            aof: true,
            ..ServerOptions::default()
        })?;
        anyhow::Ok((primary, replica, aof))
    })
    .await?
    .context("starting redis-server")?;
    let config = |url: &str, durability| -> anyhow::Result<BrokerConfig> {
        let mut config = BrokerConfig::from_url(url)?;
        config.durability = durability;
        Ok(config)
    };
    let (mut local, mut replicated, mut always) = (0f64, 0f64, 0f64);
    for round in 0..args.rounds {
        flush(&primary.url()).await?;
        let l = ragpool_with(
            config(&primary.url(), Durability::Local)?,
            args.tasks,
            args.consumers,
        )
        .await?;
        flush(&primary.url()).await?;
        let r = ragpool_with(
            config(&primary.url(), Durability::Replicated)?,
            args.tasks,
            args.consumers,
        )
        .await?;
        flush(&aof.url()).await?;
        let a = ragpool_with(
            config(&aof.url(), Durability::Local)?,
            args.tasks,
            args.consumers,
        )
        .await?;
        println!(
            "round {}: local {l:.0} tasks/s, replicated {r:.0} tasks/s, \
             local + appendfsync always {a:.0} tasks/s",
            round + 1
        );
        local = local.max(l);
        replicated = replicated.max(r);
        always = always.max(a);
    }
    let cluster_rows = if args.cluster {
        on_cluster(&args).await?
    } else {
        Vec::new()
    };
    println!(
        "\n{} tasks, {} consumers, best of {}:",
        args.tasks, args.consumers, args.rounds
    );
    let mut rows = vec![
        Row::ratio(
            "replicated (WAIT 1 after each change)",
            replicated,
            "tasks/s",
            "local, same primary + replica",
            local,
        ),
        Row::ratio(
            "local, single Redis, appendfsync always",
            always,
            "tasks/s",
            "local, no persistence",
            local,
        ),
    ];
    rows.extend(cluster_rows);
    print_table(&rows);
    Ok(())
}

/// `local` against `replicated` on a cluster of three masters with a replica each, best of
/// `rounds`, alternating; the row comparing them.
async fn on_cluster(args: &Args) -> anyhow::Result<Vec<Row>> {
    let cluster = tokio::task::spawn_blocking(|| {
        RedisCluster::start_with_replicas(3, ServerOptions::default())
    })
    .await?
    .context("starting a Redis Cluster of three masters and three replicas")?;
    let urls = cluster.urls();
    let config = |durability| {
        let mut config = BrokerConfig::new(RedisTarget {
            urls: urls.clone(),
            cluster: true,
            ca_cert: None,
            sentinel: None,
        });
        config.durability = durability;
        config.partitions = CLUSTER_PARTITIONS;
        config
    };
    let (mut local, mut replicated) = (0f64, 0f64);
    for round in 0..args.rounds {
        flush_masters(&urls).await?;
        let l = ragpool_with(config(Durability::Local), args.tasks, args.consumers).await?;
        flush_masters(&urls).await?;
        let r = ragpool_with(config(Durability::Replicated), args.tasks, args.consumers).await?;
        println!(
            "cluster round {}: local {l:.0} tasks/s, replicated {r:.0} tasks/s",
            round + 1
        );
        local = local.max(l);
        replicated = replicated.max(r);
    }
    drop(cluster);
    Ok(vec![Row::ratio(
        "replicated on a cluster (3 masters + 3 replicas, 6 partitions)",
        replicated,
        "tasks/s",
        "local, same cluster",
        local,
    )])
}

/// Empties every master of a cluster (a replica refuses `FLUSHALL` and follows its master).
async fn flush_masters(urls: &[String]) -> anyhow::Result<()> {
    for url in urls {
        let mut conn = redis::Client::open(url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await?;
        if info.lines().any(|line| line.trim() == "role:master") {
            flush(url).await?;
        }
    }
    Ok(())
}
