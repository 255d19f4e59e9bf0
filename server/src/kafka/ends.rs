//! The ends of the topic's partitions, asked of the broker: a thread sends one ListOffsets
//! request for the latest offset (the high watermark) of every partition every
//! [`PROBE_INTERVAL`], and keeps the newest complete answer with the instant it asked, for
//! `catchup`. The thread has a client of its own, so that its questions never wait behind
//! the poll loop (a revocation can hold it for seconds), nor the poll loop behind them.

use super::KafkaArgs;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the ends are asked for: a few questions a second cost the broker nothing, and
/// the idle rule waits for the allowed lateness (seconds) anyway.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// How long one question may take; an answer that late proves little.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Every partition's end, as the broker gave it when asked at `asked_at`.
#[derive(Debug, Clone)]
pub struct Ends {
    pub asked_at: Instant,
    /// By partition number.
    pub offsets: Vec<i64>,
}

impl Ends {
    pub fn of(&self, partition: i32) -> Option<i64> {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.offsets.get(p))
            .copied()
    }
}

/// The asking thread; it stops when dropped.
pub struct EndProbe {
    latest: Arc<Mutex<Option<Ends>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EndProbe {
    pub fn spawn(
        kafka: &KafkaArgs,
        partitions: usize,
    ) -> Result<EndProbe, rdkafka::error::KafkaError> {
        let client: BaseConsumer = kafka.client_config().create()?;
        let mut question = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            // As a timestamp, "the end" (-1) asks for the latest offset.
            question.add_partition_offset(&kafka.topic, p, Offset::End)?;
        }
        let latest = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (latest, stop) = (latest.clone(), stop.clone());
            std::thread::Builder::new()
                .name("toctou-kafka-ends".into())
                .spawn(move || ask(&client, &question, partitions, &latest, &stop))
                .map_err(|e| rdkafka::error::KafkaError::ClientCreation(e.to_string()))?
        };
        Ok(EndProbe {
            latest,
            stop,
            thread: Some(thread),
        })
    }

    /// The newest complete answer.
    pub fn latest(&self) -> Option<Ends> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for EndProbe {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

fn ask(
    client: &BaseConsumer,
    question: &TopicPartitionList,
    partitions: usize,
    latest: &Mutex<Option<Ends>>,
    stop: &AtomicBool,
) {
    let mut failing = false;
    while !stop.load(Relaxed) {
        let asked_at = Instant::now();
        match client.offsets_for_times(question.clone(), PROBE_TIMEOUT) {
            Ok(answer) => {
                let mut offsets = vec![-1; partitions];
                for e in answer.elements() {
                    if let (Offset::Offset(o), Ok(p)) = (e.offset(), usize::try_from(e.partition()))
                    {
                        if e.error().is_ok() && p < partitions {
                            offsets[p] = o;
                        }
                    }
                }
                // A partition left out proves nothing for any: keep the previous answer.
                if offsets.iter().all(|&o| o >= 0) {
                    *latest.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(Ends { asked_at, offsets });
                    if failing {
                        tracing::info!("the broker gives the partitions' ends again");
                        failing = false;
                    }
                }
            }
            Err(err) => {
                // Idle watermarks wait meanwhile (`catchup`); said once, not every 200 ms.
                if !failing {
                    tracing::warn!(error = %err, "cannot ask the broker for the partitions' ends; idle watermarks wait");
                    failing = true;
                }
            }
        }
        std::thread::park_timeout(PROBE_INTERVAL.saturating_sub(asked_at.elapsed()));
    }
}
