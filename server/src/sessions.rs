//! Visits (sessions), formed at ingest.
//!
//! A visitor's events belong to one visit while they are no more than the
//! site's session timeout (30 minutes by default) apart. A new campaign
//! (`utm_source` different from the visit's) starts a new visit; a visit lasts
//! at most [`MAX_VISIT_MICROS`]; visits may cross midnight. A client session id
//! (sent by the mobile SDKs) wins over these rules: its events form one visit.
//!
//! The rules are this module's pure functions over a visitor's recent visits
//! ([`VisitorVisits`]); a backend keeps that state (in memory for the
//! embedded store) and applies [`assign`] atomically per visitor.
//!
//! Each stored event carries its visit's id and start time, so reports count
//! visits without re-forming them and `SessionService` finds a visit's events
//! by scanning from its start.

use std::hash::{BuildHasher, Hasher};

use crate::domain::{EventKind, StoredEvent};

/// Longest visit: a visitor active for more than a day gets a new visit.
pub const MAX_VISIT_MICROS: i64 = 86_400_000_000;

/// Recent visits of one visitor kept for assignment.
const KEPT_VISITS: usize = 4;

/// One visit as the assignment needs it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VisitState {
    /// Visit id.
    pub id: u64,
    /// Start time (the first event seen), microseconds.
    pub start: i64,
    /// Earliest event timestamp so far.
    pub first: i64,
    /// Latest event timestamp so far.
    pub last: i64,
    /// `utm_source` the visit began with ("" for none).
    pub campaign: String,
    /// Client session id, for visits the client named.
    pub client_session: String,
}

/// The recent visits of one visitor, newest last. Serializable, for
/// backends that keep it outside the process (Redis).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VisitorVisits {
    /// Visits, by start time.
    pub visits: Vec<VisitState>,
}

/// What a visit did, summed up from its events in time order.
#[derive(Clone, Debug, Default)]
pub struct VisitFacts {
    seen: bool,
    /// Earliest event, microseconds.
    pub first: i64,
    /// Latest event, microseconds.
    pub last: i64,
    /// Page and screen views.
    pub views: u32,
    /// A custom or engagement event not marked `non_interaction`.
    pub engaged: bool,
    /// Path of the first view.
    pub entry: String,
    /// Path of the last view.
    pub exit: String,
}

impl VisitFacts {
    /// Adds the visit's next event.
    pub fn add(&mut self, e: &StoredEvent) {
        if !self.seen {
            (self.seen, self.first, self.last) = (true, e.ts_micros, e.ts_micros);
        }
        self.first = self.first.min(e.ts_micros);
        self.last = self.last.max(e.ts_micros);
        match e.event_kind() {
            Some(k) if k.is_view() => {
                if self.views == 0 {
                    self.entry.clone_from(&e.path);
                }
                self.views += 1;
                self.exit.clone_from(&e.path);
            }
            Some(EventKind::Custom | EventKind::Engagement) if !e.non_interaction => self.engaged = true,
            _ => {}
        }
    }

    /// A bounce: one page view (or none) and no engagement.
    pub fn bounced(&self) -> bool {
        self.views <= 1 && !self.engaged
    }
}

/// The public id of a visit: its start (microseconds, hex) and its id.
pub fn public_id(start_micros: i64, visit: u64) -> String {
    format!("{:x}-{visit:016x}", start_micros.max(0))
}

/// The start and id in a public visit id.
pub fn parse_public_id(raw: &str) -> Option<(i64, u64)> {
    let (start, visit) = raw.trim().split_once('-')?;
    Some((
        i64::from_str_radix(start, 16).ok()?,
        u64::from_str_radix(visit, 16).ok()?,
    ))
}

/// A deterministic visit id: the same visitor starting at the same time (a
/// retried event) gets the same id.
fn visit_id(visitor: u64, start: i64, client_session: &str) -> u64 {
    // A fixed-key hash: ids must be the same on every instance and restart.
    let mut hasher = foldhash::fast::FixedState::with_seed(0x7461_6c6c_7976_6973).build_hasher();
    hasher.write_u64(visitor);
    hasher.write_i64(if client_session.is_empty() { start } else { 0 });
    hasher.write(client_session.as_bytes());
    // 0 means "no visit" in stored events.
    hasher.finish().max(1)
}

/// Assigns `event` to a visit of its visitor, updating `state`; sets the
/// event's `session` and `session_start`.
pub fn assign(state: &mut VisitorVisits, event: &mut StoredEvent, timeout_micros: i64) {
    let t = event.ts_micros;
    let found = if !event.client_session.is_empty() {
        state
            .visits
            .iter_mut()
            .position(|v| v.client_session == event.client_session)
    } else {
        let new_campaign = |v: &VisitState| !event.utm_source.is_empty() && event.utm_source != v.campaign;
        state.visits.iter().rposition(|v| {
            v.client_session.is_empty()
                && t >= v.first - timeout_micros
                && t <= v.last + timeout_micros
                && (t - v.start).abs() < MAX_VISIT_MICROS
                && !(t > v.last && new_campaign(v))
        })
    };
    let (id, start) = match found {
        Some(i) => {
            let v = &mut state.visits[i];
            v.first = v.first.min(t);
            v.last = v.last.max(t);
            (v.id, v.start)
        }
        None => {
            let id = visit_id(event.visitor, t, &event.client_session);
            state.visits.push(VisitState {
                id,
                start: t,
                first: t,
                last: t,
                campaign: event.utm_source.clone(),
                client_session: event.client_session.clone(),
            });
            state.visits.sort_by_key(|v| v.start);
            if state.visits.len() > KEPT_VISITS {
                state.visits.remove(0);
            }
            (id, t)
        }
    };
    event.session = id;
    event.session_start = start;
}

/// The order in which to assign a batch: by timestamp, so that a batch sent
/// out of order forms the same visits as one sent in order.
pub fn batch_order(events: &[StoredEvent]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by_key(|&i| events[i].ts_micros);
    order
}

/// Adds a stored event to the state it came from (rebuilding state after a
/// restart): its visit is created or widened.
pub fn replay(state: &mut VisitorVisits, event: &StoredEvent) {
    if event.session == 0 {
        return;
    }
    let t = event.ts_micros;
    match state.visits.iter_mut().find(|v| v.id == event.session) {
        Some(v) => {
            v.first = v.first.min(t);
            v.last = v.last.max(t);
        }
        None => {
            state.visits.push(VisitState {
                id: event.session,
                start: event.session_start,
                first: t,
                last: t,
                campaign: if t == event.session_start {
                    event.utm_source.clone()
                } else {
                    String::new()
                },
                client_session: event.client_session.clone(),
            });
            state.visits.sort_by_key(|v| v.start);
            if state.visits.len() > KEPT_VISITS {
                state.visits.remove(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000;

    fn event(t_min: i64, utm: &str) -> StoredEvent {
        StoredEvent {
            ts_micros: t_min * MIN,
            visitor: 7,
            utm_source: utm.into(),
            ..Default::default()
        }
    }

    fn visits(events: &[(i64, &str)]) -> Vec<u64> {
        let mut state = VisitorVisits::default();
        events
            .iter()
            .map(|(t, utm)| {
                let mut e = event(*t, utm);
                assign(&mut state, &mut e, 30 * MIN);
                e.session
            })
            .collect()
    }

    #[test]
    fn a_gap_over_the_timeout_starts_a_visit() {
        let ids = visits(&[(0, ""), (29, ""), (59, ""), (90, ""), (91, "")]);
        assert_eq!(ids[0], ids[1]);
        assert_eq!(ids[1], ids[2], "29 and 59: 30 minutes apart is still one visit");
        assert_ne!(ids[2], ids[3]);
        assert_eq!(ids[3], ids[4]);
    }

    #[test]
    fn a_new_campaign_starts_a_visit_and_a_repeat_does_not() {
        let ids = visits(&[(0, "news"), (1, "news"), (2, ""), (3, "ads"), (4, "ads")]);
        assert_eq!(ids[0], ids[1]);
        assert_eq!(ids[1], ids[2], "no campaign: stays");
        assert_ne!(ids[2], ids[3]);
        assert_eq!(ids[3], ids[4]);
    }

    #[test]
    fn late_events_join_their_visit_and_retries_get_the_same_id() {
        let ids = visits(&[(0, ""), (10, ""), (5, ""), (100, ""), (0, "")]);
        assert_eq!(ids[0], ids[2]);
        assert_eq!(ids[0], ids[4]);
        assert_ne!(ids[0], ids[3]);
        // A fresh state (another instance after a restart) names the visit alike.
        assert_eq!(visits(&[(0, "")])[0], ids[0]);
    }

    #[test]
    fn visits_end_after_a_day_and_client_sessions_win() {
        let day: Vec<(i64, &str)> = (0..=50).map(|i| (i * 29, "")).collect();
        let ids = visits(&day);
        let split = day
            .iter()
            .position(|(t, _)| *t * MIN >= MAX_VISIT_MICROS)
            .unwrap();
        assert!(ids[..split].iter().all(|id| *id == ids[0]));
        assert_ne!(ids[split], ids[0]);

        let mut state = VisitorVisits::default();
        let mut a = event(0, "");
        a.client_session = "app-1".into();
        let mut b = event(500, "");
        b.client_session = "app-1".into();
        assign(&mut state, &mut a, 30 * MIN);
        assign(&mut state, &mut b, 30 * MIN);
        assert_eq!(a.session, b.session, "the client's session spans the gap");
        assert_eq!(b.session_start, 0);
    }
}
