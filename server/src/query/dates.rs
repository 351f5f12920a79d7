//! Date ranges in a time zone, resolved to half-open UTC instant ranges (DST aware).

use chrono::{Days, LocalResult, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use crate::error::{Error, Result};

/// A resolved date range.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedRange {
    /// Label.
    pub name: String,
    /// First day.
    pub start_date: NaiveDate,
    /// Last day (inclusive).
    pub end_date: NaiveDate,
    /// Inclusive start, microseconds since the epoch.
    pub start_micros: i64,
    /// Exclusive end, microseconds since the epoch.
    pub end_micros: i64,
}

impl ResolvedRange {
    /// True when the instant is inside the range.
    pub fn contains(&self, micros: i64) -> bool {
        (self.start_micros..self.end_micros).contains(&micros)
    }
}

/// Parses "YYYY-MM-DD", "today", "yesterday" or "NdaysAgo" relative to `today`.
pub fn parse_date(raw: &str, today: NaiveDate) -> Option<NaiveDate> {
    match raw {
        "today" => Some(today),
        "yesterday" => today.checked_sub_days(Days::new(1)),
        _ => match raw.strip_suffix("daysAgo") {
            Some(n) => today.checked_sub_days(Days::new(n.parse().ok()?)),
            None => NaiveDate::parse_from_str(raw, "%Y-%m-%d").ok(),
        },
    }
}

/// The first instant of `date` in `tz`. Where midnight does not exist (a DST
/// gap at midnight), the day starts at the first local time that does.
pub fn start_of_day(date: NaiveDate, tz: Tz) -> i64 {
    let midnight = date.and_hms_opt(0, 0, 0).expect("midnight exists");
    for minutes in (0..=180).step_by(15) {
        let local = midnight + chrono::Duration::minutes(minutes);
        match tz.from_local_datetime(&local) {
            LocalResult::Single(t) => return t.timestamp_micros(),
            LocalResult::Ambiguous(earliest, _) => return earliest.timestamp_micros(),
            LocalResult::None => continue,
        }
    }
    Utc.from_utc_datetime(&midnight).timestamp_micros()
}

/// Today's date in `tz` at `now_micros`.
pub fn today(tz: Tz, now_micros: i64) -> NaiveDate {
    Utc.timestamp_micros(now_micros)
        .single()
        .unwrap_or_default()
        .with_timezone(&tz)
        .date_naive()
}

/// Resolves one request range; `field` names it in errors.
pub fn resolve(
    field: &str,
    start: &str,
    end: &str,
    name: String,
    tz: Tz,
    now_micros: i64,
) -> Result<ResolvedRange> {
    let today = today(tz, now_micros);
    let bad = |which: &str, raw: &str| {
        Error::invalid(
            format!("{field}.{which}"),
            format!("{raw:?} is not a date: use YYYY-MM-DD, \"today\", \"yesterday\" or \"NdaysAgo\""),
        )
    };
    let start_date = parse_date(start, today).ok_or_else(|| bad("start_date", start))?;
    let end_date = parse_date(end, today).ok_or_else(|| bad("end_date", end))?;
    if end_date < start_date {
        return Err(Error::invalid(
            field,
            format!("end_date {end_date} is before start_date {start_date}"),
        ));
    }
    if (end_date - start_date).num_days() > 3660 {
        return Err(Error::invalid(field, "a date range may span at most 10 years"));
    }
    let after_end = end_date
        .checked_add_days(Days::new(1))
        .ok_or_else(|| bad("end_date", end))?;
    Ok(ResolvedRange {
        name,
        start_date,
        end_date,
        start_micros: start_of_day(start_date, tz),
        end_micros: start_of_day(after_end, tz),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn relative_dates() {
        let today = date("2026-03-10");
        assert_eq!(parse_date("today", today), Some(today));
        assert_eq!(parse_date("yesterday", today), Some(date("2026-03-09")));
        assert_eq!(parse_date("30daysAgo", today), Some(date("2026-02-08")));
        assert_eq!(parse_date("2026-01-31", today), Some(date("2026-01-31")));
        assert_eq!(parse_date("xdaysAgo", today), None);
        assert_eq!(parse_date("2026-02-30", today), None);
    }

    #[test]
    fn dst_days_have_23_and_25_hours() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let hours = |d: &str| {
            let r = resolve("r", d, d, String::new(), berlin, 0).unwrap();
            (r.end_micros - r.start_micros) / 3_600_000_000
        };
        assert_eq!(hours("2026-03-29"), 23);
        assert_eq!(hours("2026-10-25"), 25);
        assert_eq!(hours("2026-06-01"), 24);
    }

    #[test]
    fn midnight_gap_starts_at_first_valid_time() {
        // America/Santiago skips 00:00-01:00 when DST starts (2026-09-06).
        let santiago: Tz = "America/Santiago".parse().unwrap();
        let start = start_of_day(date("2026-09-06"), santiago);
        let local = Utc.timestamp_micros(start).unwrap().with_timezone(&santiago);
        assert_eq!(local.format("%Y-%m-%d %H:%M").to_string(), "2026-09-06 01:00");
    }

    #[test]
    fn reversed_range_is_rejected() {
        assert!(resolve("r", "2026-01-02", "2026-01-01", String::new(), Tz::UTC, 0).is_err());
    }
}
