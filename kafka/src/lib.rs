//! toctou's distributed mode over Apache Kafka: what travels between the tiers.
//!
//! Collectors publish the normalized events to one topic, keyed by resource; correlators
//! consume it, one engine per partition (docs/KAFKA.md). The nodes themselves (`toctou
//! collector`, `toctou correlator`, `toctou kafka init`) are in `toctou-server`
//! (`server/src/kafka/`); this crate holds what has no flags, no client and no process around
//! it, so that the fuzz targets and the benchmarks can use it without compiling librdkafka.
//!
//! # Layout
//! - [`codec`]: the versioned message format of `toctou.events`; `proto/events.proto` is
//!   the same format for consumers in other languages (tests/proto.rs checks that the two
//!   agree field by field).

pub mod codec;
