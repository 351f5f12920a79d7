//! End-to-end suite: the real `tally` binary as a user runs it, driven over
//! gRPC and with grpcurl, killed with SIGKILL and stopped with SIGTERM, and
//! two of them sharing Cassandra and Redis.

mod chaos;
mod disk_full;
mod durability;
mod generate;
mod grpcurl;
mod process;
mod recipes;
mod scale_out;
mod shutdown;
mod telemetry;
