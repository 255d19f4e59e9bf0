//! `toctou run`'s inference flags, and what the stage shares with the API and /metrics:
//! its counts and its risks (`toctou_infer`, issue 26).

#[cfg(feature = "cli")]
use clap::{ArgAction, Args};
use std::sync::Mutex;
use std::time::Duration;
use toctou_infer::stats::{CHANGE_FATES, NOT_UNDERSTOOD, PAIR_OUTCOMES};
use toctou_infer::{Config, RiskReport, Stats};

#[derive(Clone, Debug)]
#[cfg_attr(feature = "cli", derive(Args))]
pub struct InferArgs {
    /// Infer checks and uses from database client spans (services with no toctou code):
    /// findings with a change stream (--cdc-postgres, --cdc-debezium-topics), risks
    /// without one. `--infer false` turns it off.
    #[cfg_attr(feature = "cli", arg(long = "infer", env = "TOCTOU_INFER", default_value_t = true, action = ArgAction::Set))]
    pub enabled: bool,
    /// How long a change record waits for the span of the write that made it, and a write
    /// for its change record (spans come as late as the SDKs' export interval).
    #[cfg_attr(feature = "cli", arg(long = "infer-hold", env = "TOCTOU_INFER_HOLD", default_value = "10s", value_parser = humantime::parse_duration))]
    pub hold: Duration,
    /// The schema of tables statements do not qualify.
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "infer-default-schema",
            env = "TOCTOU_INFER_DEFAULT_SCHEMA",
            default_value = "public"
        )
    )]
    pub default_schema: String,
    /// Hash the tested values that name inferred resources (`public.users[email=#…]`):
    /// parameter values are user data.
    #[cfg_attr(feature = "cli", arg(long = "hash-keys", env = "TOCTOU_HASH_KEYS"))]
    pub hash_keys: bool,
}

impl InferArgs {
    /// The stage's configuration; `change_stream`: whether a change stream is read.
    pub fn config(&self, change_stream: bool, version_column: &str) -> Config {
        Config {
            default_schema: self.default_schema.clone(),
            version_column: version_column.to_string(),
            hold: self.hold,
            settle: self.hold / 2,
            change_stream,
            hash_keys: self.hash_keys,
            ..Config::default()
        }
    }
}

/// What the stage last published: its counts and its risks.
#[derive(Default)]
pub struct InferShared {
    pub stats: Mutex<Stats>,
    pub risks: Mutex<RiskReport>,
}

toctou_schema::families! {
    /// The inference stage's families.
    static FAMILIES: Families {
        statements = counter("toctou_inferred_statements_total", "Database calls read by inference (spans with a statement).", &[]);
        not_understood = counter("toctou_inferred_statements_not_understood_total", "Database calls inference could not read, by reason.", &["reason"]);
        pairs = counter("toctou_inferred_pairs_total", "Read-then-write pairs inferred from database calls, by outcome: matched (handed to the engine with the write's change record), unmatched (no change record within --infer-hold), protected, prevented (a serialization failure), other_rows (a read by other columns than the key did not read the row written).", &["outcome"]);
        changes = counter("toctou_inferred_changes_total", "Change records through inference, by what became of them: attributed to a request's write, unattributed (released after the hold), passed (not held), evicted.", &["how"]);
        undecided = counter("toctou_inferred_undecided_total", "Matched pairs that no version decides whose row had another commit during the read: whether the read saw it cannot be told, a race there can go unreported.", &[]);
        cache_hits = counter("toctou_inferred_parse_cache_hits_total", "Statements read from the parse cache.", &[]);
        cache_misses = counter("toctou_inferred_parse_cache_misses_total", "Statements parsed (first sight of their text, or evicted).", &[]);
        held = gauge("toctou_inferred_held_changes", "Change records waiting for the write that made them.", &[]);
        pending = gauge("toctou_inferred_pending_writes", "Writes waiting for their change record.", &[]);
    }
}

/// Reads [`InferShared`] into `toctou run`'s registry.
pub struct InferCollector(pub std::sync::Arc<InferShared>);

impl prometheus::core::Collector for InferCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        FAMILIES.descs()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let f = &*FAMILIES;
        let s = self
            .0
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Every label a count can take, from zero: a rate over a series that appears only
        // with its first count misses that count.
        let by = |labels: &[&'static str], m: &std::collections::BTreeMap<&'static str, u64>| {
            labels
                .iter()
                .map(|k| ([*k], m.get(k).copied().unwrap_or(0) as f64))
                .collect::<Vec<_>>()
        };
        vec![
            f.statements.value(s.statements as f64),
            f.not_understood
                .values(by(&NOT_UNDERSTOOD, &s.not_understood)),
            f.pairs.values(by(&PAIR_OUTCOMES, &s.pairs)),
            f.changes.values(by(&CHANGE_FATES, &s.changes)),
            f.undecided.value(s.undecided as f64),
            f.cache_hits.value(s.cache_hits as f64),
            f.cache_misses.value(s.cache_misses as f64),
            f.held.value(s.held_changes as f64),
            f.pending.value(s.pending_writes as f64),
        ]
    }
}
