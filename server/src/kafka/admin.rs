//! Topic administration: `toctou kafka init` creates the events topic (idempotently), and
//! [`partition_count`] is the check collectors and correlators make before they start, so
//! that a missing topic is one clear message instead of a stream of client retries.

use super::{KafkaArgs, KafkaError};
use anyhow::{Context, Result};
#[cfg(feature = "cli")]
use clap::{Args, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// How long the metadata requests of the start-up check may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(Subcommand))]
pub enum KafkaCommand {
    /// Create the events topic (idempotent: an existing topic with the same partition count
    /// is fine, and said so).
    Init(InitArgs),
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(Args))]
pub struct InitArgs {
    #[cfg_attr(feature = "cli", command(flatten))]
    pub kafka: KafkaArgs,
    /// Partitions: the most correlators that can share the work.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "TOCTOU_KAFKA_PARTITIONS", default_value_t = 12)
    )]
    pub partitions: usize,
    /// Copies of each partition (at most the number of brokers).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "TOCTOU_KAFKA_REPLICATION_FACTOR", default_value_t = 1)
    )]
    pub replication_factor: i32,
    /// How long events are kept: at least as long as a correlator may be down, plus the
    /// key TTL a rebuild re-reads.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_KAFKA_RETENTION", default_value = "1d", value_parser = humantime::parse_duration))]
    pub retention: Duration,
}

pub fn main(cmd: KafkaCommand) -> Result<()> {
    match cmd {
        KafkaCommand::Init(args) => init(args),
    }
}

pub(crate) fn init(args: InitArgs) -> Result<()> {
    anyhow::ensure!(args.partitions >= 1, "--partitions must be at least 1");
    anyhow::ensure!(
        args.replication_factor >= 1,
        "--replication-factor must be at least 1"
    );
    match partition_count(&args.kafka) {
        Ok(n) if n == args.partitions => {
            println!(
                "topic {:?} already exists with {n} partitions: nothing to do",
                args.kafka.topic
            );
            return Ok(());
        }
        Ok(n) => {
            return Err(KafkaError::PartitionMismatch {
                topic: args.kafka.topic.clone(),
                actual: n,
                wanted: args.partitions,
            }
            .into())
        }
        Err(KafkaError::TopicMissing { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let admin: AdminClient<DefaultClientContext> = args
        .kafka
        .client_config()
        .create()
        .with_context(|| format!("connecting to kafka at {}", args.kafka.bootstrap))?;
    let retention_ms = args.retention.as_millis().to_string();
    let topic = NewTopic::new(
        &args.kafka.topic,
        args.partitions as i32,
        TopicReplication::Fixed(args.replication_factor),
    )
    .set("retention.ms", &retention_ms);
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = runtime
        .block_on(admin.create_topics([&topic], &opts))
        .with_context(|| format!("creating topic {:?}", args.kafka.topic))?;
    for result in results {
        match result {
            Ok(name) => println!(
                "created topic {name:?}: {} partitions, replication factor {}, retention {}",
                args.partitions,
                args.replication_factor,
                humantime::format_duration(args.retention)
            ),
            // Another `init` won the race: the check below says whether it matches.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("creating topic {name:?}: {code}"),
        }
    }
    let n = wait_for_topic(&args.kafka)?;
    anyhow::ensure!(
        n == args.partitions,
        KafkaError::PartitionMismatch {
            topic: args.kafka.topic.clone(),
            actual: n,
            wanted: args.partitions
        }
    );
    Ok(())
}

/// A freshly created topic shows in the metadata a moment later.
fn wait_for_topic(kafka: &KafkaArgs) -> Result<usize> {
    let deadline = std::time::Instant::now() + METADATA_TIMEOUT;
    loop {
        match partition_count(kafka) {
            Ok(n) => return Ok(n),
            Err(KafkaError::TopicMissing { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The topic's partition count, or [`KafkaError::TopicMissing`].
pub fn partition_count(kafka: &KafkaArgs) -> Result<usize, KafkaError> {
    let client_err = |source| KafkaError::Client {
        bootstrap: kafka.bootstrap.clone(),
        source,
    };
    let consumer: BaseConsumer = kafka.client_config().create().map_err(client_err)?;
    let metadata = consumer
        .fetch_metadata(Some(&kafka.topic), METADATA_TIMEOUT)
        .map_err(client_err)?;
    let missing = || KafkaError::TopicMissing {
        topic: kafka.topic.clone(),
        bootstrap: kafka.bootstrap.clone(),
    };
    let topic = metadata.topics().first().ok_or_else(missing)?;
    match topic.error() {
        None if !topic.partitions().is_empty() => Ok(topic.partitions().len()),
        None => Err(missing()),
        Some(code) if RDKafkaErrorCode::from(code) == RDKafkaErrorCode::UnknownTopicOrPartition => {
            Err(missing())
        }
        Some(code) => Err(client_err(rdkafka::error::KafkaError::MetadataFetch(
            code.into(),
        ))),
    }
}
