//! Integration suite of the server: the real server over real gRPC on
//! loopback, on a fresh embedded store per test.

mod auth;
mod conformance;
mod dashboard;
mod engine;
mod enrichment;
mod export;
mod grpc_web;
mod harness;
mod ingest;
mod lifecycle;
mod limits;
mod metrics;
mod mmdb;
mod realtime;
mod reflection;
mod report;
mod script;
mod scylla;
mod sessions;
mod tenancy;
