//! MaxMind DB files for the geo tests: the writer of `tally generate
//! --write-geoip-db`, so that the tests use a real `.mmdb` made here rather
//! than a downloaded database.

pub use tally_server::generate::mmdb::{Value, build};
