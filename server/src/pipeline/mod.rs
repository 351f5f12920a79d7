//! The ingest pipeline: stages that turn a client event into a stored event,
//! or reject it with a reason. The order of the stages lives in [`Pipeline::build`]:
//!
//! validate -> consent -> user agent -> bot -> source -> geo -> visitor id
//!
//! Dedup and storage follow the stages; they happen in the store, which sees
//! every concurrent append (see `storage::EventStore::append`). Each stage has
//! a config with a `build()` that prepares everything it needs (compiled
//! regexes, caches, databases) once, at start-up.

mod bot;
mod consent;
mod geo;
mod memo;
mod source;
mod user_agent;
mod validate;
mod visitor;

use std::net::IpAddr;

use ipnet::IpNet;
use tally_proto::v1;

pub use bot::{BotConfig, BotDetector, CrawlerEntry, crawler_list};
pub use geo::{GeoConfig, GeoError};
pub use source::{SourceConfig, Traffic, classify};
pub use user_agent::{UaParser, UserAgentConfig};
pub use validate::{IngestLimits, ValidateConfig};
pub use visitor::VisitorConfig;

use crate::domain::{SiteRecord, StoredEvent};

/// Why a stage rejected an event.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    /// Reason code.
    pub reason: v1::RejectReason,
    /// Offending field, relative to the event (e.g. `properties.plan`).
    pub field: String,
    /// Human-readable explanation.
    pub message: String,
}

impl Rejection {
    /// A rejection of `field` for `reason`.
    pub fn new(reason: v1::RejectReason, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why an event is not recorded although nothing is wrong with it: the
/// site's privacy settings exclude it.
#[derive(Clone, Debug, PartialEq)]
pub struct Exclusion {
    /// Human-readable explanation.
    pub message: &'static str,
}

/// Why the pipeline stopped before the store.
#[derive(Clone, Debug, PartialEq)]
pub enum Stop {
    /// The event is invalid.
    Rejected(Rejection),
    /// The event is valid but excluded by the site's settings.
    Excluded(Exclusion),
}

impl From<Rejection> for Stop {
    fn from(rejection: Rejection) -> Self {
        Self::Rejected(rejection)
    }
}

/// What a stage decided.
pub type Outcome = Result<(), Stop>;

/// Facts about the request that every event of it shares.
#[derive(Clone, Debug)]
pub struct RequestFacts {
    /// The site, with its settings.
    pub site: SiteRecord,
    /// Server receive time, microseconds since the Unix epoch.
    pub now_micros: i64,
    /// The `user-agent` header (browsers).
    pub user_agent: String,
    /// The client's address, for geo and the cookieless visitor id. Never stored.
    pub peer_ip: Option<IpAddr>,
    /// The request came from a browser (it has an `Origin` or is grpc-web),
    /// so its `user-agent` header describes the visitor's browser.
    pub from_browser: bool,
    /// The browser asked not to be tracked (`DNT: 1` or `Sec-GPC: 1`).
    pub do_not_track: bool,
    /// The site's excluded address ranges, parsed.
    pub excluded_ips: Vec<IpNet>,
    /// The site's current salt for cookieless visitor ids. Never stored with events.
    pub salt: [u8; 32],
}

/// An event on its way through the pipeline.
#[derive(Debug)]
pub struct Draft<'a> {
    /// The event as the client sent it.
    pub raw: &'a v1::Event,
    /// Shared request facts.
    pub facts: &'a RequestFacts,
    /// The event being built.
    pub stored: StoredEvent,
    /// Effective user agent: the context's, else the header of a browser
    /// request; empty for native and backend clients that send none.
    pub user_agent: &'a str,
    /// The event describes a web page visit (it came from a browser, or
    /// carries a browser's user agent in its context).
    pub web: bool,
    /// Effective client IP (context, else peer). Never stored.
    pub ip: Option<IpAddr>,
}

/// One step of the pipeline.
pub trait Stage: Send + Sync {
    /// Enriches `draft`, or rejects it.
    fn apply(&self, draft: &mut Draft<'_>) -> Outcome;
}

/// Configuration of every stage.
#[derive(Clone, Debug, Default)]
pub struct PipelineConfig {
    /// Validation limits.
    pub validate: ValidateConfig,
    /// User agent parsing.
    pub user_agent: UserAgentConfig,
    /// Bot detection.
    pub bot: BotConfig,
    /// Traffic source classification.
    pub source: SourceConfig,
    /// Geo-IP.
    pub geo: GeoConfig,
    /// Visitor ids.
    pub visitor: VisitorConfig,
}

/// The configured stages, in order.
pub struct Pipeline {
    stages: Vec<Box<dyn Stage>>,
}

impl Pipeline {
    /// Builds the pipeline. The stage order is defined here and nowhere else.
    pub fn build(config: &PipelineConfig, secret: [u8; 32]) -> Result<Self, GeoError> {
        let stages: Vec<Box<dyn Stage>> = vec![
            Box::new(config.validate.build()),
            Box::new(consent::Consent),
            Box::new(config.user_agent.build()),
            Box::new(config.bot.build()),
            Box::new(config.source.build()),
            Box::new(config.geo.build()?),
            Box::new(config.visitor.build(secret)),
        ];
        Ok(Self { stages })
    }

    /// Runs every stage on one event.
    pub fn run(&self, raw: &v1::Event, facts: &RequestFacts) -> Result<StoredEvent, Stop> {
        let mut draft = Draft {
            raw,
            facts,
            stored: StoredEvent {
                received_micros: facts.now_micros,
                ..Default::default()
            },
            user_agent: "",
            web: false,
            ip: None,
        };
        for stage in &self.stages {
            stage.apply(&mut draft)?;
        }
        Ok(draft.stored)
    }
}
