//! Consent: the site's privacy settings may exclude an event before any
//! enrichment. Excluded events are answered `VERDICT_EXCLUDED`: not stored,
//! not an error, not to be retried.
//!
//! - Do-Not-Track / Global Privacy Control: when the site honors them, a
//!   browser sending `DNT: 1` or `Sec-GPC: 1` is not tracked.
//! - Excluded addresses: events from the site's excluded IP ranges (an
//!   office, a monitoring service) are not tracked.

use super::{Draft, Exclusion, Outcome, Stage, Stop};

/// The consent stage (it has no configuration: its settings are the site's).
pub struct Consent;

impl Stage for Consent {
    fn apply(&self, draft: &mut Draft<'_>) -> Outcome {
        let facts = draft.facts;
        if facts.do_not_track && facts.site.honor_do_not_track {
            return Err(Stop::Excluded(Exclusion {
                message: "the browser asked not to be tracked (Do-Not-Track or Global Privacy Control) and the site honors it",
            }));
        }
        if let Some(ip) = draft.ip
            && facts.excluded_ips.iter().any(|range| range.contains(&ip))
        {
            return Err(Stop::Excluded(Exclusion {
                message: "the client address is in the site's excluded IP ranges",
            }));
        }
        Ok(())
    }
}
