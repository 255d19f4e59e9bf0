//! Distributed mode: `toctou collector`, `toctou correlator` and `toctou kafka init`, with
//! Apache Kafka between the tiers.
//!
//! Collectors run the receivers of `toctou run` and publish the normalized events to one
//! topic (default `toctou.events`), keyed by resource, so every check, use and audit event
//! of a resource lands in one partition and one correlator owns its whole join. Policy
//! changes are the exception: a check names the policy it evaluated, not the policy's
//! partition, so a policy change is written to every partition (one copy marked as the
//! original, which alone is stored). Correlators form a consumer group and run one engine
//! per assigned partition; findings and events go to ClickHouse through the sink of `toctou
//! run`, and offsets are committed only as far as a new owner can rebuild from (`offsets`).
//! The design, its guarantees and its limits are in docs/KAFKA.md.
//!
//! # Layout
//! - `toctou_kafka::codec` (the `kafka/` crate): the versioned message format.
//! - [`producer`]: [`producer::KafkaSink`], the receivers' sink that answers only once Kafka
//!   acknowledged, with bounded bytes in flight.
//! - [`collector`]: the `toctou collector` subcommand.
//! - [`offsets`]: the offset-commit rule and the rebuild metadata, pure.
//! - [`consumer`]: the `toctou correlator` subcommand: flags, start-up, the poll loop.
//! - `partitions`: one engine per assigned partition, commits, revocation and rebuild.
//! - `group`: the consumer context: librdkafka's rebalance hooks and statistics.
//! - `catchup`: up to when a partition is known read to its end (idle is not lag), and a
//!   new owner's catch-up; `ends`: the partitions' ends, asked of the broker.
//! - [`admin`]: `toctou kafka init` and the topic check both subcommands make at start-up.
//! - [`metrics`]: the `toctou_kafka_*` counters of both sides and their collectors, which the
//!   nodes register in their registries ([`crate::metrics`]).

pub mod admin;
mod catchup;
pub mod collector;
pub mod consumer;
mod ends;
mod group;
pub mod metrics;
pub mod offsets;
mod partitions;
pub mod producer;

#[cfg(feature = "cli")]
use clap::Args;
use rdkafka::ClientConfig;

/// The topic every tier uses unless told otherwise.
pub const DEFAULT_TOPIC: &str = "toctou.events";

/// Where Kafka is: shared by the three subcommands.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(Args))]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated host:port.
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "kafka-bootstrap",
            env = "TOCTOU_KAFKA_BOOTSTRAP",
            default_value = "127.0.0.1:9092"
        )
    )]
    pub bootstrap: String,
    /// The events topic.
    #[cfg_attr(feature = "cli", arg(long = "kafka-topic", env = "TOCTOU_KAFKA_TOPIC", default_value = DEFAULT_TOPIC))]
    pub topic: String,
}

impl KafkaArgs {
    /// A client configuration with the bootstrap servers and librdkafka's logs kept quiet
    /// (they are about connections the clients retry on their own).
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("log_level", "3");
        c
    }
}

/// Errors of the Kafka side that the subcommands report.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("topic {topic:?} does not exist on {bootstrap}: create it with `toctou kafka init --kafka-bootstrap {bootstrap} --kafka-topic {topic} --partitions N`")]
    TopicMissing { topic: String, bootstrap: String },
    #[error("topic {topic:?} exists with {actual} partitions, not {wanted}")]
    PartitionMismatch {
        topic: String,
        actual: usize,
        wanted: usize,
    },
    #[error("kafka at {bootstrap}: {source}")]
    Client {
        bootstrap: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

#[cfg(all(test, feature = "cli"))]
mod tests {
    use clap::{Args, Command};

    /// clap checks flag and group names only when a command is built: a clash between the
    /// flattened flag sets would otherwise surface as a panic at start-up.
    #[test]
    fn flags_of_every_subcommand_are_consistent() {
        super::collector::CollectorArgs::augment_args(Command::new("collector")).debug_assert();
        super::consumer::CorrelatorNodeArgs::augment_args(Command::new("correlator"))
            .debug_assert();
        super::admin::InitArgs::augment_args(Command::new("init")).debug_assert();
    }
}
