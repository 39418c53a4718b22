//! Consumer groups on Apache Kafka under both group protocols (`kafka.group_protocol`):
//! classic (JoinGroup/SyncGroup) and KIP-848 `consumer`. Each test runs once per protocol.
//!
//! - 2 → 3 → 2 sink instances while rows flow: every row applied exactly once;
//! - `cutover run` SIGKILLed 5 times within 20 s during a workload (dynamic membership, the
//!   dead members never leave the group) and once more with static membership
//!   (`--instance-id`): afterwards every row still arrives, exactly once.

use std::time::{Duration, Instant};

use cutover::config::GroupProtocol;

use super::apply::{
    assert_each_written_once, background_writer, converge, count_rows, counted_mirror_table,
    insert_events, try_converge, wait_for_slot, write_config, Env, Part,
};
use super::support::{cutover_bin, KillOnDrop};

/// Partitions of the sink's group that are assigned to a member right now, as the broker says
/// (`kafka-consumer-groups`-like: DescribeGroups for classic, ConsumerGroupDescribe for 848),
/// read through the stock Python client.
/// The group's type must be the configured protocol (the broker records which one it speaks).
fn assigned_partitions(bootstrap: &str, group: &str, protocol: GroupProtocol) -> Option<usize> {
    let out = std::process::Command::new(super::support::python())
        .args(["-c", ASSIGNED_PY, bootstrap, group])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (kind, n) = text.trim().split_once(' ')?;
    let n: usize = n.parse().ok()?;
    if n == 0 {
        return Some(0); // no member yet: the broker describes an unknown group as classic
    }
    assert_eq!(
        kind,
        protocol.as_str().to_uppercase(),
        "group {group} speaks the wrong protocol"
    );
    Some(n)
}

const ASSIGNED_PY: &str = r#"
import sys
from confluent_kafka.admin import AdminClient
a = AdminClient({"bootstrap.servers": sys.argv[1]})
g = a.describe_consumer_groups([sys.argv[2]])[sys.argv[2]].result(timeout=10)
print(g.type.name, sum(len(m.assignment.topic_partitions) for m in g.members))
"#;

async fn rebalance_2_3_2(protocol: GroupProtocol) {
    let mut env = Env::new(match protocol {
        GroupProtocol::Classic => "rebal_classic",
        GroupProtocol::Consumer => "rebal_consumer",
    });
    env.cfg.kafka.group_protocol = protocol;
    env.cfg.sinks.truncate(1);
    env.cfg.kafka.partitions = 6;
    counted_mirror_table(&env).await;
    let capture = Part::capture(&env.cfg).await;
    let s = env.schema.clone();
    let l = env.legacy().await;
    let t = env.target(0).await;
    let writes = format!(r#""{s}".writes"#);
    let group = env.cfg.sinks[0].group_id(&env.cfg.name);
    let bootstrap = env.cfg.kafka.brokers.join(",");

    let a = Part::sink(&env.cfg, "mirror").await;
    let b = Part::sink(&env.cfg, "mirror").await;
    insert_events(&l, &s, 1, 3000, 300).await;
    // Wait until the two members hold all 6 partitions (then the third one joins a formed
    // group, which is the rebalance under test).
    let deadline = Instant::now() + Duration::from_secs(60);
    while assigned_partitions(&bootstrap, &group, protocol) != Some(6)
        || count_rows(&t, &writes).await < 1
    {
        assert!(
            Instant::now() < deadline,
            "2 members never held all 6 partitions"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let c = Part::sink(&env.cfg, "mirror").await; // 2 -> 3
    for chunk in 0..10 {
        insert_events(&l, &s, 3001 + chunk * 300, 3000 + (chunk + 1) * 300, 100).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let q = format!(r#"SELECT * FROM "{s}".events"#);
    converge(&l, &q, &t, &q, 120).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while assigned_partitions(&bootstrap, &group, protocol) != Some(6) {
        assert!(
            Instant::now() < deadline,
            "3 members never held all 6 partitions"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    a.stop().await; // 3 -> 2: a leaves cleanly, its partitions move
    insert_events(&l, &s, 6001, 9000, 250).await;
    converge(&l, &q, &t, &q, 120).await;
    b.stop().await;
    c.stop().await;
    capture.stop().await;
    assert_each_written_once(&env, 9000).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_2_3_2_instances_applies_every_row_once_classic_protocol() {
    rebalance_2_3_2(GroupProtocol::Classic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_2_3_2_instances_applies_every_row_once_consumer_protocol() {
    rebalance_2_3_2(GroupProtocol::Consumer).await;
}

async fn fast_restarts(protocol: GroupProtocol, instance_id: Option<&str>) {
    let mut env = Env::new(match (protocol, instance_id) {
        (GroupProtocol::Classic, None) => "restarts_classic",
        (GroupProtocol::Classic, Some(_)) => "restarts_static",
        (GroupProtocol::Consumer, None) => "restarts_consumer",
        (GroupProtocol::Consumer, Some(_)) => "restarts_static848",
    });
    env.cfg.kafka.group_protocol = protocol;
    env.cfg.sinks.truncate(1);
    env.cfg.sinks[0].batch_max_rows = 500;
    counted_mirror_table(&env).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&env.cfg, dir.path());
    let log = dir.path().join("run.log");
    let spawn = || {
        let mut cmd = std::process::Command::new(cutover_bin());
        cmd.args(["run", "--config"]).arg(&config);
        if let Some(id) = instance_id {
            cmd.args(["--instance-id", id]);
        }
        cmd.stdout(std::process::Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .map(KillOnDrop)
            .unwrap()
    };
    let log_tail = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    };
    // The first pipeline creates the slot; rows written before it exists are not captured.
    let mut child = spawn();
    let l = env.legacy().await;
    wait_for_slot(&l, &env.cfg.source.slot, log_tail).await;
    // A writer that keeps going through every kill: 100-row transactions every 100 ms.
    let (done, writer) = background_writer(l, env.schema.clone());
    // Five SIGKILLs of the whole pipeline within 20 s (one every 4 s, a new one at once).
    let started = Instant::now();
    for i in 0..5 {
        if i > 0 {
            child = spawn();
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
        if let Ok(Some(st)) = child.0.try_wait() {
            panic!("cutover run exited by itself ({st}):\n{}", log_tail());
        }
        child.kill();
    }
    assert!(started.elapsed() < Duration::from_secs(22));
    let mut last = spawn();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = done.send(true);
    let written = writer.await.unwrap();
    let t = env.target(0).await;
    let q = format!(r#"SELECT * FROM "{}".events"#, env.schema);
    // The dead members' partitions move once the broker expires them (session timeout 10 s
    // in this stack's broker config for 848, the client's 10 s for classic).
    if let Err(e) = try_converge(&env.legacy().await, &q, &t, &q, 120).await {
        panic!(
            "{e}\n  cutover run: {:?}\n  run.log:\n{}",
            last.0.try_wait(),
            log_tail()
        );
    }
    last.kill();
    assert_each_written_once(&env, written).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_sigkills_of_cutover_run_in_20s_then_every_row_arrives_once_classic_protocol() {
    fast_restarts(GroupProtocol::Classic, None).await;
}

/// The same with static membership (`cutover run --instance-id`): each restart takes over the
/// killed member's partitions at once instead of after its session timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_sigkills_of_cutover_run_in_20s_with_static_membership_every_row_arrives_once() {
    let id = super::support::unique("run");
    fast_restarts(GroupProtocol::Classic, Some(&id)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_sigkills_of_cutover_run_in_20s_then_every_row_arrives_once_consumer_protocol() {
    fast_restarts(GroupProtocol::Consumer, None).await;
}

/// KIP-848 with static membership: a SIGKILLed static member must be expired by the broker
/// before its instance id can join again (UNRELEASED_INSTANCE_ID until then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_sigkills_of_cutover_run_in_20s_with_static_membership_every_row_arrives_once_consumer_protocol(
) {
    let id = super::support::unique("run848");
    fast_restarts(GroupProtocol::Consumer, Some(&id)).await;
}
