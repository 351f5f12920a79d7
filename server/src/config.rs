//! Configuration: built-in defaults, then an optional TOML file, then
//! environment variables (`TALLY_*`) and flags. Validated once at start-up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::limits::RateLimitConfig;
use crate::pipeline::IngestLimits;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A setting given as one value or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One path.
    One(PathBuf),
    /// Several paths.
    Many(Vec<PathBuf>),
}

/// The TOML file's shape; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Listen address.
    pub listen: Option<String>,
    /// Data directory of the embedded store.
    pub data_dir: Option<PathBuf>,
    /// Operator key.
    pub admin_key: Option<String>,
    /// Log format.
    pub log_format: Option<LogFormat>,
    /// Largest accepted request message, bytes.
    pub max_message_bytes: Option<usize>,
    /// Seconds to let in-flight requests finish at shutdown.
    pub shutdown_grace_secs: Option<u64>,
    /// Free disk space (MiB) the embedded store keeps in reserve.
    pub min_free_disk_mb: Option<u64>,
    /// Ingest limits.
    pub limits: Option<IngestLimits>,
    /// MaxMind-format geo-IP databases: one path or a list.
    pub geoip_db: Option<OneOrMany>,
    /// Header naming the client address behind a trusted proxy.
    pub client_ip_header: Option<String>,
    /// Per-key rate limits, scan slots, query timeout.
    pub rate_limits: Option<RateLimitConfig>,
    /// OTLP/gRPC endpoint that receives traces.
    pub otlp_endpoint: Option<String>,
    /// The ScyllaDB (CQL) cluster of the scale-out backend.
    pub scylla: Option<FileScylla>,
    /// The Redis of the scale-out backend.
    pub redis: Option<FileRedis>,
}

/// The `[scylla]` table of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileScylla {
    /// Contact points, `host:port`.
    pub nodes: Option<Vec<String>>,
    /// Keyspace.
    pub keyspace: Option<String>,
    /// Replication factor of a keyspace that tally creates.
    pub replication_factor: Option<u32>,
    /// Consistency level of reads and writes, e.g. `local_quorum`.
    pub consistency: Option<String>,
    /// Seconds a CQL request may take.
    pub request_timeout_secs: Option<u64>,
}

/// The `[redis]` table of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRedis {
    /// URL, `redis://host:port/db`.
    pub url: Option<String>,
    /// Prefix of every key and channel.
    pub prefix: Option<String>,
}

/// Values given on the command line or in the environment (they win over the file).
#[derive(Debug, Default)]
pub struct Overrides {
    /// `--listen` / `TALLY_LISTEN`.
    pub listen: Option<String>,
    /// `--data-dir` / `TALLY_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--admin-key` / `TALLY_ADMIN_KEY`.
    pub admin_key: Option<String>,
    /// `--log-format` / `TALLY_LOG_FORMAT`.
    pub log_format: Option<LogFormat>,
    /// `--geoip-db` / `TALLY_GEOIP_DB` (empty: not given).
    pub geoip_db: Vec<PathBuf>,
    /// `--client-ip-header` / `TALLY_CLIENT_IP_HEADER`.
    pub client_ip_header: Option<String>,
    /// `--otlp-endpoint` / `TALLY_OTLP_ENDPOINT`.
    pub otlp_endpoint: Option<String>,
    /// `--scylla` / `TALLY_SCYLLA` (empty: not given).
    pub scylla: Vec<String>,
    /// `--scylla-keyspace` / `TALLY_SCYLLA_KEYSPACE`.
    pub scylla_keyspace: Option<String>,
    /// `--redis` / `TALLY_REDIS`.
    pub redis: Option<String>,
    /// `--redis-prefix` / `TALLY_REDIS_PREFIX`.
    pub redis_prefix: Option<String>,
}

/// Settings of the scale-out backend (ScyllaDB + Redis).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleOut {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// Keyspace.
    pub keyspace: String,
    /// Replication factor of a keyspace that tally creates.
    pub replication_factor: u32,
    /// Consistency level name (validated).
    pub consistency: String,
    /// Time a CQL request may take.
    pub request_timeout: Duration,
    /// Redis URL.
    pub redis_url: String,
    /// Prefix of every Redis key and channel.
    pub redis_prefix: String,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address of the one port serving gRPC, grpc-web and HTTP/1.1.
    pub listen: SocketAddr,
    /// Data directory of the embedded store.
    pub data_dir: PathBuf,
    /// Operator key; `None` disables the operator principal.
    pub admin_key: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Largest accepted request message, bytes.
    pub max_message_bytes: usize,
    /// Time in-flight requests get to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Free space the embedded store leaves on its disk: below it, appends
    /// are refused with `UNAVAILABLE` until space is freed.
    pub min_free_disk_bytes: u64,
    /// Ingest limits.
    pub limits: IngestLimits,
    /// MaxMind-format (`.mmdb`) geo-IP databases, tried in order; empty: no geo.
    pub geoip_db: Vec<PathBuf>,
    /// Header carrying the client address (first entry), set by a trusted
    /// reverse proxy, e.g. `x-forwarded-for`; `None`: the connection's peer.
    pub client_ip_header: Option<String>,
    /// Per-key rate limits, scan slots, query timeout.
    pub rate_limits: RateLimitConfig,
    /// OTLP/gRPC endpoint (`http://host:4317`) that receives traces; `None`: no export.
    pub otlp_endpoint: Option<String>,
    /// The scale-out backend; `None`: the embedded store in `data_dir`.
    pub scale_out: Option<ScaleOut>,
}

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7750";
const MIN_ADMIN_KEY_LEN: usize = 16;

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            data_dir: PathBuf::from("./tally-data"),
            admin_key: None,
            log_format: LogFormat::Text,
            max_message_bytes: 4 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            min_free_disk_bytes: crate::storage::embedded::DEFAULT_MIN_FREE_DISK_BYTES,
            limits: IngestLimits::default(),
            geoip_db: Vec::new(),
            client_ip_header: None,
            rate_limits: RateLimitConfig::default(),
            otlp_endpoint: None,
            scale_out: None,
        }
    }
}

/// A configuration problem, reported before the server starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's explanation.
        message: String,
    },
    /// A value is out of its domain.
    #[error("invalid setting {name}: {message}")]
    Invalid {
        /// Setting name.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Options of the embedded store: its dedup window covers the oldest
    /// timestamp ingest accepts, plus a day of margin on each side.
    pub fn embedded_options(&self) -> crate::storage::embedded::EmbeddedOptions {
        let past_days = self.limits.max_past_secs.div_euclid(86_400) + 1;
        crate::storage::embedded::EmbeddedOptions {
            dedup_window_days: past_days + 1,
            min_free_disk_bytes: self.min_free_disk_bytes,
            ..Default::default()
        }
    }

    /// Options of the scale-out store, when it is configured; its dedup
    /// window is the embedded store's.
    pub fn scylla_options(&self) -> Option<crate::storage::scylla::ScyllaOptions> {
        let scale_out = self.scale_out.as_ref()?;
        Some(crate::storage::scylla::ScyllaOptions {
            nodes: scale_out.nodes.clone(),
            keyspace: scale_out.keyspace.clone(),
            replication_factor: scale_out.replication_factor,
            consistency: crate::storage::scylla::parse_consistency(&scale_out.consistency)?,
            request_timeout: scale_out.request_timeout,
            redis_url: scale_out.redis_url.clone(),
            redis_prefix: scale_out.redis_prefix.clone(),
            dedup_window_days: self.embedded_options().dedup_window_days,
        })
    }

    /// Configuration of the ingest pipeline's stages.
    pub fn pipeline(&self) -> crate::pipeline::PipelineConfig {
        crate::pipeline::PipelineConfig {
            validate: crate::pipeline::ValidateConfig {
                limits: self.limits.clone(),
            },
            geo: crate::pipeline::GeoConfig {
                databases: self.geoip_db.clone(),
            },
            ..Default::default()
        }
    }

    /// Loads the optional file and applies the overrides, then validates.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Self, ConfigError> {
        let file_config = match file {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str(&text).map_err(|err| ConfigError::Parse {
                    path: path.to_owned(),
                    message: err.to_string(),
                })?
            }
        };
        Self::resolve(file_config, overrides)
    }

    /// Layers overrides over the file over the defaults, and validates.
    pub fn resolve(file: FileConfig, overrides: Overrides) -> Result<Self, ConfigError> {
        let defaults = Config::default();
        let listen_raw = overrides
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_raw.parse().map_err(|_| ConfigError::Invalid {
            name: "listen",
            message: format!("{listen_raw:?} is not an address such as 127.0.0.1:7750"),
        })?;
        let admin_key = overrides.admin_key.or(file.admin_key).filter(|k| !k.is_empty());
        if let Some(key) = &admin_key
            && key.len() < MIN_ADMIN_KEY_LEN
        {
            return Err(ConfigError::Invalid {
                name: "admin_key",
                message: format!("the operator key must be at least {MIN_ADMIN_KEY_LEN} characters"),
            });
        }
        let max_message_bytes = file.max_message_bytes.unwrap_or(defaults.max_message_bytes);
        if !(1024..=256 * 1024 * 1024).contains(&max_message_bytes) {
            return Err(ConfigError::Invalid {
                name: "max_message_bytes",
                message: "must be between 1 KiB and 256 MiB".into(),
            });
        }
        let limits = file.limits.unwrap_or_default();
        if !(60..=3650 * 86_400).contains(&limits.max_past_secs)
            || !(0..=7 * 86_400).contains(&limits.max_future_secs)
        {
            return Err(ConfigError::Invalid {
                name: "limits.max_past_secs",
                message: "max_past_secs must be 60 s to 10 years, max_future_secs 0 to 7 days".into(),
            });
        }
        if limits.max_batch_events == 0 || limits.max_batch_events > 100_000 {
            return Err(ConfigError::Invalid {
                name: "limits.max_batch_events",
                message: "must be 1-100000".into(),
            });
        }
        let rate_limits = file.rate_limits.unwrap_or_default();
        let rate_ok = |r: f64| r.is_finite() && r >= 0.0;
        if !rate_ok(rate_limits.events_per_second) || !rate_ok(rate_limits.requests_per_second) {
            return Err(ConfigError::Invalid {
                name: "rate_limits",
                message: "events_per_second and requests_per_second must be 0 (unlimited) or more".into(),
            });
        }
        if rate_limits.max_concurrent_scans == 0 || rate_limits.query_timeout_secs == 0 {
            return Err(ConfigError::Invalid {
                name: "rate_limits",
                message: "max_concurrent_scans and query_timeout_secs must be at least 1".into(),
            });
        }
        let otlp_endpoint = overrides
            .otlp_endpoint
            .or(file.otlp_endpoint)
            .filter(|e| !e.is_empty());
        if let Some(endpoint) = &otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                name: "otlp_endpoint",
                message: format!("{endpoint:?} is not a URL such as http://127.0.0.1:4317"),
            });
        }
        let client_ip_header = overrides
            .client_ip_header
            .or(file.client_ip_header)
            .filter(|h| !h.is_empty());
        if let Some(header) = &client_ip_header
            && http::HeaderName::from_bytes(header.as_bytes()).is_err()
        {
            return Err(ConfigError::Invalid {
                name: "client_ip_header",
                message: format!("{header:?} is not an HTTP header name such as x-forwarded-for"),
            });
        }
        let scale_out = resolve_scale_out(
            file.scylla.unwrap_or_default(),
            file.redis.unwrap_or_default(),
            Overrides {
                scylla: overrides.scylla,
                scylla_keyspace: overrides.scylla_keyspace,
                redis: overrides.redis,
                redis_prefix: overrides.redis_prefix,
                ..Overrides::default()
            },
        )?;
        Ok(Self {
            scale_out,
            listen,
            data_dir: overrides.data_dir.or(file.data_dir).unwrap_or(defaults.data_dir),
            admin_key,
            log_format: overrides
                .log_format
                .or(file.log_format)
                .unwrap_or(defaults.log_format),
            max_message_bytes,
            shutdown_grace: file
                .shutdown_grace_secs
                .map_or(defaults.shutdown_grace, Duration::from_secs),
            min_free_disk_bytes: file
                .min_free_disk_mb
                .map_or(defaults.min_free_disk_bytes, |mb| mb.saturating_mul(1 << 20)),
            limits,
            rate_limits,
            otlp_endpoint,
            geoip_db: match (overrides.geoip_db, file.geoip_db) {
                (given, _) if !given.is_empty() => given,
                (_, Some(OneOrMany::One(path))) => vec![path],
                (_, Some(OneOrMany::Many(paths))) => paths,
                (_, None) => Vec::new(),
            },
            client_ip_header,
        })
    }
}

/// The scale-out settings: none, or both a cluster and a Redis.
fn resolve_scale_out(
    scylla: FileScylla,
    redis: FileRedis,
    overrides: Overrides,
) -> Result<Option<ScaleOut>, ConfigError> {
    let invalid = |name, message: String| ConfigError::Invalid { name, message };
    let nodes: Vec<String> = if overrides.scylla.is_empty() {
        scylla.nodes.unwrap_or_default()
    } else {
        overrides.scylla
    };
    let nodes: Vec<String> = nodes
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .map(|n| {
            // A bare host means the CQL default port.
            if n.rsplit_once(':')
                .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
            {
                n.to_owned()
            } else {
                format!("{n}:9042")
            }
        })
        .collect();
    let redis_url = overrides.redis.or(redis.url).filter(|u| !u.is_empty());
    let redis_url = match (nodes.is_empty(), redis_url) {
        (true, None) => return Ok(None),
        (false, Some(url)) => url,
        (true, Some(_)) => {
            return Err(invalid(
                "scylla",
                "--redis needs --scylla HOST:PORT,... too: the scale-out backend uses both".into(),
            ));
        }
        (false, None) => {
            return Err(invalid(
                "redis",
                "--scylla needs --redis redis://HOST:PORT/ too: the scale-out backend uses both".into(),
            ));
        }
    };
    if !(redis_url.starts_with("redis://")
        || redis_url.starts_with("rediss://")
        || redis_url.starts_with("unix://"))
    {
        return Err(invalid(
            "redis",
            format!("{redis_url:?} is not a Redis URL such as redis://127.0.0.1:6379/"),
        ));
    }
    let keyspace = overrides
        .scylla_keyspace
        .or(scylla.keyspace)
        .unwrap_or_else(|| "tally".into());
    crate::storage::scylla::schema::check_keyspace_name(&keyspace)
        .map_err(|m| invalid("scylla.keyspace", m))?;
    let consistency = scylla.consistency.unwrap_or_else(|| "local_quorum".into());
    if crate::storage::scylla::parse_consistency(&consistency).is_none() {
        return Err(invalid(
            "scylla.consistency",
            format!("{consistency:?} is not a consistency level such as one, quorum or local_quorum"),
        ));
    }
    let replication_factor = scylla.replication_factor.unwrap_or(1);
    if !(1..=9).contains(&replication_factor) {
        return Err(invalid("scylla.replication_factor", "must be 1-9".into()));
    }
    let request_timeout = Duration::from_secs(scylla.request_timeout_secs.unwrap_or(5));
    if !(1..=120).contains(&request_timeout.as_secs()) {
        return Err(invalid("scylla.request_timeout_secs", "must be 1-120".into()));
    }
    let redis_prefix = overrides
        .redis_prefix
        .or(redis.prefix)
        .unwrap_or_else(|| "tally:".into());
    if redis_prefix.len() > 64 {
        return Err(invalid("redis.prefix", "must be at most 64 bytes".into()));
    }
    Ok(Some(ScaleOut {
        nodes,
        keyspace,
        replication_factor,
        consistency,
        request_timeout,
        redis_url,
        redis_prefix,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_over_defaults() {
        let file: FileConfig =
            toml::from_str("listen = \"0.0.0.0:9000\"\ndata_dir = \"/var/tally\"").unwrap();
        let overrides = Overrides {
            listen: Some("127.0.0.1:1234".into()),
            ..Default::default()
        };
        let config = Config::resolve(file, overrides).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:1234");
        assert_eq!(config.data_dir, PathBuf::from("/var/tally"));
        assert_eq!(config.log_format, LogFormat::Text);
        // 30 days accepted -> 32 days of dedup window.
        assert_eq!(config.embedded_options().dedup_window_days, 32);
    }

    #[test]
    fn geoip_db_is_one_path_or_a_list() {
        let one: FileConfig = toml::from_str("geoip_db = \"city.mmdb\"").unwrap();
        let config = Config::resolve(one, Overrides::default()).unwrap();
        assert_eq!(config.geoip_db, [PathBuf::from("city.mmdb")]);
        let many: FileConfig = toml::from_str("geoip_db = [\"v4.mmdb\", \"v6.mmdb\"]").unwrap();
        let both = Config::resolve(many, Overrides::default()).unwrap();
        assert_eq!(
            both.geoip_db,
            [PathBuf::from("v4.mmdb"), PathBuf::from("v6.mmdb")]
        );
        let many: FileConfig = toml::from_str("geoip_db = [\"v4.mmdb\", \"v6.mmdb\"]").unwrap();
        let flags = Overrides {
            geoip_db: vec![PathBuf::from("flag.mmdb")],
            ..Default::default()
        };
        assert_eq!(
            Config::resolve(many, flags).unwrap().geoip_db,
            [PathBuf::from("flag.mmdb")]
        );
    }

    #[test]
    fn bad_values_are_named() {
        let err = Config::resolve(
            FileConfig::default(),
            Overrides {
                listen: Some("nope".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
        let err = Config::resolve(
            FileConfig::default(),
            Overrides {
                admin_key: Some("short".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("admin_key"), "{err}");
        let err = toml::from_str::<FileConfig>("lisen = \"x\"").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn scale_out_needs_both_scylla_and_redis() {
        assert_eq!(
            Config::resolve(FileConfig::default(), Overrides::default())
                .unwrap()
                .scale_out,
            None,
            "the embedded store by default"
        );
        let file: FileConfig = toml::from_str(
            "[scylla]\nnodes = [\"10.0.0.1:9042\", \"10.0.0.2\"]\nkeyspace = \"analytics\"\n\
             consistency = \"quorum\"\nreplication_factor = 3\n[redis]\nurl = \"redis://10.0.0.9:6379/\"",
        )
        .unwrap();
        let config = Config::resolve(file, Overrides::default()).unwrap();
        let scale_out = config.scale_out.clone().unwrap();
        assert_eq!(scale_out.nodes, ["10.0.0.1:9042", "10.0.0.2:9042"]);
        assert_eq!(scale_out.keyspace, "analytics");
        assert_eq!(scale_out.redis_prefix, "tally:");
        let options = config.scylla_options().unwrap();
        assert_eq!(options.replication_factor, 3);
        assert_eq!(options.dedup_window_days, 32);
        let flags = Overrides {
            scylla: vec!["127.0.0.1:19042".into()],
            redis: Some("redis://127.0.0.1:16379/".into()),
            scylla_keyspace: Some("other".into()),
            redis_prefix: Some("blue:".into()),
            ..Default::default()
        };
        let file: FileConfig = toml::from_str("[scylla]\nkeyspace = \"analytics\"").unwrap();
        let scale_out = Config::resolve(file, flags).unwrap().scale_out.unwrap();
        assert_eq!(
            (
                scale_out.nodes[0].as_str(),
                scale_out.keyspace.as_str(),
                scale_out.redis_prefix.as_str()
            ),
            ("127.0.0.1:19042", "other", "blue:")
        );
        for (flags, named) in [
            (
                Overrides {
                    scylla: vec!["127.0.0.1:9042".into()],
                    ..Default::default()
                },
                "redis",
            ),
            (
                Overrides {
                    redis: Some("redis://127.0.0.1/".into()),
                    ..Default::default()
                },
                "scylla",
            ),
            (
                Overrides {
                    scylla: vec!["127.0.0.1:9042".into()],
                    redis: Some("127.0.0.1:6379".into()),
                    ..Default::default()
                },
                "redis",
            ),
            (
                Overrides {
                    scylla: vec!["127.0.0.1:9042".into()],
                    redis: Some("redis://127.0.0.1/".into()),
                    scylla_keyspace: Some("bad-name".into()),
                    ..Default::default()
                },
                "scylla.keyspace",
            ),
        ] {
            let err = Config::resolve(FileConfig::default(), flags).unwrap_err();
            assert!(err.to_string().contains(&format!("setting {named}:")), "{err}");
        }
        let err = toml::from_str::<FileConfig>("[scylla]\nnode = [\"x\"]").unwrap_err();
        assert!(err.to_string().contains("node"), "{err}");
    }
}
