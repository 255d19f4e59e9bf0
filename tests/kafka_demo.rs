//! Distributed mode, exact under real timing. `toctou demo` races its workloads for real on
//! SQLite and counts what happened from the database (the ground truth, from outside
//! toctou); its OTLP goes to a `toctou collector`, two `toctou correlator`s share the topic's
//! six partitions and write findings to ClickHouse, and ClickHouse under FINAL must hold
//! exactly what happened, kind by kind, while a burner keeps every core busy:
//!
//! - a correlator is killed (`kill -9`) a few seconds into the load and restarted: its
//!   partitions are caught up by the survivor, then every partition again by both after the
//!   restart (eager rebalancing), and no event anywhere arrives late: a partition with
//!   records waiting is not idle, whatever the wall clock says (docs/KAFKA.md, "Idle is not
//!   lag");
//! - the broker is stopped in the middle of the load and started again 10 s later, or
//!   frozen (SIGSTOP) for 10 s: the collector pushes back, the demo's exporters retry, the
//!   correlators lose their group session and rebuild their partitions afterwards, and
//!   nothing is lost or doubled. The broker runs ahead of the burner (scripts/kafka says
//!   why): it stands for a service on machines of its own, and the load is toctou's. The allowed lateness there
//!   covers what the outage holds up: the requests come back in whatever order the
//!   services' retries take, and with a shorter lateness some would be late whoever
//!   correlates them.

mod common;

use common::burner;
use common::clickhouse::{server_url, sql};
use common::kafka::{collector, correlator_with_lateness, Broker, Node};
use common::metric;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

const TOPIC: &str = "toctou.events";
/// The correlators' allowed lateness in the kill scenario.
const KILL_LATENESS: &str = "1s";
/// The correlators' allowed lateness in the outage scenario: longer than the spread of event
/// times among the requests the outage holds up (the load runs 5 s into the outage, and the
/// exporters retry at most 2 s apart), which come back in whatever order the services'
/// retries take.
const OUTAGE_LATENESS: &str = "10s";

/// One scenario at a time. Each is a whole deployment (broker, collector, two correlators,
/// the demo's six services) beside a burner that keeps every core busy; two of them at once
/// on the two cores of CI starve their brokers for up to a minute (measured: group sessions
/// lost and requests timing out 60 s after the outage's broker was thawed), which is a
/// machine twice over its capacity, not a busy one.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the demo said happened: its run tag (in every resource name) and the counts by kind.
struct Truth {
    run: String,
    kinds: BTreeMap<String, u64>,
    stdout: String,
}

/// Runs `toctou demo --truth-only` against the collector's OTLP/gRPC receiver; its output
/// when it fails.
fn demo(grpc: SocketAddr, duration: &str) -> Result<Truth, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_toctou"))
        .args(["demo", "--truth-only", "--endpoint"])
        .arg(format!("http://{grpc}"))
        .args(["--duration", duration])
        .env("TOCTOU_LOG", "warn")
        .output()
        .expect("running toctou demo");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(format!(
            "toctou demo failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let run = common::demo::run_tag(&stdout);
    let mut kinds = BTreeMap::new();
    for line in stdout.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() == 2 && common::demo::KINDS.contains(&cols[0]) {
            kinds.insert(cols[0].to_string(), cols[1].parse().unwrap());
        }
    }
    assert_eq!(kinds.len(), common::demo::KINDS.len(), "{stdout}");
    for (kind, n) in &kinds {
        assert!(
            *n > 0,
            "no {kind} happened, the test proves nothing:\n{stdout}"
        );
    }
    Ok(Truth { run, kinds, stdout })
}

/// The demo's truth, or a failure with the logs of the nodes it went through.
async fn truth_of(
    load: tokio::task::JoinHandle<Result<Truth, String>>,
    broker: &Broker,
    nodes: &[(&str, &Node)],
) -> Truth {
    load.await.expect("the demo thread").unwrap_or_else(|err| {
        let logs: Vec<String> = nodes
            .iter()
            .map(|(name, n)| format!("{name}:\n{}", n.log()))
            .collect();
        panic!(
            "{err}\n{}\n----\nbroker:\n{}",
            logs.join("\n----\n"),
            broker.log_tail(200)
        )
    })
}

/// This run's findings in ClickHouse under FINAL, by kind; and the rows against the distinct
/// ids (a finding stored twice under FINAL would make them differ).
async fn stored(url: &str, db: &str, run: &str) -> (BTreeMap<String, u64>, u64, u64) {
    let ours = format!("position(resource, '/{run}/') > 0");
    let by_kind = sql(
        url,
        db,
        &format!("SELECT kind, count() FROM findings FINAL WHERE {ours} GROUP BY kind"),
    )
    .await;
    let kinds = by_kind
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, n)| (k.to_string(), n.parse().unwrap()))
        .collect();
    let totals = sql(
        url,
        db,
        &format!("SELECT count(), uniqExact(id) FROM findings FINAL WHERE {ours}"),
    )
    .await;
    let (rows, ids) = totals.trim().split_once('\t').unwrap();
    (kinds, rows.parse().unwrap(), ids.parse().unwrap())
}

/// Waits until ClickHouse holds the truth (or `timeout`), then a moment more, so that an
/// extra finding decided late has time to show up too; returns what it then holds.
async fn wait_for_truth(
    url: &str,
    db: &str,
    truth: &Truth,
    timeout: Duration,
) -> (BTreeMap<String, u64>, u64, u64) {
    let deadline = Instant::now() + timeout;
    loop {
        let (kinds, _, _) = stored(url, db, &truth.run).await;
        if kinds == truth.kinds || Instant::now() > deadline {
            tokio::time::sleep(Duration::from_secs(3)).await;
            return stored(url, db, &truth.run).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the correlators own `partitions` between them.
async fn wait_assigned(nodes: &[&Node], partitions: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut owned = 0.0;
        for n in nodes {
            owned += metric(&n.metrics().await, "toctou_kafka_assigned_partitions");
        }
        if owned == partitions {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the correlators own {owned} of {partitions} partitions after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sums a series over the nodes' /metrics.
async fn total(nodes: &[&Node], series: &str) -> f64 {
    let mut sum = 0.0;
    for n in nodes {
        sum += metric(&n.metrics().await, series);
    }
    sum
}

fn assert_truth(
    truth: &Truth,
    (kinds, rows, ids): &(BTreeMap<String, u64>, u64, u64),
    logs: &[&Node],
) {
    let logs: Vec<String> = logs.iter().map(|n| n.log()).collect();
    assert_eq!(
        kinds,
        &truth.kinds,
        "ClickHouse (right) against what happened (left):\n{}\ncorrelator logs:\n{}",
        truth.stdout,
        logs.join("\n----\n")
    );
    assert_eq!(rows, ids, "a finding stored twice under FINAL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_correlator_under_load_loses_nothing_and_makes_nothing_late() {
    let _one = ONE_AT_A_TIME.lock().await;
    let _burner = burner::every_core();
    let broker = Broker::start();
    broker.create_topic(TOPIC, 6);
    let url = server_url();
    let db = format!("toctou_test_{}_kafka_demo_kill", std::process::id());
    let start =
        || correlator_with_lateness(&broker.bootstrap, TOPIC, "group", &url, &db, KILL_LATENESS);
    let mut a = start();
    let b = start();
    let c = collector(&broker.bootstrap, TOPIC);
    wait_assigned(&[&a, &b], 6.0).await;

    let grpc = c.addr("otlp_grpc");
    let load = tokio::task::spawn_blocking(move || demo(grpc, "10s"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    a.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a2 = start();
    let truth = truth_of(
        load,
        &broker,
        &[
            ("collector", &c),
            ("correlator b", &b),
            ("restarted a", &a2),
        ],
    )
    .await;
    let found = wait_for_truth(&url, &db, &truth, Duration::from_secs(60)).await;
    assert_truth(&truth, &found, &[&b, &a2]);

    // The handover really happened, under load: partitions were re-read and caught up.
    let nodes = [&b, &a2];
    let caught_up = total(&nodes, "toctou_kafka_catchup_events_total").await;
    let seconds = total(&nodes, "toctou_kafka_catchup_seconds_total").await;
    eprintln!(
        "happened {:?}; catch-ups: {} events in {seconds:.1} s ({:.0} events/s), {} messages replayed, {} pauses for the sink",
        truth.kinds,
        caught_up,
        caught_up / seconds.max(1e-9),
        total(&nodes, "toctou_kafka_replayed_messages_total").await,
        total(&nodes, "toctou_kafka_consumer_pauses_total").await,
    );
    assert!(total(&nodes, "toctou_kafka_replayed_messages_total").await > 0.0);
    assert!(caught_up > 0.0);
    // Idle is not lag: nothing arrived behind its partition's watermark, on the survivor
    // (which caught up twice) nor on the restarted one.
    assert_eq!(
        total(&nodes, "toctou_kafka_late_events_total").await,
        0.0,
        "late events after the handover:\n{}\n----\n{}",
        b.log(),
        a2.log()
    );
}

/// The broker stopped (SIGTERM, as a restart or a crash with its data kept) and started
/// again 10 s later on the same ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_s_broker_outage_under_load_loses_nothing() {
    outage_under_load("outage", Broker::stop, Broker::restart).await;
}

/// The broker frozen (SIGSTOP) for 10 s: a hung broker, or a network partition. Every client
/// loses its connections' answers at once, the group sessions expire, and nothing of the
/// broker restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_s_broker_freeze_under_load_loses_nothing() {
    outage_under_load("freeze", Broker::freeze, Broker::thaw).await;
}

/// The outage scenario: the demo's load through a collector and two correlators, the
/// broker taken `down` 3 s into it and brought `up` 10 s later; ClickHouse must then hold
/// exactly what happened, nothing late.
async fn outage_under_load(name: &str, down: fn(&Broker), up: fn(&Broker)) {
    let _one = ONE_AT_A_TIME.lock().await;
    let _burner = burner::every_core();
    let broker = Broker::start();
    broker.create_topic(TOPIC, 6);
    let url = server_url();
    let db = format!("toctou_test_{}_kafka_demo_{name}", std::process::id());
    let start = || {
        correlator_with_lateness(
            &broker.bootstrap,
            TOPIC,
            "group",
            &url,
            &db,
            OUTAGE_LATENESS,
        )
    };
    let a = start();
    let b = start();
    let c = collector(&broker.bootstrap, TOPIC);
    wait_assigned(&[&a, &b], 6.0).await;

    let grpc = c.addr("otlp_grpc");
    let load = tokio::task::spawn_blocking(move || demo(grpc, "8s"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let went_down = Instant::now();
    tokio::task::block_in_place(|| down(&broker));
    let down_took = went_down.elapsed();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let coming_up = Instant::now();
    tokio::task::block_in_place(|| up(&broker));
    let up_took = coming_up.elapsed();
    let back = went_down.elapsed();
    let truth = truth_of(
        load,
        &broker,
        &[
            ("collector", &c),
            ("correlator a", &a),
            ("correlator b", &b),
        ],
    )
    .await;
    let found = wait_for_truth(&url, &db, &truth, Duration::from_secs(90)).await;
    eprintln!(
        "happened {:?}; broker back after {:.1} s (going down took {:.1} s, coming up {:.1} s); {}",
        truth.kinds,
        back.as_secs_f64(),
        down_took.as_secs_f64(),
        up_took.as_secs_f64(),
        truth
            .stdout
            .lines()
            .find(|l| l.starts_with("sent "))
            .unwrap_or("")
    );
    assert_truth(&truth, &found, &[&a, &b]);

    // The outage was felt: the collector pushed back.
    let m = c.metrics().await;
    assert!(
        metric(&m, "toctou_rejected_total{reason=\"backpressure\"}") > 0.0,
        "no request was pushed back during the outage"
    );
    assert_eq!(
        total(&[&a, &b], "toctou_kafka_late_events_total").await,
        0.0
    );
}
