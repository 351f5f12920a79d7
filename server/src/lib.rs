//! Tally: a gRPC-first analytics server.
//!
//! Layers, with dependencies pointing one way:
//! `grpc` (tonic adapters) -> core services (`ingest`, `query`, `realtime`,
//! `admin`, `auth`) -> `pipeline` (validate, enrich), `rollup` (in-memory
//! aggregates) -> `storage` (traits and backends).

pub mod admin;
pub mod auth;
pub mod config;
pub mod convert;
pub mod dashboard;
pub mod domain;
pub mod error;
pub mod generate;
pub mod grpc;
pub mod ingest;
pub mod limits;
pub mod metrics;
pub mod pipeline;
pub mod query;
pub mod realtime;
pub mod rebuild;
pub mod rollup;
pub mod salts;
pub mod script;
pub mod server;
pub mod sessions;
pub mod storage;
pub mod telemetry;
