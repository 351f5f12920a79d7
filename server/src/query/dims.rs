//! Dimensions: validating them and reading their value off a stored event.

use std::borrow::Cow;

use chrono::{Datelike, TimeZone, Utc};
use chrono_tz::Tz;
use tally_proto::v1::{self, Dimension as D};

use crate::domain::{EventKind, StoredEvent};
use crate::error::{Error, Result};
use crate::sessions::VisitFacts;

/// A validated dimension.
#[derive(Clone, Debug, PartialEq)]
pub enum Dim {
    /// A standard dimension.
    Standard(D),
    /// A custom property key.
    Property(String),
}

impl Dim {
    /// Validates a request dimension; `field` names it in errors.
    pub fn parse(spec: Option<&v1::DimensionSpec>, field: &str) -> Result<Self> {
        use v1::dimension_spec::Kind;
        match spec.and_then(|s| s.kind.as_ref()) {
            Some(Kind::Property(key)) if !key.is_empty() => Ok(Self::Property(key.clone())),
            Some(Kind::Standard(n)) => match D::try_from(*n) {
                Ok(D::Unspecified) | Err(_) => {
                    Err(Error::invalid(field, "dimension is unspecified or unknown"))
                }
                Ok(d) => Ok(Self::Standard(d)),
            },
            _ => Err(Error::invalid(
                field,
                "set `standard` (e.g. \"DIMENSION_PAGE\") or `property`",
            )),
        }
    }

    /// True for time buckets (sorted chronologically by default).
    pub fn is_time(&self) -> bool {
        matches!(
            self,
            Self::Standard(D::TimeMinute | D::TimeHour | D::TimeDay | D::TimeWeek | D::TimeMonth)
        )
    }

    /// True for the entry and exit page: known only once a visit is summed up.
    pub fn is_visit_level(&self) -> bool {
        matches!(self, Self::Standard(D::EntryPage | D::ExitPage))
    }

    /// The value on `e`, with entry and exit page taken from its visit's facts.
    pub fn value_with(
        &self,
        e: &StoredEvent,
        tz: Tz,
        range_name: &str,
        visit: Option<&VisitFacts>,
    ) -> Option<String> {
        match self {
            Self::Standard(D::EntryPage) => visit.map(|v| v.entry.clone()).filter(|p| !p.is_empty()),
            Self::Standard(D::ExitPage) => visit.map(|v| v.exit.clone()).filter(|p| !p.is_empty()),
            d => d.value(e, tz, range_name).map(Cow::into_owned),
        }
    }

    /// The public form.
    pub fn to_spec(&self) -> v1::DimensionSpec {
        use v1::dimension_spec::Kind;
        v1::DimensionSpec {
            kind: Some(match self {
                Self::Standard(d) => Kind::Standard(*d as i32),
                Self::Property(p) => Kind::Property(p.clone()),
            }),
        }
    }

    /// The value of this dimension on `e`; `None` when the event has none.
    pub fn value<'e>(&self, e: &'e StoredEvent, tz: Tz, range_name: &'e str) -> Option<Cow<'e, str>> {
        let text = |s: &'e String| (!s.is_empty()).then_some(Cow::Borrowed(s.as_str()));
        let local = || {
            Utc.timestamp_micros(e.ts_micros)
                .single()
                .map(|t| t.with_timezone(&tz))
        };
        let fmt = |pattern: &str| local().map(|t| Cow::Owned(t.format(pattern).to_string()));
        match self {
            Self::Property(key) => e
                .properties
                .get(key)?
                .value
                .as_ref()
                .map(|v| Cow::Owned(v.to_text())),
            Self::Standard(d) => match d {
                D::TimeMinute => fmt("%Y-%m-%dT%H:%M"),
                D::TimeHour => fmt("%Y-%m-%dT%H:00"),
                D::TimeDay => fmt("%Y-%m-%d"),
                D::TimeWeek => local().map(|t| {
                    let monday =
                        t.date_naive() - chrono::Days::new(u64::from(t.weekday().num_days_from_monday()));
                    Cow::Owned(monday.format("%Y-%m-%d").to_string())
                }),
                D::TimeMonth => fmt("%Y-%m"),
                D::Page => text(&e.path),
                D::Hostname => text(&e.hostname),
                D::Referrer => referrer(&e.referrer),
                D::Source => text(&e.source),
                D::Medium => text(&e.medium),
                D::Campaign => text(&e.campaign),
                D::UtmSource => text(&e.utm_source),
                D::UtmMedium => text(&e.utm_medium),
                D::UtmTerm => text(&e.utm_term),
                D::UtmContent => text(&e.utm_content),
                D::Country => text(&e.country),
                D::Region => text(&e.region),
                D::City => text(&e.city),
                D::DeviceType => device_type(e.device_type).map(Cow::Borrowed),
                D::Browser => text(&e.browser),
                D::BrowserVersion => text(&e.browser_version),
                D::Os => text(&e.os),
                D::OsVersion => text(&e.os_version),
                D::AppVersion => text(&e.app_version),
                D::EventName => text(&e.name),
                D::EventType => e.event_kind().map(|k| Cow::Borrowed(k.as_str())),
                D::DateRange => Some(Cow::Borrowed(range_name)),
                D::EntryPage | D::ExitPage | D::Unspecified => None,
            },
        }
    }
}

/// Referrer without scheme and query string: "news.ycombinator.com/item".
fn referrer(raw: &str) -> Option<Cow<'_, str>> {
    if raw.is_empty() {
        return None;
    }
    let without_scheme = raw.split_once("://").map_or(raw, |(_, rest)| rest);
    let without_query = without_scheme.split(['?', '#']).next().unwrap_or_default();
    Some(Cow::Borrowed(
        without_query.strip_suffix('/').unwrap_or(without_query),
    ))
}

fn device_type(n: i32) -> Option<&'static str> {
    Some(match v1::DeviceType::try_from(n).ok()? {
        v1::DeviceType::Desktop => "desktop",
        v1::DeviceType::Mobile => "mobile",
        v1::DeviceType::Tablet => "tablet",
        v1::DeviceType::Tv => "tv",
        v1::DeviceType::Console => "console",
        v1::DeviceType::Bot => "bot",
        v1::DeviceType::Unspecified => return None,
    })
}

/// Events that count in reports at all (identify events only link users).
pub fn counts_in_reports(e: &StoredEvent, include_bots: bool) -> bool {
    (include_bots || !e.bot) && e.event_kind().is_some_and(|k| k != EventKind::Identify)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referrer_drops_scheme_query_and_trailing_slash() {
        assert_eq!(
            referrer("https://news.ycombinator.com/item?id=1").as_deref(),
            Some("news.ycombinator.com/item")
        );
        assert_eq!(
            referrer("https://www.google.com/").as_deref(),
            Some("www.google.com")
        );
        assert_eq!(referrer(""), None);
    }

    #[test]
    fn time_buckets_follow_the_time_zone() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // 2026-03-29 23:30 UTC is 2026-03-30 01:30 in Berlin (summer time), a Monday.
        let e = StoredEvent {
            ts_micros: 1_774_827_000_000_000,
            kind: 1,
            ..Default::default()
        };
        let v = |d| Dim::Standard(d).value(&e, berlin, "").unwrap().into_owned();
        assert_eq!(v(D::TimeDay), "2026-03-30");
        assert_eq!(v(D::TimeHour), "2026-03-30T01:00");
        assert_eq!(v(D::TimeWeek), "2026-03-30");
        assert_eq!(v(D::TimeMonth), "2026-03");
        assert_eq!(
            Dim::Standard(D::TimeDay).value(&e, Tz::UTC, "").unwrap(),
            "2026-03-29"
        );
    }
}
