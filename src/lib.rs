//! mallquest: point-of-sale receipts from Kafka folded, exactly once, into per-user
//! loyalty projections (coins, XP, level, spend) in an embedded store, with every change
//! published to a compacted topic.
//!
//! # Layout
//! - [`cli`]: command-line arguments.
//! - [`config`]: the TOML config, raw and validated.
//! - [`domain`]: the rules and the fold; pure, no I/O.
//! - [`changelog`]: a partition's state as records of the compacted changelog topic.
//! - [`codec`]: bytes <-> receipts, projections and level-up events; agrees with `schemas/`.
//! - [`engine`]: the working state in memory: every board, rebuilt from the store.
//! - [`store`]: the embedded store (fjall), the durable checkpoint; the only module that
//!   names fjall.
//! - [`kafka`]: the consumer loop of `run`, the producer sink, topic set-up.
//! - [`pipeline`]: decode -> fold -> publish -> store, one batch at a time.
//! - [`partitioner`]: the producers' partitioners, to guess a user's partition.
//! - [`sim`]: the seeded POS simulator.
//! - [`simulate`]: `mallquest simulate`, the simulator publishing to Kafka.
//! - [`demo`]: `mallquest demo`, the pipeline fed in-process.
//! - [`snapshot`]: `mallquest snapshot export/import`, the store as one compacted file.
//! - [`http`]: the query API, the pages (`/board`, `/me`), health checks, `/metrics`,
//!   `/openapi.json`; queries gathered from the other instances (`http/cluster.rs`).
//! - [`status`]: assignment, readiness and freshness, shared by the consumer and the API.
//! - [`telemetry`]: every metric name and log line.
//! - [`whatif`]: `mallquest whatif`, the receipts refolded under proposed rules and compared.
//! - [`service`]: the service `run` is (store, API, compaction, consumer), started and
//!   stopped as one.

pub mod changelog;
pub mod cli;
pub mod codec;
pub mod config;
pub mod demo;
pub mod domain;
pub mod engine;
pub mod http;
pub mod kafka;
pub mod partitioner;
pub mod pipeline;
pub mod service;
pub mod sim;
pub mod simulate;
pub mod snapshot;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod whatif;
