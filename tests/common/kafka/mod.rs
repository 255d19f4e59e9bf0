//! Distributed-mode harness: a private Kafka broker per test (started, stopped and restarted
//! through `scripts/kafka` with a home of its own), `toctou collector` / `toctou correlator`
//! processes; `stories` generates the stream (many resources with known races) and holds the
//! oracle that says which findings it must produce: `toctou replay` over exactly the
//! requests sent.
//!
//! Like the ClickHouse helpers, it fails (never skips) when the broker cannot start.

pub mod stories;

pub use super::process::Node;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The checkout under test. `cargo test` sets CARGO_MANIFEST_DIR when it runs a test too;
/// that one wins over the compile-time value, which names whichever checkout built this
/// binary first when several share a target directory (a reused binary keeps it).
fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// A fresh directory; brokers' homes go under `TOCTOU_KAFKA_TEST_ROOT` when scripts/test set
/// it, so that it can stop whatever a killed test left running.
fn temp_dir(what: &str) -> PathBuf {
    let parent = std::env::var_os("TOCTOU_KAFKA_TEST_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = parent.join(format!(
        "toctou-{what}-{}-{}",
        std::process::id(),
        super::rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A single-node KRaft broker private to one test.
pub struct Broker {
    home: PathBuf,
    pub bootstrap: String,
}

impl Broker {
    pub fn start() -> Broker {
        let home = temp_dir("kafka");
        let bootstrap = Self::script(&home, "start");
        Broker { home, bootstrap }
    }

    fn script(home: &Path, verb: &str) -> String {
        let out = Command::new(root().join("scripts/kafka"))
            .arg(verb)
            .env("TOCTOU_KAFKA_HOME", home)
            .output()
            .expect("running scripts/kafka");
        assert!(
            out.status.success(),
            "scripts/kafka {verb} failed (run 'scripts/kafka install' first?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // What the script says on the way (ports still held at a restart, a slow stop).
        if !out.stderr.is_empty() {
            eprintln!(
                "scripts/kafka {verb}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    pub fn stop(&self) {
        Self::script(&self.home, "stop");
    }

    /// The last `lines` lines of the broker's own log and of its GC log, for a failure's
    /// message.
    pub fn log_tail(&self, lines: usize) -> String {
        let tail = |file: &str| {
            let log = std::fs::read_to_string(self.home.join(file)).unwrap_or_default();
            let all: Vec<&str> = log.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        };
        format!(
            "{}\n-- gc.log:\n{}",
            tail("log/stdout.log"),
            tail("log/gc.log")
        )
    }

    /// Freezes it (SIGSTOP) until [`Broker::thaw`]: an outage that starts and ends at known
    /// instants, as a hung broker or a network partition makes one. Every client's requests
    /// go unanswered meanwhile (a stop and restart takes tens of seconds of JVM start on a
    /// loaded machine on top of the outage itself).
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = std::fs::read_to_string(self.home.join("pid")).expect("the broker's pid file");
        let status = Command::new("kill")
            .args([signal, pid.trim()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Starts it again on the same ports (the clients keep their bootstrap address).
    pub fn restart(&self) {
        let addr = Self::script(&self.home, "restart");
        assert_eq!(addr, self.bootstrap, "the broker came back on another port");
    }

    /// `toctou kafka init` for this broker.
    pub fn create_topic(&self, topic: &str, partitions: usize) {
        let out = Command::new(env!("CARGO_BIN_EXE_toctou"))
            .args(["kafka", "init", "--kafka-bootstrap", &self.bootstrap])
            .args(["--kafka-topic", topic, "--partitions"])
            .arg(partitions.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "toctou kafka init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // A test that failed while the broker was frozen: a stopped process takes no SIGTERM.
        if let Ok(pid) = std::fs::read_to_string(self.home.join("pid")) {
            let _ = Command::new("kill").args(["-CONT", pid.trim()]).status();
        }
        let _ = Command::new(root().join("scripts/kafka"))
            .arg("stop")
            .env("TOCTOU_KAFKA_HOME", &self.home)
            .output();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// Pairing tuned for tests: findings settle within seconds of the stream's end.
pub const PAIR_TTL: &str = "2s";
pub const LATENESS: &str = "1s";

pub fn collector(bootstrap: &str, topic: &str) -> Node {
    let args: Vec<String> = [
        "collector",
        "--kafka-bootstrap",
        bootstrap,
        "--kafka-topic",
        topic,
    ]
    .into_iter()
    .chain(super::EPHEMERAL_PORTS)
    .chain(["--submit-timeout", "3s", "--kafka-delivery-timeout", "60s"])
    .map(String::from)
    .collect();
    Node::start(&args, "toctou collector listening")
}

pub fn correlator(bootstrap: &str, topic: &str, group: &str, ch_url: &str, db: &str) -> Node {
    correlator_with_lateness(bootstrap, topic, group, ch_url, db, LATENESS)
}

/// A correlator whose allowed lateness is `lateness` (the oracle must use the same).
pub fn correlator_with_lateness(
    bootstrap: &str,
    topic: &str,
    group: &str,
    ch_url: &str,
    db: &str,
    lateness: &str,
) -> Node {
    let args: Vec<String> = [
        "correlator",
        "--kafka-bootstrap",
        bootstrap,
        "--kafka-topic",
        topic,
        "--kafka-group",
        group,
        "--api-addr",
        "127.0.0.1:0",
        "--session-timeout",
        "6s",
        "--commit-interval",
        "500ms",
        "--pair-ttl",
        PAIR_TTL,
        "--allowed-lateness",
        lateness,
    ]
    .into_iter()
    .chain(super::clickhouse::sink_flags(ch_url, db))
    .map(String::from)
    .collect();
    Node::start(&args, "toctou correlator consuming")
}
