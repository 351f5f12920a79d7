//! The ingest core: runs each event of a batch through the pipeline, appends
//! the valid ones (dedup happens in the store) and reports every verdict.

use std::sync::Arc;

use tally_proto::v1;

use crate::domain::{SiteId, SiteRecord};
use crate::error::{Error, Result};
use crate::metrics::metrics;
use crate::pipeline::{IngestLimits, Pipeline, RequestFacts, Stop};
use crate::realtime::Realtime;
use crate::rollup::Rollups;
use crate::salts::Salts;
use crate::storage::{AppendOutcome, Store};

/// Records events.
pub struct Ingest {
    store: Arc<dyn Store>,
    pipeline: Pipeline,
    limits: IngestLimits,
    salts: Salts,
    realtime: Arc<Realtime>,
    rollups: Arc<Rollups>,
}

impl Ingest {
    /// An ingest core over `store` that tells `realtime` and `rollups`
    /// about stored events.
    pub fn new(
        store: Arc<dyn Store>,
        pipeline: Pipeline,
        limits: IngestLimits,
        realtime: Arc<Realtime>,
        rollups: Arc<Rollups>,
    ) -> Self {
        Self {
            salts: Salts::new(store.clone()),
            store,
            pipeline,
            limits,
            realtime,
            rollups,
        }
    }

    /// The site's current visitor-id salt (see [`Salts`]).
    pub async fn salt(&self, site: &SiteRecord, now_micros: i64) -> Result<[u8; 32]> {
        self.salts.current(site, now_micros).await
    }

    /// Refuses a batch of more events than the limit (before any other check:
    /// such a batch can never be accepted).
    pub fn check_batch_size(&self, events: usize) -> Result<()> {
        if events > self.limits.max_batch_events {
            return Err(Error::invalid(
                "events",
                format!(
                    "{events} events in one request, the limit is {}",
                    self.limits.max_batch_events
                ),
            ));
        }
        Ok(())
    }

    /// Validates, enriches and stores a batch; returns one verdict per event.
    pub async fn track(&self, facts: &RequestFacts, events: &[v1::Event]) -> Result<v1::TrackResponse> {
        self.check_batch_size(events.len())?;
        let site = SiteId::parse(&facts.site.site_id)?;
        let mut results = Vec::with_capacity(events.len());
        let mut accepted_indices = Vec::with_capacity(events.len());
        let mut to_store = Vec::with_capacity(events.len());
        for (index, raw) in events.iter().enumerate() {
            let mut result = v1::EventResult {
                index: index as i32,
                ..Default::default()
            };
            match self.pipeline.run(raw, facts) {
                Ok(stored) => {
                    accepted_indices.push(index);
                    to_store.push(stored);
                }
                Err(Stop::Rejected(rejection)) => {
                    result.event_id = raw.event_id.clone();
                    result.set_verdict(v1::Verdict::Rejected);
                    result.set_reason(rejection.reason);
                    result.field = rejection.field;
                    result.message = rejection.message;
                }
                Err(Stop::Excluded(exclusion)) => {
                    result.event_id = raw.event_id.clone();
                    result.set_verdict(v1::Verdict::Excluded);
                    result.message = exclusion.message.to_owned();
                }
            }
            results.push(result);
        }
        let timeout_micros = i64::from(facts.site.session_timeout_minutes.max(1)) * 60_000_000;
        let started = std::time::Instant::now();
        self.store
            .sessionize(&site, timeout_micros, &mut to_store)
            .await?;
        metrics().store_sessionize.since(started);
        let started = std::time::Instant::now();
        let outcomes = self.store.append(&site, &to_store).await?;
        metrics().store_append.since(started);
        // Rollups take the stored events once the store decided which are new.
        if self.rollups.enabled() {
            let is_new = outcomes.iter().map(|o| *o == AppendOutcome::Stored);
            self.rollups.apply(
                &facts.site.site_id,
                to_store
                    .iter()
                    .zip(is_new)
                    .filter_map(|(e, new)| new.then_some(e)),
            );
        } else if outcomes.contains(&AppendOutcome::Stored) {
            self.rollups.apply(&facts.site.site_id, std::iter::empty());
        }
        // The realtime counters take a few fields of each newly stored event.
        let stored = to_store
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| **outcome == AppendOutcome::Stored)
            .filter_map(|(event, _)| crate::realtime::Hit::of(event));
        self.realtime.record(&site, stored).await;
        for (index, outcome) in accepted_indices.into_iter().zip(outcomes) {
            let result = &mut results[index];
            match outcome {
                AppendOutcome::Stored => result.set_verdict(v1::Verdict::Accepted),
                AppendOutcome::Duplicate => {
                    result.set_verdict(v1::Verdict::Duplicate);
                    result.event_id = events[index].event_id.clone();
                }
            }
        }
        let count = |v: v1::Verdict| results.iter().filter(|r| r.verdict() == v).count() as i32;
        let m = metrics();
        for (verdict, label) in [
            (v1::Verdict::Accepted, "accepted"),
            (v1::Verdict::Duplicate, "duplicate"),
            (v1::Verdict::Rejected, "rejected"),
            (v1::Verdict::Excluded, "excluded"),
        ] {
            m.events.add(label, count(verdict) as u64);
        }
        for r in results.iter().filter(|r| r.verdict() == v1::Verdict::Rejected) {
            m.rejections.add(r.reason().as_str_name(), 1);
        }
        Ok(v1::TrackResponse {
            accepted: count(v1::Verdict::Accepted),
            duplicates: count(v1::Verdict::Duplicate),
            rejected: count(v1::Verdict::Rejected),
            excluded: count(v1::Verdict::Excluded),
            results,
        })
    }
}
