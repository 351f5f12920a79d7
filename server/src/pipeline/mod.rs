//! The ingest pipeline: stages that turn a client event into a stored event,
//! or reject it with a reason. The order of the stages lives in [`Pipeline::build`].
//!
//! Dedup and storage follow the stages; they happen in the store, which sees
//! every concurrent append (see `storage::EventStore::append`).

mod validate;
mod visitor;

use std::net::IpAddr;

use tally_proto::v1;

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

/// What a stage decided.
pub type Outcome = Result<(), Rejection>;

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
    /// Effective user agent (context, else header).
    pub user_agent: String,
    /// Effective client IP (context, else peer). Never stored.
    pub ip: Option<IpAddr>,
}

/// One step of the pipeline.
pub trait Stage: Send + Sync {
    /// Enriches `draft`, or rejects it.
    fn apply(&self, draft: &mut Draft<'_>) -> Outcome;
}

/// The configured stages, in order.
pub struct Pipeline {
    stages: Vec<Box<dyn Stage>>,
}

impl Pipeline {
    /// Builds the pipeline. The stage order is defined here and nowhere else.
    pub fn build(validate: &ValidateConfig, visitor: &VisitorConfig, secret: [u8; 32]) -> Self {
        let stages: Vec<Box<dyn Stage>> = vec![Box::new(validate.build()), Box::new(visitor.build(secret))];
        Self { stages }
    }

    /// Runs every stage on one event.
    pub fn run(&self, raw: &v1::Event, facts: &RequestFacts) -> Result<StoredEvent, Rejection> {
        let mut draft = Draft {
            raw,
            facts,
            stored: StoredEvent {
                received_micros: facts.now_micros,
                ..Default::default()
            },
            user_agent: String::new(),
            ip: None,
        };
        for stage in &self.stages {
            stage.apply(&mut draft)?;
        }
        Ok(draft.stored)
    }
}
