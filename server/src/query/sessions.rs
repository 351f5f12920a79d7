//! Session look-ups: one visit with its events, visits that started in a time
//! range, a visitor's recent visits.
//!
//! A visit's public id names its start and its id ("<start µs, hex>-<id>"),
//! so its events are found by scanning from its start: a visit's events, in
//! time order, are never more than the site's timeout apart (see
//! `crate::sessions`), which bounds every scan here.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::str::FromStr;

use chrono_tz::Tz;
use futures::StreamExt;
use tally_proto::v1;

use super::filter::Predicate;
use crate::convert::{micros_to_timestamp, recorded_event, timestamp_to_micros};
use crate::domain::{SiteId, SiteRecord, StoredEvent, VisitorId};
use crate::error::{Error, Result};
use crate::sessions::{MAX_VISIT_MICROS, VisitFacts, public_id};
use crate::storage::Store;

fn parse_session_id(raw: &str) -> Result<(i64, u64)> {
    crate::sessions::parse_public_id(raw).ok_or_else(|| {
        Error::invalid(
            "session_id",
            format!("{raw:?} is not a session id such as \"6411f3c2a1b40-9c2f0e4d1a7b3c55\""),
        )
    })
}

/// A visit summed up from its events, with what a look-up shows of it.
#[derive(Default)]
struct Summary {
    facts: VisitFacts,
    first: Option<StoredEvent>,
    events: i64,
    user_id: String,
    bot: bool,
    matched: bool,
}

impl Summary {
    fn add(&mut self, e: &StoredEvent) {
        if self.first.is_none() {
            self.first = Some(e.clone());
        }
        self.facts.add(e);
        self.events += 1;
        self.bot |= e.bot;
        if !e.user_id.is_empty() {
            self.user_id.clone_from(&e.user_id);
        }
    }

    fn to_proto(&self, site: &str) -> v1::Session {
        let first = self.first.clone().unwrap_or_default();
        let duration = self.facts.last - self.facts.first;
        v1::Session {
            session_id: public_id(first.session_start, first.session),
            site_id: site.to_owned(),
            visitor_id: VisitorId(first.visitor).to_string(),
            user_id: self.user_id.clone(),
            start_time: Some(micros_to_timestamp(self.facts.first)),
            end_time: Some(micros_to_timestamp(self.facts.last)),
            duration: Some(prost_types::Duration {
                seconds: duration / 1_000_000,
                nanos: ((duration % 1_000_000) * 1000) as i32,
            }),
            entry_page: self.facts.entry.clone(),
            exit_page: self.facts.exit.clone(),
            pageviews: i64::from(self.facts.views),
            events: self.events,
            bounce: self.facts.bounced(),
            referrer: first.referrer,
            source: first.source,
            medium: first.medium,
            campaign: first.campaign,
            device_type: first.device_type,
            browser: first.browser,
            os: first.os,
            country: first.country,
            region: first.region,
            city: first.city,
            app_version: first.app_version,
            recorded_events: Vec::new(),
        }
    }
}

fn timeout_micros(site: &SiteRecord) -> i64 {
    i64::from(site.session_timeout_minutes.max(1)) * 60_000_000
}

/// One visit with its events in order.
pub async fn get_session(
    store: &dyn Store,
    site: &SiteRecord,
    req: &v1::GetSessionRequest,
) -> Result<v1::Session> {
    if req.session_id.is_empty() {
        return Err(Error::invalid("session_id", "session_id is required"));
    }
    let (start, visit) = parse_session_id(&req.session_id)?;
    let site_id = SiteId::parse(&site.site_id)?;
    let timeout = timeout_micros(site);
    // Late events may precede the start; each is within the timeout of the next.
    let mut from = start - timeout;
    let events = loop {
        let mut events = Vec::new();
        let mut chunks = store.scan(&site_id, from, start + MAX_VISIT_MICROS);
        'scan: while let Some(chunk) = chunks.next().await {
            for e in chunk? {
                if e.session == visit {
                    events.push(e);
                } else if events.last().map_or(start, |last| last.ts_micros) + timeout < e.ts_micros {
                    // Nothing of the visit can follow a gap this long (and a
                    // visit's first events are within the timeout of its start).
                    break 'scan;
                }
            }
        }
        let reaches_back = events.first().is_some_and(|e| e.ts_micros - timeout <= from);
        if !reaches_back || from <= start - MAX_VISIT_MICROS {
            break events;
        }
        from = (from - 4 * 3_600_000_000).max(start - MAX_VISIT_MICROS);
    };
    if events.is_empty() {
        return Err(Error::NotFound(format!(
            "session {} of site {}",
            req.session_id, site.site_id
        )));
    }
    let mut summary = Summary::default();
    for e in &events {
        summary.add(e);
    }
    let mut session = summary.to_proto(&site.site_id);
    session.recorded_events = events.iter().map(recorded_event).collect();
    Ok(session)
}

/// Page sizes: (default, most).
const LIST_PAGE: (i32, i32) = (100, 1000);
const VISITOR_PAGE: (i32, i32) = (20, 1000);

fn page_size(raw: i32, (default, most): (i32, i32)) -> Result<usize> {
    match raw {
        0 => Ok(default as usize),
        n if (1..=most).contains(&n) => Ok(n as usize),
        _ => Err(Error::invalid("page_size", format!("page_size must be 1-{most}"))),
    }
}

/// Paging: sessions are ordered newest first by (start, id); a token is the
/// last returned session's id.
fn after_token(token: &str) -> Result<Option<(i64, u64)>> {
    match token {
        "" => Ok(None),
        t => parse_session_id(t)
            .map(Some)
            .map_err(|_| Error::invalid("page_token", "page_token is not one this server gave")),
    }
}

fn page(
    mut visits: Vec<(i64, u64, Summary)>,
    after: Option<(i64, u64)>,
    size: usize,
    site: &str,
) -> v1::ListSessionsResponse {
    visits.sort_by_key(|(start, id, _)| Reverse((*start, *id)));
    let mut rest = visits
        .into_iter()
        .filter(|(start, id, _)| after.is_none_or(|a| (*start, *id) < a))
        .peekable();
    let sessions: Vec<v1::Session> = rest
        .by_ref()
        .take(size)
        .map(|(_, _, s)| s.to_proto(site))
        .collect();
    let next_page_token = match (rest.peek(), sessions.last()) {
        (Some(_), Some(last)) => last.session_id.clone(),
        _ => String::new(),
    };
    v1::ListSessionsResponse {
        sessions,
        next_page_token,
    }
}

/// Visits that started in a time range, newest first.
pub async fn list_sessions(
    store: &dyn Store,
    site: &SiteRecord,
    req: &v1::ListSessionsRequest,
) -> Result<v1::ListSessionsResponse> {
    let range = req.time_range.unwrap_or_default();
    let (Some(from), Some(to)) = (range.start_time, range.end_time) else {
        return Err(Error::invalid(
            "time_range",
            "start_time and end_time are required",
        ));
    };
    let (from, to) = (timestamp_to_micros(&from), timestamp_to_micros(&to));
    if from >= to {
        return Err(Error::invalid("time_range", "start_time must be before end_time"));
    }
    let size = page_size(req.page_size, LIST_PAGE)?;
    let after = after_token(&req.page_token)?;
    let filter = req
        .filter
        .as_ref()
        .map(|f| Predicate::compile(f, "filter"))
        .transpose()?;
    let tz = Tz::from_str(&site.time_zone).unwrap_or(Tz::UTC);
    let site_id = SiteId::parse(&site.site_id)?;
    let timeout = timeout_micros(site);
    // Visits that start in the range may have late events just before it and
    // go on after it; their events are no more than the timeout apart.
    let mut visits: HashMap<u64, (i64, Summary)> = HashMap::new();
    let mut last_in_range_visit = to;
    let mut chunks = store.scan(&site_id, from - timeout, to + MAX_VISIT_MICROS);
    'scan: while let Some(chunk) = chunks.next().await {
        for e in chunk? {
            if e.ts_micros > last_in_range_visit + timeout {
                break 'scan;
            }
            if e.session == 0 || e.session_start < from || e.session_start >= to {
                continue;
            }
            last_in_range_visit = last_in_range_visit.max(e.ts_micros);
            let (_, summary) = visits
                .entry(e.session)
                .or_insert_with(|| (e.session_start, Summary::default()));
            summary.add(&e);
            summary.matched |= filter.as_ref().is_none_or(|f| f.eval(&e, tz));
        }
    }
    let visits = visits
        .into_iter()
        .filter(|(_, (_, s))| s.matched && (req.include_bots || !s.bot))
        .map(|(id, (start, s))| (start, id, s))
        .collect();
    Ok(page(visits, after, size, &site.site_id))
}

/// A visitor's most recent visits (by visitor id or user id), newest first,
/// looked for in the last day, week, then 30 days.
pub async fn list_visitor_sessions(
    store: &dyn Store,
    site: &SiteRecord,
    req: &v1::ListVisitorSessionsRequest,
    now_micros: i64,
) -> Result<v1::ListSessionsResponse> {
    let visitor = match (req.visitor_id.trim(), req.user_id.trim()) {
        ("", "") => return Err(Error::invalid("visitor_id", "visitor_id or user_id is required")),
        ("", _) => None,
        (v, _) => Some(u64::from_str_radix(v, 16).map_err(|_| {
            Error::invalid(
                "visitor_id",
                format!("{v:?} is not a visitor id (16 hex digits, as in RecordedEvent.visitor_id)"),
            )
        })?),
    };
    let user = req.user_id.trim();
    let size = page_size(req.page_size, VISITOR_PAGE)?;
    let after = after_token(&req.page_token)?;
    let site_id = SiteId::parse(&site.site_id)?;
    let day = 86_400_000_000;
    // Windows are read newest first, so a visit's events are sorted at the end.
    let mut visits: HashMap<u64, (i64, Vec<StoredEvent>)> = HashMap::new();
    let mut to = now_micros + day;
    for from in [now_micros - day, now_micros - 7 * day, now_micros - 30 * day] {
        // A visit is the visitor's if its visitor matches, or (by user id) if
        // one of its events carries the user id: then all its events count.
        let mut wanted: HashMap<u64, i64> = HashMap::new();
        let mut chunks = store.scan(&site_id, from, to);
        while let Some(chunk) = chunks.next().await {
            for e in chunk? {
                let mine = match visitor {
                    Some(v) => e.visitor == v,
                    None => e.user_id == user,
                };
                if mine && e.session != 0 {
                    wanted.entry(e.session).or_insert(e.session_start);
                    if visitor.is_some() {
                        visits
                            .entry(e.session)
                            .or_insert_with(|| (e.session_start, Vec::new()))
                            .1
                            .push(e);
                    }
                }
            }
        }
        if visitor.is_none() && !wanted.is_empty() {
            let timeout = timeout_micros(site);
            let earliest = wanted.values().min().copied().unwrap_or(from) - timeout;
            let mut chunks = store.scan(&site_id, earliest, to.max(earliest + 1));
            while let Some(chunk) = chunks.next().await {
                for e in chunk? {
                    if wanted.contains_key(&e.session)
                        && !visits
                            .get(&e.session)
                            .is_some_and(|(_, seen)| seen.iter().any(|s| s.event_id == e.event_id))
                    {
                        visits
                            .entry(e.session)
                            .or_insert_with(|| (e.session_start, Vec::new()))
                            .1
                            .push(e);
                    }
                }
            }
        }
        let older = visits
            .values()
            .filter(|(start, _)| after.is_none_or(|a| *start <= a.0))
            .count();
        if older > size {
            break;
        }
        to = from;
    }
    let visits = visits
        .into_iter()
        .map(|(id, (start, mut events))| {
            events.sort_by_key(|e| e.ts_micros);
            let mut summary = Summary::default();
            events.iter().for_each(|e| summary.add(e));
            (start, id, summary)
        })
        .collect();
    Ok(page(visits, after, size, &site.site_id))
}
