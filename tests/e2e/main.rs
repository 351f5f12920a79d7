//! End-to-end suite: the real `tally` binary as a user runs it, driven over
//! gRPC and with grpcurl, killed with SIGKILL and stopped with SIGTERM.

mod chaos;
mod durability;
mod grpcurl;
mod process;
mod recipes;
mod shutdown;
mod telemetry;
